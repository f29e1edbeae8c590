"""The only module that touches ComfyUI (``folder_paths``, ``comfy.*``).

Everything is imported lazily so the pack imports, and its nodes run, without
ComfyUI (tests, the command-line demo). Without ComfyUI, model folders resolve
under ``$POSEANIMATE_MODELS_DIR`` (default ``<pack>/models_local``), one
sub-folder per ComfyUI folder name, and progress/interrupt are no-ops.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

PACK_DIR = Path(__file__).resolve().parent.parent

# Folders the pack adds to ComfyUI (kind -> extensions). Existing ComfyUI kinds
# (vae, text_encoders, ...) are used as they are.
NEW_FOLDERS = {
    "pose_models": {".onnx", ".pth", ".safetensors"},
    "animatediff_models": {".ckpt", ".pt", ".pth", ".safetensors"},
}
WEIGHT_EXTENSIONS = {".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".onnx", ".gguf"}


class ModelFileError(ValueError):
    """A model name from a workflow that cannot be resolved to a file."""


def _folder_paths():
    try:
        import folder_paths  # type: ignore
    except ImportError:
        return None
    return folder_paths


def register_folders() -> None:
    """Register the pack's new model folders with ComfyUI (idempotent).

    Registered through folder_paths so ``extra_model_paths.yaml`` entries with the
    same names work too.
    """
    fp = _folder_paths()
    if fp is None:
        return
    for kind, exts in NEW_FOLDERS.items():
        default = os.path.join(fp.models_dir, kind)
        if kind in fp.folder_names_and_paths:
            paths, old_exts = fp.folder_names_and_paths[kind]
            if default not in paths:
                paths.append(default)
            fp.folder_names_and_paths[kind] = (paths, set(old_exts) | exts)
        else:
            fp.folder_names_and_paths[kind] = ([default], set(exts))


def fallback_root() -> Path:
    return Path(os.environ.get("POSEANIMATE_MODELS_DIR", PACK_DIR / "models_local"))


# Headless runs only: more folders per kind (extra_model_paths.yaml read without ComfyUI).
_extra_folders: dict[str, list[str]] = {}


def add_model_folder(kind: str, path) -> None:
    """Search ``path`` for ``kind`` too when ComfyUI is absent (what extra_model_paths.yaml does in it)."""
    paths = _extra_folders.setdefault(kind, [])
    if str(path) not in paths:
        paths.append(str(path))


def folder_paths_for(kind: str) -> list[str]:
    """Directories searched for ``kind`` (ComfyUI's, or the fallback root's and the added ones)."""
    fp = _folder_paths()
    if fp is not None:
        try:
            return list(fp.get_folder_paths(kind))
        except KeyError:
            return []
    return [str(fallback_root() / kind)] + _extra_folders.get(kind, [])


def list_models(kind: str, extensions: set[str] | None = None) -> list[str]:
    """Relative names of the files in a model folder (what a COMBO input lists)."""
    exts = extensions or WEIGHT_EXTENSIONS
    fp = _folder_paths()
    names: set[str] = set()
    if fp is not None:
        try:
            names = {n for n in fp.get_filename_list(kind) if Path(n).suffix.lower() in exts}
        except KeyError:
            names = set()
        exts = exts & {".gguf"}  # ComfyUI's own lists leave GGUF files out: scan for them below
        if not exts:
            return sorted(names)
    for base in folder_paths_for(kind):
        root = Path(base)
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            if path.is_file() and path.suffix.lower() in exts:
                names.add(path.relative_to(root).as_posix())
    return sorted(names)


def resolve_model(kind: str, name: str) -> Path:
    """Turn a model name from a workflow into a file inside ``kind``'s folders.

    Names are never free paths: absolute names and names that climb out of the
    folder (``..``) are refused, so a workflow cannot read arbitrary files.
    """
    if not name or not isinstance(name, str):
        raise ModelFileError(f"No {kind} file selected. Put the file in ComfyUI's models/{kind}/ folder and pick it in the node.")
    pure = Path(name)
    if pure.is_absolute() or ".." in pure.parts or name.startswith(("/", "\\")):
        raise ModelFileError(
            f"Model name {name!r} is not a file name inside the {kind} folder; "
            f"use a name listed by the node (paths outside models/{kind}/ are refused)."
        )
    fp = _folder_paths()
    if fp is not None:
        try:
            found = fp.get_full_path(kind, name)
        except KeyError:
            found = None
        if found:
            return Path(found)
    else:
        for base in folder_paths_for(kind):
            root = Path(base).resolve()
            candidate = (root / pure).resolve()
            if candidate.is_relative_to(root) and candidate.is_file():
                return candidate
    where = ", ".join(folder_paths_for(kind)) or f"models/{kind}"
    raise ModelFileError(f"{kind} file {name!r} not found. Put it in one of: {where} (or list that folder in extra_model_paths.yaml).")


def resolve_folder(kind: str) -> Path | None:
    """First existing directory of ``kind`` (for multi-file models such as DWPose)."""
    for base in folder_paths_for(kind):
        if Path(base).is_dir():
            return Path(base)
    return None


# Headless runs only: makes a terminal bar for a total (headless/job.py sets it); else no-op.
_progress_factory = None


def set_progress_factory(factory) -> None:
    """``factory(total)`` -> an object with ``update_absolute(value, total)``, used without ComfyUI."""
    global _progress_factory
    _progress_factory = factory


class Progress:
    """ComfyUI progress bar when hosted; the headless bar or a no-op otherwise (callers always call it)."""

    def __init__(self, total: int):
        self.total = max(int(total), 1)
        self.done = 0
        self._bar = None
        try:
            import comfy.utils  # type: ignore

            self._bar = comfy.utils.ProgressBar(self.total)
        except Exception:  # noqa: BLE001 - no ComfyUI, or no server context
            self._bar = _progress_factory(self.total) if _progress_factory is not None else None

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update_absolute(min(self.done, self.total), self.total)


def notify(text: str) -> None:
    """A warning the user should see: ComfyUI's log, and the text shown on the running node in
    the frontend (also on /ws as a binary TEXT message, which client.py prints)."""
    logging.getLogger("PoseAnimate").warning("PoseAnimate: %s", text)
    try:
        from comfy_execution.utils import get_executing_context  # type: ignore
        from server import PromptServer  # type: ignore
    except ImportError:
        return
    context = get_executing_context()
    if context is not None and getattr(PromptServer, "instance", None) is not None:
        PromptServer.instance.send_progress_text(text, context.node_id)


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel."""
    try:
        import comfy.model_management as mm  # type: ignore
    except ImportError:
        return
    mm.throw_exception_if_processing_interrupted()


