"""The only module that touches ComfyUI (``folder_paths``, ``comfy.*``).

Everything is imported lazily so the pack imports, and its nodes run, without
ComfyUI (tests, the command-line demo). Without ComfyUI, model folders resolve
under ``$POSEANIMATE_MODELS_DIR`` (default ``<pack>/models_local``), one
sub-folder per ComfyUI folder name, and progress/interrupt are no-ops.
"""
from __future__ import annotations

import os
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
