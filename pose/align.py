"""Pose alignment / retargeting: make the driving skeletons fit the reference character.

Each model was trained with its own recipe, so each gets its own mode:

* ``none``            pass-through (copies).
* ``unianimate``      UniAnimate's bone-ratio alignment (``align_unianimate.py``).
* ``one_to_all_ref``  Wan-Animate's ``get_retarget_pose`` + rough face alignment, One-to-All's
                      ``ref`` mode (``align_one_to_all.py``).
* ``one_to_all_pose`` One-to-All's ``pose`` mode: the reference IMAGE is warped onto the anchor
                      driving pose (with an outpainting mask), then ``align_to_pose`` rescales the
                      driving limbs (``align_one_to_all.py``).

Canvases. Points are normalised to their own canvas. The official scripts differ here, and we
follow each one:

* ``unianimate`` uses the normalised coordinates as they are, whatever the two canvases (the
  separate x and y ratios absorb an aspect change), and the result is read on the reference
  canvas - exactly what ``run_align_pose.py`` does with a 16:9 video and a portrait reference.
* the One-to-All modes first centre-crop every driving frame to the reference's aspect (the
  official ``resizecrop``, and what ``frames.prepare_driving`` does to the video), i.e. a driving
  point is re-expressed in normalised coordinates of that crop; points outside the crop get
  coordinates outside 0..1 and are kept. Both skeletons then share the reference canvas in pixels.
* ``none`` returns the driving frames untouched (own canvases).

Every output frame of the aligning modes has the reference's canvas size. Ratios are measured
on person 0 of the reference and of the anchor frame (choose with ``keypoints.select_person``
first); every person of every frame is transformed. Frames with nobody pass through empty.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .align_one_to_all import located, pick_anchor_frame, pose_mode, retarget_ref_mode, warp_points
from .align_unianimate import align_unianimate
from .frames import crop_box_for_aspect
from .keypoints import PoseFrame

MODES = ("none", "unianimate", "one_to_all_ref", "one_to_all_pose")
AUTO_ANCHOR = "auto"  # anchor_frame value: One-to-All's pick_good_source_frame chooses the frame


@dataclass
class AlignResult:
    frames: list[PoseFrame]              # aligned driving poses (same canvas size as the reference)
    reference_pose: PoseFrame            # reference pose (warped in one_to_all_pose mode)
    reference_image: np.ndarray | None   # (H, W, 3) uint8, warped in one_to_all_pose mode, else the input
    mask: np.ndarray | None              # (H, W) float32, 1 = area to outpaint (one_to_all_pose), else None
    info: dict = field(default_factory=dict)  # ratios, offsets, scale etc. for inspection
    reference_pose_image: np.ndarray | None = None  # (H, W, 3) uint8: One-to-All's reference pose drawing
    # (no face; in one_to_all_pose the drawing warped with the image, as official), else None


def _check_inputs(driving, reference, mode: str, anchor_frame: int) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown alignment mode {mode!r}; use one of {', '.join(MODES)}")
    if not isinstance(reference, PoseFrame):
        raise ValueError(f"reference must be a PoseFrame, got {type(reference).__name__}")
    if not isinstance(driving, (list, tuple)) or len(driving) == 0:
        raise ValueError("driving poses are empty: pass at least one PoseFrame (detect poses on the driving video first)")
    for i, frame in enumerate(driving):
        if not isinstance(frame, PoseFrame):
            raise ValueError(f"driving frame {i} must be a PoseFrame, got {type(frame).__name__}")
    if mode == "none":
        return
    if reference.num_people == 0 or not located(reference.people[0][:18]).any():
        raise ValueError("the reference pose has no person: use a reference image where the character's body "
                         "is visible, or the 'none' alignment mode")
    if not any(f.num_people and located(f.people[0][:18]).any() for f in driving):
        raise ValueError(f"no person found in any of the {len(driving)} driving frames: the driving video must show a "
                         "person whose body is visible (check the clip and its skip/max frame settings, or try another "
                         "pose detector backend)")
    if isinstance(anchor_frame, str) and not anchor_frame.strip().lstrip("-").isdigit():
        raise ValueError(f"anchor_frame must be a frame index or '{AUTO_ANCHOR}', got {anchor_frame!r}")
    if not 0 <= int(anchor_frame) < len(driving):
        raise ValueError(f"anchor_frame {anchor_frame} is out of range: the driving video has {len(driving)} frames "
                         f"(use 0..{len(driving) - 1})")
    anchor = driving[int(anchor_frame)]
    if anchor.num_people == 0 or not located(anchor.people[0][:18]).any():
        raise ValueError(f"driving frame {anchor_frame} (the anchor frame) has no person: set anchor_frame to a frame "
                         f"where the driving person is visible")


def to_reference_canvas(frame: PoseFrame, width: int, height: int) -> np.ndarray:
    """People of ``frame`` in normalised coordinates of its centre crop to the width:height aspect
    (float64 copy; points never located stay (0, 0, 0))."""
    people = frame.people.astype(np.float64)
    if frame.width * height == frame.height * width or len(people) == 0:
        return people
    x0, y0, cw, ch = crop_box_for_aspect(frame.width, frame.height, width, height)
    ok = located(people)
    people[..., 0] = np.where(ok, (people[..., 0] * frame.width - x0) / cw, people[..., 0])
    people[..., 1] = np.where(ok, (people[..., 1] * frame.height - y0) / ch, people[..., 1])
    return people


def _reference_image(image, reference: PoseFrame) -> np.ndarray:
    if image is None:
        raise ValueError("one_to_all_pose mode warps the reference image: pass reference_image "
                         "((H, W, 3) uint8 RGB, the picture the reference pose was detected on)")
    arr = np.asarray(image.detach().cpu().numpy() if hasattr(image, "detach") else image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"reference_image must be (H, W, 3) RGB, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(np.nan_to_num(arr.astype(np.float32)) * 255.0), 0, 255).astype(np.uint8)
    h, w = arr.shape[:2]
    if abs(w * reference.height - h * reference.width) > 0.01 * h * reference.width:
        raise ValueError(f"reference_image is {w}x{h} but the reference pose canvas is "
                         f"{reference.width}x{reference.height}: pass the image the reference pose was detected on")
    return np.ascontiguousarray(arr)


def _resolve_anchor(driving, reference: PoseFrame, mode: str, anchor_frame) -> tuple[int, dict]:
    """An index, or AUTO_ANCHOR: One-to-All's automatic pick on the frames as the mode sees them."""
    if not (isinstance(anchor_frame, str) and anchor_frame.strip().lower() == AUTO_ANCHOR):
        return anchor_frame, {}
    if mode == "none":
        return 0, {}
    people = ([to_reference_canvas(f, reference.width, reference.height) for f in driving] if mode.startswith("one_to_all")
              else [f.people for f in driving])
    if reference.num_people == 0:
        return 0, {}  # _check_inputs names the problem
    return pick_anchor_frame(people, reference.people[0].astype(np.float64))


