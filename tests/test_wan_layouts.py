"""Tiny checkpoints written in every real Wan2.1 layout load for real and compute exactly what the
same weights loaded straight into diffusers / transformers compute; bad files fail clearly.

fp8 tolerance (documented here and in models/wan/fp8.py): e4m3fn keeps 3 mantissa bits, so each
weight carries up to ~6% relative rounding error, but errors average out over each dot product:
through the tiny 2-block DiT the output's max abs deviation from the float32 reference is ~2% of
the reference's max magnitude (measured), and the test allows 5%. The tiny UMT5 (width 32,
sums over 32-48 terms only) averages far less: ~7% measured, 15% allowed. In both cases a
model that stores the fp8 weights must match the same file dequantised to float32 to 1e-5
(storage, not arithmetic, is the only difference).
"""
import json
import pickle

import pytest
import torch
import wan_tiny as T

from poseanimate.models.wan import loading
from poseanimate.models.runtime.fp8 import FP8Linear, convert_to_fp8, quantize_weight
from poseanimate.models.wan.loading import WanWeightsError
from poseanimate.models.runtime.weights import read_state_dict

FP8 = torch.float8_e4m3fn
FP8_REL_TOL = 0.05
FP8_REL_TOL_TINY_UMT5 = 0.15


@pytest.fixture(scope="module")
def dit_i2v():
    official = T.official_transformer_sd(**T.TINY_DIT_I2V)
    reference, diffusers_sd = T.diffusers_transformer_reference(official)
    with torch.no_grad():
        expected = reference(**T.transformer_inputs(official), return_dict=False)[0]
    return official, diffusers_sd, expected


@pytest.fixture(scope="module")
def dit_t2v():
    official = T.official_transformer_sd(**T.TINY_DIT)
    reference, diffusers_sd = T.diffusers_transformer_reference(official)
    with torch.no_grad():
        expected = reference(**T.transformer_inputs(official), return_dict=False)[0]
    return official, diffusers_sd, expected


def _run(model, official):
    with torch.no_grad():
        return model(**T.transformer_inputs(official), return_dict=False)[0].float()


