"""Tiny One-to-All Animation checkpoints in the released layout, and the model folder of the
One-to-All workflow (reusable by loader, pipeline, node and real-ComfyUI tests).

Exact file names written by ``write_tiny_models(models_dir)`` (the One-to-All workflows name these):
- ``diffusion_models/one_to_all_14b_bf16.safetensors``: the tiny One-to-All transformer, one file with
  the official key names (1 head x 128, 2 main blocks, 1 controlnet block, 1 refextractor block,
  text_dim 32 = the tiny UMT5's width, 16 latent channels);
- ``vae/wan_2.1_vae.safetensors``: a tiny Wan2.1 VAE (z_dim 16) in ComfyUI's / the official naming;
- ``text_encoders/umt5_xxl_fp16.safetensors``: the tiny UMT5 in ComfyUI's naming, with the
  ``spiece_model`` tokenizer tensor ComfyUI embeds;
- ``loras/wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors``: a tiny Wan2.1-T2V LoRA of the tiny
  model's size in ComfyUI's spelling (the distilled workflow's step-distillation LoRA; random, not distilled).
The VAE and text encoder are the same files tests/test_wan_nodes.py writes (tests/wan_tiny.py).

Official layout (``write_official_checkpoint``): a folder of safetensors shards named like the
Hugging Face release (``model-0000i-of-0000n.safetensors``), with or without the shard index; the
official scripts read every ``*.safetensors`` in the folder.

Weights are seeded random (default PyTorch init) with every all-zero / all-one tensor perturbed,
so no path of the model is hidden by a zero or identity layer.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import torch

import wan_tiny

TRANSFORMER_FILE = "one_to_all_14b_bf16.safetensors"
VAE_FILE = "wan_2.1_vae.safetensors"
TEXT_ENCODER_FILE = "umt5_xxl_fp16.safetensors"
DISTILL_LORA_FILE = "wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors"

# Sizes of the tiny model (OneToAllTransformer arguments).
TINY_ONE_TO_ALL = dict(
    patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=wan_tiny.TINY_UMT5["d_model"], freq_dim=16, ffn_dim=32, num_layers=2, eps=1e-6,
    controlnet_layers=1, controlnet_ffn_dim=32, refextractor_layers=1, refextractor_ffn_dim=32,
    refextractor_in_channels=32)


def tiny_one_to_all(seed: int = 0, **overrides):
    """A tiny ``OneToAllTransformer`` (float32, eval) with every path active."""
    from poseanimate.models.one_to_all.transformer import OneToAllTransformer

    torch.manual_seed(seed)
    model = OneToAllTransformer(**{**TINY_ONE_TO_ALL, **overrides}).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()) + seed)
            if torch.all(p == 0) and p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 / (p[0].numel() ** 0.5))
            elif torch.all(p == 0):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif torch.all(p == 1):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.requires_grad_(False)


def tiny_state_dict(seed: int = 0, dtype=torch.float32, **overrides) -> dict:
    """Official key names -> tensors of the tiny model."""
    return {k: v.detach().to(dtype).contiguous() for k, v in tiny_one_to_all(seed, **overrides).state_dict().items()}


def write_official_checkpoint(folder: Path, sd: dict, shards: int = 2, index: bool = False) -> Path:
    """The released layout: ``model-0000i-of-0000n.safetensors`` shards (+ index JSON if asked)."""
    folder = Path(folder)
    written = wan_tiny.write_sharded(folder, sd, stem="model", shards=shards)
    if not index:
        written.unlink()
    return folder


def write_tiny_models(models_dir) -> None:
    """Fill a ComfyUI-style models dir with what the One-to-All workflows load (module docstring)."""
    models_dir = Path(models_dir)
    wan_tiny.write_file(models_dir / "diffusion_models" / TRANSFORMER_FILE, tiny_state_dict())
    vae = wan_tiny.tiny_vae(z_dim=16)
    wan_tiny.write_file(models_dir / "vae" / VAE_FILE, wan_tiny.official_vae_sd(vae.state_dict()))
    umt5 = wan_tiny.transformers_umt5_sd(wan_tiny.tiny_umt5())
    umt5["spiece_model"] = torch.frombuffer(bytearray(wan_tiny.tiny_spiece_model()), dtype=torch.uint8)
    wan_tiny.write_file(models_dir / "text_encoders" / TEXT_ENCODER_FILE, umt5)
    wan_tiny.write_file(models_dir / "loras" / DISTILL_LORA_FILE, tiny_t2v_lora_sd())


def tiny_t2v_lora_sd(style: str = "comfy", seed: int = 5) -> dict:
    """A Wan2.1-T2V LoRA (attention q/k/v/o and FFN of each main block) of the tiny model's size."""
    import unianimate_tiny

    cfg = TINY_ONE_TO_ALL
    return unianimate_tiny.tiny_wan_lora_sd(style, dim=cfg["num_attention_heads"] * cfg["attention_head_dim"],
                                            ffn_dim=cfg["ffn_dim"], num_layers=cfg["num_layers"], seed=seed)
