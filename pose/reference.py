"""The reference picture's pose: detected first, at a size the detector handles, retried smaller.

Why a separate step: a reference with nobody in it must fail before the driving video is
touched (minutes of detection), phone photos reach 12+ megapixels (detectors resize to a few
hundred pixels anyway, so a full-size float copy buys nothing), and the embedded detector
misses people that fill a large picture (One-to-All's own 720x1280 sample references) but finds
them at 360x640. Keypoints are normalised, so a pose found on a smaller copy is the same pose
on the original canvas.
"""
from __future__ import annotations

import cv2
import numpy as np

from . import detect
from .align_one_to_all import located
from .keypoints import PoseFrame

DETECT_MAX_SIDE = 2048  # longer side above which a picture is detected on a downsized copy
RETRY_MAX_SIDE = 640    # long side of the second try when nobody is found


class NoPersonError(ValueError):
    """The reference image shows nobody the detector can find."""


def downsized(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` with its longer side at most ``max_side`` (area resampling), else itself."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def located_body(person: np.ndarray) -> bool:
    """Whether a person has at least one located body point (the aligners need one)."""
    return bool(located(person[:18]).any())


def _detect_one(detector, image: np.ndarray, person: str) -> PoseFrame:
    return detect.detect_video(detector, image[None], person=person, missing="empty")[0]


def detect_reference(detector, image: np.ndarray, person: str = "largest") -> tuple[PoseFrame, dict]:
    """Pose of one (H, W, 3) uint8 picture on its own canvas, and how it was found.

    Pictures larger than DETECT_MAX_SIDE are detected on a downsized copy; when nobody is found,
    one more try at RETRY_MAX_SIDE. Returns an empty frame when both tries find nobody
    (``require_person`` turns that into the error)."""
    h, w = image.shape[:2]
    tries = [downsized(image, DETECT_MAX_SIDE)]
    if max(h, w) > RETRY_MAX_SIDE:
        tries.append(downsized(image, RETRY_MAX_SIDE))
    found = None
    info = {"sizes_tried": []}
    for candidate in tries:
        info["sizes_tried"].append([int(candidate.shape[1]), int(candidate.shape[0])])
        found = _detect_one(detector, np.ascontiguousarray(candidate), person)
        if found.num_people and located_body(found.people[0]):
            break
    info["detected_at"] = info["sizes_tried"][-1]
    return PoseFrame(w, h, found.people), info


def require_person(frame: PoseFrame, what: str = "the reference image") -> PoseFrame:
    """Fail fast, naming the fix, when ``frame`` has nobody."""
    if frame.num_people == 0 or not located_body(frame.people[0]):
        raise NoPersonError(f"No person found in {what} ({frame.width}x{frame.height}), also not at a smaller size: "
                            "use a picture where the character's whole body (or at least head and shoulders) is "
                            "visible, or try another pose detector.")
    return frame
