"""Tiny UniAnimate files in the real layouts, for loader / node / workflow tests.

The UniAnimate checkpoint is a flat ``{name: tensor}`` dict with the official training names
(``pipe.dit.blocks.{i}.{self_attn|cross_attn}.{q|k|v|o}.lora_{A|B}.default.weight``,
``pipe.dit.blocks.{i}.ffn.{0|2}...``, ``dwpose_embedding.{0,2,..,12}.*``,
``randomref_embedding_pose.{0,2,..,10}.*``), written with ``torch.save`` like Lightning's
``on_save_checkpoint`` does; the safetensors twin is its fp16 conversion. Shapes are built from
the manifest's rules here, independent of the code under test.

``write_tiny_models(models_dir)`` writes, with the exact file names the UniAnimate workflow uses:

- ``diffusion_models/wan2.1_i2v_720p_14B_bf16.safetensors``: tiny Wan2.1-I2V DiT, original Wan
  names (ComfyUI's repackaged layout), bf16; width 128 (1 head of 128), 2 blocks, 36 input
  channels, text width 32 (the tiny UMT5), image width 128 (the tiny CLIP's hidden size);
- ``loras/UniAnimate-Wan2.1-14B-Lora-12000.ckpt``: tiny UniAnimate checkpoint (rank 4, pose
  modules to width 128), and ``loras/UniAnimate-Wan2.1-14B-Lora-12000-fp16.safetensors``, its
  fp16 safetensors twin;
- ``vae/wan_2.1_vae.safetensors``, ``text_encoders/umt5_xxl_fp16.safetensors`` (tokenizer
  embedded), ``clip_vision/clip_vision_h.safetensors``: the tiny Wan encoders of tests/wan_tiny.py.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import wan_tiny

BASE_NAME = "wan2.1_i2v_720p_14B_bf16.safetensors"
UNIANIMATE_CKPT_NAME = "UniAnimate-Wan2.1-14B-Lora-12000.ckpt"
UNIANIMATE_SAFETENSORS_NAME = "UniAnimate-Wan2.1-14B-Lora-12000-fp16.safetensors"
VAE_NAME = "wan_2.1_vae.safetensors"
TEXT_ENCODER_NAME = "umt5_xxl_fp16.safetensors"
CLIP_VISION_NAME = "clip_vision_h.safetensors"

# The tiny I2V DiT that fits the tiny encoders of wan_tiny (UMT5 width 32, CLIP hidden 128, VAE z 16).
TINY_UA_DIT = dict(dim=128, ffn_dim=64, num_layers=2, in_dim=36, out_dim=16, text_dim=wan_tiny.TINY_UMT5["d_model"],
                   freq_dim=32, image_dim=wan_tiny.TINY_CLIP["hidden_size"])
LORA_TARGETS = [f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo"] + ["ffn.0", "ffn.2"]
POSE_HIDDEN = 16


def lora_shapes(dim: int, ffn_dim: int, num_layers: int, rank: int) -> dict[str, tuple[tuple, tuple]]:
    """official module name -> (A shape [r, in], B shape [out, r])."""
    out = {}
    for i in range(num_layers):
        for target in LORA_TARGETS:
            fan_in, fan_out = {"ffn.0": (dim, ffn_dim), "ffn.2": (ffn_dim, dim)}.get(target, (dim, dim))
            out[f"blocks.{i}.{target}"] = ((rank, fan_in), (fan_out, rank))
    return out


def pose_module_shapes(dim: int, hidden: int = POSE_HIDDEN, ref_channels: int = 20) -> dict[str, tuple]:
    """The two pose modules' keys and shapes (manifest_unianimate_ckpt.json's rules)."""
    out = {}
    dw = [(hidden, 3, 3, 3, 3)] + [(hidden, hidden, 3, 3, 3)] * 5 + [(dim, hidden, 1, 2, 2)]
    for n, shape in enumerate(dw):
        out[f"dwpose_embedding.{2 * n}.weight"], out[f"dwpose_embedding.{2 * n}.bias"] = shape, (shape[0],)
    rr = [(hidden, 3, 3, 3)] + [(hidden, hidden, 3, 3)] * 4 + [(ref_channels, hidden, 3, 3)]
    for n, shape in enumerate(rr):
        out[f"randomref_embedding_pose.{2 * n}.weight"] = shape
        out[f"randomref_embedding_pose.{2 * n}.bias"] = (shape[0],)
    return out


def tiny_unianimate_sd(dim=TINY_UA_DIT["dim"], ffn_dim=TINY_UA_DIT["ffn_dim"], num_layers=TINY_UA_DIT["num_layers"],
                       rank=4, seed=0, prefix="", lora_std=0.05) -> dict:
    """A UniAnimate checkpoint dict: LoRA (A, B ~ N(0, lora_std^2)) + pose modules (scaled so the
    pose branch depends on its input). ``prefix`` mimics wrapper text (e.g. ``_forward_module.``)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for module, (a, b) in lora_shapes(dim, ffn_dim, num_layers, rank).items():
        sd[f"{prefix}pipe.dit.{module}.lora_A.default.weight"] = torch.randn(*a, generator=g) * lora_std
        sd[f"{prefix}pipe.dit.{module}.lora_B.default.weight"] = torch.randn(*b, generator=g) * lora_std
    for key, shape in pose_module_shapes(dim).items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        scale = 1.5 / math.sqrt(fan_in) if len(shape) > 1 else 0.05
        sd[prefix + key] = torch.randn(*shape, generator=g) * scale
    return sd


