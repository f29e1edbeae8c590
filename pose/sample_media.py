"""Sample media for the demo and tests, generated from pictures a PyPI package ships.

scikit-image ships two photographs of people with no copyright restrictions:
``astronaut`` (Eileen Collins, NASA, public domain) is the reference character, and
``camera`` (CC0, Lav Varshney) becomes the driving clip: each frame is the photo moved
by a smooth sway, tilt and zoom, so the detected pose moves from frame to frame.
Nothing is shipped in this repository and nothing is downloaded.
"""
from __future__ import annotations

import math

import cv2
import numpy as np


def _skimage_data():
    try:
        from skimage import data
    except ImportError as exc:
        raise ImportError(
            "The sample media are made from images scikit-image ships. Install it with "
            "`pip install scikit-image` (listed in requirements-demo.txt)."
        ) from exc
    return data


def sample_reference_image() -> np.ndarray:
    """The reference character: (512, 512, 3) uint8 RGB."""
    return np.ascontiguousarray(_skimage_data().astronaut())


def sample_driving_clip(num_frames: int = 24, size: tuple[int, int] = (512, 512)) -> np.ndarray:
    """A short driving clip: (T, H, W, 3) uint8 RGB of a person swaying and leaning."""
    gray = _skimage_data().camera()
    base = cv2.cvtColor(cv2.resize(gray, size, interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2RGB)
    w, h = size
    frames = np.empty((num_frames, h, w, 3), np.uint8)
    for i in range(num_frames):
        phase = 2.0 * math.pi * i / max(num_frames, 1)
        angle = 8.0 * math.sin(phase)  # degrees of lean
        zoom = 1.0 + 0.06 * math.sin(2 * phase)
        matrix = cv2.getRotationMatrix2D((w * 0.48, h * 0.9), angle, zoom)
        matrix[0, 2] += 0.06 * w * math.sin(phase)
        frames[i] = cv2.warpAffine(base, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return frames
