"""Context windows: run the whole UNet (+ControlNet) on overlapping frame windows.

Why: AnimateDiff motion modules are trained on 16 frames and memory grows with the
frame count; sliding windows keep memory flat for videos of any length. The window
schedules, fuse weights and FreeNoise shuffle follow ComfyUI-AnimateDiff-Evolved
(ADE) as recorded in tests/fixtures/reference/animatediff/context_windows.json
(README section 3), with one deliberate difference: windows that ADE builds wrongly
(indices past the last frame or repeated frames, only possible with
``context_stride`` > 1) are dropped instead of being evaluated, and a frame that
is then left uncovered gets a plain contiguous window appended.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("standard_static", "standard_uniform", "looped_uniform", "batched")
FUSE_METHODS = ("pyramid", "flat", "overlap-linear", "relative")


@dataclass(frozen=True)
class ContextOptions:
    """What ADE's context-options nodes configure (defaults: its UI defaults)."""

    context_length: int = 16
    context_overlap: int = 4
    context_stride: int = 1
    schedule: str = "standard_static"
    closed_loop: bool = False
    fuse_method: str = "pyramid"
    use_on_equal_length: bool = False

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Unknown context schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}.")
        if self.fuse_method not in FUSE_METHODS:
            raise ValueError(f"Unknown fuse method {self.fuse_method!r}; use one of {', '.join(FUSE_METHODS)}.")
        if self.context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {self.context_length}.")
        if not 0 <= self.context_overlap < self.context_length:
            raise ValueError(
                f"context_overlap must be in 0..context_length-1 (context_length={self.context_length}), got {self.context_overlap}."
            )
        if self.context_stride < 1:
            raise ValueError(f"context_stride must be >= 1, got {self.context_stride}.")
        if self.fuse_method == "relative" and self.schedule != "standard_static":
            raise ValueError("fuse_method 'relative' is only defined for the standard_static schedule (as in ADE).")


def ordered_halving(step: int) -> float:
    """Bit-reversed step over 2**64: 0, 1/2, 1/4, 3/4, 1/8, ... (spreads uniform offsets)."""
    reversed_bits = int(format(int(step) & ((1 << 64) - 1), "064b")[::-1], 2)
    return reversed_bits / float(1 << 64)


def sliding_active(num_frames: int, opts: ContextOptions) -> bool:
    """Windows only when the video is longer than one window (or equal, if asked)."""
    if opts.use_on_equal_length:
        return num_frames >= opts.context_length
    return num_frames > opts.context_length


def _uniform_raw(num_frames: int, opts: ContextOptions, step: int, looped: bool) -> list[list[int]]:
    """Dilated uniform windows with a per-step offset, wrapping modulo the length."""
    length, overlap = opts.context_length, opts.context_overlap
    levels = min(opts.context_stride, int(math.ceil(math.log2(num_frames / length))) + 1)
    frac = ordered_halving(step)
    pad = int(round(num_frames * frac))
    stop = num_frames + pad - (0 if (looped and opts.closed_loop) else overlap)
    windows = []
    for level in range(levels):
        dilation = 1 << level
        first = int(frac * dilation) + pad
        for start in range(first, stop, length * dilation - overlap):
            windows.append([(start + k * dilation) % num_frames for k in range(length)])
    return windows


def _rolls_over(window: list[int], num_frames: int) -> int:
    """Position where a wrapped window restarts from a lower frame, or -1."""
    for pos in range(1, len(window)):
        if window[pos] % num_frames < window[pos - 1] % num_frames:
            return pos
    return -1


def _standard_uniform(num_frames: int, opts: ContextOptions, step: int) -> list[list[int]]:
    """Uniform windows where wrapped ones are slid to end at the last frame, then de-duplicated."""
    windows = _uniform_raw(num_frames, opts, step, looped=False)
    keep = []
    i = 0
    while i < len(windows):
        window = windows[i]
        pos = _rolls_over(window, num_frames)
        if pos >= 0:
            lost = window[pos]
            origin = window[0]
            rebased = [(v - origin + num_frames) % num_frames for v in window]
            shift = num_frames - 1 - rebased[-1]
            windows[i] = window = [v + shift for v in rebased]
            following = windows[(i + 1) % len(windows)]
            if lost not in following:
                windows.insert(i + 1, list(range(lost, lost + opts.context_length)))
        if window not in windows[:i]:
            keep.append(window)
        i += 1
    return keep


def _static(num_frames: int, opts: ContextOptions) -> list[list[int]]:
    length = opts.context_length
    windows = []
    for start in range(0, num_frames, length - opts.context_overlap):
        if start + length >= num_frames:
            windows.append(list(range(num_frames - length, num_frames)))
            break
        windows.append(list(range(start, start + length)))
    return windows


def _is_valid(window: list[int], num_frames: int) -> bool:
    return all(0 <= v < num_frames for v in window) and len(set(window)) == len(window)


