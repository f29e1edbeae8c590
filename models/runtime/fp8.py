"""fp8 weight storage for Linear layers, computed in the activation dtype (bf16 on a GPU).

Why: a 14B Wan DiT is ~28 GB in bf16 but ~14 GB with fp8 (e4m3fn) Linear weights, which is what
lets it sit on a 24 GB card. ComfyUI's "scaled" files store each Linear weight in fp8 with a
float32 ``scale_weight`` (effective weight = ``weight.to(dtype) * scale_weight``); plain fp8 files
have no scale (1.0). Both are kept as they are; bf16 weights converted here get a per-layer scale
``amax / 448`` so small weights keep their precision. Compute is always a normal matmul in the
input's dtype: fp8 is storage only. ComfyUI's optional ``scale_input`` only matters for its fp8
matmul path and is ignored here.

Scaled fp8 matmul (``compute="scaled_mm"``, chosen by ``"auto"`` on GPUs with fp8 tensor cores:
compute capability 8.9+, Ada / Hopper / Blackwell): the activations are quantized per call to
e4m3fn with one dynamic scale (``amax / 448``) and ``torch._scaled_mm`` multiplies the two fp8
operands with both scales in the epilogue, at twice the bf16 tensor-core rate. It needs e4m3fn
weights and both matrix sides multiples of 16; anything else (and ``"upcast"``) uses the weight-
only path. Activation rounding adds ~1-3% relative error per layer on top of the weight's.

Accuracy: e4m3fn keeps 3 mantissa bits (~6% worst-case rounding per weight); errors average
over each dot product, so a tiny Wan DiT's output deviates ~2% of its max magnitude from float32
(tests/test_wan_layouts.py checks 5%). Storing fp8 vs dequantising the same file up front gives
the same output to 1e-5.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
FP8_COMPUTE = ("auto", "scaled_mm", "upcast")


def scaled_mm_supported(device) -> bool:
    """Whether ``device`` has fp8 tensor cores (CUDA compute capability 8.9 or newer)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_max(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max)


def quantize_weight(weight: torch.Tensor, dtype=torch.float8_e4m3fn) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 weight, float32 scalar scale) with ``weight ~= q.float() * scale``."""
    w = weight.detach().float()
    amax = w.abs().max() if w.numel() else torch.zeros((), device=w.device)
    scale = (amax / fp8_max(dtype)).clamp(min=1e-12).to(torch.float32).reshape(())
    q = (w / scale).clamp(-fp8_max(dtype), fp8_max(dtype)).to(dtype)
    return q, scale


def dequantize_weight(weight: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Float copy of an fp8 (optionally scaled) weight, in ``dtype``."""
    w = weight.to(torch.float32)
    if scale is not None:
        w = w * scale.to(device=w.device, dtype=torch.float32)
    return w.to(dtype)


