"""Tracking people across frames: crossing people keep their ids, re-entry keeps the id only when
it is unambiguous, person selection is by track (synthetic skeletons, shuffled detection order)."""
import numpy as np
import pytest

from poseanimate.pose import detect, tracking
from poseanimate.pose.keypoints import NUM_POINTS, PoseFrame

# A standing OpenPose body (18 points), unit height, feet on y = 1: (x, y) relative to the hip centre.
BODY = np.array([
    [0.0, -0.88], [0.0, -0.75], [-0.12, -0.74], [-0.16, -0.52], [-0.18, -0.30], [0.12, -0.74], [0.16, -0.52],
    [0.18, -0.30], [-0.07, -0.40], [-0.08, -0.20], [-0.08, 0.0], [0.07, -0.40], [0.08, -0.20], [0.08, 0.0],
    [-0.03, -0.91], [0.03, -0.91], [-0.06, -0.89], [0.06, -0.89]])


def person(cx, cy, height, legs=1.0, arms=1.0, rng=None, noise=0.0):
    """(134, 3) normalised points: body scaled to ``height``, legs / arms stretched by their factors."""
    pts = BODY.copy()
    for joint in (9, 10, 12, 13):  # knees and ankles below the hips
        pts[joint, 1] = pts[8, 1] + (pts[joint, 1] - pts[8, 1]) * legs
    for joint, root in ((3, 2), (4, 2), (6, 5), (7, 5)):
        pts[joint] = pts[root] + (pts[joint] - pts[root]) * arms
    out = np.zeros((NUM_POINTS, 3), np.float32)
    xy = np.array([cx, cy]) + pts * height
    if rng is not None and noise:
        xy = xy + rng.normal(0, noise, xy.shape)
    out[:18, :2], out[:18, 2] = xy, 0.9
    return out


def frames_of(people_per_frame, rng):
    """PoseFrames with each frame's people in a random order (detectors give no order)."""
    out, truth = [], []
    for people in people_per_frame:
        order = rng.permutation(len(people))
        out.append(PoseFrame(640, 480, np.array([people[i][1] for i in order]).reshape(-1, NUM_POINTS, 3)))
        truth.append([people[i][0] for i in order])
    return out, truth


def assert_consistent(ids, truth):
    """Each true person has one id for the whole clip, and different people different ids."""
    names = {}
    for fids, fnames in zip(ids, truth):
        for tid, name in zip(fids, fnames):
            assert names.setdefault(name, tid) == tid, f"{name} changed id"
    assert len(set(names.values())) == len(names)
    return names


def test_two_people_crossing_keep_their_ids():
    rng = np.random.default_rng(0)
    clip = []
    for t in range(30):
        a = ("tall", person(0.15 + 0.025 * t, 0.6, 0.5, rng=rng, noise=0.002))
        b = ("short", person(0.85 - 0.025 * t, 0.62, 0.42, legs=0.8, rng=rng, noise=0.002))
        clip.append([a, b])
    frames, truth = frames_of(clip, rng)
    ids = tracking.track_people(frames)
    names = assert_consistent(ids, truth)
    assert names == {"tall": 0, "short": 1}  # numbered by first appearance, left to right
    # per-frame "largest" would follow whoever is bigger; by track it is the same person throughout
    chosen, chosen_ids = tracking.select_tracks(frames, ids, "largest")
    assert all(f.num_people == 1 for f in chosen) and {i for f in chosen_ids for i in f} == {0}
    heights = [f.people[0][10, 1] - f.people[0][0, 1] for f in chosen]
    assert min(heights) > 0.42  # always the tall one (0.44; the short one is 0.34)


def test_reentry_keeps_the_id_when_unambiguous():
    rng = np.random.default_rng(1)
    clip = []
    for t in range(40):
        people = [("stays", person(0.3, 0.6, 0.45, legs=0.75, arms=1.3, rng=rng, noise=0.002))]
        if t < 10 or t >= 25:  # leaves on the right, comes back from the left
            x = 0.8 if t < 10 else 0.1 + 0.01 * (t - 25)
            people.append(("returns", person(x, 0.6, 0.5, rng=rng, noise=0.002)))
        clip.append(people)
    frames, truth = frames_of(clip, rng)
    ids = tracking.track_people(frames)
    assert_consistent(ids, truth)


