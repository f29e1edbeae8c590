"""Public loaders for the Wan2.1 components, whatever layout the user's files are in.

Why: nodes and pipelines ask for "the transformer / VAE / text encoder / CLIP vision in this
file or folder" and get the diffusers / transformers module, with a clear ``WanWeightsError`` when
the file does not fit. Models are built with parameters on the meta device and filled with
``load_state_dict(..., assign=True)``, so a 14B checkpoint is held in memory once, never twice.
The ``*_from_state_dict`` functions take an already-read dict (meta tensors included: that is how
the full-size manifests are checked without allocating anything).
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from ..runtime.gguf import install_gguf_layers, take_quantized
from . import layouts
from ..runtime.fp8 import FP8_DTYPES, convert_to_fp8, default_fp8_filter, dequantize_weight, quantize_weight
from .layouts import PICK_HINT, detect_layout
from ..runtime.build import empty_parameters, load_checked
from ..runtime.weights import WanWeightsError, read_state_dict
from .umt5_tokenizer import has_tokenizer_files, load_tokenizer

__all__ = [
    "WanWeightsError", "read_state_dict", "detect_layout", "load_transformer", "load_vae",
    "load_text_encoder", "load_clip_vision", "transformer_config_from_state_dict",
    "convert_transformer_state_dict", "transformer_from_state_dict", "vae_from_state_dict",
    "text_encoder_from_state_dict", "clip_vision_from_state_dict", "empty_parameters",
]

# diffusers / transformers subfolder names of each component inside a pipeline folder
SUBFOLDERS = {"transformer": "transformer", "vae": "vae", "text_encoder": "text_encoder",
              "clip_vision": "image_encoder"}
WAN_HEAD_DIM = 128  # every released Wan2.1 DiT (1.3B: 12 x 128, 14B: 40 x 128)
CLIP_HEADS = {1280: 16, 1024: 16, 768: 12}  # ViT-H/14, ViT-L/14, ViT-B


# ------------------------------------------------------------------------------- utilities
def _component_path(path: Path, component: str) -> Path:
    """A pipeline root folder (diffusers) -> its component subfolder; anything else unchanged."""
    path = Path(path)
    sub = path / SUBFOLDERS[component]
    if path.is_dir() and sub.is_dir():
        return sub
    return path


def _folder_config(path: Path) -> dict:
    folder = path if path.is_dir() else path.parent
    cfg = folder / "config.json"
    if cfg.is_file():
        try:
            return json.loads(cfg.read_text())
        except ValueError:
            return {}
    return {}


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p if p.endswith(".") else p + ".") for p in patterns)


def _split(key: str) -> tuple[str, str]:
    module, _, leaf = key.rpartition(".")
    return module, leaf


def _load_checked(model: nn.Module, sd: dict, component: str, layout: str, source: str,
                  optional: Iterable[str] = ()) -> None:
    """The runtime's check-then-load, with Wan's advice: which file this looks like, what to pick.
    Buffers are optional except fp8 ``scale_weight`` (RoPE tables are computed, not stored)."""
    def hint() -> str:
        other = layouts.guess_component(sd)
        looks = f"this looks like a {other} file; " if other and other != component else ""
        return f"{looks}pick {PICK_HINT[component]}"

    what = f"{source + ': ' if source else ''}{component} weights in layout '{layout}'"
    load_checked(model, sd, what, hint, optional, buffer_required=lambda k: k.endswith(".scale_weight"))


def _keep_fp32(name: str, patterns: Iterable[str] | None) -> bool:
    return bool(patterns) and any(p in name.split(".") for p in patterns)


def _prepare(sd: dict, model: nn.Module, dtype: torch.dtype, fp8_layers: set[str],
             keep_fp32: Iterable[str] | None = None) -> dict:
    """Cast every tensor for ``model``, emptying ``sd``: fp8 layers get (fp8 weight, float32
    scale); other fp8 weights are dequantised with their scale; float tensors go to ``dtype``
    (``keep_fp32`` module names stay float32, as diffusers / transformers do)."""
    fp8_dtype = {n: model.get_submodule(n).weight.dtype for n in fp8_layers}
    scales = {k: v for k, v in sd.items() if _split(k)[1] in ("scale_weight", "scale_input")}
    out = {}
    for key in list(sd):
        value = sd.pop(key)  # consumed as we go: a converted copy never coexists with all originals
        module, leaf = _split(key)
        if key in scales:
            if f"{module}.weight" not in sd and f"{module}.weight" not in out:
                out[key] = value  # a scale without its layer: reported as unexpected
            continue  # consumed with the weight (scale_input only serves fp8 matmuls)
        scale = scales.get(f"{module}.scale_weight") if leaf == "weight" else None
        if module in fp8_layers and leaf == "weight":
            target = fp8_dtype[module]
            if value.dtype == target:
                out[key] = value
                out[f"{module}.scale_weight"] = (scale.to(torch.float32).reshape(()) if scale is not None
                                                 else torch.ones((), dtype=torch.float32, device=value.device))
            else:
                src = dequantize_weight(value, scale, torch.float32) if value.dtype in FP8_DTYPES else value
                out[key], out[f"{module}.scale_weight"] = quantize_weight(src, target)
        elif value.dtype in FP8_DTYPES:
            out[key] = dequantize_weight(value, scale, torch.float32 if _keep_fp32(key, keep_fp32) else dtype)
        elif value.is_floating_point():
            out[key] = value.to(torch.float32 if _keep_fp32(key, keep_fp32) else dtype)
        else:
            out[key] = value
    return out


def _fp8_select(sd: dict, weight_dtype, base: Callable[[str, nn.Module], bool],
                exclude: Callable[[str], bool] = lambda name: False):
    """Linear layers to store in fp8: those ``base`` picks, plus any the file already has in fp8,
    minus ``exclude`` (layers whose input the model casts to the weight's dtype)."""
    def select(name: str, module: nn.Module) -> bool:
        w = sd.get(f"{name}.weight")
        return not exclude(name) and (base(name, module) or (w is not None and w.dtype == weight_dtype))
    return select


# ------------------------------------------------------------------------------ transformer
def convert_transformer_state_dict(sd: dict) -> tuple[dict, str]:
    """Any Wan2.1 DiT layout -> diffusers ``WanTransformer3DModel`` names; returns
    (converted, layout). The ``model.diffusion_model.`` prefix and fp8 markers are removed, fp8
    weights and their ``scale_weight`` keys are kept for the loader; unknown keys pass through."""
    layout = detect_layout(sd.keys(), "transformer")
    prefix = layouts.transformer_prefix(sd.keys())
    if prefix:
        sd = {k: v for k, v in sd.items() if k.startswith(prefix)}
    sd = layouts.normalise_quant_keys(sd, prefix)
    if not layout.startswith("diffusers"):
        sd = layouts.transformer_official_to_diffusers(sd)
    return sd, layout


def transformer_config_from_state_dict(sd, num_attention_heads: int | None = None) -> dict:
    """``WanTransformer3DModel`` arguments from the shapes (1.3B / 14B, t2v / i2v / flf2v).
    Heads are ``dim / 128`` as in every release; pass ``num_attention_heads`` for other models."""
    if "condition_embedder.time_proj.weight" not in sd:
        sd, _ = convert_transformer_state_dict(sd)
    try:
        pe = sd["patch_embedding.weight"]
        dim, in_channels, patch = pe.shape[0], pe.shape[1], tuple(pe.shape[2:])
        layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"^blocks\.(\d+)\.", k)))
        cfg = dict(
            patch_size=patch, in_channels=in_channels,
            out_channels=sd["proj_out.weight"].shape[0] // math.prod(patch),
            text_dim=sd["condition_embedder.text_embedder.linear_1.weight"].shape[1],
            freq_dim=sd["condition_embedder.time_embedder.linear_1.weight"].shape[1],
            ffn_dim=sd["blocks.0.ffn.net.0.proj.weight"].shape[0], num_layers=layers,
            cross_attn_norm="blocks.0.norm2.weight" in sd,
            qk_norm="rms_norm_across_heads" if "blocks.0.attn1.norm_q.weight" in sd else None,
            eps=1e-6, image_dim=None, added_kv_proj_dim=None, pos_embed_seq_len=None)
    except (KeyError, ValueError) as exc:
        raise WanWeightsError(f"transformer weights lack {exc} needed to read the model size; "
                              f"pick {PICK_HINT['transformer']}") from exc
    heads = num_attention_heads or (dim // WAN_HEAD_DIM if dim % WAN_HEAD_DIM == 0 else None)
    if not heads or dim % heads:
        raise WanWeightsError(f"transformer width {dim} is not a multiple of Wan's head size "
                              f"{WAN_HEAD_DIM}; pass num_attention_heads for this model")
    cfg.update(num_attention_heads=heads, attention_head_dim=dim // heads)
    if "condition_embedder.image_embedder.norm1.weight" in sd:
        cfg["image_dim"] = sd["condition_embedder.image_embedder.norm1.weight"].shape[0]
        cfg["added_kv_proj_dim"] = sd["blocks.0.attn2.add_k_proj.weight"].shape[0]
    if "condition_embedder.image_embedder.pos_embed" in sd:
        cfg["pos_embed_seq_len"] = sd["condition_embedder.image_embedder.pos_embed"].shape[1]
    return cfg


def transformer_from_state_dict(sd: dict, dtype=torch.bfloat16, device="cpu", weight_dtype=None,
                                extra_keys_ok=(), num_attention_heads=None, source="",
                                fp8_filter=default_fp8_filter, consume=False, model_factory=None):
    """Build a ``WanTransformer3DModel`` from any layout's state dict (see :func:`load_transformer`).

    ``consume=True`` empties ``sd`` while loading so no tensor is held twice. ``model_factory``
    (``config dict -> module``, called with parameters on the meta device) builds a subclass with
    extra modules instead (One-to-All, UniAnimate): its extra keys are then expected, not
    unexpected, and get the same dtype / fp8 / shape-check treatment."""
    from diffusers import WanTransformer3DModel

    converted, layout = convert_transformer_state_dict(sd)
    converted = {k: v for k, v in converted.items() if not _matches(k, extra_keys_ok)}
    if consume:
        sd.clear()  # the converted dict now holds the only references
    config = transformer_config_from_state_dict(converted, num_attention_heads)
    quantized = take_quantized(converted)  # GGUF blocks: kept as they are, unpacked per layer at run time
    with empty_parameters():
        model = model_factory(config) if model_factory else WanTransformer3DModel(**config)
    if quantized:
        install_gguf_layers(model, quantized, converted, dtype, source)
    fp8_layers: set[str] = set()
    if weight_dtype is not None:
        if weight_dtype not in FP8_DTYPES:
            raise ValueError(f"weight_dtype must be None or one of {FP8_DTYPES}, got {weight_dtype}")
        fp8_layers = set(convert_to_fp8(model, weight_dtype, _fp8_select(converted, weight_dtype, fp8_filter)))
    keep = getattr(model, "_keep_in_fp32_modules", None) if dtype != torch.float32 else None
    prepared = _prepare(converted, model, dtype, fp8_layers, keep)
    _load_checked(model, prepared, "transformer", layout, source)
    return model.to(device).eval().requires_grad_(False)


def load_transformer(path: Path, dtype=torch.bfloat16, device="cpu", weight_dtype=None,
                     extra_keys_ok=(), num_attention_heads=None):
    """The Wan2.1 DiT in ``path`` (file, shard index, diffusers folder or pipeline root) as a
    diffusers ``WanTransformer3DModel``.

    ``weight_dtype=torch.float8_e4m3fn`` stores the blocks' Linear weights in fp8 (scaled files
    keep their scales) with compute in ``dtype``; otherwise fp8 files are dequantised to ``dtype``.
    ``extra_keys_ok``: key prefixes (diffusers names, or the file's own names for keys the
    conversion does not know) that may be present and are skipped, e.g. add-on modules that the
    caller loads itself."""
    path = _component_path(Path(path), "transformer")
    if num_attention_heads is None and (path.is_dir() or path.name.endswith(".json")):
        cfg = _folder_config(path)  # diffusers config.json, or the official release's config.json
        num_attention_heads = cfg.get("num_attention_heads") or cfg.get("num_heads")
    sd = read_state_dict(path, device=device)
    return transformer_from_state_dict(sd, dtype, device, weight_dtype, extra_keys_ok, num_attention_heads,
                                       source=path.name, consume=True)


# -------------------------------------------------------------------------------------- VAE
def _vae_diffusers_config(sd: dict) -> dict:
    """``AutoencoderKLWan`` arguments from diffusers-named shapes (same structure as official)."""
    stages, per_stage, resample = layouts._stage_counts(sd, "encoder", "down_blocks")
    base_dim = sd["encoder.conv_in.weight"].shape[0]
    starts = [0] + [r + 1 for r in resample]
    dim_mult = [sd[f"encoder.down_blocks.{s + per_stage - 1}.conv2.weight"].shape[0] // base_dim
                for s in starts]
    temporal = [f"encoder.down_blocks.{r}.time_conv.weight" in sd for r in resample]
    return dict(base_dim=base_dim, z_dim=sd["post_quant_conv.weight"].shape[0], dim_mult=dim_mult,
                num_res_blocks=per_stage, attn_scales=[], temperal_downsample=temporal)


def vae_from_state_dict(sd: dict, dtype=torch.float32, device="cpu", source="", folder_config=None,
                        consume=False):
    """diffusers ``AutoencoderKLWan`` from an official / ComfyUI / diffusers VAE state dict."""
    from diffusers import AutoencoderKLWan

    layout = detect_layout(sd.keys(), "vae")
    original = sd
    try:
        if layout == "official":
            config = layouts.vae_config_from_state_dict(sd)
            sd = layouts.vae_official_to_diffusers(sd)
        else:
            config = _vae_diffusers_config(sd)
            sd = dict(sd)
    except KeyError as exc:
        raise WanWeightsError(f"{source or 'vae'}: {layout} VAE weights lack {exc}; pick "
                              f"{PICK_HINT['vae']}") from exc
    if consume:
        original.clear()
    for key in ("latents_mean", "latents_std"):  # not derivable from shapes; defaults are Wan2.1's
        if folder_config and key in folder_config:
            config[key] = folder_config[key]
    with empty_parameters():
        model = AutoencoderKLWan(**config)
    _load_checked(model, _prepare(sd, model, dtype, set()), "vae", layout, source)
    return model.to(device).eval().requires_grad_(False)


def load_vae(path: Path, dtype=torch.float32, device="cpu"):
    """The Wan2.1 VAE in ``path`` as a diffusers ``AutoencoderKLWan``."""
    path = _component_path(Path(path), "vae")
    sd = read_state_dict(path, device=device)
    return vae_from_state_dict(sd, dtype, device, source=path.name,
                               folder_config=_folder_config(path) if path.is_dir() else None, consume=True)


# ----------------------------------------------------------------------------- text encoder
def text_encoder_from_state_dict(sd: dict, dtype=torch.bfloat16, device="cpu", source="",
                                 weight_dtype=None, consume=False):
    """``UMT5EncoderModel`` from any UMT5 layout; returns (model, layout)."""
    from transformers import UMT5Config, UMT5EncoderModel

    layout = detect_layout(sd.keys(), "text_encoder")
    original, sd = sd, layouts.text_encoder_to_transformers(sd, layout)
    if consume:
        original.clear()
    try:
        bias = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
        heads = bias.shape[1]
        config = UMT5Config(
            vocab_size=sd["shared.weight"].shape[0], d_model=sd["shared.weight"].shape[1],
            d_kv=sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0] // heads,
            d_ff=sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0],
            num_layers=1 + max(int(m.group(1)) for k in sd if (m := re.match(r"^encoder\.block\.(\d+)\.", k))),
            num_heads=heads, relative_attention_num_buckets=bias.shape[0],
            relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
            layer_norm_epsilon=1e-6, is_encoder_decoder=False, use_cache=False,
            tie_word_embeddings=False)
    except (KeyError, ValueError) as exc:
        raise WanWeightsError(f"{source or 'text encoder'}: UMT5 weights in layout '{layout}' lack "
                              f"{exc}; pick {PICK_HINT['text_encoder']}") from exc
    with empty_parameters():
        model = UMT5EncoderModel(config)
    fp8_layers: set[str] = set()
    if weight_dtype is not None:
        # transformers' T5 FFN casts its activations to ``wo.weight.dtype``: ``wo`` stays float
        fp8_layers = set(convert_to_fp8(model, weight_dtype, _fp8_select(
            sd, weight_dtype, lambda n, m: isinstance(m, nn.Linear) and n.startswith("encoder.block."),
            exclude=lambda n: n.endswith(".wo"))))
    keep = UMT5EncoderModel._keep_in_fp32_modules if dtype == torch.float16 else None
    prepared = _prepare(sd, model, dtype, fp8_layers, keep)
    _load_checked(model, prepared, "text_encoder", layout, source, optional={"encoder.embed_tokens.weight"})
    model.encoder.embed_tokens.weight = model.shared.weight  # tie: one embedding table in memory
    return model.to(device).eval().requires_grad_(False), layout


