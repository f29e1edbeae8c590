"""Pose rendering speed (imported by benchmarks/pose.py; also runnable on its own).

    python benchmarks/pose_render_bench.py [width height frames]

prints `pose_render_fps_<style>: <frames per second>` for every style, measured with
``render_poses`` (its thread pool) on a synthetic moving whole-body person.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

# A standing person facing the camera, normalised to a portrait-ish box (x, y).
_BODY = [(0.50, 0.16), (0.50, 0.26), (0.40, 0.27), (0.35, 0.40), (0.33, 0.52), (0.60, 0.27), (0.65, 0.40),
         (0.67, 0.52), (0.44, 0.55), (0.43, 0.72), (0.43, 0.88), (0.56, 0.55), (0.57, 0.72), (0.57, 0.88),
         (0.48, 0.14), (0.52, 0.14), (0.46, 0.15), (0.54, 0.15)]
_FEET = [(0.59, 0.92), (0.61, 0.91), (0.56, 0.90), (0.41, 0.92), (0.39, 0.91), (0.44, 0.90)]


def _hand(wrist: tuple[float, float], direction: float) -> list[tuple[float, float]]:
    pts = [wrist]
    for finger in range(5):
        ang = direction + (finger - 2) * 0.3
        for joint in range(1, 5):
            r = 0.012 * joint + 0.01
            pts.append((wrist[0] + r * math.cos(ang) * 0.6, wrist[1] + r * math.sin(ang)))
    return pts


def _face() -> list[tuple[float, float]]:
    return [(0.50 + 0.045 * math.cos(math.pi * k / 33.5), 0.16 + 0.05 * math.sin(math.pi * k / 33.5))
            for k in range(68)]


def synthetic_frames(count: int, width: int, height: int):
    """``count`` PoseFrames of one person swaying and waving (deterministic)."""
    from poseanimate.pose.keypoints import PoseFrame

    frames = []
    for t in range(count):
        phase = 2 * math.pi * t / 24
        body = list(_BODY)
        body[4] = (0.33 + 0.05 * math.sin(phase), 0.52 - 0.15 * (1 + math.sin(phase)) / 2)
        body[7] = (0.67 - 0.05 * math.sin(phase), 0.52 - 0.10 * (1 + math.cos(phase)) / 2)
        pts = body + _FEET + _face() + _hand(body[7], math.pi / 2) + _hand(body[4], math.pi / 2)
        arr = np.array([(x + 0.03 * math.sin(phase + 0.1 * i) * 0.2, y, 0.9) for i, (x, y) in enumerate(pts)],
                       np.float32)
        arr[:, 0] += 0.05 * math.sin(phase / 2)
        frames.append(PoseFrame(width, height, arr[None]))
    return frames


def measure_render_fps(width: int = 832, height: int = 480, frames: int = 96, style: str = "openpose",
                       repeats: int = 3, threads: int | None = None) -> float:
    """Best of ``repeats`` runs of render_poses over ``frames`` frames, in frames per second."""
    from pack_loader import load_pack

    load_pack()
    from poseanimate.pose.render import render_poses

    poses = synthetic_frames(frames, width, height)
    render_poses(poses[:4], style, threads=threads)  # warm-up (buffers, thread start)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        render_poses(poses, style, threads=threads)
        best = min(best, time.perf_counter() - start)
    return frames / best


def main(argv: list[str]) -> None:
    width, height, frames = (int(v) for v in argv[:3]) if len(argv) >= 3 else (832, 480, 96)
    from pack_loader import load_pack

    load_pack()
    from poseanimate.pose.render import STYLES

    for style in STYLES:
        print(f"pose_render_fps_{style}: {measure_render_fps(width, height, frames, style):.1f}")
    single = measure_render_fps(width, height, frames, "one_to_all", threads=1)
    print(f"pose_render_fps_one_to_all_1thread: {single:.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
