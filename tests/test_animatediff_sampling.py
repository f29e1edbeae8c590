"""Schedules, samplers and the video-to-video pipeline on tiny models."""
import math

import pytest
import torch

from poseanimate.models.animatediff import context_windows as cw
from poseanimate.models.animatediff import pipeline as pl
from poseanimate.models.animatediff import samplers as sm


# ---------------------------------------------------------------- tiny models
def tiny_models(controlnet: bool = False, seed: int = 0):
    """Tiny diffusers UNetMotionModel + VAE (8x downsampling) + CLIP text model, random weights.

    64 channels with attention_head_dim 8: diffusers reads that number as heads in the 2D UNet
    and as head size in the motion UNet, so it must be both (8 x 8).
    """
    from diffusers import AutoencoderKL, ControlNetModel, MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet2d = UNet2DConditionModel(
        block_out_channels=(64, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16,
    )
    adapter = MotionAdapter(block_out_channels=(64, 64), motion_layers_per_block=1, motion_num_attention_heads=2,
                            motion_norm_num_groups=16, motion_max_seq_length=32, use_motion_mid_block=False)
    unet = pl.DiffusersMotionUNet(UNetMotionModel.from_unet2d(unet2d, adapter).eval())
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8,
                        layers_per_block=1, sample_size=64).eval()
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406,
                                      eos_token_id=49407, pad_token_id=49407)).eval()
    cn = None
    if controlnet:
        cn = ControlNetModel.from_unet(unet2d, conditioning_embedding_out_channels=(8, 16, 32, 32)).eval()
        with torch.no_grad():  # non-zero so the hint visibly matters
            for p in cn.parameters():
                if p.abs().sum() == 0:
                    p.normal_(0, 0.05)
    return unet, vae, te, cn


class CharTokenizer:
    """Stand-in CLIP tokenizer (one token per character) so these tests need no BPE."""

    def __call__(self, text):
        return {"input_ids": [49406] + [300 + (ord(ch) % 2000) for ch in text] + [49407]}


def make_pipe(controlnet=False):
    unet, vae, te, cn = tiny_models(controlnet)
    return pl.AnimateDiffV2V(unet, vae, te, CharTokenizer(), controlnet=cn)


def video(frames=20, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, h, w, 3, generator=g)
    drift = torch.linspace(0, 1, frames).view(-1, 1, 1, 1)
    return (base * (1 - 0.3 * drift) + 0.3 * drift * torch.rand(1, h, w, 3, generator=g)).clamp(0, 1)


# ---------------------------------------------------------------- schedules
def test_beta_schedules_match_diffusers():
    from diffusers import EulerDiscreteScheduler

    for ours, theirs in (("sqrt_linear (AnimateDiff)", "linear"), ("linear (HotshotXL/default)", "scaled_linear")):
        ref = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule=theirs)
        alphas = ref.alphas_cumprod
        want = ((1 - alphas) / alphas) ** 0.5
        got = sm.DiscreteSchedule.from_name(ours).sigmas
        assert torch.allclose(got, want.float(), rtol=2e-3), ours  # diffusers works in float32
    assert sm.resolve_beta_schedule("autoselect") == "sqrt_linear (AnimateDiff)"
    assert sm.resolve_beta_schedule("autoselect", "AnimateLCM") == "lcm"
    sdxl = sm.DiscreteSchedule.from_name("linear (AnimateDiff-SDXL)")
    assert sdxl.sigma_max > sm.DiscreteSchedule.from_name("linear (HotshotXL/default)").sigma_max


def test_lcm_schedule_is_distilled():
    s = sm.DiscreteSchedule.from_name("lcm")
    full = sm.DiscreteSchedule("linear")
    assert len(s.sigmas) == 50
    assert torch.equal(s.sigmas[-1], full.sigmas[-1]) and torch.equal(s.sigmas[0], full.sigmas[19])
    assert int(s.timestep(s.sigmas[-1:])) == 999 and int(s.timestep(s.sigmas[:1])) == 19


