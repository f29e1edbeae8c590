"""UniAnimate's bone-ratio alignment (``run_align_pose.py`` of UniAnimate / UniAnimate-DiT).

Rules (tests/fixtures/reference/unianimate_dit/README.md section 6), all in normalised
coordinates, r = reference person, C = anchor-frame person:

1. x_ratio = (r5.x - r2.x) / (C5.x - C2.x) (shoulder width, signed), y_ratio = torso height
   ratio (mid-hips y minus mid-shoulders y). Every point of every frame is multiplied by them.
2. For 15 bones in a fixed order, ratio = |r_parent - r_child| / |C_parent - C_child| measured on
   the anchor frame's CURRENT coordinates (scaled, and already moved by the earlier bones: the
   official script aliases the frame-0 array); each frame then adds
   (C_parent - C_child) * (1 - ratio) of its own current coordinates to the child chain (and the
   hand / foot hanging from it), so each bone gets the reference length with its direction kept.
3. offset = r_neck - C_neck (anchor, after scaling) is added to every point of every frame.

Quirks kept: points under the detector threshold are transformed too (they stay invisible
because their score is kept; only points never located, (0, 0) with score 0, stay (0, 0)); faces are only scaled and shifted; hip bones are not adjusted.

Guards added (the official script has none): a ratio whose bone has a missing end (score < 0.3,
where the official code would use the (-1, -1) placeholder) in the reference or the anchor
frame, or whose anchor length is zero, falls back to 1 and is listed in ``info["fallbacks"]``;
in any frame a bone with a missing end is skipped (ratio 1, no offset) instead of moving the
visible children by a placeholder-derived offset. If only one of x_ratio / y_ratio can be
measured the other follows it with the same pixel scale (canvas aspects taken into account);
if neither can, both are 1. Without a neck in the reference or the anchor frame, the final
offset matches the centroid of the body points both have instead.

Framing rules (pose/retarget_limits.py; they never act on well-framed inputs, so the official
results stay bit for bit): the shoulder ratio may differ from the torso ratio by at most
``GLOBAL_SPREAD`` in pixels (a side view otherwise gives giant shoulders), beyond it x takes
the torso's pixel scale; a bone the reference does not show takes its mirror bone's ratio, else 1;
every bone ratio is clamped to ``BONE_RATIO_RANGE``; driving points that are absent stay absent
(a half-body clip gets no invented legs).
"""
from __future__ import annotations

import numpy as np

from .keypoints import KEEP_THRESHOLD, LEFT_HAND, RIGHT_HAND, PoseFrame
from .retarget_limits import BONE_RATIO_RANGE, clamp_global, clamp_ratio

_LH = list(range(LEFT_HAND.start, LEFT_HAND.stop))
_RH = list(range(RIGHT_HAND.start, RIGHT_HAND.stop))
_LF = [18, 19, 20]   # left big toe, small toe, heel (UniAnimate's point 18 is the left toe)
_RF = [21, 22, 23]   # right big toe, small toe, heel (UniAnimate's point 19)

# (name, parent, child, moved points) in the official order.
BONES = (
    ("neck", 1, 0, [0, 14, 15, 16, 17]),
    ("shoulder2", 1, 2, [2, 3, 4] + _RH),
    ("shoulder5", 1, 5, [5, 6, 7] + _LH),
    ("arm3", 2, 3, [3, 4] + _RH),
    ("arm4", 3, 4, [4] + _RH),
    ("arm6", 5, 6, [6, 7] + _LH),
    ("arm7", 6, 7, [7] + _LH),
    ("head14", 0, 14, [14, 16]),
    ("head15", 0, 15, [15, 17]),
    ("head16", 14, 16, [16]),
    ("head17", 15, 17, [17]),
    ("ll1", 8, 9, [9, 10] + _RF),
    ("ll2", 9, 10, [10] + _RF),
    ("rl1", 11, 12, [12, 13] + _LF),
    ("rl2", 12, 13, [13] + _LF),
)


def _visible(person: np.ndarray) -> np.ndarray:
    """Official visibility: DWPose replaces points under 0.3 by (-1, -1)."""
    return person[:, 2] >= KEEP_THRESHOLD


def _global_ratios(ref: np.ndarray, anc: np.ndarray, ref_canvas, anc_canvas, fallbacks: list[str]):
    rv, av = _visible(ref), _visible(anc)
    x_ratio = y_ratio = None
    if rv[[2, 5]].all() and av[[2, 5]].all():
        den = anc[5, 0] - anc[2, 0]
        if den != 0:
            x_ratio = (ref[5, 0] - ref[2, 0]) / den
    if rv[[2, 5, 8, 11]].all() and av[[2, 5, 8, 11]].all():
        den = (anc[8, 1] + anc[11, 1]) / 2 - (anc[2, 1] + anc[5, 1]) / 2
        if den != 0:
            y_ratio = ((ref[8, 1] + ref[11, 1]) / 2 - (ref[2, 1] + ref[5, 1]) / 2) / den
    # Same pixel scale on both axes: x_norm = s * W_anchor / W_ref, y_norm = s * H_anchor / H_ref.
    aspect = (anc_canvas[1] * ref_canvas[0]) / (ref_canvas[1] * anc_canvas[0])
    if x_ratio is None and y_ratio is None:
        fallbacks += ["x_ratio", "y_ratio"]
        return 1.0, 1.0
    if x_ratio is None:
        fallbacks.append("x_ratio")
        x_ratio = abs(y_ratio) / aspect
    if y_ratio is None:
        fallbacks.append("y_ratio")
        y_ratio = abs(x_ratio) * aspect
    x_ratio, clamped = clamp_global(float(x_ratio), float(y_ratio) / aspect)
    if clamped:
        fallbacks.append("x_ratio_clamped")
    return float(x_ratio), float(y_ratio)


