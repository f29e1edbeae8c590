"""SD1.5 single-file checkpoints (original LDM layout) -> diffusers UNet / VAE + transformers CLIP.

Everything is local: key names are converted by the pure per-key functions below, the
diffusers / transformers configs are inferred from the checkpoint's own tensor shapes (SD1.5
conventions fill in what shapes cannot tell: 8 UNet heads, GroupNorm 32, CLIP head size 64,
quick_gelu), and the CLIP tokenizer is built from the OpenAI CLIP BPE file shipped in
``clip_tokenizer/`` (taken from the MIT-licensed ``open_clip_torch`` wheel on PyPI).
Models are built on ``meta`` and the file's tensors assigned, so a 4 GB file is not
allocated twice, and a full-size key manifest can be checked without any memory.
"""
from __future__ import annotations

import functools
import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..runtime.build import empty_parameters
from .weights_io import AnimateDiffWeightsError, load_into, materialize_meta_buffers, read_state_dict

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
TOKENIZER_DIR = Path(__file__).resolve().parent / "clip_tokenizer"
BPE_FILE = TOKENIZER_DIR / "bpe_simple_vocab_16e6.txt.gz"

# The scheduler SD1.5 was trained with (DDPM "scaled_linear" betas, epsilon prediction).
SD15_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "clip_sample": False,
    "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading",
}

__all__ = ["SD15Components", "AnimateDiffWeightsError", "load_sd15_checkpoint", "convert_sd15_state_dict",
           "build_sd15_components", "load_clip_tokenizer", "unet_key_to_diffusers", "vae_key_to_diffusers",
           "clip_key_to_transformers", "controlnet_key_to_diffusers", "unet_config_from_diffusers_keys",
           "vae_config_from_diffusers_keys", "clip_config_from_keys"]


@dataclass
class SD15Components:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: dict = field(default_factory=lambda: dict(SD15_SCHEDULER_CONFIG))


