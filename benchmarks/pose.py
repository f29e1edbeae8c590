"""Pose-stage figures (issue: foundation and pose stack). Prints one `name: value` line per figure.

    pose_render_fps            rendering at 832x480, openpose style, frames per second (target >= 200)
    pose_render_fps_<style>    the same for the other styles
    pose_detect_fps            embedded-default (mediapipe) detection, frames per second
    pose_detect_overhead       the pack's detection time over the raw detector's own time, same frames (target <= 1.2)
    pose_stage_peak_over_input peak RSS of the pose stage over the bytes of its input IMAGEs: 300-frame 1080x1920
                               clip, 3024x4032 reference, the largest of the UniAnimate graph, the One-to-All
                               graph and the headless stage (target <= 1.5; pose_stage_bench.py)
    unianimate_pose_limb_px_official / _min / _max
                               UniAnimate upper-arm width at the 480p model input: the official drawing, and the
                               smallest / largest through our path for 512x768, 1080x1920 and 3024x4032 references

    pose_jitter_reduction      mean keypoint acceleration with One-Euro smoothing (strength 0.5) over raw, same clip
    pose_smooth_lag_px         mean keypoint displacement the smoothing causes (pose_smooth_bench.py)

    --frames N sets the clip length of the memory figure (default 300; it needs ~12 GB of RAM).
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from pack_loader import load_pack  # noqa: E402


def main() -> None:
    load_pack()
    from pose_detect_bench import measure_detect
    from pose_render_bench import measure_render_fps
    from pose_stage_bench import limb_widths, stage_ratios

    frames = int(sys.argv[sys.argv.index("--frames") + 1]) if "--frames" in sys.argv else 300
    for name, value in limb_widths().items():
        print(f"{name}: {value:.2f}")
    ratios = stage_ratios(frames)
    for kind, value in ratios.items():
        print(f"pose_stage_peak_over_input_{kind}: {value:.3f}")
    print(f"pose_stage_peak_over_input: {max(ratios.values()):.3f}")

    from poseanimate.pose import sample_media

    print(f"pose_render_fps: {measure_render_fps(832, 480, style='openpose'):.1f}")
    for style in ("unianimate", "one_to_all"):
        print(f"pose_render_fps_{style}: {measure_render_fps(832, 480, style=style):.1f}")
    try:
        clip = sample_media.sample_driving_clip(48)
        figures = measure_detect(clip)
    except ImportError as exc:
        print(f"# detection figures skipped: {exc}")
        return
    for name in ("pose_detect_fps", "pose_detect_overhead"):
        print(f"{name}: {figures[name]:.3f}")
    from pose_smooth_bench import measure_jitter

    jitter = measure_jitter(clip)
    for name in ("pose_jitter_reduction", "pose_smooth_lag_px"):
        print(f"{name}: {jitter[name]:.3f}")


if __name__ == "__main__":
    main()
