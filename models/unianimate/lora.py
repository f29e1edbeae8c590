"""LoRA files for the Wan DiT: the UniAnimate checkpoint (LoRA + pose modules) and any other Wan
LoRA from ComfyUI's ``loras`` folder, merged into the weights or kept as a side branch.

Why a module of its own: the released ``UniAnimate-Wan2.1-14B-Lora-12000.ckpt`` is a flat
Lightning dict with PEFT names (``pipe.dit.blocks.{i}.self_attn.q.lora_A.default.weight``) next to
the two pose modules; other Wan LoRAs use ComfyUI / kohya / diffusers spellings. Every spelling is
parsed into (module, A, B, alpha) and targeted at the diffusers ``WanTransformer3DModel`` through
the runtime's own official->diffusers renames (``models/wan/layouts.py``).

Scales: the UniAnimate LoRA is merged as the official loader does, ``W += scale * (B @ A)`` with
no alpha / rank factor (the file has no alpha) and the product taken in the weight's dtype. Other
LoRAs follow ComfyUI: ``strength * alpha / rank`` when the file stores an ``alpha``, else
``strength``; ``.diff`` / ``.diff_b`` entries (full deltas, e.g. for norms) are added as they are.
Unmerged, :class:`LoRALinear` wraps the layer (``nn.Linear`` or the runtime's fp8 linear) and adds
``scale * B(A(x))``, so fp8 base weights stay fp8.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.fp8 import FP8Linear, dequantize_weight, quantize_weight
from ..wan.layouts import rename_transformer_key
from ..runtime.weights import WanWeightsError, read_state_dict

POSE_MODULE_PREFIXES = ("dwpose_embedding.", "randomref_embedding_pose.")
UNIANIMATE_HINT = ("pick UniAnimate-Wan2.1-14B-Lora-12000.ckpt (ali-vilab/UniAnimate-DiT) or its "
                   "fp16 safetensors conversion, placed in ComfyUI's models/loras folder")

# LoRA entry suffixes -> role. Order matters: longer spellings first.
_SUFFIXES = [
    (".lora_A.default.weight", "A"), (".lora_B.default.weight", "B"),
    (".lora_A.weight", "A"), (".lora_B.weight", "B"),
    (".lora_down.weight", "A"), (".lora_up.weight", "B"),
    (".lora.down.weight", "A"), (".lora.up.weight", "B"),
    (".alpha", "alpha"), (".diff_b", "diff_b"), (".diff", "diff"),
]
# Text in front of the module name that trainers / ComfyUI put there.
_PREFIXES = ("pipe.dit.", "model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.",
             "lora_unet_", "lycoris_", "unet.")
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


@dataclass
class LoRAWeights:
    """A parsed LoRA: module name (as the file spells it, prefix removed) -> A [r, in],
    B [out, r], optional alpha; plus full deltas keyed by parameter name."""
    ups: dict[str, torch.Tensor] = field(default_factory=dict)
    downs: dict[str, torch.Tensor] = field(default_factory=dict)
    alphas: dict[str, float] = field(default_factory=dict)
    diffs: dict[str, torch.Tensor] = field(default_factory=dict)  # "<module>.weight" / "<module>.bias"
    source: str = ""

    def modules(self) -> list[str]:
        return sorted(self.ups)

    def rank(self, module: str) -> int:
        return int(self.downs[module].shape[0])


@dataclass
class UniAnimateFile:
    """The UniAnimate checkpoint split into its LoRA and its pose modules' state dict."""
    lora: LoRAWeights
    pose_state_dict: dict[str, torch.Tensor]
    rank: int
    source: str = ""


# ------------------------------------------------------------------------------- parsing
def _split_role(key: str) -> tuple[str, str] | None:
    for suffix, role in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def _strip_prefix(module: str) -> str:
    """Remove wrapper text before the module name (also inside, e.g. ``_forward_module.pipe.dit.``)."""
    if "pipe.dit." in module:  # what the official loader does: key.split("pipe.dit.")[1]
        return module.split("pipe.dit.", 1)[1]
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if module.startswith(prefix):
                module, changed = module[len(prefix):], True
    return module


