"""Precision names shared by the Wan nodes and loaders.

Nodes show short names (``bf16``, ``fp16``, ``fp32``, and for transformer weights
``fp8_e4m3fn`` / ``fp8_e4m3fn_scaled``); everything below models/ works with
torch dtypes. Keeping the mapping in one place means every loader accepts the
same spellings and rejects the same mistakes with the same message.
"""
from __future__ import annotations

import torch

# Compute precisions (what activations and, unless fp8 is chosen, weights use).
COMPUTE_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
}
COMPUTE_PRECISIONS = tuple(COMPUTE_DTYPES)

# Weight storage options of the transformer: "default" keeps the compute dtype;
# fp8 stores weights in float8_e4m3fn (optionally with per-layer scales) and
# computes in bf16.
WEIGHT_STORAGE = ("default", "fp8_e4m3fn", "fp8_e4m3fn_scaled")

_ALIASES = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float32": "fp32",
    "float": "fp32",
}


def dtype_from_name(name: str | torch.dtype) -> torch.dtype:
    """``"bf16"`` -> ``torch.bfloat16`` (torch dtypes pass through)."""
    if isinstance(name, torch.dtype):
        if name not in COMPUTE_DTYPES.values():
            raise ValueError(f"Unsupported compute dtype {name}; use one of {', '.join(COMPUTE_PRECISIONS)}.")
        return name
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in COMPUTE_DTYPES:
        raise ValueError(f"Unknown precision {name!r}; choose one of {', '.join(COMPUTE_PRECISIONS)}.")
    return COMPUTE_DTYPES[key]


def name_from_dtype(dtype: torch.dtype) -> str:
    for key, value in COMPUTE_DTYPES.items():
        if value == dtype:
            return key
    raise ValueError(f"{dtype} is not one of the compute precisions {', '.join(COMPUTE_PRECISIONS)}.")


def weight_dtype_from_name(name: str) -> torch.dtype | None:
    """Storage dtype of transformer weights: ``None`` = same as compute."""
    key = str(name).lower()
    if key in ("default", "", "none"):
        return None
    if key in ("fp8_e4m3fn", "fp8_e4m3fn_scaled"):
        if not hasattr(torch, "float8_e4m3fn"):
            raise ValueError("This torch build has no float8_e4m3fn; choose weight storage 'default'.")
        return torch.float8_e4m3fn
    raise ValueError(f"Unknown weight storage {name!r}; choose one of {', '.join(WEIGHT_STORAGE)}.")

