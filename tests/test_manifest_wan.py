"""Full-size Wan2.1 key manifests go through detection, conversion and a model load on the meta
device: every key is consumed with the model's shape, no parameter is left missing, and nothing
is allocated (all tensors stay on ``meta``)."""
import json
import re

import pytest
import torch
import wan_tiny

from poseanimate.models.wan import layouts, loading
from poseanimate.models.runtime.fp8 import FP8Linear

REF = wan_tiny.FIXTURES
COMFY = REF / "comfy_formats"


def _manifest(path, *sub):
    data = json.loads(path.read_text())
    for key in sub:
        data = data[key]
    return data if "keys" not in data else data["keys"]


def _meta(keys: dict, dtype=torch.bfloat16) -> dict:
    return {k: torch.empty(shape, dtype=dtype, device="meta") for k, shape in keys.items()}


def _assert_all_meta(model):
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        assert t.is_meta, f"{name} was allocated"


def _assert_shapes(model, converted: dict, in_memory=lambda k: k):
    state = model.state_dict()
    for key, value in converted.items():
        assert tuple(state[in_memory(key)].shape) == tuple(value.shape), key


TRANSFORMER_MANIFESTS = [
    (COMFY / "comfy_wan2.1_i2v_720p_14B.json", (), dict(num_layers=40, num_attention_heads=40, in_channels=36, image_dim=1280)),
    (COMFY / "comfy_wan2.1_t2v_14B.json", (), dict(num_layers=40, num_attention_heads=40, in_channels=16, image_dim=None)),
    (COMFY / "comfy_wan2.1_t2v_1.3B.json", (), dict(num_layers=30, num_attention_heads=12, in_channels=16, ffn_dim=8960)),
    (REF / "unianimate_dit" / "manifest_wan21_i2v_14b.json", (), dict(num_layers=40, num_attention_heads=40, in_channels=36)),
]


@pytest.mark.parametrize("prefix, layout", [("", "official"), ("model.diffusion_model.", "comfy")])
@pytest.mark.parametrize("path, sub, expect", TRANSFORMER_MANIFESTS, ids=lambda v: getattr(v, "stem", None))
def test_transformer_manifest_original_names(path, sub, expect, prefix, layout):
    keys = _manifest(path, *sub)
    sd = _meta({prefix + k: v for k, v in keys.items()})
    assert loading.detect_layout(sd, "transformer") == layout
    converted, found = loading.convert_transformer_state_dict(sd)
    assert found == layout and len(converted) == len(keys)
    cfg = loading.transformer_config_from_state_dict(converted)
    for k, v in expect.items():
        assert cfg[k] == v, k
    model = loading.transformer_from_state_dict(sd, device="meta")
    _assert_all_meta(model)
    _assert_shapes(model, converted)
    assert len(model.state_dict()) == len(keys)


@pytest.mark.parametrize("name", ["WanTransformer3DModel_I2V-14B-720P", "WanTransformer3DModel_T2V-14B",
                                  "WanTransformer3DModel_T2V-1.3B"])
def test_transformer_manifest_diffusers(name):
    entry = json.loads((COMFY / "diffusers_wan.json").read_text())[name]
    sd = _meta(entry["keys"])
    assert loading.detect_layout(sd, "transformer") == "diffusers"
    cfg = loading.transformer_config_from_state_dict(sd)
    for key, value in entry["config"].items():
        assert (list(cfg[key]) if isinstance(cfg[key], tuple) else cfg[key]) == value, key
    model = loading.transformer_from_state_dict(sd, device="meta")
    _assert_all_meta(model)
    _assert_shapes(model, sd)


