"""One-Euro smoothing per track: less jitter, little lag, missing points stay missing, tracks do not mix."""
import numpy as np

from poseanimate.pose import smoothing, tracking
from poseanimate.pose.keypoints import NUM_POINTS, PoseFrame
from test_pose_tracking import person


def _clip(frames=60, noise=0.003, seed=0, people=1):
    """A person swaying (smooth path) with detector-like noise; returns (noisy frames, true frames)."""
    rng = np.random.default_rng(seed)
    noisy, true = [], []
    for t in range(frames):
        ps, ts = [], []
        for k in range(people):
            cx = 0.3 + 0.4 * k + 0.05 * np.sin(t / 8)
            clean = person(cx, 0.6 + 0.02 * np.cos(t / 5), 0.5 - 0.1 * k)
            dirty = clean.copy()
            dirty[:18, :2] += rng.normal(0, noise, (18, 2))
            ps.append(dirty)
            ts.append(clean)
        noisy.append(PoseFrame(640, 480, np.array(ps)))
        true.append(PoseFrame(640, 480, np.array(ts)))
    return noisy, true


def _error(frames, true):
    return float(np.mean([np.abs(f.people[:, :18, :2] - g.people[:, :18, :2]).mean() for f, g in zip(frames, true)]))


def test_smoothing_reduces_jitter_and_stays_on_the_path():
    noisy, true = _clip()
    ids = [[0]] * len(noisy)
    smooth = smoothing.smooth_tracks(noisy, ids, 0.5)
    assert smoothing.jitter(smooth) < 0.4 * smoothing.jitter(noisy)
    # a low-pass filter lags a moving point; the lag stays a few pixels (raw noise: 0.0024 = 1.5 px)
    assert _error(smooth, true) < 0.006
    stronger = smoothing.smooth_tracks(noisy, ids, 1.0)
    assert smoothing.jitter(stronger) < smoothing.jitter(smooth)
    assert smoothing.smooth_tracks(noisy, ids, 0.0) is noisy  # off


def test_fast_motion_follows_with_little_lag():
    """A wrist jumping 0.1 per frame is followed (the cut-off rises with speed)."""
    frames = []
    for t in range(30):
        p = person(0.5, 0.6, 0.5)
        p[4, 0] = 0.2 + 0.02 * t if t < 15 else 0.5 - 0.02 * (t - 15)
        frames.append(PoseFrame(640, 480, p[None]))
    smooth = smoothing.smooth_tracks(frames, [[0]] * 30, 0.5)
    lag = max(abs(s.people[0, 4, 0] - f.people[0, 4, 0]) for s, f in zip(smooth, frames))
    assert lag < 0.03


def test_missing_points_stay_missing_and_restart():
    noisy, _ = _clip(30)
    for t in range(10, 15):  # the left wrist disappears for 5 frames, then returns far away
        noisy[t].people[0, 7] = 0
    for t in range(15, 30):
        noisy[t].people[0, 7, :2] += 0.2
    smooth = smoothing.smooth_tracks(noisy, [[0]] * 30, 1.0)
    for t in range(10, 15):
        assert np.all(smooth[t].people[0, 7] == 0)
    assert np.allclose(smooth[15].people[0, 7], noisy[15].people[0, 7])  # restarted, no drag from before
    assert np.array_equal(smooth[3].people[0, :, 2], noisy[3].people[0, :, 2])  # scores unchanged


def test_tracks_are_filtered_on_their_own():
    noisy, _ = _clip(40, people=2)
    ids = tracking.track_people(noisy)
    alone = [smoothing.smooth_tracks([PoseFrame(f.width, f.height, f.people[k:k + 1]) for f in noisy],
                                     [[0]] * 40, 0.6) for k in range(2)]
    # the detector lists the two people in a different order every other frame
    shuffled = [PoseFrame(f.width, f.height, f.people[::-1] if t % 2 else f.people) for t, f in enumerate(noisy)]
    both = smoothing.smooth_tracks(shuffled, tracking.track_people(shuffled), 0.6)
    for t in range(40):
        for k in range(2):
            row = 1 - k if t % 2 else k
            assert np.allclose(both[t].people[row], alone[k][t].people[0], atol=1e-6)
    assert ids[0] == [0, 1]


def test_jitter_metric():
    still = [PoseFrame(100, 100, np.tile(np.array([0.5, 0.5, 1.0], np.float32), (1, NUM_POINTS, 1)))] * 5
    assert smoothing.jitter(still) == 0.0
    shaky = [PoseFrame(100, 100, np.tile(np.array([0.5 + 0.01 * (t % 2), 0.5, 1.0], np.float32), (1, NUM_POINTS, 1)))
             for t in range(5)]
    assert abs(smoothing.jitter(shaky) - 2.0) < 1e-4  # |1 - 0 + 1| px * 100 * 0.01 = 2 px
