"""Tiny Wan2.1 checkpoints written in every real layout, for loader tests (reusable by other areas).

The weights are random but deterministic (seeded). Names follow the real files:
- official release: original Wan DiT names in sharded safetensors + index JSON; Wan2.1_VAE.pth;
  models_t5_umt5-xxl-enc-bf16.pth (Wan's T5Encoder names); the XLM-RoBERTa CLIP .pth (``visual.*``
  plus a text tower that loaders ignore);
- diffusers folders: transformer/ vae/ text_encoder/ image_encoder/ tokenizer/ with config.json,
  sharded with an index JSON;
- ComfyUI single files, optionally under ``model.diffusion_model.``, and fp8 "scaled" files
  (``scaled_fp8`` marker, fp8 Linear weights, float32 ``scale_weight`` per layer).
The official VAE names come from the key map in tests/fixtures/reference/comfy_formats (made with
diffusers' own converter), not from the code under test.
"""
from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "reference"

# A tiny DiT: 1 head x 128 (Wan's head size), 2 blocks.
TINY_DIT = dict(dim=128, ffn_dim=64, num_layers=2, in_dim=16, out_dim=16, text_dim=32, freq_dim=32)
TINY_DIT_I2V = dict(TINY_DIT, in_dim=36, image_dim=48)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _name_gen(name: str, seed: int) -> torch.Generator:
    """A generator per parameter name (stable across processes, distinct for q / k / v)."""
    return _gen(zlib.crc32(name.encode()) + seed)


def _rand(g, *shape, scale=0.05):
    return torch.randn(*shape, generator=g) * scale


# --------------------------------------------------------------------------------- DiT
def official_transformer_sd(dim=128, ffn_dim=64, num_layers=2, in_dim=16, out_dim=16, text_dim=32,
                            freq_dim=32, image_dim=None, flf_pos_len=None, seed=0) -> dict:
    """Original Wan naming (WanModel in Wan-Video/Wan2.1 ``wan/modules/model.py``)."""
    g = _gen(seed)
    sd = {"patch_embedding.weight": _rand(g, dim, in_dim, 1, 2, 2), "patch_embedding.bias": _rand(g, dim)}
    for name, fan_in in (("text_embedding.0", text_dim), ("text_embedding.2", dim),
                         ("time_embedding.0", freq_dim), ("time_embedding.2", dim)):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = _rand(g, dim, fan_in), _rand(g, dim)
    sd["time_projection.1.weight"], sd["time_projection.1.bias"] = _rand(g, 6 * dim, dim), _rand(g, 6 * dim)
    for i in range(num_layers):
        b = f"blocks.{i}"
        sd[f"{b}.modulation"] = _rand(g, 1, 6, dim, scale=0.5)
        for attn in ("self_attn", "cross_attn"):
            for p in "qkvo":
                sd[f"{b}.{attn}.{p}.weight"], sd[f"{b}.{attn}.{p}.bias"] = _rand(g, dim, dim), _rand(g, dim)
            sd[f"{b}.{attn}.norm_q.weight"] = 1 + _rand(g, dim)
            sd[f"{b}.{attn}.norm_k.weight"] = 1 + _rand(g, dim)
        if image_dim:
            for p in ("k_img", "v_img"):
                sd[f"{b}.cross_attn.{p}.weight"], sd[f"{b}.cross_attn.{p}.bias"] = _rand(g, dim, dim), _rand(g, dim)
            sd[f"{b}.cross_attn.norm_k_img.weight"] = 1 + _rand(g, dim)
        sd[f"{b}.norm3.weight"], sd[f"{b}.norm3.bias"] = 1 + _rand(g, dim), _rand(g, dim)
        sd[f"{b}.ffn.0.weight"], sd[f"{b}.ffn.0.bias"] = _rand(g, ffn_dim, dim), _rand(g, ffn_dim)
        sd[f"{b}.ffn.2.weight"], sd[f"{b}.ffn.2.bias"] = _rand(g, dim, ffn_dim), _rand(g, dim)
    sd["head.modulation"] = _rand(g, 1, 2, dim, scale=0.5)
    sd["head.head.weight"], sd["head.head.bias"] = _rand(g, out_dim * 4, dim), _rand(g, out_dim * 4)
    if image_dim:
        sd["img_emb.proj.0.weight"], sd["img_emb.proj.0.bias"] = 1 + _rand(g, image_dim), _rand(g, image_dim)
        sd["img_emb.proj.1.weight"], sd["img_emb.proj.1.bias"] = _rand(g, image_dim, image_dim), _rand(g, image_dim)
        sd["img_emb.proj.3.weight"], sd["img_emb.proj.3.bias"] = _rand(g, dim, image_dim), _rand(g, dim)
        sd["img_emb.proj.4.weight"], sd["img_emb.proj.4.bias"] = 1 + _rand(g, dim), _rand(g, dim)
        if flf_pos_len:
            sd["img_emb.emb_pos"] = _rand(g, 1, flf_pos_len, image_dim)
    return sd


