"""Load a released One-to-All Animation checkpoint (14B or 1.3B) as ``OneToAllTransformer``.

Why: the official release is a folder of safetensors shards (``MochunniaN1/One-to-All-14b``,
``One-to-All-1.3b_1/_2``) whose keys are the training model's state dict: diffusers Wan names plus
``controlnet.*``, ``controlnet_zero.*``, ``input_hint_block.*``, ``refextractor.*``,
``image_to_cond.*``. The official scripts read every ``*.safetensors`` in the folder and load them
strictly; so does this loader, and it also takes a shard index, or one file holding the same
names (optionally under ComfyUI's ``model.diffusion_model.`` prefix). The model size (main /
controlnet / refextractor layers, widths, FFN sizes) is read from the shapes; the model is built
on the meta device and filled with ``assign=True`` by ``models.wan.loading``, so weights are held
once. Missing, unexpected or mis-shaped keys raise ``WanWeightsError`` naming them.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from ..runtime.fp8 import convert_to_fp8
from ..runtime.gguf import QuantizedWeight
from ..runtime.lora import merge_before_fp8
from ..wan.loading import convert_transformer_state_dict, transformer_from_state_dict
from ..wan.lora_keys import apply_wan_loras
from ..runtime.weights import WanWeightsError, read_state_dict
from .transformer import OneToAllTransformer

__all__ = ["load_one_to_all", "one_to_all_from_state_dict", "one_to_all_extra_config", "read_one_to_all_weights",
           "one_to_all_fp8_filter", "ONE_TO_ALL_HINT"]

HEAD_DIM = 128  # every released One-to-All model (and the official reference RoPE) uses 128
ONE_TO_ALL_HINT = ("a One-to-All Animation checkpoint: the folder of MochunniaN1/One-to-All-14b or "
                   "One-to-All-1.3b_1/_2 (all its *.safetensors shards), its shard index JSON, or one "
                   "safetensors file with the same key names")
_MARKERS = ("refextractor.patch_embedding.weight", "image_to_cond.conv_in.weight", "input_hint_block.conv_in.conv.weight")


_SHARD = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.safetensors$")


def _folder_shards(folder: Path) -> list[Path]:
    """The weight files of a release folder: its one complete ``*-0000i-of-0000n`` shard set when
    it has one (other files, e.g. unrelated models next to it, are left alone), else every
    ``*.safetensors`` in it, which is what the official scripts read."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith((".safetensors", ".sft")))
    groups: dict[tuple[str, int], list[Path]] = {}
    for f in files:
        if (m := _SHARD.match(f.name)):
            groups.setdefault((m["stem"], int(m["n"])), []).append(f)
    if len(groups) > 1:
        raise WanWeightsError(f"{folder}: several shard sets {sorted(f'{s}-*-of-{n:05d}' for s, n in groups)}; "
                              f"pick the index JSON or move each checkpoint into its own folder")
    if groups:
        (stem, n), shards = next(iter(groups.items()))
        have = {int(_SHARD.match(f.name)["i"]) for f in shards}
        lacking = [f"{stem}-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1) if i not in have]
        if lacking:
            raise WanWeightsError(f"{folder}: shards {lacking[:3]} are missing; download every shard of the checkpoint")
        return shards
    return files


def read_one_to_all_weights(path: Path, device="cpu") -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint: a file, a shard index, or a folder (its index JSON if it has
    exactly one, else its shards, see ``_folder_shards``)."""
    path = Path(path)
    if not path.is_dir():
        return read_state_dict(path, device=device)
    if len(list(path.glob("*.safetensors.index.json"))) == 1:
        return read_state_dict(path, device=device)
    shards = _folder_shards(path)
    if not shards:
        return read_state_dict(path, device=device)  # raises the shared "no weight files" error
    out: dict[str, torch.Tensor] = {}
    for shard in shards:
        part = read_state_dict(shard, device=device)
        clash = sorted(set(part) & set(out))
        if clash:
            raise WanWeightsError(f"{path}: {shard.name} repeats keys of another shard (first: {clash[:3]}); "
                                  f"keep only the shards of one checkpoint in this folder")
        out.update(part)
    return out


def _layer_count(sd: dict, prefix: str) -> int:
    found = [int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))]
    return 1 + max(found) if found else 0


def one_to_all_extra_config(sd: dict, num_attention_heads: int | None = None) -> dict:
    """The ``controlnet_*`` / ``refextractor_*`` arguments of ``OneToAllTransformer`` from the
    shapes of a diffusers-named state dict (meta tensors are fine)."""
    missing = [k for k in _MARKERS if k not in sd]
    if missing:
        raise WanWeightsError(f"not a One-to-All checkpoint: no {missing} (a plain Wan2.1 model?); pick {ONE_TO_ALL_HINT}")
    try:
        dim = sd["patch_embedding.weight"].shape[0]
        heads = num_attention_heads or dim // HEAD_DIM
        ref_dim = sd["refextractor.patch_embedding.weight"].shape[0]
        if ref_dim != dim:
            raise WanWeightsError(f"refextractor width {ref_dim} differs from the model width {dim}")
        cfg = dict(
            controlnet_layers=_layer_count(sd, "controlnet.blocks."),
            controlnet_heads=heads,
            controlnet_ffn_dim=sd["controlnet.blocks.0.ffn.net.0.proj.weight"].shape[0]
            if "controlnet.blocks.0.ffn.net.0.proj.weight" in sd else None,
            refextractor_layers=_layer_count(sd, "refextractor.blocks."),
            refextractor_heads=heads,
            refextractor_ffn_dim=sd["refextractor.blocks.0.ffn.net.0.proj.weight"].shape[0]
            if "refextractor.blocks.0.ffn.net.0.proj.weight" in sd else None,
            refextractor_freq_dim=sd["refextractor.condition_embedder.time_embedder.linear_1.weight"].shape[1],
            refextractor_in_channels=sd["refextractor.patch_embedding.weight"].shape[1],
        )
    except KeyError as exc:
        raise WanWeightsError(f"One-to-All weights lack {exc}, needed to read the model size; pick {ONE_TO_ALL_HINT}") from exc
    return cfg


def one_to_all_fp8_filter(name: str, module: nn.Module) -> bool:
    """fp8 storage for the Linear layers of the main, controlnet and refextractor blocks (the
    bulk of the weights: the 14B refextractor alone is 2.1B parameters)."""
    return type(module) is nn.Linear and name.startswith(("blocks.", "controlnet.blocks.", "refextractor.blocks."))


def one_to_all_from_state_dict(sd: dict, dtype=torch.bfloat16, device="cpu", weight_dtype=None,
                               num_attention_heads: int | None = None, source: str = "",
                               consume: bool = False, loras=(), merge: bool = True) -> OneToAllTransformer:
    """``OneToAllTransformer`` from a state dict (real or meta tensors), config read from shapes.

    ``loras``: paths, ``LoRAWeights`` or (either, strength), any spelling models/runtime/lora.py
    reads; a Wan2.1-T2V LoRA lands on the main blocks (mapping: models/wan/lora_keys.py).
    ``merge``: added into the weights (an fp8 choice then quantises after merging a full-precision
    file), else kept as side branches over the (fp8) weights."""
    # GGUF blocks cannot absorb a merge: their LoRAs run as unmerged branches (as UniAnimate's do).
    merge = merge and not any(isinstance(v, QuantizedWeight) for v in sd.values())
    quantize_after = merge_before_fp8(sd, weight_dtype, merge, has_loras=bool(loras))
    converted, layout = convert_transformer_state_dict(sd)
    if not layout.startswith("diffusers"):
        raise WanWeightsError(f"{source or 'checkpoint'}: keys are in the original Wan layout ({layout}); One-to-All "
                              f"checkpoints use diffusers names (blocks.N.attn1.to_q, ...); pick {ONE_TO_ALL_HINT}")
    extra = one_to_all_extra_config(converted, num_attention_heads)
    if consume:
        sd.clear()

    def factory(config: dict) -> OneToAllTransformer:
        return OneToAllTransformer(**config, **extra)

    model = transformer_from_state_dict(converted, dtype=dtype, device=device,
                                        weight_dtype=None if quantize_after else weight_dtype,
                                        num_attention_heads=num_attention_heads, source=source,
                                        fp8_filter=one_to_all_fp8_filter, consume=True, model_factory=factory)
    if loras:
        apply_wan_loras(model, loras, merge=merge)
    if quantize_after:
        convert_to_fp8(model, weight_dtype, one_to_all_fp8_filter)
    return model


def _folder_heads(path: Path) -> int | None:
    folder = path if path.is_dir() else path.parent
    for name in ("config.json", "configuration.json"):
        cfg = folder / name
        if cfg.is_file():
            try:
                data = json.loads(cfg.read_text())
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("num_attention_heads"):
                return int(data["num_attention_heads"])
    return None


def load_one_to_all(path, dtype=torch.bfloat16, device="cpu", weight_dtype=None,
                    num_attention_heads: int | None = None, loras=(), merge: bool = True) -> OneToAllTransformer:
    """The One-to-All transformer in ``path`` (folder of shards, index JSON or single file).

    ``dtype``: compute / storage dtype (bf16 default); ``weight_dtype=torch.float8_e4m3fn`` stores
    the blocks' Linear weights in fp8; ``loras`` / ``merge`` as in :func:`one_to_all_from_state_dict`. Placement (block swap included) is the runtime's prepare
    step (``OneToAllModel.prepare``), as for every family."""
    path = Path(path)
    heads = num_attention_heads or _folder_heads(path)
    sd = read_one_to_all_weights(path, device=device)
    return one_to_all_from_state_dict(sd, dtype=dtype, device=device, weight_dtype=weight_dtype,
                                      num_attention_heads=heads, source=path.name, consume=True,
                                      loras=loras, merge=merge)
