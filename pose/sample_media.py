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

from .keypoints import LEFT_HAND, NUM_POINTS, RIGHT_HAND


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


def standing_person(scale: float = 1.0, dx: float = 0.0) -> np.ndarray:
    """A frontal whole-body pose (134 points, normalised, score 0.95/0.9): arms down and slightly
    out, fingers spread. For checks that need a known skeleton (line widths, memory figures)."""
    p = np.zeros((NUM_POINTS, 3), np.float32)
    body = {0: (0.5, 0.12), 1: (0.5, 0.22), 2: (0.4, 0.22), 3: (0.36, 0.38), 4: (0.33, 0.52), 5: (0.6, 0.22),
            6: (0.64, 0.38), 7: (0.67, 0.52), 8: (0.44, 0.52), 9: (0.43, 0.7), 10: (0.43, 0.88), 11: (0.56, 0.52),
            12: (0.57, 0.7), 13: (0.57, 0.88), 14: (0.48, 0.1), 15: (0.52, 0.1), 16: (0.46, 0.11), 17: (0.54, 0.11),
            18: (0.6, 0.93), 19: (0.62, 0.92), 20: (0.56, 0.9), 21: (0.4, 0.93), 22: (0.38, 0.92), 23: (0.44, 0.9)}
    for j, (x, y) in body.items():
        p[j] = (0.5 + (x - 0.5) * scale + dx, 0.5 + (y - 0.5) * scale, 0.95)
    for start, wrist in ((LEFT_HAND.start, 7), (RIGHT_HAND.start, 4)):
        side = 1 if wrist == 7 else -1
        for k in range(21):  # five fingers fanning down from the wrist, 4 joints each
            finger, joint = (k - 1) // 4, (k - 1) % 4 + 1
            x = p[wrist, 0] + (0 if k == 0 else side * (finger - 2) * 0.03 * scale)
            y = p[wrist, 1] + (0 if k == 0 else joint * 0.04 * scale)
            p[start + k] = (x, y, 0.9)
    return p
