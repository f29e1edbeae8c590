"""Which layout a Wan2.1 checkpoint is in, told from its keys, and pure key conversions.

Why: users hold the same weights under several namings (the official Wan release, diffusers /
transformers folders, ComfyUI's repackaged single files, possibly fp8 "scaled"). Each layout gets
a pure function from its names to the names of the diffusers / transformers class we build
(diffusers' ``loaders/single_file_utils.py`` is the model). File names are never consulted.

Target namings:
- transformer: diffusers ``WanTransformer3DModel``;
- vae: diffusers ``AutoencoderKLWan``;
- text_encoder: transformers ``UMT5EncoderModel`` as saved on disk (``shared.weight``, ``encoder.*``);
- clip_vision: transformers CLIP vision as saved on disk (``vision_model.*``, optional
  ``visual_projection.weight``).
Keys a conversion does not know pass through unchanged, so callers (One-to-All, UniAnimate) can
handle their own extra modules and the loader can name them as unexpected.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from ..runtime.gguf import GGUF_MARKER
from ..runtime.weights import WanWeightsError

COMPONENTS = ("transformer", "vae", "text_encoder", "clip_vision")

# Prefixes under which ComfyUI (and some trainers) store a DiT; ComfyUI strips them on load.
TRANSFORMER_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
FP8_MARKER = "scaled_fp8"  # ComfyUI's root marker of an fp8 "scaled" file (dtype = storage dtype)
# Scale keys of both ComfyUI generations; new-style names are normalised to the legacy ones.
SCALE_RENAMES = {"weight_scale": "scale_weight", "input_scale": "scale_input"}
DROPPED_SUFFIXES = ("comfy_quant",)  # per-layer JSON blobs of newer ComfyUI quantised files

# One key that only that layout has, per component (used for detection and for error hints).
_MARKERS = {
    "transformer": {"official": "head.modulation", "diffusers": "condition_embedder.time_proj.weight"},
    "vae": {"official": "decoder.middle.0.residual.0.gamma",
            "diffusers": "decoder.mid_block.resnets.0.norm1.gamma"},
    "text_encoder": {"official": "blocks.0.attn.q.weight",
                     "diffusers": "encoder.block.0.layer.0.SelfAttention.q.weight"},
    "clip_vision": {"official": "visual.transformer.0.attn.to_qkv.weight",
                    "open_clip": "visual.transformer.resblocks.0.attn.in_proj_weight",
                    "diffusers": "vision_model.encoder.layers.0.self_attn.q_proj.weight",
                    "diffusers_unprefixed": "encoder.layers.0.self_attn.q_proj.weight"},
}
WAN22_VAE_MARKER = "decoder.upsamples.0.upsamples.0.residual.2.weight"

PICK_HINT = {
    "transformer": "a Wan2.1 diffusion model: ComfyUI's wan2.1_*_14B/1.3B_*.safetensors, the official "
                   "diffusion_pytorch_model*.safetensors.index.json, or a diffusers transformer/ folder",
    "vae": "the Wan2.1 VAE: Wan2.1_VAE.pth, ComfyUI's wan_2.1_vae.safetensors, or a diffusers vae/ folder",
    "text_encoder": "the UMT5-XXL encoder: models_t5_umt5-xxl-enc-bf16.pth, ComfyUI's "
                    "umt5_xxl_fp16/fp8_e4m3fn_scaled.safetensors, or a diffusers text_encoder/ folder",
    "clip_vision": "the CLIP ViT-H/14 image encoder: models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth, "
                   "ComfyUI's clip_vision_h.safetensors, or a diffusers image_encoder/ folder",
}


# ----------------------------------------------------------------------------------- detection
def detect_layout(keys: Iterable[str], component: str) -> str:
    """Layout name of a checkpoint's keys for one component.

    transformer: "official" (original Wan names, also ComfyUI's repackaged files), "comfy"
    (original names under ``model.diffusion_model.``), "comfy_fp8_scaled" (original names with
    per-layer fp8 scales), "diffusers", "diffusers_fp8_scaled"; a GGUF file (ComfyUI-GGUF's
    layout: original names, quantized blocks; its reader adds ``GGUF_MARKER``) is "official_gguf"
    or "comfy_gguf" ("diffusers_gguf" for diffusers names, e.g. One-to-All's own naming).
    vae: "official" (Wan2.1_VAE.pth; ComfyUI's wan_2.1_vae uses the same names), "diffusers".
    text_encoder: "official" (Wan's own T5 names), "diffusers" (transformers names), "comfy"
    (transformers names plus the ``spiece_model`` tokenizer tensor), "comfy_fp8_scaled".
    clip_vision: "official" (Wan's XLM-RoBERTa CLIP), "open_clip", "comfy" (transformers names with
    ``visual_projection``), "diffusers" (transformers ``CLIPVisionModel`` names).
    """
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {COMPONENTS}, got {component!r}")
    keys = set(keys)
    scaled = FP8_MARKER in keys or any(k.endswith((".scale_weight", ".weight_scale")) for k in keys)
    if component == "transformer":
        prefix = transformer_prefix(keys)
        base = {k[len(prefix):] for k in keys if k.startswith(prefix)}
        scaled = scaled or (prefix + FP8_MARKER) in keys
        if _MARKERS["transformer"]["official"] in base or "blocks.0.self_attn.q.weight" in base:
            if GGUF_MARKER in keys:
                return "comfy_gguf" if prefix else "official_gguf"
            if scaled:
                return "comfy_fp8_scaled"
            return "comfy" if prefix else "official"
        if _MARKERS["transformer"]["diffusers"] in base or "blocks.0.attn1.to_q.weight" in base:
            if GGUF_MARKER in keys:
                return "diffusers_gguf"
            return "diffusers_fp8_scaled" if scaled else "diffusers"
    elif component == "vae":
        if WAN22_VAE_MARKER in keys:
            raise WanWeightsError("this is a Wan2.2 VAE (key 'decoder.upsamples.0.upsamples.0."
                                  f"residual.2.weight'); pick {PICK_HINT['vae']}")
        for name, marker in _MARKERS["vae"].items():
            if marker in keys:
                return name
    elif component == "text_encoder":
        if _MARKERS["text_encoder"]["official"] in keys and "token_embedding.weight" in keys:
            return "official"
        if _MARKERS["text_encoder"]["diffusers"] in keys:
            if "encoder.block.1.layer.0.SelfAttention.q.weight" in keys and \
                    "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in keys:
                raise WanWeightsError("this is a T5 encoder (relative attention bias only in block 0), "
                                      f"not UMT5 (bias in every block); pick {PICK_HINT['text_encoder']}")
            if scaled:
                return "comfy_fp8_scaled"
            return "comfy" if "spiece_model" in keys else "diffusers"
    elif component == "clip_vision":
        marks = _MARKERS["clip_vision"]
        if marks["official"] in keys:
            return "official"
        if marks["open_clip"] in keys:
            return "open_clip"
        if marks["diffusers"] in keys:
            return "comfy" if "visual_projection.weight" in keys else "diffusers"
        if marks["diffusers_unprefixed"] in keys and "embeddings.class_embedding" in keys:
            return "diffusers"
    raise WanWeightsError(unknown_layout_message(keys, component))


def transformer_prefix(keys: Iterable[str]) -> str:
    keys = set(keys)
    for prefix in TRANSFORMER_PREFIXES:
        if prefix + "patch_embedding.weight" in keys:
            return prefix
    return ""


def guess_component(keys: Iterable[str]) -> str | None:
    """Which Wan component a key set belongs to, if any (for 'you picked the wrong file' errors)."""
    keys = set(keys)
    if (transformer_prefix(keys) or ("patch_embedding.weight" in keys and "blocks.0.modulation" in keys)
            or "condition_embedder.time_proj.weight" in keys):
        return "transformer"
    for component in ("vae", "text_encoder", "clip_vision"):
        if any(marker in keys for marker in _MARKERS[component].values()):
            return component
    if WAN22_VAE_MARKER in keys:
        return "vae"
    return None


def unknown_layout_message(keys: Iterable[str], component: str) -> str:
    keys = sorted(set(keys))
    other = guess_component(keys)
    msg = f"not a known Wan2.1 {component} layout"
    if other and other != component:
        msg += f": these keys look like a Wan {other} file, not a {component}"
    known = ", ".join(f"{n} (key '{m}')" for n, m in _MARKERS[component].items())
    return (f"{msg}. Looked for {known}; first keys found: {keys[:6]} ({len(keys)} keys). "
            f"Pick {PICK_HINT[component]}.")


# ------------------------------------------------------------------------ shared helpers
def _split(key: str) -> tuple[str, str]:
    module, _, leaf = key.rpartition(".")
    return module, leaf


def normalise_quant_keys(sd: dict, prefix: str = "") -> dict:
    """Strip ``prefix``, drop quantisation markers, rename new-style scale keys to legacy ones."""
    out = {}
    for key, value in sd.items():
        if prefix and key.startswith(prefix):
            key = key[len(prefix):]
        if key in (FP8_MARKER, GGUF_MARKER) or key.endswith(DROPPED_SUFFIXES):
            continue
        module, leaf = _split(key)
        if leaf in SCALE_RENAMES:
            key = f"{module}.{SCALE_RENAMES[leaf]}"
        out[key] = value
    return out


def _rename_modules(sd: dict, rename) -> dict:
    """Apply ``rename(module_path) -> module_path`` to every key's module part (leaf kept, so
    ``weight``, ``bias`` and fp8 ``scale_weight`` keys follow their layer)."""
    out = {}
    for key, value in sd.items():
        module, leaf = _split(key)
        new_module = rename(module) if module else module
        out[f"{new_module}.{leaf}" if new_module else leaf] = value
    return out


# ------------------------------------------------------------------------------ transformer
_DIT_PARAMS = [  # parameters that sit directly on a module (renamed as whole keys)
    (re.compile(r"^blocks\.(\d+)\.modulation$"), r"blocks.\1.scale_shift_table"),
    (re.compile(r"^head\.modulation$"), "scale_shift_table"),
    (re.compile(r"^img_emb\.emb_pos$"), "condition_embedder.image_embedder.pos_embed"),
]
_DIT_MODULES = [
    (r"^text_embedding\.0$", "condition_embedder.text_embedder.linear_1"),
    (r"^text_embedding\.2$", "condition_embedder.text_embedder.linear_2"),
    (r"^time_embedding\.0$", "condition_embedder.time_embedder.linear_1"),
    (r"^time_embedding\.2$", "condition_embedder.time_embedder.linear_2"),
    (r"^time_projection\.1$", "condition_embedder.time_proj"),
    (r"^head\.head$", "proj_out"),
    (r"^img_emb\.proj\.0$", "condition_embedder.image_embedder.norm1"),
    (r"^img_emb\.proj\.1$", "condition_embedder.image_embedder.ff.net.0.proj"),
    (r"^img_emb\.proj\.3$", "condition_embedder.image_embedder.ff.net.2"),
    (r"^img_emb\.proj\.4$", "condition_embedder.image_embedder.norm2"),
    (r"^blocks\.(\d+)\.self_attn\.([qkv])$", r"blocks.\1.attn1.to_\2"),
    (r"^blocks\.(\d+)\.self_attn\.o$", r"blocks.\1.attn1.to_out.0"),
    (r"^blocks\.(\d+)\.self_attn\.norm_([qk])$", r"blocks.\1.attn1.norm_\2"),
    (r"^blocks\.(\d+)\.cross_attn\.([qkv])$", r"blocks.\1.attn2.to_\2"),
    (r"^blocks\.(\d+)\.cross_attn\.o$", r"blocks.\1.attn2.to_out.0"),
    (r"^blocks\.(\d+)\.cross_attn\.norm_([qk])$", r"blocks.\1.attn2.norm_\2"),
    (r"^blocks\.(\d+)\.cross_attn\.k_img$", r"blocks.\1.attn2.add_k_proj"),
    (r"^blocks\.(\d+)\.cross_attn\.v_img$", r"blocks.\1.attn2.add_v_proj"),
    (r"^blocks\.(\d+)\.cross_attn\.norm_k_img$", r"blocks.\1.attn2.norm_added_k"),
    (r"^blocks\.(\d+)\.norm3$", r"blocks.\1.norm2"),
    (r"^blocks\.(\d+)\.ffn\.0$", r"blocks.\1.ffn.net.0.proj"),
    (r"^blocks\.(\d+)\.ffn\.2$", r"blocks.\1.ffn.net.2"),
]
_DIT_MODULES = [(re.compile(p), r) for p, r in _DIT_MODULES]


def rename_transformer_key(key: str) -> str:
    """One original-Wan DiT key -> its diffusers name (unknown keys unchanged)."""
    for pattern, repl in _DIT_PARAMS:
        if pattern.match(key):
            return pattern.sub(repl, key)
    module, leaf = _split(key)
    for pattern, repl in _DIT_MODULES:
        if pattern.match(module):
            return f"{pattern.sub(repl, module)}.{leaf}"
    return key


def transformer_official_to_diffusers(sd: dict) -> dict:
    """Original Wan / ComfyUI DiT names -> diffusers ``WanTransformer3DModel`` names (pure renames)."""
    return {rename_transformer_key(k): v for k, v in sd.items()}


# -------------------------------------------------------------------------------------- VAE
_RESIDUAL = {"residual.0": "norm1", "residual.2": "conv1", "residual.3": "norm2",
             "residual.6": "conv2", "shortcut": "conv_shortcut"}


def _resblock(rest: str) -> str:
    for old, new in _RESIDUAL.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def _stage_counts(keys: Iterable[str], side: str, group: str) -> tuple[int, int, list[int]]:
    """(number of stages, entries per stage without resamplers, flat indices of resamplers)."""
    idx = {int(m.group(1)) for k in keys if (m := re.match(rf"^{side}\.{group}\.(\d+)\.", k))}
    resample = sorted({int(m.group(1)) for k in keys
                       if (m := re.match(rf"^{side}\.{group}\.(\d+)\.resample\.", k))})
    stages = len(resample) + 1
    total = len(idx)
    if not idx or (total - len(resample)) % stages:
        raise WanWeightsError(f"Wan VAE {side}: cannot read its stage structure from the keys")
    return stages, (total - len(resample)) // stages, resample


def vae_official_to_diffusers(sd: dict) -> dict:
    """Wan2.1_VAE.pth / ComfyUI wan_2.1_vae names -> diffusers ``AutoencoderKLWan`` names.

    The decoder's flat ``upsamples.K`` list becomes ``up_blocks.i.resnets.j`` /
    ``up_blocks.i.upsamplers.0`` (stage sizes read from the keys); the encoder keeps its flat
    ``down_blocks.K`` indices."""
    stages, per_stage, _ = _stage_counts(sd, "decoder", "upsamples")
    flat = []
    for i in range(stages):
        flat += [f"up_blocks.{i}.resnets.{j}" for j in range(per_stage)]
        if i < stages - 1:
            flat.append(f"up_blocks.{i}.upsamplers.0")

    def rename(module: str) -> str:
        top = {"conv1": "quant_conv", "conv2": "post_quant_conv"}
        if module in top:
            return top[module]
        side, _, rest = module.partition(".")
        if side not in ("encoder", "decoder"):
            return module
        if rest == "conv1":
            return f"{side}.conv_in"
        if m := re.match(r"^head\.(\d+)$", rest):
            return f"{side}." + {"0": "norm_out", "2": "conv_out"}.get(m.group(1), rest)
        if m := re.match(r"^middle\.(\d+)(?:\.(.*))?$", rest):
            n, tail = int(m.group(1)), m.group(2) or ""
            if n == 1:
                return f"{side}.mid_block.attentions.0" + (f".{tail}" if tail else "")
            return f"{side}.mid_block.resnets.{n // 2}.{_resblock(tail)}".rstrip(".")
        if m := re.match(r"^downsamples\.(\d+)\.(.*)$", rest):
            return f"{side}.down_blocks.{m.group(1)}.{_resblock(m.group(2))}"
        if m := re.match(r"^upsamples\.(\d+)\.(.*)$", rest):
            k, tail = int(m.group(1)), m.group(2)
            if k >= len(flat):
                return module
            target = flat[k]
            return f"{side}.{target}.{tail if 'upsamplers' in target else _resblock(tail)}"
        return module

    return _rename_modules(sd, rename)


def vae_config_from_state_dict(sd: dict) -> dict:
    """``AutoencoderKLWan`` constructor arguments read from official-named VAE shapes."""
    stages, per_stage, resample = _stage_counts(sd, "encoder", "downsamples")
    base_dim = sd["encoder.conv1.weight"].shape[0]
    starts = [0] + [r + 1 for r in resample]
    dim_mult, temporal = [], []
    for i, start in enumerate(starts):
        last_res = start + per_stage - 1
        dim_mult.append(sd[f"encoder.downsamples.{last_res}.residual.6.weight"].shape[0] // base_dim)
        if i < stages - 1:
            temporal.append(f"encoder.downsamples.{resample[i]}.time_conv.weight" in sd)
    if any(".downsamples." in k and ".to_qkv." in k for k in sd):
        raise WanWeightsError("Wan VAE with attention inside its down blocks is not supported")
    return dict(base_dim=base_dim, z_dim=sd["conv2.weight"].shape[0], dim_mult=dim_mult,
                num_res_blocks=per_stage, attn_scales=[], temperal_downsample=temporal)


# ------------------------------------------------------------------------------ UMT5 encoder
_T5_MODULES = [
    (r"^blocks\.(\d+)\.norm1$", r"encoder.block.\1.layer.0.layer_norm"),
    (r"^blocks\.(\d+)\.attn\.([qkvo])$", r"encoder.block.\1.layer.0.SelfAttention.\2"),
    (r"^blocks\.(\d+)\.pos_embedding\.embedding$",
     r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias"),
    (r"^blocks\.(\d+)\.norm2$", r"encoder.block.\1.layer.1.layer_norm"),
    (r"^blocks\.(\d+)\.ffn\.gate\.0$", r"encoder.block.\1.layer.1.DenseReluDense.wi_0"),
    (r"^blocks\.(\d+)\.ffn\.fc1$", r"encoder.block.\1.layer.1.DenseReluDense.wi_1"),
    (r"^blocks\.(\d+)\.ffn\.fc2$", r"encoder.block.\1.layer.1.DenseReluDense.wo"),
    (r"^norm$", "encoder.final_layer_norm"),
    (r"^token_embedding$", "shared"),
]
_T5_MODULES = [(re.compile(p), r) for p, r in _T5_MODULES]


def text_encoder_official_to_transformers(sd: dict) -> dict:
    """Wan's ``T5Encoder`` names (models_t5_umt5-xxl-enc-bf16.pth) -> transformers UMT5 names.

    Wan's gated FFN is ``fc2(fc1(x) * gelu(gate.0(x)))``; transformers' is
    ``wo(act(wi_0(x)) * wi_1(x))``, so gate.0 -> wi_0 and fc1 -> wi_1."""
    def rename(module):
        for pattern, repl in _T5_MODULES:
            if pattern.match(module):
                return pattern.sub(repl, module)
        return module
    return _rename_modules(sd, rename)


def text_encoder_to_transformers(sd: dict, layout: str) -> dict:
    """Any UMT5 layout -> transformers names with ``shared.weight`` present; the tokenizer tensor
    ``spiece_model`` is removed (the loader reads it separately)."""
    sd = normalise_quant_keys({k: v for k, v in sd.items() if k != "spiece_model"})
    if layout == "official":
        sd = text_encoder_official_to_transformers(sd)
    tied = sd.pop("encoder.embed_tokens.weight", None)
    if "shared.weight" not in sd and tied is not None:
        sd["shared.weight"] = tied
    return sd


# ------------------------------------------------------------------------------ CLIP vision
def clip_official_to_transformers(sd: dict) -> dict:
    """Wan's XLM-RoBERTa CLIP (``visual.*``; the text tower and ``log_scale`` are dropped) ->
    transformers CLIP vision names. The fused ``to_qkv`` is split into q/k/v (rows ordered q,k,v
    as Wan's ``view(b, s, 3, n, d)`` reads them); ``head`` [dim, out] becomes the projection."""
    out = {}
    for key, value in sd.items():
        if not key.startswith("visual."):
            if key.startswith(("textual.", "log_scale")):
                continue
            out[key] = value
            continue
        k = key[len("visual."):]
        if k == "patch_embedding.weight":
            out["vision_model.embeddings.patch_embedding.weight"] = value
        elif k == "cls_embedding":
            out["vision_model.embeddings.class_embedding"] = value.reshape(value.shape[-1])
        elif k == "pos_embedding":
            out["vision_model.embeddings.position_embedding.weight"] = value.reshape(value.shape[-2:])
        elif k == "head":
            out["visual_projection.weight"] = value.t()
        elif m := re.match(r"^(pre_norm|post_norm)\.(weight|bias)$", k):
            name = {"pre_norm": "pre_layrnorm", "post_norm": "post_layernorm"}[m.group(1)]
            out[f"vision_model.{name}.{m.group(2)}"] = value
        elif m := re.match(r"^transformer\.(\d+)\.(.*)$", k):
            layer, rest = f"vision_model.encoder.layers.{m.group(1)}", m.group(2)
            if q := re.match(r"^attn\.to_qkv\.(weight|bias)$", rest):
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{layer}.self_attn.{name}.{q.group(1)}"] = part
                continue
            rest = re.sub(r"^attn\.proj\.", "self_attn.out_proj.", rest)
            rest = re.sub(r"^norm([12])\.", r"layer_norm\1.", rest)
            rest = re.sub(r"^mlp\.0\.", "mlp.fc1.", rest)
            rest = re.sub(r"^mlp\.2\.", "mlp.fc2.", rest)
            out[f"{layer}.{rest}"] = value
        else:
            out[key] = value
    return out


def clip_open_clip_to_transformers(sd: dict) -> dict:
    """open_clip ``visual.*`` names (``transformer.resblocks``, fused ``in_proj``) -> transformers."""
    out = {}
    simple = {"conv1.weight": "embeddings.patch_embedding.weight",
              "class_embedding": "embeddings.class_embedding",
              "positional_embedding": "embeddings.position_embedding.weight",
              "ln_pre.weight": "pre_layrnorm.weight", "ln_pre.bias": "pre_layrnorm.bias",
              "ln_post.weight": "post_layernorm.weight", "ln_post.bias": "post_layernorm.bias"}
    for key, value in sd.items():
        if not key.startswith("visual."):
            continue  # text tower, logit scale
        k = key[len("visual."):]
        if k in simple:
            out[f"vision_model.{simple[k]}"] = value
        elif k == "proj":
            out["visual_projection.weight"] = value.t()
        elif m := re.match(r"^transformer\.resblocks\.(\d+)\.(.*)$", k):
            layer, rest = f"vision_model.encoder.layers.{m.group(1)}", m.group(2)
            if q := re.match(r"^attn\.in_proj_(weight|bias)$", rest):
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{layer}.self_attn.{name}.{q.group(1)}"] = part
                continue
            for old, new in (("attn.out_proj.", "self_attn.out_proj."), ("ln_1.", "layer_norm1."),
                             ("ln_2.", "layer_norm2."), ("mlp.c_fc.", "mlp.fc1."),
                             ("mlp.c_proj.", "mlp.fc2.")):
                if rest.startswith(old):
                    rest = new + rest[len(old):]
            out[f"{layer}.{rest}"] = value
        else:
            out[key] = value
    return out


def clip_to_transformers(sd: dict, layout: str) -> dict:
    """Any CLIP vision layout -> transformers on-disk names (``vision_model.*``). Older
    transformers files also store the derived ``position_ids`` buffer: it is dropped."""
    sd = {k: v for k, v in sd.items() if not k.endswith("embeddings.position_ids")}
    if layout == "official":
        return clip_official_to_transformers(sd)
    if layout == "open_clip":
        return clip_open_clip_to_transformers(sd)
    if "vision_model.embeddings.class_embedding" not in sd:  # saved without the vision_model level
        return {(k if k.startswith("visual_projection.") else f"vision_model.{k}"): v
                for k, v in sd.items()}
    return dict(sd)
