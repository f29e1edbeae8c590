"""The main job: a hosted request JSON -> the matching shipped API workflow, run in this process.

The request is filled into the workflow by client.py's endpoint tables (one copy of the
request -> node-input mapping), media go to a private input folder, the graph runs through
headless/executor.py, and the video plus a result JSON of the hosted shape land in the output
folder. When a model file the workflow names is not in the model folders, the job runs the
workflow's pose stage instead (the embedded detector), and says which file goes in which folder.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..nodes import host
from . import executor as graph_executor

CLIENT = host.PACK_DIR / "client.py"
WORKFLOWS = host.PACK_DIR / "workflows" / "api"
EMBEDDED_DETECTOR = "mediapipe (embedded)"
NONE = ("", "None", None)

# Which node inputs name model files, and the ComfyUI folder each name lives in.
MODEL_INPUTS = {
    "PoseAnimateOneToAllLoader": {"model_name": "diffusion_models", "lora_1": "loras", "lora_2": "loras"},
    "PoseAnimateUniAnimateLoader": {"base_model": "diffusion_models", "unianimate_file": "loras",
                                    "lora_1": "loras", "lora_2": "loras"},
    "PoseAnimateWanVAELoader": {"vae_name": "vae"},
    "PoseAnimateWanTextEncoderLoader": {"text_encoder_name": "text_encoders"},
    "PoseAnimateWanCLIPVisionLoader": {"clip_name": "clip_vision"},
    "PoseAnimateAnimateDiffLoader": {"checkpoint": "checkpoints", "motion_module": "animatediff_models",
                                     "lora_1": "loras", "lora_2": "loras", "lora_3": "loras", "controlnet": "controlnet"},
    "PoseAnimateLoadPoseDetector": {"dwpose_detector": "pose_models", "dwpose_model": "pose_models",
                                    "vitpose_detector": "pose_models", "vitpose_model": "pose_models"},
}
# A detector's files count only for the backend that reads them ("auto: ..." backends fall back
# to the embedded detector themselves, with a warning, when their files are missing).
OPTIONAL_MODELS = {("PoseAnimateAnimateDiffLoader", "controlnet")}  # missing -> run without it
# ComfyUI's older folder names that its own folder_paths maps onto the current ones.
LEGACY_FOLDERS = {"diffusion_models": ("unet",), "text_encoders": ("clip",)}
ALL_KINDS = sorted({k for table in MODEL_INPUTS.values() for k in table.values()})


def client_module():
    """client.py (the endpoint tables and request filling), loaded once by path."""
    mod = sys.modules.get("client")
    if mod is not None and Path(getattr(mod, "__file__", "")).resolve() == CLIENT.resolve():
        return mod
    spec = importlib.util.spec_from_file_location("client", CLIENT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["client"] = mod
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------ model folders
def configure_models(models_dir=None, extra_model_paths=None) -> None:
    """Point model lookup at a ComfyUI-layout ``models_dir`` and/or an ``extra_model_paths.yaml``."""
    if models_dir:
        root = Path(models_dir).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"--models {root}: no such folder (expected ComfyUI's models/ layout: "
                                    "diffusion_models/, vae/, text_encoders/, ...)")
        os.environ["POSEANIMATE_MODELS_DIR"] = str(root)
        for kind, legacy in LEGACY_FOLDERS.items():
            for name in legacy:
                host.add_model_folder(kind, root / name)
    if extra_model_paths:
        for kind, path in read_extra_model_paths(extra_model_paths):
            host.add_model_folder(kind, path)


def read_extra_model_paths(path) -> list[tuple[str, Path]]:
    """(kind, folder) pairs of a ComfyUI ``extra_model_paths.yaml`` (``base_path`` + per-kind paths)."""
    import yaml

    path = Path(path).expanduser()
    config = yaml.safe_load(path.read_text()) or {}
    pairs = []
    for section in config.values():
        if not isinstance(section, dict):
            continue
        base = Path(str(section.get("base_path", path.parent))).expanduser()
        if not base.is_absolute():
            base = path.parent / base
        for kind, value in section.items():
            if kind in ("base_path", "is_default") or value is None:
                continue
            kind = {"unet": "diffusion_models", "clip": "text_encoders"}.get(kind, kind)
            for line in str(value).splitlines():
                if line.strip():
                    pairs.append((kind, base / line.strip()))
    return pairs


@dataclass
class MissingModel:
    node_id: str
    class_type: str
    input: str
    kind: str
    name: str

    @property
    def folder(self) -> str:
        return (host.folder_paths_for(self.kind) or [f"models/{self.kind}"])[0]


def model_files(graph: dict) -> list[MissingModel]:
    """Every model file the graph names (a detector's files only when its backend is DWPose or ViTPose)."""
    found = []
    for nid, node in graph.items():
        table = MODEL_INPUTS.get(node["class_type"], {})
        inputs = node["inputs"]
        if node["class_type"] == "PoseAnimateLoadPoseDetector":
            backend = str(inputs.get("backend", "")).split(" ")[0]
            table = {inp: kind for inp, kind in table.items() if backend in ("dwpose", "vitpose") and inp.startswith(backend)}
        for inp, kind in table.items():
            if inputs.get(inp) not in NONE and isinstance(inputs.get(inp), str):
                found.append(MissingModel(nid, node["class_type"], inp, kind, inputs[inp]))
        if node["class_type"] == "PoseAnimateAnimateDiffLoader" and inputs.get("loras_json"):
            for item in json.loads(inputs["loras_json"]):
                found.append(MissingModel(nid, node["class_type"], "loras_json", "loras", item["name"]))
    return found


def missing_models(graph: dict) -> list[MissingModel]:
    missing = []
    for m in model_files(graph):
        try:
            host.resolve_model(m.kind, m.name)
        except host.ModelFileError:
            missing.append(m)
    return missing


def pose_stage(graph: dict, missing: list[MissingModel], name: str) -> dict:
    """The graph without the nodes that need the missing files, ending in the pose video + pose JSON."""
    g = json.loads(json.dumps(graph))
    for m in missing:
        if m.class_type == "PoseAnimateLoadPoseDetector":
            g[m.node_id]["inputs"]["backend"] = EMBEDDED_DETECTOR
    dropped = {m.node_id for m in missing if m.class_type != "PoseAnimateLoadPoseDetector"}
    changed = True
    while changed:
        changed = False
        for nid, node in g.items():
            if nid not in dropped and any(graph_executor._is_link(v) and v[0] in dropped for v in node["inputs"].values()):
                dropped.add(nid)
                changed = True
    kept = {k: v for k, v in g.items() if k not in dropped}
    renders = [k for k, v in kept.items() if v["class_type"] == "PoseAnimateRenderPoses"]
    fed = [v[0] for k in dropped for v in g[k]["inputs"].values() if graph_executor._is_link(v) and v[0] in renders]
    components = [k for k, v in kept.items() if v["class_type"] in ("PoseAnimateVideoComponents", "GetVideoComponents")]
    if not renders or not components:
        raise graph_executor.GraphError(f"{name}: the workflow has no pose stage to run without the models")
    render = (fed or renders)[0]
    nid = max(int(k) for k in g if k.isdigit()) + 1 if all(k.isdigit() for k in g) else len(g) + 1
    kept[str(nid)] = {"class_type": "CreateVideo", "inputs": {"images": [render, 0], "fps": [components[0], 2]}}
    kept[str(nid + 1)] = {"class_type": "SaveVideo", "inputs": {"video": [str(nid), 0], "format": "mp4", "codec": "h264",
                                                                "filename_prefix": f"PoseAnimate/{name}_pose"}}
    if not any(v["class_type"] == "PoseAnimateSavePoseJSON" for v in kept.values()):
        kept[str(nid + 2)] = {"class_type": "PoseAnimateSavePoseJSON",
                              "inputs": {"poses": kept[render]["inputs"]["poses"], "filename_prefix": f"PoseAnimate/{name}_pose"}}
    return kept


def describe_missing(missing: list[MissingModel], endpoint: str) -> str:
    lines = [f"{endpoint}: model files missing, so only the pose stage ran (embedded detector). Put these files here:"]
    for m in missing:
        lines.append(f"  {m.name}  ->  {m.folder}/   ({m.class_type}.{m.input})")
    lines.append("(or pass --models DIR with ComfyUI's models/ layout, or --extra-model-paths extra_model_paths.yaml)")
    return "\n".join(lines)


# ------------------------------------------------------------------ progress
class TerminalProgress:
    """tqdm bars for the nodes' progress (detection frames, denoising steps) and one line per node."""

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet, self.stream = quiet, stream or sys.stderr
        self.label = ""
        self.bars = []

    def on_node(self, nid, class_type, title):
        import poseanimate

        self.label = poseanimate.NODE_DISPLAY_NAME_MAPPINGS.get(class_type, title).replace(" (PoseAnimate)", "")
        if not self.quiet:
            from tqdm import tqdm

            tqdm.write(f"node {nid}: {self.label}", file=self.stream)

    def __call__(self, total):
        from tqdm import tqdm

        bar = tqdm(total=total, desc=self.label, file=self.stream, disable=self.quiet, leave=True, dynamic_ncols=True)
        self.bars.append(bar)

        class Bar:
            def update_absolute(_, value, total_):
                bar.update(value - bar.n)
                if value >= total_:
                    bar.close()

        return Bar()

    def close(self):
        for bar in self.bars:
            bar.close()
        self.bars.clear()


@contextlib.contextmanager
def _headless_host(output_dir: Path, progress: TerminalProgress):
    """Output folder and progress bars of the host boundary, for the duration of one run."""
    old = os.environ.get("POSEANIMATE_OUTPUT_DIR")
    os.environ["POSEANIMATE_OUTPUT_DIR"] = str(output_dir)
    host.set_progress_factory(progress)
    try:
        yield
    finally:
        host.set_progress_factory(None)
        progress.close()
        if old is None:
            os.environ.pop("POSEANIMATE_OUTPUT_DIR", None)
        else:
            os.environ["POSEANIMATE_OUTPUT_DIR"] = old


# ------------------------------------------------------------------ the job
ENDPOINT_HINTS = (  # a request field only one endpoint has -> that endpoint
    ("image_guidance_scale", "one-to-all"), ("pose_guidance_scale", "one-to-all"), ("cfg_scale", "uni-animate"),
    ("guidance_scale", "animatediff-v2v"), ("base_model", "animatediff-v2v"), ("loras", "animatediff-v2v"),
    ("detector", "pose"), ("alignment", "pose"), ("style", "pose"),
)


def endpoint_of(request: dict, given: str | None = None) -> str:
    """The endpoint: ``given``, else the request's own ``endpoint`` field, else a field only it has."""
    endpoints = client_module().ENDPOINTS
    name = given or request.get("endpoint")
    if name is None:
        hits = {e for f, e in ENDPOINT_HINTS if f in request}
        if len(hits) == 1:
            name = hits.pop()
        elif "video_url" in request and "image_url" not in request:
            name = "animatediff-v2v"
    if name not in endpoints:
        raise client_module().RequestError(
            f"which endpoint is this request for? Put \"endpoint\": one of {', '.join(endpoints)} in the request "
            f"or pass --endpoint (got {name!r})", {"endpoint": "unknown" if name else "missing"})
    return name


@dataclass
class JobResult:
    result: dict
    video: Path
    result_path: Path
    pose_only: bool = False
    missing: list = field(default_factory=list)
    node_seconds: dict = field(default_factory=dict)


def enable_sequence_parallel(sp, outputs) -> None:
    """Split the Wan transformer of each model object a loader returned over ``sp``'s ranks."""
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

    from ..models.wan import sequence_parallel

    for obj in outputs:
        transformer = getattr(obj, "transformer", None)
        if isinstance(transformer, WanTransformer3DModel):
            sequence_parallel.enable(transformer, sp)


def run_naming_fields(ex, prompt: dict, origin: dict, client) -> None:
    """``ex.run(prompt)``; a node failure names the request fields feeding the node, as client.py does."""
    try:
        ex.run(prompt)
    except graph_executor.NodeFailed as exc:
        fields, _ = client.fields_feeding(prompt, origin, exc.node_id, str(exc))
        if not fields:
            raise
        raise graph_executor.NodeFailed(exc.node_id, exc.class_type, exc.__cause__, fields) from exc.__cause__


def run_request(request: dict, out_dir, *, endpoint: str | None = None, workflow=None, executor=None,
                quiet: bool = False, stream=None, sequence_parallel=None) -> JobResult:
    """Run one request; writes ``<out_dir>/<prefix>_<n>_.mp4`` and the result JSON beside it.

    On any failure or Ctrl-C (KeyboardInterrupt) nothing of this run stays in ``out_dir``.
    ``executor`` (kept by batch workers) keeps loaded models between requests.
    ``sequence_parallel`` (a models.wan.sequence_parallel.SequenceParallel, every rank running the
    same request) splits the transformers' tokens over the ranks.
    """
    t_total = time.perf_counter()
    client = client_module()
    request = dict(request)
    name = endpoint_of(request, endpoint)
    request.pop("endpoint", None)
    ep = client.ENDPOINTS[name]
    wf_path = Path(workflow) if workflow else WORKFLOWS / ep.workflow
    graph = json.loads(wf_path.read_text())
    progress = TerminalProgress(quiet, stream)
    say = (lambda text: None) if quiet else (lambda text: print(text, file=progress.stream, flush=True))
    ex = executor or graph_executor.Executor()

    def options_of(class_type, inp):
        cls = ex.classes.get(class_type)
        if cls is None:
            return None
        spec = cls.INPUT_TYPES()
        s = {**spec.get("required", {}), **spec.get("optional", {})}.get(inp)
        return list(s[0]) if s and isinstance(s[0], list) else None

    warn = (lambda t: say(f"warning: {t}"))
    try:  # model names in the request are matched against what the folders offer ...
        filled = client.fill_workflow(ep, graph, request, options_of, warn=warn)
    except client.RequestError as exc:
        if not any(f.startswith(tuple(ep.model_fields)) for f in exc.fields):
            raise
        filled = client.fill_workflow(ep, graph, request, lambda c, i: None)  # ... a missing one -> pose stage
    missing = missing_models(filled.prompt)
    for m in [m for m in missing if (m.class_type, m.input) in OPTIONAL_MODELS]:
        say(f"warning: {m.name} not in {m.folder}/; running without it ({m.class_type}.{m.input})")
        filled.prompt[m.node_id]["inputs"][m.input] = "None"
        missing.remove(m)
    prompt = filled.prompt
    if missing:
        say(describe_missing(missing, name))
        prompt = pose_stage(prompt, missing, Path(ep.workflow).stem)

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="poseanimate-inputs-") as inputs:
        for media in filled.uploads.values():
            (Path(inputs) / media.name).write_bytes(media.data)
        ex.core.input_dir, ex.core.output_dir = Path(inputs), out_dir
        ex.core.saved.clear()
        ex.core.files = written
        ex.on_node = progress.on_node
        if sequence_parallel is not None:
            ex.on_output = lambda nid, ct, out: enable_sequence_parallel(sequence_parallel, out)
        t0 = time.perf_counter()
        try:
            with _headless_host(out_dir, progress):
                run_naming_fields(ex, prompt, filled.origin, client)
            written += [out_dir / t for ui in ex.ui.values() for t in ui.get("text", []) if (out_dir / t).is_file()]
            if not ex.core.files:
                raise graph_executor.GraphError(f"{wf_path.name}: the run saved no video (no SaveVideo node?)")
            t_run = time.perf_counter() - t0
            video = ex.core.files[0]
            result = {
                "video": {"url": video.as_uri(), "content_type": "video/mp4", "file_name": video.name,
                          "file_size": video.stat().st_size},
                "seed": filled.seed,
                "timings": {"inference": round(t_run, 3), "total": round(time.perf_counter() - t_total, 3)},
            }
            if missing:
                result["pose_only"] = True
                result["missing_models"] = [{"file": m.name, "folder": m.folder, "node": f"{m.class_type}.{m.input}"}
                                            for m in missing]
            extra = [p for p in written if p != video]
            if extra:
                result["files"] = [p.relative_to(out_dir).as_posix() for p in extra]
            result_path = video.with_suffix(".json")
            tmp = result_path.with_name(f".{result_path.name}.part")
            tmp.write_text(json.dumps(result, indent=2) + "\n")
            os.replace(tmp, result_path)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        finally:
            ex.on_node = ex.on_output = None
    say(f"wrote: {video} and {result_path}")
    return JobResult(result, video, result_path, bool(missing), missing, dict(ex.timings))
