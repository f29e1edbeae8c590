"""AnimateDiff motion modules in the ORIGINAL formulation (as AnimateDiff and ADE run them).

Why our own module instead of diffusers' ``AnimateDiffTransformer3D``: the original
normalises the input with a **per-frame** GroupNorm (statistics over one frame's
channels-in-group x h x w), diffusers normalises across all frames of a batch item. On the
reference golden the two differ by up to 1.4 (tests/fixtures/reference/animatediff/README.md
section 2). ``groupnorm_across_frames=True`` gives the across-frame variant, which is ADE's
"GroupNorm hack" used for v1 / AnimateLCM models.

Parameter names mirror the original checkpoint, so ``state_dict()`` of a
:class:`TemporalModule` is exactly the 28 keys under ``<block>.motion_modules.<j>.``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 32
HEADS = 8


def sinusoid_pe(length: int, channels: int) -> torch.Tensor:
    """The original PE buffer [1, L, C]: sin on even channels, cos on odd ones."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, channels, 2, dtype=torch.float32) * (-math.log(10000.0) / channels))
    pe = torch.zeros(1, length, channels)
    pe[0, :, 0::2] = torch.sin(pos * div)
    pe[0, :, 1::2] = torch.cos(pos * div)
    return pe


class PositionalEncoding(nn.Module):
    """Holds the ``pe`` buffer; the checkpoint's values are used as stored."""

    def __init__(self, channels: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", sinusoid_pe(max_len, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class TemporalAttention(nn.Module):
    """Self-attention over the frame axis; PE is added to the (normalised) q/k/v input."""

    def __init__(self, channels: int, max_len: int, heads: int = HEADS):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])
        self.pos_encoder = PositionalEncoding(channels, max_len)

    def forward(self, x: torch.Tensor, frames: int, scale=1.0) -> torch.Tensor:
        # x: [(b f), d, c] -> [(b d), f, c]
        bf, d, c = x.shape
        b = bf // frames
        x = x.reshape(b, frames, d, c).transpose(1, 2).reshape(b * d, frames, c)
        x = self.pos_encoder(x)
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        if not (isinstance(scale, (int, float)) and scale == 1.0):
            k = k * scale  # scale_multival: a softmax temperature on the keys
        hd = c // self.heads
        q, k, v = (t.reshape(b * d, frames, self.heads, hd).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b * d, frames, c)
        out = self.to_out[1](self.to_out[0](out))
        return out.reshape(b, d, frames, c).transpose(1, 2).reshape(bf, d, c)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, channels: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(channels, channels * mult), nn.Dropout(0.0),
                                  nn.Linear(channels * mult, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TemporalBlock(nn.Module):
    """Two temporal self-attentions (pre-LayerNorm, residual) and a GEGLU feed-forward."""

    def __init__(self, channels: int, max_len: int, heads: int = HEADS):
        super().__init__()
        self.attention_blocks = nn.ModuleList([TemporalAttention(channels, max_len, heads) for _ in range(2)])
        self.norms = nn.ModuleList([nn.LayerNorm(channels) for _ in range(2)])
        self.ff = FeedForward(channels)
        self.ff_norm = nn.LayerNorm(channels)

    def forward(self, h: torch.Tensor, frames: int, scale=1.0) -> torch.Tensor:
        for attn, norm in zip(self.attention_blocks, self.norms):
            h = attn(norm(h), frames, scale) + h
        return self.ff(self.ff_norm(h)) + h


def group_norm_frames(norm: nn.GroupNorm, x: torch.Tensor, frames: int, across_frames: bool) -> torch.Tensor:
    """GroupNorm over one frame (original) or over all frames of a batch item (ADE hack)."""
    if not across_frames:
        return norm(x)
    bf, c, h, w = x.shape
    b = bf // frames
    x5 = x.reshape(b, frames, c, h, w).transpose(1, 2)
    y = F.group_norm(x5, norm.num_groups, norm.weight, norm.bias, norm.eps)
    return y.transpose(1, 2).reshape(bf, c, h, w)


class TemporalTransformer(nn.Module):
    """norm -> proj_in -> temporal block(s) -> proj_out, plus the input as residual."""

    def __init__(self, channels: int, max_len: int, num_layers: int = 1, heads: int = HEADS, groups: int = GROUPS):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([TemporalBlock(channels, max_len, heads) for _ in range(num_layers)])
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, frames: int, scale=1.0, across_frames: bool = False) -> torch.Tensor:
        bf, c, hh, ww = x.shape
        h = group_norm_frames(self.norm, x, frames, across_frames).to(x.dtype)
        h = h.permute(0, 2, 3, 1).reshape(bf, hh * ww, c)
        h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, frames, scale)
        h = self.proj_out(h)
        return h.reshape(bf, hh, ww, c).permute(0, 3, 1, 2).contiguous() + x


class TemporalModule(nn.Module):
    """One ``VanillaTemporalModule``: input [(b f), C, h, w] frames contiguous per item.

    ``scale`` (scale_multival) multiplies the attention keys; ``effect`` (effect_multival)
    blends ``x*(1-e) + module(x)*e``; either may be a float, ``effect`` also a per-frame
    tensor of length f.
    """

    def __init__(self, channels: int, max_len: int, heads: int = HEADS, groups: int = GROUPS):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, max_len, heads=heads, groups=groups)
        self.scale = 1.0
        self.effect = 1.0
        self.groupnorm_across_frames = False

    @property
    def max_frames(self) -> int:
        return self.temporal_transformer.transformer_blocks[0].attention_blocks[0].pos_encoder.pe.shape[1]

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        if x.shape[0] % frames:
            raise ValueError(f"motion module got {x.shape[0]} frames in the batch, not a multiple of num_frames={frames}")
        if frames > self.max_frames:
            raise ValueError(
                f"{frames} frames exceed this motion module's positional encoding ({self.max_frames}); "
                "use context windows of at most that length")
        effect = self.effect
        if not torch.is_tensor(effect) and effect == 0.0:
            return x
        y = self.temporal_transformer(x, frames, self.scale, self.groupnorm_across_frames)
        if not torch.is_tensor(effect) and effect == 1.0:
            return y
        if torch.is_tensor(effect):
            e = effect.to(device=x.device, dtype=x.dtype).reshape(-1)
            if e.numel() != frames:
                raise ValueError(f"effect tensor has {e.numel()} values, expected one per frame ({frames})")
            e = e.repeat(x.shape[0] // frames).reshape(-1, 1, 1, 1)
        else:
            e = effect
        return x * (1.0 - e) + y * e


class MotionBlock(nn.Module):
    """A named container so keys read ``<block>.motion_modules.<j>.temporal_transformer...``."""

    def __init__(self, channels: int, count: int, max_len: int):
        super().__init__()
        self.motion_modules = nn.ModuleList([TemporalModule(channels, max_len) for _ in range(count)])
