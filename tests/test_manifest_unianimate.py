"""The full-size UniAnimate checkpoint (manifest_unianimate_ckpt.json, ranks 128 and 64) on the
full-size Wan2.1-I2V-14B DiT (manifest_wan21_i2v_14b.json), on the meta device: every LoRA
target is found in the diffusers model with the right shapes (merged, unmerged, fp8 base), the
pose modules load strictly, the rank is read from the shapes, and nothing is allocated."""
from __future__ import annotations

import json

import pytest
import torch

from paths import REFERENCE
from poseanimate.models.runtime.lora import LoRALinear
from poseanimate.models.unianimate.lora import split_unianimate_state_dict
from poseanimate.models.unianimate.pose_modules import PoseEncoders
from poseanimate.models.unianimate.transformer import UniAnimateTransformer, unianimate_from_state_dicts
from poseanimate.models.runtime.fp8 import FP8Linear
from poseanimate.models.runtime.weights import WanWeightsError

REF = REFERENCE / "unianimate_dit"
CKPT = json.loads((REF / "manifest_unianimate_ckpt.json").read_text())
BASE = json.loads((REF / "manifest_wan21_i2v_14b.json").read_text())["keys"]
RANKS = sorted(CKPT["ranks"], key=int)


def _meta(pairs, dtype=torch.bfloat16, prefix="") -> dict:
    items = pairs.items() if isinstance(pairs, dict) else pairs
    return {prefix + k: torch.empty(tuple(shape), dtype=dtype, device="meta") for k, shape in items}


def _assert_all_meta(*modules):
    for module in modules:
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            assert t.is_meta, f"{name} was allocated"


def _unianimate(rank: str, prefix: str = "", dtype=torch.float32):
    entry = CKPT["ranks"][rank]
    sd = _meta(entry["keys"], dtype, prefix)
    assert len(sd) == entry["num_tensors"]
    return split_unianimate_state_dict(sd, source=f"manifest rank {rank}"), entry


@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("prefix", ["", "_forward_module."])
def test_checkpoint_splits_into_lora_and_pose_modules(rank, prefix):
    uni, entry = _unianimate(rank, prefix)
    assert uni.rank == int(rank)  # read from lora_A.shape[0]
    assert len(uni.lora.modules()) == entry["num_wrapped_linear_modules"] == 400
    assert len(uni.pose_state_dict) == entry["num_tensors"] - entry["num_lora_tensors"] == 26
    targets = [f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo"] + ["ffn.0", "ffn.2"]
    assert set(uni.lora.modules()) == {f"blocks.{i}.{t}" for i in range(40) for t in targets}
    pose = PoseEncoders.from_state_dict(uni.pose_state_dict, device="meta")
    assert pose.dim == 5120 and pose.randomref_embedding_pose[-1].out_channels == 20
    _assert_all_meta(pose)


@pytest.mark.parametrize("merge, weight_dtype", [(True, None), (False, None), (False, torch.float8_e4m3fn),
                                                 (True, torch.float8_e4m3fn)],
                         ids=["merged", "unmerged", "unmerged-fp8", "merged-fp8"])
def test_full_size_load_on_meta(merge, weight_dtype):
    uni, entry = _unianimate(RANKS[-1])
    base = _meta(BASE)
    assert len(base) == 1303
    model, pose = unianimate_from_state_dicts(base, uni, dtype=torch.bfloat16, device="meta",
                                              weight_dtype=weight_dtype, merge=merge, source="manifest 14B")
    assert isinstance(model, UniAnimateTransformer)
    assert model.config.num_layers == 40 and model.config.in_channels == 36 and model.config.image_dim == 1280
    _assert_all_meta(model, pose)
    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    if merge:
        assert not wrapped
    else:
        assert len(wrapped) == 400
        expect = {f"blocks.{i}.{m}" for i in range(40) for m in
                  ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                   "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2"]}
        assert set(wrapped) == expect
        for layer in wrapped.values():
            assert layer.lora_down_0.shape[0] == int(RANKS[-1])
            assert isinstance(layer.base, FP8Linear if weight_dtype else torch.nn.Linear)
            if weight_dtype:
                assert layer.base.weight.dtype == weight_dtype
    if weight_dtype and merge:
        assert model.blocks[0].attn1.to_q.weight.dtype == weight_dtype


def test_comfy_base_layout_and_rank_128():
    """ComfyUI's repackaged file (``model.diffusion_model.`` prefix) with the rank-128 file."""
    uni, _ = _unianimate("128", dtype=torch.bfloat16)
    base = _meta(BASE, prefix="model.diffusion_model.")
    model, _ = unianimate_from_state_dicts(base, uni, device="meta", merge=False)
    assert model.blocks[39].ffn.net[2].lora_up_0.shape == (5120, 128)
    _assert_all_meta(model)


def test_wrong_base_model_is_named():
    """A T2V 14B base (16 input channels, no image embedder) is refused with the fix."""
    uni, _ = _unianimate(RANKS[0])
    t2v = {k: v for k, v in BASE.items() if not k.startswith("img_emb.") and "_img" not in k}
    t2v["patch_embedding.weight"] = [5120, 16, 1, 2, 2]
    with pytest.raises(WanWeightsError, match="I2V"):
        unianimate_from_state_dicts(_meta(t2v), uni, device="meta")