def get_windows(num_frames: int, opts: ContextOptions, step: int = 0) -> list[list[int]]:
    """Frame-index windows for one sampler step, in evaluation order.

    ``step`` matters only for uniform schedules (their offset moves every step).
    When sliding is inactive a single window with every frame is returned.
    """
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1.")
    if not sliding_active(num_frames, opts):
        return [list(range(num_frames))]
    if opts.schedule == "standard_static":
        windows = _static(num_frames, opts)
    elif opts.schedule == "batched":
        windows = [list(range(s, min(s + opts.context_length, num_frames))) for s in range(0, num_frames, opts.context_length)]
    elif opts.schedule == "looped_uniform":
        windows = _uniform_raw(num_frames, opts, step, looped=True)
    else:
        windows = _standard_uniform(num_frames, opts, step)
    windows = [w for w in windows if _is_valid(w, num_frames)]
    return _cover_missing(windows, num_frames, opts.context_length)


def _cover_missing(windows: list[list[int]], num_frames: int, length: int) -> list[list[int]]:
    """Append contiguous windows for frames left out once invalid windows are dropped."""
    covered = set().union(*map(set, windows)) if windows else set()
    for frame in range(num_frames):
        if frame not in covered:
            start = max(0, min(frame, num_frames - length))
            window = list(range(start, min(start + length, num_frames)))
            windows.append(window)
            covered.update(window)
    return windows


def fuse_weights(window: list[int], num_frames: int, opts: ContextOptions) -> torch.Tensor:
    """Per-position weight of one window's prediction (float32, length len(window))."""
    n = len(window)
    if opts.fuse_method == "flat":
        return torch.ones(n)
    if opts.fuse_method == "overlap-linear":
        weights = torch.ones(n)
        ov = opts.context_overlap
        if ov > 0 and min(window) > 0:
            weights[:ov] = torch.linspace(1e-37, 1, ov)
        if ov > 0 and max(window) < num_frames - 1:
            weights[-ov:] = torch.linspace(1, 1e-37, ov)
        return weights
    # pyramid (and the base of 'relative', which is handled by WindowFuser)
    half = (n + 1) // 2
    ramp = list(range(1, half + 1))
    seq = ramp + ramp[::-1] if n % 2 == 0 else ramp + ramp[-2::-1]
    return torch.tensor(seq, dtype=torch.float32)


def relative_bias(window: list[int], idx: int) -> float:
    """ADE's 'relative' influence of a window on frame ``idx`` (peaks at the window centre)."""
    first, last = window[0], window[-1]
    bias = 1 - abs(idx - (first + last) / 2) / ((last - first + 1e-2) / 2)
    return max(1e-2, bias)


class WindowFuser:
    """Accumulates window predictions into a full-length result (frame axis ``dim``)."""

    def __init__(self, like: torch.Tensor, opts: ContextOptions, dim: int = 2):
        self.opts = opts
        self.dim = dim
        self.num_frames = like.shape[dim]
        self.acc = torch.zeros_like(like)
        self.relative = opts.fuse_method == "relative"
        self.counts = torch.zeros(self.num_frames, dtype=torch.float32, device=like.device)
        self.bias_total = [0.0] * self.num_frames

    def _shape(self, w: torch.Tensor) -> torch.Tensor:
        view = [1] * self.acc.ndim
        view[self.dim] = -1
        return w.to(self.acc.device, self.acc.dtype).view(view)

    def add(self, window: list[int], out: torch.Tensor) -> None:
        if self.relative:
            for pos, idx in enumerate(window):
                bias = relative_bias(window, idx)
                total = self.bias_total[idx]
                prev = self.acc.select(self.dim, idx)
                new = out.select(self.dim, pos)
                prev.copy_(prev * (total / (total + bias)) + new * (bias / (total + bias)))
                self.bias_total[idx] = total + bias
            return
        weights = fuse_weights(window, self.num_frames, self.opts)
        index = torch.tensor(window, device=self.acc.device)
        self.acc.index_add_(self.dim, index, out * self._shape(weights))
        self.counts.index_add_(0, index, weights.to(self.counts.device))

    def result(self) -> torch.Tensor:
        if self.relative:
            return self.acc
        if bool((self.counts <= 0).any()):
            missing = (self.counts <= 0).nonzero().flatten().tolist()
            raise RuntimeError(f"Context windows left frames {missing} uncovered; this is a bug in the window schedule.")
        return self.acc / self._shape(self.counts)


def freenoise(noise: torch.Tensor, opts: ContextOptions, seed: int, dim: int = 2) -> torch.Tensor:
    """FreeNoise: after each window, reuse the previous segment's noise in a seeded shuffled order.

    Frames start+L .. start+L+(L-O)-1 take the noise of frames start .. start+(L-O)-1
    permuted, window after window (ADE's ``_convert_to_freenoise``; sequential, so a
    segment may copy noise that was itself copied). Returns a new tensor.
    """
    noise = noise.clone()
    length, overlap = opts.context_length, opts.context_overlap
    total = noise.shape[dim]
    delta = length - overlap
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    for start in range(0, total - length, delta):
        place = start + length
        if place >= total:
            break
        count = min(delta, total - place)
        src = torch.arange(start, start + count)[torch.randperm(count, generator=gen)]
        moved = noise.index_select(dim, src.to(noise.device))
        noise.narrow(dim, place, count).copy_(moved)
        if count < delta:
            break
    return noise