def step_callback(total: int):
    """One callable for pipelines: progress + interrupt check, called once per unit of work."""
    progress = Progress(total)

    def callback(n: int = 1) -> None:
        check_interrupt()
        progress.update(n)

    return callback


def sampler_names(builtin) -> list[str]:
    """ComfyUI's sampler list when hosted, else the pack's built-in ones."""
    try:
        import comfy.samplers  # type: ignore

        return list(comfy.samplers.KSampler.SAMPLERS)
    except ImportError:
        return list(builtin)


def scheduler_names(builtin) -> list[str]:
    """ComfyUI's scheduler list when hosted, else the pack's built-in ones."""
    try:
        import comfy.samplers  # type: ignore

        return list(comfy.samplers.KSampler.SCHEDULERS)
    except ImportError:
        return list(builtin)


class _ModelObjects:
    """What ComfyUI's samplers ask a model patcher for (``get_model_object('model_sampling')``)."""

    def __init__(self, schedule):
        self.schedule = schedule

    def get_model_object(self, name: str):
        if name != "model_sampling":
            raise KeyError(f"the AnimateDiff denoiser has no model object {name!r}")
        return self.schedule


class _Inner:
    def __init__(self, schedule):
        self.model_sampling = schedule


class _ComfyDenoiser:
    """A pack denoiser in the shape ComfyUI's k-samplers call (their ``model_wrap``).

    ``schedule`` must offer what ComfyUI's ``ModelSamplingDiscrete`` does (sigmas, sigma_min/max,
    timestep, sigma, noise_scaling, inverse_noise_scaling, percent_to_sigma).
    ``denoiser(x, sigma, parts=False)`` returns the CFG result, or with ``parts`` also the cond and
    uncond predictions that CFG++ samplers read through ``sampler_post_cfg_function``.
    """

    def __init__(self, schedule, denoiser, cfg: float):
        self.inner_model = _Inner(schedule)
        self.model_patcher = _ModelObjects(schedule)
        self.denoiser = denoiser
        self.cfg = cfg

    def __call__(self, x, sigma, model_options=None, seed=None, **_):
        post = (model_options or {}).get("sampler_post_cfg_function", [])
        if not post:
            return self.denoiser(x, sigma)
        denoised, cond, uncond = self.denoiser(x, sigma, parts=True)
        for fn in post:
            denoised = fn({"denoised": denoised, "cond": None, "uncond": None, "cond_scale": self.cfg, "model": self,
                           "uncond_denoised": uncond, "cond_denoised": cond, "sigma": sigma,
                           "model_options": model_options, "input": x})
        return denoised


