"""The whole pose stage in one call: detect, align, render (what the demo and the headless job run).

Inside ComfyUI the same steps are separate nodes so every intermediate is inspectable.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import align, detect, frames, render
from .keypoints import PoseFrame

# Each alignment mode's natural drawing style (what that model was trained on).
STYLE_FOR_MODE = {"none": "openpose", "unianimate": "unianimate", "one_to_all_ref": "one_to_all", "one_to_all_pose": "one_to_all"}


class NoPersonError(ValueError):
    """The reference image shows nobody the detector can find."""


@dataclass
class PoseStageResult:
    reference_pose: PoseFrame
    driving_poses: list[PoseFrame]
    aligned: align.AlignResult
    driving_frames: np.ndarray   # (T, H, W, 3) uint8, prepared to the reference aspect
    pose_video: np.ndarray       # (T, H, W, 3) uint8, rendered aligned poses
    detected_video: np.ndarray   # (T, H, W, 3) uint8, rendered raw detections


def run_pose_stage(reference_image, driving_video, detector, mode: str = "unianimate", style: str | None = None,
                   every_nth: int = 1, max_frames: int = 0, person: str = "largest", missing: str = "hold_last",
                   callback=None, render_options: dict | None = None) -> PoseStageResult:
    reference = frames.to_uint8_rgb(reference_image, "reference image")[0]
    ref_h, ref_w = reference.shape[:2]
    width, height = frames.floor_to_multiple(ref_w), frames.floor_to_multiple(ref_h)
    reference = frames.fit_image(reference, width, height)
    driving = frames.prepare_driving(driving_video, (width, height), every_nth, max_frames)
    ref_pose = detect.detect_video(detector, reference[None], person=person, missing="empty")[0]
    if ref_pose.num_people == 0:
        raise NoPersonError("No person found in the reference image; use a picture where the character's body is visible.")
    driving_poses = detect.detect_video(detector, driving, person=person, missing=missing, callback=callback)
    result = align.align_poses(driving_poses, ref_pose, mode, reference)
    style = style or STYLE_FOR_MODE[mode]
    options = render_options or {}
    pose_video = render.render_poses(result.frames, style, width, height, **options)
    detected = render.render_poses(driving_poses, "openpose", width, height)
    return PoseStageResult(ref_pose, driving_poses, result, driving, pose_video, detected)
