"""People linked across frames into tracks, and person selection by track.

Why: choosing "the largest person" frame by frame swaps people whenever two are about the same
size, and a dancer who leaves the frame comes back as someone else. Here every detection gets a
track id for the whole clip:

* frame to frame, detections are matched to the tracks seen in the last ``max_gap`` frames by
  a cost of ``1 - IoU`` of the boxes plus the mean keypoint distance (over points both have,
  in units of the track's box diagonal), both taken against the track's position predicted
  with its last velocity, so two people crossing keep their ids; a pair only matches below
  ``max_cost``; pairs are taken cheapest first;
* a detection no recent track claims is compared with the tracks not seen in this frame by
  body proportions (bone lengths over the torso length) and size;
  it takes the lost id only when exactly one lost track is close (``reentry_cost``) and the
  next candidate is clearly further (``ambiguity`` times). Otherwise it starts a new id.

Track ids are numbered in order of first appearance (left to right within a frame).
Selection (``select_tracks``): ``largest`` = the track with the largest box area averaged over
the whole clip (absent frames count 0, so a passer-by does not win), ``first`` = the first
seen, an index = that track id, ``all`` = everyone, ordered by track id in every frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .keypoints import KEEP_THRESHOLD, PoseFrame

# OpenPose body bones used for the proportions signature (neck-hip torso is the unit).
BONES = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (1, 11), (8, 9), (9, 10), (11, 12), (12, 13),
         (1, 0))
TORSO = ((1, 8), (1, 11))


def person_box(person: np.ndarray, threshold: float = KEEP_THRESHOLD) -> np.ndarray | None:
    """(x0, y0, x1, y1) of the confident body/feet points (normalised), None if fewer than 2."""
    pts = person[:24]
    pts = pts[pts[:, 2] >= threshold, :2]
    if len(pts) < 2:
        pts = person[person[:, 2] >= threshold, :2]
        if len(pts) < 2:
            return None
    return np.concatenate([pts.min(axis=0), pts.max(axis=0)]).astype(np.float64)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def proportions(person: np.ndarray, threshold: float = KEEP_THRESHOLD) -> np.ndarray:
    """Bone lengths over the torso length (NaN where a bone or the torso is missing)."""
    pts, ok = person[:, :2].astype(np.float64), person[:, 2] >= threshold
    torso = [np.linalg.norm(pts[a] - pts[b]) for a, b in TORSO if ok[a] and ok[b]]
    out = np.full(len(BONES), np.nan)
    if not torso or max(torso) <= 0:
        return out
    unit = float(np.mean(torso))
    for i, (a, b) in enumerate(BONES):
        if ok[a] and ok[b]:
            out[i] = np.linalg.norm(pts[a] - pts[b]) / unit
    return out


@dataclass
class _Track:
    id: int
    frames: list = field(default_factory=list)  # (frame index, person index)
    boxes: list = field(default_factory=list)
    points: list = field(default_factory=list)  # (134, 3) arrays
    shapes: list = field(default_factory=list)  # proportions of each observation

    @property
    def last_frame(self) -> int:
        return self.frames[-1][0]

    def predicted(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Box and points expected at ``frame`` (constant velocity from the last two observations)."""
        box, pts = self.boxes[-1], self.points[-1]
        if len(self.frames) < 2:
            return box, pts
        dt = self.frames[-1][0] - self.frames[-2][0]
        shift = (self._center(-1) - self._center(-2)) / max(dt, 1) * (frame - self.last_frame)
        moved = pts.copy()
        moved[:, :2] += shift
        return box + np.concatenate([shift, shift]), moved

    def _center(self, i: int) -> np.ndarray:
        b = self.boxes[i]
        return np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])

    def signature(self) -> tuple[np.ndarray, float]:
        """Median body proportions and median box height over the track's observations."""
        shapes = np.array(self.shapes)
        with np.errstate(all="ignore"):
            sig = np.nanmedian(shapes, axis=0) if len(shapes) else np.full(len(BONES), np.nan)
        return sig, float(np.median([b[3] - b[1] for b in self.boxes]))


@dataclass(frozen=True)
class TrackingConfig:
    max_gap: int = 8            # frames a track may be unseen and still be matched by position
    max_cost: float = 1.2       # 1 - IoU + keypoint distance; above it a pair does not match
    keypoint_weight: float = 1.0
    reentry_cost: float = 0.25  # proportions + size difference that still counts as the same person
    ambiguity: float = 1.5      # the second-closest lost track must be this much further


def _keypoint_distance(a: np.ndarray, b: np.ndarray, box: np.ndarray) -> float:
    common = (a[:, 2] >= KEEP_THRESHOLD) & (b[:, 2] >= KEEP_THRESHOLD)
    common[24:] = False  # body and feet: face and hand points crowd around a few joints
    if not common.any():
        return 1.0
    diag = max(float(np.hypot(box[2] - box[0], box[3] - box[1])), 1e-6)
    return float(np.linalg.norm(a[common, :2] - b[common, :2], axis=1).mean() / diag)