def diffusers_transformer_reference(official_sd: dict, num_attention_heads=1):
    """The same weights loaded straight into diffusers with diffusers' own single-file converter
    (independent of the code under test)."""
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    sd = dict(official_sd)
    pos = sd.pop("img_emb.emb_pos", None)  # FLF2V; diffusers' single-file converter lacks it
    conv = convert_wan_transformer_to_diffusers(sd)
    if pos is not None:  # the name diffusers' scripts/convert_wan_to_diffusers.py gives it
        conv["condition_embedder.image_embedder.pos_embed"] = pos
    dim, in_dim = official_sd["patch_embedding.weight"].shape[:2]
    image = "img_emb.proj.0.weight" in official_sd
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=num_attention_heads,
        attention_head_dim=dim // num_attention_heads, in_channels=in_dim,
        out_channels=official_sd["head.head.weight"].shape[0] // 4,
        text_dim=official_sd["text_embedding.0.weight"].shape[1],
        freq_dim=official_sd["time_embedding.0.weight"].shape[1],
        ffn_dim=official_sd["blocks.0.ffn.0.weight"].shape[0],
        num_layers=1 + max(int(k.split(".")[1]) for k in official_sd if k.startswith("blocks.")),
        image_dim=official_sd["img_emb.proj.0.weight"].shape[0] if image else None,
        added_kv_proj_dim=dim if image else None,
        pos_embed_seq_len=official_sd["img_emb.emb_pos"].shape[1] if "img_emb.emb_pos" in official_sd else None)
    model.load_state_dict(conv, strict=True)
    return model.eval(), conv


