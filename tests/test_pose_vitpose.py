"""ViTPose whole-body + YOLOv10: each step against numbers the official One-to-All preprocessing
produced (tests/fixtures/vitpose/), and end to end on tiny ONNX models built here."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_onnx  # noqa: E402
from poseanimate.pose import detect, vitpose  # noqa: E402
from poseanimate.pose.keypoints import NUM_POINTS  # noqa: E402
from poseanimate.pose.onnx_model import DetectorFilesError  # noqa: E402

OFFICIAL = json.loads((Path(__file__).parent / "fixtures" / "vitpose" / "official_numbers.json").read_text())
# OpenPose body slot -> COCO-WholeBody index by joint name (independent of the code under test)
OPENPOSE_FROM_COCO = {0: 0, 2: 6, 3: 8, 4: 10, 5: 5, 6: 7, 7: 9, 8: 12, 9: 14, 10: 16, 11: 11, 12: 13, 13: 15,
                      14: 2, 15: 1, 16: 4, 17: 3}


def fixture_image():
    yy, xx = np.mgrid[0:120, 0:90]
    return np.stack([(xx * 7 + yy * 3) % 251, (xx * 2 + yy * 11) % 241, (xx * yy) % 239], -1).astype(np.uint8)


def fixture_frame():
    frame = np.zeros((360, 500, 3), np.uint8)
    frame[100:140, 150:170, 2] = 255
    frame[200:230, 300:330, 0] = 255
    return frame


def test_heatmap_decoding_matches_official():
    case = OFFICIAL["decode"]
    heat = np.stack([tiny_onnx.gaussian_heatmaps(p, sigma=case["sigma"]) for p in case["peaks"]])
    points, scores = vitpose.decode_heatmaps(heat, np.array(case["center"]), np.array(case["scale"]))
    np.testing.assert_allclose(points, case["points"], atol=1e-3)
    np.testing.assert_allclose(scores, case["scores"], atol=1e-5)
    # the refinement moved interior peaks off the integer grid (sub-pixel), the border one not
    assert abs(points[0, 0, 0] - round(float(points[0, 0, 0]))) > 0.05


@pytest.mark.parametrize("index", range(4))
def test_box_center_scale_and_crop_match_official(index):
    case = OFFICIAL["crop"]["cases"][index]
    center, scale = vitpose.box_center_scale(case["box"])
    np.testing.assert_allclose(center, case["center"], atol=1e-5)
    np.testing.assert_allclose(scale, case["scale"], atol=1e-5)
    crop = vitpose.crop_box(fixture_image(), center, scale)
    assert list(crop.shape) == case["crop_shape"] == [256, 192, 3]
    np.testing.assert_allclose(crop[::8, ::8], case["crop_every_8"], atol=1e-3)
    assert crop.astype(np.float64).sum() == pytest.approx(case["crop_sum"], rel=1e-6)


@pytest.mark.parametrize("name", sorted(OFFICIAL["yolo"]))
def test_yolov10_decoding_and_person_choice_match_official(name):
    case = OFFICIAL["yolo"][name]
    rows = np.zeros((300, 6), np.float32)
    if case["rows"]:
        rows[: len(case["rows"])] = case["rows"]
    height, width = case["shape"]
    boxes, best = vitpose.person_boxes(vitpose.decode_yolov10(rows, height, width))
    if case["chosen"] is None:
        assert best == -1
    else:
        np.testing.assert_allclose(boxes[best], case["chosen"], atol=1e-5)


def make_folder(tmp_path, det_rows, weights=None, pose_name="vitpose_h_wholebody.onnx", channel=0, **kw):
    folder = tmp_path / "pose_models"
    tiny_onnx.build_yolov10(folder / "yolov10m.onnx", det_rows, **kw)
    if weights is None:
        weights = OFFICIAL["end_to_end"][0]["weights"]
    tiny_onnx.build_vitpose_spot(folder / pose_name, weights, channel=channel)
    return folder


@pytest.mark.parametrize("index", [0, 1])
def test_end_to_end_matches_official_pose2d(tmp_path, index):
    """Tiny models, one frame: every one of the 133 points and scores as the official Pose2d gave,
    mapped into our 134 layout (OpenPose body order, neck = mean of shoulders and of their scores)."""
    case = OFFICIAL["end_to_end"][index]
    folder = make_folder(tmp_path, case["det_rows"])
    det = detect.load_detector("vitpose", folder)
    frame = fixture_frame()
    (found,) = det.detect_batch(frame[None])
    assert found.num_people == 1 and found.people.shape == (1, NUM_POINTS, 3)
    person = found.pixels(0)
    kp = np.asarray(case["kp2ds"])
    for ours, coco in OPENPOSE_FROM_COCO.items():
        if kp[coco, 2] <= 0:  # no heatmap response: missing in our layout
            assert person[ours].tolist() == [0.0, 0.0, 0.0]
            continue
        np.testing.assert_allclose(person[ours, :2], kp[coco, :2], atol=2e-3)
        assert person[ours, 2] == pytest.approx(kp[coco, 2], abs=1e-5)
    np.testing.assert_allclose(person[18:, :2][kp[17:, 2] > 0], kp[17:, :2][kp[17:, 2] > 0], atol=2e-3)
    np.testing.assert_allclose(person[18:, 2], np.clip(kp[17:, 2], 0, None), atol=1e-5)
    body20 = np.asarray(case["keypoints_body"])  # official neck: mean of shoulder rows incl. score
    np.testing.assert_allclose(person[1, :2] / [500, 360], body20[1, :2], atol=1e-5)
    assert person[1, 2] == pytest.approx(body20[1, 2], abs=1e-5)
    # the spot model finds the blue square: the official feeds ViTPose BGR frames
    assert 150 <= person[0, 0] <= 170 and 100 <= person[0, 1] <= 140


def test_zero_response_keypoint_is_missing(tmp_path):
    folder = make_folder(tmp_path, [(64, 40, 420, 600, 0.9, 0)])
    (found,) = detect.load_detector("vitpose", folder).detect_batch(fixture_frame()[None])
    assert found.people[0, 6].tolist() == [0.0, 0.0, 0.0]  # COCO 7 (left elbow) -> OpenPose slot 6


@pytest.mark.parametrize("order,inside", [("official", (150, 170, 100, 140)), ("rgb", (300, 330, 200, 230)),
                                          ("bgr", (150, 170, 100, 140))])
def test_pose_channel_order(tmp_path, order, inside):
    folder = make_folder(tmp_path, [(64, 40, 420, 600, 0.9, 0)])
    det = vitpose.ViTPoseDetector(folder, channel_order=order)
    (found,) = det.detect_batch(fixture_frame()[None])
    x, y = found.pixels(0)[0, :2]
    assert inside[0] <= x <= inside[1] and inside[2] <= y <= inside[3]


@pytest.mark.parametrize("order,color,found", [("official", 0, True), ("official", 2, False), ("bgr", 2, True),
                                               ("rgb", 0, True)])
def test_detector_gets_rgb_officially(tmp_path, order, color, found):
    """The official YOLOv10 input is RGB; with no box ViTPose runs on the whole frame (score -1 box)."""
    folder = make_folder(tmp_path, [(64, 40, 420, 600, 0.9, 0)], gate_channel=0)
    det = vitpose.ViTPoseDetector(folder, channel_order=order)
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[..., color] = 255
    (boxes,) = det.detect_boxes(frame[None])
    assert (boxes[0, 4] > 0) == found
    if not found:
        assert boxes.tolist() == [[0.0, 0.0, 64.0, 64.0, -1.0]]


def test_people_all_keeps_every_person_official_first(tmp_path):
    rows = [(20, 20, 200, 300, 0.9, 0), (300, 40, 600, 620, 0.8, 0), (250, 250, 300, 300, 0.7, 2)]
    folder = make_folder(tmp_path, rows, dynamic_batch=True)
    frames = np.zeros((3, 360, 500, 3), np.uint8)
    one = vitpose.ViTPoseDetector(folder).detect_batch(frames)
    every = vitpose.ViTPoseDetector(folder, people="all").detect_batch(frames)
    assert [f.num_people for f in one] == [1, 1, 1] and [f.num_people for f in every] == [2, 2, 2]
    np.testing.assert_array_equal(every[0].people[0], one[0].people[0])


def test_files_found_by_any_known_name_and_missing_files_are_named(tmp_path):
    folder = make_folder(tmp_path, [(64, 40, 420, 600, 0.9, 0)], pose_name="vitpose-l-wholebody.onnx")
    assert vitpose.find_model_files(folder)[1].name == "vitpose-l-wholebody.onnx"
    (folder / "yolov10m.onnx").unlink()
    with pytest.raises(DetectorFilesError, match="yolov10m.onnx.*not found.*Nothing is downloaded"):
        vitpose.ViTPoseDetector(folder)
    with pytest.raises(DetectorFilesError, match="does not exist"):
        vitpose.ViTPoseDetector(tmp_path / "nowhere")


def test_wrong_networks_are_refused(tmp_path):
    folder = tmp_path / "m"
    tiny_onnx.build_yolov10(folder / "yolov10m.onnx", [])
    tiny_onnx.build_pose_onehot(folder / "vitpose_h_wholebody.onnx", [(0, 0)] * 133, [1.0] * 133)
    with pytest.raises(DetectorFilesError, match="not a 256x192 ViTPose"):
        vitpose.ViTPoseDetector(folder)
    tiny_onnx.build_vitpose_spot(folder / "vitpose_h_wholebody.onnx", [1.0] * 17)
    with pytest.raises(DetectorFilesError, match="17 points"):
        vitpose.ViTPoseDetector(folder)
    tiny_onnx.write_corrupt(folder / "yolov10m.onnx")
    with pytest.raises(DetectorFilesError, match="yolov10m.onnx.*corrupt"):
        vitpose.ViTPoseDetector(folder)
