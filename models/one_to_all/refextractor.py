"""One-to-All's reference extractor, and the Wan block pieces it shares with the main model.

Why: the reference extractor is a small text-free Wan (patch embedding of the 32-channel
reference+mask latent, its own timestep embedding, self-attention + FFN blocks with adaLN
modulation). It runs at the current timestep and returns one feature map per block input plus
the final output, each through its own Linear (``ref_blocks``); groups of main blocks attend to
them. The controlnet blocks of the main model are the same text-free block with 3D RoPE, so the
block, the modulation helpers and the self-attention processor live here and are imported by
``transformer.py``. Built from diffusers' Wan parts (``WanAttention``, ``FeedForward``,
``FP32LayerNorm``, ``WanRotaryPosEmbed``, ``Timesteps``/``TimestepEmbedding``) so the parameter
names match the released checkpoints.

Reference RoPE: the official processors rotate only the h/w part of each head for the reference
path: the first 44 channels of every head (the temporal part for head size 128, a constant in
the official code) stay as they are and the remaining channels use the h/w rotary factors.
Queries of the main model use their own video positions, reference keys the positions of the
reference frame.

Modulation ``spans``: a list of ``(start, end, timestep_proj [B, 6, D])`` token ranges; token
replace gives the re-encoded overlap frames the timestep-0 set while every other token keeps the
real one. Each block applies a span's six vectors to its token range in place, so no per-token
modulation tensor is ever built.
"""
from __future__ import annotations

import torch
from torch import nn
from diffusers.models.attention import FeedForward
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import WanAttention, WanRotaryPosEmbed

from ..runtime.attention import attention
from ..wan.attention import apply_rope

# Channels per head left un-rotated on the reference path (official constant; = Wan's temporal
# RoPE part for head size 128, the size of every released model).
REF_ROPE_SKIP = 44


# ------------------------------------------------------------------------------------ RoPE
def rope_factors(rope: WanRotaryPosEmbed, latents: torch.Tensor) -> torch.Tensor:
    """Complex float32 rotation factors [1, S, 1, head_dim/2] of diffusers' Wan RoPE for a
    [B, C, F, H, W] latent (positions frame-major, then row, then column)."""
    cos, sin = rope(latents)
    return torch.complex(cos[..., 0::2].to(torch.float32), sin[..., 1::2].to(torch.float32))