def write_unianimate_ckpt(path: Path, sd: dict) -> Path:
    """Flat dict through ``torch.save`` (what the training script's checkpoint is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def write_unianimate_safetensors(path: Path, sd: dict, dtype=torch.float16) -> Path:
    return wan_tiny.write_file(path, {k: v.to(dtype) for k, v in sd.items()})


def tiny_wan_lora_sd(style: str, dim=TINY_UA_DIT["dim"], ffn_dim=TINY_UA_DIT["ffn_dim"],
                     num_layers=TINY_UA_DIT["num_layers"],
                     rank=2, alpha: float | None = 1.0, seed=5, std=0.05, diff_norms=False) -> dict:
    """An ordinary Wan LoRA in one of the spellings found in ComfyUI's ``loras`` folder:
    "comfy" (``diffusion_model.blocks.0.self_attn.q.lora_A.weight`` + ``.alpha``), "comfy_updown"
    (``lora_down`` / ``lora_up``), "kohya" (``lora_unet_blocks_0_self_attn_q.lora_down.weight``),
    "diffusers" (``transformer.blocks.0.attn1.to_q.lora_A.weight``). ``diff_norms`` adds
    ``.diff`` / ``.diff_b`` full deltas for each block's ``norm3``."""
    g = torch.Generator().manual_seed(seed)
    diffusers_names = {"self_attn": "attn1", "cross_attn": "attn2"}
    sd = {}
    for module, (a, b) in lora_shapes(dim, ffn_dim, num_layers, rank).items():
        if style == "kohya":
            name, down, up = "lora_unet_" + module.replace(".", "_"), "lora_down.weight", "lora_up.weight"
        elif style == "diffusers":
            i, attn, p = module.split(".", 2)[1], *module.split(".")[2:]
            if attn == "ffn":
                tail = {"0": "ffn.net.0.proj", "2": "ffn.net.2"}[p]
            else:
                tail = f"{diffusers_names[attn]}." + ("to_out.0" if p == "o" else f"to_{p}")
            name, down, up = f"transformer.blocks.{i}.{tail}", "lora_A.weight", "lora_B.weight"
        elif style == "comfy_updown":
            name, down, up = f"diffusion_model.{module}", "lora_down.weight", "lora_up.weight"
        elif style == "comfy":
            name, down, up = f"diffusion_model.{module}", "lora_A.weight", "lora_B.weight"
        else:
            raise ValueError(style)
        sd[f"{name}.{down}"] = torch.randn(*a, generator=g) * std
        sd[f"{name}.{up}"] = torch.randn(*b, generator=g) * std
        if alpha is not None:
            sd[f"{name}.alpha"] = torch.tensor(float(alpha))
    if diff_norms:
        for i in range(num_layers):
            sd[f"diffusion_model.blocks.{i}.norm3.diff"] = torch.randn(dim, generator=g) * std
            sd[f"diffusion_model.blocks.{i}.norm3.diff_b"] = torch.randn(dim, generator=g) * std
    return sd


def tiny_base_sd(seed=0) -> dict:
    return wan_tiny.official_transformer_sd(**TINY_UA_DIT, seed=seed)


def write_tiny_models(models_dir) -> dict[str, Path]:
    """Populate a ComfyUI-style models folder for the UniAnimate workflow (names in the module
    docstring); returns {role: path}."""
    models_dir = Path(models_dir)
    written = {}
    base = {k: v.to(torch.bfloat16) for k, v in tiny_base_sd().items()}
    written["base"] = wan_tiny.write_file(models_dir / "diffusion_models" / BASE_NAME, base)
    sd = tiny_unianimate_sd()
    written["unianimate_ckpt"] = write_unianimate_ckpt(models_dir / "loras" / UNIANIMATE_CKPT_NAME, sd)
    written["unianimate_safetensors"] = write_unianimate_safetensors(
        models_dir / "loras" / UNIANIMATE_SAFETENSORS_NAME, sd)
    vae = wan_tiny.tiny_vae(z_dim=16)
    written["vae"] = wan_tiny.write_file(models_dir / "vae" / VAE_NAME, wan_tiny.official_vae_sd(vae.state_dict()))
    umt5 = wan_tiny.transformers_umt5_sd(wan_tiny.tiny_umt5())
    umt5["spiece_model"] = torch.frombuffer(bytearray(wan_tiny.tiny_spiece_model()), dtype=torch.uint8)
    written["text_encoder"] = wan_tiny.write_file(models_dir / "text_encoders" / TEXT_ENCODER_NAME, umt5)
    clip = wan_tiny.tiny_clip()
    written["clip_vision"] = wan_tiny.write_file(models_dir / "clip_vision" / CLIP_VISION_NAME,
                                                 {k: v.detach().clone() for k, v in clip.state_dict().items()})
    return written
