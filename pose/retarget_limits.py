"""Limits that keep retargeting sane when the reference and the driving clip are framed differently.

Why: a bone ratio is the reference's bone length over the driving anchor frame's. When one of
the two bones is foreshortened (an arm pointing at the camera), cut by the frame edge or guessed
by the detector, the ratio can reach 5 or 10 and every frame of the video gets a giant limb;
a side view shrinks the shoulder width and the whole skeleton is stretched sideways. Real
bodies differ far less than that: after the global scale, a limb of the reference is within
half and twice the driving's. These limits act only outside those bounds, so well-framed
inputs (and the goldens) go through the official arithmetic unchanged.

* ``BONE_RATIO_RANGE`` (0.5, 2.0): every bone ratio (relative to the global scale) is clamped.
* ``GLOBAL_SPREAD`` 2.0: UniAnimate's shoulder-width ratio may differ from its torso-height
  ratio (both in pixels) by at most this factor; beyond it the shoulder measurement is taken as
  broken (a side view) and x uses the torso's pixel scale.

Worst case: a limb is at most twice as long, relative to the body, as it would be with the
driving's own proportions (e.g. a side-view anchor frame gives frontal frames shoulders twice
the reference's width instead of ten times); pick a frontal anchor frame for better.
"""
from __future__ import annotations

import math

BONE_RATIO_RANGE = (0.5, 2.0)
GLOBAL_SPREAD = 2.0


def clamp_ratio(ratio: float, scale: float = 1.0) -> tuple[float, bool]:
    """(ratio clamped to ``scale * BONE_RATIO_RANGE``, whether it was clamped)."""
    lo, hi = BONE_RATIO_RANGE[0] * scale, BONE_RATIO_RANGE[1] * scale
    if lo <= ratio <= hi:
        return ratio, False
    return (lo if ratio < lo else hi), True


def clamp_global(x_ratio: float, y_ratio_px: float) -> tuple[float, bool]:
    """The signed shoulder ratio, or the torso ratio with its sign when the two differ by more than
    ``GLOBAL_SPREAD`` (``y_ratio_px``: the torso ratio expressed on the x axis' pixel scale)."""
    y = abs(y_ratio_px)
    if y == 0 or not math.isfinite(x_ratio):
        return x_ratio, False
    if y / GLOBAL_SPREAD <= abs(x_ratio) <= y * GLOBAL_SPREAD:
        return x_ratio, False
    return (-y if x_ratio < 0 else y), True