def test_transformer_manifest_fp8_scaled_keeps_fp8_layers():
    """A full-size ComfyUI fp8 "scaled" I2V file: fp8 Linear weights + float32 scales + marker."""
    keys = _manifest(COMFY / "comfy_wan2.1_i2v_720p_14B.json")
    sd = {}
    for k, shape in keys.items():
        is_linear = k.startswith("blocks.") and k.endswith(".weight") and len(shape) == 2
        sd[k] = torch.empty(shape, dtype=torch.float8_e4m3fn if is_linear else torch.bfloat16, device="meta")
        if is_linear:
            sd[k[:-len("weight")] + "scale_weight"] = torch.empty((), dtype=torch.float32, device="meta")
    sd["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn, device="meta")
    assert loading.detect_layout(sd, "transformer") == "comfy_fp8_scaled"
    model = loading.transformer_from_state_dict(sd, device="meta", weight_dtype=torch.float8_e4m3fn)
    _assert_all_meta(model)
    fp8 = [m for m in model.modules() if isinstance(m, FP8Linear)]
    assert len(fp8) == 40 * 12  # per block: q,k,v,o of attn1 and attn2, add_k, add_v, ffn x2
    assert all(m.weight.dtype == torch.float8_e4m3fn for m in fp8)
    # the same file dequantised for a bf16 model
    model = loading.transformer_from_state_dict(sd, device="meta")
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16


def test_transformer_keymap_matches_reference():
    keymap = json.loads((COMFY / "comfy_to_diffusers_keymap.json").read_text())
    for name in ("wan2.1_i2v_720p_14B", "wan2.1_t2v_1.3B"):
        for src, dst in keymap[name]["comfy_to_diffusers_nonblock_and_block0"].items():
            assert layouts.rename_transformer_key(src) == dst
            block7 = re.sub(r"^blocks\.0\.", "blocks.7.", src)
            assert layouts.rename_transformer_key(block7) == re.sub(r"^blocks\.0\.", "blocks.7.", dst)


def test_vae_manifests():
    keymap = json.loads((COMFY / "comfy_to_diffusers_keymap.json").read_text())["wan_2.1_vae"]["comfy_to_diffusers"]
    comfy = _manifest(COMFY / "comfy_wan_2.1_vae.json")
    sd = _meta(comfy, torch.float32)
    assert loading.detect_layout(sd, "vae") == "official"
    assert layouts.vae_official_to_diffusers(sd).keys() == set(keymap.values())
    converted = layouts.vae_official_to_diffusers(sd)
    for src, dst in keymap.items():
        assert converted[dst] is sd[src]
    cfg = layouts.vae_config_from_state_dict(sd)
    assert cfg["dim_mult"] == [1, 2, 4, 4] and cfg["num_res_blocks"] == 2 and cfg["base_dim"] == 96
    assert cfg["temperal_downsample"] == [False, True, True] and cfg["z_dim"] == 16
    model = loading.vae_from_state_dict(sd, device="meta")
    _assert_all_meta(model)
    _assert_shapes(model, converted)
    diff = json.loads((COMFY / "diffusers_wan.json").read_text())["AutoencoderKLWan"]
    sd = _meta(diff["keys"], torch.float32)
    assert loading.detect_layout(sd, "vae") == "diffusers"
    model = loading.vae_from_state_dict(sd, device="meta")
    _assert_all_meta(model)
    _assert_shapes(model, sd)


def _umt5_check(sd, layout):
    assert loading.detect_layout(sd, "text_encoder") == layout
    model, found = loading.text_encoder_from_state_dict(sd, device="meta")
    assert found == layout
    _assert_all_meta(model)
    assert model.config.d_model == 4096 and model.config.num_layers == 24 and model.config.num_heads == 64
    assert model.config.vocab_size == 256384 and model.config.d_ff == 10240
    assert model.encoder.embed_tokens.weight is model.shared.weight
    return model


def test_umt5_manifests():
    comfy = _meta(_manifest(COMFY / "comfy_umt5_xxl.json"))
    comfy["spiece_model"] = torch.empty(4_548_000, dtype=torch.uint8, device="meta")
    _umt5_check(comfy, "comfy")
    hf = _meta(_manifest(COMFY / "transformers_umt5_clipvision.json", "UMT5EncoderModel"))
    assert "encoder.embed_tokens.weight" in hf  # tied copy written too: accepted
    model = _umt5_check(hf, "diffusers")
    _assert_shapes(model, hf)
    # official release naming (models_t5_umt5-xxl-enc-bf16.pth), from Wan's T5Encoder module names
    official = wan_tiny.official_umt5_sd(hf)
    assert len(official) == 242
    _umt5_check(official, "official")
    # the fp8 scaled TE keeps fp8 Linear layers when asked
    scaled = {k: (v.to(torch.float8_e4m3fn) if v.ndim == 2 and ".block." in k else v) for k, v in comfy.items()}
    scaled.update({k[:-len("weight")] + "scale_weight": torch.empty((), device="meta")
                   for k, v in scaled.items() if v.dtype == torch.float8_e4m3fn})
    scaled["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn, device="meta")
    assert loading.detect_layout(scaled, "text_encoder") == "comfy_fp8_scaled"
    model, _ = loading.text_encoder_from_state_dict(scaled, device="meta", weight_dtype=torch.float8_e4m3fn)
    assert sum(isinstance(m, FP8Linear) for m in model.modules()) == 24 * 6  # q,k,v,o,wi_0,wi_1 (wo stays)
    assert model.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("source, layout", [
    (("comfy_clip_vision_h.json",), "comfy"),
    (("transformers_umt5_clipvision.json", "CLIPVisionModelWithProjection"), "comfy"),
    (("transformers_umt5_clipvision.json", "CLIPVisionModel"), "diffusers"),
    (("transformers_umt5_clipvision.json", "CLIPVisionModelWithProjection", "official"), "official"),
])
def test_clip_vision_manifests(source, layout):
    keys = _manifest(COMFY / source[0], *source[1:2])
    sd = _meta(keys, torch.float32)
    if source[-1] == "official":  # models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth naming
        sd = wan_tiny.official_clip_sd(sd, text_tower=False)
        sd["log_scale"] = torch.empty((), device="meta")
        sd["textual.token_embedding.weight"] = torch.empty(250002, 1024, device="meta")
    assert loading.detect_layout(sd, "clip_vision") == layout
    model = loading.clip_vision_from_state_dict(sd, device="meta")
    _assert_all_meta(model)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size,
            cfg.patch_size, cfg.image_size) == (1280, 32, 16, 5120, 14, 224)
    params = dict(model.named_parameters())
    assert len(params) == 519
