"""AnimateDiff v2v as users run it: working size, frame cap, cfg 1, windows only when needed,
ComfyUI's noise layout, ControlNet percent range and hint resize, exact progress, interrupt."""
import logging
import math

import pytest
import torch

from poseanimate.models.animatediff import context_windows as cw
from poseanimate.models.animatediff import pipeline as pl
from poseanimate.models.animatediff import samplers as sm
from test_animatediff_sampling import CharTokenizer, make_pipe, tiny_models, video


class Recorder(torch.nn.Module):
    """A UNet stand-in that records each call's latent shape and batch (frames + window info)."""

    def __init__(self, max_frames=None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.max_frames = max_frames
        self.calls = []

    def forward(self, x, t, ctx, down_block_additional_residuals=None, mid_block_additional_residual=None):
        self.calls.append(tuple(x.shape))
        return x * 0.3 * self.w + ctx[:, 1, :4].sum(-1).view(-1, 1, 1, 1, 1) * 0.5  # token-dependent


@pytest.fixture(scope="module")
def parts():
    return tiny_models()


def _recorder_pipe(parts, max_frames=None):
    _, vae, te, _ = parts
    rec = Recorder(max_frames)
    return pl.AnimateDiffV2V(rec, vae, te, CharTokenizer()), rec


# ---------------------------------------------------------------- working size and frame cap
def test_working_size_short_side_512_cropped_like_comfyui():
    assert pl.working_size(1080, 1920) == ((512, 910), (512, 904))  # 910 -> 904 by a centred crop
    assert pl.working_size(1920, 1080) == ((910, 512), (904, 512))
    assert pl.working_size(400, 320) == ((400, 320), (400, 320))  # never upscaled
    assert pl.working_size(70, 66, 0) == ((70, 66), (64, 64))  # native size, cropped to multiples of 8
    x = torch.rand(1, 70, 67, 3)
    got = pl._to_working(x, (70, 67), (64, 64))
    want = x.permute(0, 3, 1, 2)[..., 3:67, 1:65] * 2 - 1  # ComfyUI: offset (d % 8) // 2
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="short_side"):
        pl.working_size(100, 100, -1)


def test_1080p_clip_runs_at_the_working_size(parts):
    p, rec = _recorder_pipe(parts)
    clip = video(1, h=1080, w=1920)
    res = p(clip, pl.V2VSettings(steps=1, select_every_nth_frame=1, sampler="euler", scheduler="normal"))
    assert res.size == (512, 904) and res.frames.shape == (1, 512, 904, 3)
    assert rec.calls and all(c[-2:] == (64, 113) for c in rec.calls)  # latents of 512x904
    back = p(clip[:1], pl.V2VSettings(steps=1, select_every_nth_frame=1, sampler="euler", scheduler="normal",
                                      output_size="source"))
    assert back.frames.shape == (1, 1080, 1920, 3) and back.size == (512, 904)


def test_frame_cap(parts):
    p, rec = _recorder_pipe(parts)
    st = pl.V2VSettings(steps=1, select_every_nth_frame=2, max_frames=3, sampler="euler", scheduler="normal")
    res = p(video(20, 32, 32), st)
    assert res.generated_frames == 3 and res.frames.shape[0] == 6  # frames 0,2,4 restored to 0..5
    assert rec.calls[0][2] == 3
    with pytest.raises(ValueError, match="max_frames"):
        p(video(4, 32, 32), pl.V2VSettings(steps=1, max_frames=-1))


# ---------------------------------------------------------------- cfg 1
@pytest.mark.parametrize("guidance,batch", [(1.0, 1), (7.0, 2)])
def test_cfg_1_skips_the_unconditional_pass(parts, guidance, batch):
    p, rec = _recorder_pipe(parts)
    st = pl.V2VSettings(prompt="a cat", steps=3, guidance=guidance, select_every_nth_frame=1, sampler="euler",
                        scheduler="normal")
    res = p(video(6, 32, 32), st)
    assert res.unet_calls == 3 and [c[0] for c in rec.calls] == [batch] * 3  # cond (+ uncond) per step


def test_cfg_1_equals_the_positive_prediction(parts):
    """guidance 1: uncond + 1 * (cond - uncond) == cond, without computing uncond."""
    _, vae, te, _ = parts
    p = make_pipe()
    st = dict(prompt="a cat", steps=2, select_every_nth_frame=1, sampler="euler", scheduler="normal", seed=3)
    a = p(video(4, 32, 32), pl.V2VSettings(guidance=1.0, **st)).frames
    c = p(video(4, 32, 32), pl.V2VSettings(guidance=1.001, **st)).frames  # two passes, nearly the same
    assert torch.allclose(a, c, atol=2e-3) and not torch.equal(a, c)