def _shape_distance(sig: np.ndarray, height: float, person: np.ndarray, box: np.ndarray) -> float:
    shape = proportions(person)
    both = ~np.isnan(sig) & ~np.isnan(shape)
    if both.sum() < 4:
        return np.inf  # too little of the body seen to recognise anyone
    bones = float(np.mean(np.abs(shape[both] - sig[both]) / np.maximum(sig[both], 1e-6)))
    size = abs(np.log(max(box[3] - box[1], 1e-6) / max(height, 1e-6)))
    return bones + 0.25 * size


def track_people(frames: list[PoseFrame], config: TrackingConfig = TrackingConfig()) -> list[list[int]]:
    """Track id of every person in every frame (``ids[t][p]`` for ``frames[t].people[p]``)."""
    tracks: list[_Track] = []
    ids: list[list[int]] = []
    for t, frame in enumerate(frames):
        people = frame.people
        boxes = [person_box(p) for p in people]
        frame_ids = [-1] * len(people)
        order = sorted(range(len(people)), key=lambda i: boxes[i][0] if boxes[i] is not None else np.inf)
        recent = [tr for tr in tracks if t - tr.last_frame <= config.max_gap]
        pairs = []
        for tr in recent:
            pbox, ppts = tr.predicted(t)
            for i in order:
                if boxes[i] is None:
                    continue
                cost = 1.0 - box_iou(pbox, boxes[i]) + config.keypoint_weight * _keypoint_distance(ppts, people[i], pbox)
                if cost <= config.max_cost:
                    pairs.append((cost, tr.id, i))
        used_tracks = set()
        for cost, tid, i in sorted(pairs):
            if tid in used_tracks or frame_ids[i] >= 0:
                continue
            frame_ids[i] = tid
            used_tracks.add(tid)
        lost = [tr for tr in tracks if tr.id not in used_tracks]
        for i in order:
            if frame_ids[i] >= 0 or boxes[i] is None:
                continue
            frame_ids[i] = _reenter(lost, people[i], boxes[i], used_tracks, config)
            if frame_ids[i] < 0:
                frame_ids[i] = len(tracks)
                tracks.append(_Track(len(tracks)))
            used_tracks.add(frame_ids[i])
        for i, tid in enumerate(frame_ids):
            if tid < 0:  # a person without usable points: its own short-lived id
                tid = frame_ids[i] = len(tracks)
                tracks.append(_Track(len(tracks)))
            tr = tracks[tid]
            box = boxes[i] if boxes[i] is not None else np.zeros(4)
            tr.frames.append((t, i))
            tr.boxes.append(box)
            tr.points.append(people[i].astype(np.float64))
            tr.shapes.append(proportions(people[i]))
        ids.append(frame_ids)
    return ids


def _reenter(lost: list[_Track], person: np.ndarray, box: np.ndarray, taken: set, config: TrackingConfig) -> int:
    """The id of the one lost track this person clearly is, else -1."""
    scored = sorted((_shape_distance(*tr.signature(), person, box), tr.id) for tr in lost if tr.id not in taken)
    if not scored or scored[0][0] > config.reentry_cost:
        return -1
    if len(scored) > 1 and scored[1][0] < config.ambiguity * scored[0][0]:
        return -1  # two candidates look alike: a new id is safer than a wrong one
    return scored[0][1]


def chosen_track(frames: list[PoseFrame], ids: list[list[int]], person: str = "largest") -> int | None:
    """The track id ``person`` ("largest", "first" or an index as text) names; None if no track."""
    n = max((max(f) for f in ids if f), default=-1) + 1
    if n == 0:
        return None
    if person == "largest":
        area = np.zeros(n)
        for frame, fids in zip(frames, ids):
            for p, tid in enumerate(fids):
                box = person_box(frame.people[p])
                if box is not None:
                    area[tid] += (box[2] - box[0]) * (box[3] - box[1])
        return int(np.argmax(area))
    if person == "first":
        return 0
    return int(person)


def select_tracks(frames: list[PoseFrame], ids: list[list[int]], person: str = "largest"
                  ) -> tuple[list[PoseFrame], list[list[int]]]:
    """(frames, their track ids) keeping the chosen track (``largest`` / ``first`` / an index as
    text) or ``all`` (people ordered by track id). A frame without the chosen track is empty."""
    out, out_ids = [], []
    if person == "all":
        for frame, fids in zip(frames, ids):
            order = np.argsort(np.asarray(fids, dtype=np.int64), kind="stable")
            out.append(PoseFrame(frame.width, frame.height, frame.people[order].copy()))
            out_ids.append([fids[i] for i in order])
        return out, out_ids
    chosen = chosen_track(frames, ids, person)
    for frame, fids in zip(frames, ids):
        keep = [p for p, tid in enumerate(fids) if tid == chosen]
        out.append(PoseFrame(frame.width, frame.height, frame.people[keep].copy()))
        out_ids.append([chosen] * len(keep))
    return out, out_ids


__all__ = ["TrackingConfig", "track_people", "chosen_track", "select_tracks", "person_box", "box_iou", "proportions"]
