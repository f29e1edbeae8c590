"""UniAnimate-DiT model parity with the official code (tests/fixtures/reference/unianimate_dit,
README sections 3 and 4.6): the tiny Wan2.1-I2V DiT + UniAnimate LoRA + pose modules, fp32 on
CPU, one denoising step (positive pass with pose tokens, negative pass without), the CFG
combination and scheduler step, the no-LoRA and unrounded-pose variants, the pose embeddings,
and the whole 50-step run; with the LoRA merged and kept unmerged.

Plus every folder in ``POSEANIMATE_EXTRA_GOLDENS`` (os.pathsep-separated) holding the same file
names (other config, seed, shapes); all sizes come from each folder's tiny_config.json, and the
folder path is part of each test id.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from paths import REFERENCE
from poseanimate.models.runtime.lora import LoRAWeights
from poseanimate.models.unianimate.lora import UniAnimateFile, read_unianimate_file
from poseanimate.models.unianimate.pose_modules import official_pose_video_to_frames
from poseanimate.models.unianimate.transformer import UniAnimateTransformer, unianimate_from_state_dicts
from poseanimate.models.runtime.weights import read_state_dict

FILES = ("tiny_config.json", "tiny_base_weights.safetensors", "tiny_lora.safetensors",
         "tiny_inputs.safetensors", "tiny_outputs.safetensors")
DEFAULT_TOL = 1e-4


def golden_dirs() -> list[Path]:
    dirs = [REFERENCE / "unianimate_dit"]
    for entry in os.environ.get("POSEANIMATE_EXTRA_GOLDENS", "").split(os.pathsep):
        d = Path(entry.strip()) if entry.strip() else None
        if d and all((d / f).is_file() for f in FILES):
            family = json.loads((d / "tiny_config.json").read_text()).get("family", "unianimate_dit")
            if family == "unianimate_dit":
                dirs.append(d)
    return dirs


DIRS = [pytest.param(d, id=str(d)) for d in golden_dirs()]
_CACHE: dict = {}


class Golden:
    def __init__(self, folder: Path):
        self.folder = folder
        self.config = json.loads((folder / "tiny_config.json").read_text())
        self.inputs = load_file(str(folder / "tiny_inputs.safetensors"))
        self.outputs = load_file(str(folder / "tiny_outputs.safetensors"))
        self.tol = {k.split(" ")[0]: v for k, v in self.config.get("tolerances_max_abs", {}).items()}

    def model(self, variant: str):
        """variant: "merged", "unmerged" or "nolora"; cached per folder."""
        key = (self.folder, variant)
        if key not in _CACHE:
            uni = read_unianimate_file(self.folder / "tiny_lora.safetensors")
            if variant == "nolora":
                uni = UniAnimateFile(LoRAWeights(source="none"), uni.pose_state_dict, 0, uni.source)
            base = read_state_dict(self.folder / "tiny_base_weights.safetensors")
            _CACHE[key] = unianimate_from_state_dicts(
                base, uni, dtype=torch.float32, device="cpu", merge=variant != "unmerged",
                lora_scale=self.config["lora"].get("merge_alpha", 1.0),
                num_attention_heads=self.config["model"]["num_heads"], source="tiny_base_weights")
        return _CACHE[key]

    def forward(self, variant, context, y, pose_tokens=None, x=None, timestep=None):
        model, _ = self.model(variant)
        i = self.inputs
        x = i["x"] if x is None else x
        t = i["timestep"] if timestep is None else timestep
        with torch.no_grad():
            return model(torch.cat([x, y], dim=1), t, context, i["clip_feature"], pose_tokens=pose_tokens,
                         return_dict=False)[0]

    def check(self, name: str, got: torch.Tensor) -> float:
        want = self.outputs[name]
        assert got.shape == want.shape, name
        err = (got - want).abs().max().item()
        tol = self.tol.get(name, DEFAULT_TOL)
        assert err <= tol, f"{self.folder}: {name} max abs error {err:.3g} > {tol}"
        return err


def golden(folder) -> Golden:
    key = ("golden", folder)
    if key not in _CACHE:
        _CACHE[key] = Golden(folder)
    return _CACHE[key]


# ------------------------------------------------------------------------------ pose modules
@pytest.mark.parametrize("folder", DIRS)
def test_pose_embeddings_match_unrounded(folder):
    g = golden(folder)
    _, pose = g.model("merged")
    i = g.inputs
    frames = official_pose_video_to_frames(i["dwpose_data"])
    tol = g.tol.get("pose_tokens_fp32", 1e-5)
    with torch.no_grad():
        emb = pose.embed_pose_video(frames, round_bf16=False)
        tokens = pose.pose_tokens(frames, round_bf16=False)
        ref = pose.embed_reference_pose(i["random_ref_dwpose"], round_bf16=False)
    assert emb.shape == i["dwpose_embedding_out_fp32"].shape
    assert (emb - i["dwpose_embedding_out_fp32"]).abs().max() <= tol
    assert tokens.shape == i["pose_tokens_fp32"].shape
    assert (tokens - i["pose_tokens_fp32"]).abs().max() <= tol
    with torch.no_grad():  # full-resolution layers on 2-frame chunks (the memory-saving path)
        chunked = pose.pose_tokens(frames, round_bf16=False, chunk_frames=2)
    assert (chunked - i["pose_tokens_fp32"]).abs().max() <= tol
    assert ref.shape == i["ref_pose_embedding_fp32"].shape
    assert (ref - i["ref_pose_embedding_fp32"]).abs().max() <= g.tol.get("ref_pose_embedding_fp32", 1e-5)
    # uint8 frames, as pose renders arrive, give the same tokens
    with torch.no_grad():
        as_uint8 = pose.pose_tokens(frames.round().to(torch.uint8), round_bf16=False)
    assert (as_uint8 - tokens).abs().max() <= 1e-6


@pytest.mark.parametrize("folder", DIRS)
def test_pose_embeddings_bf16_rounding_as_official(folder):
    """Rounded outputs are bf16 values equal to the golden's, except rare flips of one bf16 ulp
    where the unrounded value sits on a rounding boundary (README 3.3)."""
    g = golden(folder)
    _, pose = g.model("merged")
    i = g.inputs
    with torch.no_grad():
        tokens = pose.pose_tokens(official_pose_video_to_frames(i["dwpose_data"]))
        ref = pose.embed_reference_pose(i["random_ref_dwpose"])
        y = pose.add_reference_pose(i["y_base"], i["random_ref_dwpose"])
    assert torch.equal(tokens.to(torch.bfloat16).float(), tokens)
    assert torch.equal(ref.to(torch.bfloat16).float(), ref)
    for got, want, unrounded in ((tokens, i["pose_tokens"], i["pose_tokens_fp32"]),
                                 (y - i["y_base"], i["y"] - i["y_base"], i["ref_pose_embedding_fp32"].expand_as(y))):
        diff = (got - want).abs()
        ulp = unrounded.abs() * 2.0 ** -7 + 1e-6
        assert (diff <= ulp).all()
        assert (diff > 1e-6).float().mean() < 0.01  # flips are rare, not a systematic offset
    assert torch.equal(y, i["y_base"] + ref)


# --------------------------------------------------------------------------------- one step
@pytest.mark.parametrize("variant", ["merged", "unmerged"])
@pytest.mark.parametrize("folder", DIRS)
def test_one_step_positive_negative_cfg_and_scheduler(folder, variant):
    g = golden(folder)
    i, p = g.inputs, g.config["pipeline"]
    pos = g.forward(variant, i["context_pos"], i["y"], pose_tokens=i["pose_tokens"])
    neg = g.forward(variant, i["context_neg"], i["y"])  # official negative pass: no pose tokens
    g.check("noise_pred_pos", pos)
    g.check("noise_pred_neg", neg)
    cfg = neg + p["cfg_scale"] * (pos - neg)
    g.check("noise_pred_cfg", cfg)
    g.check("latents_next", i["x"] + cfg * (p["sigma_next"] - p["sigma"]))


@pytest.mark.parametrize("variant", ["merged", "unmerged"])
@pytest.mark.parametrize("folder", DIRS)
def test_one_step_with_unrounded_pose_branch(folder, variant):
    g = golden(folder)
    i = g.inputs
    y = i["y_base"] + i["ref_pose_embedding_fp32"]
    g.check("noise_pred_pos_fp32_pose", g.forward(variant, i["context_pos"], y, pose_tokens=i["pose_tokens_fp32"]))
    g.check("noise_pred_neg_fp32_pose", g.forward(variant, i["context_neg"], y))


@pytest.mark.parametrize("folder", DIRS)
def test_one_step_without_lora(folder):
    g = golden(folder)
    i = g.inputs
    g.check("noise_pred_pos_nolora", g.forward("nolora", i["context_pos"], i["y"], pose_tokens=i["pose_tokens"]))
    g.check("noise_pred_neg_nolora", g.forward("nolora", i["context_neg"], i["y"]))
    # the LoRA matters far beyond the tolerance, so the merged test above is not vacuous
    merged = g.forward("merged", i["context_pos"], i["y"], pose_tokens=i["pose_tokens"])
    assert (merged - g.outputs["noise_pred_pos_nolora"]).abs().max() > 100 * DEFAULT_TOL


@pytest.mark.parametrize("folder", DIRS)
def test_whole_run_final_latents(folder):
    """All steps from the seeded noise with the golden's own sigma table (x += v * dsigma)."""
    g = golden(folder)
    i, p = g.inputs, g.config["pipeline"]
    sigmas = i["scheduler_sigmas"].tolist() + [0.0]
    x = i["noise"]
    for step, t in enumerate(i["scheduler_timesteps"]):
        t = t.reshape(1)
        pos = g.forward("merged", i["context_pos"], i["y"], pose_tokens=i["pose_tokens"], x=x, timestep=t)
        neg = g.forward("merged", i["context_neg"], i["y"], x=x, timestep=t)
        x = x + (neg + p["cfg_scale"] * (pos - neg)) * (sigmas[step + 1] - sigmas[step])
        if step == p["record_step"]:
            assert (x - g.outputs["latents_next"]).abs().max() <= 1e-4  # the recorded step is on the path
    g.check("final_latents", x)


def test_model_is_the_diffusers_wan_class():
    model, pose = golden(REFERENCE / "unianimate_dit").model("merged")
    from diffusers import WanTransformer3DModel
    assert isinstance(model, UniAnimateTransformer) and isinstance(model, WanTransformer3DModel)
    cfg = golden(REFERENCE / "unianimate_dit").config
    assert model.config.num_layers == cfg["model"]["num_layers"]
    assert pose.dim == cfg["dwpose_embedding"]["out_channels"]