class FP8Linear(nn.Module):
    """``nn.Linear`` look-alike whose weight is fp8 plus a float32 ``scale_weight`` buffer.

    ``.to(dtype)`` / ``.half()`` never change the fp8 weight or the float32 scale (only the bias
    follows), so the usual model-wide casts keep the memory saving; ``.to(device)`` moves all."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 weight_dtype: torch.dtype = torch.float8_e4m3fn, bias_dtype=torch.bfloat16,
                 device=None):
        super().__init__()
        if weight_dtype not in FP8_DTYPES:
            raise ValueError(f"weight_dtype must be one of {FP8_DTYPES}, got {weight_dtype}")
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=weight_dtype, device=device),
                                   requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=bias_dtype, device=device),
                                 requires_grad=False) if bias else None
        self.register_buffer("scale_weight", torch.ones((), dtype=torch.float32, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_dtype=torch.float8_e4m3fn) -> "FP8Linear":
        """Quantise a loaded Linear (or make an empty twin of a meta one)."""
        has_bias = linear.bias is not None
        bias_dtype = linear.bias.dtype if has_bias else linear.weight.dtype
        new = cls(linear.in_features, linear.out_features, has_bias, weight_dtype, bias_dtype,
                  device=torch.device("meta"))
        if linear.weight.is_meta:
            return new
        if linear.weight.dtype in FP8_DTYPES and linear.weight.dtype == weight_dtype:
            q, scale = linear.weight.detach(), torch.ones((), dtype=torch.float32, device=linear.weight.device)
        else:
            q, scale = quantize_weight(linear.weight, weight_dtype)
        new.weight = nn.Parameter(q, requires_grad=False)
        new.scale_weight = scale
        if has_bias:
            new.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        return new

    compute = "auto"  # see FP8_COMPUTE; set per model with set_fp8_compute

    def _scaled_mm_ok(self, x: torch.Tensor) -> bool:
        if self.compute == "upcast" or self.weight.dtype != torch.float8_e4m3fn:
            return False
        if self.in_features % 16 or self.out_features % 16 or x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
            return False
        return self.compute == "scaled_mm" or scaled_mm_supported(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        if self._scaled_mm_ok(x):
            return self._scaled_forward(x, bias)
        w = self.weight.to(x.dtype) * self.scale_weight.to(x.dtype)
        return F.linear(x, w, bias)

    def _scaled_forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        limit = fp8_max(torch.float8_e4m3fn)
        x_scale = (rows.abs().amax().float() / limit).clamp(min=1e-12)
        xq = (rows.float() / x_scale).clamp(-limit, limit).to(torch.float8_e4m3fn)
        out = torch._scaled_mm(xq, self.weight.t(), scale_a=x_scale, scale_b=self.scale_weight.float(),
                               bias=bias, out_dtype=x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def _apply(self, fn, recurse=True):
        # Probe ``fn`` with empty tensors: where it keeps a tensor's dtype (pure moves, incl.
        # non_blocking / to_empty) apply it as is; where it would cast, only move the tensor.
        if self.bias is not None:
            self.bias = nn.Parameter(fn(self.bias.detach()), requires_grad=False)
        for name, holder in (("weight", self._parameters), ("scale_weight", self._buffers)):
            t = holder[name].detach()
            probe = fn(torch.empty(0, dtype=t.dtype, device=t.device))
            if probe.dtype == t.dtype:
                moved = fn(t)
            elif probe.device == t.device:
                continue
            else:
                moved = torch.empty_like(t, device=probe.device) if t.is_meta else t.to(probe.device)
            holder[name] = nn.Parameter(moved, requires_grad=False) if name == "weight" else moved
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, weight_dtype={self.weight.dtype}")


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def default_fp8_filter(name: str, module: nn.Module) -> bool:
    """Quantise the Linear layers of the transformer blocks (>95% of a Wan DiT's weights); keep
    embeddings and the output head in full precision."""
    return isinstance(module, nn.Linear) and name.startswith("blocks.")


def set_fp8_compute(model: nn.Module, compute: str = "auto") -> int:
    """Choose how the model's fp8 layers multiply (``FP8_COMPUTE``); returns how many layers."""
    if compute not in FP8_COMPUTE:
        raise ValueError(f"fp8 compute must be one of {FP8_COMPUTE}, got {compute!r}")
    layers = [m for m in model.modules() if isinstance(m, FP8Linear)]
    for layer in layers:
        layer.compute = compute
    return len(layers)


def convert_to_fp8(model: nn.Module, weight_dtype=torch.float8_e4m3fn,
                   select: Callable[[str, nn.Module], bool] = default_fp8_filter) -> list[str]:
    """Replace the selected ``nn.Linear`` layers of ``model`` by :class:`FP8Linear`, in place.

    Works on a loaded model (weights are quantised with a per-layer scale) and on a meta-device
    model (empty fp8 layers to be filled by ``load_state_dict(..., assign=True)``). Returns the
    names of the replaced layers."""
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear and select(n, m)]
    for name in names:
        _set_submodule(model, name, FP8Linear.from_linear(model.get_submodule(name), weight_dtype))
    return names
