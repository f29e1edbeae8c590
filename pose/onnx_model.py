"""One ONNX network from a local file, run by onnxruntime or (converted at load time) by torch.

Why two engines: onnxruntime is the dependable CPU path, but its GPU build (onnxruntime-gpu)
is a separate wheel that breaks with most CUDA/cuDNN combinations ComfyUI users have; torch is
always there with the GPU ComfyUI uses. The detectors (YOLOX, DWPose, ViTPose, YOLOv10) call
``run`` and never know which engine answered.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

ENGINES = ("onnxruntime", "torch")
DEVICES = ("auto", "cpu", "gpu")


class DetectorFilesError(RuntimeError):
    """A detector's ONNX file is missing, unreadable or not the expected network."""


def is_dynamic(dim) -> bool:
    return not isinstance(dim, int) or dim <= 0


def shape_matches(shape, expected) -> bool:
    """Non-batch dims match, a symbolic (dynamic) dim matching anything."""
    dims = list(shape)[1:]
    return len(dims) == len(expected) and all(is_dynamic(d) or d == e for d, e in zip(dims, expected))


def resolve_engine(device: str = "auto") -> tuple[str, str]:
    """device auto|cpu|gpu (or a torch device string) -> (engine, torch device).

    auto: torch on the GPU when torch has one, else onnxruntime on the CPU; cpu: onnxruntime;
    gpu: torch on CUDA (a clear error when there is none)."""
    device = str(device).strip().lower()
    if device in ("cpu", "onnxruntime"):
        return "onnxruntime", "cpu"
    import torch

    if device == "auto":
        return ("torch", "cuda") if torch.cuda.is_available() else ("onnxruntime", "cpu")
    if device in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("pose detector device 'gpu' asked for, but torch sees no CUDA GPU; "
                               "choose device 'auto' or 'cpu'")
        return "torch", "cuda"
    if device.startswith("torch:"):  # "torch:cpu": the torch engine on the CPU (parity checks, benchmarks)
        return "torch", device.split(":", 1)[1]
    try:  # a torch device ComfyUI chose ("cuda:1", "mps", "xpu")
        return "torch", str(torch.device(device))
    except (RuntimeError, ValueError):
        raise ValueError(f"pose detector device must be one of {DEVICES} (or a torch device), got {device!r}") from None


class OnnxModel:
    """``inputs``/``outputs`` as [(name, shape)] from the file; ``run`` maps arrays to arrays."""

    def __init__(self, path: Path | str, engine: str = "onnxruntime", device: str = "cpu",
                 threads: int | None = None, source_hint: str = "", strict: bool = False):
        """A file whose ops the torch path lacks runs on onnxruntime (CPU) with a warning, or
        raises UnsupportedOnnxOps when ``strict``."""
        self.path = Path(path)
        self.engine, self.device = engine, device
        self.hint = source_hint
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        if engine == "torch":
            from .onnx_torch import UnsupportedOnnxOps

            try:
                self._open_torch()
            except UnsupportedOnnxOps as exc:
                if strict:
                    raise
                logging.getLogger("PoseAnimate").warning("PoseAnimate: %s; running it on onnxruntime (CPU) instead", exc)
                self.engine, self.device = "onnxruntime", "cpu"
        if self.engine == "onnxruntime":
            self._open_ort(threads)
        self.batched = is_dynamic(self.inputs[0][1][0]) if self.inputs and self.inputs[0][1] else False

    def _bad_file(self, exc) -> DetectorFilesError:
        return DetectorFilesError(f"cannot load {self.path.name} from {self.path.parent}: {exc}. The file is corrupt or "
                                  f"not an ONNX model; replace it with the original '{self.path.name}'{self.hint}.")

    def _open_ort(self, threads):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise self._bad_file(exc) from exc
        self.inputs = [(i.name, list(i.shape)) for i in self.session.get_inputs()]
        self.outputs = [(o.name, list(o.shape)) for o in self.session.get_outputs()]

    def _open_torch(self):
        import onnx

        from .onnx_torch import convert  # the torch path's own module (converter import is heavy)

        try:
            proto = onnx.load(str(self.path))
        except Exception as exc:
            raise self._bad_file(exc) from exc
        init = {i.name for i in proto.graph.initializer}

        def dims(vi):
            return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]

        self.inputs = [(i.name, dims(i)) for i in proto.graph.input if i.name not in init]
        self.outputs = [(o.name, dims(o)) for o in proto.graph.output]
        self.module = convert(proto, self.path, self.device)

    def run(self, feeds: dict[str, np.ndarray], names: list[str] | None = None) -> list[np.ndarray]:
        """Outputs ``names`` (all when None) as float32 numpy arrays."""
        if self.engine == "onnxruntime":
            return [np.asarray(o) for o in self.session.run(names, feeds)]
        from .onnx_torch import run

        out = run(self.module, [feeds[n] for n, _ in self.inputs], self.device)
        if names is None:
            return out
        index = {n: i for i, (n, _) in enumerate(self.outputs)}
        return [out[index[n]] for n in names]