def parse_lora_state_dict(sd: dict, source: str = "", skip=lambda key: False) -> LoRAWeights:
    """Group a LoRA state dict's entries by target module; keys ``skip`` accepts are ignored.
    Unknown entries raise with the first offending names."""
    out = LoRAWeights(source=source)
    unknown = []
    for key, value in sd.items():
        if skip(key):
            continue
        split = _split_role(key)
        if split is None:
            unknown.append(key)
            continue
        module, role = split
        module = _strip_prefix(module)
        if role == "A":
            out.downs[module] = value
        elif role == "B":
            out.ups[module] = value
        elif role == "alpha":
            out.alphas[module] = float(value.float().reshape(-1)[0]) if value.numel() else 0.0
        else:
            out.diffs[f"{module}.{'bias' if role == 'diff_b' else 'weight'}"] = value
    where = f"{source}: " if source else ""
    if unknown:
        raise WanWeightsError(f"{where}{len(unknown)} entries are not LoRA weights, first: {unknown[:5]}. "
                              f"Expected Wan LoRA keys such as 'diffusion_model.blocks.0.self_attn.q.lora_A.weight' "
                              f"/ 'lora_down.weight' / '.alpha' (LoCon / LoHa / LoKr files are not supported)")
    lone = sorted(set(out.ups) ^ set(out.downs))
    if lone:
        raise WanWeightsError(f"{where}LoRA layers with only one of the two matrices (A/down, B/up): {lone[:5]}")
    for module in out.ups:
        a, b = out.downs[module], out.ups[module]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise WanWeightsError(f"{where}LoRA layer {module}: A {tuple(a.shape)} and B {tuple(b.shape)} "
                                  f"are not [rank, in] / [out, rank] matrices")
    if not out.ups and not out.diffs:
        raise WanWeightsError(f"{where}contains no LoRA layers")
    return out


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
    other = [k for k in sd if not _is_pose_key(k) and "lora" not in k.lower() and _split_role(k) is None]
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


def read_lora_file(path) -> LoRAWeights:
    path = Path(path)
    return parse_lora_state_dict(read_state_dict(path), source=path.name)


# --------------------------------------------------------------------------- targeting
def _official_to_diffusers_module(module: str) -> str:
    return rename_transformer_key(module + ".weight")[: -len(".weight")]


def resolve_module(model: nn.Module, name: str, modules: dict | None = None) -> str | None:
    """The diffusers module name a LoRA target means: original Wan names (dotted or kohya
    underscores), or diffusers names (dotted or underscored)."""
    modules = modules if modules is not None else dict(model.named_modules())
    renamed = _official_to_diffusers_module(name)
    if renamed in modules and renamed != name:  # original name first: official norm3 = diffusers norm2
        return renamed
    if name in modules and name:
        return name
    for pattern, repl in _KOHYA_OFFICIAL:
        if pattern.match(name):
            renamed = _official_to_diffusers_module(pattern.sub(repl, name))
            if renamed in modules:
                return renamed
    underscored = {n.replace(".", "_"): n for n in modules if n}
    return underscored.get(name)


def _base_linear(module: nn.Module) -> nn.Module:
    return module.base if isinstance(module, LoRALinear) else module


