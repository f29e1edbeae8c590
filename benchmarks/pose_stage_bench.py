"""Pose-stage memory and UniAnimate line widths at real sizes.

``pose_stage_peak_over_input``: the pose stage of a shipped workflow, run through the real node
classes in the workflow's order and with every output kept alive (as ComfyUI's cache keeps
them), on a float32 IMAGE driving clip (default 300 frames, 1080x1920) and a 3024x4032
reference. The figure is the process's peak resident memory during the stage, counted from
before the inputs existed, over the bytes of the input IMAGEs (<= 1.5: the stage itself adds at
most half its input). The detector is a fast stand-in (a real one takes minutes on a CPU and
its memory is the model's, not the stage's): it reads each frame's pixels and returns a
moving person. Each kind runs in its own process, so peaks do not mix:

    python benchmarks/pose_stage_bench.py unianimate 300     # prints "ratio: <value>"

``unianimate_pose_limb_px_*``: the upper-arm width at the model input of 480p, through Align
Poses -> Render Poses -> the UniAnimate sampler's resize, for references of 512x768, 1080x1920
and 3024x4032, and for the official drawing (768x512 canvas, PIL bilinear to the official size).
"""
from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REFERENCE_SIZES = [(512, 768), (1080, 1920), (3024, 4032)]
KINDS = ("unianimate", "one_to_all", "headless")


def _pack():
    if "poseanimate" not in sys.modules:
        sys.path.insert(0, str(HERE.parent))
        from pack_loader import load_pack

        load_pack()
    import poseanimate

    return poseanimate


class StandInDetector:
    """Reads a few pixels of every frame (so frames really pass through) and returns one person
    whose position follows the frame's brightness."""

    name = "stand-in"

    def detect_batch(self, images: np.ndarray):
        from poseanimate.pose.keypoints import PoseFrame
        from poseanimate.pose.sample_media import standing_person

        out = []
        for image in images:
            shift = float(image[:8, :8].mean()) / 255.0 * 0.1 - 0.05
            out.append(PoseFrame(image.shape[1], image.shape[0], standing_person(0.8, shift)[None]))
        return out


def _inputs(frames: int, size=(1080, 1920), reference=(3024, 4032)):
    import torch

    w, h = size
    video = torch.empty((frames, h, w, 3), dtype=torch.float32)
    ramp = torch.linspace(0, 1, w).view(1, w, 1)
    for i in range(frames):  # touch every page, a different picture per frame
        video[i] = ramp * ((i % 50) / 50.0)
    rw, rh = reference
    image = torch.empty((1, rh, rw, 3), dtype=torch.float32)
    image[0] = torch.linspace(0, 1, rh).view(rh, 1, 1)
    return video, image


def _run_graph(kind: str, video, image) -> dict:
    """The pose part of workflows/<kind>.json, node by node, outputs kept (ComfyUI's cache)."""
    from poseanimate.nodes.pose import AlignPoses, DetectPoses, PrepareDrivingVideo, RenderPoses

    cache = {}
    detector = StandInDetector()
    mode, style, fit = (("unianimate", "unianimate", "keep") if kind == "unianimate"
                        else ("one_to_all_ref", "one_to_all", "crop"))
    cache["ref_pose"] = DetectPoses().detect(image, detector, "largest", "hold_last", 8)
    cache["prepared"] = PrepareDrivingVideo().prepare(video, 1, 0, 0, 0, fit, reference_pose=cache["ref_pose"][0])
    cache["driving_poses"] = DetectPoses().detect(cache["prepared"][0], detector, "largest", "hold_last", 8)
    cache["aligned"] = AlignPoses().align(cache["driving_poses"][0], cache["ref_pose"][0], mode, 0, image)
    cache["pose_video"] = RenderPoses().render(cache["aligned"][0], style, 0, 0, True, True, style == "one_to_all")
    cache["reference_pose_image"] = RenderPoses().render(cache["aligned"][1], style, 0, 0, True, True, False)
    return cache


def _run_headless(video, image):
    from poseanimate.pose import stage

    return stage.run_pose_stage(image, video, StandInDetector(), mode="unianimate")


def stage_ratio(kind: str, frames: int) -> float:
    """Run in a fresh process: peak RSS (from before the inputs) over the input IMAGE bytes."""
    sys.path.insert(0, str(HERE))
    from peak_memory import peak_rss_growth, rss_bytes

    _pack()
    import torch  # noqa: F401  (imported before the baseline: its own pages are not the stage's)
    from poseanimate.nodes import pose  # noqa: F401
    from poseanimate.pose import stage  # noqa: F401

    gc.collect()
    base = rss_bytes()
    video, image = _inputs(frames)
    input_bytes = video.nbytes + image.nbytes
    before = rss_bytes()
    growth, result = peak_rss_growth(lambda: _run_headless(video, image) if kind == "headless"
                                     else _run_graph(kind, video, image))
    del result
    return (before - base + growth) / input_bytes


def stage_ratios(frames: int = 300) -> dict:
    """Each kind in its own subprocess; the figure is the largest."""
    out = {}
    for kind in KINDS:
        run = subprocess.run([sys.executable, str(Path(__file__).resolve()), kind, str(frames)],
                             capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"pose stage benchmark ({kind}) failed:\n{run.stderr[-3000:]}")
        out[kind] = float(run.stdout.strip().splitlines()[-1].split(":")[1])
    return out


def limb_widths() -> dict:
    """Upper-arm width (px) at the 480p model input: official, and through our path per reference."""
    _pack()
    from poseanimate.models.unianimate import pipeline
    from poseanimate.nodes.pose import AlignPoses, RenderPoses
    from poseanimate.pose import keypoints as kp
    from poseanimate.pose import measure, render
    from poseanimate.pose.sample_media import standing_person

    def arm(image, frame):
        h, w = image.shape[:2]
        pts = frame.people[0][:, :2] * (w, h)
        return measure.line_width(image, pts[2], pts[3])

    ours, official = [], None
    driving = kp.frames_to_pose_keypoint([kp.PoseFrame(1080, 1920, standing_person(0.8, 0.05)[None])])
    for ref_w, ref_h in REFERENCE_SIZES:
        reference = kp.frames_to_pose_keypoint([kp.PoseFrame(ref_w, ref_h, standing_person()[None])])
        aligned = AlignPoses().align(driving, reference, "unianimate", 0)[0]
        (images,) = RenderPoses().render(aligned, "unianimate", 0, 0, True, True, False)
        uint8 = np.clip(np.rint(images.numpy() * 255), 0, 255).astype(np.uint8)
        model_input = pipeline.resize_frames(uint8, *pipeline.output_size(ref_w, ref_h, "480p"))[0]
        frame = kp.frames_from_pose_keypoint(aligned)[0]
        ours.append(arm(model_input, frame))
        if official is None:
            canvas = render.render_pose(frame, "unianimate", 512, 768, official_canvas=False)
            official = arm(pipeline.resize_frames(canvas[None], *pipeline.OFFICIAL_SIZES["480p"])[0], frame)
    return {"unianimate_pose_limb_px_official": official, "unianimate_pose_limb_px_min": min(ours),
            "unianimate_pose_limb_px_max": max(ours)}


if __name__ == "__main__":
    print(f"ratio: {stage_ratio(sys.argv[1], int(sys.argv[2])):.3f}")
