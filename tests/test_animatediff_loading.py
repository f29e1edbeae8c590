"""AnimateDiff loading: SD1.5 single files, motion modules, motion / kohya LoRAs, ControlNet.

Tiny files are written in the real layouts by tests/ad_tiny.py; full-size key manifests
(tests/fixtures/reference/animatediff/) are checked on the meta device.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import ad_tiny
from poseanimate.models.animatediff import sd15_checkpoint as S
from poseanimate.models.animatediff.controlnet import load_controlnet
from poseanimate.models.animatediff.lora import apply_sd_loras, kohya_module_table
from poseanimate.models.animatediff.motion_loader import (apply_motion_lora, load_motion_module,
                                                          motion_module_from_state_dict)
from poseanimate.models.animatediff.unet3d import AnimatedUNet, build_animated_unet, groupnorm_across_frames
from poseanimate.models.animatediff.weights_io import AnimateDiffWeightsError

REF = Path(__file__).resolve().parent / "fixtures" / "reference" / "animatediff"
MANIFESTS = ["manifest_mm_sd_v15_v2.json", "manifest_v3_sd15_mm.json", "manifest_mm_sd_v15.json",
             "manifest_AnimateLCM_sd15_t2v.json"]


def _ref(name):
    return json.loads((REF / name).read_text())


def _meta_sd(shapes: dict) -> dict:
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ad")
    return {
        "sd15": ad_tiny.write_tiny_sd15(d / "checkpoints" / "tiny_sd15.safetensors"),
        "mm_v2": ad_tiny.write_tiny_motion_module(d / "mm_v2.safetensors", "v2"),
        "mm_v3": ad_tiny.write_tiny_motion_module(d / "mm_v3.ckpt", "v3"),
        "mm_v1": ad_tiny.write_tiny_motion_module(d / "mm_v1.safetensors", "v1"),
        "mm_lcm": ad_tiny.write_tiny_motion_module(d / "mm_lcm.safetensors", "AnimateLCM"),
        "mlora": ad_tiny.write_tiny_motion_lora(d / "mlora.safetensors"),
        "kohya": ad_tiny.write_tiny_kohya_lora(d / "lora.safetensors"),
        "cn": ad_tiny.write_tiny_controlnet(d / "control_v11p_sd15_openpose.pth"),
        "dir": d,
    }


@pytest.fixture(scope="module")
def components(files):
    return S.load_sd15_checkpoint(files["sd15"])


# ---------------------------------------------------------------- motion-module manifests (meta)
@pytest.mark.parametrize("manifest", MANIFESTS)
def test_motion_manifest_loads_fully_on_meta(manifest):
    ref = _ref(manifest)
    shapes = dict(ref["keys"])
    for k in ref.get("keys_absent_from_checkpoint_file", []):
        shapes.pop(k)
    mm = motion_module_from_state_dict(_meta_sd(shapes), device="meta", name=manifest)
    assert mm.version == ref["mm_info"]["version"]
    assert mm.format == ref["mm_info"]["format"]
    assert mm.max_frames == ref["encoding_max_len"]
    assert mm.groupnorm_across_frames == (ref["mm_info"]["version"] == "v1")
    own = {k: list(v.shape) for k, v in mm.state_dict().items()}
    assert own == ref["keys"]
    assert sum(v.numel() for v in mm.state_dict().values()) == ref["num_elements"]
    assert all(p.is_meta for p in mm.parameters())


def test_motion_manifest_extra_non_temporal_keys_are_dropped():
    shapes = dict(_ref("manifest_mm_sd_v15_v2.json")["keys"])
    shapes["some_other.weight"] = [3]
    mm = motion_module_from_state_dict(_meta_sd(shapes), device="meta")
    assert mm.version == "v2" and mm.mid_block is not None


def test_motion_detection_errors_name_the_problem():
    shapes = _ref("manifest_v3_sd15_mm.json")["keys"]
    sdxl = {k: v for k, v in shapes.items() if not k.startswith(("down_blocks.3.", "up_blocks.3."))}
    with pytest.raises(AnimateDiffWeightsError, match="SDXL"):
        motion_module_from_state_dict(_meta_sd(sdxl), device="meta")
    with pytest.raises(AnimateDiffWeightsError, match="temporal"):
        motion_module_from_state_dict({"model.diffusion_model.x": torch.zeros(1)})
    diffusers_layout = {"down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.weight": torch.zeros(1)}
    with pytest.raises(AnimateDiffWeightsError, match="MotionAdapter"):
        motion_module_from_state_dict(diffusers_layout)
    hotshot = dict(_meta_sd(shapes))
    hotshot["down_blocks.0.motion_modules.0.temporal_transformer.pos_encoder.positional_encoding"] = torch.zeros(1)
    with pytest.raises(AnimateDiffWeightsError, match="HotShot"):
        motion_module_from_state_dict(hotshot, device="meta")
    broken = dict(_meta_sd(shapes))
    key = "up_blocks.1.motion_modules.2.temporal_transformer.proj_out.weight"
    broken[key] = torch.empty(7, 7, device="meta")
    with pytest.raises(AnimateDiffWeightsError, match="proj_out"):
        motion_module_from_state_dict(broken, device="meta")


# ---------------------------------------------------------------- tiny motion modules
@pytest.mark.parametrize("key,version,fmt,pe,across", [
    ("mm_v2", "v2", "AnimateDiff", 32, False), ("mm_v3", "v3", "AnimateDiff", 32, False),
    ("mm_v1", "v1", "AnimateDiff", 24, True), ("mm_lcm", "v1", "AnimateLCM", 64, True)])
def test_tiny_motion_modules_load_with_weights(files, key, version, fmt, pe, across):
    mm = load_motion_module(files[key])
    assert (mm.version, mm.format, mm.max_frames, mm.groupnorm_across_frames) == (version, fmt, pe, across)
    src = ad_tiny.tiny_motion_state_dict(version if fmt == "AnimateDiff" else "AnimateLCM")
    own = mm.state_dict()
    for k, v in src.items():
        assert torch.equal(own[k], v), k
    if fmt == "AnimateLCM":  # PE regenerated as the sinusoid the other models store
        pe_key = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"
        c = own[pe_key].shape[2]
        ref = ad_tiny.sinusoid_pe(64, c)
        assert torch.allclose(own[pe_key], ref)


def test_motion_module_dtype_and_too_many_frames(files):
    mm = load_motion_module(files["mm_v1"], dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in mm.parameters())
    mm = load_motion_module(files["mm_v1"])
    module = mm.down_blocks[0].motion_modules[0]
    with pytest.raises(ValueError, match="context windows"):
        module(torch.zeros(25, 32, 2, 2), 25)


def test_motion_lora_merge_math_and_strength(files):
    lora = load_file(str(files["mlora"]))
    base = load_motion_module(files["mm_v2"])
    merged = load_motion_module(files["mm_v2"])
    apply_motion_lora(merged, lora, 0.7)
    pre = "down_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1."
    for proj, target in (("to_q", "to_q.weight"), ("to_out", "to_out.0.weight")):
        up = lora[f"{pre}processor.{proj}_lora.up.weight"]
        down = lora[f"{pre}processor.{proj}_lora.down.weight"]
        expect = base.state_dict()[pre + target] + 0.7 * up @ down
        assert torch.allclose(merged.state_dict()[pre + target], expect, atol=1e-6)
    untouched = "down_blocks.1.motion_modules.0.temporal_transformer.proj_in.weight"
    assert torch.equal(merged.state_dict()[untouched], base.state_dict()[untouched])
    zero = load_motion_module(files["mm_v2"])
    apply_motion_lora(zero, lora, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(zero.state_dict().values(), base.state_dict().values()))


def test_v2_motion_lora_on_v3_model_skips_mid_block(files):
    mm = load_motion_module(files["mm_v3"])
    before = {k: v.clone() for k, v in mm.state_dict().items()}
    apply_motion_lora(mm, load_file(str(files["mlora"])), 1.0)
    changed = [k for k, v in mm.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all("attention_blocks" in k for k in changed)
    with pytest.raises(AnimateDiffWeightsError, match="temporal"):
        apply_motion_lora(mm, {"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, 1.0)


# ---------------------------------------------------------------- SD1.5 single file
def _full_ldm_meta(extra_optional=True) -> dict:
    ref = _ref("ldm_sd15_keys.json")
    sd = _meta_sd(ref["keys"])
    if extra_optional:
        for k, v in ref["optional_keys_seen_in_real_files"].items():
            if "shape" in v:
                sd[k] = torch.empty(v["shape"], device="meta")
        sd["model_ema.decay"] = torch.empty([], device="meta")
        sd["model_ema.diffusion_modelinput_blocks00weight"] = torch.empty([320, 4, 3, 3], device="meta")
    return sd


def test_sd15_manifest_converts_to_diffusers_layout_on_meta():
    ref = _ref("diffusers_sd15_keys.json")
    unet, vae, clip = S.convert_sd15_state_dict(_full_ldm_meta())
    assert {k: list(v.shape) for k, v in unet.items()} == ref["unet_keys"]
    assert {k: list(v.shape) for k, v in vae.items()} == ref["vae_keys"]
    assert {"text_model." + k: list(v.shape) for k, v in clip.items()} == ref["text_encoder_keys"]
    unet_cfg = S.unet_config_from_diffusers_keys(unet)
    for k, v in ref["unet_config"].items():
        if k in unet_cfg:
            assert unet_cfg[k] == v, k
    vae_cfg = S.vae_config_from_diffusers_keys(vae)
    for k, v in ref["vae_config"].items():
        assert vae_cfg[k] == v, k
    comp = S.build_sd15_components(unet, vae, clip, device="meta", tokenizer=False)
    assert comp.text_encoder.config.num_attention_heads == 12
    assert comp.text_encoder.config.intermediate_size == 3072
    assert sum(p.numel() for p in comp.unet.parameters()) == sum(torch.Size(s).numel() for s in ref["unet_keys"].values())


def test_sd15_older_files_without_text_model_level():
    sd = _full_ldm_meta(extra_optional=False)
    old = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v for k, v in sd.items()}
    _, _, clip_new = S.convert_sd15_state_dict(sd)
    _, _, clip_old = S.convert_sd15_state_dict(old)
    assert set(clip_new) == set(clip_old) and len(clip_new) == 196


def test_tiny_sd15_file_has_real_key_names_and_round_trips(files, components):
    keys = set(load_file(str(files["sd15"])))
    real = set(_ref("ldm_sd15_keys.json")["keys"])
    clip_real = {k for k in real if k.startswith(S.CLIP_PREFIX)}
    assert {k for k in keys if not k.startswith(S.CLIP_PREFIX)} - {"alphas_cumprod"} == real - clip_real
    unet, vae, te = ad_tiny.tiny_sd15_models()
    for src, dst in ((unet, components.unet), (vae, components.vae), (te, components.text_encoder)):
        a, b = src.state_dict(), dst.state_dict()
        assert set(a) == set(b)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert components.scheduler_config["beta_schedule"] == "scaled_linear"
    # numerically the same models, buffers included
    ids = torch.tensor([[49406, 320, 2368, 49407] + [49407] * 73])
    with torch.no_grad():
        assert torch.equal(te(ids).last_hidden_state, components.text_encoder(ids).last_hidden_state)


def test_sd15_fp16_file_loads_in_requested_dtype(tmp_path):
    path = ad_tiny.write_tiny_sd15(tmp_path / "half.safetensors", dtype=torch.float16)
    comp = S.load_sd15_checkpoint(path, dtype=torch.bfloat16)
    assert comp.unet.dtype == torch.bfloat16 and comp.vae.dtype == torch.bfloat16
    assert next(comp.text_encoder.parameters()).dtype == torch.bfloat16


def test_sd15_tolerates_optional_keys_and_ckpt(tmp_path, files):
    sd = load_file(str(files["sd15"]))
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77.0)[None]
    sd["betas"] = torch.linspace(0.00085, 0.012, 1000)
    sd["model_ema.decay"] = torch.tensor(0.999)
    path = tmp_path / "with_extras.ckpt"
    torch.save({"state_dict": sd, "global_step": 1}, str(path))
    comp = S.load_sd15_checkpoint(path)
    assert torch.equal(comp.text_encoder.embeddings.position_ids, torch.arange(77)[None])


def test_sd15_bad_files_give_clear_errors(tmp_path, files):
    sd = load_file(str(files["sd15"]))
    no_vae = {k: v for k, v in sd.items() if not k.startswith("first_stage_model.")}
    save_file(no_vae, str(tmp_path / "no_vae.safetensors"))
    with pytest.raises(AnimateDiffWeightsError, match="first_stage_model"):
        S.load_sd15_checkpoint(tmp_path / "no_vae.safetensors")
    xl = dict(sd)
    xl["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"] = torch.zeros(1)
    save_file(xl, str(tmp_path / "xl.safetensors"))
    with pytest.raises(AnimateDiffWeightsError, match="SDXL"):
        S.load_sd15_checkpoint(tmp_path / "xl.safetensors")
    broken = dict(sd)
    broken.pop("model.diffusion_model.output_blocks.5.1.proj_out.weight")
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(AnimateDiffWeightsError, match=r"up_blocks\.1\.attentions\.2\.proj_out\.weight"):
        S.load_sd15_checkpoint(tmp_path / "broken.safetensors")
    with pytest.raises(AnimateDiffWeightsError, match="not found"):
        S.load_sd15_checkpoint(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a weight file")
    with pytest.raises(AnimateDiffWeightsError, match="cannot read"):
        S.load_sd15_checkpoint(tmp_path / "junk.safetensors")


def test_tokenizer_matches_comfyui_token_ids():
    """Every prompt of prompt_weights.json: ComfyUI's chunks hold our BPE ids, word by word."""
    tok = S.load_clip_tokenizer()
    assert len(tok) == 49408 and tok.bos_token_id == 49406 and tok.eos_token_id == 49407
    for case in _ref("prompt_weights.json")["cases"]:
        expected = [i for chunk in case["chunks"] for i in chunk["ids"] if i not in (49406, 49407)]
        ours = []
        for text, _ in case["segments"]:
            for word in text.split(" "):
                ours += tok(word)["input_ids"][1:-1]
        assert ours == expected, case["prompt"]


