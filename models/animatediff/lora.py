"""SD1.5 LoRAs merged into the diffusers UNet and the CLIP text encoder.

Formats (detected per module from the key suffixes, as ComfyUI's weight adapters do):
- kohya / LyCORIS LoCon: ``lora_unet_<diffusers path, . -> _>`` and
  ``lora_te_text_model_<transformers path, . -> _>`` with ``lora_down``/``lora_up``
  (+ ``lora_mid`` for CP-decomposed convs) and ``alpha``;
- LyCORIS LoHa (``hada_w1_a/b``, ``hada_w2_a/b``, optional ``hada_t1/t2``) and LoKr
  (``lokr_w1`` or ``lokr_w1_a/b``, ``lokr_w2`` or ``lokr_w2_a/b``, optional ``lokr_t2``) under
  the same kohya names;
- diffusers / PEFT: ``unet.<path>.lora_A/lora_B.weight``, ``unet.<path>.lora.down/up.weight``
  and the older attention-processor names ``unet.<path>.processor.to_q_lora.down.weight``
  (``to_out_lora`` -> ``to_out.0``); ``text_encoder.<path>`` likewise.

Merge (ComfyUI's, in fp32, cast back): ``W += scale * factor * delta.reshape(W.shape)`` with
LoRA ``delta = up @ down`` (factor ``alpha / rank``), LoHa ``delta = (w1a @ w1b) * (w2a @ w2b)``
(factor ``alpha / w1b.shape[0]``), LoKr ``delta = kron(w1, w2)`` (factor ``alpha / dim`` of the
factored matrix, 1 when both are full); no alpha key: factor 1. LoRAs stack by adding deltas.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .weights_io import AnimateDiffWeightsError

log = logging.getLogger(__name__)

# suffix -> (adapter kind, role); the longest matching suffix wins
_SUFFIXES = {
    ".lora_down.weight": ("lora", "down"), ".lora_up.weight": ("lora", "up"), ".lora_mid.weight": ("lora", "mid"),
    ".lora_A.weight": ("lora", "down"), ".lora_B.weight": ("lora", "up"),
    ".lora.down.weight": ("lora", "down"), ".lora.up.weight": ("lora", "up"),
    "_lora.down.weight": ("lora", "down"), "_lora.up.weight": ("lora", "up"),
    ".hada_w1_a": ("loha", "w1a"), ".hada_w1_b": ("loha", "w1b"), ".hada_w2_a": ("loha", "w2a"),
    ".hada_w2_b": ("loha", "w2b"), ".hada_t1": ("loha", "t1"), ".hada_t2": ("loha", "t2"),
    ".lokr_w1": ("lokr", "w1"), ".lokr_w1_a": ("lokr", "w1a"), ".lokr_w1_b": ("lokr", "w1b"),
    ".lokr_w2": ("lokr", "w2"), ".lokr_w2_a": ("lokr", "w2a"), ".lokr_w2_b": ("lokr", "w2b"), ".lokr_t2": ("lokr", "t2"),
    ".alpha": (None, "alpha"),
}
_UNSUPPORTED = (".oft_blocks", ".oft_diag", ".dora_scale", ".diff_b", ".b_norm", ".w_norm", ".a1.weight")


def is_motion_lora(sd: dict[str, torch.Tensor]) -> bool:
    """Original AnimateDiff motion LoRAs name ``...motion_modules...`` keys."""
    return any("motion_modules" in k for k in sd)


def _module_table(model: nn.Module, prefix: str, extra_level: str = "", dotted: bool = False) -> dict[str, nn.Module]:
    table = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            full = extra_level + name
            table[prefix + (full if dotted else full.replace(".", "_"))] = mod
    return table


def lora_module_table(unet: nn.Module, text_encoder: nn.Module) -> dict[str, nn.Module]:
    """Module name (kohya ``lora_unet_...`` and diffusers ``unet.<path>``) -> the Linear / Conv2d it patches."""
    # transformers 5 keeps no ``text_model`` level in memory; the file names always carry it
    te_level = "" if any(n.startswith("text_model.") for n, _ in text_encoder.named_modules()) else "text_model."
    table = _module_table(unet, "lora_unet_")
    table.update(_module_table(text_encoder, "lora_te_", te_level))
    table.update(_module_table(unet, "unet.", dotted=True))
    table.update(_module_table(text_encoder, "text_encoder.", te_level, dotted=True))
    return table


kohya_module_table = lora_module_table  # the older name


def _split(key: str) -> tuple[str, str | None, str] | None:
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if key.endswith(suffix):
            kind, role = _SUFFIXES[suffix]
            stem = key[: -len(suffix)]
            if suffix.startswith("_lora."):  # attention-processor names: ...processor.to_q_lora.down.weight
                stem = stem.replace(".processor.", ".")
                stem = stem + ".0" if stem.endswith(".to_out") else stem
            return stem, kind, role
    return None


def parse_lora(sd: dict[str, torch.Tensor], name: str = "LoRA") -> dict[str, dict]:
    """Group a LoRA file's tensors by module: {stem: {"kind": lora|loha|lokr, role: tensor, ...}}."""
    bad = sorted(k for k in sd if any(k.endswith(tag) or tag + "." in k for tag in _UNSUPPORTED))
    if bad:
        raise AnimateDiffWeightsError(
            f"{name} holds {len(bad)} keys of an adapter type this loader does not merge (e.g. {bad[:2]}); "
            "supported: kohya/LyCORIS LoRA and LoCon, LoHa, LoKr, and diffusers/PEFT LoRAs")
    modules: dict[str, dict] = {}
    for key, value in sd.items():
        parts = _split(key)
        if parts is None:
            continue
        stem, kind, role = parts
        entry = modules.setdefault(stem, {})
        entry[role] = value
        if kind is not None:
            if entry.get("kind", kind) != kind:
                raise AnimateDiffWeightsError(f"{name}: {stem} mixes {entry['kind']} and {kind} keys")
            entry["kind"] = kind
    return {k: v for k, v in modules.items() if "kind" in v}


