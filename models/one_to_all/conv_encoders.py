"""The two small convolutional encoders of One-to-All Animation.

Why a module of their own: they are plain conv stacks, unrelated to the Wan transformer, and the
released checkpoints name their parameters after the official classes, so the attribute names
here (``conv_in``, ``down_blocks.N.resnets.M.{norm1,conv1,norm2,conv2}``,
``down_blocks.N.downsamplers.0.conv``, ``conv_out``) are part of the file format.

- :class:`PoseHintEncoder` (``input_hint_block``): a causal 3D conv encoder in the style of the
  Hunyuan video VAE encoder. Pose video in pixel space [B, 3, F, H, W] in [-1, 1] ->
  [B, dim, (F-1)//4+1, H/16, W/16], i.e. one feature vector per transformer token. Every conv pads
  time causally (two copies of the first frame in front) and space by one pixel, both with
  replicate padding; every block halves H and W, the middle two blocks also halve time.
- :class:`ImageCondEncoder2D` (``image_to_cond``): a per-frame 2D conv encoder (no downsampling)
  that turns the 32-channel reference+mask latent into the 16-channel prefix latent frame.

GroupNorm is computed in float32 whatever the weights' dtype (loaders keep ``norm1``/``norm2``
weights in float32, as diffusers does for Wan); convolutions run in the input's dtype. Videos
longer than ``PoseHintEncoder.chunk_frames`` are encoded a few frames at a time with the same
result (models/one_to_all/hint_stream.py), so full-resolution activations never exist whole.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _group_norm(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    w = norm.weight.float() if norm.weight is not None else None
    b = norm.bias.float() if norm.bias is not None else None
    return F.group_norm(x.float(), norm.num_groups, w, b, norm.eps).to(x.dtype)


# ------------------------------------------------------------------------- causal 3D (pose)
class CausalConv3d(nn.Module):
    """Conv3d after replicate padding: (k-1) frames before, none after; k//2 pixels each side."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride=1):
        super().__init__()
        self.pad = (kernel_size // 2, kernel_size // 2, kernel_size // 2, kernel_size // 2, kernel_size - 1, 0)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad, mode="replicate"))


class CausalResnet3D(nn.Module):
    """GroupNorm-SiLU-conv twice plus the skip (1x1x1 causal conv when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3)
        self.conv_shortcut = CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(_group_norm(self.norm1, x)))
        h = self.conv2(F.silu(_group_norm(self.norm2, h)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class CausalDownsample3D(nn.Module):
    """Strided causal conv (stride 2 in H/W, and in time where the block compresses time)."""

    def __init__(self, channels: int, stride: tuple[int, int, int]):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class CausalDownBlock3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int,
                 stride: tuple[int, int, int] | None):
        super().__init__()
        self.resnets = nn.ModuleList(
            CausalResnet3D(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(layers))
        self.downsamplers = nn.ModuleList([CausalDownsample3D(out_channels, stride)]) if stride else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for down in self.downsamplers or ():
            x = down(x)
        return x


class PoseHintEncoder(nn.Module):
    """Pose video -> token features (``input_hint_block``); see the module docstring.

    ``spatial_compression`` 16 and ``time_compression`` 4 are the released models' values:
    blocks ``i < log2(spatial)`` halve H/W, blocks ``n-1-log2(time) <= i < n-1`` halve time."""

    def __init__(self, out_channels: int, in_channels: int = 3, block_out_channels=(16, 16, 16, 16),
                 layers_per_block: int = 1, groups: int = 4, spatial_compression: int = 16,
                 time_compression: int = 4):
        super().__init__()
        n = len(block_out_channels)
        spatial_layers = spatial_compression.bit_length() - 1
        time_layers = time_compression.bit_length() - 1
        self.conv_in = CausalConv3d(in_channels, block_out_channels[0], 3)
        blocks, prev = [], block_out_channels[0]
        for i, ch in enumerate(block_out_channels):
            down_hw = i < spatial_layers
            down_t = n - 1 - time_layers <= i < n - 1
            stride = (2 if down_t else 1, 2 if down_hw else 1, 2 if down_hw else 1)
            blocks.append(CausalDownBlock3D(prev, ch, layers_per_block, groups,
                                            stride if (down_hw or down_t) else None))
            prev = ch
        self.down_blocks = nn.ModuleList(blocks)
        self.conv_out = CausalConv3d(prev, out_channels, 3)

    chunk_frames = 8  # input frames per chunk of the streamed pass; 0 = the whole video at once

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5:
            raise ValueError(f"pose hint encoder needs a [B, 3, F, H, W] video, got shape {tuple(video.shape)}")
        if self.chunk_frames and video.shape[2] > self.chunk_frames:
            from .hint_stream import streamed_forward

            return streamed_forward(self, video, int(self.chunk_frames))
        x = self.conv_in(video.to(self.conv_in.conv.weight.dtype))
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(x)


# ---------------------------------------------------------------------- per-frame 2D (prefix)
class Resnet2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(_group_norm(self.norm1, x)))
        h = self.conv2(F.silu(_group_norm(self.norm2, h)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class DownBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            Resnet2D(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(layers))
        self.downsamplers = nn.ModuleList(
            [nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)] if downsample else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for down in self.downsamplers:
            x = down(x)
        return x


class ImageCondEncoder2D(nn.Module):
    """Reference+mask latent [B, 32, 1, h, w] -> prefix latent frame [B, 16, 1, h, w]
    (``image_to_cond``). Frames are encoded independently (folded into the batch)."""

    def __init__(self, in_channels: int = 32, out_channels: int = 16, block_out_channels=(16, 16, 16),
                 layers_per_block: int = 1, groups: int = 4, spatial_compression: int = 1):
        super().__init__()
        down_layers = spatial_compression.bit_length() - 1
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        blocks, prev = [], block_out_channels[0]
        for i, ch in enumerate(block_out_channels):
            blocks.append(DownBlock2D(prev, ch, layers_per_block, groups, i < down_layers))
            prev = ch
        self.down_blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(prev, out_channels, 3, padding=1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 5:
            raise ValueError(f"image_to_cond needs [B, C, F, h, w] latents, got shape {tuple(latents.shape)}")
        b, _, f, h, w = latents.shape
        x = latents.to(self.conv_in.weight.dtype).permute(0, 2, 1, 3, 4).reshape(b * f, -1, h, w)
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.conv_out(x)
        return x.reshape(b, f, *x.shape[1:]).permute(0, 2, 1, 3, 4)
