"""Wan's attention processor, on the runtime's attention backends (models/runtime/attention.py).

``WanAttentionProcessor`` is a diffusers attention processor for ``WanAttention`` (the class
diffusers' ``WanTransformer3DModel`` uses) computing what diffusers' own ``WanAttnProcessor``
computes: q/k RMSNorm, 3-D RoPE, optional image key/value branch of the I2V model summed before
the output projection. Differences: the selectable backend, and RoPE applied in float32 with
the tables converted once per forward instead of in float64 in every layer.
``install_attention`` only replaces diffusers' stock processors, so model variants that bring
their own processors (One-to-All's reference attention) keep them; those call ``attention()``
with ``model.poseanimate_attention`` to share the backend.
"""
from __future__ import annotations

import logging

import torch

from ..runtime.attention import AttentionBackend, attention, select_backend

_log = logging.getLogger("PoseAnimate")
TEXT_CONTEXT_LENGTH = 512  # UMT5 tokens in front of which the I2V model puts 257 image tokens


class _RopeCache:
    """float32 rotation factors derived from the tables of the current forward.

    diffusers hands every attention layer the same (cos, sin) tensors within one
    forward; converting them once instead of per layer is where the time goes on
    small inputs. The cache keeps a reference to the source tensors, so an
    identity check is enough to know they are still the same.
    """

    def __init__(self):
        self._src: tuple[torch.Tensor, torch.Tensor] | None = None
        self._freqs: torch.Tensor | None = None

    def get(self, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self._src is None or self._src[0] is not cos or self._src[1] is not sin:
            c = cos[..., 0::2].to(torch.float32)
            s = sin[..., 1::2].to(torch.float32)
            self._freqs = torch.complex(c, s)
            self._src = (cos, sin)
        return self._freqs

    def clear(self) -> None:
        self._src = None
        self._freqs = None


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x`` [B, S, H, D] by complex factors [1, S, 1, D/2]."""
    xc = torch.view_as_complex(x.to(torch.float32).unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * freqs).flatten(-2).to(x.dtype)


class WanAttentionProcessor:
    """Drop-in for diffusers' ``WanAttnProcessor`` with a selectable backend (see module doc)."""

    def __init__(self, backend: AttentionBackend | None = None, rope_cache: _RopeCache | None = None):
        self.backend = backend or AttentionBackend()
        self.rope_cache = rope_cache or _RopeCache()

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        **_: object,
    ) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("WanAttentionProcessor does not take an attention mask (Wan attends to all tokens).")
        image_context = None
        if attn.add_k_proj is not None:
            split = encoder_hidden_states.shape[1] - TEXT_CONTEXT_LENGTH
            image_context = encoder_hidden_states[:, :split]
            encoder_hidden_states = encoder_hidden_states[:, split:]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states

        if getattr(attn, "fused_projections", False):
            if attn.is_cross_attention:
                query = attn.to_q(hidden_states)
                key, value = attn.to_kv(context).chunk(2, dim=-1)
            else:
                query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query = attn.to_q(hidden_states)
            key = attn.to_k(context)
            value = attn.to_v(context)

        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        if rotary_emb is not None:
            freqs = self.rope_cache.get(*rotary_emb)
            query = apply_rope(query, freqs)
            key = apply_rope(key, freqs)

        out = attention(query, key, value, self.backend).flatten(2, 3).type_as(query)

        if image_context is not None:
            if getattr(attn, "fused_projections", False):
                key_img, value_img = attn.to_added_kv(image_context).chunk(2, dim=-1)
            else:
                key_img = attn.add_k_proj(image_context)
                value_img = attn.add_v_proj(image_context)
            key_img = attn.norm_added_k(key_img).unflatten(2, (attn.heads, -1))
            value_img = value_img.unflatten(2, (attn.heads, -1))
            out_img = attention(query, key_img, value_img, self.backend).flatten(2, 3).type_as(query)
            out = out + out_img

        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def _stock_processor_types() -> tuple[type, ...]:
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    return (WanAttnProcessor, WanAttentionProcessor)


def install_attention(model: torch.nn.Module, backend: str | AttentionBackend = "auto") -> AttentionBackend:
    """Put ``WanAttentionProcessor`` on every Wan attention layer that uses a stock processor.

    Returns the resolved backend (``model.poseanimate_attention`` records it too).
    Layers whose processor is some other class are left alone.
    """
    from diffusers.models.transformers.transformer_wan import WanAttention

    resolved = backend if isinstance(backend, AttentionBackend) else select_backend(backend)
    stock = _stock_processor_types()
    cache = _RopeCache()
    processor = WanAttentionProcessor(resolved, cache)
    count = 0
    for module in model.modules():
        if isinstance(module, WanAttention) and type(module.processor) in stock:
            module.set_processor(processor)
            count += 1
    if count == 0:
        raise ValueError("install_attention found no Wan attention layer with a stock processor in this model.")
    model.poseanimate_attention = resolved
    _log.info("PoseAnimate: %d Wan attention layers use the %s backend.", count, resolved.name)
    return resolved


def release(model: torch.nn.Module) -> None:
    """Drop the RoPE factors cached by the model's processors (call after a run)."""
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if isinstance(processor, WanAttentionProcessor):
            processor.rope_cache.clear()


def uninstall_attention(model: torch.nn.Module) -> None:
    """Give every layer that uses ``WanAttentionProcessor`` diffusers' stock processor back."""
    from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor

    for module in model.modules():
        if isinstance(module, WanAttention) and isinstance(module.processor, WanAttentionProcessor):
            module.set_processor(WanAttnProcessor())
    if hasattr(model, "poseanimate_attention"):
        del model.poseanimate_attention
