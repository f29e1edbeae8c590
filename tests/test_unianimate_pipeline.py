"""UniAnimate-DiT sampler: window plans, the long-video procedure and whole runs against goldens.

Goldens (tests/fixtures/reference/unianimate_dit/, README section 4): schedule_and_windows.json
(window plans), tiny_long_* (the long-video loop on the tiny model, 3e-4 final latents,
1e-4 step-0 window outputs), tiny_outputs final_latents (a whole 50-step short run, 5e-4).
The model is models/unianimate's own loader on the golden's tiny weights.
"""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from paths import REFERENCE
from poseanimate.models.runtime.lifecycle import RuntimeOptions
from poseanimate.models.unianimate import pipeline as pl
from poseanimate.models.unianimate import windows as win
from poseanimate.models.unianimate.pose_modules import official_pose_video_to_frames
from poseanimate.models.unianimate.transformer import load_unianimate
from poseanimate.models.unianimate.schedule import unianimate_scheduler
from poseanimate.models.wan.text import WanPromptEmbeds

REF = REFERENCE / "unianimate_dit"
CONFIG = json.loads((REF / "tiny_config.json").read_text())
LONG = json.loads((REF / "tiny_long.json").read_text())
SCHEDULES = json.loads((REF / "schedule_and_windows.json").read_text())


# --------------------------------------------------------------------------- the tiny model
@pytest.fixture(scope="module")
def tiny_model():
    """(UniAnimateTransformer, PoseEncoders) of the golden's tiny model, LoRA merged at 1.0, fp32."""
    return load_unianimate(REF / "tiny_base_weights.safetensors", REF / "tiny_lora.safetensors",
                           dtype=torch.float32, device="cpu", weight_dtype=None, lora_scale=1.0, merge=True,
                           num_attention_heads=CONFIG["model"]["num_heads"])