class LoRALinear(nn.Module):
    """A linear layer (``nn.Linear`` or ``FP8Linear``) plus unmerged LoRA branches:
    ``base(x) + sum(scale * B(A(x)))``, computed in the input's dtype."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.scales: list[float] = []
        self._count = 0

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def add(self, down: torch.Tensor, up: torch.Tensor, scale: float, dtype=None) -> None:
        ref = self.base.bias if self.base.bias is not None else self.base.weight
        dtype = dtype or (ref.dtype if ref.dtype.is_floating_point and ref.dtype.itemsize >= 2 else torch.bfloat16)
        i = self._count
        self.register_buffer(f"lora_down_{i}", down.detach().to(device=ref.device, dtype=dtype))
        self.register_buffer(f"lora_up_{i}", up.detach().to(device=ref.device, dtype=dtype))
        self.scales.append(float(scale))
        self._count += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        for i, scale in enumerate(self.scales):
            down = getattr(self, f"lora_down_{i}").to(x.dtype)
            up = getattr(self, f"lora_up_{i}").to(x.dtype)
            out = out + F.linear(F.linear(x, down), up) * scale
        return out

    def extra_repr(self) -> str:
        return f"loras={len(self.scales)}, scales={self.scales}"


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def _merge_into(layer: nn.Module, delta_fn) -> None:
    """``weight += delta`` in the weight's dtype; fp8 layers are dequantised, patched in float32
    and re-quantised with a fresh scale."""
    if isinstance(layer, FP8Linear):
        w = dequantize_weight(layer.weight, layer.scale_weight, torch.float32)
        q, scale = quantize_weight(w + delta_fn(torch.float32, w.device), layer.weight.dtype)
        layer.weight = nn.Parameter(q, requires_grad=False)
        layer.scale_weight = scale
    else:
        w = layer.weight
        w.data = w.data + delta_fn(w.dtype, w.device)


def apply_lora(model: nn.Module, lora: LoRAWeights, strength: float = 1.0, merge: bool = True,
               use_alpha: bool = True, lora_dtype=None) -> list[str]:
    """Apply ``lora`` to ``model`` (merged, or as :class:`LoRALinear` branches); returns the
    diffusers names of the patched modules. Works on meta-device models (shape checks only).

    scale = strength * alpha / rank when ``use_alpha`` and the file has an alpha, else strength."""
    where = f"{lora.source}: " if lora.source else ""
    modules = dict(model.named_modules())  # a layer wrapped earlier answers to its plain name
    resolved, missing = {}, []
    for name in lora.modules():
        target = resolve_module(model, name, modules)
        (missing.append(name) if target is None else resolved.__setitem__(name, target))
    diff_targets = {}
    for key in lora.diffs:
        module, _, leaf = key.rpartition(".")
        target = resolve_module(model, module, modules)
        (missing.append(key) if target is None else diff_targets.__setitem__(key, (target, leaf)))
    if missing:
        raise WanWeightsError(f"{where}{len(missing)} LoRA targets are not in this Wan model, first: {missing[:5]}; "
                              f"the LoRA was made for another model (check 14B vs 1.3B, I2V vs T2V)")
    wrong = []
    for name, target in resolved.items():
        layer = _base_linear(modules[target])
        a, b = lora.downs[name], lora.ups[name]
        if not hasattr(layer, "in_features") or (a.shape[1], b.shape[0]) != (layer.in_features, layer.out_features):
            shape = (getattr(layer, "out_features", "?"), getattr(layer, "in_features", "?"))
            wrong.append(f"{name}: B@A {(b.shape[0], a.shape[1])} vs layer {shape}")
    for key, (target, leaf) in diff_targets.items():
        p = getattr(_base_linear(modules[target]), leaf, None)
        if p is None or tuple(p.shape) != tuple(lora.diffs[key].shape):
            wrong.append(f"{key}: {tuple(lora.diffs[key].shape)} vs {None if p is None else tuple(p.shape)}")
    if wrong:
        raise WanWeightsError(f"{where}{len(wrong)} LoRA shapes do not fit this Wan model, first: {wrong[:3]}; "
                              f"the LoRA was made for another model size")
    for name, target in resolved.items():
        a, b = lora.downs[name], lora.ups[name]
        scale = strength
        if use_alpha and name in lora.alphas:
            scale = strength * lora.alphas[name] / a.shape[0]
        module = modules[target]
        if merge:
            def delta(dtype, device, a=a, b=b, scale=scale):
                return torch.mm(b.to(device=device, dtype=dtype), a.to(device=device, dtype=dtype)) * scale
            _merge_into(_base_linear(module), delta)
        else:
            if not isinstance(module, LoRALinear):
                module = LoRALinear(module)
                _set_submodule(model, target, module)
                modules[target] = module
            module.add(a, b, scale, lora_dtype)
    with torch.no_grad():
        for key, (target, leaf) in diff_targets.items():
            layer = _base_linear(modules[target])
            if isinstance(layer, FP8Linear) and leaf == "weight":
                d = lora.diffs[key]
                _merge_into(layer, lambda dtype, device, d=d: d.to(device=device, dtype=dtype) * strength)
            else:
                p = getattr(layer, leaf)
                p.data = p.data + lora.diffs[key].to(device=p.device, dtype=p.dtype) * strength
    return sorted(set(resolved.values()) | {t for t, _ in diff_targets.values()})
