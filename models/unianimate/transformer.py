"""The UniAnimate-DiT transformer: diffusers' Wan2.1-I2V ``WanTransformer3DModel`` plus pose tokens.

Why a subclass and not a fork: the only change UniAnimate makes to the DiT is one addition, the
pose tokens added to the patch-embedded tokens before the first block (official
``model_fn_wan_video``: ``x = add_condition + patchify(cat([x, y]))``). A forward hook on
``patch_embedding`` does exactly that for one call, so every other part (attention backends,
fp8 layers, block swap, LoRA wrappers) is the runtime's stock Wan model. The negative CFG pass
is the same call without ``pose_tokens``.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel

from ..runtime.gguf import QuantizedWeight
from ..wan import loading
from ..runtime.attention import attention
from ..wan.attention import TEXT_CONTEXT_LENGTH
from ..runtime.fp8 import convert_to_fp8, default_fp8_filter
from ..runtime.weights import WanWeightsError, read_state_dict
from ..runtime.lora import merge_before_fp8
from ..wan.lora_keys import apply_wan_lora, apply_wan_loras
from .lora import UniAnimateFile, read_unianimate_file
from .pose_modules import PoseEncoders


class _ImageFirstCrossAttention:
    """Cross-attention processor that splits the context after the image tokens (the official
    rule: 257 CLIP tokens first, then the text). diffusers and the runtime split before the last
    512 rows, which is the same whenever the text has UMT5's 512 rows; this one is used only for
    calls with another text length (e.g. the tiny goldens' 16 rows) and keeps the wrapped
    processor's attention backend."""

    def __init__(self, inner, image_tokens: int):
        self.inner, self.image_tokens = inner, image_tokens

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None, **_):
        backend = getattr(self.inner, "backend", None)
        image, text = encoder_hidden_states[:, :self.image_tokens], encoder_hidden_states[:, self.image_tokens:]
        heads = attn.heads
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (heads, -1))
        key = attn.norm_k(attn.to_k(text)).unflatten(2, (heads, -1))
        value = attn.to_v(text).unflatten(2, (heads, -1))
        out = attention(query, key, value, backend).flatten(2, 3).type_as(query)
        key_img = attn.norm_added_k(attn.add_k_proj(image)).unflatten(2, (heads, -1))
        value_img = attn.add_v_proj(image).unflatten(2, (heads, -1))
        out = out + attention(query, key_img, value_img, backend).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


