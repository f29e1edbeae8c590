"""Loading the UniAnimate model: the checkpoint in both file forms and key spellings, merged vs
unmerged LoRA (also on fp8 base weights), stacking other Wan LoRAs in every common naming,
pose-input checks, the tiny ComfyUI model folder, and the errors users get for wrong files."""
from __future__ import annotations

import pytest
import torch
import unianimate_tiny as ut
import wan_tiny
from safetensors.torch import load_file

from paths import REFERENCE
from poseanimate.models.runtime import lora as rt_lora
from poseanimate.models.unianimate import lora as lora_mod
from poseanimate.models.unianimate import transformer as tr
from poseanimate.models.unianimate.pose_modules import (PoseEncoders, comfy_image_to_pose_pixels,
                                                         official_pose_video_to_frames)
from poseanimate.models.wan.attention import install_attention
from poseanimate.models.runtime.fp8 import FP8Linear
from poseanimate.models.runtime.weights import WanWeightsError

REF = REFERENCE / "unianimate_dit"
DIM = ut.TINY_UA_DIT["dim"]


def _inputs(seed=0, frames=2, h=4, w=6, text=7, image_tokens=5):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 36, frames, h, w, generator=g), timestep=torch.tensor([700.0]),
                encoder_hidden_states=torch.randn(1, text, ut.TINY_UA_DIT["text_dim"], generator=g),
                encoder_hidden_states_image=torch.randn(1, image_tokens, ut.TINY_UA_DIT["image_dim"], generator=g),
                pose_tokens=torch.randn(1, frames * h * w // 4, DIM, generator=g) * 0.5)


def _run(model, **kw):
    with torch.no_grad():
        return model(**kw, return_dict=False)[0]


@pytest.fixture()
def tiny_files(tmp_path):
    base = wan_tiny.write_file(tmp_path / "base.safetensors", ut.tiny_base_sd())
    sd = ut.tiny_unianimate_sd()
    ckpt = ut.write_unianimate_ckpt(tmp_path / "ua.ckpt", sd)
    return base, ckpt, sd, tmp_path


def test_ckpt_and_safetensors_twin_load_the_same(tmp_path):
    """The golden LoRA re-saved as the real .ckpt form (torch.save flat dict, wrapper prefix
    included) merges to exactly the weights the safetensors file gives."""
    sd = load_file(str(REF / "tiny_lora.safetensors"))
    ckpt = ut.write_unianimate_ckpt(tmp_path / "x.ckpt", {"_forward_module." + k: v for k, v in sd.items()})
    heads = 2
    a, pa = tr.load_unianimate(REF / "tiny_base_weights.safetensors", REF / "tiny_lora.safetensors",
                               dtype=torch.float32, num_attention_heads=heads)
    b, pb = tr.load_unianimate(REF / "tiny_base_weights.safetensors", ckpt, dtype=torch.float32,
                               num_attention_heads=heads)
    for (n, x), (_, y) in zip(list(a.state_dict().items()) + list(pa.state_dict().items()),
                              list(b.state_dict().items()) + list(pb.state_dict().items())):
        assert torch.equal(x, y), n
    uni = lora_mod.read_unianimate_file(ckpt)
    assert uni.rank == 4 and len(uni.lora.modules()) == 2 * 10
    # a ComfyUI-style fp16 conversion (diffusion_model.*.lora_A.weight, alpha = rank) means the same
    conv = {}
    for k, v in sd.items():
        if "lora" in k:
            k = "diffusion_model." + k.removeprefix("pipe.dit.").replace(".default.", ".")
            if ".lora_A." in k:
                conv[k.replace(".lora_A.weight", ".alpha")] = torch.tensor(4.0)
        conv[k] = v.half()
    c, pc = tr.load_unianimate(REF / "tiny_base_weights.safetensors",
                               wan_tiny.write_file(tmp_path / "conv.safetensors", conv), dtype=torch.float32,
                               num_attention_heads=heads)
    for (n, x), (_, y) in zip(a.state_dict().items(), c.state_dict().items()):
        assert torch.allclose(x, y, atol=2e-3), n
    assert (pc.dwpose_embedding[12].weight - pa.dwpose_embedding[12].weight).abs().max() < 1e-3


def test_merge_is_official_rule(tiny_files):
    base, ckpt, sd, _ = tiny_files
    model, _ = tr.load_unianimate(base, ckpt, dtype=torch.float32, lora_scale=0.7)
    raw = ut.tiny_base_sd()
    for official, diffusers in (("blocks.1.cross_attn.o", "blocks.1.attn2.to_out.0"),
                                ("blocks.0.ffn.0", "blocks.0.ffn.net.0.proj")):
        a = sd[f"pipe.dit.{official}.lora_A.default.weight"]
        b = sd[f"pipe.dit.{official}.lora_B.default.weight"]
        want = raw[f"{official}.weight"] + 0.7 * (b @ a)  # no alpha / rank factor
        assert torch.allclose(model.get_submodule(diffusers).weight, want, atol=1e-7)


def test_unmerged_equals_merged_and_pose_tokens_matter(tiny_files):
    base, ckpt, _, _ = tiny_files
    merged, _ = tr.load_unianimate(base, ckpt, dtype=torch.float32, merge=True)
    unmerged, _ = tr.load_unianimate(base, ckpt, dtype=torch.float32, merge=False)
    nolora, _ = tr.load_unianimate(base, ckpt, dtype=torch.float32, lora_scale=0.0)
    kw = _inputs()
    out_m, out_u, out_n = _run(merged, **kw), _run(unmerged, **kw), _run(nolora, **kw)
    assert (out_m - out_u).abs().max() < 1e-5
    assert (out_m - out_n).abs().max() > 1e-2
    no_pose = dict(kw, pose_tokens=None)
    assert (_run(merged, **no_pose) - out_m).abs().max() > 1e-2
    # pose tokens with batch 1 broadcast over a batch of 2
    kw2 = {k: (torch.cat([v, v]) if k not in ("pose_tokens", "timestep") else v) for k, v in kw.items()}
    kw2["timestep"] = kw["timestep"].repeat(2)
    out2 = _run(merged, **kw2)
    assert (out2[1] - out_m[0]).abs().max() < 1e-5


def test_unmerged_lora_on_fp8_base(tiny_files):
    base, ckpt, _, tmp = tiny_files
    ref, _ = tr.load_unianimate(base, ckpt, dtype=torch.float32, merge=True)
    fp8, _ = tr.load_unianimate(base, ckpt, dtype=torch.float32, weight_dtype=torch.float8_e4m3fn, merge=False)
    fp8_nolora, _ = tr.load_unianimate(base, ckpt, dtype=torch.float32, weight_dtype=torch.float8_e4m3fn,
                                       lora_scale=0.0)
    layer = fp8.blocks[0].attn1.to_q
    assert isinstance(layer, rt_lora.LoRALinear) and isinstance(layer.base, FP8Linear)
    assert layer.base.weight.dtype == torch.float8_e4m3fn
    x = torch.randn(3, DIM, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = layer.base(x) + (x @ layer.lora_down_0.T) @ layer.lora_up_0.T
        assert torch.allclose(layer(x), want, atol=1e-6)
    kw = _inputs()
    out_ref, out_fp8, out_plain = _run(ref, **kw), _run(fp8, **kw), _run(fp8_nolora, **kw)
    fp8_err = (out_fp8 - out_ref).abs().max()
    assert fp8_err < 0.05 * out_ref.abs().max()
    assert (out_fp8 - out_plain).abs().max() > 2 * fp8_err  # the LoRA branch is really applied
    # merged with fp8 storage: a full-precision file is merged first and quantised after
    fp8_merged, _ = tr.load_unianimate(base, ckpt, dtype=torch.float32, weight_dtype=torch.float8_e4m3fn, merge=True)
    assert fp8_merged.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    assert (_run(fp8_merged, **kw) - out_ref).abs().max() < 0.05 * out_ref.abs().max()
    # an fp8 "scaled" file (ComfyUI): dequantised, patched and re-quantised per layer
    scaled = wan_tiny.write_file(tmp / "scaled.safetensors", wan_tiny.fp8_scaled(ut.tiny_base_sd()))
    for weight_dtype, merge in ((torch.float8_e4m3fn, True), (torch.float8_e4m3fn, False), (None, True)):
        m, _ = tr.load_unianimate(scaled, ckpt, dtype=torch.float32, weight_dtype=weight_dtype, merge=merge)
        layer = m.blocks[1].ffn.net[2]
        assert isinstance(layer, rt_lora.LoRALinear) != merge
        assert rt_lora._base_linear(layer).weight.dtype == (weight_dtype or torch.float32)
        assert (_run(m, **kw) - out_ref).abs().max() < 0.05 * out_ref.abs().max()


@pytest.mark.parametrize("style", ["comfy", "comfy_updown", "kohya", "diffusers"])
@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged"])
def test_extra_wan_lora_in_every_spelling(tiny_files, style, merge):
    base, ckpt, sd, tmp = tiny_files
    extra_sd = ut.tiny_wan_lora_sd(style, rank=2, alpha=1.0)
    path = wan_tiny.write_file(tmp / f"{style}.safetensors", extra_sd)
    model, _ = tr.load_unianimate(base, ckpt, dtype=torch.float32, merge=merge, extra_loras=[(path, 0.8)])
    comfy = ut.tiny_wan_lora_sd("comfy", rank=2, alpha=1.0)
    raw = ut.tiny_base_sd()
    official, diffusers = "blocks.1.self_attn.v", "blocks.1.attn1.to_v"
    a = comfy[f"diffusion_model.{official}.lora_A.weight"]
    b = comfy[f"diffusion_model.{official}.lora_B.weight"]
    ua = sd[f"pipe.dit.{official}.lora_B.default.weight"] @ sd[f"pipe.dit.{official}.lora_A.default.weight"]
    want = raw[f"{official}.weight"] + ua + 0.8 * (1.0 / 2) * (b @ a)  # strength * alpha / rank
    layer = model.get_submodule(diffusers)
    if merge:
        assert torch.allclose(layer.weight, want, atol=1e-6)
    else:
        assert isinstance(layer, rt_lora.LoRALinear) and len(layer.scales) == 2
        x = torch.randn(2, DIM, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            assert torch.allclose(layer(x), x @ want.T + raw[f"{official}.bias"], atol=1e-5)


def test_extra_lora_without_alpha_and_with_full_deltas(tiny_files):
    base, ckpt, _, tmp = tiny_files
    extra = ut.tiny_wan_lora_sd("comfy", rank=2, alpha=None, diff_norms=True)
    path = wan_tiny.write_file(tmp / "d.safetensors", extra)
    model, _ = tr.load_unianimate(base, ckpt, dtype=torch.float32, extra_loras=[(path, 0.5)])
    raw = ut.tiny_base_sd()
    norm = model.blocks[0].norm2  # official norm3
    diff = extra["diffusion_model.blocks.0.norm3.diff"]
    assert torch.allclose(norm.weight, raw["blocks.0.norm3.weight"] + 0.5 * diff)
    assert torch.allclose(norm.bias, raw["blocks.0.norm3.bias"] + 0.5 * extra["diffusion_model.blocks.0.norm3.diff_b"])
    a = extra["diffusion_model.blocks.0.ffn.2.lora_A.weight"]
    b = extra["diffusion_model.blocks.0.ffn.2.lora_B.weight"]
    plain, _ = tr.load_unianimate(base, ckpt, dtype=torch.float32)
    want = plain.blocks[0].ffn.net[2].weight + 0.5 * (b @ a)
    assert torch.allclose(model.blocks[0].ffn.net[2].weight, want, atol=1e-7)


def test_pose_inputs_are_checked_and_bad_tokens_named(tiny_files):
    base, ckpt, _, _ = tiny_files
    model, pose = tr.load_unianimate(base, ckpt, dtype=torch.float32)
    frames = torch.randint(0, 256, (5, 32, 48, 3), dtype=torch.uint8)
    tokens = pose.pose_tokens(frames)
    assert tokens.shape == (1, 2 * 2 * 3, DIM)
    assert tokens.dtype == torch.float32 and torch.equal(tokens.to(torch.bfloat16).float(), tokens)
    ref = torch.randint(0, 256, (32, 48, 3), dtype=torch.uint8)
    y = pose.add_reference_pose(torch.zeros(1, 20, 2, 4, 6), ref)
    assert y.shape == (1, 20, 2, 4, 6) and torch.equal(y[:, :, 0], y[:, :, 1])
    with pytest.raises(ValueError, match="4k\\+1"):
        pose.pose_tokens(frames[:4])
    with pytest.raises(ValueError, match="multiples of 16"):
        pose.pose_tokens(frames[:, :30])
    with pytest.raises(ValueError, match="generation size"):
        pose.add_reference_pose(torch.zeros(1, 20, 2, 8, 6), ref)
    kw = _inputs()
    kw["pose_tokens"] = tokens  # 12 tokens, the latents have 2*2*3 = 12 -> fits
    _run(model, **kw)
    kw["pose_tokens"] = tokens[:, :6]
    with pytest.raises(ValueError, match="pose_tokens"):
        _run(model, **kw)


def test_official_split_at_image_tokens_equals_stock_for_512_text(tiny_files):
    """With UMT5's 512 text rows the stock diffusers split and the official 257-image-token
    split agree; with other lengths only the latter is right (goldens) and it keeps the
    installed attention backend's processor."""
    base, ckpt, _, _ = tiny_files
    model, _ = tr.load_unianimate(base, ckpt, dtype=torch.float32)
    kw = _inputs(text=512)
    stock = _run(model, **kw)
    saved = [b.attn2.processor for b in model.blocks]
    for b, p in zip(model.blocks, saved):
        b.attn2.processor = tr._ImageFirstCrossAttention(p, kw["encoder_hidden_states_image"].shape[1])
    try:
        official = _run(model, **kw)
    finally:
        for b, p in zip(model.blocks, saved):
            b.attn2.processor = p
    assert (stock - official).abs().max() < 1e-5
    short = _inputs(text=9)
    before = _run(model, **short)
    assert all(b.attn2.processor is p for b, p in zip(model.blocks, saved))  # restored after the call
    install_attention(model, "sdpa")
    assert (_run(model, **short) - before).abs().max() < 1e-5
    assert (_run(model, **kw) - stock).abs().max() < 1e-5


def test_wrong_files_give_clear_errors(tiny_files):
    base, ckpt, sd, tmp = tiny_files
    plain_lora = wan_tiny.write_file(tmp / "plain.safetensors", ut.tiny_wan_lora_sd("comfy"))
    with pytest.raises(WanWeightsError, match="dwpose_embedding"):
        tr.load_unianimate(base, plain_lora)
    missing = {k: v for k, v in sd.items() if k != "dwpose_embedding.12.bias"}
    with pytest.raises(WanWeightsError, match="dwpose_embedding.12.bias"):
        tr.load_unianimate(base, ut.write_unianimate_ckpt(tmp / "m.ckpt", missing))
    junk = dict(sd, **{"optimizer.step": torch.zeros(1)})
    with pytest.raises(WanWeightsError, match="optimizer.step"):
        tr.load_unianimate(base, ut.write_unianimate_ckpt(tmp / "j.ckpt", junk))
    big = wan_tiny.write_file(tmp / "big.safetensors", ut.tiny_wan_lora_sd("comfy", dim=256))
    with pytest.raises(WanWeightsError, match="another model size"):
        tr.load_unianimate(base, ckpt, extra_loras=[(big, 1.0)])
    deep = wan_tiny.write_file(tmp / "deep.safetensors", ut.tiny_wan_lora_sd("comfy", num_layers=4))
    with pytest.raises(WanWeightsError, match="not in this model"):
        tr.load_unianimate(base, ckpt, extra_loras=[deep])
    odd = wan_tiny.write_file(tmp / "odd.safetensors", {"blocks.0.self_attn.q.hada_w1_a": torch.zeros(2, 2)})
    with pytest.raises(WanWeightsError, match="not LoRA weights"):
        tr.load_unianimate(base, ckpt, extra_loras=[odd])
    t2v = wan_tiny.write_file(tmp / "t2v.safetensors", wan_tiny.official_transformer_sd(**wan_tiny.TINY_DIT))
    with pytest.raises(WanWeightsError, match="I2V"):
        tr.load_unianimate(t2v, ckpt)
    narrow = ut.tiny_unianimate_sd(dim=64)
    with pytest.raises(WanWeightsError, match="wide"):
        tr.load_unianimate(base, ut.write_unianimate_ckpt(tmp / "n.ckpt", narrow))


def test_write_tiny_models_folder_loads(tmp_path):
    written = ut.write_tiny_models(tmp_path)
    names = {p.relative_to(tmp_path).as_posix() for p in written.values()}
    assert names == {f"diffusion_models/{ut.BASE_NAME}", f"loras/{ut.UNIANIMATE_CKPT_NAME}",
                     f"loras/{ut.UNIANIMATE_SAFETENSORS_NAME}", f"vae/{ut.VAE_NAME}",
                     f"text_encoders/{ut.TEXT_ENCODER_NAME}", f"clip_vision/{ut.CLIP_VISION_NAME}"}
    base = written["base"]
    a, pose_a = tr.load_unianimate(base, written["unianimate_ckpt"], dtype=torch.float32)
    b, pose_b = tr.load_unianimate(base, written["unianimate_safetensors"], dtype=torch.float32, merge=False)
    assert a.config.num_attention_heads == 1 and a.config.image_dim == wan_tiny.TINY_CLIP["hidden_size"]
    kw = _inputs(text=512)
    frames = torch.randint(0, 256, (5, 32, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    kw["pose_tokens"] = pose_a.pose_tokens(frames)
    assert (pose_b.pose_tokens(frames) - kw["pose_tokens"]).abs().max() < 0.05  # fp16 twin
    out_a, out_b = _run(a, **kw), _run(b, **kw)
    assert torch.isfinite(out_a).all() and (out_a - out_b).abs().max() < 0.05


def test_pose_encoders_official_structure():
    """Layer indices are the checkpoint keys; the golden's pose modules load strictly."""
    sd = {k: v for k, v in load_file(str(REF / "tiny_lora.safetensors")).items() if "lora" not in k}
    pose = PoseEncoders.from_state_dict(sd)
    assert [i for i, m in enumerate(pose.dwpose_embedding) if isinstance(m, torch.nn.Conv3d)] == [0, 2, 4, 6, 8, 10, 12]
    convs2d = [i for i, m in enumerate(pose.randomref_embedding_pose) if isinstance(m, torch.nn.Conv2d)]
    assert convs2d == [0, 2, 4, 6, 8, 10]
    assert isinstance(pose.randomref_embedding_pose[-1], torch.nn.Conv2d)  # no activation after the last conv
    assert official_pose_video_to_frames(torch.zeros(3, 5, 16, 32)).shape == (5, 16, 32, 3)
    pixels = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    image = pixels.float() / 255  # a ComfyUI IMAGE of those pixels
    assert torch.equal(comfy_image_to_pose_pixels(image), pixels)
    assert torch.equal(pose.pose_tokens(pixels[:1]), pose.pose_tokens(comfy_image_to_pose_pixels(image[:1])))


def test_pose_video_in_frame_chunks_is_exact(monkeypatch):
    """The full-resolution pose layers run on overlapping frame chunks (4-frame halo) with the
    same result as the whole clip; a smaller halo would not be."""
    sd = {k: v for k, v in ut.tiny_unianimate_sd().items() if "lora" not in k}
    pose = PoseEncoders.from_state_dict(sd)
    frames = torch.randint(0, 256, (21, 32, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = pose.embed_pose_video(frames, round_bf16=False, chunk_frames=None)
        for chunk in (1, 3, 7, 16, 24):
            assert (pose.embed_pose_video(frames, round_bf16=False, chunk_frames=chunk) - full).abs().max() < 1e-6
        monkeypatch.setattr(type(pose.dwpose_embedding), "HALO", 3)
        assert (pose.embed_pose_video(frames, round_bf16=False, chunk_frames=3) - full).abs().max() > 1e-4