def test_sigmas_normal_karras_and_denoise():
    s = sm.DiscreteSchedule.from_name("sqrt_linear (AnimateDiff)")
    for sched in sm.SCHEDULERS:
        sig = sm.get_sigmas(s, sched, 25)
        assert sig.shape == (26,) and sig[-1] == 0
        assert math.isclose(float(sig[0]), float(s.sigma_max), rel_tol=1e-4)
        assert bool((sig[:-1] > sig[1:]).all())
    k = sm.get_sigmas(s, "karras", 10)
    assert math.isclose(float(k[-2]), float(s.sigma_min), rel_tol=1e-4)
    # img2img: exactly `steps` steps, taken from the tail of int(steps/denoise)
    full = sm.get_sigmas(s, "normal", int(25 / 0.6))
    part = sm.get_sigmas(s, "normal", 25, denoise=0.6)
    assert part.shape == (26,) and torch.equal(part, full[-26:])
    assert not sm.is_max_denoise(s, part) and sm.is_max_denoise(s, sm.get_sigmas(s, "normal", 25))
    assert sm.get_sigmas(s, "normal", 25, denoise=0.0).numel() == 0
    with pytest.raises(ValueError, match="scheduler"):
        sm.get_sigmas(s, "nope", 5)


def _gaussian_denoiser(mu, std):
    """Exact x0-predictor for data ~ N(mu, std^2): the probability-flow ODE is solvable."""

    def model(x, sigma):
        return (std**2 * x + sigma**2 * mu) / (std**2 + sigma**2)

    return model


@pytest.mark.parametrize("name,order", [("euler", 1), ("dpmpp_2m", 2)])
def test_deterministic_samplers_solve_the_ode(name, order):
    """Error against the exact ODE solution shrinks with the sampler's order (1 or 2)."""
    s = sm.DiscreteSchedule.from_name("sqrt_linear (AnimateDiff)")
    mu, std = 0.5, 0.3
    errs = []
    for n in (25, 50):
        sigmas = sm.get_sigmas(s, "karras", n)
        x_t = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
        exact = mu + (x_t - mu) * std / math.sqrt(std**2 + float(sigmas[0]) ** 2)
        steps = []
        out = sm.get_sampler(name, s)(_gaussian_denoiser(mu, std), x_t.clone(), sigmas, callback=steps.append)
        assert steps == list(range(n))
        errs.append((out - exact).abs().max().item())
    assert errs[0] < (0.15 if order == 1 else 0.015)
    ratio = errs[1] / errs[0]
    assert 0.5 ** order * 0.7 < ratio < 0.5 ** order * 1.3, ratio


def test_dpmpp_2m_beats_euler():
    s = sm.DiscreteSchedule.from_name("sqrt_linear (AnimateDiff)")
    sigmas = sm.get_sigmas(s, "karras", 10)
    x_t = torch.randn(2048, generator=torch.Generator().manual_seed(1)) * float(sigmas[0])
    exact = 0.2 + (x_t - 0.2) * 0.5 / math.sqrt(0.25 + float(sigmas[0]) ** 2)
    errs = {n: (sm.get_sampler(n, s)(_gaussian_denoiser(0.2, 0.5), x_t.clone(), sigmas) - exact).abs().max() for n in ("euler", "dpmpp_2m")}
    assert errs["dpmpp_2m"] < errs["euler"] / 3


@pytest.mark.parametrize("name", ["euler_ancestral", "lcm"])
def test_stochastic_samplers_seeded_and_on_distribution(name):
    s = sm.DiscreteSchedule.from_name("lcm" if name == "lcm" else "sqrt_linear (AnimateDiff)")
    sigmas = sm.get_sigmas(s, "normal", 20)
    mu, std = -0.3, 0.4
    x_t = torch.randn(20000, generator=torch.Generator().manual_seed(2)) * float(sigmas[0])
    run = lambda seed: sm.get_sampler(name, s)(_gaussian_denoiser(mu, std), x_t.clone(), sigmas, seed=seed)
    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    if name == "euler_ancestral":  # with many steps, ancestral sampling draws from the data distribution
        fine = sm.get_sigmas(s, "karras", 400)
        x = sm.get_sampler(name, s)(_gaussian_denoiser(mu, std), x_t / float(sigmas[0]) * float(fine[0]), fine, seed=1)
        assert abs(x.mean().item() - mu) < 0.01 and abs(x.std().item() - std) < 0.01


def test_lcm_denoiser_boundary_condition():
    s = sm.DiscreteSchedule.from_name("lcm")
    x, eps = torch.randn(8), torch.randn(8)
    sig = s.sigmas[-1]
    t = float(s.timestep(sig.reshape(1))) * 10
    c_skip, c_out = 0.25 / (t**2 + 0.25), t / math.sqrt(t**2 + 0.25)
    assert torch.allclose(s.denoised(x, sig, eps), c_out * (x - eps * sig) + c_skip * x, atol=1e-6)