def _assert_same_output(model, official, expected):
    """Weights read from files: safetensors >= 0.8 hands out zero-copy views at file offsets that are
    not 64-byte aligned, which moves CPU matmuls onto another SIMD path (last-bit changes only)."""
    torch.testing.assert_close(_run(model, official), expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------ transformer
def test_official_sharded_release(tmp_path, dit_i2v):
    official, _, expected = dit_i2v
    index = T.write_sharded(tmp_path / "Wan2.1-I2V-14B-480P", official, shards=3,
                            config={"dim": 128, "num_heads": 1, "model_type": "i2v"})
    for path in (index, index.parent):  # the index JSON or the folder holding it
        model = loading.load_transformer(path, dtype=torch.float32)
        _assert_same_output(model, official, expected)


def test_diffusers_pipeline_folder(tmp_path, dit_i2v):
    official, diffusers_sd, expected = dit_i2v
    T.write_sharded(tmp_path / "pipe" / "transformer", diffusers_sd, shards=2,
                    config={"_class_name": "WanTransformer3DModel", "num_attention_heads": 1})
    model = loading.load_transformer(tmp_path / "pipe", dtype=torch.float32)
    _assert_same_output(model, official, expected)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_comfy_single_file(tmp_path, dit_t2v, prefix):
    official, _, expected = dit_t2v
    path = T.write_file(tmp_path / "wan2.1_t2v_1.3B_fp16.safetensors",
                        {prefix + k: v.to(torch.float16) for k, v in official.items()})
    assert loading.detect_layout(read_state_dict(path), "transformer") == ("comfy" if prefix else "official")
    model = loading.load_transformer(path, dtype=torch.float32)
    out = _run(model, official)
    assert (out - expected).abs().max() < 2e-2 * expected.abs().max()  # fp16 storage of the file


@pytest.mark.parametrize("new_style", [False, True])
def test_comfy_fp8_scaled(tmp_path, dit_i2v, new_style):
    official, _, expected = dit_i2v
    path = T.write_file(tmp_path / "wan2.1_i2v_720p_14B_fp8_scaled.safetensors",
                        T.fp8_scaled(official, prefix="model.diffusion_model.", new_style=new_style))
    assert loading.detect_layout(read_state_dict(path), "transformer") == "comfy_fp8_scaled"
    stored = loading.load_transformer(path, dtype=torch.float32, weight_dtype=FP8)
    q = stored.blocks[0].attn1.to_q
    assert isinstance(q, FP8Linear) and q.weight.dtype == FP8 and q.scale_weight.dtype == torch.float32
    assert q.scale_weight.item() != 1.0  # the file's scale was kept
    dequantised = loading.load_transformer(path, dtype=torch.float32)
    assert type(dequantised.blocks[0].attn1.to_q) is torch.nn.Linear
    a, b = _run(stored, official), _run(dequantised, official)
    assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    assert (a - expected).abs().max() < FP8_REL_TOL * expected.abs().max()


def test_fp8_storage_of_a_float_checkpoint(tmp_path, dit_i2v):
    official, _, expected = dit_i2v
    path = T.write_file(tmp_path / "dit.safetensors", official)
    model = loading.load_transformer(path, dtype=torch.float32, weight_dtype=FP8)
    fp8 = [m for m in model.modules() if isinstance(m, FP8Linear)]
    assert len(fp8) == 2 * 12 and all(m.weight.dtype == FP8 for m in fp8)
    assert type(model.proj_out) is torch.nn.Linear  # head and embeddings stay full precision
    out = _run(model, official)
    assert (out - expected).abs().max() < FP8_REL_TOL * expected.abs().max()
    assert not torch.equal(out, expected)
    model.to(torch.bfloat16)  # a model-wide cast must not touch fp8 storage or the fp32 scales
    assert fp8[0].weight.dtype == FP8 and fp8[0].scale_weight.dtype == torch.float32
    assert fp8[0].bias.dtype == torch.bfloat16


def test_fp8_linear_matches_dequantised_linear():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    x = torch.randn(5, 64)
    q = FP8Linear.from_linear(lin)
    ref = torch.nn.functional.linear(x, q.weight.float() * q.scale_weight, lin.bias)
    assert torch.allclose(q(x), ref, atol=1e-6)
    assert (q(x) - lin(x)).abs().max() < 0.1 * lin(x).abs().max()
    q16 = FP8Linear.from_linear(lin).to(torch.bfloat16)  # bf16 compute, storage untouched
    assert q16.weight.dtype == FP8 and q16.scale_weight.dtype == torch.float32 and q16.bias.dtype == torch.bfloat16
    assert (q16(x.bfloat16()).float() - ref).abs().max() < 0.02 * ref.abs().max()
    meta = FP8Linear.from_linear(torch.nn.Linear(4, 4, device="meta"))
    assert meta.weight.is_meta and meta.to_empty(device="cpu").weight.dtype == FP8
    w, s = quantize_weight(lin.weight)
    assert w.float().abs().max() == torch.finfo(FP8).max and s.ndim == 0
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    assert convert_to_fp8(net, select=lambda n, m: True) == ["0", "2"]


def test_bf16_dtype_keeps_diffusers_fp32_modules(tmp_path, dit_t2v):
    official, _, _ = dit_t2v
    model = loading.transformer_from_state_dict(official, dtype=torch.bfloat16)
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert model.scale_shift_table.dtype == torch.float32  # diffusers' _keep_in_fp32_modules
    assert model.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32


def test_extra_keys_ok_and_unexpected_keys(tmp_path, dit_t2v):
    official, _, expected = dit_t2v
    extra = dict(official, **{"dwpose_embedding.0.weight": torch.zeros(4, 3), "ref_extractor.x": torch.zeros(2)})
    with pytest.raises(WanWeightsError) as err:
        loading.transformer_from_state_dict(extra, dtype=torch.float32)
    msg = str(err.value)
    assert "'official'" in msg and "2 unexpected keys" in msg and "dwpose_embedding.0.weight" in msg
    model = loading.transformer_from_state_dict(extra, dtype=torch.float32,
                                                extra_keys_ok=("dwpose_embedding", "ref_extractor"))
    assert torch.equal(_run(model, official), expected)
    converted, layout = loading.convert_transformer_state_dict(extra)
    assert layout == "official" and "dwpose_embedding.0.weight" in converted  # passes through


# -------------------------------------------------------------------------------------- VAE
@pytest.fixture(scope="module")
def vae_case():
    vae = T.tiny_vae()
    video = torch.randn(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        latent = vae.encode(video).latent_dist.mean
        decoded = vae.decode(latent).sample
    return vae, video, latent, decoded


def _vae_matches(model, case):
    _, video, latent, decoded = case
    with torch.no_grad():
        assert torch.equal(model.encode(video).latent_dist.mean, latent)
        assert torch.equal(model.decode(latent).sample, decoded)


def test_vae_official_pth_and_comfy(tmp_path, vae_case):
    official = T.official_vae_sd(vae_case[0].state_dict())
    for path in (T.write_file(tmp_path / "Wan2.1_VAE.pth", official),
                 T.write_file(tmp_path / "wan_2.1_vae.safetensors", official)):
        model = loading.load_vae(path)
        assert model.config.base_dim == 8 and model.config.z_dim == 4
        _vae_matches(model, vae_case)


def test_vae_diffusers_folder(tmp_path, vae_case):
    vae = vae_case[0]
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    _vae_matches(loading.load_vae(tmp_path / "pipe"), vae_case)


def test_wan22_vae_refused():
    keys = {"decoder.upsamples.0.upsamples.0.residual.2.weight": torch.zeros(1)}
    with pytest.raises(WanWeightsError, match="Wan2.2 VAE"):
        loading.detect_layout(keys, "vae")


# ----------------------------------------------------------------------------- text encoder
@pytest.fixture(scope="module")
def umt5_case():
    model = T.tiny_umt5()
    ids = torch.tensor([[5, 9, 22, 7, 1, 0, 0], [3, 4, 1, 0, 0, 0, 0]])
    mask = (torch.arange(7) < torch.tensor([[5], [3]])).long()
    with torch.no_grad():
        out = model(ids, attention_mask=mask).last_hidden_state
    return model, ids, mask, out, T.tiny_spiece_model()


def _te_matches(model, case, atol=0.0):
    _, ids, mask, out, _ = case
    with torch.no_grad():
        got = model(ids, attention_mask=mask).last_hidden_state.float()
    assert (got - out).abs().max() <= atol * out.abs().max()


def _tokenizer_matches_spiece(tok, spiece):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_proto=spiece)
    text = "a person is dancing in the park"
    enc = tok([text], padding="max_length", max_length=48, truncation=True, return_tensors="pt")
    ids = sp.encode(text) + [1]
    assert enc["input_ids"][0, :len(ids)].tolist() == ids
    assert enc["input_ids"][0, len(ids):].eq(0).all() and enc["attention_mask"][0].sum() == len(ids)


def test_umt5_official_pth_with_release_tokenizer(tmp_path, umt5_case):
    hf = T.transformers_umt5_sd(umt5_case[0])
    path = T.write_file(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth", T.official_umt5_sd(hf))
    with pytest.raises(WanWeightsError, match="no UMT5 tokenizer"):
        loading.load_text_encoder(path, dtype=torch.float32)
    T.write_tokenizer_folder(tmp_path / "google" / "umt5-xxl", umt5_case[4])
    model, tok = loading.load_text_encoder(path, dtype=torch.float32)
    _te_matches(model, umt5_case)
    _tokenizer_matches_spiece(tok, umt5_case[4])


def test_umt5_diffusers_folder(tmp_path, umt5_case):
    umt5_case[0].save_pretrained(tmp_path / "pipe" / "text_encoder")
    T.write_tokenizer_folder(tmp_path / "pipe" / "tokenizer", umt5_case[4])
    model, tok = loading.load_text_encoder(tmp_path / "pipe", dtype=torch.float32)
    _te_matches(model, umt5_case)
    _tokenizer_matches_spiece(tok, umt5_case[4])
    model, tok2 = loading.load_text_encoder(tmp_path / "pipe" / "text_encoder", dtype=torch.float32)
    _tokenizer_matches_spiece(tok2, umt5_case[4])


def test_umt5_comfy_file_embeds_tokenizer(tmp_path, umt5_case):
    sd = {k: v.to(torch.float16) for k, v in T.transformers_umt5_sd(umt5_case[0]).items()}
    sd["spiece_model"] = torch.frombuffer(bytearray(umt5_case[4]), dtype=torch.uint8)
    path = T.write_file(tmp_path / "text_encoders" / "umt5_xxl_fp16.safetensors", sd)
    model, tok = loading.load_text_encoder(path, dtype=torch.float32)
    _te_matches(model, umt5_case, atol=1e-2)
    _tokenizer_matches_spiece(tok, umt5_case[4])
    # a tokenizer passed explicitly (e.g. that same ComfyUI file) is used as is
    _, tok3 = loading.load_text_encoder(path, dtype=torch.float32, tokenizer_dir=path)
    _tokenizer_matches_spiece(tok3, umt5_case[4])


def test_umt5_comfy_fp8_scaled(tmp_path, umt5_case):
    sd = T.transformers_umt5_sd(umt5_case[0])
    scaled = {}
    for k, v in sd.items():
        if ".block." in k and v.ndim == 2 and "relative_attention_bias" not in k:
            q, s = quantize_weight(v)
            scaled[k], scaled[k[:-len("weight")] + "scale_weight"] = q, s
        else:
            scaled[k] = v
    scaled["scaled_fp8"] = torch.empty(0, dtype=FP8)
    scaled["spiece_model"] = torch.frombuffer(bytearray(umt5_case[4]), dtype=torch.uint8)
    path = T.write_file(tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors", scaled)
    stored, _ = loading.load_text_encoder(path, dtype=torch.float32, weight_dtype=FP8)
    plain, _ = loading.load_text_encoder(path, dtype=torch.float32)
    _, ids, mask, out, _ = umt5_case
    with torch.no_grad():
        a = stored(ids, attention_mask=mask).last_hidden_state
        b = plain(ids, attention_mask=mask).last_hidden_state
    assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    assert (b - out).abs().max() < FP8_REL_TOL_TINY_UMT5 * out.abs().max()


def test_t5_not_umt5_refused():
    keys = {f"encoder.block.{i}.layer.0.SelfAttention.q.weight": 0 for i in range(2)}
    keys["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = 0
    with pytest.raises(WanWeightsError, match="not UMT5"):
        loading.detect_layout(keys, "text_encoder")


# ------------------------------------------------------------------------------ CLIP vision
@pytest.fixture(scope="module")
def clip_case():
    model = T.tiny_clip()
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        hidden = model(pixels, output_hidden_states=True).hidden_states
    return model, pixels, hidden


def _clip_matches(model, case):
    _, pixels, hidden = case
    with torch.no_grad():
        got = model(pixels, output_hidden_states=True).hidden_states
    assert len(got) == len(hidden) and all(torch.equal(a, b) for a, b in zip(got, hidden))


def test_clip_official_pth(tmp_path, clip_case):
    path = T.write_file(tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
                        T.official_clip_sd(clip_case[0].state_dict()))
    _clip_matches(loading.load_clip_vision(path), clip_case)


def test_clip_comfy_and_diffusers(tmp_path, clip_case):
    sd = clip_case[0].state_dict()
    comfy = T.write_file(tmp_path / "clip_vision_h.safetensors", sd)
    assert loading.detect_layout(read_state_dict(comfy), "clip_vision") == "comfy"
    _clip_matches(loading.load_clip_vision(comfy), clip_case)
    diff = T.write_file(tmp_path / "pipe" / "image_encoder" / "model.safetensors",
                        {k: v for k, v in sd.items() if not k.startswith("visual_projection")})
    assert loading.detect_layout(read_state_dict(diff), "clip_vision") == "diffusers"
    _clip_matches(loading.load_clip_vision(tmp_path / "pipe"), clip_case)


def test_clip_open_clip_layout(clip_case):
    sd = clip_case[0].state_dict()
    v = "vision_model."
    oc = {"visual.conv1.weight": sd[v + "embeddings.patch_embedding.weight"],
          "visual.class_embedding": sd[v + "embeddings.class_embedding"],
          "visual.positional_embedding": sd[v + "embeddings.position_embedding.weight"],
          "visual.ln_pre.weight": sd[v + "pre_layrnorm.weight"], "visual.ln_pre.bias": sd[v + "pre_layrnorm.bias"],
          "visual.ln_post.weight": sd[v + "post_layernorm.weight"], "visual.ln_post.bias": sd[v + "post_layernorm.bias"],
          "visual.proj": sd["visual_projection.weight"].t(), "logit_scale": torch.tensor(1.0)}
    for i in range(2):
        h, o = f"{v}encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            oc[f"{o}attn.in_proj_{leaf}"] = torch.cat([sd[f"{h}self_attn.{p}_proj.{leaf}"] for p in "qkv"])
            oc[f"{o}attn.out_proj.{leaf}"] = sd[f"{h}self_attn.out_proj.{leaf}"]
            oc[f"{o}ln_1.{leaf}"], oc[f"{o}ln_2.{leaf}"] = sd[f"{h}layer_norm1.{leaf}"], sd[f"{h}layer_norm2.{leaf}"]
            oc[f"{o}mlp.c_fc.{leaf}"], oc[f"{o}mlp.c_proj.{leaf}"] = sd[f"{h}mlp.fc1.{leaf}"], sd[f"{h}mlp.fc2.{leaf}"]
    assert loading.detect_layout(oc, "clip_vision") == "open_clip"
    _clip_matches(loading.clip_vision_from_state_dict(oc), clip_case)


# ------------------------------------------------------------------- wrong / partial / unsafe
def test_wrong_component_is_named(tmp_path, vae_case, dit_t2v):
    vae_file = T.write_file(tmp_path / "wan_2.1_vae.safetensors", T.official_vae_sd(vae_case[0].state_dict()))
    with pytest.raises(WanWeightsError) as err:
        loading.load_transformer(vae_file)
    assert "look like a Wan vae file" in str(err.value) and "diffusion model" in str(err.value)
    dit_file = T.write_file(tmp_path / "dit.safetensors", dit_t2v[0])
    with pytest.raises(WanWeightsError, match="look like a Wan transformer file"):
        loading.load_vae(dit_file)


def test_partial_file_names_layout_and_missing_keys(tmp_path, dit_t2v, umt5_case):
    official = dict(dit_t2v[0])
    del official["blocks.1.ffn.2.weight"], official["blocks.1.cross_attn.o.bias"]
    with pytest.raises(WanWeightsError) as err:
        loading.load_transformer(T.write_file(tmp_path / "partial.safetensors", official))
    msg = str(err.value)
    assert "partial.safetensors" in msg and "layout 'official'" in msg and "2 missing keys" in msg
    assert "blocks.1.ffn.net.2.weight" in msg and "blocks.1.attn2.to_out.0.bias" in msg
    te = T.official_umt5_sd(T.transformers_umt5_sd(umt5_case[0]))
    te["blocks.1.attn.q.weight"] = te["blocks.1.attn.q.weight"][:, :5]
    with pytest.raises(WanWeightsError, match=r"wrong shapes, first: \['encoder.block.1.layer.0.SelfAttention.q.weight"):
        loading.text_encoder_from_state_dict(te)


def test_unknown_file(tmp_path):
    path = T.write_file(tmp_path / "something.safetensors", {"foo.weight": torch.zeros(2)})
    for loader in (loading.load_transformer, loading.load_vae, loading.load_clip_vision):
        with pytest.raises(WanWeightsError, match="not a known Wan2.1 .* layout.*foo.weight"):
            loader(path)


class _NeedsCode:
    def __init__(self):
        self.w = torch.zeros(1)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_needing_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": _NeedsCode(), "x": torch.zeros(1)}, str(path))
    with pytest.raises(WanWeightsError, match="refused to load.*references .*_NeedsCode"):
        read_state_dict(path)
    legacy = tmp_path / "legacy.ckpt"
    with open(legacy, "wb") as f:
        pickle.dump({"state_dict": {"a": _NeedsCode()}}, f)
    with pytest.raises(WanWeightsError):
        read_state_dict(legacy)


def test_plain_pickle_and_wrapped_state_dict(tmp_path):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"a.weight": torch.ones(2)}, "epoch": 3}, str(path))
    assert list(read_state_dict(path)) == ["a.weight"]


def test_index_with_missing_shard(tmp_path, dit_t2v):
    index = T.write_sharded(tmp_path / "rel", dit_t2v[0], shards=2)
    next(p for p in index.parent.glob("*-00002-of-00002.safetensors")).unlink()
    with pytest.raises(WanWeightsError, match="shard .* is missing"):
        read_state_dict(index)
    data = json.loads(index.read_text())
    data["weight_map"] = {k: "../outside.safetensors" for k in data["weight_map"]}
    index.write_text(json.dumps(data))
    with pytest.raises(WanWeightsError, match="leaves the folder"):
        read_state_dict(index)


def test_plain_fp8_file_without_scales(tmp_path, dit_t2v):
    """``*_fp8_e4m3fn.safetensors`` without the marker: fp8 weights, implicit scale 1."""
    official, _, expected = dit_t2v
    sd = {k: (v.to(FP8) if k.startswith("blocks.") and v.ndim == 2 else v) for k, v in official.items()}
    path = T.write_file(tmp_path / "wan2.1_t2v_1.3B_fp8_e4m3fn.safetensors", sd)
    assert loading.detect_layout(read_state_dict(path), "transformer") == "official"
    stored = loading.load_transformer(path, dtype=torch.float32, weight_dtype=FP8)
    assert stored.blocks[1].ffn.net[2].scale_weight.item() == 1.0
    assert torch.equal(stored.blocks[1].ffn.net[2].weight, sd["blocks.1.ffn.2.weight"])
    plain = loading.load_transformer(path, dtype=torch.float32)
    a, b = _run(stored, official), _run(plain, official)
    assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    assert (b - expected).abs().max() < FP8_REL_TOL * expected.abs().max()


def test_spiece_tokenizer_truncation_keeps_eos(umt5_case):
    from poseanimate.models.wan.umt5_tokenizer import load_tokenizer
    tok = load_tokenizer(umt5_case[4])
    enc = tok(["a person is dancing in the park " * 10, "fox"], padding="max_length", max_length=12,
              truncation=True, return_tensors="pt")
    assert enc["input_ids"].shape == (2, 12) and enc["input_ids"][0, -1] == 1
    assert enc["attention_mask"][0].all() and enc["input_ids"][1].tolist().count(1) == 1
    assert tok.decode(enc["input_ids"][1]) == "fox"


def test_from_state_dict_leaves_input_intact(dit_t2v):
    official = dict(dit_t2v[0])
    loading.transformer_from_state_dict(official, dtype=torch.bfloat16)
    assert official.keys() == dit_t2v[0].keys()
    assert all(official[k] is dit_t2v[0][k] for k in official)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp8_scaled_on_gpu_bf16(tmp_path, dit_i2v):
    official, _, expected = dit_i2v
    path = T.write_file(tmp_path / "fp8_scaled.safetensors", T.fp8_scaled(official))
    model = loading.load_transformer(path, dtype=torch.bfloat16, device="cuda", weight_dtype=FP8)
    assert model.blocks[0].attn1.to_q.weight.device.type == "cuda"
    kw = {k: v.to("cuda", torch.bfloat16) if v.is_floating_point() else v.cuda()
          for k, v in T.transformer_inputs(official).items()}
    with torch.no_grad():
        out = model(**kw, return_dict=False)[0].float().cpu()
    assert (out - expected).abs().max() < 2 * FP8_REL_TOL * expected.abs().max()  # fp8 + bf16 compute


def test_model_factory_for_subclasses_with_extra_modules(dit_t2v):
    """One-to-All / UniAnimate build a subclass; its extra keys load through the same checks."""
    from diffusers import WanTransformer3DModel

    class WithPose(WanTransformer3DModel):
        def __init__(self, **cfg):
            super().__init__(**cfg)
            self.pose_embedding = torch.nn.Conv3d(3, cfg["num_attention_heads"] * cfg["attention_head_dim"], 1)

    official, _, expected = dit_t2v
    extra = dict(official, **{"pose_embedding.weight": torch.ones(128, 3, 1, 1, 1), "pose_embedding.bias": torch.ones(128)})
    model = loading.transformer_from_state_dict(extra, dtype=torch.float32, model_factory=lambda cfg: WithPose(**cfg))
    assert isinstance(model, WithPose) and torch.equal(model.pose_embedding.bias, torch.ones(128))
    assert torch.equal(_run(model, official), expected)
    with pytest.raises(WanWeightsError, match="missing keys, first: \\['pose_embedding.weight"):
        loading.transformer_from_state_dict(official, model_factory=lambda cfg: WithPose(**cfg))
