"""POSE_KEYPOINT interop: our frames <-> comfyui_controlnet_aux's format, real scores kept, bad data refused."""
import json
import math

import numpy as np
import pytest

from poseanimate.pose import keypoints as kp
from paths import REFERENCE

OPENPOSE = REFERENCE / "openpose_render"


def _raw_frames():
    raw = json.loads((OPENPOSE / "keypoints_raw.json").read_text())
    out = []
    for name in raw["frames_order"]:
        set_name, w, h = name.split("_")
        people = np.asarray(raw["sets"][set_name]["people"], np.float32)
        out.append(kp.PoseFrame(int(w[1:]), int(h[1:]), people))
    return out


def test_encoding_matches_controlnet_aux_exactly():
    """Our POSE_KEYPOINT fields equal what comfyui_controlnet_aux's encode_poses_as_dict wrote."""
    expected = json.loads((OPENPOSE / "keypoints.json").read_text())
    ours = kp.frames_to_pose_keypoint(_raw_frames())
    assert len(ours) == len(expected) == 6
    for a, b in zip(ours, expected):
        assert (a["canvas_width"], a["canvas_height"]) == (b["canvas_width"], b["canvas_height"])
        assert len(a["people"]) == len(b["people"])
        for pa, pb in zip(a["people"], b["people"]):
            for key in ("pose_keypoints_2d", "face_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d"):
                if pb[key] is None:
                    assert pa[key] is None, key
                else:
                    np.testing.assert_allclose(pa[key], pb[key], atol=1e-3, err_msg=key)


def test_roundtrip_keeps_real_scores():
    frames = _raw_frames()
    back = kp.frames_from_pose_keypoint(json.loads(json.dumps(kp.frames_to_pose_keypoint(frames))))
    for a, b in zip(frames, back):
        np.testing.assert_allclose(a.people, b.people, atol=1e-6)
    assert 0.0 < back[0].people[0, 17, 2] < 0.3  # setA LEar 0.2 survives, though controlnet_aux drops it


def test_reads_controlnet_aux_pixel_coordinates():
    """A POSE_KEYPOINT written by another pack (no scores of ours) is read back normalised."""
    expected = json.loads((OPENPOSE / "keypoints.json").read_text())
    frames = kp.frames_from_pose_keypoint(expected)
    raw = _raw_frames()
    for got, want in zip(frames, raw):
        kept = want.people[0, :18, 2] >= 0.3
        np.testing.assert_allclose(got.people[0, :18, :2][kept], want.people[0, :18, :2][kept], atol=1e-4)
        assert np.all(got.people[0, :18, 2][~kept] == 0)


def test_reads_normalised_coordinates():
    frame = {"canvas_width": 640, "canvas_height": 480, "people": [{"pose_keypoints_2d": [0.5, 0.25, 0.9] * 18}]}
    got = kp.frames_from_pose_keypoint([frame])[0]
    assert got.width == 640
    np.testing.assert_allclose(got.people[0, 0], [0.5, 0.25, 0.9], atol=1e-6)


@pytest.mark.parametrize("bad, message", [
    ([], "empty"),
    ("not a list", "list of frame dicts"),
    ([{"people": []}], "canvas_width"),
    ([{"canvas_width": 10, "canvas_height": 10, "people": [{"pose_keypoints_2d": [1, 2, 3]}]}], "54 numbers"),
    ([{"canvas_width": 10, "canvas_height": 10, "people": "x"}], "'people' must be a list"),
    ([{"canvas_width": 10, "canvas_height": 10, "people": [{"pose_keypoints_2d": ["a"] * 54}]}], "non-numeric"),
    ([{"canvas_width": 0, "canvas_height": 10, "people": []}], "positive"),
    ([{"canvas_width": 10, "canvas_height": 10, "people": [], "poseanimate_people": [[1, 2]]}], "poseanimate_people"),
])
def test_wrong_shapes_give_clear_errors(bad, message):
    with pytest.raises(kp.PoseFormatError, match=message):
        kp.frames_from_pose_keypoint(bad)


def test_nan_points_become_missing_and_out_of_canvas_is_kept():
    people = np.zeros((1, kp.NUM_POINTS, 3), np.float32)
    people[0, :, 2] = 0.9
    people[0, 0] = [math.nan, 0.5, 0.9]
    people[0, 1] = [1.7, -0.2, 0.9]
    people[0, 2] = [0.5, math.inf, 0.9]
    frame = kp.PoseFrame(100, 100, people)
    assert frame.people[0, 0, 2] == 0 and frame.people[0, 2, 2] == 0
    np.testing.assert_allclose(frame.people[0, 1], [1.7, -0.2, 0.9])
    assert np.isfinite(frame.people).all()


def test_select_person_largest_first_index():
    small = np.zeros((kp.NUM_POINTS, 3), np.float32)
    small[:18] = [0.1, 0.1, 0.9]
    small[1] = [0.2, 0.2, 0.9]
    big = np.zeros((kp.NUM_POINTS, 3), np.float32)
    big[:18] = [0.3, 0.1, 0.9]
    big[1] = [0.9, 0.9, 0.9]
    frame = kp.PoseFrame(64, 64, np.stack([small, big]))
    np.testing.assert_array_equal(kp.select_person(frame, "largest").people[0], big)
    np.testing.assert_array_equal(kp.select_person(frame, "first").people[0], small)
    np.testing.assert_array_equal(kp.select_person(frame, "1").people[0], big)
    assert kp.select_person(frame, "5").num_people == 0
    with pytest.raises(ValueError, match="largest"):
        kp.select_person(frame, "tallest")
