"""Reading weight files safely (safetensors, or torch.load with weights_only) and the error type."""
from __future__ import annotations

from pathlib import Path

import torch


class AnimateDiffWeightsError(ValueError):
    """A weight file that is missing, unreadable or not in a layout we know (message says which)."""


def read_state_dict(path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` / ``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin`` file.

    One safe reader serves every family (models/runtime/weights.py: safetensors, or
    ``torch.load(weights_only=True)``, wrappers such as LDM's ``state_dict`` unwrapped, pickles
    that need code refused); here its errors become AnimateDiff's error type.
    """
    from ..runtime.weights import WeightsError
    from ..runtime.weights import read_state_dict as read_weights

    path = Path(path)
    if not path.is_file():
        raise AnimateDiffWeightsError(f"weight file not found: {path}")
    try:
        return read_weights(path, device=device)
    except WeightsError as exc:
        raise AnimateDiffWeightsError(f"cannot read weights from {path}: {exc}") from exc


def load_into(module: torch.nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """The runtime's check-then-load (models/runtime/build.py), every key required."""
    from ..runtime.build import load_checked

    load_checked(module, sd, f"{what}: keys", error=AnimateDiffWeightsError)


def materialize_meta_buffers(module: torch.nn.Module, device="cpu") -> None:
    """Recreate non-persistent buffers left on ``meta`` after an ``assign`` load.

    Only ``position_ids``-style index buffers exist in the SD1.5 models; anything else left
    on meta is a bug and raises.
    """
    for mod_name, mod in module.named_modules():
        for name, buf in list(mod._buffers.items()):
            if buf is None or not buf.is_meta:
                continue
            if name == "position_ids":
                mod._buffers[name] = torch.arange(buf.shape[-1], device=device).expand(buf.shape).clone()
            else:
                raise AnimateDiffWeightsError(f"buffer {mod_name}.{name} was not loaded")
