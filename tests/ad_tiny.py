"""Writers of tiny AnimateDiff-family weight files in the REAL on-disk layouts (for tests).

Every writer is deterministic (fixed seed, global RNG untouched) and returns the path.

Tiny configs (all keep SD1.5's topology, so key names equal the real files' names):
- SD1.5 single file (``write_tiny_sd15``): LDM keys ``model.diffusion_model.*`` /
  ``first_stage_model.*`` / ``cond_stage_model.transformer.text_model.*``. UNet channels
  (32, 64, 96, 96), 2 layers per block, attention on levels 0-2, 8 heads, cross-attention
  dim 32; VAE channels (32, 64, 96, 96), 4 latent channels (downscale 8); CLIP text
  encoder hidden 32, 2 layers, 1 head, MLP 64, the real vocabulary size 49408 and 77
  positions (so the real tokenizer's ids are valid). Includes ``position_ids`` and an
  ``alphas_cumprod`` buffer like real files.
- Motion module (``write_tiny_motion_module``): original ``down_blocks.{0..3}.motion_modules.{0,1}``
  / ``up_blocks.{0..3}.motion_modules.{0,1,2}`` (/ ``mid_block.motion_modules.0`` for v2)
  keys for the tiny UNet's channels; PE length 32 (v2, v3), 24 (v1), none (AnimateLCM).
  ``proj_out`` is random (not zero) so the module visibly acts.
- Motion LoRA (``write_tiny_motion_lora``): original ``processor.to_q_lora.down/up`` keys, rank 4.
- kohya LoRA (``write_tiny_kohya_lora``): ``lora_unet_*`` / ``lora_te_text_model_encoder_*``
  with ``lora_down`` / ``lora_up`` / ``alpha`` for the standard kohya target set, rank 4.
- ControlNet (``write_tiny_controlnet``): the original ``control_v11p_sd15_openpose`` layout
  (``control_model.input_blocks.*``, ``input_hint_block.*``, ``zero_convs.*``,
  ``middle_block_out.*``) for the tiny UNet; hint embedding channels (8, 8, 16, 16).
"""
from __future__ import annotations

import copy
import functools
import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

REF = Path(__file__).resolve().parent / "fixtures" / "reference" / "animatediff"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pack_loader import load_pack  # noqa: E402

load_pack()

from poseanimate.models.animatediff import sd15_checkpoint as S  # noqa: E402
from poseanimate.models.animatediff.motion_module import sinusoid_pe  # noqa: E402
from poseanimate.models.animatediff.weights_io import materialize_meta_buffers  # noqa: E402

TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 96, 96),
                 layers_per_block=2, cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
TINY_VAE = dict(in_channels=3, out_channels=3, block_out_channels=(32, 64, 96, 96), layers_per_block=2,
                latent_channels=4, norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64)
TINY_CLIP = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=1, max_position_embeddings=77, hidden_act="quick_gelu",
                 bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
TINY_HINT_CHANNELS = (8, 8, 16, 16)
PE_LEN = {"v1": 24, "v2": 32, "v3": 32, "AnimateLCM": None}


@functools.lru_cache(maxsize=1)
def _ref_ldm_keys() -> list[str]:
    return list(json.loads((REF / "ldm_sd15_keys.json").read_text())["keys"])


