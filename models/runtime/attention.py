"""Attention kernels every family shares, chosen once when a model is prepared.

PyTorch's ``scaled_dot_product_attention`` is the default and the reference. When installed,
flash-attn (2 or 3) or sageattention are used instead on CUDA fp16/bf16 tensors; every other call
(CPU, fp32, unsupported head size) falls back to SDPA, so a backend choice can never change which
inputs work. A family's attention processors call :func:`attention` with the backend the runtime
resolved for its model (``model.poseanimate_attention``).
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

_log = logging.getLogger("PoseAnimate")

BACKENDS = ("auto", "sdpa", "flash_attn_3", "flash_attn", "sageattention")
# Order tried by "auto": exact kernels first, the quantised one last.
_AUTO_ORDER = ("flash_attn_3", "flash_attn", "sageattention")
_MODULES = {
    "flash_attn_3": "flash_attn_interface",
    "flash_attn": "flash_attn",
    "sageattention": "sageattention",
}


def available_backends() -> list[str]:
    """Backends usable in this process ("sdpa" always; others need their package and CUDA)."""
    found = ["sdpa"]
    if not torch.cuda.is_available():
        return found
    for name in _AUTO_ORDER:
        if importlib.util.find_spec(_MODULES[name]) is not None:
            found.append(name)
    return found


def _load_kernel(name: str) -> Callable | None:
    """The ``(q, k, v) -> out`` kernel of a backend on ``[B, S, H, D]`` tensors, or None."""
    if name == "sdpa":
        return None
    try:
        module = importlib.import_module(_MODULES[name])
    except Exception as exc:  # noqa: BLE001 - broken installs raise all sorts of errors
        _log.warning("PoseAnimate: attention backend %s not usable (%s); using SDPA.", name, exc)
        return None
    if name == "sageattention":
        sageattn = module.sageattn

        def kernel(q, k, v):
            return sageattn(q, k, v, tensor_layout="NHD", is_causal=False)

        return kernel
    func = module.flash_attn_func

    def kernel(q, k, v):
        out = func(q, k, v)
        return out[0] if isinstance(out, tuple) else out  # FA3 returns (out, lse)

    return kernel


# Head sizes each kernel handles (flash-attn: any multiple of 8 up to 256).
_HEAD_DIMS = {
    "flash_attn_3": tuple(range(8, 257, 8)),
    "flash_attn": tuple(range(8, 257, 8)),
    "sageattention": (64, 96, 128),
}


@dataclass
class AttentionBackend:
    """A resolved backend: its name and kernel (None = SDPA only)."""

    name: str = "sdpa"
    kernel: Callable | None = None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attention(q, k, v, self)

    def applies(self, q: torch.Tensor) -> bool:
        """Whether the kernel takes these tensors (CUDA, fp16/bf16, a supported head size)."""
        return (
            self.kernel is not None
            and q.is_cuda
            and q.dtype in (torch.float16, torch.bfloat16)
            and q.shape[-1] in _HEAD_DIMS.get(self.name, tuple(range(8, 257, 8)))
        )


def select_backend(preference: str = "auto") -> AttentionBackend:
    """Resolve a backend name (``auto`` picks the best installed one) to a callable backend."""
    pref = (preference or "auto").lower()
    if pref not in BACKENDS:
        raise ValueError(f"Unknown attention backend {preference!r}; choose one of {', '.join(BACKENDS)}.")
    if pref == "sdpa":
        return AttentionBackend("sdpa", None)
    candidates = _AUTO_ORDER if pref == "auto" else (pref,)
    usable = available_backends()
    for name in candidates:
        if name in usable:
            kernel = _load_kernel(name)
            if kernel is not None:
                return AttentionBackend(name, kernel)
    if pref != "auto":
        _log.warning("PoseAnimate: attention backend %s is not installed or has no CUDA device; using SDPA.", pref)
    return AttentionBackend("sdpa", None)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: AttentionBackend | None = None) -> torch.Tensor:
    """Non-causal attention without mask on ``[B, S, H, D]`` tensors; returns ``[B, S, H, D]``."""
    if backend is not None and backend.applies(q):
        return backend.kernel(q, k, v)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
