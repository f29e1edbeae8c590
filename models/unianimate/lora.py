"""The UniAnimate checkpoint: its LoRA and its two pose modules, split apart.

Why a module of its own: the released ``UniAnimate-Wan2.1-14B-Lora-12000.ckpt`` is a flat
Lightning dict with PEFT names (``pipe.dit.blocks.{i}.self_attn.q.lora_A.default.weight``) next to
the two pose modules. The LoRA part is parsed by the runtime (models/runtime/lora.py) and targeted
through Wan's names (models/wan/lora_keys.py); it is merged as the official loader does,
``W += scale * (B @ A)`` with no alpha / rank factor (the file has no alpha).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..runtime.lora import LoRAWeights, split_role, parse_lora_state_dict
from ..runtime.weights import WanWeightsError, read_state_dict

POSE_MODULE_PREFIXES = ("dwpose_embedding.", "randomref_embedding_pose.")
UNIANIMATE_HINT = ("pick UniAnimate-Wan2.1-14B-Lora-12000.ckpt (ali-vilab/UniAnimate-DiT) or its "
                   "fp16 safetensors conversion, placed in ComfyUI's models/loras folder")

@dataclass
class UniAnimateFile:
    """The UniAnimate checkpoint split into its LoRA and its pose modules' state dict."""
    lora: LoRAWeights
    pose_state_dict: dict[str, torch.Tensor]
    rank: int
    source: str = ""


def _is_pose_key(key: str) -> bool:
    return any(p in key for p in POSE_MODULE_PREFIXES)


def split_unianimate_state_dict(sd: dict, source: str = "") -> UniAnimateFile:
    """The UniAnimate checkpoint's entries -> LoRA (keys containing ``lora``) + pose modules (keys
    containing ``dwpose_embedding.`` / ``randomref_embedding_pose.``), matched by substring like
    the official loader so wrapper prefixes (``_forward_module.``) do not matter. The rank is read
    from ``lora_A.shape[0]``."""
    where = f"{source}: " if source else ""
    pose = {}
    for key, value in sd.items():
        for prefix in POSE_MODULE_PREFIXES:
            if prefix in key:
                pose[prefix + key.split(prefix, 1)[1]] = value
    if not pose:
        raise WanWeightsError(f"{where}no 'dwpose_embedding.*' / 'randomref_embedding_pose.*' entries: this is "
                              f"not the UniAnimate file (an ordinary Wan LoRA goes in the extra LoRA list); "
                              f"{UNIANIMATE_HINT}")
    other = [k for k in sd if not _is_pose_key(k) and "lora" not in k.lower() and split_role(k) is None]
    if other:
        raise WanWeightsError(f"{where}{len(other)} entries are neither LoRA nor pose-module weights, first: "
                              f"{other[:5]}; {UNIANIMATE_HINT}")
    lora = parse_lora_state_dict(sd, source, skip=_is_pose_key)
    ranks = {lora.rank(m) for m in lora.modules()}
    if len(ranks) > 1:
        raise WanWeightsError(f"{where}LoRA layers have different ranks {sorted(ranks)}")
    lora.alphas.clear()  # the official merge uses only the loader's scale (conversions may add alpha = rank)
    return UniAnimateFile(lora, pose, ranks.pop() if ranks else 0, source)


def read_unianimate_file(path) -> UniAnimateFile:
    """Read the UniAnimate ``.ckpt`` (``torch.load(weights_only=True)``) or its safetensors twin."""
    path = Path(path)
    return split_unianimate_state_dict(read_state_dict(path), source=path.name)