def apply_rope_hw(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """The reference-path rotation of ``x`` [B, S, H, D]: channels >= 44 rotated, the rest kept."""
    rotated = apply_rope(x[..., REF_ROPE_SKIP:], freqs[..., REF_ROPE_SKIP // 2:])
    return torch.cat([x[..., :REF_ROPE_SKIP], rotated], dim=-1)


# ------------------------------------------------------------------------------ attention
class OneToAllSelfAttnProcessor:
    """Self-attention of every One-to-All block (main, controlnet, refextractor).

    ``rope="full"``: Wan's 3D RoPE on q and k; ``rope="hw"``: the reference rotation on both
    (refextractor). With ``ref`` (main blocks) a second attention runs from the un-rotated q
    (reference-rotated with the video positions) to ``norm_added_k(add_k_proj(ref))`` /
    ``add_v_proj(ref)`` (reference-rotated with ``ref_rotary_emb``) and is added to the first
    before ``to_out``. Both attentions go through ``models.wan.attention.attention`` (SDPA or the
    installed backend passed as ``backend``)."""

    def __init__(self, rope: str = "full"):
        if rope not in ("full", "hw"):
            raise ValueError(f"rope must be 'full' or 'hw', got {rope!r}")
        self.rope = rope

    def __call__(self, attn: WanAttention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, rotary_emb: torch.Tensor | None = None, ref: torch.Tensor | None = None,
                 ref_rotary_emb: torch.Tensor | None = None, backend=None) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("One-to-All self-attention takes no context and no mask")
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        rotate = apply_rope if self.rope == "full" else apply_rope_hw
        out = attention(rotate(query, rotary_emb), rotate(key, rotary_emb), value, backend)
        out = out.flatten(2, 3).type_as(query)

        if ref is not None:
            if attn.add_k_proj is None:
                raise ValueError("this attention layer has no reference key/value projections")
            if getattr(attn, "fused_projections", False):
                key_ref, value_ref = attn.to_added_kv(ref).chunk(2, dim=-1)
            else:
                key_ref, value_ref = attn.add_k_proj(ref), attn.add_v_proj(ref)
            key_ref = attn.norm_added_k(key_ref).unflatten(2, (attn.heads, -1))
            value_ref = value_ref.unflatten(2, (attn.heads, -1))
            out_ref = attention(apply_rope_hw(query, rotary_emb), apply_rope_hw(key_ref, ref_rotary_emb),
                                value_ref, getattr(backend, "local", backend))  # reference K/V: never split
            out = out + out_ref.flatten(2, 3).type_as(query)

        out = attn.to_out[0](out)
        return attn.to_out[1](out)


# ----------------------------------------------------------------------------- modulation
def block_modulation(table: torch.Tensor, spans) -> list:
    """``[(start, end, (shift, scale, gate, c_shift, c_scale, c_gate))]`` for one block: its
    ``scale_shift_table`` [1, 6, D] plus each span's timestep projection, in float32; spans
    sharing a projection share the computed vectors."""
    done: dict[int, tuple] = {}
    out = []
    for start, end, proj in spans:
        if id(proj) not in done:
            done[id(proj)] = (table + proj.float()).chunk(6, dim=1)
        out.append((start, end, done[id(proj)]))
    return out


def modulate_(normed: torch.Tensor, mods: list, shift: int, scale: int) -> torch.Tensor:
    """``normed * (1 + scale) + shift`` per span, in place on the float32 normed tensor."""
    for start, end, m in mods:
        normed[:, start:end].mul_(1 + m[scale]).add_(m[shift])
    return normed


def gated_residual(x: torch.Tensor, y: torch.Tensor, mods: list, gate: int) -> torch.Tensor:
    """``x + y * gate`` per span, accumulated in float32, returned in ``x``'s dtype."""
    out = x.to(torch.float32, copy=True)
    for start, end, m in mods:
        out[:, start:end].addcmul_(y[:, start:end], m[gate])
    return out.type_as(x)


def run_block(block: nn.Module, x: torch.Tensor, mods: list, attn_kwargs: dict,
              context: torch.Tensor | None = None) -> torch.Tensor:
    """The Wan block body: modulated self-attention, optional cross-attention (affine pre-norm,
    no gate), modulated FFN; ``mods`` from :func:`block_modulation`."""
    normed = modulate_(block.norm1(x.float()), mods, 0, 1)
    y = block.attn1(normed.type_as(x), None, None, **attn_kwargs)
    x = gated_residual(x, y, mods, 2)
    if context is not None:
        y = block.attn2(block.norm2(x.float()).type_as(x), context, None, None)
        x = x + y
    normed = modulate_(block.norm3(x.float()), mods, 3, 4)
    y = block.ffn(normed.type_as(x))
    return gated_residual(x, y, mods, 5)


class TextFreeBlock(nn.Module):
    """Wan block without cross-attention (refextractor blocks, controlnet blocks)."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float = 1e-6, rope: str = "full"):
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = WanAttention(dim=dim, heads=num_heads, dim_head=dim // num_heads, eps=eps,
                                  processor=OneToAllSelfAttnProcessor(rope))
        self.ffn = FeedForward(dim, inner_dim=ffn_dim, activation_fn="gelu-approximate")
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)

    def forward(self, hidden_states: torch.Tensor, spans, rotary_emb: torch.Tensor, backend=None) -> torch.Tensor:
        mods = block_modulation(self.scale_shift_table, spans)
        return run_block(self, hidden_states, mods, dict(rotary_emb=rotary_emb, backend=backend))


# ---------------------------------------------------------------------------------- time
class TimeEmbedding(nn.Module):
    """Sinusoidal (cos first) -> Linear-SiLU-Linear -> ``time_proj`` to 6 modulation vectors."""

    def __init__(self, dim: int, freq_dim: int):
        super().__init__()
        self.timesteps_proj = Timesteps(num_channels=freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedder = TimestepEmbedding(in_channels=freq_dim, time_embed_dim=dim)
        self.act_fn = nn.SiLU()
        self.time_proj = nn.Linear(dim, dim * 6)


def time_embedding(embedder: nn.Module, timestep: torch.Tensor, like: torch.Tensor):
    """(temb [B, D], timestep_proj [B, 6, D]) from a module with ``timesteps_proj``,
    ``time_embedder``, ``act_fn``, ``time_proj`` (ours or diffusers' Wan condition embedder)."""
    sinus = embedder.timesteps_proj(timestep)
    weight_dtype = next(iter(embedder.time_embedder.parameters())).dtype
    if sinus.dtype != weight_dtype and weight_dtype != torch.int8:
        sinus = sinus.to(weight_dtype)
    temb = embedder.time_embedder(sinus).type_as(like)
    return temb, embedder.time_proj(embedder.act_fn(temb)).unflatten(1, (6, -1))


# --------------------------------------------------------------------------- refextractor
class OneToAllRefExtractor(nn.Module):
    """Reference latent [B, C_ref, 1, h, w] + timestep -> ``num_layers + 1`` token features
    [B, h/2 * w/2, D] and their RoPE factors (see the module docstring)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, num_layers: int, in_channels: int = 32,
                 freq_dim: int = 256, patch_size=(1, 2, 2), eps: float = 1e-6, rope_max_seq_len: int = 1024):
        super().__init__()
        patch_size = tuple(patch_size)
        self.rope = WanRotaryPosEmbed(dim // num_heads, patch_size, rope_max_seq_len)
        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.condition_embedder = TimeEmbedding(dim, freq_dim)
        self.blocks = nn.ModuleList(TextFreeBlock(dim, ffn_dim, num_heads, eps, rope="hw") for _ in range(num_layers))
        self.ref_blocks = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers + 1))

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, backend=None):
        if latents.ndim != 5 or latents.shape[2] != 1:
            raise ValueError(f"the reference extractor takes one latent frame [B, C, 1, h, w], got {tuple(latents.shape)}")
        freqs = rope_factors(self.rope, latents)
        x = self.patch_embedding(latents.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        _, proj = time_embedding(self.condition_embedder, timestep, x)
        spans = [(0, x.shape[1], proj)]
        features = []
        for block in self.blocks:
            features.append(x)
            x = block(x, spans, freqs, backend)
        features.append(x)
        return [linear(f) for linear, f in zip(self.ref_blocks, features)], freqs
