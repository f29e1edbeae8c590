"""The embedded detector on mediapipe >= 1.x (Tasks API, Python 3.13+), tested on any Python:
results shaped like the Tasks API's (lists of NormalizedLandmark with visibility / presence,
handedness Categories) through the mapping, and the detector's plumbing on a stand-in
``mediapipe`` module (real .task files cannot be obtained here)."""
from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest

from poseanimate.pose import detect
from poseanimate.pose import mediapipe_pose as mpp
from poseanimate.pose.keypoints import BODY_NAMES


def nl(x, y, visibility=None):
    """A Tasks NormalizedLandmark (z, presence and name present, visibility maybe unset)."""
    return SimpleNamespace(x=x, y=y, z=0.0, visibility=visibility, presence=0.99, name=None)


def body33():
    body = [(0.3 + 0.005 * i, 0.2 + 0.01 * i, 0.5 + 0.01 * i) for i in range(33)]
    body[15], body[16] = (0.7, 0.6, 0.8), (0.2, 0.6, 0.6)  # subject's left wrist on the image right
    return body


def pose_result(body):
    return SimpleNamespace(pose_landmarks=[[nl(*p) for p in body]], pose_world_landmarks=[[]], segmentation_masks=None)


def hand(x0, y0):
    return [(x0 + i / 200, y0 + i / 300) for i in range(21)]


def hand_result(hands, labels):
    return SimpleNamespace(hand_landmarks=[[nl(x, y) for x, y in h] for h in hands],
                           handedness=[[SimpleNamespace(index=0, score=0.9, display_name="", category_name=lb)] for lb in labels],
                           hand_world_landmarks=[[] for _ in hands])


def face_result(n=478):
    return SimpleNamespace(face_landmarks=[[nl(i / 1000, 1 - i / 1000) for i in range(n)]], face_blendshapes=[],
                           facial_transformation_matrixes=[])


def legacy(points):
    return SimpleNamespace(landmark=[SimpleNamespace(x=p[0], y=p[1], visibility=p[2] if len(p) > 2 else 0.0) for p in points])


def test_tasks_results_map_like_the_holistic_ones():
    """The same landmarks through the Tasks mapping and the Holistic one give the same person."""
    body, left, right = body33(), hand(0.7, 0.61), hand(0.2, 0.61)
    person = mpp.tasks_to_person(pose_result(body), hand_result([right, left], ["Right", "Left"]), face_result())
    holistic = SimpleNamespace(pose_landmarks=legacy(body), face_landmarks=legacy([(i / 1000, 1 - i / 1000, 0) for i in range(468)]),
                               left_hand_landmarks=legacy([(*p, 0) for p in left]),
                               right_hand_landmarks=legacy([(*p, 0) for p in right]))
    np.testing.assert_allclose(person, mpp.results_to_person(holistic), atol=1e-7)
    named = {"Nose": 0, "RShoulder": 12, "RWrist": 16, "LShoulder": 11, "LWrist": 15, "LAnkle": 27, "REar": 8}
    for name, index in named.items():
        np.testing.assert_allclose(person[BODY_NAMES.index(name)], body[index], rtol=1e-6)
    assert person[19, 2] == 0 and person[22, 2] == 0  # no small toes
    np.testing.assert_allclose(person[18], body[31], rtol=1e-6)
    np.testing.assert_allclose(person[92:113, :2], left, rtol=1e-6)
    assert np.all(person[92:113, 2] == pytest.approx(body[15][2]))  # hand score = the wrist's visibility
    np.testing.assert_allclose(person[113:134, :2], right, rtol=1e-6)
    assert person[24 + 8, :2] == pytest.approx((0.152, 0.848))  # iBUG chin <- mesh 152 (478-point mesh)


def test_hands_go_to_the_wrist_they_sit_on_whatever_their_label():
    body, left, right = body33(), hand(0.7, 0.61), hand(0.2, 0.61)
    person = mpp.tasks_to_person(pose_result(body), hand_result([left, right], ["Right", "Right"]))
    np.testing.assert_allclose(person[92:113, :2], left, rtol=1e-6)
    np.testing.assert_allclose(person[113:134, :2], right, rtol=1e-6)
    person = mpp.tasks_to_person(pose_result(body), hand_result([right], ["Left"]))  # one hand, mislabelled
    assert np.all(person[92:113] == 0)
    np.testing.assert_allclose(person[113:134, :2], right, rtol=1e-6)
    hidden = body33()
    hidden[15], hidden[16] = (0.7, 0.6, 0.0), (0.2, 0.6, 0.0)  # wrists not seen: the labels decide
    l_hand, r_hand = mpp.assign_hands(np.array(hidden, np.float32), [np.array(right), np.array(left)], ["Right", "Left"])
    np.testing.assert_allclose(l_hand, left)
    np.testing.assert_allclose(r_hand, right)


def test_no_pose_and_unset_visibility():
    assert mpp.tasks_to_person(SimpleNamespace(pose_landmarks=[])) is None
    body = [nl(0.4, 0.5) for _ in range(33)]  # visibility unset -> counts as seen
    person = mpp.tasks_to_person(SimpleNamespace(pose_landmarks=[body]))
    assert person[0].tolist() == pytest.approx([0.4, 0.5, 1.0]) and np.all(person[24:] == 0)


