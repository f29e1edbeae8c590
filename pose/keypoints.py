"""Pose keypoints: one internal layout, and ComfyUI's POSE_KEYPOINT on the wire.

Internal layout (DWPose after its OpenPose remap), per person 134 x (x, y, score)
with x, y normalised to the canvas (0..1) and the detector's real score:

    body 0-17 (OpenPose order: Nose, Neck, RSho, RElb, RWri, LSho, LElb, LWri,
               RHip, RKnee, RAnk, LHip, LKnee, LAnk, REye, LEye, REar, LEar)
    feet 18-23 (COCO-WholeBody: L big toe, L small toe, L heel, R big toe, R small toe, R heel)
    face 24-91 (iBUG-68), left hand 92-112, right hand 113-133

A missing point has score 0. POSE_KEYPOINT is comfyui_controlnet_aux's format
(flat [x, y, c] lists, pixel coordinates, c = 1 for kept points, missing parts
None), so graphs mix with that pack; because it throws the scores away, each
frame dict also carries ``poseanimate_people`` with our 134-point arrays, which
other packs ignore.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NUM_POINTS = 134
BODY = slice(0, 18)
FEET = slice(18, 24)
FACE = slice(24, 92)
LEFT_HAND = slice(92, 113)
RIGHT_HAND = slice(113, 134)
KEEP_THRESHOLD = 0.3  # comfyui_controlnet_aux keeps points with score >= 0.3
EXTRA_KEY = "poseanimate_people"
BODY_NAMES = ("Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist",
              "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar")


class PoseFormatError(ValueError):
    """POSE_KEYPOINT data that cannot be read (wrong shape or types)."""


@dataclass
class PoseFrame:
    """People found in one frame, in the internal 134-point layout."""

    width: int
    height: int
    people: np.ndarray = field(default_factory=lambda: np.zeros((0, NUM_POINTS, 3), np.float32))

    def __post_init__(self):
        self.people = sanitize_people(self.people)
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise PoseFormatError(f"canvas size must be positive, got {self.width}x{self.height}")
        self.width, self.height = int(self.width), int(self.height)

    @property
    def num_people(self) -> int:
        return int(self.people.shape[0])

    def copy(self) -> "PoseFrame":
        return PoseFrame(self.width, self.height, self.people.copy())

    def pixels(self, person: int = 0) -> np.ndarray:
        """Person ``person`` as (134, 3) with x, y in pixels of this canvas."""
        pts = self.people[person].copy()
        pts[:, 0] *= self.width
        pts[:, 1] *= self.height
        return pts


def sanitize_people(people) -> np.ndarray:
    """Coerce to float32 (P, 134, 3); NaN/inf points become missing (score 0).

    Out-of-canvas coordinates are kept: people do walk out of frame, renderers clip.
    """
    arr = np.asarray(people, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.size == 0:
        return np.zeros((0, NUM_POINTS, 3), np.float32)
    if arr.ndim != 3 or arr.shape[1:] != (NUM_POINTS, 3):
        raise PoseFormatError(f"expected people of shape (P, {NUM_POINTS}, 3), got {arr.shape}")
    arr = arr.copy()
    bad = ~np.isfinite(arr).all(axis=2)
    arr[bad] = 0.0
    arr[..., 2] = np.clip(arr[..., 2], 0.0, None)
    return arr


def person_area(person: np.ndarray, threshold: float = KEEP_THRESHOLD) -> float:
    """Bounding-box area of a person's confident points (normalised units)."""
    pts = person[person[:, 2] >= threshold, :2]
    if len(pts) < 2:
        return 0.0
    span = pts.max(axis=0) - pts.min(axis=0)
    return float(span[0] * span[1])


def select_person(frame: PoseFrame, which: str = "largest") -> PoseFrame:
    """Keep one person: ``largest`` (default), ``first`` or an index given as text ("0", "1", ...)."""
    if frame.num_people <= 1:
        return frame.copy()
    if which == "largest":
        idx = int(np.argmax([person_area(p) for p in frame.people]))
    elif which == "first":
        idx = 0
    else:
        try:
            idx = int(which)
        except ValueError as exc:
            raise ValueError(f"person selection must be 'largest', 'first' or an index, got {which!r}") from exc
        if not 0 <= idx < frame.num_people:
            return PoseFrame(frame.width, frame.height)
    return PoseFrame(frame.width, frame.height, frame.people[idx : idx + 1].copy())


# --- POSE_KEYPOINT (comfyui_controlnet_aux) encoding ---------------------------------------

def _flat_part(points: np.ndarray, width: int, height: int) -> list[float] | None:
    out: list[float] = []
    present = False
    for x, y, s in points:
        if s >= KEEP_THRESHOLD:
            out += [float(x) * width, float(y) * height, 1.0]
            present = True
        else:
            out += [0.0, 0.0, 0.0]
    return out if present else None


