"""Line widths of drawn poses, for the checks that compare them with the official drawing.

Why full width at half maximum along the limb's normal: resizing blurs a line's edges, so a
pixel count depends on a threshold; the half-maximum width of the intensity profile is the
width a viewer (and a convolution) sees, and it is continuous in the scale factor.
"""
from __future__ import annotations

import numpy as np

_STEP = 0.05  # profile sampling step, pixels


def _bilinear(image: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    x0 = np.clip(np.floor(xs).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(ys).astype(int), 0, h - 2)
    fx, fy = np.clip(xs - x0, 0, 1)[:, None], np.clip(ys - y0, 0, 1)[:, None]
    img = image.astype(np.float64)
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def line_width(image: np.ndarray, start, end, at: float = 0.5, reach: float = 40.0) -> float:
    """Width in pixels of the line drawn from ``start`` to ``end`` ((x, y) pixels of ``image``),
    measured across it at fraction ``at`` of its length: the span where the brightest channel
    stays above half its peak. 0 when nothing is drawn there."""
    p0, p1 = np.asarray(start, np.float64), np.asarray(end, np.float64)
    d = p1 - p0
    length = float(np.hypot(*d))
    if length == 0:
        raise ValueError("line_width needs two distinct points")
    normal = np.array([-d[1], d[0]]) / length
    centre = p0 + d * at
    t = np.arange(-reach, reach + _STEP, _STEP)
    pts = centre[None] + t[:, None] * normal[None]
    profile = _bilinear(image, pts[:, 0], pts[:, 1]).max(axis=1)
    middle = int(np.argmin(np.abs(t)))
    if profile[middle] <= 0:
        return 0.0
    while 0 < middle < len(t) - 1 and max(profile[middle - 1], profile[middle + 1]) > profile[middle]:
        middle += 1 if profile[middle + 1] > profile[middle - 1] else -1  # climb to this line's own peak
    above = profile >= profile[middle] / 2
    lo = hi = middle  # the run around that peak (neighbouring limbs do not count)
    while lo > 0 and above[lo - 1]:
        lo -= 1
    while hi < len(t) - 1 and above[hi + 1]:
        hi += 1
    return float((hi - lo + 1) * _STEP)
