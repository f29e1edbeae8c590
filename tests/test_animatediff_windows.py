"""Context windows against ADE's recorded schedules and fusion weights (README section 3)."""
import json
from pathlib import Path

import pytest
import torch

from poseanimate.models.animatediff import context_windows as cw

REF = Path(__file__).parent / "fixtures" / "reference" / "animatediff" / "context_windows.json"
DATA = json.loads(REF.read_text())
SCHEDULES = DATA["schedules"]


def _opts(entry, fuse="pyramid", **kw):
    return cw.ContextOptions(
        context_length=DATA["context_length"],
        context_overlap=DATA["context_overlap"],
        context_stride=entry["context_stride"] or 1,
        schedule=entry["schedule_id"],
        closed_loop=entry["closed_loop"],
        fuse_method=fuse,
        **kw,
    )


def _cases():
    for name, entry in SCHEDULES.items():
        for n, rec in entry["by_num_frames"].items():
            yield pytest.param(name, int(n), id=f"{name}-{n}")


@pytest.mark.parametrize("name,n", list(_cases()))
def test_windows_match_ade(name, n):
    entry = SCHEDULES[name]
    rec = entry["by_num_frames"][str(n)]
    assert cw.sliding_active(n, _opts(entry)) == rec["sliding_active_default"]
    # Compare the schedule as ADE builds it (forced on, like use_on_equal_length for n == 16).
    opts = _opts(entry, use_on_equal_length=True)
    by_step = rec["windows_by_step"] if "windows_by_step" in rec else {"0": rec["windows"]}
    invalid = rec.get("invalid_window_positions_by_step", {})
    for step, expected in by_step.items():
        bad = set(invalid.get(step, []))
        if n < opts.context_length:
            continue  # sliding can never be active below one window
        ours = cw.get_windows(n, opts, int(step))
        want = [w for i, w in enumerate(expected) if i not in bad]
        assert ours[: len(want)] == want, f"{name} n={n} step={step}"
        # windows are appended only to re-cover frames left out by dropping invalid ones
        for extra in ours[len(want):]:
            assert bad and extra == list(range(extra[0], extra[0] + 16))
            assert extra[0] not in set().union(*map(set, want))
        # every window valid, every frame covered
        assert all(len(set(w)) == len(w) and all(0 <= v < n for v in w) for w in ours)
        assert set().union(*map(set, ours)) == set(range(n))


def test_invalid_windows_are_the_documented_ones():
    """The only windows we drop are the ones the reference marks invalid."""
    dropped = 0
    for name, entry in SCHEDULES.items():
        for n, rec in entry["by_num_frames"].items():
            for step, pos in rec.get("invalid_window_positions_by_step", {}).items():
                for p in pos:
                    w = rec["windows_by_step"][step][p]
                    assert not cw._is_valid(w, int(n))
                    dropped += 1
    assert dropped > 0


def test_inactive_gives_one_window():
    opts = cw.ContextOptions()
    assert cw.get_windows(16, opts) == [list(range(16))]
    assert cw.get_windows(5, opts) == [list(range(5))]


def test_ordered_halving():
    for k, v in DATA["ordered_halving"].items():
        assert cw.ordered_halving(int(k)) == v


@pytest.mark.parametrize("fuse", ["pyramid", "flat", "overlap-linear"])
def test_fuse_weights_len16(fuse):
    rec = DATA["fuse_weights_len16"][fuse]
    cases = {
        "first_window_idxs_0_15_of_32": (list(range(0, 16)), 32),
        "middle_window_idxs_12_27_of_48": (list(range(12, 28)), 48),
        "last_window_idxs_16_31_of_32": (list(range(16, 32)), 32),
        "only_window_idxs_0_15_of_16": (list(range(16)), 16),
    }
    opts = cw.ContextOptions(fuse_method=fuse)
    for key, (window, n) in cases.items():
        got = cw.fuse_weights(window, n, opts)
        assert got.dtype == torch.float32
        assert got.tolist() == rec[key], key