# ---------------------------------------------------------------- windows only when needed
def test_no_context_options_one_window_when_clip_fits(parts, caplog):
    p, rec = _recorder_pipe(parts, max_frames=16)
    st = pl.V2VSettings(steps=1, select_every_nth_frame=1, sampler="euler", scheduler="normal", window_batch=1)
    with caplog.at_level(logging.INFO):
        p(video(12, 16, 16), st)
    assert [c[2] for c in rec.calls] == [12] and "context windows" not in caplog.text
    rec.calls.clear()
    with caplog.at_level(logging.INFO):
        p(video(20, 16, 16), st)
    assert [c[2] for c in rec.calls] == [16, 16]  # ADE's defaults: static 16/4 -> [0..15], [4..19]
    assert "20 frames exceed the motion module's 16-frame length" in caplog.text and "standard_static" in caplog.text
    rec.calls.clear()
    p(video(20, 16, 16), pl.V2VSettings(steps=1, select_every_nth_frame=1, sampler="euler", scheduler="normal",
                                        context=cw.ContextOptions(context_length=8, context_overlap=2), window_batch=1))
    assert {c[2] for c in rec.calls} == {8}  # given options always apply


# ---------------------------------------------------------------- ComfyUI's noise
def test_ancestral_and_lcm_noise_is_comfyuis_default_noise_sampler():
    """The per-step noise is ``randn(x.size())`` from one generator seeded with the seed on x's device,
    drawn on the [F,C,h,w] latent (ComfyUI's default_noise_sampler); checked with a denoiser that
    returns zeros, where each step's noise is recoverable exactly."""
    s = sm.DiscreteSchedule.from_name("lcm")
    sigmas = sm.get_sigmas(s, "normal", 3)[:3]  # stop at a non-zero sigma: the output is the last re-noise
    x = torch.zeros(5, 4, 3, 2)
    out = sm.get_sampler("lcm", s)(lambda xx, sig: torch.zeros_like(xx), x, sigmas, seed=42)
    gen = torch.Generator().manual_seed(42)
    draws = [torch.randn(x.size(), generator=gen) for _ in range(2)]
    assert torch.allclose(out, draws[1] * sigmas[2], atol=1e-6)  # the last re-noise: the 2nd draw
    s2 = sm.DiscreteSchedule.from_name("sqrt_linear (AnimateDiff)")
    sig2 = sm.get_sigmas(s2, "karras", 2)[:2]
    out2 = sm.get_sampler("euler_ancestral", s2)(lambda xx, sig: torch.zeros_like(xx), x, sig2, seed=7)
    gen = torch.Generator().manual_seed(7)
    first = torch.randn(x.size(), generator=gen)
    down, up = sm.ancestral_step(sig2[0], sig2[1])
    assert torch.allclose(out2, first * up, atol=1e-6)


def test_initial_noise_in_comfyui_layout(parts):
    """Initial noise: ComfyUI's prepare_noise draws [F,C,h,w] on a CPU generator."""
    seen = []

    class Sampling(pl.BuiltinSampling):
        def sample(self, sampler, schedule, denoiser, noise, latent, sigmas, seed, on_step, cfg):
            seen.append(noise.clone())
            return latent

    p, _ = _recorder_pipe(parts)
    p(video(5, 16, 24), pl.V2VSettings(steps=1, seed=9, select_every_nth_frame=1), sampling=Sampling())
    want = torch.randn((5, 4, 2, 3), generator=torch.Generator().manual_seed(9))
    assert torch.equal(seen[0], want)


# ---------------------------------------------------------------- ControlNet like Apply ControlNet
def test_hint_resize_is_centre_crop_then_nearest_exact():
    hint = torch.arange(24.0).view(1, 1, 4, 6)
    assert torch.equal(pl.resize_hint(hint, 4, 4), hint[..., 1:5])  # crop only
    up = pl.resize_hint(hint, 8, 8)
    assert torch.equal(up, torch.nn.functional.interpolate(hint[..., 1:5], size=(8, 8), mode="nearest-exact"))
    tall = torch.arange(35.0).view(1, 1, 7, 5)  # aspect 5/7 < 1: y = round((7 - 5) / 2) = 1 row off each side
    assert torch.equal(pl.resize_hint(tall, 5, 5), tall[..., 1:6, :])