# ---------------------------------------------------------------- frame selection / restore
def test_restore_repeat_and_blend():
    gen = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 2, 2, 3)
    rep = pl.restore_frames(gen, 7, 2, "repeat")
    assert rep[:, 0, 0, 0].tolist() == [0, 0, 1, 1, 2, 2, 3]
    bl = pl.restore_frames(gen, 8, 2, "blend")
    assert bl[:, 0, 0, 0].tolist() == [0, 0.5, 1, 1.5, 2, 2.5, 3, 3]
    assert pl.restore_frames(gen, 8, 2, "none").shape[0] == 4
    with pytest.raises(ValueError, match="restore"):
        pl.restore_frames(gen, 8, 2, "bogus")


# ---------------------------------------------------------------- pipeline
@pytest.fixture(scope="module")
def pipe():
    return make_pipe()


def test_v2v_restores_count_and_is_seeded(pipe):
    src = video(20)
    st = pl.V2VSettings(prompt="a (red:1.2) cat", steps=3, seed=11, context=cw.ContextOptions(context_length=4, context_overlap=1))
    steps = []
    res = pipe(src, st, callback=steps.append)
    assert res.frames.shape == (20, 64, 64, 3) and res.generated_frames == 10 and res.seed == 11
    assert steps == [1] * 5 and sum(steps) == pipe.progress_total(20, st)  # encode batch, 3 steps, decode batch
    assert float(res.frames.min()) >= 0 and float(res.frames.max()) <= 1
    # repeat: pairs of identical frames
    assert torch.equal(res.frames[0], res.frames[1]) and not torch.equal(res.frames[1], res.frames[2])
    again = pipe(src, st)
    assert torch.equal(again.frames, res.frames)  # bit-identical on CPU
    other = pipe(src, pl.V2VSettings(prompt="a (red:1.2) cat", steps=3, seed=12, context=st.context))
    assert not torch.equal(other.frames, res.frames)
    rnd = pipe(src[:4], pl.V2VSettings(prompt="x", steps=1, seed=-1))
    assert rnd.seed >= 0


def test_denoise_zero_returns_vae_roundtrip(pipe):
    src = video(6)
    res = pipe(src, pl.V2VSettings(steps=4, denoise=0.0, select_every_nth_frame=1))
    want = pipe.decode_latents(pipe.encode_frames(src))
    assert torch.allclose(res.frames, want)


def test_window_batching_matches_serial(pipe):
    """Several windows per UNet call give the same result as one window per call."""
    src = video(24)
    ctx = cw.ContextOptions(context_length=8, context_overlap=2)
    base = dict(prompt="dancer", steps=2, seed=3, select_every_nth_frame=1, context=ctx, sampler="euler", scheduler="normal")
    one = pipe(src, pl.V2VSettings(window_batch=1, **base)).frames
    many = pipe(src, pl.V2VSettings(window_batch=4, **base)).frames
    assert torch.allclose(one, many, atol=1e-4)


def test_windows_equal_single_pass_when_video_fits(pipe):
    """With context_length >= frames the windowed path is a single whole-video pass."""
    src = video(8)
    base = dict(prompt="dancer", steps=2, seed=3, select_every_nth_frame=1, sampler="euler", scheduler="normal")
    a = pipe(src, pl.V2VSettings(context=cw.ContextOptions(context_length=16, context_overlap=4), **base)).frames
    b = pipe(src, pl.V2VSettings(context=cw.ContextOptions(context_length=8, context_overlap=4), **base)).frames
    assert torch.equal(a, b)


def test_windowed_eps_is_fused_per_window_prediction():
    """The fused eps equals a hand-made weighted average of per-window UNet outputs."""
    calls = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, t, ctx, down_block_additional_residuals=None, mid_block_additional_residual=None):
            calls.append(x.shape)
            # frame-dependent output that depends on the window (mean over window frames)
            return x * 0.5 + x.mean(dim=2, keepdim=True) * self.w

    _, vae, te, _ = tiny_models()
    p = pl.AnimateDiffV2V(Recorder(), vae, te, CharTokenizer())
    src = video(12)
    ctx = cw.ContextOptions(context_length=8, context_overlap=4, fuse_method="flat")
    st = pl.V2VSettings(steps=1, seed=0, select_every_nth_frame=1, context=ctx, sampler="euler", scheduler="normal", window_batch=8)
    p(src, st)
    assert calls == [torch.Size([4, 4, 8, 8, 8])]  # 2 windows x (uncond, cond) in one call