def test_pyramid_odd_lengths():
    opts = cw.ContextOptions()
    assert cw.fuse_weights(list(range(15)), 40, opts).tolist() == DATA["fuse_weights_len16"]["pyramid_len15"]
    assert cw.fuse_weights(list(range(17)), 40, opts).tolist() == DATA["fuse_weights_len16"]["pyramid_len17"]


@pytest.mark.parametrize("fuse", ["pyramid", "flat", "overlap-linear"])
def test_per_frame_weight_sums(fuse):
    opts = cw.ContextOptions(fuse_method=fuse, use_on_equal_length=True)
    for n, want in DATA["static_standard_per_frame_weight_sum_step0"][fuse].items():
        n = int(n)
        fuser = cw.WindowFuser(torch.zeros(1, 1, n, 1, 1), opts)
        for w in cw.get_windows(n, opts):
            fuser.add(w, torch.zeros(1, 1, len(w), 1, 1))
        assert torch.allclose(fuser.counts, torch.tensor(want), atol=1e-6), n


@pytest.mark.parametrize("key", list(DATA["effective_fusion_weights"].keys()))
def test_effective_fusion_weights(key):
    rec = DATA["effective_fusion_weights"][key]
    sched, n, fuse = key.split("|")
    n = int(n.split("=")[1])
    schedule = "standard_static" if sched == "standard_static" else "standard_uniform"
    opts = cw.ContextOptions(schedule=schedule, fuse_method=fuse)
    windows = cw.get_windows(n, opts, 0)
    assert windows == rec["windows"]
    # one-hot outputs: channel k = 1 for window k; the fused result is each frame's window shares
    k = len(windows)
    fuser = cw.WindowFuser(torch.zeros(1, k, n, 1, 1), opts)
    for i, w in enumerate(windows):
        out = torch.zeros(1, k, len(w), 1, 1)
        out[:, i] = 1.0
        fuser.add(w, out)
    got = fuser.result()[0, :, :, 0, 0].T  # [frame, window]
    assert torch.allclose(got, torch.tensor(rec["frame_by_window_weight"]), atol=2e-7)


def test_fuser_reconstructs_constant_signal():
    """Fusing identical per-frame predictions returns them unchanged (weights normalise)."""
    for fuse in ("pyramid", "flat", "overlap-linear", "relative"):
        opts = cw.ContextOptions(fuse_method=fuse)
        x = torch.randn(2, 4, 40, 3, 3, generator=torch.Generator().manual_seed(0))
        fuser = cw.WindowFuser(x, opts)
        for w in cw.get_windows(40, opts):
            fuser.add(w, x[:, :, w])
        assert torch.allclose(fuser.result(), x, atol=1e-5), fuse


def test_freenoise_shuffles_previous_segment():
    opts = cw.ContextOptions()
    noise = torch.randn(1, 4, 40, 2, 2, generator=torch.Generator().manual_seed(1))
    out = cw.freenoise(noise, opts, seed=7)
    assert torch.equal(out[:, :, :16], noise[:, :, :16])
    # frames 16..27 are a permutation of frames 0..11
    src = [int(torch.nonzero((noise[0, :, :12] - out[0, :, f : f + 1]).abs().sum((0, 2, 3)) == 0)[0]) for f in range(16, 28)]
    assert sorted(src) == list(range(12))
    assert src != list(range(12))
    # frames 28..39 copy (shuffled) frames 12..23 as they were after the first pass
    seg = out[:, :, 12:24]
    for f in range(28, 40):
        assert any(torch.equal(out[:, :, f], seg[:, :, j]) for j in range(12))
    assert torch.equal(cw.freenoise(noise, opts, seed=7), out)
    assert not torch.equal(cw.freenoise(noise, opts, seed=8), out)
    assert torch.equal(cw.freenoise(noise[:, :, :16], opts, seed=7), noise[:, :, :16])


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="context schedule"):
        cw.ContextOptions(schedule="nope")
    with pytest.raises(ValueError, match="context_overlap"):
        cw.ContextOptions(context_overlap=16)
    with pytest.raises(ValueError, match="relative"):
        cw.ContextOptions(schedule="looped_uniform", fuse_method="relative")