def _random_fill(model: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
    """Build-on-meta models get seeded, non-degenerate weights (fast; diffusers' init is slow
    and zero-inits some layers): matrices randn/sqrt(fan_in), norm gains 1+0.1*randn, biases 0.05*randn."""
    sd = {}
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            sd[name] = torch.randn(p.shape, generator=gen) / (p[0].numel() ** 0.5)
        elif name.endswith("weight"):
            sd[name] = 1 + 0.1 * torch.randn(p.shape, generator=gen)
        else:
            sd[name] = 0.05 * torch.randn(p.shape, generator=gen)
    for name, b in model.named_buffers():
        if not name.endswith("position_ids"):
            raise AssertionError(f"unexpected buffer {name}")
    model.load_state_dict(sd, strict=False, assign=True)
    materialize_meta_buffers(model)
    return model.eval()


@functools.lru_cache(maxsize=4)
def _cached_models(seed: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**TINY_UNET), AutoencoderKL(**TINY_VAE)
        te = CLIPTextModel(CLIPTextConfig(**TINY_CLIP))
    return tuple(_random_fill(m, gen) for m in (unet, vae, te))


def tiny_sd15_models(seed: int = 0):
    """Fresh copies of the tiny diffusers UNet / VAE and transformers CLIP the SD1.5 writer stores."""
    return tuple(copy.deepcopy(m) for m in _cached_models(seed))


def sd15_ldm_state_dict(unet, vae, te) -> dict[str, torch.Tensor]:
    """diffusers/transformers models -> an LDM single-file state dict (the real key names)."""
    usd, vsd, tsd = unet.state_dict(), vae.state_dict(), te.state_dict()
    out, used = {}, set()
    for key in _ref_ldm_keys():
        if key.startswith(S.UNET_PREFIX):
            new = S.unet_key_to_diffusers(key[len(S.UNET_PREFIX):])
            out[key] = usd[new].clone()
        elif key.startswith(S.VAE_PREFIX):
            new = S.vae_key_to_diffusers(key[len(S.VAE_PREFIX):])
            t = vsd[new].clone()
            out[key] = t[:, :, None, None] if (S._is_vae_attn_matrix(new) and t.ndim == 2) else t
            new = "vae:" + new
        else:
            continue
        used.add(new)
    unet_keys = set(usd) | {"vae:" + k for k in vsd}
    assert used == unet_keys, sorted(unet_keys - used)[:5]
    for k, v in tsd.items():
        out[S.CLIP_PREFIX + "text_model." + k] = v.clone()
    out["alphas_cumprod"] = torch.linspace(0.999, 0.005, 1000)
    return out


def write_tiny_sd15(path, seed: int = 0, dtype=torch.float32) -> Path:
    """A tiny SD1.5 checkpoint in the original LDM single-file layout (see module docstring)."""
    sd = sd15_ldm_state_dict(*tiny_sd15_models(seed))
    sd = {k: (v.to(dtype) if v.is_floating_point() and k != "alphas_cumprod" else v).contiguous() for k, v in sd.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


def _module_keys(prefix: str, c: int, pe_len: int | None, gen: torch.Generator) -> dict[str, torch.Tensor]:
    sd = {}
    base = prefix + "temporal_transformer."
    sd[base + "norm.weight"] = 1 + 0.1 * torch.randn(c, generator=gen)
    sd[base + "norm.bias"] = 0.1 * torch.randn(c, generator=gen)
    for name in ("proj_in", "proj_out"):
        sd[f"{base}{name}.weight"] = torch.randn(c, c, generator=gen) / c ** 0.5
        sd[f"{base}{name}.bias"] = 0.1 * torch.randn(c, generator=gen)
    tb = base + "transformer_blocks.0."
    for a in range(2):
        ab = f"{tb}attention_blocks.{a}."
        for q in ("to_q", "to_k", "to_v"):
            sd[f"{ab}{q}.weight"] = torch.randn(c, c, generator=gen) / c ** 0.5
        sd[f"{ab}to_out.0.weight"] = torch.randn(c, c, generator=gen) / c ** 0.5
        sd[f"{ab}to_out.0.bias"] = 0.1 * torch.randn(c, generator=gen)
        if pe_len:
            sd[f"{ab}pos_encoder.pe"] = sinusoid_pe(pe_len, c)
        sd[f"{tb}norms.{a}.weight"] = 1 + 0.1 * torch.randn(c, generator=gen)
        sd[f"{tb}norms.{a}.bias"] = 0.1 * torch.randn(c, generator=gen)
    sd[tb + "ff.net.0.proj.weight"] = torch.randn(8 * c, c, generator=gen) / c ** 0.5
    sd[tb + "ff.net.0.proj.bias"] = 0.1 * torch.randn(8 * c, generator=gen)
    sd[tb + "ff.net.2.weight"] = torch.randn(c, 4 * c, generator=gen) / (4 * c) ** 0.5
    sd[tb + "ff.net.2.bias"] = 0.1 * torch.randn(c, generator=gen)
    sd[tb + "ff_norm.weight"] = 1 + 0.1 * torch.randn(c, generator=gen)
    sd[tb + "ff_norm.bias"] = 0.1 * torch.randn(c, generator=gen)
    return sd


def tiny_motion_state_dict(version: str = "v2", seed: int = 1, channels=TINY_UNET["block_out_channels"]) -> dict:
    if version not in PE_LEN:
        raise ValueError(f"version must be one of {sorted(PE_LEN)}")
    gen = torch.Generator().manual_seed(seed)
    pe = PE_LEN[version]
    sd = {}
    for i, c in enumerate(channels):
        for j in range(2):
            sd.update(_module_keys(f"down_blocks.{i}.motion_modules.{j}.", c, pe, gen))
    for i, c in enumerate(reversed(channels)):
        for j in range(3):
            sd.update(_module_keys(f"up_blocks.{i}.motion_modules.{j}.", c, pe, gen))
    if version == "v2":
        sd.update(_module_keys("mid_block.motion_modules.0.", channels[-1], pe, gen))
    return sd


def write_tiny_motion_module(path, version: str = "v2", seed: int = 1) -> Path:
    """A tiny original-format motion module (``v1``, ``v2``, ``v3`` or ``AnimateLCM``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = tiny_motion_state_dict(version, seed)
    if path.suffix in (".ckpt", ".pt", ".pth"):
        torch.save({"state_dict": sd}, str(path))
    else:
        save_file(sd, str(path))
    return path


def tiny_motion_lora_state_dict(version: str = "v2", rank: int = 4, seed: int = 2) -> dict:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, w in tiny_motion_state_dict(version, seed=seed).items():
        m = re.match(r"(.*\.attention_blocks\.\d+)\.(to_q|to_k|to_v|to_out)\.(?:0\.)?weight$", key)
        if not m:
            continue
        base = f"{m.group(1)}.processor.{m.group(2)}_lora"
        c = w.shape[0]
        sd[f"{base}.down.weight"] = torch.randn(rank, c, generator=gen) / c ** 0.5
        sd[f"{base}.up.weight"] = torch.randn(c, rank, generator=gen) * 0.1
    return sd


def write_tiny_motion_lora(path, version: str = "v2", rank: int = 4, seed: int = 2) -> Path:
    """A tiny motion LoRA in the original (guoyww) key format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_motion_lora_state_dict(version, rank, seed), str(path))
    return path


def tiny_kohya_lora_state_dict(rank: int = 4, seed: int = 3, alpha: float = 2.0) -> dict:
    """kohya keys for the standard target set, shapes from the tiny models."""
    unet, _, te = _cached_models(0)
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    targets = []
    for name, mod in unet.named_modules():
        if ".attentions." in name and (name.endswith(("proj_in", "proj_out")) or
                                       (".transformer_blocks." in name and name.endswith(
                                           ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")))):
            targets.append(("lora_unet_" + name.replace(".", "_"), mod))
    for name, mod in te.named_modules():
        if name.endswith(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")):
            targets.append(("lora_te_text_model_" + name.replace(".", "_"), mod))
    for key, mod in targets:
        w = mod.weight
        if w.ndim == 4:
            down = torch.randn(rank, w.shape[1], *w.shape[2:], generator=gen) / w.shape[1] ** 0.5
            up = torch.randn(w.shape[0], rank, 1, 1, generator=gen) * 0.1
        else:
            down = torch.randn(rank, w.shape[1], generator=gen) / w.shape[1] ** 0.5
            up = torch.randn(w.shape[0], rank, generator=gen) * 0.1
        sd[key + ".lora_down.weight"] = down.half()
        sd[key + ".lora_up.weight"] = up.half()
        sd[key + ".alpha"] = torch.tensor(alpha).half()
    return sd


def write_tiny_kohya_lora(path, rank: int = 4, seed: int = 3, alpha: float = 2.0) -> Path:
    """A tiny kohya-format SD1.5 LoRA (fp16 like real files) for the tiny SD1.5 checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_kohya_lora_state_dict(rank, seed, alpha), str(path))
    return path


def tiny_controlnet_model(seed: int = 4):
    from diffusers import ControlNetModel

    cfg = {k: v for k, v in TINY_UNET.items() if k not in ("out_channels", "up_block_types", "sample_size")}
    with torch.device("meta"):
        cn = ControlNetModel(**cfg, conditioning_embedding_out_channels=TINY_HINT_CHANNELS)
    return _random_fill(cn, torch.Generator().manual_seed(seed))


def controlnet_original_state_dict(cn) -> dict[str, torch.Tensor]:
    """diffusers ControlNetModel -> original single-file (``control_model.*``) state dict."""
    names = [k[len(S.UNET_PREFIX):] for k in _ref_ldm_keys()
             if k.startswith(S.UNET_PREFIX + "input_blocks.") or k.startswith(S.UNET_PREFIX + "middle_block.")
             or k.startswith(S.UNET_PREFIX + "time_embed.")]
    names += [f"input_hint_block.{i}.{p}" for i in (0, 2, 4, 6, 8, 10, 12, 14) for p in ("weight", "bias")]
    names += [f"zero_convs.{i}.0.{p}" for i in range(12) for p in ("weight", "bias")]
    names += ["middle_block_out.0.weight", "middle_block_out.0.bias"]
    csd = cn.state_dict()
    out = {"control_model." + n: csd[S.controlnet_key_to_diffusers(n)].clone() for n in names}
    assert len(out) == len(csd), (len(out), len(csd))
    return out


def write_tiny_controlnet(path, seed: int = 4, diffusers_layout: bool = False) -> Path:
    """A tiny SD1.5 ControlNet: original ``control_v11p_sd15_openpose`` layout, or a diffusers
    folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) with ``diffusers_layout``."""
    path = Path(path)
    cn = tiny_controlnet_model(seed)
    if diffusers_layout:
        cn.save_pretrained(str(path), safe_serialization=True)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = controlnet_original_state_dict(cn)
    if path.suffix in (".pth", ".pt", ".ckpt"):
        torch.save(sd, str(path))
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


# File names the example workflows (workflows/api/animatediff_v2v.json, animatediff_v2v_pose.json) pick.
CHECKPOINT_FILE = "sd15_anime.safetensors"
MOTION_MODULE_FILE = "mm_sd_v15_v2.safetensors"
CONTROLNET_FILE = "control_v11p_sd15_openpose.safetensors"


def write_tiny_models(models_dir) -> None:
    """Fill a ComfyUI-style models dir with what the AnimateDiff workflow loads (real layouts, tiny sizes)."""
    models_dir = Path(models_dir)
    write_tiny_sd15(models_dir / "checkpoints" / CHECKPOINT_FILE)
    write_tiny_motion_module(models_dir / "animatediff_models" / MOTION_MODULE_FILE, version="v2")
    write_tiny_controlnet(models_dir / "controlnet" / CONTROLNET_FILE)
