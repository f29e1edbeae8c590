"""One-to-All sampler: chunk plans, guidance, token replace, progress, interrupt, seeds.

The transformer and the VAE are small deterministic stand-ins with the real call signatures,
so every check here is about the sampler itself (the transformer has its own parity tests).
"""
import gc
import json
import weakref

import numpy as np
import pytest
import torch

from poseanimate.models.one_to_all import chunks, guidance, pipeline
from poseanimate.models.one_to_all.schedule import one_to_all_scheduler
from poseanimate.models.wan.text import WanPromptEmbeds

from paths import REFERENCE

SCHEDULE = json.loads((REFERENCE / "one_to_all" / "schedule_and_chunks.json").read_text())


# --------------------------------------------------------------------------- stand-ins
class LinearVAE:
    """A fast VAE with WanVAE's interface: 4x temporal (causal first frame), 8x spatial, 16 channels."""

    dtype = torch.float32
    device = torch.device("cpu")
    compression = (4, 8)

    def __init__(self):
        g = torch.Generator().manual_seed(3)
        self.enc = torch.randn(16, 3, generator=g) * 0.5
        self.dec = torch.linalg.pinv(self.enc)
        self.encoded = []

    def encode(self, video):
        assert video.ndim == 5 and video.shape[1] == 3 and video.min() >= -1 and video.max() <= 1
        self.encoded.append(video.clone())
        first, rest = video[:, :, :1], video[:, :, 1:]
        groups = [first] + [rest[:, :, i:i + 4].mean(2, keepdim=True) for i in range(0, rest.shape[2], 4)]
        x = torch.cat(groups, 2)
        x = torch.nn.functional.avg_pool3d(x, (1, 8, 8))
        return torch.einsum("oc,bcfhw->bofhw", self.enc, x.float())

    def decode(self, latents):
        x = torch.einsum("co,bofhw->bcfhw", self.dec, latents.float())
        x = x.repeat_interleave(8, -1).repeat_interleave(8, -2)
        frames = [x[:, :, :1]] + [x[:, :, j:j + 1].repeat(1, 1, 4, 1, 1) for j in range(1, x.shape[2])]
        return torch.tanh(torch.cat(frames, 2))


class RecordingModel(torch.nn.Module):
    """The transformer's keyword call; records every call; output depends on every input."""

    def __init__(self, on_call=None):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.25))
        self.calls = []
        self.on_call = on_call

    def forward(self, hidden_states, timestep, encoder_hidden_states, image_latents, controlnet_cond, image_pose,
                conditioning_scale=1.0, token_replace=False, return_dict=True):
        assert return_dict is False
        self.calls.append(dict(hidden=hidden_states.clone(), t=timestep.clone(), text=encoder_hidden_states,
                               ref=image_latents, pose=controlnet_cond, ref_pose=image_pose,
                               scale=conditioning_scale, token_replace=token_replace, hidden_ref=weakref.ref(hidden_states)))
        if self.on_call is not None:
            self.on_call(len(self.calls))
        bias = (image_latents[:, :16].mean() + 0.3 * controlnet_cond.mean() + 0.2 * image_pose.mean()
                + 0.7 * encoder_hidden_states.mean() + 0.05 * conditioning_scale + timestep.float().mean() / 1000)
        return (hidden_states * self.scale - 0.1 * hidden_states.roll(1, dims=-1) + bias,)


def embeds(dim=8):
    g = torch.Generator().manual_seed(5)
    return WanPromptEmbeds(torch.randn(1, 512, dim, generator=g), torch.randn(1, 512, dim, generator=g), "p", "n", 4, 6)


