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


class DiffusersAttnProcessor:
    """diffusers' ``AttnProcessor2_0`` (the SD1.5 UNet's and ControlNet's attention) on a runtime
    backend. Calls with a mask, q/k norms or a spatial norm go to the stock processor unchanged."""

    def __init__(self, backend: AttentionBackend):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.backend = backend
        self.stock = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if (attention_mask is not None or attn.spatial_norm is not None or attn.norm_q is not None
                or attn.norm_k is not None or args or kwargs):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual, shape = hidden_states, hidden_states.shape
        if hidden_states.ndim == 4:
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        batch, heads = query.shape[0], attn.heads
        query, key, value = (t.unflatten(-1, (heads, -1)) for t in (query, key, value))
        out = attention(query, key, value, self.backend).flatten(2).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if len(shape) == 4:
            out = out.transpose(1, 2).reshape(shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install_diffusers_attention(model: torch.nn.Module, backend: str | AttentionBackend = "auto") -> AttentionBackend:
    """Put :class:`DiffusersAttnProcessor` on every diffusers ``Attention`` of ``model`` that uses
    the stock SDPA processor; returns the resolved backend (also ``model.poseanimate_attention``)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    resolved = backend if isinstance(backend, AttentionBackend) else select_backend(backend)
    processor = DiffusersAttnProcessor(resolved)
    for module in model.modules():
        if isinstance(module, Attention) and type(module.processor) in (AttnProcessor2_0, DiffusersAttnProcessor):
            module.set_processor(processor)
    model.poseanimate_attention = resolved
    return resolved
