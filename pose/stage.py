"""The whole pose stage in one call: detect, align, render (what the demo and the headless job run).

Inside ComfyUI the same steps are separate nodes so every intermediate is inspectable. Both
follow the same rules: the reference is detected (and checked) before the driving video; the
driving frames are never upsized to the reference's size (UniAnimate keeps their framing,
One-to-All crops them to the reference's aspect); frames stay uint8; poses are drawn at the
style's working size (UniAnimate's official 768x512 canvas, One-to-All's short-side-768 canvas).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import align, detect, frames, render
from .keypoints import PoseFrame
from .reference import NoPersonError, detect_reference, require_person

# Each alignment mode's natural drawing style (what that model was trained on).
STYLE_FOR_MODE = {"none": "openpose", "unianimate": "unianimate", "one_to_all_ref": "one_to_all", "one_to_all_pose": "one_to_all"}
# How each mode frames the driving video before detection (see frames.driving_plan).
FIT_FOR_MODE = {"none": "keep", "unianimate": "keep", "one_to_all_ref": "crop", "one_to_all_pose": "crop"}

__all__ = ["FIT_FOR_MODE", "NoPersonError", "PoseStageResult", "STYLE_FOR_MODE", "run_pose_stage"]


@dataclass
class PoseStageResult:
    reference_pose: PoseFrame
    driving_poses: list[PoseFrame]
    aligned: align.AlignResult
    driving_frames: np.ndarray   # (T, H, W, 3) uint8, the frames the detector saw (never upsized)
    pose_video: np.ndarray       # (T, H, W, 3) uint8, rendered aligned poses at the style's working size
    detected_video: np.ndarray   # (T, H, W, 3) uint8, rendered raw detections at the working size


def run_pose_stage(reference_image, driving_video, detector, mode: str = "unianimate", style: str | None = None,
                   every_nth: int = 1, max_frames: int = 0, person: str = "largest", missing: str = "hold_last",
                   callback=None, render_options: dict | None = None, anchor_frame: int | str = 0,
                   rescale: bool = True) -> PoseStageResult:
    if mode not in align.MODES:
        raise ValueError(f"unknown alignment mode {mode!r}; use one of {', '.join(align.MODES)}")
    reference = frames.to_uint8_rgb(reference_image, "reference image")[0]
    ref_pose = require_person(detect_reference(detector, reference, person)[0])
    ref_h, ref_w = reference.shape[:2]
    driving = frames.prepare_driving(driving_video, (ref_w, ref_h), every_nth, max_frames, mode=FIT_FOR_MODE[mode])
    driving_poses = detect.detect_video(detector, driving, person=person, missing=missing, callback=callback)
    result = align.align_poses(driving_poses, ref_pose, mode, reference, anchor_frame, rescale=rescale)
    style = style or STYLE_FOR_MODE[mode]
    canvas = result.frames[0]
    pose_video = render.render_poses(result.frames, style, *render.working_size(style, canvas.width, canvas.height),
                                     **(render_options or {}))
    detected = render.render_poses(driving_poses, "openpose",
                                   *render.working_size("openpose", driving.shape[2], driving.shape[1]))
    return PoseStageResult(ref_pose, driving_poses, result, driving, pose_video, detected)