def _one_to_all_pose_drawing(reference: PoseFrame, width: int, height: int, matrix=None) -> np.ndarray:
    """infer_utils.py: the reference's pose drawn without face on the image's canvas; in 'pose'
    mode warped with the image's matrix (bilinear, black border)."""
    import cv2

    from .render import render_pose

    drawing = render_pose(reference, "one_to_all", width, height, without_face=True)
    if matrix is None:
        return drawing
    return cv2.warpAffine(drawing, np.asarray(matrix, np.float32), (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def align_poses(driving: list[PoseFrame], reference: PoseFrame, mode: str = "unianimate",
                reference_image: np.ndarray | None = None, anchor_frame: int | str = 0,
                rescale: bool = True) -> AlignResult:
    """Align ``driving`` poses to ``reference`` with the recipe of ``mode`` (see module docstring).

    ``anchor_frame``: the driving frame whose skeleton is measured against the reference (the
    official scripts use frame 0), or ``"auto"`` for One-to-All's ``pick_good_source_frame``.
    ``rescale``: One-to-All's ``align`` switch; False keeps the driving skeletons as detected
    (in 'pose' mode the reference is still warped onto the anchor pose). ``reference_image`` is
    required by ``one_to_all_pose``.
    """
    anchor_frame, anchor_info = _resolve_anchor(driving, reference, mode, anchor_frame)
    _check_inputs(driving, reference, mode, anchor_frame)
    anchor_frame = int(anchor_frame)
    if not rescale and mode == "unianimate":
        raise ValueError("rescale_limbs off is One-to-All's 'align' switch; UniAnimate's recipe always aligns. "
                         "Use mode 'none' to keep the driving skeletons as detected.")
    if mode == "none":
        return AlignResult([f.copy() for f in driving], reference.copy(), reference_image, None, {"mode": "none"})

    if mode == "unianimate":
        frames, info = align_unianimate(list(driving), reference, anchor_frame)
        info.update(mode=mode, anchor_frame=anchor_frame, **anchor_info)
        return AlignResult(frames, reference.copy(), reference_image, None, info)

    width, height = reference.width, reference.height
    people = [to_reference_canvas(f, width, height) for f in driving]
    ref_person = reference.people[0].astype(np.float64)
    if mode == "one_to_all_ref":
        if rescale:
            out, info = retarget_ref_mode(people, ref_person, anchor_frame, (width, height))
        else:  # official align=False: the detected skeletons on the reference's crop, unchanged
            out, info = people, {}
        info.update(mode=mode, anchor_frame=anchor_frame, rescale=bool(rescale), **anchor_info)
        return AlignResult([PoseFrame(width, height, p) for p in out], reference.copy(), reference_image, None, info,
                           _one_to_all_pose_drawing(reference, width, height))

    image = _reference_image(reference_image, reference)
    out, _, warped, mask, info = pose_mode(people, ref_person, image, anchor_frame, rescale=rescale)
    matrix = np.asarray(info["M"], np.float32)
    ref_people = np.stack([warp_points(p, matrix, image.shape[1], image.shape[0]) for p in reference.people])
    info.update(mode=mode, anchor_frame=anchor_frame, image_size=[image.shape[1], image.shape[0]], **anchor_info)
    drawing = _one_to_all_pose_drawing(PoseFrame(image.shape[1], image.shape[0], reference.people), image.shape[1],
                                       image.shape[0], matrix)
    return AlignResult([PoseFrame(width, height, p) for p in out], PoseFrame(width, height, ref_people),
                       warped, mask, info, drawing)