def transformer_inputs(official_sd: dict, seed=1, frames=2, height=8, width=8, text_len=5):
    g = _gen(seed)
    in_dim = official_sd["patch_embedding.weight"].shape[1]
    kw = dict(hidden_states=torch.randn(1, in_dim, frames, height, width, generator=g),
              timestep=torch.tensor([500.0]),
              encoder_hidden_states=torch.randn(1, text_len, official_sd["text_embedding.0.weight"].shape[1], generator=g))
    if "img_emb.proj.0.weight" in official_sd:
        # FLF2V: first and last frame images stacked on the batch axis, as diffusers expects
        b, n = (2, official_sd["img_emb.emb_pos"].shape[1] // 2) if "img_emb.emb_pos" in official_sd else (1, 7)
        kw["encoder_hidden_states_image"] = torch.randn(b, n, official_sd["img_emb.proj.0.weight"].shape[0], generator=g)
    return kw


def fp8_scaled(sd: dict, prefix: str = "", new_style: bool = False, dtype=torch.float8_e4m3fn) -> dict:
    """ComfyUI fp8 "scaled" version: every 2-D Linear weight of the blocks in fp8 with a float32
    per-layer scale, biases/norms kept; the ``scaled_fp8`` marker at the root (legacy), or newer
    ComfyUI's ``weight_scale`` + ``comfy_quant`` spelling when ``new_style``."""
    out = {}
    for key, value in sd.items():
        if key.startswith("blocks.") and key.endswith(".weight") and value.ndim == 2:
            scale = value.abs().max().float() / torch.finfo(dtype).max
            out[prefix + key] = (value.float() / scale).to(dtype)
            module = prefix + key[: -len(".weight")]
            if new_style:
                out[f"{module}.weight_scale"] = scale.reshape(())
                out[f"{module}.comfy_quant"] = torch.tensor(list(b'{"format": "float8_e4m3fn"}'), dtype=torch.uint8)
            else:
                out[f"{module}.scale_weight"] = scale.reshape(())
        else:
            out[prefix + key] = value.to(torch.float16) if value.is_floating_point() else value
    if not new_style:
        out[prefix + "scaled_fp8"] = torch.empty(0, dtype=dtype)
    return out


# ----------------------------------------------------------------------------- writers
def write_sharded(folder: Path, sd: dict, stem: str = "diffusion_pytorch_model", shards: int = 2,
                  config: dict | None = None) -> Path:
    """Sharded safetensors + ``<stem>.safetensors.index.json`` (the official and diffusers way)."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(sd)
    weight_map = {}
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k].contiguous() for k in keys[i::shards]}
        save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
    index = folder / f"{stem}.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return index


def write_file(path: Path, sd: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".pth", ".pt", ".ckpt", ".bin"):
        torch.save({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


# --------------------------------------------------------------------------------- VAE
def tiny_vae(seed=0, base_dim=8, z_dim=4):
    from diffusers import AutoencoderKLWan
    torch.manual_seed(seed)
    model = AutoencoderKLWan(base_dim=base_dim, z_dim=z_dim).eval()
    with torch.no_grad():  # RMS-norm gains start at 1: perturb so a wrong mapping shows
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=_name_gen(name, seed)) * 0.05)
    return model


def official_vae_sd(diffusers_sd: dict) -> dict:
    """Official (= ComfyUI wan_2.1_vae) names via the reference key map."""
    keymap = json.loads((FIXTURES / "comfy_formats" / "comfy_to_diffusers_keymap.json").read_text())
    mapping = keymap["wan_2.1_vae"]["comfy_to_diffusers"]
    assert set(mapping.values()) == set(diffusers_sd), "tiny VAE must have the Wan2.1 structure"
    return {official: diffusers_sd[diff] for official, diff in mapping.items()}


# ------------------------------------------------------------------------------- UMT5
TINY_UMT5 = dict(vocab_size=80, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=32, relative_attention_max_distance=128,
                 feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, is_encoder_decoder=False,
                 use_cache=False, tie_word_embeddings=False)


def tiny_umt5(seed=0):
    from transformers import UMT5Config, UMT5EncoderModel
    torch.manual_seed(seed)
    model = UMT5EncoderModel(UMT5Config(**TINY_UMT5)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 1.0 if name == "shared.weight" else 0.1 if "norm" in name else p.shape[-1] ** -0.5
            p.copy_(torch.randn(p.shape, generator=_name_gen(name, seed)) * std
                    + (1.0 if "layer_norm" in name else 0.0))
    return model


def transformers_umt5_sd(model) -> dict:
    """On-disk transformers naming (``shared.weight`` only; the tied copy is not stored)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}


def official_umt5_sd(hf_sd: dict) -> dict:
    """Wan's own T5Encoder names (``wan/modules/t5.py``: token_embedding, blocks.N.{norm1, attn,
    pos_embedding.embedding, norm2, ffn.gate.0, ffn.fc1, ffn.fc2}, norm)."""
    out = {"token_embedding.weight": hf_sd["shared.weight"], "norm.weight": hf_sd["encoder.final_layer_norm.weight"]}
    n = 1 + max(int(k.split(".")[2]) for k in hf_sd if k.startswith("encoder.block."))
    for i in range(n):
        h = f"encoder.block.{i}.layer"
        out[f"blocks.{i}.norm1.weight"] = hf_sd[f"{h}.0.layer_norm.weight"]
        for p in "qkvo":
            out[f"blocks.{i}.attn.{p}.weight"] = hf_sd[f"{h}.0.SelfAttention.{p}.weight"]
        out[f"blocks.{i}.pos_embedding.embedding.weight"] = hf_sd[f"{h}.0.SelfAttention.relative_attention_bias.weight"]
        out[f"blocks.{i}.norm2.weight"] = hf_sd[f"{h}.1.layer_norm.weight"]
        out[f"blocks.{i}.ffn.gate.0.weight"] = hf_sd[f"{h}.1.DenseReluDense.wi_0.weight"]
        out[f"blocks.{i}.ffn.fc1.weight"] = hf_sd[f"{h}.1.DenseReluDense.wi_1.weight"]
        out[f"blocks.{i}.ffn.fc2.weight"] = hf_sd[f"{h}.1.DenseReluDense.wo.weight"]
    return out