def test_task_files_are_named_when_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="pose_landmarker_full.task.*hand_landmarker.task.*face_landmarker.task"):
        mpp.find_task_files(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=f"no pose landmarker model in {tmp_path}.*pose_landmarker_full.task"):
        mpp.find_task_files(tmp_path)
    (tmp_path / "pose_landmarker_heavy.task").write_bytes(b"x")
    assert mpp.find_task_files(tmp_path) == (tmp_path / "pose_landmarker_heavy.task", None, None)
    (tmp_path / "hand_landmarker.task").write_bytes(b"x")
    (tmp_path / "face_landmarker.task").write_bytes(b"x")
    assert mpp.find_task_files(tmp_path)[1:] == (tmp_path / "hand_landmarker.task", tmp_path / "face_landmarker.task")


@pytest.fixture()
def fake_tasks_mediapipe(monkeypatch):
    """A stand-in for mediapipe >= 1.x: the Tasks classes and signatures the detector uses, with
    landmarkers that answer canned results and record how they were created and called."""
    calls = {"created": [], "video": [], "closed": 0}
    body, left, right = body33(), hand(0.7, 0.61), hand(0.2, 0.61)

    class Landmarker:
        def __init__(self, kind, options):
            self.kind, self.options = kind, options
            calls["created"].append((kind, options.base_options.model_asset_path, options.running_mode))

        def detect_for_video(self, image, timestamp_ms):
            assert image.image_format == "SRGB" and image.data.dtype == np.uint8
            calls["video"].append((self.kind, timestamp_ms))
            return {"pose": pose_result(body), "hand": hand_result([right, left], ["Right", "Left"]),
                    "face": face_result()}[self.kind]

        def close(self):
            calls["closed"] += 1

    def factory(kind):
        return type(kind, (), {"create_from_options": staticmethod(lambda options: Landmarker(kind, options))})

    vision = types.ModuleType("mediapipe.tasks.python.vision")
    vision.RunningMode = SimpleNamespace(IMAGE="IMAGE", VIDEO="VIDEO")
    vision.PoseLandmarker, vision.HandLandmarker, vision.FaceLandmarker = factory("pose"), factory("hand"), factory("face")
    for name in ("PoseLandmarkerOptions", "HandLandmarkerOptions", "FaceLandmarkerOptions"):
        setattr(vision, name, lambda **kw: SimpleNamespace(**kw))
    tasks_python = types.ModuleType("mediapipe.tasks.python")
    tasks_python.BaseOptions = lambda model_asset_path=None: SimpleNamespace(model_asset_path=model_asset_path)
    tasks_python.vision = vision
    mp = types.ModuleType("mediapipe")
    mp.__version__ = "1.2.2"
    mp.Image = lambda image_format, data: SimpleNamespace(image_format=image_format, data=data)
    mp.ImageFormat = SimpleNamespace(SRGB="SRGB")
    mp.tasks = types.ModuleType("mediapipe.tasks")
    mp.tasks.python = tasks_python
    for name, module in {"mediapipe": mp, "mediapipe.tasks": mp.tasks, "mediapipe.tasks.python": tasks_python,
                         "mediapipe.tasks.python.vision": vision}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_tasks_detector_runs_the_three_landmarkers_in_video_mode(tmp_path, fake_tasks_mediapipe):
    for name in ("pose_landmarker_full.task", "hand_landmarker.task", "face_landmarker.task"):
        (tmp_path / name).write_bytes(b"x")
    assert not mpp.has_legacy_solutions()  # the stand-in has no mp.solutions, like mediapipe 1.x
    det = detect.load_detector("mediapipe", tmp_path)
    assert isinstance(det, mpp.MediapipeTasksDetector)
    assert detect.describe(det) == ("mediapipe 1.2.2 Tasks (pose_landmarker_full.task + hand_landmarker.task + "
                                    "face_landmarker.task)")
    frames = detect.detect_video(det, np.zeros((3, 40, 30, 3), np.uint8))
    created = fake_tasks_mediapipe["created"]
    assert [(k, m) for k, _, m in created] == [("pose", "VIDEO"), ("hand", "VIDEO"), ("face", "VIDEO")]
    assert created[0][1] == str(tmp_path / "pose_landmarker_full.task")
    stamps = [t for k, t in fake_tasks_mediapipe["video"] if k == "pose"]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3  # VIDEO mode needs increasing timestamps
    assert [f.num_people for f in frames] == [1, 1, 1]
    np.testing.assert_allclose(frames[0].people[0, 92:113, :2], hand(0.7, 0.61), rtol=1e-6)
    det.reset()
    assert fake_tasks_mediapipe["closed"] == 3


def test_tasks_detector_without_hand_and_face_files(tmp_path, fake_tasks_mediapipe):
    (tmp_path / "pose_landmarker_lite.task").write_bytes(b"x")
    det = detect.load_detector("mediapipe", tmp_path)
    assert detect.describe(det) == "mediapipe 1.2.2 Tasks (pose_landmarker_lite.task; no hands or face (.task file missing))"
    (frame,) = det.detect_batch(np.zeros((1, 40, 30, 3), np.uint8))
    assert frame.num_people == 1 and np.all(frame.people[0, 24:] == 0)
    with pytest.raises(FileNotFoundError, match="pose_landmarker_full.task"):
        detect.load_detector("mediapipe", tmp_path / "empty")


def test_an_unreadable_task_file_is_named(tmp_path, fake_tasks_mediapipe):
    (tmp_path / "pose_landmarker_full.task").write_bytes(b"x")
    det = detect.load_detector("mediapipe", tmp_path)

    def refuse(options):
        raise RuntimeError("Unable to open zip archive.")  # what mediapipe 1.2.2 says for a bad file

    det._vision.PoseLandmarker.create_from_options = staticmethod(refuse)
    with pytest.raises(RuntimeError, match="cannot load pose_landmarker_full.task from .*zip archive.*original pose"):
        det.detect_batch(np.zeros((1, 8, 8, 3), np.uint8))
