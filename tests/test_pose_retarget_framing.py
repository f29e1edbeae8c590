"""Retargeting when the reference and the driving clip are framed differently (README "Retargeting
rules"): half-body driving / full-body reference, full-body driving / half-body reference, arms
occluded in the reference, limbs far outside proportions. The well-framed goldens are in
test_pose_align.py and stay bit for bit."""
import numpy as np
import pytest

from poseanimate.pose import align
from poseanimate.pose.keypoints import KEEP_THRESHOLD, PoseFrame
from poseanimate.pose.retarget_limits import BONE_RATIO_RANGE, GLOBAL_SPREAD
from test_pose_tracking import person

LEGS = [9, 10, 12, 13]
ARMS = [3, 4, 6, 7]
MODES = ("unianimate", "one_to_all_ref")


def _px(frame, i):
    return frame.people[0][i, :2] * (frame.width, frame.height)


def _len(frame, a, b):
    return float(np.linalg.norm(_px(frame, a) - _px(frame, b)))


def _clip(frames=6, **kw):
    """A full body waving its right forearm; ``kw`` changes the person (cx, cy, height...)."""
    out = []
    for t in range(frames):
        p = person(**{"cx": 0.5, "cy": 0.62, "height": 0.5, **kw})
        p[4, 1] += 0.02 * np.sin(t)
        out.append(PoseFrame(512, 768, p[None]))
    return out


def _sane(result):
    for f in result.frames:
        pts = f.people[0]
        assert np.isfinite(pts).all()
        assert (np.abs(pts[pts[:, 2] >= KEEP_THRESHOLD, :2]) < 3).all()


@pytest.mark.parametrize("mode", MODES)
def test_half_body_driving_full_body_reference_leaves_the_legs_out(mode):
    reference = PoseFrame(512, 768, person(0.5, 0.8, 0.6)[None])
    driving = _clip(cx=0.5, cy=1.15, height=1.3)  # a close-up: hips at the bottom edge
    for f in driving:
        f.people[0][LEGS] = 0.0  # the detector saw no legs
    result = align.align_poses(driving, reference, mode)
    _sane(result)
    for f in result.frames:
        assert (f.people[0][LEGS, 2] == 0).all()  # no invented legs
    out = result.frames[0]
    assert _len(out, 2, 5) == pytest.approx(_len(reference, 2, 5), rel=0.15)  # the reference's shoulders
    assert _len(out, 1, 8) == pytest.approx(_len(reference, 1, 8), rel=0.15)  # and torso


@pytest.mark.parametrize("mode", MODES)
def test_full_body_driving_half_body_reference_keeps_driving_leg_proportions(mode):
    ref = person(0.5, 1.2, 1.3)
    ref[LEGS] = 0.0  # a portrait: no legs in the reference
    reference = PoseFrame(512, 768, ref[None])
    driving = _clip()
    result = align.align_poses(driving, reference, mode)
    _sane(result)
    out, drv = result.frames[0], driving[0]
    assert (out.people[0][LEGS, 2] > 0).all()  # legs are kept (they may leave the canvas)
    thigh = _len(out, 8, 9) / _len(out, 1, 8)
    assert thigh == pytest.approx(_len(drv, 8, 9) / _len(drv, 1, 8), rel=0.35)


def test_occluded_arms_in_the_reference():
    ref = person(0.5, 0.62, 0.5, arms=1.2)
    ref[[3, 4]] = 0.0  # the right arm is hidden behind the body
    reference = PoseFrame(512, 768, ref[None])
    driving = _clip()
    result = align.align_poses(driving, reference, "unianimate")
    _sane(result)
    out = result.frames[0]
    # the hidden arm takes the visible arm's proportions: both arms as long as each other
    assert _len(out, 2, 3) == pytest.approx(_len(out, 5, 6), rel=0.05)
    assert _len(out, 3, 4) == pytest.approx(_len(out, 6, 7), rel=0.1)
    assert {"arm3=mirror", "arm4=mirror"} <= set(result.info["fallbacks"])
    ref[[6, 7]] = 0.0  # both arms hidden: the driving's own proportions at the global scale
    result = align.align_poses(driving, PoseFrame(512, 768, ref[None]), "unianimate")
    _sane(result)
    out = result.frames[0]
    ratio = _len(out, 5, 6) / _len(out, 2, 5)
    assert ratio == pytest.approx(_len(driving[0], 5, 6) / _len(driving[0], 2, 5), rel=0.1)
    for mode in MODES:
        _sane(align.align_poses(driving, PoseFrame(512, 768, ref[None]), mode))


@pytest.mark.parametrize("mode", MODES)
def test_limbs_far_outside_proportions_are_clamped(mode):
    """The anchor frame's forearm is foreshortened to a tenth: its ratio would be ~10 (a giant arm
    in every other frame); clamped, no limb grows past twice the body's scale."""
    reference = PoseFrame(512, 768, person(0.5, 0.62, 0.5)[None])
    driving = _clip()
    anchor = driving[0].people[0]
    anchor[4, :2] = anchor[3, :2] + 0.1 * (anchor[4, :2] - anchor[3, :2])
    result = align.align_poses(driving, reference, mode)
    _sane(result)
    later, later_drv = result.frames[3], driving[3]
    scale = _len(later, 1, 8) / _len(later_drv, 1, 8)  # the global scale on this body
    grown = (_len(later, 3, 4) / _len(later_drv, 3, 4)) / scale
    assert grown <= BONE_RATIO_RANGE[1] * 1.05
    assert any("clamped" in f for f in result.info["fallbacks"])


def test_side_view_shoulders_do_not_stretch_the_skeleton():
    """Shoulders almost on top of each other in the anchor frame (a side view): the width ratio
    would be ~5x the torso ratio, so the width takes the torso's scale; the shoulder bones are
    clamped, so frontal frames get at most twice the reference's shoulder width (not ten times)."""
    reference = PoseFrame(512, 768, person(0.5, 0.62, 0.5)[None])
    driving = _clip()
    anchor = driving[0].people[0]
    mid = (anchor[2, 0] + anchor[5, 0]) / 2
    anchor[2, 0], anchor[5, 0] = mid - 0.012, mid + 0.012
    result = align.align_poses(driving, reference, "unianimate")
    _sane(result)
    assert "x_ratio_clamped" in result.info["fallbacks"]
    assert abs(result.info["x_ratio"]) == pytest.approx(abs(result.info["y_ratio"]))  # same canvases
    assert GLOBAL_SPREAD == 2.0
    assert _len(result.frames[3], 2, 5) < 2.2 * _len(reference, 2, 5)