def frame_to_dict(frame: PoseFrame) -> dict:
    """One POSE_KEYPOINT frame: controlnet_aux fields in pixels, plus our real scores."""
    people = []
    for person in frame.people:
        face = None
        if _flat_part(person[FACE], frame.width, frame.height) is not None:  # controlnet_aux appends REye, LEye
            face = _flat_part(np.concatenate([person[FACE], person[14:16]]), frame.width, frame.height)
        people.append({
            "pose_keypoints_2d": _flat_part(person[BODY], frame.width, frame.height) or [0.0] * 54,
            "face_keypoints_2d": face,
            "hand_left_keypoints_2d": _flat_part(person[LEFT_HAND], frame.width, frame.height),
            "hand_right_keypoints_2d": _flat_part(person[RIGHT_HAND], frame.width, frame.height),
        })
    return {
        "people": people,
        "canvas_height": frame.height,
        "canvas_width": frame.width,
        EXTRA_KEY: np.round(frame.people.astype(np.float64), 6).tolist(),
    }


def frames_to_pose_keypoint(frames: list[PoseFrame]) -> list[dict]:
    return [frame_to_dict(f) for f in frames]


def _read_part(values, count: int, what: str) -> np.ndarray | None:
    if values is None:
        return None
    if not isinstance(values, (list, tuple)) or len(values) != 3 * count:
        got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise PoseFormatError(f"{what} must be a flat list of {3 * count} numbers [x, y, c, ...], got {got}")
    try:
        return np.asarray(values, dtype=np.float64).reshape(count, 3)
    except (TypeError, ValueError) as exc:
        raise PoseFormatError(f"{what} holds non-numeric values") from exc


def _is_normalized(parts: list[np.ndarray]) -> bool:
    """controlnet_aux's rule: coordinates of present points all within [-1, 1] are normalised."""
    present = [p[p[:, 2] > 0, :2] for p in parts if p is not None]
    present = [p for p in present if len(p)]
    if not present:
        return True
    pts = np.concatenate(present)
    pts = pts[np.isfinite(pts).all(axis=1)]
    return bool(len(pts) == 0 or np.abs(pts).max() <= 1.0)


def frame_from_dict(data: dict, index: int = 0) -> PoseFrame:
    """Read one POSE_KEYPOINT frame (ours or another pack's; pixel or normalised)."""
    where = f"POSE_KEYPOINT frame {index}"
    if not isinstance(data, dict):
        raise PoseFormatError(f"{where} must be a dict with 'people', 'canvas_width', 'canvas_height'; got {type(data).__name__}")
    try:
        width, height = int(data["canvas_width"]), int(data["canvas_height"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PoseFormatError(f"{where} needs integer 'canvas_width' and 'canvas_height'") from exc
    people_in = data.get("people", [])
    if not isinstance(people_in, list):
        raise PoseFormatError(f"{where}: 'people' must be a list")
    extra = data.get(EXTRA_KEY)
    if extra is not None:
        arr = np.asarray(extra, dtype=np.float32) if len(extra) else np.zeros((0, NUM_POINTS, 3), np.float32)
        if arr.ndim != 3 or arr.shape[1:] != (NUM_POINTS, 3):
            raise PoseFormatError(f"{where}: '{EXTRA_KEY}' must be (people, {NUM_POINTS}, 3), got {arr.shape}")
        return PoseFrame(width, height, arr)
    people = []
    for p, person in enumerate(people_in):
        if not isinstance(person, dict):
            raise PoseFormatError(f"{where} person {p} must be a dict")
        body = _read_part(person.get("pose_keypoints_2d"), 18, f"{where} person {p} pose_keypoints_2d")
        face = person.get("face_keypoints_2d")
        face_arr = None
        if face is not None:
            count = len(face) // 3 if isinstance(face, (list, tuple)) and len(face) in (204, 210) else 70
            face_arr = _read_part(face, count, f"{where} person {p} face_keypoints_2d")
        left = _read_part(person.get("hand_left_keypoints_2d"), 21, f"{where} person {p} hand_left_keypoints_2d")
        right = _read_part(person.get("hand_right_keypoints_2d"), 21, f"{where} person {p} hand_right_keypoints_2d")
        parts = [body, face_arr, left, right]
        scale = (1.0, 1.0) if _is_normalized(parts) else (float(width), float(height))
        out = np.zeros((NUM_POINTS, 3), np.float32)
        for arr, sl in ((body, BODY), (left, LEFT_HAND), (right, RIGHT_HAND)):
            if arr is not None:
                out[sl] = arr
        if face_arr is not None:
            out[FACE] = face_arr[:68]
        out[:, 0] /= scale[0]
        out[:, 1] /= scale[1]
        people.append(out)
    return PoseFrame(width, height, np.stack(people) if people else np.zeros((0, NUM_POINTS, 3), np.float32))


def frames_from_pose_keypoint(data) -> list[PoseFrame]:
    """Read POSE_KEYPOINT (a list of frame dicts, or a single frame dict)."""
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, (list, tuple)):
        raise PoseFormatError(f"POSE_KEYPOINT must be a list of frame dicts, got {type(data).__name__}")
    if len(data) == 0:
        raise PoseFormatError("POSE_KEYPOINT is empty: no frames. Check the pose detection input video.")
    return [frame_from_dict(d, i) for i, d in enumerate(data)]
