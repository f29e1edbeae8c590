"""The distilled preset (step-distillation LoRAs of the lightx2v kind) on both Wan samplers:
the distilled grid and sampler, guidance off (one transformer call per step), call counts."""
import pytest
import torch

from poseanimate.models.one_to_all import pipeline as o2a
from poseanimate.models.unianimate import pipeline as ua
from poseanimate.models.unianimate import windows as win
from poseanimate.models.wan import scheduler
from test_one_to_all_pipeline import RecordingModel, run
from test_unianimate_pipeline import Counting, _generate, tiny_model  # noqa: F401 (fixture)


def test_distilled_grid_is_lightx2v_timesteps_on_the_shift_5_curve():
    # lightx2v's 4-step config: denoising_step_list [1000, 750, 500, 250] of linspace(1, 0, 1001)[:-1]
    # shifted with sample_shift 5, i.e. sigma = 5 s / (1 + 4 s) at s = 1, 0.75, 0.5, 0.25
    want = [5 * s / (1 + 4 * s) for s in (1.0, 0.75, 0.5, 0.25)] + [0.0]
    assert torch.allclose(scheduler.distilled_sigmas(4), torch.tensor(want), atol=1e-6)
    eight = scheduler.distilled_sigmas(8)
    assert eight.numel() == 9 and bool((eight[:-1] > eight[1:]).all()) and float(eight[0]) == 1.0


def test_distilled_sampler_predicts_x0_and_renoises_from_the_seed():
    x0 = torch.randn(1, 4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    s = scheduler.FlowMatchDistilled.distilled(4, seed=9)
    x = (1 - s.sigmas[0]) * x0 + s.sigmas[0] * noise
    v = noise - x0  # the exact flow: the sampler's x0 prediction is x0 itself
    nxt = s.step(x, v, 0)
    again = scheduler.FlowMatchDistilled.distilled(4, seed=9).step(x, v, 0)
    assert torch.equal(nxt, again)  # the same seed re-noises the same way
    fresh = (nxt - (1 - s.sigmas[1]) * x0) / s.sigmas[1]  # the noise it drew
    assert not torch.allclose(fresh, noise, atol=1e-3) and abs(float(fresh.std()) - 1) < 0.5
    assert torch.allclose(s.step(x, v, 3, out_dtype=torch.float32), x - s.sigmas[3] * v, atol=1e-6)  # last: x0
    euler = scheduler.FlowMatchDistilled.distilled(4, renoise=False)
    assert torch.allclose(euler.step(x, v, 0), x + (s.sigmas[1] - s.sigmas[0]) * v, atol=1e-6)
    frozen = s.step(x, v, 1, frozen_frames=[0])
    assert torch.equal(frozen[:, :, 0], x[:, :, 0])


def test_one_to_all_distilled_preset_one_call_per_step():
    result, model, _ = run(frames=90, steps=4, preset="distilled")
    grid = scheduler.distilled_sigmas(4)[:-1] * 1000
    assert len(model.calls) == 2 * 4 == result.info["transformer_calls"]  # chunks x steps x 1 call
    assert [float(c["t"][0]) for c in model.calls[:4]] == pytest.approx(grid.tolist())
    assert all(c["ref"] is model.calls[0]["ref"] and c["scale"] == 1.0 for c in model.calls[:4])  # cond only
    handle = o2a.OneToAllModel(RecordingModel())
    assert handle.transformer_calls(90, 4, preset="distilled") == 8
    assert handle.transformer_calls(90, 30) == 2 * 30 * 3  # the official preset: three-way guidance
    again, _, _ = run(frames=90, steps=4, preset="distilled")
    assert (again.frames == result.frames).all()
    with pytest.raises(o2a.OneToAllInputError, match="4..8 steps"):
        run(frames=10, steps=30, preset="distilled")


def test_unianimate_distilled_preset_drops_cfg(tiny_model):  # noqa: F811
    counting = {}

    def wrap(model):
        counting["m"] = Counting(model)
        return counting["m"]

    _generate(tiny_model, frames=23, context_size=4, cfg=1.5, steps=4, model_wrap=wrap, preset="distilled")
    windows = len(win.plan_windows(7, 4, 3))
    assert counting["m"].calls == [True] * (4 * windows)  # no negative pass: one call per window step
    model = ua.UniAnimateModel(*tiny_model)
    assert model.transformer_calls(23, 4, 1.5, 4, 3, preset="distilled") == 4 * windows
    assert model.transformer_calls(23, 4, 1.5, 4, 3) == 2 * 4 * windows
    with pytest.raises(ua.UniAnimateInputError, match="distilled"):
        _generate(tiny_model, steps=2, preset="distilled")
    with pytest.raises(ua.UniAnimateInputError, match="preset"):
        _generate(tiny_model, preset="turbo")