class ComfySampling:
    """Every sampler and scheduler ComfyUI offers, run by ComfyUI's own code on a pack denoiser.

    Sigmas come from ComfyUI's ``KSampler`` (its schedulers, its ``denoise`` tail and its
    discard-penultimate rule); sampling from ``sampler_object(name).sample`` with our
    denoiser as the model. Nothing of ComfyUI is patched.
    """

    def __init__(self):
        import comfy.samplers  # type: ignore

        self._cs = comfy.samplers
        self.samplers = list(comfy.samplers.KSampler.SAMPLERS)
        self.schedulers = list(comfy.samplers.KSampler.SCHEDULERS)

    def sigmas(self, schedule, scheduler: str, steps: int, denoise: float, sampler: str) -> torch.Tensor:
        if sampler not in self.samplers:
            raise ValueError(f"Unknown sampler {sampler!r}; ComfyUI offers: {', '.join(self.samplers)}.")
        if scheduler not in self.schedulers:
            raise ValueError(f"Unknown scheduler {scheduler!r}; ComfyUI offers: {', '.join(self.schedulers)}.")
        ks = self._cs.KSampler(_ModelObjects(schedule), steps, "cpu", sampler=sampler, scheduler=scheduler, denoise=denoise)
        return ks.sigmas.float().cpu()

    def sample(self, sampler: str, schedule, denoiser, noise, latent, sigmas, seed: int, on_step, cfg: float):
        model = _ComfyDenoiser(schedule, denoiser, cfg)
        extra_args = {"model_options": {}, "seed": int(seed)}
        callback = lambda i, denoised, x, total: on_step(i)  # noqa: E731
        return self._cs.sampler_object(sampler).sample(model, sigmas, extra_args, callback, noise,
                                                       latent_image=latent, disable_pbar=True)


def comfy_sampling() -> ComfySampling | None:
    """ComfyUI's samplers when hosted; None (the pack's built-in set) otherwise."""
    try:
        return ComfySampling()
    except ImportError:
        return None


def free_memory() -> None:
    """Release cached accelerator memory after a run or an interrupt."""
    try:
        import comfy.model_management as mm  # type: ignore

        mm.soft_empty_cache()
        return
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def torch_device():
    """The device ComfyUI chose (or CUDA if present, else CPU)."""
    import torch

    try:
        import comfy.model_management as mm  # type: ignore

        return mm.get_torch_device()
    except ImportError:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device():
    import torch

    try:
        import comfy.model_management as mm  # type: ignore

        return mm.unet_offload_device()
    except ImportError:
        return torch.device("cpu")


def output_directory() -> Path:
    """ComfyUI's output folder (or ``$POSEANIMATE_OUTPUT_DIR`` / ``<pack>/output`` without it)."""
    fp = _folder_paths()
    if fp is not None:
        return Path(fp.get_output_directory())
    return Path(os.environ.get("POSEANIMATE_OUTPUT_DIR", PACK_DIR / "output"))


