"""Sample media for the demo and tests, generated from pictures a PyPI package ships.

scikit-image ships ``astronaut`` (Eileen Collins, NASA, public domain). It is the reference
character, and, mirrored, reshaped and moved by a smooth sway, tilt and zoom, the driving
clip, so the detected pose moves from frame to frame and differs in build from the reference.
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
    """A short driving clip: (T, H, W, 3) uint8 RGB of a person swaying, leaning and zooming.

    The person is the astronaut mirrored, made slimmer and smaller, and placed off-centre on a
    grey backdrop, so the driving body has other proportions and another position than the
    reference: exactly what the alignment step has to undo.
    """
    person = np.ascontiguousarray(_skimage_data().astronaut()[:, ::-1])
    w, h = size
    frames = np.empty((num_frames, h, w, 3), np.uint8)
    for i in range(num_frames):
        phase = 2.0 * math.pi * i / max(num_frames, 1)
        angle = 7.0 * math.sin(phase)  # degrees of lean about the hips
        zoom = 0.82 + 0.05 * math.sin(2 * phase)
        matrix = cv2.getRotationMatrix2D((256.0, 420.0), angle, zoom)
        matrix[0] *= 0.85  # slimmer: x scaled a further 0.85
        matrix[0, 2] += 0.12 * w + 0.04 * w * math.sin(phase)
        matrix[1, 2] += 0.08 * h
        frames[i] = cv2.warpAffine(person, matrix * (w / 512.0), (w, h), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=(96, 96, 96))
    return frames