def _apply_bones(p: np.ndarray, vis: np.ndarray, ratios: dict[str, float]) -> None:
    """Move the bone chains of one person in place (p: (134, 2) float64, current coords)."""
    for name, parent, child, moved in BONES:
        if not (vis[parent] and vis[child]):
            continue
        p[moved] += (p[parent] - p[child]) * (1.0 - ratios[name])


MIRROR = {"shoulder2": "shoulder5", "arm3": "arm6", "arm4": "arm7", "head14": "head15", "head16": "head17",
          "ll1": "rl1", "ll2": "rl2"}
MIRROR.update({v: k for k, v in MIRROR.items()})


def _measure_bones(p: np.ndarray, vis: np.ndarray, ref: np.ndarray, ref_vis: np.ndarray,
                   fallbacks: list[str]) -> dict[str, float]:
    """Bone ratios on the anchor frame, measured bone after bone on its current coordinates."""
    ratios = {}
    p = p.copy()
    for name, parent, child, moved in BONES:
        ratio = None
        if vis[parent] and vis[child] and ref_vis[parent] and ref_vis[child]:
            den = float(np.linalg.norm(p[parent] - p[child]))
            if den > 0:
                ratio = float(np.linalg.norm(ref[parent, :2] - ref[child, :2])) / den
        if ratio is None:  # not measurable: the mirror bone's ratio (measured before it, or measurable now), else 1
            ratio = _mirror_ratio(name, p, vis, ref, ref_vis, ratios)
            fallbacks.append(name if ratio is None else f"{name}=mirror")
            ratio = 1.0 if ratio is None else ratio
        ratio, clamped = clamp_ratio(ratio)
        if clamped:
            fallbacks.append(f"{name}_clamped")
        ratios[name] = ratio
        if vis[parent] and vis[child]:
            p[moved] += (p[parent] - p[child]) * (1.0 - ratio)
    return ratios


def _mirror_ratio(name, p, vis, ref, ref_vis, ratios) -> float | None:
    other = MIRROR.get(name)
    if other is None:
        return None
    if other in ratios:
        parent, child = next((b[1], b[2]) for b in BONES if b[0] == other)
        if not (vis[parent] and vis[child] and ref_vis[parent] and ref_vis[child]):
            return None  # the mirror bone fell back as well
        return ratios[other]
    parent, child = next((b[1], b[2]) for b in BONES if b[0] == other)
    if vis[parent] and vis[child] and ref_vis[parent] and ref_vis[child]:
        den = float(np.linalg.norm(p[parent] - p[child]))
        if den > 0:
            return float(np.linalg.norm(ref[parent, :2] - ref[child, :2])) / den
    return None


def _anchor_offset(ref: np.ndarray, anc_scaled: np.ndarray, ref_vis, anc_vis, fallbacks: list[str]) -> np.ndarray:
    if ref_vis[1] and anc_vis[1]:
        return ref[1, :2] - anc_scaled[1]
    fallbacks.append("offset")
    both = np.flatnonzero(ref_vis[:18] & anc_vis[:18])
    if len(both) == 0:
        return np.zeros(2)
    return ref[both, :2].mean(axis=0) - anc_scaled[both].mean(axis=0)


def align_unianimate(driving: list[PoseFrame], reference: PoseFrame, anchor_frame: int):
    """Returns (aligned frames on the reference canvas, info). Inputs are already checked."""
    ref = reference.people[0].astype(np.float64)
    anc = driving[anchor_frame].people[0].astype(np.float64)
    fallbacks: list[str] = []
    x_ratio, y_ratio = _global_ratios(ref, anc, (reference.width, reference.height),
                                      (driving[anchor_frame].width, driving[anchor_frame].height), fallbacks)
    scale = np.array([x_ratio, y_ratio])
    ref_vis, anc_vis = _visible(ref), _visible(anc)
    anc_scaled = anc[:, :2] * scale
    ratios = _measure_bones(anc_scaled, anc_vis, ref, ref_vis, fallbacks)
    offset = _anchor_offset(ref, anc_scaled, ref_vis, anc_vis, fallbacks)

    out = []
    for frame in driving:
        people = frame.people.astype(np.float64)
        for person in people:
            p = person[:, :2] * scale
            _apply_bones(p, _visible(person), ratios)
            never_located = (person[:, 2] <= 0) & (person[:, 0] == 0) & (person[:, 1] == 0)
            person[:, :2] = p + offset
            person[never_located] = 0.0  # the layout's "no location" marker stays a marker
        out.append(PoseFrame(reference.width, reference.height, people.astype(np.float32)))
    info = {"x_ratio": x_ratio, "y_ratio": y_ratio,
            "ratios": {f"{name}_ratio": r for name, r in ratios.items()},
            "offset_xy": offset.tolist(), "fallbacks": fallbacks}
    return out, info