def _cp(t: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """CP/Tucker rebuild used by LoHa/LoKr conv factors (ComfyUI's einsum)."""
    return torch.einsum("i j k l, j r, i p -> p r k l", t, b, a)


def module_delta(entry: dict, name: str = "LoRA", stem: str = "") -> tuple[torch.Tensor, float]:
    """(delta, factor) of one module's entry from :func:`parse_lora` (fp32)."""
    f = {k: v.float() for k, v in entry.items() if torch.is_tensor(v)}
    alpha = float(f["alpha"]) if "alpha" in f else None
    kind = entry["kind"]
    try:
        if kind == "lora":
            up, down = f["up"], f["down"]
            rank = down.shape[0]
            if "mid" in f:  # LoCon CP-decomposed conv
                mid = f["mid"]
                shape = [down.shape[1], down.shape[0], mid.shape[2], mid.shape[3]]
                down = torch.mm(down.transpose(0, 1).flatten(1), mid.transpose(0, 1).flatten(1)).reshape(shape).transpose(0, 1)
            return up.flatten(1) @ down.flatten(1), (alpha / rank if alpha is not None else 1.0)
        if kind == "loha":
            w1a, w1b, w2a, w2b = f["w1a"], f["w1b"], f["w2a"], f["w2b"]
            if "t1" in f:
                m1, m2 = _cp(f["t1"], w1b, w1a), _cp(f["t2"], w2b, w2a)
            else:
                m1, m2 = w1a @ w1b, w2a @ w2b
            return m1 * m2, (alpha / w1b.shape[0] if alpha is not None else 1.0)
        # lokr
        dim = None
        if "w1" in f:
            w1 = f["w1"]
        else:
            dim = f["w1b"].shape[0]
            w1 = f["w1a"] @ f["w1b"]
        if "w2" in f:
            w2 = f["w2"]
        else:
            dim = f["w2b"].shape[0]
            w2 = _cp(f["t2"], f["w2b"], f["w2a"]) if "t2" in f else f["w2a"] @ f["w2b"]
        if w2.ndim == 4:
            w1 = w1[:, :, None, None]
        return torch.kron(w1, w2), (alpha / dim if alpha is not None and dim is not None else 1.0)
    except KeyError as exc:
        raise AnimateDiffWeightsError(f"{name}: {stem} ({kind}) lacks its {exc.args[0]!r} tensor; the file is incomplete") from exc


@torch.no_grad()
def merge_lora(table: dict[str, nn.Module], sd: dict[str, torch.Tensor], scale: float, name: str = "LoRA") -> int:
    """Merge one LoRA (any supported format) into the modules in ``table``; returns how many were patched."""
    modules = parse_lora(sd, name)
    if not modules:
        raise AnimateDiffWeightsError(
            f"{name} has no LoRA keys (lora_down/lora_up, lora_A/lora_B, hada_*, lokr_*); not an SD1.5 LoRA file")
    known = [m for m in modules if m in table]
    unknown = [m for m in modules if m not in table]
    if not known:
        raise AnimateDiffWeightsError(
            f"{name}: none of its {len(modules)} modules exist in this SD1.5 model (e.g. {unknown[:2]}); "
            "is it a LoRA for SD1.5 (not SDXL / SD2 / a video model)?")
    if unknown:
        log.warning("%s: %d LoRA modules not found in the model and skipped (e.g. %s)", name, len(unknown), unknown[:3])
    for key in known:
        mod = table[key]
        delta, factor = module_delta(modules[key], name, key)
        w = mod.weight
        if delta.numel() != w.numel():
            raise AnimateDiffWeightsError(
                f"{name}: {key} gives a {tuple(delta.shape)} update for a {tuple(w.shape)} weight; wrong base model?")
        w.copy_((w.float() + (scale * factor) * delta.to(w.device).reshape(w.shape)).to(w.dtype))
    return len(known)


merge_kohya_lora = merge_lora  # the older name


def apply_sd_loras(components, loras: list[tuple[dict, float]]) -> None:
    """Stack SD1.5 LoRAs ``[(state_dict, scale), ...]`` into ``components.unet`` / ``.text_encoder``."""
    if not loras:
        return
    table = lora_module_table(components.unet, components.text_encoder)
    for i, (sd, scale) in enumerate(loras):
        if scale == 0:
            continue
        merge_lora(table, sd, float(scale), name=f"LoRA #{i + 1}")
