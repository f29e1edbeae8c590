"""SD1.5 ControlNets from the ``controlnet`` folder into diffusers ``ControlNetModel``, offline.

Layouts: the original single file (``control_v11p_sd15_openpose.pth`` / ``.safetensors``,
keys with or without ``control_model.``), a diffusers single file (``controlnet_cond_embedding.*``
keys) and a diffusers folder (``config.json`` + weights). The config is inferred from the
tensor shapes (a folder's ``config.json`` is used as given), never fetched.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .sd15_checkpoint import controlnet_key_to_diffusers, layers_per_block_from_ldm, unet_config_from_diffusers_keys
from ..runtime.build import empty_parameters
from .weights_io import AnimateDiffWeightsError, load_into, read_state_dict

_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "model.safetensors")


def _to_diffusers(sd: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    if any(k.startswith("controlnet_cond_embedding.") for k in sd):
        return dict(sd)
    if any(k.startswith("control_model.") for k in sd):
        sd = {k[len("control_model."):]: v for k, v in sd.items() if k.startswith("control_model.")}
    if not any(k.startswith("input_hint_block.") for k in sd):
        raise AnimateDiffWeightsError(
            f"{name}: no 'input_hint_block' / 'controlnet_cond_embedding' keys; not a ControlNet "
            "(T2I-adapters and control-LoRAs are not supported)")
    if any(k.startswith("label_emb.") for k in sd):
        raise AnimateDiffWeightsError(f"{name} is an SDXL ControlNet; an SD1.5 ControlNet is needed")
    lpb = layers_per_block_from_ldm(sd)
    hint = tuple(sorted({int(m.group(1)) for k in sd if (m := re.match(r"input_hint_block\.(\d+)\.weight", k))}))
    out = {}
    for k, v in sd.items():
        new = controlnet_key_to_diffusers(k, lpb, hint)
        if new is not None:
            out[new] = v
    return out


def controlnet_config_from_diffusers_keys(sd: dict[str, torch.Tensor]) -> dict:
    unet_cfg = unet_config_from_diffusers_keys({**sd, "conv_out.weight": torch.empty(0, device="meta")})
    keys = list(sd)
    n_blocks = 1 + max(int(m.group(1)) for k in keys if (m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.weight", k)))
    emb = [int(sd["controlnet_cond_embedding.conv_in.weight"].shape[0])]
    emb += [int(sd[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0]) for i in range(1, n_blocks, 2)]
    cfg = {k: v for k, v in unet_cfg.items() if k not in ("out_channels", "up_block_types", "sample_size")}
    cfg["conditioning_channels"] = int(sd["controlnet_cond_embedding.conv_in.weight"].shape[1])
    cfg["conditioning_embedding_out_channels"] = emb
    return cfg


def controlnet_from_state_dict(sd: dict[str, torch.Tensor], dtype=torch.float32, device="cpu",
                               name: str = "ControlNet", config: dict | None = None):
    """Convert (if needed), infer the config, build on meta and assign the tensors."""
    from diffusers import ControlNetModel

    sd = _to_diffusers(sd, name)
    try:
        cfg = config or controlnet_config_from_diffusers_keys(sd)
    except (KeyError, StopIteration, ValueError) as exc:
        raise AnimateDiffWeightsError(f"{name}: cannot infer the ControlNet config from its keys ({exc})") from exc
    with empty_parameters():
        model = ControlNetModel(**cfg) if config is None else ControlNetModel.from_config(cfg)
    for k in list(sd):
        sd[k] = sd[k].to(device=device, dtype=dtype)
    load_into(model, sd, f"{name} (ControlNet)")
    return model.eval().requires_grad_(False)


def load_controlnet(path, dtype=torch.float32, device="cpu"):
    """Load an SD1.5 ControlNet file or diffusers folder into ``diffusers.ControlNetModel``."""
    path = Path(path)
    config = None
    if path.is_dir():
        cfg_file = path / "config.json"
        weights = next((path / n for n in _WEIGHT_NAMES if (path / n).is_file()), None)
        if weights is None:
            raise AnimateDiffWeightsError(f"{path}: a diffusers ControlNet folder needs one of {_WEIGHT_NAMES}")
        if cfg_file.is_file():
            config = json.loads(cfg_file.read_text())
        path = weights
    return controlnet_from_state_dict(read_state_dict(path), dtype=dtype, device=device, name=path.name, config=config)