# ---------------------------------------------------------------- kohya LoRA
def test_kohya_manifest_names_resolve_to_the_right_weights():
    ref = _ref("ldm_sd15_keys.json")["kohya_lora_rank8"]
    unet, vae, clip = S.convert_sd15_state_dict(_full_ldm_meta(extra_optional=False))
    comp = S.build_sd15_components(unet, vae, clip, device="meta", tokenizer=False)
    table = kohya_module_table(comp.unet, comp.text_encoder)
    unet_names = {id(m): n for n, m in comp.unet.named_modules()}
    te_names = {id(m): n for n, m in comp.text_encoder.named_modules()}
    assert len(ref["module_to_ldm_weight"]) == 264
    for module, ldm_weight in ref["module_to_ldm_weight"].items():
        mod = table[module]
        if ldm_weight.startswith(S.UNET_PREFIX):
            assert S.unet_key_to_diffusers(ldm_weight[len(S.UNET_PREFIX):]) == unet_names[id(mod)] + ".weight"
        else:
            assert S.clip_key_to_transformers(ldm_weight[len(S.CLIP_PREFIX):]) == te_names[id(mod)] + ".weight"
        down = ref["keys"][module + ".lora_down.weight"]
        up = ref["keys"][module + ".lora_up.weight"]
        assert up[0] == mod.weight.shape[0] and down[1] == mod.weight.shape[1] and down[0] == up[1] == 8
    for module in ref["locon_conv_examples"]:
        assert isinstance(table[module], torch.nn.Conv2d)


