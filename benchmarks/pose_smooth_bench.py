"""Keypoint jitter with and without the One-Euro smoothing of pose/smoothing.py, on a clip.

The clip is the pack's sample driving clip (scikit-image's astronaut swaying, 48 frames),
detected by the embedded mediapipe detector (the detector's own frame-to-frame noise is what
the filter removes). ``pose_jitter_reduction`` = mean keypoint acceleration |x[t+1] - 2x[t] +
x[t-1]| (pixels) of the smoothed poses over that of the raw ones, at the given strength
(default 0.5). Lower is smoother; ``pose_smooth_lag_px`` is the mean distance between smoothed
and raw points (how far the filter pulls points off the detections).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pack_loader import load_pack  # noqa: E402

load_pack()

from poseanimate.pose import detect, sample_media, smoothing  # noqa: E402
from poseanimate.pose.keypoints import KEEP_THRESHOLD  # noqa: E402


def measure_jitter(clip, strength: float = 0.5) -> dict:
    """pose_jitter_reduction (mean keypoint acceleration, smoothed over raw) and pose_smooth_lag_px on
    ``clip`` with the embedded detector; also the raw / smoothed jitter in pixels."""
    detector = detect.load_detector("mediapipe")
    raw = detect.detect_video(detector, clip, person="largest", missing="hold_last")
    smooth = detect.detect_video(detector, clip, person="largest", missing="hold_last", smoothing=strength)
    before, after = smoothing.jitter(raw), smoothing.jitter(smooth)
    lag = []
    for r, s in zip(raw, smooth):
        if r.num_people and s.num_people:
            ok = r.people[0][:, 2] >= KEEP_THRESHOLD
            lag.append(np.linalg.norm((r.people[0][ok, :2] - s.people[0][ok, :2]) * [r.width, r.height], axis=1))
    return {"jitter_raw_px": before, "jitter_smoothed_px": after,
            "pose_jitter_reduction": after / before if before else float("nan"),
            "pose_smooth_lag_px": float(np.concatenate(lag).mean()) if lag else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--strength", type=float, default=0.5)
    args = ap.parse_args()
    clip = sample_media.sample_driving_clip(args.frames)
    f = measure_jitter(clip, args.strength)
    print(f"# {args.frames} frames {clip.shape[2]}x{clip.shape[1]}, mediapipe, strength {args.strength}: "
          f"jitter raw {f['jitter_raw_px']:.3f} px, smoothed {f['jitter_smoothed_px']:.3f} px", flush=True)
    print(f"pose_jitter_reduction: {f['pose_jitter_reduction']:.3f}")
    print(f"pose_smooth_lag_px: {f['pose_smooth_lag_px']:.3f}")


if __name__ == "__main__":
    main()