def _tokenizer_near(path: Path) -> Path | None:
    """Where the official release / diffusers put the UMT5 tokenizer relative to the weights."""
    base = path if path.is_dir() else path.parent
    for candidate in (base, base / "tokenizer", base.parent / "tokenizer",
                      base / "google" / "umt5-xxl", base.parent / "google" / "umt5-xxl"):
        if has_tokenizer_files(candidate):
            return candidate
    return None


def load_text_encoder(path: Path, dtype=torch.bfloat16, device="cpu", tokenizer_dir: Path | None = None,
                      weight_dtype=None):
    """(``UMT5EncoderModel``, tokenizer) from ``path``.

    The tokenizer comes from ``tokenizer_dir`` when given (a folder with tokenizer.json /
    spiece.model, such a file, or a ComfyUI umt5 safetensors), else from the ``spiece_model``
    tensor ComfyUI embeds in its umt5 files, else from the folders the official release
    (``google/umt5-xxl/``) and diffusers (``tokenizer/``) place next to the weights."""
    root = Path(path)
    path = _component_path(root, "text_encoder")
    sd = read_state_dict(path, device=device)
    spiece = sd.get("spiece_model")
    model, _ = text_encoder_from_state_dict(sd, dtype, device, source=path.name, weight_dtype=weight_dtype,
                                            consume=True)
    if tokenizer_dir is not None:
        tokenizer = load_tokenizer(tokenizer_dir)
    elif spiece is not None:
        tokenizer = load_tokenizer(spiece)
    else:
        near = _tokenizer_near(path) or _tokenizer_near(root)
        if near is None:
            raise WanWeightsError(
                f"{path.name}: no UMT5 tokenizer found. Put the official 'google/umt5-xxl/' folder "
                f"(or diffusers' 'tokenizer/' folder) next to the weights, use ComfyUI's "
                f"umt5_xxl_*.safetensors (it embeds the tokenizer), or pass tokenizer_dir")
        tokenizer = load_tokenizer(near)
    return model, tokenizer