def new_output_file(filename_prefix: str, extension: str) -> Path:
    """A file that does not exist yet in the output folder: ``<prefix>_00001_.<ext>``, ComfyUI's counter.

    Absolute prefixes and prefixes that climb out (``..``) are refused, as ComfyUI's own savers
    refuse them; the file is created exclusively, so two nodes with one prefix (or two runs in
    the same second) never overwrite each other.
    """
    prefix = (filename_prefix or "").strip()
    fix = "use a relative prefix such as PoseAnimate/poses (files go under ComfyUI's output folder)"
    if not prefix:
        raise ModelFileError(f"filename_prefix is empty; {fix}.")
    if os.path.isabs(prefix) or prefix.startswith(("/", "\\")) or (len(prefix) > 1 and prefix[1] == ":"):
        raise ModelFileError(f"filename_prefix {filename_prefix!r} is an absolute path; ComfyUI saves only inside its "
                             f"output folder: {fix}.")
    if ".." in prefix.replace("\\", "/").split("/"):
        raise ModelFileError(f"filename_prefix {filename_prefix!r} climbs out of the output folder; {fix}.")
    out_dir = output_directory()
    fp = _folder_paths()
    if fp is not None:
        folder, name, counter, _, _ = fp.get_save_image_path(prefix, str(out_dir))
        folder = Path(folder)
    else:
        folder = out_dir / os.path.dirname(os.path.normpath(prefix))
        name = os.path.basename(os.path.normpath(prefix))
        pattern = re.compile(re.escape(name) + r"_(\d+)_")
        counts = [int(m.group(1)) for p in (folder.iterdir() if folder.is_dir() else []) if (m := pattern.match(p.name))]
        counter = max(counts, default=0) + 1
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        path = folder / f"{name}_{counter:05d}_{extension}"
        try:
            path.open("x").close()
            return path
        except FileExistsError:
            counter += 1


def input_directory() -> Path:
    """ComfyUI's input folder (or ``$POSEANIMATE_INPUT_DIR`` / ``<pack>/input`` without it)."""
    fp = _folder_paths()
    if fp is not None:
        return Path(fp.get_input_directory())
    return Path(os.environ.get("POSEANIMATE_INPUT_DIR", PACK_DIR / "input"))


def resolve_input_file(name: str) -> Path:
    """A file name picked from ComfyUI's input folder; never a free path."""
    root = input_directory().resolve()
    candidate = (root / name).resolve()
    if not name or Path(name).is_absolute() or not candidate.is_relative_to(root):
        raise ModelFileError(f"{name!r} is not a file inside the input folder {root}; upload it there and pick it by name.")
    if not candidate.is_file():
        raise ModelFileError(f"{name!r} not found in the input folder {root}; upload it there first.")
    return candidate


def video_file_source(video):
    """The file behind a VIDEO from ComfyUI's Load Video (a path or file object), else None.

    None for videos built in memory (Create Video, the headless executor): those give their
    frames through ``get_components()``; re-encoding them to read a file back would lose quality.
    """
    try:
        from comfy_api.latest import InputImpl  # type: ignore
    except ImportError:
        return None
    return video.get_stream_source() if isinstance(video, InputImpl.VideoFromFile) else None


# ------------------------------------------------------------------ ComfyUI memory manager
class ComfyMemoryManager:
    """Route a ``Placement``'s moves through ComfyUI's model management when hosted.

    Loading a model asks ComfyUI to make room first (it evicts
    other models as needed) and registers ours in its list of loaded models, so
    other nodes can reclaim that VRAM later; offloading unloads it the same way.
    Without ComfyUI every call answers False and the Placement moves the module itself.
    """

    def move(self, placement, target) -> bool:
        """Move ``placement.module`` (a models.runtime.placement.Placement) to ``target`` through ComfyUI."""
        try:
            import comfy.model_management as mm  # type: ignore
            import comfy.model_patcher as mp  # type: ignore
        except ImportError:
            return False
        patcher = getattr(placement, "_comfy_patcher", None)
        if patcher is None:
            patcher = mp.ModelPatcher(_ComfyBox(placement.module), load_device=placement.device,
                                      offload_device=placement.offload_device)
            placement._comfy_patcher = patcher
        if target.type == placement.device.type and target.type != "cpu":
            mm.load_models_gpu([patcher], force_full_load=True)
            return True
        for loaded in list(mm.current_loaded_models):
            if loaded.model is patcher:
                loaded.model_unload()
                mm.current_loaded_models.remove(loaded)
                break
        else:
            patcher.detach()
        placement.module.to(target)
        return True


def comfy_memory_manager() -> ComfyMemoryManager | None:
    """A manager when ComfyUI's model management is importable, else None (plain moves)."""
    try:
        import comfy.model_management  # type: ignore  # noqa: F401
        import comfy.model_patcher  # type: ignore  # noqa: F401
    except ImportError:
        return None
    return ComfyMemoryManager()


class _ComfyBox(torch.nn.Module):
    """Container with a settable ``device`` (ComfyUI's patcher assigns it; diffusers models forbid that)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inner = module
        self.device = None