class Counting(torch.nn.Module):
    """Counts forwards and remembers whether pose tokens were given."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []
        self.blocks = getattr(inner, "blocks", None)

    def forward(self, *args, pose_tokens=None, **kw):
        self.calls.append(pose_tokens is not None)
        return self.inner(*args, pose_tokens=pose_tokens, **kw)


# --------------------------------------------------------------------------- window plans
@pytest.mark.parametrize("case", SCHEDULES["long_video_windows"], ids=lambda c: f"n{c['latent_frames']}_cs{c['context_size']}")
def test_window_plans_match_official(case):
    n, cs, ov = case["latent_frames"], case["context_size"], case["context_overlap"]
    plan = win.plan_windows(n, cs, ov)
    assert [list(w.frames) for w in plan] == case["windows"]
    assert [list(w.pose_pixel_slice) for w in plan] == case["pose_pixel_slices"]
    assert win.blend_counts(plan, n).tolist() == case["blend_count_per_latent_frame"]
    assert win.latent_frames(case["num_frames_requested_or_rounded_px"]) == n


def test_window_plan_short_and_private_frames():
    short = win.plan_windows(9)
    assert len(short) == 1 and short[0].frames == tuple(range(9)) and short[0].private == 0
    long = win.plan_windows(41)
    assert [w.private for w in long] == [2, 2, 2] and [w.skip for w in long] == [0, 2, 2]
    assert win.round_up_frames(8) == 9 and win.round_up_frames(9) == 9 and win.round_up_frames(82) == 85
    with pytest.raises(ValueError, match="4k\\+1"):
        win.latent_frames(8)
    with pytest.raises(ValueError, match="context_overlap"):
        win.plan_windows(30, 4, 4)


def test_scheduler_matches_schedule_golden():
    for key, case in SCHEDULES["scheduler"].items():
        steps = int(key.split("_")[0].removeprefix("steps"))
        sched = unianimate_scheduler(steps)
        assert torch.allclose(sched.timesteps, torch.tensor(case["timesteps"]), atol=1e-3)


# --------------------------------------------------------------------------- goldens
def _long_conditions(inp):
    return pl.Conditions(inp["context_pos"], inp["context_neg"], inp["clip_feature"], inp["y"],
                         official_pose_video_to_frames(inp["dwpose_data_uint8"]))


def _assert_bf16_close(ours, ref):
    """Pose tokens are bf16-rounded: an fp32 value next to a rounding boundary may land one bf16
    step away (README 3.3); allow that for a handful of elements, 1e-5 everywhere else."""
    diff = (ours - ref).abs()
    off = diff > 1e-5
    assert off.float().mean() < 1e-3, f"{int(off.sum())} of {off.numel()} tokens differ"
    assert (diff[off] <= ref.abs()[off] * 2.0**-7 + 1e-6).all()


def _token_fn(encoders, inp):
    video = official_pose_video_to_frames(inp["dwpose_data_uint8"])
    return lambda window: pl.pose_tokens(encoders, video[slice(*window.pose_pixel_slice)])


def test_long_video_procedure_matches_golden(tiny_model):
    model, encoders = tiny_model
    inp = load_file(REF / "tiny_long_inputs.safetensors")
    out = load_file(REF / "tiny_long_outputs.safetensors")
    seen, calls = {}, []

    def on_window(step, index, window, pos, neg):
        if step == 0:
            seen[index] = (pos.clone(), neg.clone())

    def token_fn(window):
        start, stop = window.pose_pixel_slice
        tokens = pl.pose_tokens(encoders, official_pose_video_to_frames(inp["dwpose_data_uint8"])[start:stop])
        seen[f"tokens{len([k for k in seen if str(k).startswith('tokens')])}"] = tokens
        return tokens

    latents = pl.denoise(model, token_fn, _long_conditions(inp), inp["noise"], LONG["num_inference_steps"],
                         LONG["cfg_scale"], LONG["context_size"], LONG["context_overlap"],
                         first_features=inp["first_features"], callback=calls.append, on_window=on_window)
    assert len(calls) == LONG["num_inference_steps"] * len(LONG["windows"])
    for i in range(len(LONG["windows"])):
        pos, neg = seen[i]
        assert (pos - out[f"step0_window{i}_noise_pred_pos"]).abs().max() < 1e-4
        assert (neg - out[f"step0_window{i}_noise_pred_neg"]).abs().max() < 1e-4
        _assert_bf16_close(seen[f"tokens{i}"], out[f"step0_window{i}_pose_tokens"])
    err = (latents - out["final_latents"]).abs().max().item()
    assert err < LONG["outputs"]["final_latents"]["tolerance_max_abs"], err


def test_long_video_wrong_private_state_is_caught(tiny_model):
    """The golden is sensitive to the private frames: other start states change window 0 at step 0."""
    model, encoders = tiny_model
    inp = load_file(REF / "tiny_long_inputs.safetensors")
    out = load_file(REF / "tiny_long_outputs.safetensors")
    other = torch.randn(inp["first_features"].shape, generator=torch.Generator().manual_seed(5))

    class Seen(Exception):
        pass

    def on_window(step, index, window, pos, neg):
        raise Seen((pos - out["step0_window0_noise_pred_pos"]).abs().max().item())

    with pytest.raises(Seen) as seen:
        pl.denoise(model, _token_fn(encoders, inp), _long_conditions(inp), inp["noise"], LONG["num_inference_steps"],
                   LONG["cfg_scale"], LONG["context_size"], LONG["context_overlap"], first_features=other,
                   on_window=on_window)
    assert seen.value.args[0] > 1e-2


def test_whole_short_run_matches_golden(tiny_model):
    model, _ = tiny_model
    inp = load_file(REF / "tiny_inputs.safetensors")
    out = load_file(REF / "tiny_outputs.safetensors")
    p = CONFIG["pipeline"]
    noise = torch.randn((1, 16, p["latent_frames"], *p["latent_hw"]), generator=torch.Generator().manual_seed(p["noise_seed"]))
    cond = pl.Conditions(inp["context_pos"], inp["context_neg"], inp["clip_feature"], inp["y"], torch.zeros(3, 1, 1, 1))
    counting = Counting(model)
    latents = pl.denoise(counting, lambda w: inp["pose_tokens"], cond, noise, p["num_inference_steps"], p["cfg_scale"])
    assert (latents - out["final_latents"]).abs().max() < CONFIG["tolerances_max_abs"]["final_latents"]
    # positive pass with pose tokens, negative pass without, every step
    assert counting.calls == [True, False] * p["num_inference_steps"]


def test_cfg_one_skips_negative_pass_and_progress_counts(tiny_model):
    model, encoders = tiny_model
    inp = load_file(REF / "tiny_long_inputs.safetensors")
    counting, ticks = Counting(model), []
    cond = _long_conditions(inp)
    cond.context_neg = None
    token_fn = _token_fn(encoders, inp)
    pl.denoise(counting, token_fn, cond, inp["noise"], 2, 1.0, 4, 3, first_features=inp["first_features"],
               callback=ticks.append)
    assert counting.calls == [True] * (2 * 4) and len(ticks) == 8
    assert pl.progress_total(25, 2, 4, 3) == 8 and pl.progress_total(81, 30) == 30 and pl.progress_total(321, 30) == 150
    with pytest.raises(pl.UniAnimateInputError, match="negative"):
        pl.denoise(counting, token_fn, cond, inp["noise"], 2, 1.5, 4, 3)


def test_interrupt_stops_at_the_next_step(tiny_model):
    model, encoders = tiny_model
    inp = load_file(REF / "tiny_long_inputs.safetensors")
    counting = Counting(model)

    class Interrupted(Exception):
        pass

    def callback(n, seen=[]):  # noqa: B006
        seen.append(n)
        if len(seen) == 3:
            raise Interrupted

    token_fn = _token_fn(encoders, inp)
    with pytest.raises(Interrupted):
        pl.denoise(counting, token_fn, _long_conditions(inp), inp["noise"], 3, 1.5, 4, 3, callback=callback)
    assert len(counting.calls) == 6  # three window steps, two passes each, then stopped


# --------------------------------------------------------------------------- preprocessing
def test_sizes_and_frame_padding():
    # default: the official scripts' fixed portrait size (height 832 / 1280, width 480 / 720), any reference
    for ref in ((480, 832), (1000, 1000), (1920, 1080), (256, 320)):
        assert pl.output_size(*ref, "480p") == (480, 832) and pl.output_size(*ref, "720p") == (720, 1280)
    # keep-aspect option: the official area on the reference's aspect
    assert pl.output_size(720, 1280, "480p_keep_aspect") == (480, 832)  # 9:16 is within the snap
    assert pl.output_size(1280, 720, "720p_keep_aspect") == (1280, 720)
    w, h = pl.output_size(1000, 1000, "480p_keep_aspect")
    assert w == h and w % 16 == 0 and abs(w * h - 480 * 832) / (480 * 832) < 0.05
    w, h = pl.output_size(256, 320, "480p_keep_aspect")
    assert w % 16 == 0 and h % 16 == 0 and abs(w / h - 0.8) < 0.03
    # 'reference': the reference's size rounded up to 16, capped at the 720p pixel count
    assert pl.output_size(250, 330, "reference") == (256, 336)
    for ref in ((3024, 4032), (1080, 1920), (4000, 500)):
        w, h = pl.output_size(*ref, "reference")
        assert w * h <= 720 * 1280 and w % 16 == 0 and h % 16 == 0 and abs(w / h / (ref[0] / ref[1]) - 1) < 0.08
    assert pl.output_size(720, 1280, "reference") == (720, 1280)
    with pytest.raises(pl.UniAnimateInputError, match="480p"):
        pl.output_size(10, 10, "1080p")
    assert pl.check_size(50, 66) == (64, 80)
    frames = np.arange(6)[:, None, None, None].repeat(2, 1).repeat(2, 2).repeat(3, 3).astype(np.uint8)
    padded, count = pl.pad_pose_frames(frames)
    assert count == 6 and len(padded) == 9 and (padded[6:] == 5).all()


def test_reference_and_clip_preprocessing():
    from PIL import Image

    img = np.asarray(Image.open(REF / "tiny_ref_image.png").convert("RGB"))
    inp = load_file(REF / "tiny_inputs.safetensors")
    ref = pl.reference_tensor(img, CONFIG["pipeline"]["width"], CONFIG["pipeline"]["height"])
    if "ref_image_preprocessed" in inp:
        stored = inp["ref_image_preprocessed"].reshape(ref.shape)
        assert (ref - stored).abs().max() < 1e-6
    assert ref.shape == (1, 3, CONFIG["pipeline"]["height"], CONFIG["pipeline"]["width"])
    px = pl.clip_pixels(ref)
    assert px.shape == (1, 3, 224, 224)
    # white maps to (1 - mean) / std per channel
    white = pl.clip_pixels(torch.ones(1, 3, 16, 16))
    assert torch.allclose(white[0, :, 0, 0], (1 - torch.tensor(pl.CLIP_MEAN)) / torch.tensor(pl.CLIP_STD))


# --------------------------------------------------------------------------- whole generate()
class _FakeVAE:
    """Deterministic 8x / 4x compressing 'VAE' with the WanVAE interface (encode/decode)."""

    def encode(self, video, tiles="default"):
        b, c, f, h, w = video.shape
        t = (f - 1) // 4 + 1
        x = torch.nn.functional.avg_pool2d(video[:, :, ::4].reshape(b, c * t, h, w), 8).reshape(b, c, t, h // 8, w // 8)
        return torch.cat([x] * 6, 1)[:, :16]

    def decode(self, latents):
        b, c, t, h, w = latents.shape
        x = latents[:, :3].repeat_interleave(8, -1).repeat_interleave(8, -2)
        x = torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(4, 2)], 2)
        return x.tanh()


class _FakeClip(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.proj = torch.nn.Linear(3, width)
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=g))
            self.proj.bias.zero_()

    def forward(self, pixel_values, output_hidden_states=True):
        x = torch.nn.functional.avg_pool2d(pixel_values, 14).flatten(2).transpose(1, 2)  # 256 tokens
        x = torch.cat([x.mean(1, keepdim=True), x], 1)
        h = self.proj(x)

        class Out:
            hidden_states = (h, h * 2, h * 3)

        return Out()


def _generate(tiny_model, frames=6, seed=3, cfg=1.5, steps=2, context_size=21, callback=None, model_wrap=None, **kw):
    model, encoders = tiny_model
    m = CONFIG["model"]
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 255, (70, 50, 3), dtype=np.uint8)
    poses = rng.integers(0, 255, (frames, 64, 48, 3), dtype=np.uint8)
    ref_pose = rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)
    g = torch.Generator().manual_seed(1)
    embeds = WanPromptEmbeds(torch.randn(1, 16, m["text_dim"], generator=g), torch.randn(1, 16, m["text_dim"], generator=g),
                             "a person is dancing", pl.UNIANIMATE_NEGATIVE_PROMPT, 5, 9)
    um = pl.UniAnimateModel(model_wrap(model) if model_wrap else model, encoders, torch.float32, "cpu")
    clip = _FakeClip(CONFIG["clip_dim"])
    return pl.generate(um, _FakeVAE(), clip, embeds, ref, poses, ref_pose, seed=seed, steps=steps, cfg=cfg,
                       size=(48, 64), context_size=context_size, context_overlap=min(4, context_size - 1),
                       callback=callback, **kw)


def test_generate_short_and_seeds_are_bit_identical(tiny_model):
    ticks = []
    a = _generate(tiny_model, callback=ticks.append)
    assert a.frames.shape == (6, 64, 48, 3) and a.latents.shape == (1, 16, 3, 8, 6)
    assert len(ticks) == 2 and a.frames.min() >= 0 and a.frames.max() <= 1
    b = _generate(tiny_model)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.frames, b.frames)
    c = _generate(tiny_model, seed=4)
    assert not torch.equal(a.latents, c.latents)


def test_generate_long_windows_and_cfg_one(tiny_model):
    ticks = []
    a = _generate(tiny_model, frames=23, context_size=4, callback=ticks.append)  # 25 frames -> 7 latents, 2 windows
    plan = win.plan_windows(7, 4, 3)
    assert a.frames.shape[0] == 23 and len(ticks) == 2 * len(plan)
    counting = {}

    def wrap(model):
        counting["m"] = Counting(model)
        return counting["m"]

    _generate(tiny_model, frames=23, context_size=4, cfg=1.0, model_wrap=wrap)
    assert counting["m"].calls == [True] * (2 * len(plan))


def test_generate_rejects_bad_inputs(tiny_model):
    with pytest.raises(pl.UniAnimateInputError, match="Text Encode"):
        pl.generate(pl.UniAnimateModel(*tiny_model), None, None, "prompt", np.zeros((8, 8, 3), np.uint8),
                    np.zeros((1, 8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(pl.UniAnimateInputError, match="pose images"):
        pl._as_uint8_frames(np.zeros((2, 8, 8, 5)), "pose images")


def test_generate_releases_memory_when_interrupted(tiny_model):
    """An interrupt (exception from the progress callback) still releases the model."""
    released = []

    class Model(pl.UniAnimateModel):
        def release(self):
            released.append(True)
            super().release()

    class Interrupted(Exception):
        pass

    def callback(n):
        raise Interrupted

    model, encoders = tiny_model
    m = CONFIG["model"]
    embeds = WanPromptEmbeds(torch.zeros(1, 16, m["text_dim"]), torch.zeros(1, 16, m["text_dim"]), "", "", 1, 1)
    with pytest.raises(Interrupted):
        pl.generate(Model(model, encoders, torch.float32, "cpu"), _FakeVAE(), _FakeClip(CONFIG["clip_dim"]), embeds,
                    np.zeros((64, 48, 3), np.uint8), np.zeros((5, 64, 48, 3), np.uint8), np.zeros((64, 48, 3), np.uint8),
                    resolution="reference", steps=3, callback=callback)
    assert released == [True]


def test_model_is_offloaded_after_a_run():
    """release() moves the transformer and pose modules to the offload device (here: meta)."""
    model, encoders = load_unianimate(REF / "tiny_base_weights.safetensors", REF / "tiny_lora.safetensors",
                                      dtype=torch.float32, num_attention_heads=CONFIG["model"]["num_heads"])
    um = pl.UniAnimateModel(model, encoders, torch.float32, "cpu", "meta", RuntimeOptions(blocks_to_swap=1))
    um.prepare()
    assert model.poseanimate_block_swap is not None
    um.release()
    assert model.poseanimate_block_swap is None
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {p.device.type for p in encoders.parameters()} == {"meta"}
    kept = pl.UniAnimateModel(*load_unianimate(REF / "tiny_base_weights.safetensors", REF / "tiny_lora.safetensors",
                                               dtype=torch.float32, num_attention_heads=CONFIG["model"]["num_heads"]),
                              torch.float32, "cpu", "meta", RuntimeOptions(offload_after_run=False))
    kept.release()
    assert {p.device.type for p in kept.transformer.parameters()} == {"cpu"}


def test_sampler_resolution_choices_and_tooltip():
    """The official size is the default; the keep-aspect options say they leave the training distribution."""
    from poseanimate.nodes import unianimate as ua_nodes

    for node in (ua_nodes.UniAnimateSampler, ua_nodes.WanCLIPVisionEncode):
        choices, options = node.INPUT_TYPES()["required"]["resolution"]
        assert choices == list(pl.RESOLUTIONS) and options["default"] == "480p"
    tooltip = ua_nodes.UniAnimateSampler.INPUT_TYPES()["required"]["resolution"][1]["tooltip"]
    assert "480x832" in tooltip and "keep_aspect" in tooltip and "outside the training distribution" in tooltip
    assert {"480p_keep_aspect", "720p_keep_aspect", "reference"} <= set(pl.RESOLUTIONS)