def test_reentry_of_lookalikes_gets_a_new_id():
    rng = np.random.default_rng(2)
    clip = []
    for t in range(30):
        if t < 8:  # two people of the same build, both leave
            clip.append([("a", person(0.3, 0.6, 0.5, rng=rng, noise=0.002)),
                         ("b", person(0.7, 0.6, 0.5, rng=rng, noise=0.002))])
        elif t < 20:
            clip.append([])
        else:  # one of them (which?) comes back in the middle
            clip.append([("c", person(0.5, 0.6, 0.5, rng=rng, noise=0.002))])
    frames, truth = frames_of(clip, rng)
    ids = tracking.track_people(frames)
    names = assert_consistent(ids, truth)
    assert names["c"] not in (names["a"], names["b"])


def test_selection_by_track_first_index_and_all():
    rng = np.random.default_rng(3)
    clip = []
    for t in range(12):
        people = [("left", person(0.25, 0.6, 0.4, rng=rng))]
        if t >= 3:  # a bigger person walks in later and stays
            people.append(("late", person(0.7, 0.6, 0.6, rng=rng)))
        clip.append(people)
    frames, truth = frames_of(clip, rng)
    ids = tracking.track_people(frames)
    names = assert_consistent(ids, truth)
    assert names == {"left": 0, "late": 1}
    first, _ = tracking.select_tracks(frames, ids, "first")
    assert all(abs(f.people[0][1, 0] - 0.25) < 0.01 for f in first)
    largest, _ = tracking.select_tracks(frames, ids, "largest")  # 0.6-high for 9 of 12 frames beats 0.4 for 12
    assert [f.num_people for f in largest] == [0, 0, 0] + [1] * 9
    by_index, _ = tracking.select_tracks(frames, ids, "1")
    assert [f.num_people for f in by_index] == [0, 0, 0] + [1] * 9
    everyone, every_ids = tracking.select_tracks(frames, ids, "all")
    assert every_ids[5] == [0, 1] and abs(everyone[5].people[0][1, 0] - 0.25) < 0.01


class ListDetector:
    """A backend that returns prepared frames (the frame index is written in the image's first pixel)."""

    name = "list"

    def __init__(self, frames):
        self.frames = frames

    def detect_batch(self, images):
        return [self.frames[int(img[0, 0, 0])] for img in images]


def test_detect_video_selects_by_track():
    """detect_video's 'largest' is the same person for the whole clip, even where the other is bigger."""
    rng = np.random.default_rng(4)
    clip = []
    for t in range(10):
        grow = 0.3 + 0.04 * t  # the second person walks towards the camera: bigger than the first from t=5
        clip.append([("near", person(0.3, 0.6, 0.5, rng=rng)), ("walker", person(0.7, 0.6, grow, rng=rng))])
    frames, truth = frames_of(clip, rng)
    images = np.zeros((10, 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(10)
    out = detect.detect_video(ListDetector(frames), images, person="largest", batch_size=3)
    heights = [f.people[0][10, 1] - f.people[0][0, 1] for f in out]
    assert np.allclose(heights, 0.5 * 0.88, atol=0.01)  # always "near" (larger on average)


def test_detect_poses_node_index_and_smoothing():
    """The node's person_index picks a track; smoothing filters it (the raw detections stay as given)."""
    import torch

    import poseanimate
    from poseanimate.pose import keypoints, smoothing

    rng = np.random.default_rng(5)
    clip = [[("a", person(0.3, 0.6, 0.5, rng=rng, noise=0.003)), ("b", person(0.7, 0.6, 0.4, rng=rng, noise=0.003))]
            for _ in range(16)]
    frames, _ = frames_of(clip, rng)
    images = torch.zeros(16, 4, 4, 3)
    images[:, 0, 0, 0] = torch.arange(16) / 255
    node = poseanimate.NODE_CLASS_MAPPINGS["PoseAnimateDetectPoses"]()
    spec = node.INPUT_TYPES()
    assert "index" in spec["required"]["person"][0] and spec["optional"]["smoothing"][1]["default"] == 0.0
    (raw,) = node.detect(images, ListDetector(frames), person="index", person_index=1)
    (smooth,) = node.detect(images, ListDetector(frames), person="index", person_index=1, smoothing=0.8)
    raw, smooth = keypoints.frames_from_pose_keypoint(raw), keypoints.frames_from_pose_keypoint(smooth)
    assert all(abs(f.people[0][1, 0] - 0.7) < 0.02 for f in raw)  # track 1 = the person on the right
    assert smoothing.jitter(smooth) < 0.5 * smoothing.jitter(raw)