TOKENIZER_CORPUS = ["a person is dancing in the park", "the quick brown fox jumps over the lazy dog",
                    "bright colors, overexposed, static, blurred details, subtitles",
                    "a woman walks forward and waves her hand", "three legs, many people in the background"]


def tiny_spiece_model(vocab_size=60) -> bytes:
    """A serialised SentencePiece unigram model with T5's special ids (pad 0, eos 1, unk 2)."""
    import sentencepiece as spm
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TOKENIZER_CORPUS * 10), model_writer=buf,
                                   vocab_size=vocab_size, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   model_type="unigram", hard_vocab_limit=False, minloglevel=2,
                                   num_threads=1)
    return buf.getvalue()


def write_tokenizer_folder(folder: Path, spiece: bytes) -> Path:
    """A tokenizer folder as diffusers / the official release ship it (tokenizer.json + config),
    built from the SentencePiece model's pieces and scores."""
    import sentencepiece as spm
    from transformers import T5Tokenizer
    sp = spm.SentencePieceProcessor(model_proto=spiece)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(str(folder))
    (folder / "spiece.model").write_bytes(spiece)
    return folder


# ------------------------------------------------------------------------------- CLIP
TINY_CLIP = dict(hidden_size=128, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                 patch_size=14, image_size=28, projection_dim=24, hidden_act="gelu", layer_norm_eps=1e-5)


def tiny_clip(seed=0):
    """CLIPVisionModelWithProjection: on-disk names = ComfyUI's clip_vision_h naming."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    torch.manual_seed(seed)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP)).eval()


def official_clip_sd(hf_sd: dict, text_tower=True, seed=0) -> dict:
    """Wan's XLM-RoBERTa CLIP names (``wan/modules/clip.py``): visual.{patch_embedding,
    cls_embedding [1,1,D], pos_embedding [1,L,D], pre_norm, transformer.N.{norm1, attn.to_qkv,
    attn.proj, norm2, mlp.0, mlp.2}, post_norm, head [D, out]}; plus a stub text tower."""
    v = "vision_model."
    out = {"visual.patch_embedding.weight": hf_sd[v + "embeddings.patch_embedding.weight"],
           "visual.cls_embedding": hf_sd[v + "embeddings.class_embedding"].reshape(1, 1, -1),
           "visual.pos_embedding": hf_sd[v + "embeddings.position_embedding.weight"].unsqueeze(0),
           "visual.pre_norm.weight": hf_sd[v + "pre_layrnorm.weight"], "visual.pre_norm.bias": hf_sd[v + "pre_layrnorm.bias"],
           "visual.post_norm.weight": hf_sd[v + "post_layernorm.weight"], "visual.post_norm.bias": hf_sd[v + "post_layernorm.bias"],
           "visual.head": hf_sd["visual_projection.weight"].t().contiguous()}
    n = 1 + max(int(k.split(".")[3]) for k in hf_sd if k.startswith(v + "encoder.layers."))
    for i in range(n):
        h, o = f"{v}encoder.layers.{i}.", f"visual.transformer.{i}."
        for leaf in ("weight", "bias"):
            out[o + "attn.to_qkv." + leaf] = torch.cat([hf_sd[h + f"self_attn.{p}_proj.{leaf}"] for p in "qkv"])
            out[o + "attn.proj." + leaf] = hf_sd[h + "self_attn.out_proj." + leaf]
            out[o + "norm1." + leaf] = hf_sd[h + "layer_norm1." + leaf]
            out[o + "norm2." + leaf] = hf_sd[h + "layer_norm2." + leaf]
            out[o + "mlp.0." + leaf] = hf_sd[h + "mlp.fc1." + leaf]
            out[o + "mlp.2." + leaf] = hf_sd[h + "mlp.fc2." + leaf]
    if text_tower:
        g = _gen(seed)
        out["log_scale"] = torch.tensor(2.0)
        out["textual.token_embedding.weight"] = _rand(g, 10, 8)
        out["textual.head.0.weight"] = _rand(g, 8, 8)
    return out
