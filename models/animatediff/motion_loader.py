"""Original-format AnimateDiff motion modules (v1, v2, v3, AnimateLCM) and motion LoRAs.

Detection follows ADE's rules (README section 1): the highest ``down_blocks`` index tells
SD1.5 (3) from SDXL (2); no ``pos_encoder`` key means AnimateLCM (PE length 64, the
sinusoid); a ``mid_block.`` key means v2; otherwise PE length 32 means v3, anything else v1.
Keys without ``temporal`` are dropped. v1 / AnimateLCM normalise across frames (ADE's
GroupNorm hack); v2 / v3 per frame.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from .motion_module import MotionBlock, TemporalModule, sinusoid_pe
from ..runtime.build import empty_parameters
from .weights_io import AnimateDiffWeightsError, load_into, read_state_dict

ANIMATELCM_PE_LEN = 64
_BLOCK_RE = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.motion_modules\.(\d+)\.")
_MID_RE = re.compile(r"^mid_block\.motion_modules\.(\d+)\.")
_PE_SUFFIX = "pos_encoder.pe"


class MotionModuleSet(nn.Module):
    """All temporal modules of one motion model, named exactly like the checkpoint.

    ``version`` is "v1" / "v2" / "v3", ``format`` "AnimateDiff" or "AnimateLCM";
    ``groupnorm_across_frames`` (ADE's hack) applies to the motion modules and, through
    :class:`~.unet3d.AnimatedUNet`, to the SD UNet's GroupNorms; ``max_frames`` is the
    positional-encoding length (the longest window the model supports).
    """

    def __init__(self, down_channels: list[int], down_counts: list[int], up_channels: list[int],
                 up_counts: list[int], mid_channels: int | None, max_len: int,
                 version: str = "v2", fmt: str = "AnimateDiff"):
        super().__init__()
        self.down_blocks = nn.ModuleList([MotionBlock(c, n, max_len) for c, n in zip(down_channels, down_counts)])
        self.up_blocks = nn.ModuleList([MotionBlock(c, n, max_len) for c, n in zip(up_channels, up_counts)])
        self.mid_block = MotionBlock(mid_channels, 1, max_len) if mid_channels else None
        self.version = version
        self.format = fmt
        self.groupnorm_across_frames = version == "v1"

    def temporal_modules(self) -> list[TemporalModule]:
        return [m for m in self.modules() if isinstance(m, TemporalModule)]

    @property
    def groupnorm_across_frames(self) -> bool:
        return self._gn_across

    @groupnorm_across_frames.setter
    def groupnorm_across_frames(self, value: bool) -> None:
        self._gn_across = bool(value)
        for m in self.temporal_modules():
            m.groupnorm_across_frames = bool(value)

    @property
    def max_frames(self) -> int:
        return min(m.max_frames for m in self.temporal_modules())

    def set_scale(self, scale) -> None:
        """scale_multival: multiply every temporal attention's keys by ``scale``."""
        for m in self.temporal_modules():
            m.scale = scale

    def set_effect(self, effect) -> None:
        """effect_multival: blend ``x*(1-e) + module(x)*e`` in every module."""
        for m in self.temporal_modules():
            m.effect = effect


def _temporal_only(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if "temporal" in k}


def detect_motion_format(sd: dict[str, torch.Tensor], name: str = "motion module") -> dict:
    """ADE's detection: sd type, format, version, PE length and per-block layout."""
    if any("pos_encoder.positional_encoding" in k for k in sd):
        raise AnimateDiffWeightsError(f"{name} is a HotShotXL (SDXL) motion module; only SD1.5 motion modules are supported")
    if any(k.startswith("conv_in.") for k in sd):
        raise AnimateDiffWeightsError(f"{name} is a PIA motion module; PIA is not supported")
    if any(".motion_modules." in k and ".attn1." in k for k in sd) and not any("temporal" in k for k in sd):
        raise AnimateDiffWeightsError(
            f"{name} is in diffusers' MotionAdapter layout; put the original-format file "
            "(e.g. mm_sd_v15_v2.ckpt / v3_sd15_mm.ckpt) in the animatediff_models folder")
    sd = _temporal_only(sd)
    if not sd:
        raise AnimateDiffWeightsError(
            f"{name} has no 'temporal' keys; put an original AnimateDiff motion module "
            "(mm_sd_v15_v2, v3_sd15_mm, mm_sd_v15, AnimateLCM) in the animatediff_models folder")
    layout: dict[str, dict[int, dict[int, int]]] = {"down_blocks": {}, "up_blocks": {}}
    mid = None
    for k, v in sd.items():
        m = _BLOCK_RE.match(k)
        if m and k.endswith("temporal_transformer.proj_in.weight"):
            layout[m.group(1)].setdefault(int(m.group(2)), {})[int(m.group(3))] = int(v.shape[0])
        m = _MID_RE.match(k)
        if m and k.endswith("temporal_transformer.proj_in.weight"):
            mid = int(v.shape[0])
    if not layout["down_blocks"]:
        raise AnimateDiffWeightsError(f"{name}: no down_blocks.*.motion_modules.* keys found; not an original-format motion module")
    down_max = max(layout["down_blocks"])
    if down_max == 2:
        raise AnimateDiffWeightsError(f"{name} is an SDXL motion module; this loader needs an SD1.5 one")
    if down_max != 3:
        raise AnimateDiffWeightsError(f"{name} has {down_max + 1} down blocks; not an SD1.5 motion module")
    pe_lens = [int(v.shape[1]) for k, v in sd.items() if k.endswith(_PE_SUFFIX)]
    if not any("pos_encoder" in k for k in sd):
        fmt, pe_len = "AnimateLCM", ANIMATELCM_PE_LEN
    else:
        fmt, pe_len = "AnimateDiff", max(pe_lens)
    if mid is not None:
        version = "v2"
    elif pe_len == 32:
        version = "v3"
    else:
        version = "v1"

    def channels_counts(kind):
        blocks = layout[kind]
        idx = sorted(blocks)
        if idx != list(range(len(idx))):
            raise AnimateDiffWeightsError(f"{name}: {kind} indices {idx} are not contiguous")
        chans, counts = [], []
        for i in idx:
            mods = blocks[i]
            if sorted(mods) != list(range(len(mods))):
                raise AnimateDiffWeightsError(f"{name}: {kind}.{i} motion_modules indices {sorted(mods)} are not contiguous")
            chans.append(mods[0])
            counts.append(len(mods))
        return chans, counts

    down_c, down_n = channels_counts("down_blocks")
    up_c, up_n = channels_counts("up_blocks")
    return {"sd_type": "SD1.5", "format": fmt, "version": version, "pe_len": pe_len,
            "down_channels": down_c, "down_counts": down_n, "up_channels": up_c, "up_counts": up_n,
            "mid_channels": mid}


def motion_module_from_state_dict(sd: dict[str, torch.Tensor], dtype=torch.float32, device="cpu",
                                  name: str = "motion module") -> MotionModuleSet:
    """Build the module on ``meta`` and assign the file's tensors (no double allocation).

    With ``device="meta"`` (and meta tensors in ``sd``) this checks key coverage and shapes
    of a full-size manifest without allocating memory.
    """
    info = detect_motion_format(sd, name)
    sd = _temporal_only(sd)
    with empty_parameters():
        mm = MotionModuleSet(info["down_channels"], info["down_counts"], info["up_channels"],
                             info["up_counts"], info["mid_channels"], info["pe_len"],
                             info["version"], info["format"])
    sd = dict(sd)
    for key, buf in mm.state_dict().items():
        if key.endswith(_PE_SUFFIX) and key not in sd and info["format"] == "AnimateLCM":
            pe = sinusoid_pe(buf.shape[1], buf.shape[2])
            sd[key] = pe.to("meta") if str(device) == "meta" else pe
    for k in list(sd):
        sd[k] = sd[k].to(device=device, dtype=dtype)
    load_into(mm, sd, f"{name} ({info['format']} {info['version']})")
    mm.groupnorm_across_frames = info["version"] == "v1"
    return mm


def load_motion_module(path, dtype=torch.float32, device="cpu") -> MotionModuleSet:
    """Load an original-format motion module file (``animatediff_models`` folder)."""
    sd = read_state_dict(path)
    return motion_module_from_state_dict(sd, dtype=dtype, device=device, name=Path(path).name)


def to_diffusers_motion_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original motion-module names -> diffusers ``MotionAdapter`` names.

    The rename rules of the reference manifests: drop ``.temporal_transformer``,
    ``attention_blocks.0/1`` -> ``attn1/attn2``, ``norms.0/1`` -> ``norm1/norm2``,
    ``ff_norm`` -> ``norm3``; ``pos_encoder`` buffers are dropped (diffusers regenerates them).
    Used to check our module against diffusers' on the same weights.
    """
    out = {}
    for k, v in sd.items():
        if "pos_encoder" in k:
            continue
        k = k.replace(".temporal_transformer", "")
        k = re.sub(r"attention_blocks\.(\d)", lambda m: f"attn{int(m.group(1)) + 1}", k)
        k = re.sub(r"norms\.(\d)", lambda m: f"norm{int(m.group(1)) + 1}", k)
        out[k.replace("ff_norm", "norm3")] = v
    return out


def _lora_targets(lora_sd: dict[str, torch.Tensor]) -> dict[str, tuple[str, str]]:
    """Map original motion-LoRA keys to motion-module weights: down key -> (target, up key).

    ``...attention_blocks.0.processor.to_q_lora.down.weight`` patches
    ``...attention_blocks.0.to_q.weight``; ``to_out_lora`` patches ``to_out.0``.
    """
    out = {}
    for key in lora_sd:
        if ".down." not in key:
            continue
        up_key = key.replace(".down.", ".up.")
        if up_key not in lora_sd:
            raise AnimateDiffWeightsError(f"motion LoRA key {key} has no matching {up_key}")
        target = key.replace("processor.", "").replace("_lora", "").replace("down.", "")
        if "to_out.0." not in target:
            target = target.replace("to_out.", "to_out.0.")
        out[key] = (target, up_key)
    return out


@torch.no_grad()
def apply_motion_lora(motion: MotionModuleSet, lora_sd: dict[str, torch.Tensor], strength: float) -> None:
    """Merge an original-format motion LoRA: ``W += strength * up @ down`` (fp32, cast back).

    Mid-block entries are skipped for models without a mid block (as ADE does).
    """
    lora_sd = _temporal_only(lora_sd)
    if not lora_sd:
        raise AnimateDiffWeightsError(
            "motion LoRA has no 'temporal' keys; expected original AnimateDiff motion-LoRA keys like "
            "'down_blocks.0.motion_modules.0.temporal_transformer...processor.to_q_lora.down.weight'")
    params = dict(motion.named_parameters())
    targets = _lora_targets(lora_sd)
    if not targets:
        raise AnimateDiffWeightsError("motion LoRA has no '.down.' weights")
    missing = [t for t, _ in targets.values() if t not in params and not (motion.mid_block is None and t.startswith("mid_block."))]
    if missing:
        raise AnimateDiffWeightsError(
            f"motion LoRA targets {len(missing)} weights this motion module lacks (e.g. {missing[:3]}); "
            "is it made for a different motion-module version?")
    if strength == 0:
        return
    for down_key, (target, up_key) in targets.items():
        if target not in params:
            continue
        w = params[target]
        delta = lora_sd[up_key].to(w.device, torch.float32) @ lora_sd[down_key].to(w.device, torch.float32)
        if delta.shape != w.shape:
            raise AnimateDiffWeightsError(f"motion LoRA {down_key}: up@down is {tuple(delta.shape)}, weight {target} is {tuple(w.shape)}")
        w.copy_((w.float() + strength * delta).to(w.dtype))