def test_freenoise_changes_noise_only_past_first_window(pipe):
    src = video(24)
    ctx = cw.ContextOptions(context_length=8, context_overlap=2)
    base = dict(prompt="x", steps=2, seed=4, select_every_nth_frame=1, context=ctx, sampler="euler", scheduler="normal")
    a = pipe(src, pl.V2VSettings(freenoise=False, **base)).frames
    b = pipe(src, pl.V2VSettings(freenoise=True, **base)).frames
    assert not torch.equal(a, b)


def test_controlnet_pose_changes_output():
    p = make_pipe(controlnet=True)
    src = video(8)
    st = pl.V2VSettings(prompt="x", steps=2, seed=1, select_every_nth_frame=2, sampler="euler", scheduler="normal")
    pose_a = torch.zeros(8, 64, 64, 3)
    pose_b = torch.zeros(8, 64, 64, 3)
    pose_b[:, 20:40, 30:34] = 1.0
    a = p(src, st, pose_frames=pose_a).frames
    b = p(src, st, pose_frames=pose_b).frames
    assert a.shape == (8, 64, 64, 3) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="pose video has 2 frames"):
        p(src, st, pose_frames=pose_a[:3])


def test_interrupt_stops_sampling(pipe):
    class Stop(Exception):
        pass

    def interrupt():
        raise Stop()

    with pytest.raises(Stop):
        pipe(video(4), pl.V2VSettings(steps=2), interrupt=interrupt)


def test_bad_inputs_are_named(pipe):
    with pytest.raises(ValueError, match="IMAGE batch"):
        pipe(torch.zeros(4, 8, 8), pl.V2VSettings())
    with pytest.raises(ValueError, match="no ControlNet"):
        pipe(video(4), pl.V2VSettings(steps=1), pose_frames=video(4))
    with pytest.raises(ValueError, match="sampler"):
        pipe(video(4), pl.V2VSettings(steps=1, sampler="heun"))


def test_auto_window_batch_follows_free_memory(pipe, monkeypatch):
    shape = (1, 4, 48, 64, 64)
    monkeypatch.setattr(pl, "_mem_available", lambda: 64 * 2**30)
    assert pipe.auto_window_batch(shape, 16, False) == 4  # CPU cap
    monkeypatch.setattr(pl, "_mem_available", lambda: 2 * 2**30)
    assert pipe.auto_window_batch(shape, 16, False) == 1  # ~3 GB per window pair in fp32
    monkeypatch.setattr(pl, "_mem_available", lambda: 0)
    assert pipe.auto_window_batch(shape, 16, True) == 1


def test_frames_resized_to_vae_multiple(pipe):
    res = pipe(video(4, h=70, w=66), pl.V2VSettings(steps=1, select_every_nth_frame=1))
    assert res.frames.shape == (4, 64, 64, 3)
    with pytest.raises(ValueError, match="at least 8x8"):
        pipe(video(2, h=6, w=64), pl.V2VSettings(steps=1))


def test_window_longer_than_motion_pe_is_refused(pipe, monkeypatch):
    monkeypatch.setattr(pipe.unet, "max_frames", 24, raising=False)
    ctx = cw.ContextOptions(context_length=32, context_overlap=4)
    with pytest.raises(ValueError, match="context_length <= 24"):
        pipe(video(60), pl.V2VSettings(steps=1, context=ctx))


def test_unbatchable_prompt_lengths_run_cond_and_uncond_apart():
    """6 vs 7 chunks (lcm 42 > 4 x 6): ComfyUI runs cond and uncond as separate UNet calls."""
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, t, ctx, down_block_additional_residuals=None, mid_block_additional_residual=None):
            seen.append((x.shape[0], ctx.shape[1]))
            return x * self.w * 0.1

    _, vae, te, _ = tiny_models()
    p = pl.AnimateDiffV2V(Recorder(), vae, te, CharTokenizer())
    st = pl.V2VSettings(prompt="a" * 400, negative_prompt="b" * 500, steps=1, select_every_nth_frame=1,
                        sampler="euler", scheduler="normal")
    p(video(4), st)
    assert seen == [(1, 77 * 7), (1, 77 * 6)]  # uncond first, then cond
