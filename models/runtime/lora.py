"""LoRA files in every common spelling, applied merged into the weights or as side branches.

Why in the runtime: every family takes LoRAs from ComfyUI's ``loras`` folder, in ComfyUI
(``diffusion_model.<module>.lora_A/B.weight``), kohya (``lora_unet_<module_underscored>.lora_down/up.weight``
+ ``.alpha``), diffusers / PEFT (``transformer.<module>.lora_A.weight``, ``.lora_A.default.weight``)
or plain ``lora_down/up`` spellings. Every spelling is parsed into (module, A, B, alpha, full
deltas); the family supplies ``resolve(model, name, modules)`` that maps a file's module name to
its own module (Wan: models/wan/lora_keys.py).

Scales follow ComfyUI: ``strength * alpha / rank`` when the file stores an ``alpha``, else
``strength``; ``.diff`` / ``.diff_b`` entries (full deltas, e.g. for norms) are added as they are.
Merged, ``W += scale * (B @ A)`` in the weight's dtype (fp8 layers are dequantised, patched in
float32 and re-quantised). Unmerged, :class:`LoRALinear` wraps the layer (``nn.Linear`` or the
runtime's fp8 linear) and adds ``scale * B(A(x))``, so fp8 base weights stay fp8.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .fp8 import FP8Linear, dequantize_weight, quantize_weight
from .weights import WeightsError, read_state_dict

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


# ------------------------------------------------------------------------------- parsing
def split_role(key: str) -> tuple[str, str] | None:
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
        split = split_role(key)
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
        raise WeightsError(f"{where}{len(unknown)} entries are not LoRA weights, first: {unknown[:5]}. "
                              f"Expected LoRA keys such as 'diffusion_model.blocks.0.self_attn.q.lora_A.weight' "
                              f"/ 'lora_down.weight' / '.alpha' (LoCon / LoHa / LoKr files are not supported)")
    lone = sorted(set(out.ups) ^ set(out.downs))
    if lone:
        raise WeightsError(f"{where}LoRA layers with only one of the two matrices (A/down, B/up): {lone[:5]}")
    for module in out.ups:
        a, b = out.downs[module], out.ups[module]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise WeightsError(f"{where}LoRA layer {module}: A {tuple(a.shape)} and B {tuple(b.shape)} "
                                  f"are not [rank, in] / [out, rank] matrices")
    if not out.ups and not out.diffs:
        raise WeightsError(f"{where}contains no LoRA layers")
    return out


def read_lora_file(path) -> LoRAWeights:
    path = Path(path)
    return parse_lora_state_dict(read_state_dict(path), source=path.name)


def as_lora(item) -> tuple[LoRAWeights, float]:
    """A LoRA list entry: a path, ``LoRAWeights``, or (either, strength)."""
    strength = 1.0
    if isinstance(item, (tuple, list)):
        item, strength = item
    if isinstance(item, LoRAWeights):
        return item, float(strength)
    return read_lora_file(item), float(strength)


def merge_before_fp8(sd: dict, weight_dtype, merge: bool, has_loras: bool) -> bool:
    """Whether to load full precision, merge the LoRAs, and only then store fp8: merging into fp8
    weights rounds twice, so a full-precision file is merged first, quantised after."""
    from .fp8 import FP8_DTYPES

    return (has_loras and weight_dtype is not None and merge
            and not any(getattr(v, "dtype", None) in FP8_DTYPES for v in sd.values()))


# --------------------------------------------------------------------------- targeting
Resolver = Callable[[nn.Module, str, dict], "str | None"]


def resolve_plain(model: nn.Module, name: str, modules: dict | None = None) -> str | None:
    """The model's own module names, dotted or with underscores (kohya)."""
    modules = modules if modules is not None else dict(model.named_modules())
    if name in modules and name:
        return name
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
               use_alpha: bool = True, lora_dtype=None, resolve: Resolver = resolve_plain) -> list[str]:
    """Apply ``lora`` to ``model`` (merged, or as :class:`LoRALinear` branches); returns the
    diffusers names of the patched modules. Works on meta-device models (shape checks only).

    scale = strength * alpha / rank when ``use_alpha`` and the file has an alpha, else strength."""
    where = f"{lora.source}: " if lora.source else ""
    modules = dict(model.named_modules())  # a layer wrapped earlier answers to its plain name
    resolved, missing = {}, []
    for name in lora.modules():
        target = resolve(model, name, modules)
        (missing.append(name) if target is None else resolved.__setitem__(name, target))
    diff_targets = {}
    for key in lora.diffs:
        module, _, leaf = key.rpartition(".")
        target = resolve(model, module, modules)
        (missing.append(key) if target is None else diff_targets.__setitem__(key, (target, leaf)))
    if missing:
        raise WeightsError(f"{where}{len(missing)} LoRA targets are not in this model, first: {missing[:5]}; "
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
        raise WeightsError(f"{where}{len(wrong)} LoRA shapes do not fit this model, first: {wrong[:3]}; "
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