def images(frames, h=48, w=32, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    poses = rng.integers(0, 256, (frames, h, w, 3), dtype=np.uint8)
    ref_pose = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return ref, poses, ref_pose


def run(frames=10, steps=2, model=None, vae=None, seed=7, **kw):
    ref, poses, ref_pose = images(frames)
    model = model or RecordingModel()
    vae = vae or LinearVAE()
    args = dict(resolution=(32, 48), steps=steps, image_guidance_scale=2.0, pose_guidance_scale=1.5, seed=seed)
    args.update(kw)
    result = pipeline.sample_one_to_all(model, vae, embeds(), ref, poses, ref_pose, **args)
    return result, model, vae


# --------------------------------------------------------------------------- chunk plans
@pytest.mark.parametrize("frames", sorted(SCHEDULE["chunk_plans"]["plans"], key=int))
def test_official_chunk_plans_match_reference(frames):
    want = [tuple(r) for r in SCHEDULE["chunk_plans"]["plans"][frames]]
    assert chunks.official_split_plan(int(frames)) == want
    plan = chunks.plan_chunks(int(frames))
    if int(frames) >= chunks.MAIN_CHUNK:
        assert plan.ranges == want and plan.padded_frames == int(frames)
    else:  # below 81 frames: one chunk padded to 4k+1 frames
        assert plan.ranges == [(0, chunks.valid_length(int(frames)))]


def test_chunk_constants_and_token_replace_flags():
    assert (chunks.MAIN_CHUNK, chunks.OVERLAP_FRAMES, chunks.FINAL_CHUNK_CANDIDATES) == (81, 5, (65, 69, 73, 77, 81))
    plan = chunks.plan_chunks(311)
    assert [c.replace for c in plan] == [0, 5, 5, 5, 5]
    assert all(c.length % 4 == 1 and c.replaced_latent_frames in (0, 2) for c in plan)
    assert [c.replace for c in chunks.plan_chunks(81)] == [0, 5]
    assert [chunks.valid_length(n) for n in (1, 2, 5, 6, 8, 9, 80)] == [1, 5, 5, 9, 9, 9, 81]
    assert chunks.pad_frames(np.arange(3), 5).tolist() == [0, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="at least one frame"):
        chunks.plan_chunks(0)


def test_schedule_matches_reference():
    sched = one_to_all_scheduler(30)
    assert sched.timesteps.tolist() == SCHEDULE["scheduler"]["timesteps"]
    assert sched.sigmas.tolist() == SCHEDULE["scheduler"]["sigmas"]


# --------------------------------------------------------------------------- guidance
@pytest.mark.parametrize("image, pose, case1, names", [
    (2.0, 1.5, False, ["cond", "uncond", "ref_uncond"]),
    (2.0, 1.5, True, ["cond", "uncond", "pose_uncond"]),
    (2.0, 1.0, False, ["cond", "uncond"]),
    (1.5, 0.0, False, ["cond", "uncond"]),
    (1.0, 5.0, False, ["cond"]),
])
def test_guidance_plan_calls(image, pose, case1, names):
    plan = guidance.guidance_plan(image, pose, case1=case1)
    assert [c.name for c in plan.calls] == names


def _conditions():
    g = torch.Generator().manual_seed(11)
    return guidance.Conditions(
        reference=torch.randn(1, 32, 1, 6, 4, generator=g), empty_reference=torch.randn(1, 32, 1, 6, 4, generator=g),
        pose_video=torch.rand(1, 3, 9, 48, 32, generator=g) * 2 - 1, reference_pose=torch.rand(1, 3, 1, 48, 32, generator=g) * 2 - 1,
        positive=torch.randn(1, 512, 8, generator=g), negative=torch.randn(1, 512, 8, generator=g), control_scale=1.0)


@pytest.mark.parametrize("image, pose, case1", [(2.0, 1.5, False), (3.5, 2.5, True), (2.0, 1.0, False), (1.0, 1.5, False)])
def test_guidance_inputs_and_combination(image, pose, case1):
    cond = _conditions()
    model = RecordingModel()
    latents = torch.randn(1, 16, 3, 6, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([930.7586669921875])
    plan = guidance.guidance_plan(image, pose, case1=case1)
    got = guidance.guided_velocity(model, plan, cond, latents, t, token_replace=True)
    outs = {}
    for call, rec in zip(plan.calls, model.calls):
        assert torch.equal(rec["hidden"], latents) and torch.equal(rec["t"], t) and rec["token_replace"] is True
        assert rec["ref"] is (cond.empty_reference if call.empty_reference else cond.reference)
        assert rec["text"] is (cond.negative if call.negative_text else cond.positive)
        assert rec["scale"] == (0.0 if call.zero_control else 1.0)
        if call.empty_pose:  # black pose video of the same shape, and its first frame as the reference pose
            assert rec["pose"].shape == cond.pose_video.shape and bool((rec["pose"] == -1).all())
            assert rec["ref_pose"].shape == (1, 3, 1, 48, 32) and bool((rec["ref_pose"] == -1).all())
        else:
            assert rec["pose"] is cond.pose_video and rec["ref_pose"] is cond.reference_pose
        outs[call.name] = model(hidden_states=latents, timestep=t, **cond.inputs_for(call), token_replace=True, return_dict=False)[0]
    assert len(model.calls) == 2 * len(plan.calls)
    if image <= 1:
        want = outs["cond"]
    elif pose <= 1:
        want = outs["uncond"] + image * (outs["cond"] - outs["uncond"])
    elif case1:
        want = outs["uncond"] + image * (outs["pose_uncond"] - outs["uncond"]) + pose * (outs["cond"] - outs["pose_uncond"])
    else:
        want = outs["uncond"] + pose * (outs["ref_uncond"] - outs["uncond"]) + image * (outs["cond"] - outs["ref_uncond"])
    assert torch.equal(got, want)
    # the default three-way call: ref_uncond keeps pose and text, drops only the reference
    if (image, pose, case1) == (2.0, 1.5, False):
        names = [(c.empty_reference, c.empty_pose, c.negative_text, c.zero_control) for c in plan.calls]
        assert names == [(False, False, False, False), (True, True, True, True), (True, False, False, False)]


def test_empty_reference_is_black_image_encoded_twice():
    vae = LinearVAE()
    empty = guidance.empty_reference_latents(vae.encode, 48, 32)
    assert empty.shape == (1, 32, 1, 6, 4)
    assert bool((vae.encoded[-1] == -1).all()) and vae.encoded[-1].shape == (1, 3, 1, 48, 32)
    assert torch.equal(empty[:, :16], empty[:, 16:])


# --------------------------------------------------------------------------- sampler
def test_sampler_calls_progress_and_token_replace():
    progress = []
    result, model, vae = run(frames=90, steps=2, callback=lambda n=1: progress.append(n))
    plan = result.plan
    assert plan.ranges == [(0, 81), (25, 90)] and result.frames.shape == (90, 48, 32, 3) and result.frames.dtype == np.uint8
    assert sum(progress) == len(progress) == 2 * 2 == pipeline.total_steps(90, 2)
    assert len(model.calls) == 2 * 2 * 3  # chunks x steps x calls
    sched = one_to_all_scheduler(2)
    first, second = model.calls[:6], model.calls[6:]
    for k, rec in enumerate(first):
        assert rec["token_replace"] is False and rec["hidden"].shape == (1, 16, 21, 6, 4)
        assert rec["pose"].shape == (1, 3, 81, 48, 32) and float(rec["t"][0]) == float(sched.timesteps[k // 3])
    assert first[1]["pose"] is first[4]["pose"]  # the empty pose video is made once per chunk
    assert second[1]["pose"].shape == (1, 3, 65, 48, 32) and bool((second[1]["pose"] == -1).all())
    # chunk 2 re-encodes output frames 25..29 of chunk 1: 2 latent frames, fixed through every step
    prev_video = vae.encoded[-1]
    assert prev_video.shape == (1, 3, 5, 48, 32)
    chunk1 = vae.decode(result.chunk_latents[0])
    chunk1 = ((chunk1[0] / 2 + 0.5).clamp(0, 1) * 255).permute(1, 2, 3, 0).numpy().astype(np.uint8)
    assert torch.equal(prev_video, torch.from_numpy(chunk1[25:30]).float().div(255).mul(2).sub(1).permute(3, 0, 1, 2)[None])
    prev_latents = vae.encode(prev_video)
    for rec in second:
        assert rec["token_replace"] is True and rec["hidden"].shape == (1, 16, 17, 6, 4)
        assert torch.equal(rec["hidden"][:, :, :2], prev_latents)  # frozen: never stepped
    assert torch.equal(result.chunk_latents[1][:, :, :2], prev_latents)
    assert not torch.equal(second[0]["hidden"][:, :, 2:], second[3]["hidden"][:, :, 2:])  # the rest is stepped
    # later chunks overwrite the overlap; the first chunk's own frames are kept before it
    chunk2 = vae.decode(result.chunk_latents[1])
    chunk2 = ((chunk2[0] / 2 + 0.5).clamp(0, 1) * 255).permute(1, 2, 3, 0).numpy().astype(np.uint8)
    assert np.array_equal(result.frames[25:], chunk2) and np.array_equal(result.frames[:25], chunk1[:25])
    latent = result.latent()
    assert latent["samples"].shape == (1, 16, 21 + 15, 6, 4) and latent["chunks"] == [(0, 81), (25, 90)]


def test_reference_mask_and_pose_encoding():
    ref, poses, ref_pose = images(5)
    mask = np.zeros((48, 32), np.float32)
    mask[:, :16] = 1.0
    model, vae = RecordingModel(), LinearVAE()
    pipeline.sample_one_to_all(model, vae, embeds(), ref, poses, ref_pose, mask, resolution=(32, 48), steps=2,
                               image_guidance_scale=2.0, pose_guidance_scale=1.5, seed=1)
    ref_video, mask_video, black = vae.encoded[:3]
    assert torch.equal(ref_video, torch.from_numpy(ref).float().div(255).mul(2).sub(1).permute(2, 0, 1)[None, :, None])
    assert bool((mask_video[:, :, :, :, :16] == 1).all()) and bool((mask_video[:, :, :, :, 16:] == -1).all())
    assert bool((black == -1).all())
    cond = model.calls[0]
    assert torch.equal(cond["ref"], torch.cat([vae.encode(ref_video), vae.encode(mask_video)], 1))
    assert torch.equal(cond["ref_pose"], torch.from_numpy(ref_pose).float().div(255).mul(2).sub(1).permute(2, 0, 1)[None, :, None])
    uncond = model.calls[1]
    assert torch.equal(uncond["ref"], torch.cat([vae.encode(black)] * 2, 1))


def test_short_video_is_padded_with_last_pose_and_trimmed():
    result, model, _ = run(frames=7, steps=2)
    assert result.frames.shape[0] == 7 and result.plan.ranges == [(0, 9)]
    pose = model.calls[0]["pose"]
    assert pose.shape == (1, 3, 9, 48, 32)
    assert torch.equal(pose[:, :, 7], pose[:, :, 6]) and torch.equal(pose[:, :, 8], pose[:, :, 6])
    assert all(rec["token_replace"] is False for rec in model.calls)


def test_guidance_modes_call_counts():
    for (image, pose), calls in {(2.0, 1.5): 3, (2.0, 1.0): 2, (1.0, 1.5): 1}.items():
        result, model, _ = run(frames=5, steps=3, image_guidance_scale=image, pose_guidance_scale=pose)
        assert len(model.calls) == 3 * calls and result.info["calls_per_step"] == calls


def test_seed_gives_bit_identical_video():
    a, _, _ = run(frames=9, seed=123)
    b, _, _ = run(frames=9, seed=123)
    c, _, _ = run(frames=9, seed=124)
    assert np.array_equal(a.frames, b.frames) and torch.equal(a.chunk_latents[0], b.chunk_latents[0])
    assert not torch.equal(a.chunk_latents[0], c.chunk_latents[0])


def test_each_chunk_draws_noise_from_the_seed_afresh():
    _, model, _ = run(frames=90, steps=2, seed=9)
    from poseanimate.models.wan.scheduler import seeded_noise

    first_chunk, second_chunk = model.calls[0]["hidden"], model.calls[6]["hidden"]
    assert torch.equal(first_chunk, seeded_noise((1, 16, 21, 6, 4), 9))
    # a fresh generator per chunk: chunk 2's noise after its 2 replaced frames is its own fresh draw
    assert torch.equal(second_chunk[:, :, 2:], seeded_noise((1, 16, 17, 6, 4), 9)[:, :, 2:])


def test_interrupt_stops_and_frees():
    class Interrupted(Exception):
        pass

    steps_done = []

    def callback(n=1):
        steps_done.append(n)
        if len(steps_done) == 3:
            raise Interrupted()

    model = RecordingModel()
    with pytest.raises(Interrupted) as info:
        run(frames=90, steps=2, model=model, callback=callback)
    assert len(steps_done) == 3 and len(model.calls) == 3 * 3  # no call after the interrupt
    del info
    gc.collect()
    alive = [rec["hidden_ref"]() for rec in model.calls]
    assert all(ref is None for ref in alive), "latents of the interrupted run are still referenced"


def test_bad_inputs_are_refused_with_clear_errors():
    with pytest.raises(pipeline.OneToAllInputError, match="steps"):
        run(frames=5, steps=31)
    with pytest.raises(pipeline.OneToAllInputError, match="image_guidance_scale"):
        run(frames=5, image_guidance_scale=11)
    with pytest.raises(pipeline.OneToAllInputError, match="resolution"):
        run(frames=5, resolution="1080p")
    with pytest.raises(pipeline.OneToAllInputError, match="multiples of 16"):
        run(frames=5, resolution=(30, 48))


def test_output_size_follows_reference_aspect():
    assert pipeline.output_size(512, 768, "480p") == (480, 720)
    assert pipeline.output_size(768, 512, "720p") == (1072, 720)
    assert pipeline.output_size(576, 1024, "580p") == (576, 1024)
    # the official scripts' rule: the reference's own size, short side capped at 576, floored to 16
    assert pipeline.output_size(1080, 1920, "reference") == (576, 1024)
    assert pipeline.output_size(250, 330, "reference") == (240, 320)
    for res in ("480p", "580p", "720p"):
        w, h = pipeline.output_size(333, 517, res)
        assert w % 16 == 0 and h % 16 == 0


def test_resize_crop_centre_crops_to_aspect():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 50:150] = 255  # the centre square
    out = pipeline.resize_crop(img, 32, 32)
    assert out.shape == (32, 32, 3) and out.min() == 255


def test_real_tiny_transformer_two_chunks():
    """The sampler drives the pack's OneToAllTransformer (real call signature, token replace on chunk 2)."""
    import one_to_all_tiny

    model = one_to_all_tiny.tiny_one_to_all()
    ref, poses, ref_pose = images(84)
    g = torch.Generator().manual_seed(2)
    text = WanPromptEmbeds(torch.randn(1, 512, one_to_all_tiny.TINY_ONE_TO_ALL["text_dim"], generator=g),
                           torch.randn(1, 512, one_to_all_tiny.TINY_ONE_TO_ALL["text_dim"], generator=g), "", "", 3, 5)
    vae, steps = LinearVAE(), []
    result = pipeline.sample_one_to_all(pipeline.OneToAllModel(model, torch.float32, "cpu"), vae, text, ref, poses,
                                        ref_pose, resolution=(16, 16), steps=2, image_guidance_scale=1.0,
                                        callback=steps.append, seed=3)  # small and 1 call per step: fast on CPU
    assert result.plan.ranges == [(0, 81), (19, 84)] and len(steps) == 4
    assert result.frames.shape == (84, 16, 16, 3) and torch.isfinite(result.chunk_latents[1]).all()
    prev = vae.encode(vae.encoded[-1])  # chunk 2's re-encoded overlap (output frames 19..23 of chunk 1)
    assert vae.encoded[-1].shape[2] == 5 and torch.equal(result.chunk_latents[1][:, :, :2], prev)
    assert result.frames.std() > 0