# ------------------------------------------------------------------------------ CLIP vision
def clip_vision_from_state_dict(sd: dict, dtype=torch.float32, device="cpu", source="", num_heads=None,
                                consume=False):
    """transformers ``CLIPVisionModel`` from any CLIP ViT layout (Wan uses ViT-H/14)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    layout = detect_layout(sd.keys(), "clip_vision")
    original, sd = sd, layouts.clip_to_transformers(sd, layout)
    if consume:
        original.clear()
    try:
        patch = sd["vision_model.embeddings.patch_embedding.weight"]
        hidden, patch_size = patch.shape[0], patch.shape[-1]
        positions = sd["vision_model.embeddings.position_embedding.weight"].shape[0]
        layers = 1 + max(int(m.group(1)) for k in sd
                         if (m := re.match(r"^vision_model\.encoder\.layers\.(\d+)\.", k)))
        heads = num_heads or CLIP_HEADS.get(hidden) or hidden // 64
        if not heads or hidden % heads:
            raise ValueError(f"cannot tell the head count of width {hidden}; pass num_heads")
        proj = sd.get("visual_projection.weight")
        config = CLIPVisionConfig(
            hidden_size=hidden, num_attention_heads=heads, num_hidden_layers=layers,
            intermediate_size=sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
            patch_size=patch_size, image_size=int(round(math.sqrt(positions - 1))) * patch_size,
            projection_dim=proj.shape[0] if proj is not None else 1024, hidden_act="gelu",
            layer_norm_eps=1e-5)
    except (KeyError, ValueError) as exc:
        raise WanWeightsError(f"{source or 'clip vision'}: CLIP weights in layout '{layout}' lack "
                              f"{exc}; pick {PICK_HINT['clip_vision']}") from exc
    sd.pop("visual_projection.weight", None)  # Wan uses hidden states, not the projection
    with empty_parameters():
        model = CLIPVisionModel(config)
    if not any(k.startswith("vision_model.") for k in model.state_dict()):  # transformers 5 in memory
        sd = {k.removeprefix("vision_model."): v for k, v in sd.items()}
    _load_checked(model, _prepare(sd, model, dtype, set()), "clip_vision", layout, source)
    return model.to(device).eval().requires_grad_(False)


def load_clip_vision(path: Path, dtype=torch.float32, device="cpu", num_heads=None):
    """The CLIP image encoder in ``path`` as a transformers ``CLIPVisionModel`` (config read from
    the shapes: ViT-H/14 for Wan2.1)."""
    path = _component_path(Path(path), "clip_vision")
    if num_heads is None and path.is_dir():  # transformers image_encoder/config.json
        num_heads = _folder_config(path).get("num_attention_heads")
    sd = read_state_dict(path, device=device)
    return clip_vision_from_state_dict(sd, dtype, device, source=path.name, num_heads=num_heads, consume=True)