# ---------------------------------------------------------------- key conversion (LDM -> diffusers)
_RESNET_RENAMES = (("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
                   ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut."))


def _resnet(rest: str) -> str:
    for old, new in _RESNET_RENAMES:
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def layers_per_block_from_ldm(keys) -> int:
    """The first downsampler (``input_blocks.<i>.0.op``) sits at index layers_per_block + 1."""
    ops = sorted(int(m.group(1)) for k in keys if (m := re.match(r"(?:.*\.)?input_blocks\.(\d+)\.0\.op\.", k)))
    if not ops:
        raise AnimateDiffWeightsError("UNet has no downsampler (input_blocks.*.0.op); not an SD1.x UNet")
    return ops[0] - 1


def unet_key_to_diffusers(key: str, layers_per_block: int = 2) -> str | None:
    """One ``model.diffusion_model.*`` key (prefix stripped) -> diffusers ``UNet2DConditionModel`` name.

    Also maps the encoder half of a ControlNet. Returns None for keys that are not UNet weights.
    """
    lpb = layers_per_block
    simple = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
              "input_blocks.0.0.": "conv_in.", "out.0.": "conv_norm_out.", "out.2.": "conv_out."}
    for old, new in simple.items():
        if key.startswith(old):
            return new + key[len(old):]
    m = re.match(r"input_blocks\.(\d+)\.(\d+)\.(.*)", key)
    if m:
        i, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        level, layer = (i - 1) // (lpb + 1), (i - 1) % (lpb + 1)
        if layer == lpb:
            return f"down_blocks.{level}.downsamplers.0.conv.{rest[len('op.'):]}" if rest.startswith("op.") else None
        if j == 0:
            return f"down_blocks.{level}.resnets.{layer}.{_resnet(rest)}"
        return f"down_blocks.{level}.attentions.{layer}.{rest}"
    m = re.match(r"middle_block\.(\d+)\.(.*)", key)
    if m:
        j, rest = int(m.group(1)), m.group(2)
        return {0: f"mid_block.resnets.0.{_resnet(rest)}", 1: f"mid_block.attentions.0.{rest}",
                2: f"mid_block.resnets.1.{_resnet(rest)}"}.get(j)
    m = re.match(r"output_blocks\.(\d+)\.(\d+)\.(.*)", key)
    if m:
        i, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        level, layer = i // (lpb + 1), i % (lpb + 1)
        if j == 0:
            return f"up_blocks.{level}.resnets.{layer}.{_resnet(rest)}"
        if rest.startswith("conv."):  # the upsampler (index 1 without attention, 2 with)
            return f"up_blocks.{level}.upsamplers.0.{rest}"
        return f"up_blocks.{level}.attentions.{layer}.{rest}"
    return None


def controlnet_key_to_diffusers(key: str, layers_per_block: int = 2, hint_indices=(0, 2, 4, 6, 8, 10, 12, 14)) -> str | None:
    """An original ControlNet key (``control_model.`` stripped) -> diffusers ``ControlNetModel`` name."""
    m = re.match(r"input_hint_block\.(\d+)\.(.*)", key)
    if m:
        pos = list(hint_indices).index(int(m.group(1)))
        if pos == 0:
            return f"controlnet_cond_embedding.conv_in.{m.group(2)}"
        if pos == len(hint_indices) - 1:
            return f"controlnet_cond_embedding.conv_out.{m.group(2)}"
        return f"controlnet_cond_embedding.blocks.{pos - 1}.{m.group(2)}"
    m = re.match(r"zero_convs\.(\d+)\.0\.(.*)", key)
    if m:
        return f"controlnet_down_blocks.{m.group(1)}.{m.group(2)}"
    if key.startswith("middle_block_out.0."):
        return "controlnet_mid_block." + key[len("middle_block_out.0."):]
    if key.startswith(("output_blocks.", "out.")):
        return None
    return unet_key_to_diffusers(key, layers_per_block)


_VAE_ATTN = {"norm.": "group_norm.", "q.": "to_q.", "k.": "to_k.", "v.": "to_v.", "proj_out.": "to_out.0."}


def vae_key_to_diffusers(key: str, num_levels: int = 4) -> str | None:
    """One ``first_stage_model.*`` key (prefix stripped) -> diffusers ``AutoencoderKL`` name."""
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    m = re.match(r"(encoder|decoder)\.(.*)", key)
    if not m:
        return None
    side, rest = m.group(1), m.group(2)
    if rest.startswith(("conv_in.", "conv_out.")):
        return f"{side}.{rest}"
    if rest.startswith("norm_out."):
        return f"{side}.conv_norm_out.{rest[len('norm_out.'):]}"
    m = re.match(r"mid\.block_(\d)\.(.*)", rest)
    if m:
        return f"{side}.mid_block.resnets.{int(m.group(1)) - 1}.{m.group(2).replace('nin_shortcut.', 'conv_shortcut.')}"
    m = re.match(r"mid\.attn_1\.(\w+\.)(.*)", rest)
    if m and m.group(1) in _VAE_ATTN:
        return f"{side}.mid_block.attentions.0.{_VAE_ATTN[m.group(1)]}{m.group(2)}"
    m = re.match(r"(down|up)\.(\d+)\.(.*)", rest)
    if m:
        kind, level, tail = m.group(1), int(m.group(2)), m.group(3)
        block = f"down_blocks.{level}" if kind == "down" else f"up_blocks.{num_levels - 1 - level}"
        mb = re.match(r"block\.(\d+)\.(.*)", tail)
        if mb:
            return f"{side}.{block}.resnets.{mb.group(1)}.{mb.group(2).replace('nin_shortcut.', 'conv_shortcut.')}"
        if tail.startswith(("downsample.conv.", "upsample.conv.")):
            sampler = "downsamplers" if kind == "down" else "upsamplers"
            return f"{side}.{block}.{sampler}.0.conv.{tail.split('conv.', 1)[1]}"
    return None


def _is_vae_attn_matrix(diffusers_key: str) -> bool:
    return ".mid_block.attentions.0." in diffusers_key and diffusers_key.endswith("weight") and "group_norm" not in diffusers_key


def clip_key_to_transformers(key: str) -> str | None:
    """``cond_stage_model.transformer.*`` (prefix stripped) -> transformers-5 in-memory CLIPTextModel name.

    Older files lack the ``text_model.`` level; both spellings map to the same name.
    ``position_ids`` (a buffer some files carry) is dropped.
    """
    if key.startswith("text_model."):
        key = key[len("text_model."):]
    if key.endswith("position_ids"):
        return None
    if key.startswith(("embeddings.", "encoder.", "final_layer_norm.")):
        return key
    return None


def _check_family(sd) -> None:
    keys = sd.keys()
    if any(k.startswith("conditioner.embedders") for k in keys) or any(k.startswith(UNET_PREFIX + "label_emb") for k in keys):
        raise AnimateDiffWeightsError("this is an SDXL checkpoint; AnimateDiff here needs an SD1.5 checkpoint")
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise AnimateDiffWeightsError("this is an SD2.x checkpoint (OpenCLIP text encoder); an SD1.5 checkpoint is needed")
    for prefix, what in ((UNET_PREFIX, "UNet"), (VAE_PREFIX, "VAE"), (CLIP_PREFIX, "CLIP text encoder")):
        if not any(k.startswith(prefix) for k in keys):
            raise AnimateDiffWeightsError(
                f"no {what} weights ('{prefix}*' keys) in this file; expected an SD1.5 single-file checkpoint "
                "(UNet, VAE and CLIP in the original LDM layout) in the checkpoints folder")


def _convert(sd, prefix, fn, what):
    out = {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        new = fn(k[len(prefix):])
        if new is None:
            continue
        if new in out:
            raise AnimateDiffWeightsError(f"{what}: two keys map to {new}")
        out[new] = v
    return out


def convert_sd15_state_dict(sd: dict[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """Split an LDM single-file state dict into diffusers UNet, diffusers VAE and CLIP state dicts.

    ``model_ema.*``, the DDPM schedule buffers and ``position_ids`` are ignored.
    """
    _check_family(sd)
    lpb = layers_per_block_from_ldm(k for k in sd if k.startswith(UNET_PREFIX))
    unet = _convert(sd, UNET_PREFIX, lambda k: unet_key_to_diffusers(k, lpb), "UNet")
    levels = 1 + max((int(m.group(1)) for k in sd if (m := re.match(re.escape(VAE_PREFIX) + r"decoder\.up\.(\d+)\.", k))), default=-1)
    vae = _convert(sd, VAE_PREFIX, lambda k: vae_key_to_diffusers(k, levels), "VAE")
    for k, v in vae.items():
        if _is_vae_attn_matrix(k) and v.ndim == 4:
            vae[k] = v[:, :, 0, 0]  # 1x1 conv -> linear
    clip = _convert(sd, CLIP_PREFIX, clip_key_to_transformers, "CLIP")
    return unet, vae, clip


# ---------------------------------------------------------------- configs from shapes
def _count(keys, pattern) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return 1 + max(found) if found else 0


def unet_config_from_diffusers_keys(sd: dict[str, torch.Tensor]) -> dict:
    """A ``UNet2DConditionModel`` config for an SD1.x-topology UNet, from its tensor shapes."""
    keys = list(sd)
    levels = _count(keys, r"down_blocks\.(\d+)\.")
    if not levels or "conv_in.weight" not in sd:
        raise AnimateDiffWeightsError("UNet weights lack conv_in / down_blocks; not an SD1.5 UNet")
    channels = [int(sd[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in range(levels)]
    down = ["CrossAttnDownBlock2D" if f"down_blocks.{i}.attentions.0.proj_in.weight" in sd else "DownBlock2D" for i in range(levels)]
    up = ["CrossAttnUpBlock2D" if f"up_blocks.{i}.attentions.0.proj_in.weight" in sd else "UpBlock2D" for i in range(levels)]
    attn = next(k for k in keys if k.endswith("attn2.to_k.weight"))
    proj_in = next(k for k in keys if k.endswith("attentions.0.proj_in.weight"))
    return {
        "sample_size": 64, "in_channels": int(sd["conv_in.weight"].shape[1]),
        "out_channels": int(sd["conv_out.weight"].shape[0]), "down_block_types": down, "up_block_types": up,
        "block_out_channels": channels, "layers_per_block": _count(keys, r"down_blocks\.0\.resnets\.(\d+)\."),
        "cross_attention_dim": int(sd[attn].shape[1]), "attention_head_dim": 8,
        "transformer_layers_per_block": max(1, _count(keys, r"down_blocks\.0\.attentions\.0\.transformer_blocks\.(\d+)\.")),
        "use_linear_projection": sd[proj_in].ndim == 2, "norm_num_groups": 32, "norm_eps": 1e-5,
        "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu",
    }


def vae_config_from_diffusers_keys(sd: dict[str, torch.Tensor]) -> dict:
    keys = list(sd)
    levels = _count(keys, r"encoder\.down_blocks\.(\d+)\.")
    if not levels or "quant_conv.weight" not in sd:
        raise AnimateDiffWeightsError("VAE weights lack encoder.down / quant_conv; not an SD VAE")
    return {
        "in_channels": int(sd["encoder.conv_in.weight"].shape[1]), "out_channels": int(sd["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [int(sd[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in range(levels)],
        "layers_per_block": _count(keys, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."),
        "latent_channels": int(sd["quant_conv.weight"].shape[0]) // 2, "norm_num_groups": 32,
        "sample_size": 512, "scaling_factor": 0.18215,
    }


def clip_config_from_keys(sd: dict[str, torch.Tensor]) -> dict:
    tok = sd.get("embeddings.token_embedding.weight")
    if tok is None:
        raise AnimateDiffWeightsError("CLIP weights lack embeddings.token_embedding.weight")
    hidden = int(tok.shape[1])
    return {
        "vocab_size": int(tok.shape[0]), "hidden_size": hidden,
        "intermediate_size": int(sd["encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "num_hidden_layers": _count(list(sd), r"encoder\.layers\.(\d+)\."),
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": int(sd["embeddings.position_embedding.weight"].shape[0]),
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 768,
        "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
    }


# ---------------------------------------------------------------- tokenizer
def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable-character table byte-level BPE vocabularies use."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@functools.lru_cache(maxsize=1)
def _clip_vocab_and_merges():
    """vocab (49408 entries) and merges (48894) derived from the OpenAI CLIP BPE file."""
    if not BPE_FILE.is_file():
        raise AnimateDiffWeightsError(f"CLIP BPE file missing: {BPE_FILE} (it ships with the pack; reinstall it)")
    lines = gzip.open(BPE_FILE).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def load_clip_tokenizer():
    """The SD1.5 CLIP tokenizer (ids 49406 / 49407 for start / end, max length 77), offline.

    vocab.json / merges.txt are written to a temporary folder and loaded from there, which
    works the same with transformers 4 (file-based) and 5 (tokenizers-backed).
    """
    import json
    import tempfile

    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text(
            "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=77, local_files_only=True)


# ---------------------------------------------------------------- building the models
def _build(cls_factory, sd, dtype, device, what):
    with empty_parameters():
        model = cls_factory()
    for k in list(sd):  # in place, so a converted fp16 tensor is freed as soon as it is cast
        v = sd[k]
        sd[k] = v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
    load_into(model, sd, what)
    if str(device) != "meta":
        materialize_meta_buffers(model, device)
    return model.eval().requires_grad_(False)


def build_sd15_components(unet_sd, vae_sd, clip_sd, dtype=torch.float32, device="cpu", tokenizer=True) -> SD15Components:
    """diffusers / transformers models from converted state dicts (``device="meta"`` checks only)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_cfg = unet_config_from_diffusers_keys(unet_sd)
    vae_cfg = vae_config_from_diffusers_keys(vae_sd)
    clip_cfg = CLIPTextConfig(**clip_config_from_keys(clip_sd))
    unet = _build(lambda: UNet2DConditionModel(**unet_cfg), unet_sd, dtype, device, "SD1.5 UNet")
    vae = _build(lambda: AutoencoderKL(**vae_cfg), vae_sd, dtype, device, "SD1.5 VAE")
    with empty_parameters():
        nested = any(k.startswith("text_model.") for k in CLIPTextModel(clip_cfg).state_dict())
    if nested:  # transformers 4 keeps the ``text_model`` level in memory
        clip_sd = {"text_model." + k: v for k, v in clip_sd.items()}
    te = _build(lambda: CLIPTextModel(clip_cfg), clip_sd, dtype, device, "SD1.5 CLIP text encoder")
    return SD15Components(unet=unet, vae=vae, text_encoder=te,
                          tokenizer=load_clip_tokenizer() if tokenizer else None)


def load_sd15_checkpoint(path, dtype=torch.float32, device="cpu") -> SD15Components:
    """Load an SD1.5 single-file checkpoint (``checkpoints`` folder) fully offline."""
    sd = read_state_dict(path)
    try:
        unet_sd, vae_sd, clip_sd = convert_sd15_state_dict(sd)
        del sd
        return build_sd15_components(unet_sd, vae_sd, clip_sd, dtype=dtype, device=device)
    except AnimateDiffWeightsError as exc:
        raise AnimateDiffWeightsError(f"{Path(path).name}: {exc}") from exc
