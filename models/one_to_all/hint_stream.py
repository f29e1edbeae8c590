"""The pose hint encoder evaluated a few frames at a time, with the result of the whole-video pass.

Why: at 480x832 x 81 frames every full-resolution activation of ``input_hint_block`` is a
16-channel float tensor of 2 GB, and the plain forward holds several at once (norm, SiLU, pad,
conv output). Two facts make an exact chunked pass possible:

* every conv is causal in time (replicate-padded with copies of the first frame in front, none
  after), so a chunk's outputs only need the last ``k - 1`` padded input frames of the previous
  chunk (more for a strided conv: the frames not yet consumed by a window). ``_CausalStream``
  carries them;
* GroupNorm normalises over all frames, so its statistics are gathered first: a resnet's input
  statistics in one streamed pass, those of its first conv's output in a second, then the
  resnet runs chunk by chunk with both. Sums are kept in float64.

Only each block's output is kept whole (a quarter of the full resolution or less), and the
final ``conv_out`` writes into the output tensor chunk by chunk. The full-resolution stage is
recomputed twice for its statistics (about 1.5x the encoder's FLOPs, small next to a
transformer call).
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

Chunks = Callable[[], Iterator[torch.Tensor]]  # a fresh pass over a stage's input, chunk by chunk


class _CausalStream:
    """One ``CausalConv3d`` applied to consecutive chunks; equals the conv on their concatenation."""

    def __init__(self, conv):
        self.conv = conv.conv
        self.k, self.s = self.conv.kernel_size[0], self.conv.stride[0]
        self.spatial = conv.pad[:4] + (0, 0)
        self.carry: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.spatial, mode="replicate") if any(self.spatial) else x
        if self.carry is None:  # the causal front padding: k-1 copies of the first frame
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.k - 1, -1, -1), x], dim=2)
        elif self.carry.shape[2]:
            x = torch.cat([self.carry, x], dim=2)
        n = (x.shape[2] - self.k) // self.s + 1 if x.shape[2] >= self.k else 0
        self.carry = x[:, :, n * self.s:].clone()  # frames later windows still need
        if n == 0:
            return x.new_empty(0)
        return self.conv(x[:, :, : (n - 1) * self.s + self.k])


class _GroupStats:
    """Per-(batch, group) mean and 1/std of a GroupNorm input seen chunk by chunk (biased variance)."""

    def __init__(self, norm):
        self.norm = norm
        self.sum = self.sq = None
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        g = x.reshape(x.shape[0], self.norm.num_groups, -1)
        s, q = g.sum(-1, dtype=torch.float64), g.double().square().sum(-1)
        self.sum = s if self.sum is None else self.sum + s
        self.sq = q if self.sq is None else self.sq + q
        self.count += g.shape[-1]

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) per (batch, channel) so that ``x * scale + shift`` is the GroupNorm output."""
        mean = self.sum / self.count
        var = (self.sq / self.count - mean.square()).clamp_min(0)
        rstd = (var + self.norm.eps).rsqrt()
        per_group = self.norm.num_channels // self.norm.num_groups
        mean, rstd = mean.repeat_interleave(per_group, 1), rstd.repeat_interleave(per_group, 1)
        w = self.norm.weight.double() if self.norm.weight is not None else torch.ones_like(rstd[0])
        b = self.norm.bias.double() if self.norm.bias is not None else torch.zeros_like(rstd[0])
        scale = rstd * w
        return scale.float(), (b - mean * scale).float()


def _normed(x: torch.Tensor, affine) -> torch.Tensor:
    """GroupNorm with precomputed statistics, in float32, back to the input's dtype, then SiLU."""
    scale, shift = affine
    y = x.float() * scale[:, :, None, None, None] + shift[:, :, None, None, None]
    return F.silu(y).to(x.dtype)


def _statistics(norm, chunks: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    stats = _GroupStats(norm)
    for x in chunks:
        stats.add(x)
    return stats.affine()


def _resnet_stage(resnet, source: Chunks) -> Chunks:
    """A ``CausalResnet3D`` over a chunked input: gathers its two GroupNorm statistics, then streams."""
    a1 = _statistics(resnet.norm1, source())

    def first_conv():
        conv1 = _CausalStream(resnet.conv1)
        for x in source():
            yield conv1(_normed(x, a1))

    a2 = _statistics(resnet.norm2, first_conv())

    def run():
        conv1, conv2 = _CausalStream(resnet.conv1), _CausalStream(resnet.conv2)
        short = _CausalStream(resnet.conv_shortcut) if resnet.conv_shortcut is not None else None
        for x in source():
            h = conv2(_normed(conv1(_normed(x, a1)), a2))
            yield h.add_(short(x) if short is not None else x)  # stride 1: same frames in as out

    return run


def _conv_stage(conv, source: Chunks) -> Chunks:
    def run():
        stream = _CausalStream(conv)
        for x in source():
            y = stream(x)
            if y.numel():
                yield y
    return run


def _chunks_of(tensor: torch.Tensor, frames: int) -> Chunks:
    return lambda: (tensor[:, :, i:i + frames] for i in range(0, tensor.shape[2], frames))


def _collect(source: Chunks, frames: int) -> torch.Tensor:
    """Run a stage pass and keep its ``frames`` output frames whole (written in place, no cat)."""
    out, at = None, 0
    for y in source():
        if out is None:
            out = y.new_empty((y.shape[0], y.shape[1], frames) + tuple(y.shape[3:]))
        out[:, :, at:at + y.shape[2]] = y
        at += y.shape[2]
    if at != frames:
        raise RuntimeError(f"streamed hint encoder produced {at} frames, expected {frames}")
    return out


def _frames_after(conv, frames: int) -> int:
    """Output frames of a causal conv (k-1 frames of front padding, stride s): (F - 1) // s + 1."""
    return (frames - 1) // conv.conv.stride[0] + 1


def streamed_forward(encoder, video: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """``encoder(video)`` computed ``chunk_frames`` frames at a time (see the module docstring)."""
    video = video.to(encoder.conv_in.conv.weight.dtype)
    frames = _frames_after(encoder.conv_in, video.shape[2])
    source = _conv_stage(encoder.conv_in, _chunks_of(video, chunk_frames))
    for block in encoder.down_blocks:
        for resnet in block.resnets:
            source = _resnet_stage(resnet, source)
        for down in block.downsamplers or ():
            source = _conv_stage(down.conv, source)
            frames = _frames_after(down.conv, frames)
        source = _chunks_of(_collect(source, frames), chunk_frames)  # a block's output is kept whole
    return _collect(_conv_stage(encoder.conv_out, source), _frames_after(encoder.conv_out, frames))
