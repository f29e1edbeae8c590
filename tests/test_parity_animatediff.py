"""Numerical parity of our AnimateDiff motion module with ADE's original formulation.

Goldens: tests/fixtures/reference/animatediff/mm_tiny_* (README section 2, tolerance 1e-4
max abs, fp32) plus every folder in ``POSEANIMATE_EXTRA_GOLDENS`` (os.pathsep-separated)
that holds the same file names; the folder path is part of each test id.
Also: the full animated UNet against diffusers' UNetMotionModel where the two formulations
coincide, which pins the motion-module placement.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from poseanimate.models.animatediff.motion_module import TemporalModule
from poseanimate.models.animatediff.unet3d import AnimatedUNet

REF = Path(__file__).resolve().parent / "fixtures" / "reference" / "animatediff"
FILES = ("mm_tiny_weights.safetensors", "mm_tiny_input.safetensors", "mm_tiny_output.safetensors")
TOL = 1e-4


def golden_dirs() -> list[Path]:
    dirs = [REF]
    for entry in os.environ.get("POSEANIMATE_EXTRA_GOLDENS", "").split(os.pathsep):
        if entry.strip():
            d = Path(entry.strip())
            if all((d / f).is_file() for f in FILES):  # only folders of the animatediff family
                dirs.append(d)
    return dirs


def golden_cases():
    cases = []
    for d in golden_dirs():
        with safe_open(str(d / "mm_tiny_output.safetensors"), "pt") as f:
            names = sorted(f.keys())
        cases += [pytest.param(d, "mm_tiny_output.safetensors", n, id=f"{d}::{n}") for n in names]
        if (d / "mm_tiny_output_diffusers.safetensors").is_file():
            cases.append(pytest.param(d, "mm_tiny_output_diffusers.safetensors", "y", id=f"{d}::diffusers_y"))
    return cases


def _meta(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def build_golden_module(d: Path) -> tuple[TemporalModule, torch.Tensor, int]:
    weights = load_file(str(d / "mm_tiny_weights.safetensors"))
    prefixes = {m.group(0) for k in weights if (m := re.match(r".*?motion_modules\.\d+\.", k))}
    assert len(prefixes) == 1, f"{d}: expected one motion module in mm_tiny_weights, got {sorted(prefixes)}"
    prefix = prefixes.pop()
    sd = {k[len(prefix):]: v for k, v in weights.items()}
    meta = _meta(d / "mm_tiny_weights.safetensors")
    channels = sd["temporal_transformer.norm.weight"].shape[0]
    pe_len = next(v.shape[1] for k, v in sd.items() if k.endswith("pos_encoder.pe"))
    module = TemporalModule(channels, pe_len, heads=int(meta.get("heads", 8)), groups=int(meta.get("norm_groups", 32)))
    module.load_state_dict(sd, strict=True)
    x = load_file(str(d / "mm_tiny_input.safetensors"))["x"]
    in_meta = _meta(d / "mm_tiny_input.safetensors")
    frames = in_meta.get("frames")
    if frames is None and (d / "mm_tiny_compare.json").is_file():
        frames = json.loads((d / "mm_tiny_compare.json").read_text())["config"]["frames"]
    assert frames is not None, f"{d}: frame count not given (mm_tiny_input metadata 'frames')"
    return module.eval(), x, int(frames)


def _number(text: str) -> float:
    return float(text.replace("p", "."))


@pytest.mark.parametrize("folder,file,name", golden_cases())
def test_motion_module_matches_golden(folder, file, name):
    module, x, frames = build_golden_module(folder)
    expected = load_file(str(folder / file))[name]
    if file == "mm_tiny_output_diffusers.safetensors":
        module.groupnorm_across_frames = True  # diffusers normalises across frames
    elif name == "y":
        pass
    elif m := re.fullmatch(r"y_scale_(\d+p\d+)", name):
        module.scale = _number(m.group(1))
    elif m := re.fullmatch(r"y_effect_(\d+p\d+)", name):
        module.effect = _number(m.group(1))
    elif name == "y_groupnorm_hack":
        module.groupnorm_across_frames = True
    else:
        pytest.skip(f"unknown golden variant {name}")
    with torch.no_grad():
        y = module(x, frames)
    err = (y - expected).abs().max().item()
    assert err <= TOL, f"{folder}/{file}:{name}: max abs error {err:.3g} > {TOL}"


def test_per_frame_groupnorm_is_what_differs_from_diffusers():
    """The reference's documented difference: per-frame vs across-frame GroupNorm."""
    module, x, frames = build_golden_module(REF)
    diffusers_y = load_file(str(REF / "mm_tiny_output_diffusers.safetensors"))["y"]
    with torch.no_grad():
        per_frame = module(x, frames)
    assert (per_frame - diffusers_y).abs().max().item() > 0.5


# ---------------------------------------------------------------- whole UNet vs diffusers
@pytest.mark.parametrize("version", ["v2", "v3"])
def test_animated_unet_matches_diffusers_unet_motion_model(version):
    """With motion GroupNorms across frames and the SD UNet per frame (diffusers' formulation),
    our injected UNet equals diffusers' UNetMotionModel on the same weights: same placement."""
    from diffusers import MotionAdapter, UNetMotionModel

    import ad_tiny
    from poseanimate.models.animatediff.motion_loader import motion_module_from_state_dict, to_diffusers_motion_keys

    unet = ad_tiny.tiny_sd15_models()[0]
    mm_sd = ad_tiny.tiny_motion_state_dict(version)
    motion = motion_module_from_state_dict(mm_sd)
    motion.groupnorm_across_frames = True
    ours = AnimatedUNet(unet, motion, unet_groupnorm_across_frames=False).eval()

    adapter = MotionAdapter(block_out_channels=ad_tiny.TINY_UNET["block_out_channels"], motion_layers_per_block=2,
                            motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32,
                            use_motion_mid_block=version == "v2")
    missing, unexpected = adapter.load_state_dict(to_diffusers_motion_keys(mm_sd), strict=False)
    assert not unexpected and all(k.endswith("pos_embed.pe") for k in missing)
    theirs = UNetMotionModel.from_unet2d(ad_tiny.tiny_sd15_models()[0], adapter).eval()

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 6, 8, 8, generator=gen)
    ehs = torch.randn(1, 7, 32, generator=gen)
    with torch.no_grad():
        a = ours(x, 500, ehs)
        b = theirs(x, 500, ehs.repeat_interleave(x.shape[2], dim=0)).sample  # diffusers wants per-frame text
    err = (a - b).abs().max().item()
    assert err <= TOL * max(1.0, b.abs().max().item()), err
    with torch.no_grad():  # and the motion modules do act
        motion.set_effect(0.0)
        assert (ours(x, 500, ehs) - b).abs().max().item() > 1e-2