def test_controlnet_percent_range_and_strength():
    p = make_pipe(controlnet=True)
    src = video(2, 32, 32)
    pose = torch.zeros(2, 48, 48, 3)  # another size: resized like Apply ControlNet
    pose[:, 10:30, 20:24] = 1.0
    base = dict(prompt="x", steps=2, seed=1, select_every_nth_frame=1, sampler="euler", scheduler="normal")
    full = p(src, pl.V2VSettings(**base), pose_frames=pose).frames
    off = p(src, pl.V2VSettings(controlnet_strength=0.0, **base), pose_frames=pose).frames
    never = p(src, pl.V2VSettings(controlnet_start=0.0, controlnet_end=0.0, **base), pose_frames=pose).frames
    late = p(src, pl.V2VSettings(controlnet_start=0.3, controlnet_end=1.0, **base), pose_frames=pose).frames
    assert torch.allclose(never, off, atol=1e-6) and not torch.allclose(full, off)
    assert not torch.allclose(late, full) and not torch.allclose(late, off)
    s = sm.DiscreteSchedule.from_name("sqrt_linear (AnimateDiff)")
    assert s.percent_to_sigma(0.0) > 1e8 and s.percent_to_sigma(1.0) == 0.0
    assert math.isclose(s.percent_to_sigma(0.5), float(s.sigma(torch.tensor(499.5))), rel_tol=1e-6)


# ---------------------------------------------------------------- progress and interrupt
@pytest.mark.parametrize("sampler", sm.SAMPLERS)
def test_progress_is_exact_for_every_builtin_sampler(parts, sampler):
    p, _ = _recorder_pipe(parts)
    st = pl.V2VSettings(steps=4, sampler=sampler, select_every_nth_frame=1, vae_batch=2)
    ticks = []
    p(video(5, 16, 16), st, callback=ticks.append)
    assert all(t > 0 for t in ticks) and sum(ticks) == p.progress_total(5, st) == 3 + 4 + 3


def test_interrupt_stops_inside_one_unet_call():
    """With the real animated UNet, an interrupt raised while the first UNet call runs stops it
    before that call returns (checked between the UNet's blocks, not only between windows)."""
    import ad_tiny
    from poseanimate.models.animatediff.motion_loader import motion_module_from_state_dict
    from poseanimate.models.animatediff.unet3d import build_animated_unet

    unet2d, vae, te = ad_tiny.tiny_sd15_models()
    unet = build_animated_unet(unet2d, motion_module_from_state_dict(ad_tiny.tiny_motion_state_dict("v2")))
    finished = []
    unet.unet.conv_out.register_forward_hook(lambda *a: finished.append(1))
    p = pl.AnimateDiffV2V(unet, vae, te, CharTokenizer())

    class Stop(Exception):
        pass

    checks = []

    def interrupt():
        checks.append(1)
        if len(checks) == 3:  # 1: before the UNet call, 2..: between its blocks
            raise Stop()

    with pytest.raises(Stop):
        p(video(2, 16, 16), pl.V2VSettings(steps=2, select_every_nth_frame=1), interrupt=interrupt)
    assert not finished and unet.interrupt_hook is None


@pytest.mark.parametrize("frames", [6, 20])  # one window, and fused windows (default 16/4 past 16 frames)
def test_denoiser_parts_for_cfg_pp_samplers(parts, frames):
    """ComfyUI's CFG++ samplers read cond and uncond denoised separately; with windows each is fused
    on its own and CFG of the parts equals the guided result, also at cfg 1 (no skipping then)."""
    got = {}

    class Sampling(pl.BuiltinSampling):
        def sample(self, sampler, schedule, denoiser, noise, latent, sigmas, seed, on_step, cfg):
            x = schedule.noise_scaling(sigmas[0], noise, latent)
            got["parts"] = denoiser(x, sigmas[0], parts=True)
            got["plain"] = denoiser(x, sigmas[0])
            return latent

    p, rec = _recorder_pipe(parts, max_frames=16)
    for guidance in (1.0, 3.0):
        p(video(frames, 16, 16), pl.V2VSettings(steps=1, guidance=guidance, select_every_nth_frame=1, window_batch=1),
          sampling=Sampling())
        den, cond, uncond = got["parts"]
        assert (cond - uncond).abs().max() > 1e-4
        assert torch.allclose(den, uncond + guidance * (cond - uncond), atol=1e-5)
        assert torch.allclose(den, got["plain"], atol=1e-5)