class UniAnimateTransformer(WanTransformer3DModel):
    """``WanTransformer3DModel`` whose forward also takes ``pose_tokens`` [B or 1, tokens, dim]
    (from :meth:`PoseEncoders.pose_tokens`), added right after patch embedding."""

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_hidden_states_image: torch.Tensor | None = None, pose_tokens: torch.Tensor | None = None,
                return_dict: bool = True, attention_kwargs: dict | None = None):
        args = (hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image)
        kwargs = dict(return_dict=return_dict, attention_kwargs=attention_kwargs)
        if (encoder_hidden_states_image is not None and encoder_hidden_states.shape[1] != TEXT_CONTEXT_LENGTH
                and self.config.image_dim is not None):
            layers = [block.attn2 for block in self.blocks]
            saved = [layer.processor for layer in layers]
            for layer, proc in zip(layers, saved):
                layer.processor = _ImageFirstCrossAttention(proc, encoder_hidden_states_image.shape[1])
            try:
                return self._forward_pose(args, kwargs, pose_tokens)
            finally:
                for layer, proc in zip(layers, saved):
                    layer.processor = proc
        return self._forward_pose(args, kwargs, pose_tokens)

    def _forward_pose(self, args, kwargs, pose_tokens):
        hidden_states = args[0]
        if pose_tokens is None:
            return super().forward(*args, **kwargs)
        b, _, f, h, w = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        grid = (f // p_t, h // p_h, w // p_w)
        tokens = grid[0] * grid[1] * grid[2]
        dim = self.config.num_attention_heads * self.config.attention_head_dim
        if pose_tokens.ndim != 3 or pose_tokens.shape[0] not in (1, b) or tuple(pose_tokens.shape[1:]) != (tokens, dim):
            raise ValueError(f"pose_tokens {tuple(pose_tokens.shape)} do not fit the latents "
                             f"{tuple(hidden_states.shape)}: "
                             f"expected [{b} or 1, {tokens}, {dim}] (one token per patch of the {grid} grid); "
                             f"the pose video must have 4*(latent frames - 1)+1 frames at the generation size")

        def add_pose(module, args, output):
            pose = pose_tokens.to(device=output.device, dtype=output.dtype)
            pose = pose.transpose(1, 2).reshape(pose.shape[0], dim, *grid)
            return output + pose

        handle = self.patch_embedding.register_forward_hook(add_pose)
        try:
            return super().forward(*args, **kwargs)
        finally:
            handle.remove()


def _model_factory(config: dict) -> UniAnimateTransformer:
    return UniAnimateTransformer(**config)


def unianimate_from_state_dicts(base_sd: dict, unianimate: UniAnimateFile, dtype=torch.bfloat16, device="cpu",
                                weight_dtype=None, lora_scale: float = 1.0, merge: bool = True,
                                extra_loras: Iterable = (), num_attention_heads: int | None = None,
                                source: str = "", pose_dtype=torch.float32):
    """(UniAnimateTransformer, PoseEncoders) from an already-read base DiT state dict (any layout,
    meta tensors allowed) and a parsed UniAnimate file. ``base_sd`` is consumed."""
    # GGUF blocks cannot absorb a merge: their LoRAs run as unmerged branches.
    merge = merge and not any(isinstance(v, QuantizedWeight) for v in base_sd.values())
    quantize_after = merge_before_fp8(base_sd, weight_dtype, merge, has_loras=True)  # the UniAnimate LoRA
    model = loading.transformer_from_state_dict(
        base_sd, dtype, device, None if quantize_after else weight_dtype, num_attention_heads=num_attention_heads,
        source=source, consume=True, model_factory=_model_factory)
    if model.config.in_channels != 36 or model.config.image_dim is None:
        raise WanWeightsError(f"{source or 'base model'}: this Wan DiT has {model.config.in_channels} input channels "
                              f"and {'no' if model.config.image_dim is None else 'an'} image embedder; UniAnimate "
                              f"needs the Wan2.1 I2V model (36 channels, CLIP image tokens), e.g. "
                              f"wan2.1_i2v_720p_14B_bf16.safetensors")
    pose = PoseEncoders.from_state_dict(unianimate.pose_state_dict, device=device, dtype=pose_dtype,
                                        source=unianimate.source)
    width = model.config.num_attention_heads * model.config.attention_head_dim
    if pose.dim != width:
        raise WanWeightsError(f"{unianimate.source}: the pose module outputs {pose.dim} channels but the DiT is "
                              f"{width} wide; the released UniAnimate file is for Wan2.1-I2V-14B (5120)")
    apply_wan_lora(model, unianimate.lora, lora_scale, merge=merge, use_alpha=False)
    apply_wan_loras(model, extra_loras, merge=merge)
    if quantize_after:
        convert_to_fp8(model, weight_dtype, default_fp8_filter)
    return model.eval().requires_grad_(False), pose


def load_unianimate(base_path, unianimate_path, dtype=torch.bfloat16, device="cpu", weight_dtype=None,
                    lora_scale: float = 1.0, merge: bool = True, extra_loras: Iterable = (),
                    num_attention_heads: int | None = None):
    """Load the Wan2.1-I2V DiT from ``base_path`` (any layout the runtime reads), apply the
    UniAnimate LoRA at ``lora_scale`` (merged, or unmerged branches that also work on fp8
    weights) and any ``extra_loras`` (paths or (path, strength)); returns
    (UniAnimateTransformer, PoseEncoders). The pose encoders stay float32 as officially."""
    base = loading._component_path(Path(base_path), "transformer")
    if num_attention_heads is None and (base.is_dir() or base.name.endswith(".json")):
        cfg = loading._folder_config(base)
        num_attention_heads = cfg.get("num_attention_heads") or cfg.get("num_heads")
    unianimate = read_unianimate_file(unianimate_path)
    sd = read_state_dict(base)
    return unianimate_from_state_dicts(sd, unianimate, dtype, device, weight_dtype, lora_scale, merge,
                                       extra_loras, num_attention_heads, source=base.name)
