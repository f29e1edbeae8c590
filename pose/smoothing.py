"""One-Euro filtering of keypoints over time, per track, before alignment.

Why: detectors jitter by a few pixels from frame to frame and the models draw every wobble. The
One-Euro filter (Casiez, Roussel, Vogel, CHI 2012) is a low-pass filter whose cut-off rises with
the point's speed: still points are smoothed hard, fast limbs follow with little lag.

Per point, with ``dt`` in frames: ``a(fc) = 1 / (1 + 1 / (2 pi fc dt))``; the speed is
low-passed with ``d_cutoff``; ``fc = min_cutoff + beta * |speed|``; ``x_hat = x_hat + a (x - x_hat)``.
``strength`` in 0..1 sets ``min_cutoff = 0.4 * 40 ** -strength`` cycles per frame (0.4: barely
filtered, 0.063 at 0.5, 0.01 at 1) with ``beta = 4`` and ``d_cutoff = 0.2`` (coordinates are
canvas-normalised). A missing point (score below the keep threshold) stays missing and its
filter restarts when it comes back; a track unseen for more than ``max_gap`` frames restarts too.
Scores are not changed.
"""
from __future__ import annotations

import math

import numpy as np

from .keypoints import KEEP_THRESHOLD, PoseFrame

BETA = 4.0
D_CUTOFF = 0.2
MAX_GAP = 4


def min_cutoff(strength: float) -> float:
    return 0.4 * 40.0 ** (-float(strength))


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    return 1.0 / (1.0 + 1.0 / (2.0 * math.pi * np.asarray(cutoff) * dt))


def one_euro(points: np.ndarray, times: np.ndarray, strength: float = 0.5, max_gap: int = MAX_GAP) -> np.ndarray:
    """Filter one track: ``points`` (T, N, 3) normalised (x, y, score) at frame ``times`` (T,)."""
    out = np.array(points, dtype=np.float32, copy=True)
    if not 0.0 < float(strength) <= 1.0 or len(out) < 2:
        return out
    mc = min_cutoff(strength)
    n = out.shape[1]
    x_hat = np.zeros((n, 2))
    dx_hat = np.zeros((n, 2))
    alive = np.zeros(n, bool)
    last_t = None
    for k in range(len(out)):
        t = int(times[k])
        ok = out[k, :, 2] >= KEEP_THRESHOLD
        if last_t is None or t - last_t > max_gap:
            alive[:] = False
        dt = float(max(t - last_t, 1)) if last_t is not None else 1.0
        x = out[k, :, :2].astype(np.float64)
        fresh = ok & ~alive
        x_hat[fresh], dx_hat[fresh] = x[fresh], 0.0
        run = ok & alive
        if run.any():
            dx = (x[run] - x_hat[run]) / dt
            dx_hat[run] += _alpha(D_CUTOFF, dt) * (dx - dx_hat[run])
            cutoff = mc + BETA * np.linalg.norm(dx_hat[run], axis=1, keepdims=True)
            x_hat[run] += _alpha(cutoff, dt) * (x[run] - x_hat[run])
            out[k, run, :2] = x_hat[run]
        alive = ok  # a point missing now restarts when it returns
        last_t = t
    return out


def smooth_tracks(frames: list[PoseFrame], ids: list[list[int]], strength: float = 0.5) -> list[PoseFrame]:
    """Frames with every track filtered on its own (``ids[t][p]``: track of ``frames[t].people[p]``)."""
    if not strength:
        return frames
    out = [f.copy() for f in frames]
    tracks: dict[int, list[tuple[int, int]]] = {}
    for t, fids in enumerate(ids):
        for p, tid in enumerate(fids):
            tracks.setdefault(tid, []).append((t, p))
    for where in tracks.values():
        times = np.array([t for t, _ in where])
        points = np.stack([frames[t].people[p] for t, p in where])
        filtered = one_euro(points, times, strength)
        for (t, p), pts in zip(where, filtered):
            out[t].people[p] = pts
    return out


def jitter(frames: list[PoseFrame], person: int = 0) -> float:
    """Mean frame-to-frame acceleration |x[t+1] - 2 x[t] + x[t-1]| of a person's keypoints, in
    canvas pixels, over points seen in all three frames."""
    total, count = 0.0, 0
    for a, b, c in zip(frames, frames[1:], frames[2:]):
        if min(a.num_people, b.num_people, c.num_people) <= person:
            continue
        pa, pb, pc = (f.people[person] for f in (a, b, c))
        ok = (pa[:, 2] >= KEEP_THRESHOLD) & (pb[:, 2] >= KEEP_THRESHOLD) & (pc[:, 2] >= KEEP_THRESHOLD)
        acc = (pc[ok, :2] - 2 * pb[ok, :2] + pa[ok, :2]) * np.array([b.width, b.height])
        total += float(np.linalg.norm(acc, axis=1).sum())
        count += int(ok.sum())
    return total / count if count else 0.0
