"""UniAnimate-DiT's long-video sliding windows over latent frames.

The official long pipeline (``WanUniAnimateLongVideoPipeline``) denoises windows of
``context_size`` latent frames (21 = 81 video frames) that overlap by ``context_overlap``
(4) frames:

* window starts are 0, s, 2s, ... (``s = size - overlap``) while ``start < n - overlap``;
  the last window is then replaced by the final ``size`` frames ``[n - size, n)``;
* every window sees the same image condition (the reference is its first frame) and
  its own slice of the pose video, pixel frames ``[4 * first, 4 * last]``;
* the first ``PRIVATE_FRAMES`` (2) latent frames of every window (the first one included)
  are private: the window keeps its own state for them (initialised with fresh noise),
  feeds that state to the model instead of the shared latents, and keeps its stepped
  values for the next step;
* after each step the shared latents are the plain average of the stepped windows:
  window 0 contributes all its frames (its private ones too, nobody else writes them),
  every later window only frames ``2 .. size-1``.

A video of at most ``context_size`` latent frames is one plain (short-pipeline) window
with no private frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..runtime.images import round_up_frames as _round_up

CONTEXT_SIZE = 21
CONTEXT_OVERLAP = 4
PRIVATE_FRAMES = 2
TEMPORAL_STRIDE = 4  # video frames per latent frame (after the first)


def latent_frames(num_frames: int) -> int:
    """Latent frames of a ``4k+1`` video."""
    if num_frames < 1 or (num_frames - 1) % TEMPORAL_STRIDE:
        raise ValueError(f"num_frames must be 4k+1 (1, 5, 9, ... 81, ...), got {num_frames}.")
    return (num_frames - 1) // TEMPORAL_STRIDE + 1


def round_up_frames(num_frames: int) -> int:
    """The smallest ``4k+1`` frame count that holds ``num_frames`` frames."""
    return _round_up(num_frames, TEMPORAL_STRIDE)


@dataclass(frozen=True)
class Window:
    """One window: its latent frame indices, its private leading frames, what it writes back."""

    frames: tuple[int, ...]
    private: int  # leading frames fed from the window's own state (0 for short videos)
    skip: int     # leading frames not written back (0 for the first window)

    @property
    def first(self) -> int:
        return self.frames[0]

    @property
    def last(self) -> int:
        return self.frames[-1]

    @property
    def pose_pixel_slice(self) -> tuple[int, int]:
        """Pose video frames ``[start, stop)`` this window is conditioned on."""
        return self.first * TEMPORAL_STRIDE, self.last * TEMPORAL_STRIDE + 1

    @property
    def contributes(self) -> tuple[int, ...]:
        """Latent frames (global indices) this window writes into the average."""
        return self.frames[self.skip:]


def window_starts(num_latent: int, size: int = CONTEXT_SIZE, overlap: int = CONTEXT_OVERLAP) -> list[int]:
    """Start frame of every window (official rule, last window aligned to the end)."""
    _check(num_latent, size, overlap)
    if num_latent <= size:
        return [0]
    starts = list(range(0, num_latent - overlap, size - overlap))
    starts[-1] = num_latent - size
    return starts


def plan_windows(num_latent: int, size: int = CONTEXT_SIZE, overlap: int = CONTEXT_OVERLAP,
                 private: int = PRIVATE_FRAMES) -> list[Window]:
    """The official window plan for ``num_latent`` latent frames.

    ``num_latent <= size``: one window over every frame, nothing private (short pipeline).
    """
    starts = window_starts(num_latent, size, overlap)
    if len(starts) == 1 and num_latent <= size:
        return [Window(tuple(range(num_latent)), 0, 0)]
    if not 0 <= private < size:
        raise ValueError(f"context_size must be larger than the {private} private frames of a window, got {size}.")
    if overlap < private:
        raise ValueError(f"context_overlap must be at least {private} (each window's first {private} latent frames are "
                         f"private, a smaller overlap leaves frames no window writes), got {overlap}.")
    return [Window(tuple(range(s, s + size)), private, 0 if i == 0 else private) for i, s in enumerate(starts)]


def blend_counts(windows: list[Window], num_latent: int) -> torch.Tensor:
    """How many windows write each latent frame (``[num_latent]`` int64); all must be >= 1."""
    counts = torch.zeros(num_latent, dtype=torch.int64)
    for w in windows:
        counts[list(w.contributes)] += 1
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"window plan leaves latent frames {missing} uncovered.")
    return counts


class WindowBlender:
    """Accumulates stepped window latents and returns their average (fp32 accumulation)."""

    def __init__(self, like: torch.Tensor, windows: list[Window]):
        self.sum = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
        self.counts = blend_counts(windows, like.shape[2]).to(like.device)
        self.dtype = like.dtype

    def add(self, window: Window, stepped: torch.Tensor) -> None:
        """``stepped``: the window's latents after the scheduler step ``[B, C, size, h, w]``."""
        idx = list(window.contributes)
        self.sum[:, :, idx] += stepped[:, :, window.skip:].float()

    def result(self) -> torch.Tensor:
        return (self.sum / self.counts.view(1, 1, -1, 1, 1).float()).to(self.dtype)


def _check(num_latent: int, size: int, overlap: int) -> None:
    if num_latent < 1:
        raise ValueError(f"need at least one latent frame, got {num_latent}.")
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"context_size must be >= 1 and 0 <= context_overlap < context_size, got {size}, {overlap}.")