def test_kohya_lora_merge_math_stacking_and_locon(files):
    lora = load_file(str(files["kohya"]))
    comp = S.load_sd15_checkpoint(files["sd15"])
    base = {n: p.clone() for n, p in list(comp.unet.named_parameters()) + list(comp.text_encoder.named_parameters())}
    extra = {  # a second LoRA: LoCon 3x3 conv entry without alpha
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": torch.randn(2, 32, 3, 3),
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": torch.randn(32, 2, 1, 1),
    }
    apply_sd_loras(comp, [(lora, 0.8), (extra, 0.5), (lora, 0.0)])
    checks = [("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k",
               comp.unet, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"),
              ("lora_unet_up_blocks_2_attentions_1_proj_in", comp.unet, "up_blocks.2.attentions.1.proj_in.weight"),
              ("lora_te_text_model_encoder_layers_1_mlp_fc1", comp.text_encoder, "encoder.layers.1.mlp.fc1.weight")]
    for key, model, pname in checks:
        down, up, alpha = (lora[f"{key}.{s}"].float() for s in ("lora_down.weight", "lora_up.weight", "alpha"))
        delta = (up.flatten(1) @ down.flatten(1)).reshape(base[pname].shape) * (alpha / down.shape[0])
        got = dict(model.named_parameters())[pname]
        assert torch.allclose(got, base[pname] + 0.8 * delta, atol=1e-5), key
    conv = comp.unet.down_blocks[0].resnets[0].conv1.weight
    delta = (extra["lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"].flatten(1)
             @ extra["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].flatten(1)).reshape(conv.shape)
    assert torch.allclose(conv, base["down_blocks.0.resnets.0.conv1.weight"] + 0.5 * delta, atol=1e-5)
    untouched = "down_blocks.0.resnets.1.conv1.weight"
    assert torch.equal(dict(comp.unet.named_parameters())[untouched], base[untouched])


def test_kohya_lora_errors(components):
    with pytest.raises(AnimateDiffWeightsError, match="adapter type"):
        apply_sd_loras(components, [({"lora_unet_x.oft_blocks": torch.zeros(1)}, 1.0)])
    with pytest.raises(AnimateDiffWeightsError, match="lacks its 'w2b'"):
        apply_sd_loras(components, [({f"lora_unet_conv_in.hada_{k}": torch.zeros(1, 1) for k in ("w1_a", "w1_b", "w2_a")}, 1.0)])
    with pytest.raises(AnimateDiffWeightsError, match="SD1.5"):
        apply_sd_loras(components, [({"lora_unet_input_blocks_99_x.lora_down.weight": torch.zeros(1, 1),
                                      "lora_unet_input_blocks_99_x.lora_up.weight": torch.zeros(1, 1)}, 1.0)])


# ---------------------------------------------------------------- ControlNet
def test_controlnet_layouts_load_the_same_weights(tmp_path, files):
    ref = ad_tiny.tiny_controlnet_model().state_dict()
    original = load_controlnet(files["cn"])  # .pth with control_model. prefix
    sd = torch.load(str(files["cn"]), weights_only=True)
    save_file({k[len("control_model."):]: v for k, v in sd.items()}, str(tmp_path / "noprefix.safetensors"))
    no_prefix = load_controlnet(tmp_path / "noprefix.safetensors")
    folder = load_controlnet(ad_tiny.write_tiny_controlnet(tmp_path / "cn_diffusers", diffusers_layout=True))
    single = load_controlnet(tmp_path / "cn_diffusers" / "diffusion_pytorch_model.safetensors")
    for model in (original, no_prefix, folder, single):
        own = model.state_dict()
        assert set(own) == set(ref) and all(torch.equal(own[k], ref[k]) for k in ref)
    assert list(original.config.conditioning_embedding_out_channels) == list(ad_tiny.TINY_HINT_CHANNELS)
    with pytest.raises(AnimateDiffWeightsError, match="not a ControlNet"):
        load_controlnet(files["kohya"])


def test_controlnet_residuals_drive_the_animated_unet(files, components):
    cn = load_controlnet(files["cn"])
    motion = load_motion_module(files["mm_v3"])
    unet = build_animated_unet(components.unet, motion)
    gen = torch.Generator().manual_seed(0)
    b, f = 1, 4
    x = torch.randn(b, 4, f, 8, 8, generator=gen)
    ehs = torch.randn(b, 77, 32, generator=gen)
    hint = torch.rand(b * f, 3, 64, 64, generator=gen)
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, 4, 8, 8)
    with torch.no_grad():
        down, mid = cn(frames, 10, ehs.repeat_interleave(f, 0), controlnet_cond=hint, return_dict=False)
        plain = unet(x, 10, ehs)
        zero = unet(x, 10, ehs, [torch.zeros_like(r) for r in down], torch.zeros_like(mid))
        ctrl = unet(x, 10, ehs, down, mid)
    assert torch.equal(plain, zero)
    assert (ctrl - plain).abs().max() > 1e-3


# ---------------------------------------------------------------- animated UNet
def test_animated_unet_layouts_and_frame_coupling(files, components):
    motion = load_motion_module(files["mm_v2"])
    unet = build_animated_unet(components.unet, motion)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 5, 8, 8, generator=gen)
    ehs = torch.randn(2, 9, 32, generator=gen)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        y = unet(x, t, ehs)
        flat = unet(x.permute(0, 2, 1, 3, 4).reshape(10, 4, 8, 8), t.repeat_interleave(5),
                    ehs.repeat_interleave(5, 0), num_frames=5)
        single = unet(x[1:], t[1:], ehs[1:])
        x2 = x.clone()
        x2[:, :, 0] += 1.0
        y2 = unet(x2, t, ehs)
    assert y.shape == x.shape
    assert torch.allclose(flat.reshape(2, 5, 4, 8, 8).permute(0, 2, 1, 3, 4), y, atol=1e-5)
    assert torch.allclose(single, y[1:], atol=1e-4)  # batch items stay independent
    assert (y2[:, :, 3] - y[:, :, 3]).abs().max() > 1e-4  # frames talk through the motion modules
    motion.set_effect(0.0)
    with torch.no_grad():
        per_frame = unet(x, t, ehs)
        reference = components.unet(x.permute(0, 2, 1, 3, 4).reshape(10, 4, 8, 8), t.repeat_interleave(5),
                                    ehs.repeat_interleave(5, 0)).sample
    assert torch.allclose(per_frame.permute(0, 2, 1, 3, 4).reshape(10, 4, 8, 8), reference, atol=1e-5)
    odd = torch.randn(1, 4, 2, 12, 10, generator=gen)  # sizes that need explicit upsample sizes
    with torch.no_grad():
        per_frame = unet(odd, 10, ehs[:1])
        reference = components.unet(odd[0].transpose(0, 1), 10, ehs[:1].repeat(2, 1, 1)).sample
    assert torch.allclose(per_frame[0].transpose(0, 1), reference, atol=1e-5)
    with pytest.raises(ValueError, match="num_frames"):
        unet(x[0].permute(1, 0, 2, 3), 10, ehs[:1])


def test_groupnorm_hack_normalises_across_frames(files, components):
    norm = torch.nn.GroupNorm(4, 8)
    x = torch.randn(6, 8, 3, 3)
    with groupnorm_across_frames(norm, 3):
        y = norm(x)
    ref = F.group_norm(x.reshape(2, 3, 8, 3, 3).transpose(1, 2), 4, norm.weight, norm.bias, norm.eps)
    assert torch.allclose(y, ref.transpose(1, 2).reshape(6, 8, 3, 3), atol=1e-6)
    assert torch.allclose(norm(x), F.group_norm(x, 4, norm.weight, norm.bias, norm.eps))  # hooks removed
    # a v1 motion model turns the hack on for the SD UNet too (ADE), v3 does not
    v1 = AnimatedUNet(components.unet, load_motion_module(files["mm_v1"]))
    v3 = AnimatedUNet(components.unet, load_motion_module(files["mm_v3"]))
    assert v1.unet_groupnorm_across_frames and not v3.unet_groupnorm_across_frames
    v1.motion.set_effect(0.0)
    x5 = torch.randn(1, 4, 4, 8, 8)
    ehs = torch.randn(1, 5, 32)
    with torch.no_grad():
        hacked = v1(x5, 10, ehs)
        v1.motion.groupnorm_across_frames = False
        plain = v1(x5, 10, ehs)
    assert (hacked - plain).abs().max() > 1e-4


def test_motion_module_that_does_not_fit_the_unet(components):
    sd = ad_tiny.tiny_motion_state_dict("v3", channels=(64, 64, 96, 96))
    with pytest.raises(AnimateDiffWeightsError, match="channels"):
        build_animated_unet(components.unet, motion_module_from_state_dict(sd))


def test_conversion_agrees_with_diffusers_own_converters(files):
    """Independent check of our key maps: diffusers' LDM converters (pure functions, local
    config) give the same tensors under the same names for the tiny real-layout files."""
    from diffusers.loaders.single_file_utils import (convert_controlnet_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)

    sd = load_file(str(files["sd15"]))
    unet, vae, _ = S.convert_sd15_state_dict(sd)
    unet_cfg = S.unet_config_from_diffusers_keys(unet)
    theirs = convert_ldm_unet_checkpoint(dict(sd), unet_cfg)
    assert set(theirs) == set(unet) and all(torch.equal(theirs[k], unet[k]) for k in unet)
    theirs = convert_ldm_vae_checkpoint(dict(sd), S.vae_config_from_diffusers_keys(vae))
    assert set(theirs) == set(vae) and all(torch.equal(theirs[k].reshape(vae[k].shape), vae[k]) for k in vae)
    cn_sd = torch.load(str(files["cn"]), weights_only=True)
    ours = load_controlnet(files["cn"]).state_dict()
    theirs = convert_controlnet_checkpoint(dict(cn_sd), {**unet_cfg, "controlnet_conditioning_channel_order": "rgb"})
    assert set(theirs) == set(ours) and all(torch.equal(theirs[k], ours[k]) for k in ours)
