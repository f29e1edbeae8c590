"""Where a Wan LoRA's module names land in the pack's diffusers-named Wan transformers.

Why: Wan LoRAs are trained against the original Wan module names (``blocks.{i}.self_attn.q``,
``blocks.{i}.ffn.0``, ``head.head``; kohya files underscore them: ``blocks_0_self_attn_q``) or
against diffusers' names (``blocks.{i}.attn1.to_q``). The pack's models use diffusers' names, so a
target is found by renaming with the layout table (models/wan/layouts.py), then as written, then
as kohya underscores. The mapping (original -> diffusers):

==============================  ======================================
``blocks.N.self_attn.q/k/v/o``  ``blocks.N.attn1.to_q/to_k/to_v/to_out.0``
``blocks.N.cross_attn.q/k/v/o`` ``blocks.N.attn2.to_q/to_k/to_v/to_out.0``
``blocks.N.cross_attn.k_img``   ``blocks.N.attn2.add_k_proj`` (I2V only)
``blocks.N.ffn.0 / ffn.2``      ``blocks.N.ffn.net.0.proj / ffn.net.2``
``blocks.N.norm3``              ``blocks.N.norm2``
``text/time_embedding.0/2``     ``condition_embedder.text/time_embedder.linear_1/2``
``time_projection.1``           ``condition_embedder.time_proj``
``head.head``                   ``proj_out``
==============================  ======================================

One-to-All's main blocks (``blocks.N``) are Wan2.1-T2V blocks under the same diffusers names,
so a Wan2.1-T2V LoRA (14B for the 14B model, 1.3B for the 1.3B) lands on them through this
table; its reference K/V projections (``attn1.add_k_proj``), ``refextractor.*`` and
``controlnet.*`` are only patched by files that name them.
"""
from __future__ import annotations

import re

from torch import nn

from ..runtime.lora import LoRAWeights, apply_lora, as_lora, resolve_plain
from .layouts import rename_transformer_key

# kohya-style (underscored) original Wan module names -> dotted names
_KOHYA_OFFICIAL = [
    (re.compile(r"^blocks_(\d+)_(self_attn|cross_attn)_(q|k|v|o|k_img|v_img|norm_q|norm_k|norm_k_img)$"),
     r"blocks.\1.\2.\3"),
    (re.compile(r"^blocks_(\d+)_ffn_(\d+)$"), r"blocks.\1.ffn.\2"),
    (re.compile(r"^blocks_(\d+)_(norm3|modulation)$"), r"blocks.\1.\2"),
    (re.compile(r"^(text_embedding|time_embedding|time_projection)_(\d+)$"), r"\1.\2"),
    (re.compile(r"^head_head$"), "head.head"),
    (re.compile(r"^img_emb_proj_(\d+)$"), r"img_emb.proj.\1"),
]


def _official_to_diffusers_module(module: str) -> str:
    return rename_transformer_key(module + ".weight")[: -len(".weight")]


def resolve_module(model: nn.Module, name: str, modules: dict | None = None) -> str | None:
    """The diffusers module name a LoRA target means: original Wan names (dotted or kohya
    underscores), or diffusers names (dotted or underscored)."""
    modules = modules if modules is not None else dict(model.named_modules())
    renamed = _official_to_diffusers_module(name)
    if renamed in modules and renamed != name:  # original name first: official norm3 = diffusers norm2
        return renamed
    for pattern, repl in _KOHYA_OFFICIAL:
        if pattern.match(name):
            renamed = _official_to_diffusers_module(pattern.sub(repl, name))
            if renamed in modules:
                return renamed
    return resolve_plain(model, name, modules)


def apply_wan_lora(model: nn.Module, lora: LoRAWeights, strength: float = 1.0, merge: bool = True,
                   use_alpha: bool = True, lora_dtype=None) -> list[str]:
    """:func:`models.runtime.lora.apply_lora` with Wan's name resolution (table above)."""
    return apply_lora(model, lora, strength, merge, use_alpha, lora_dtype, resolve=resolve_module)


def apply_wan_loras(model: nn.Module, loras, merge: bool = True) -> list[str]:
    """Apply a LoRA list (paths, ``LoRAWeights`` or (either, strength)) in order, ComfyUI's alpha
    scaling; returns the patched module names."""
    patched: set[str] = set()
    for item in loras:
        lora, strength = as_lora(item)
        patched.update(apply_wan_lora(model, lora, strength, merge=merge, use_alpha=True))
    return sorted(patched)
