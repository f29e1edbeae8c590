"""kohya-format SD1.5 LoRAs merged into the diffusers UNet and the CLIP text encoder.

Names are ``lora_unet_<diffusers module path with . -> _>`` and
``lora_te_text_model_<transformers module path with . -> _>``; each has ``lora_down.weight``,
``lora_up.weight`` and optionally ``alpha``. The merge is ComfyUI's:
``W += scale * (alpha / rank) * (up.flatten(1) @ down.flatten(1)).reshape(W.shape)``, computed
in fp32 and cast back (no alpha key: factor 1). 3x3 LoCon conv entries work the same way.
Several LoRAs stack by adding their deltas in order.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .weights_io import AnimateDiffWeightsError

log = logging.getLogger(__name__)
_UNSUPPORTED = ("hada_w1_a", "lokr_w1", "oft_blocks", "diff_b", ".diff", "lora_A.weight", "lora.down.weight")


def _module_table(model: nn.Module, prefix: str, extra_level: str = "") -> dict[str, nn.Module]:
    table = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            table[prefix + (extra_level + name).replace(".", "_")] = mod
    return table


def kohya_module_table(unet: nn.Module, text_encoder: nn.Module) -> dict[str, nn.Module]:
    """kohya module name -> the Linear / Conv2d it patches (every one, so LoCon keys resolve)."""
    table = _module_table(unet, "lora_unet_")
    # transformers 5 keeps no ``text_model`` level in memory; kohya names always carry it
    te_level = "" if any(n.startswith("text_model.") for n, _ in text_encoder.named_modules()) else "text_model."
    table.update(_module_table(text_encoder, "lora_te_", te_level))
    return table


def _lora_modules(sd: dict[str, torch.Tensor]) -> list[str]:
    bad = sorted({k for k in sd if any(tag in k for tag in _UNSUPPORTED)})
    if bad:
        raise AnimateDiffWeightsError(
            f"LoRA holds {len(bad)} keys of a format other than kohya LoRA (e.g. {bad[:2]}); "
            "LyCORIS LoHa/LoKr/OFT and diffusers/PEFT-format files are not supported, use a kohya lora_unet_/lora_te_ file")
    return sorted({k.split(".lora_down.")[0] for k in sd if ".lora_down." in k})


@torch.no_grad()
def merge_kohya_lora(table: dict[str, nn.Module], sd: dict[str, torch.Tensor], scale: float, name: str = "LoRA") -> int:
    """Merge one kohya LoRA into the modules in ``table``; returns how many modules were patched."""
    modules = _lora_modules(sd)
    if not modules:
        raise AnimateDiffWeightsError(f"{name} has no '*.lora_down.weight' keys; not a kohya-format LoRA")
    known = [m for m in modules if m in table]
    unknown = [m for m in modules if m not in table]
    if not known:
        raise AnimateDiffWeightsError(
            f"{name}: none of its {len(modules)} modules exist in this SD1.5 model (e.g. {unknown[:2]}); "
            "is it a LoRA for SD1.5 (not SDXL / SD2)?")
    if unknown:
        log.warning("%s: %d LoRA modules not found in the model and skipped (e.g. %s)", name, len(unknown), unknown[:3])
    for key in known:
        mod = table[key]
        down, up = sd[key + ".lora_down.weight"].float(), sd.get(key + ".lora_up.weight")
        if up is None:
            raise AnimateDiffWeightsError(f"{name}: {key}.lora_up.weight is missing")
        up = up.float()
        rank = down.shape[0]
        alpha = sd.get(key + ".alpha")
        factor = (float(alpha) / rank) if alpha is not None else 1.0
        w = mod.weight
        delta = up.flatten(1).to(w.device) @ down.flatten(1).to(w.device)
        if delta.numel() != w.numel():
            raise AnimateDiffWeightsError(
                f"{name}: {key} gives a {tuple(delta.shape)} update for a {tuple(w.shape)} weight; wrong base model?")
        w.copy_((w.float() + (scale * factor) * delta.reshape(w.shape)).to(w.dtype))
    return len(known)


def apply_sd_loras(components, loras: list[tuple[dict, float]]) -> None:
    """Stack kohya LoRAs ``[(state_dict, scale), ...]`` into ``components.unet`` / ``.text_encoder``."""
    if not loras:
        return
    table = kohya_module_table(components.unet, components.text_encoder)
    for i, (sd, scale) in enumerate(loras):
        if scale == 0:
            continue
        merge_kohya_lora(table, sd, float(scale), name=f"LoRA #{i + 1}")
