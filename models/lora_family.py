"""Which model family a LoRA file was trained for, from its key names alone.

A LoRA for another family (an SD1.5 style LoRA picked in the Wan loader, a Wan LoRA in the
AnimateDiff loader) either fails deep inside key matching or silently changes nothing. Loaders
call ``check_lora_family`` first so the user reads the file's name and its family instead.
The key patterns are those of the public formats: kohya (``lora_unet_*``, ``lora_te_*``,
SDXL's ``lora_te1_``/``lora_te2_``), diffusers/PEFT (``lora_A``/``lora_B``), ComfyUI's
``diffusion_model.`` prefix, AnimateDiff's ``motion_modules``, Flux's ``double_blocks``.
"""
from __future__ import annotations

import re
from pathlib import Path

WAN = "Wan2.1"
SD15 = "SD1.5"
SDXL = "SDXL"
MOTION = "AnimateDiff motion"
FLUX = "Flux"
UNIANIMATE = "UniAnimate (Wan2.1 pose LoRA)"

_RULES = (  # first match wins; each rule looks at the keys with the prefixes normalised away
    (UNIANIMATE, re.compile(r"(^|\.)(dwpose_embedding|randomref_embedding_pose)\.")),
    (MOTION, re.compile(r"motion_modules")),
    (FLUX, re.compile(r"(double_blocks|single_blocks|single_transformer_blocks)")),
    (SDXL, re.compile(r"^lora_te[12]_|(^|[._])(add_embedding|label_emb)|input_blocks_[4-8]_1_transformer_blocks_[2-9]")),
    (SD15, re.compile(r"^lora_(unet|te)_(down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block|"
                      r"text_model)|(^|\.)(down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block)\.")),
    (WAN, re.compile(r"(^|[._])blocks[._]\d+[._](self_attn|cross_attn|ffn|attn1|attn2)")),
)


def family_of(keys) -> str | None:
    """The family a LoRA's keys belong to, or None when no rule recognises them."""
    keys = [str(k) for k in keys]
    for family, rule in _RULES:
        if any(rule.search(k) for k in keys):
            return family
    return None


def lora_keys(path) -> list[str] | None:
    """Key names of a .safetensors LoRA without reading its tensors (None for other formats)."""
    path = Path(path)
    if path.suffix.lower() not in (".safetensors", ".sft"):
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def check_lora_family(name: str, keys, accepted: tuple[str, ...], where: str) -> str | None:
    """Raise ``ValueError`` naming the file and its family when it is not one of ``accepted``.

    Unrecognised key layouts pass (the loader's own key check reports them in detail).
    """
    if keys is None:
        return None
    family = family_of(keys)
    if family is not None and family not in accepted:
        raise ValueError(f"LoRA {name!r} is a {family} LoRA, but {where} takes {' or '.join(accepted)} LoRAs. "
                         f"Pick a {accepted[0]} LoRA from models/loras (or None) for this input; use {name} "
                         f"with a {family} workflow.")
    return family
