"""UniAnimate-DiT sampling: reference image + rendered pose video -> frames, any length.

Follows the official inference (``WanUniAnimateVideoPipeline`` / ``...LongVideoPipeline``;
facts in tests/fixtures/reference/unianimate_dit/README.md section 4):

* size: H and W multiples of 16; the reference is stretched to (W, H) with PIL bicubic
  and scaled to [-1, 1];
* CLIP: bicubic 224x224 of that image (no antialias), ``x * 0.5 + 0.5``, OpenAI CLIP
  mean/std, hidden states after block 31 of 32 (all 257 tokens, no final norm);
* ``y`` = 4 mask channels (1 on latent frame 0) + VAE latent of [reference, zero frames],
  built once for one window's length, plus the bf16 reference-pose embedding;
* pose video: PIL bilinear resize to (W, H), uint8 values 0..255; the pose modules turn
  each window's slice (first pose repeated 3 times in front) into pose tokens added
  after the patch embedding;
* flow-matching Euler, shift 5; CFG ``neg + cfg * (pos - neg)`` where the negative pass
  uses the negative prompt and no pose tokens (same latents, timestep, CLIP and ``y``);
  cfg 1.0 skips it;
* longer than one window (21 latent frames): windows.py's plan, private leading frames,
  averaging of the stepped windows.

Deviations, on purpose: the pose video is padded with its last pose to the next ``4k+1``
frames (the official long script drops up to 3 tail frames instead) and the output is
trimmed back to the input length; the private window states are drawn from the seeded
generator after the start noise (official: the unseeded global RNG) so a seed always
gives the same video; latents stay float32 between steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..runtime.step_cache import call_key
from ..runtime.images import FrameError, to_uint8_rgb
from ..runtime.lifecycle import RuntimeOptions, SampleResult
from ..wan.model import WanModel
from ..wan.scheduler import FlowMatchDistilled, FlowMatchEuler, check_preset, make_generator
from ..wan.text import WanPromptEmbeds
from ..wan.vae_tiling import TileConfig
from . import windows as win
from .schedule import unianimate_scheduler

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = 224
# The official pipeline decodes with DiffSynth tiles of 30x52 latents, stride 15x26.
UNIANIMATE_TILES = TileConfig.from_latent((30, 52), (15, 26))
# (W, H) of the official runs (``inference_unianimate_wan_480p.py``: height 832, width 480;
# ``..._720p.py``: 1280 x 720), portrait whatever the reference; the model was trained at 480p.
OFFICIAL_SIZES = {"480p": (480, 832), "720p": (720, 1280)}
KEEP_ASPECT = "_keep_aspect"
# "480p"/"720p": the official size (the reference is stretched to it, as official);
# "..._keep_aspect": the official pixel area on the reference's aspect (outside the training
# distribution); "reference": the reference's own size, capped at REFERENCE_MAX_AREA.
RESOLUTIONS = ("480p", "720p", "480p" + KEEP_ASPECT, "720p" + KEEP_ASPECT, "reference")
REFERENCE_MAX_AREA = 720 * 1280  # the 720p pixel count: a 12-megapixel photo must not become a 12-MP video
SIZE_MULTIPLE = 16
ASPECT_SNAP = 0.03  # keep-aspect: references within 3% of the official aspect get the official size exactly
DEFAULT_STEPS = 30
DEFAULT_CFG = 1.5
LATENT_CHANNELS = 16
MASK_CHANNELS = 4
POSE_FRONT_PADDING = 3
# The official example scripts' negative prompt (Wan's default, shortened, plus
# "three legs, many people in the background, walking backwards").
UNIANIMATE_NEGATIVE_PROMPT = (
    "细节模糊不清，字幕，作品，画作，画面，静止，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，"
    "画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，杂乱的背景，三条腿，背景人很多，倒着走"
)


class UniAnimateInputError(ValueError):
    """Inputs the sampler cannot use (shapes, sizes, missing pieces)."""


# ----------------------------------------------------------------------------- the model
@dataclass
class UniAnimateModel(WanModel):
    """What the loader node hands to the sampler (the runtime life cycle: models/runtime/lifecycle.py).

    ``transformer``: the Wan I2V DiT with the UniAnimate LoRA (merged or not); called as
    ``transformer(cat([x, y], 1), t, context, clip_feature, pose_tokens=..., return_dict=False)[0]``.
    ``pose_encoders``: the two pose modules (``dwpose_embedding``, ``randomref_embedding_pose``),
    placed with the transformer. ``options``: attention, block swap, offload after run, ...
    """

    transformer: torch.nn.Module
    pose_encoders: object
    dtype: torch.dtype = torch.bfloat16
    device: torch.device | str = "cpu"
    offload_device: torch.device | str = "cpu"
    options: RuntimeOptions = field(default_factory=RuntimeOptions)
    info: dict = field(default_factory=dict)

    def companions(self) -> list[torch.nn.Module]:
        return [self.pose_encoders] if isinstance(self.pose_encoders, torch.nn.Module) else []

    def progress_total(self, num_pose_frames: int, steps: int, context_size: int = win.CONTEXT_SIZE,
                       context_overlap: int = win.CONTEXT_OVERLAP) -> int:
        return progress_total(num_pose_frames, steps, context_size, context_overlap)

    def transformer_calls(self, num_pose_frames: int, steps: int, cfg: float = DEFAULT_CFG,
                          context_size: int = win.CONTEXT_SIZE, context_overlap: int = win.CONTEXT_OVERLAP,
                          preset: str = "official") -> int:
        """Transformer forwards of a run: window steps x (2 with CFG, 1 at cfg 1 or distilled)."""
        single = cfg == 1.0 or preset == "distilled"
        return progress_total(num_pose_frames, steps, context_size, context_overlap) * (1 if single else 2)

    def sample(self, vae, clip_vision, embeds, reference_image, pose_images, reference_pose, **kwargs) -> SampleResult:
        """:func:`generate` with this model, as the runtime's one result type."""
        result = generate(self, vae, clip_vision, embeds, reference_image, pose_images, reference_pose, **kwargs)
        return SampleResult(result.frames, {"samples": result.latents}, kwargs.get("seed"),
                            info={"width": result.width, "height": result.height})


# -------------------------------------------------------------------- sizes and frames
def output_size(ref_width: int, ref_height: int, resolution: str = "480p") -> tuple[int, int]:
    """(W, H) of the generated video for a reference of this size (see ``RESOLUTIONS``).

    ``480p``/``720p``: the official scripts' fixed portrait size (480x832, 720x1280).
    ``..._keep_aspect``: the official pixel area on the reference's aspect (a reference within 3%
    of the official aspect, portrait or landscape, gets the official size or its transpose), both
    sides rounded to multiples of 16. ``reference``: the official ``check_resize_height_width``
    rule (the reference's size rounded up to 16), scaled down first to at most the 720p area.
    """
    if resolution not in RESOLUTIONS:
        raise UniAnimateInputError(f"resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}.")
    if ref_width < 1 or ref_height < 1:
        raise UniAnimateInputError(f"reference image has no pixels ({ref_width}x{ref_height}).")
    if resolution == "reference":
        scale = min(1.0, math.sqrt(REFERENCE_MAX_AREA / (ref_width * ref_height)))
        if scale < 1.0:  # round down so the cap holds after rounding to 16
            down = lambda v: max(SIZE_MULTIPLE, int(v * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE)  # noqa: E731
            return down(ref_width), down(ref_height)
        return check_size(ref_width, ref_height)
    if not resolution.endswith(KEEP_ASPECT):
        return OFFICIAL_SIZES[resolution]
    w0, h0 = OFFICIAL_SIZES[resolution[: -len(KEEP_ASPECT)]]
    if ref_width > ref_height:
        w0, h0 = h0, w0
    aspect = ref_width / ref_height
    if abs(aspect / (w0 / h0) - 1.0) <= ASPECT_SNAP:
        return w0, h0
    area = w0 * h0
    width = math.sqrt(area * aspect)
    height = area / width
    return _round16(width), _round16(height)


def _round16(value: float) -> int:
    return max(SIZE_MULTIPLE, int(round(value / SIZE_MULTIPLE)) * SIZE_MULTIPLE)


def check_size(width: int, height: int) -> tuple[int, int]:
    """Official ``check_resize_height_width``: round both sides up to multiples of 16."""
    up = lambda v: (int(v) + SIZE_MULTIPLE - 1) // SIZE_MULTIPLE * SIZE_MULTIPLE  # noqa: E731
    return up(width), up(height)


def _as_uint8_frames(frames, what: str) -> np.ndarray:
    """The runtime's one converter (models/runtime/images.py), with this family's error type."""
    try:
        return to_uint8_rgb(frames, what)
    except FrameError as exc:
        raise UniAnimateInputError(str(exc)) from exc


def resize_frames(frames: np.ndarray, width: int, height: int, resample=Image.BILINEAR) -> np.ndarray:
    """[T, h, w, 3] uint8 -> [T, H, W, 3] uint8 with PIL (antialiased, as torchvision on PIL)."""
    if frames.shape[1:3] == (height, width):
        return np.ascontiguousarray(frames)
    out = np.empty((len(frames), height, width, 3), np.uint8)
    for i, frame in enumerate(frames):
        out[i] = np.asarray(Image.fromarray(frame).resize((width, height), resample))
    return out


def reference_tensor(image: np.ndarray, width: int, height: int) -> torch.Tensor:
    """Official ``preprocess_image(image.resize((W, H)))``: bicubic stretch, ``x * 2/255 - 1``, [1, 3, H, W]."""
    img = _as_uint8_frames(image, "reference image")[0]
    resized = np.asarray(Image.fromarray(img).resize((width, height), Image.BICUBIC), dtype=np.float32)
    return torch.from_numpy(resized * np.float32(2 / 255) - 1).permute(2, 0, 1).unsqueeze(0).contiguous()


def pad_pose_frames(frames: np.ndarray) -> tuple[np.ndarray, int]:
    """Repeat the last pose up to the next ``4k+1`` frames; returns (frames, original count)."""
    count = len(frames)
    target = win.round_up_frames(count)
    if target > count:
        frames = np.concatenate([frames, np.repeat(frames[-1:], target - count, axis=0)], axis=0)
    return frames, count


# ------------------------------------------------------------------------- encoders
def clip_pixels(reference: torch.Tensor, size: int = CLIP_SIZE) -> torch.Tensor:
    """[1, 3, H, W] in [-1, 1] -> CLIP input: bicubic to the model's size (224 for ViT-H/14, no
    antialias), to [0, 1], mean/std."""
    x = F.interpolate(reference.float(), size=(size, size), mode="bicubic", align_corners=False)
    x = x * 0.5 + 0.5
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def encode_clip(clip_vision, reference: torch.Tensor) -> torch.Tensor:
    """CLIP image tokens ``[1, 257, width]`` (float32): hidden states before the last block.

    ``clip_vision`` is a ``Placement`` around a transformers ``CLIPVisionModel`` (what the
    Wan CLIP loader node returns) or the model itself.
    """
    use = getattr(clip_vision, "use", None)
    if use is None:
        return _clip_forward(clip_vision, reference)
    with use() as model:
        return _clip_forward(model, reference)


def _clip_forward(model, reference: torch.Tensor) -> torch.Tensor:
    size = int(getattr(getattr(model, "config", None), "image_size", CLIP_SIZE) or CLIP_SIZE)
    pixels = clip_pixels(reference, size)
    param = next(model.parameters())
    out = model(pixel_values=pixels.to(param.device, param.dtype), output_hidden_states=True)
    hidden = out.hidden_states
    if len(hidden) < 2:
        raise UniAnimateInputError("the CLIP vision model has no hidden layers to take the penultimate output from.")
    return hidden[-2].float().cpu()


@torch.no_grad()
def image_condition(vae, reference: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``y`` without the pose embedding: cat(mask 4 ch, VAE latent of [reference, zero frames]).

    ``vae``: models.wan.vae_tiling.WanVAE (normalised latents). Encoded untiled, as official.
    """
    _, _, height, width = reference.shape
    video = torch.zeros(1, 3, num_frames, height, width, dtype=torch.float32)
    video[:, :, 0] = reference[0]
    latent = vae.encode(video, tiles=None).float().cpu()
    if latent.shape[1] != LATENT_CHANNELS:
        raise UniAnimateInputError(f"the VAE gives {latent.shape[1]} latent channels; UniAnimate (Wan2.1) needs 16. "
                                   "Load the Wan2.1 VAE (wan_2.1_vae) in the VAE loader.")
    mask = torch.zeros(1, MASK_CHANNELS, latent.shape[2], latent.shape[3], latent.shape[4])
    mask[:, :, 0] = 1.0
    return torch.cat([mask, latent], dim=1)


def pose_tokens(pose_encoders, pose_video: torch.Tensor) -> torch.Tensor:
    """Pose tokens ``[1, tokens, dim]`` (bf16-rounded values) of a [F, H, W, 3] pose clip, 0..255.

    ``pose_encoders``: models.unianimate.pose_modules.PoseEncoders (first pose repeated 3
    times in front, /255, ``dwpose_embedding``, bf16 rounding, ``(f h w)`` token order).
    """
    _check_pose_encoders(pose_encoders)
    with torch.no_grad():
        return pose_encoders.pose_tokens(pose_video)


def reference_pose_embedding(pose_encoders, reference_pose: torch.Tensor) -> torch.Tensor:
    """``[1, 20, 1, H/8, W/8]`` bf16-rounded embedding of the reference pose ([H, W, 3], 0..255)."""
    _check_pose_encoders(pose_encoders)
    with torch.no_grad():
        return pose_encoders.embed_reference_pose(reference_pose).float()


def _check_pose_encoders(pose_encoders) -> None:
    if not (hasattr(pose_encoders, "pose_tokens") and hasattr(pose_encoders, "embed_reference_pose")):
        raise UniAnimateInputError("the UniAnimate model has no pose modules; load the UniAnimate checkpoint "
                                   "(UniAnimate-Wan2.1-14B-Lora-12000) in the UniAnimate loader.")


# ------------------------------------------------------------------------- denoising
@dataclass
class Conditions:
    """Everything the denoising loop needs besides the model (CPU tensors)."""

    context_pos: torch.Tensor          # [1, L, text_dim]
    context_neg: torch.Tensor | None   # [1, L, text_dim]; None when cfg == 1
    clip_feature: torch.Tensor         # [1, 257, clip_dim]
    y: torch.Tensor                    # [1, 20, window latent frames, h, w], ref-pose embedding included
    pose_video: torch.Tensor           # [F, H, W, 3], values 0..255 (uint8 or float)


StepHook = Callable[[int, int, win.Window, torch.Tensor, torch.Tensor | None], None]


@torch.no_grad()
def denoise(transformer, pose_token_fn: Callable[[win.Window], torch.Tensor], cond: Conditions,
            noise: torch.Tensor, steps: int = DEFAULT_STEPS, cfg: float = DEFAULT_CFG,
            context_size: int = win.CONTEXT_SIZE, context_overlap: int = win.CONTEXT_OVERLAP,
            first_features: torch.Tensor | None = None, generator: torch.Generator | None = None,
            dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
            callback: Callable[[int], None] | None = None, on_window: StepHook | None = None,
            scheduler: FlowMatchEuler | None = None) -> torch.Tensor:
    """The sampling loop over the window plan; returns float32 latents ``[1, 16, n, h, w]`` on the CPU.

    ``pose_token_fn(window)`` gives the window's pose tokens (on any device).
    ``first_features`` ``[n_windows, 1, 16, 2, h, w]``: the windows' private start states
    (drawn from ``generator`` when None). ``callback(1)`` runs after every window step (progress
    and interrupt); ``on_window(step, index, window, pos, neg)`` sees the raw model outputs.
    The whole video's latents, the window average and the private states stay on the CPU; each
    window's slice visits ``device`` for its step and comes back (as One-to-All's chunks do), so
    the accelerator holds one window at a time whatever the video's length.
    """
    num_latent = noise.shape[2]
    plan = win.plan_windows(num_latent, context_size, context_overlap)
    sched = scheduler or unianimate_scheduler(steps)
    if cfg != 1.0 and cond.context_neg is None:
        raise UniAnimateInputError("cfg != 1 needs the negative prompt embedding.")
    window_len = len(plan[0].frames)
    if cond.y.shape[2] != window_len:
        raise UniAnimateInputError(f"image condition covers {cond.y.shape[2]} latent frames, the windows {window_len}.")
    device = torch.device(device)
    y = cond.y.to(device, dtype)
    clip = cond.clip_feature.to(device, dtype)
    ctx_pos = cond.context_pos.to(device, dtype)
    ctx_neg = cond.context_neg.to(device, dtype) if cfg != 1.0 else None
    states = _private_states(plan, noise, first_features, generator)
    tokens = _TokenCache(plan, pose_token_fn, device, dtype)
    latents = noise.float().cpu()
    states = [None if s is None else s.float().cpu() for s in states]

    def forward(x, t, context, pose):
        hidden = torch.cat([x.to(dtype), y], dim=1)
        out = transformer(hidden, t, context, clip, pose_tokens=pose, return_dict=False)[0]
        return out.float()

    for step in range(sched.num_steps):
        t = sched.timestep(step, 1, dtype=dtype, device=device)
        blender = win.WindowBlender(latents, plan) if len(plan) > 1 else None
        for index, window in enumerate(plan):
            x = latents[:, :, list(window.frames)] if blender is not None else latents
            x = x.to(device, copy=True)
            if window.private:
                x[:, :, : window.private] = states[index].to(device)
            with call_key((index, "cond")):  # step cache: one entry per window and guidance call
                pos = forward(x, t, ctx_pos, tokens.get(index))
            with call_key((index, "uncond")):
                neg = forward(x, t, ctx_neg, None) if ctx_neg is not None else None
            if on_window is not None:
                on_window(step, index, window, pos, neg)
            velocity = pos if neg is None else neg + cfg * (pos - neg)
            stepped = sched.step(x, velocity, step, out_dtype=torch.float32).cpu()
            del pos, neg, velocity, x
            if blender is None:
                latents = stepped
            else:
                blender.add(window, stepped)
                if window.private:
                    states[index] = stepped[:, :, : window.private].clone()
            del stepped
            if callback is not None:
                callback(1)
        if blender is not None:
            latents = blender.result()
    tokens.clear()
    return latents


def _private_states(plan, noise, first_features, generator):
    if not any(w.private for w in plan):
        return [None] * len(plan)
    shape = (1, noise.shape[1], plan[0].private, noise.shape[3], noise.shape[4])
    if first_features is not None:
        if first_features.shape[0] != len(plan) or tuple(first_features.shape[1:]) != shape:
            raise UniAnimateInputError(f"first_features must be [{len(plan)}, {', '.join(map(str, shape))}], "
                                       f"got {tuple(first_features.shape)}.")
        return [first_features[i] for i in range(len(plan))]
    gen = generator if generator is not None else make_generator(0)
    return [torch.randn(shape, generator=gen, dtype=torch.float32) for _ in plan]


class _TokenCache:
    """Pose tokens per window, computed once; kept on the device for one window, else on the CPU."""

    def __init__(self, plan, fn, device, dtype):
        self.plan, self.fn, self.device, self.dtype = plan, fn, device, dtype
        self.single = len(plan) == 1
        self.cache: dict[int, torch.Tensor] = {}

    def get(self, index: int) -> torch.Tensor:
        if index not in self.cache:
            tokens = self.fn(self.plan[index]).to(self.dtype)
            self.cache[index] = tokens.to(self.device) if self.single else tokens.cpu()
        return self.cache[index].to(self.device, non_blocking=True)

    def clear(self) -> None:
        self.cache.clear()


# ---------------------------------------------------------------------------- the whole run
@dataclass
class ClipEmbeds:
    """CLIP tokens of a reference and the (W, H) it was stretched to before CLIP's 224 resize."""

    tokens: torch.Tensor  # [1, 257, clip_dim] float32
    width: int
    height: int


@dataclass
class UniAnimateResult:
    frames: torch.Tensor   # [T, H, W, 3] float32 0..1 (IMAGE)
    latents: torch.Tensor  # [1, 16, n, H/8, W/8] float32
    width: int
    height: int


def generate(model: UniAnimateModel, vae, clip_vision, embeds: WanPromptEmbeds, reference_image,
             pose_images, reference_pose, resolution: str = "480p", seed: int = 0,
             steps: int = DEFAULT_STEPS, cfg: float = DEFAULT_CFG,
             context_size: int = win.CONTEXT_SIZE, context_overlap: int = win.CONTEXT_OVERLAP,
             callback: Callable[[int], None] | None = None, size: tuple[int, int] | None = None,
             clip_embeds: ClipEmbeds | None = None, preset: str = "official") -> UniAnimateResult:
    """Reference image + rendered pose frames (``unianimate`` style) -> video frames and latents.

    Images are [T, H, W, 3] (float 0..1 or uint8). ``callback(n)`` is called once per window
    step (``steps * windows`` calls in all, see :func:`progress_total`). ``size`` = (W, H)
    overrides the resolution preset. ``clip_embeds`` (computed at the same size) replaces the
    CLIP pass. Accelerator memory is released after the run, also when it fails or is interrupted.
    ``preset="distilled"`` (a step-distillation LoRA loaded): 4..8 steps on the distilled grid and
    sampler (models/wan/scheduler.py; with several windows the Euler form, so averaged windows keep
    their noise), cfg off: one call per window step.
    """
    try:
        check_preset(preset, steps)
    except ValueError as exc:
        raise UniAnimateInputError(str(exc)) from exc
    if preset == "distilled":
        cfg = 1.0
    if not isinstance(embeds, WanPromptEmbeds):
        raise UniAnimateInputError("text embeds must come from the Wan Text Encode node (POSEANIMATE_WAN_EMBEDS).")
    if cfg < 1.0:
        raise UniAnimateInputError(f"cfg must be >= 1 (1 = no negative pass), got {cfg}.")
    ref = _as_uint8_frames(reference_image, "reference image")[0]
    poses = _as_uint8_frames(pose_images, "pose images")
    ref_pose = _as_uint8_frames(reference_pose, "reference pose image")[0]
    width, height = check_size(*size) if size else output_size(ref.shape[1], ref.shape[0], resolution)
    poses, count = pad_pose_frames(resize_frames(poses, width, height, Image.BILINEAR))
    ref_pose = resize_frames(ref_pose[None], width, height, Image.BILINEAR)[0]
    num_latent = win.latent_frames(len(poses))
    window_latent = min(num_latent, context_size)

    reference = reference_tensor(ref, width, height)
    if clip_embeds is not None:
        if (clip_embeds.width, clip_embeds.height) != (width, height):
            raise UniAnimateInputError(f"clip_embeds were computed at {clip_embeds.width}x{clip_embeds.height}, the video is "
                                       f"{width}x{height}: give Wan CLIP Vision Encode the sampler's resolution.")
        clip_feature = clip_embeds.tokens
    elif clip_vision is not None:
        clip_feature = encode_clip(clip_vision, reference)
    else:
        raise UniAnimateInputError("connect a CLIP vision model (Load Wan CLIP Vision: clip_vision_h) or clip_embeds.")
    y = image_condition(vae, reference, 4 * window_latent - 3)
    if y.shape[3] * 8 != height or y.shape[4] * 8 != width:
        raise UniAnimateInputError(f"the VAE maps {width}x{height} to a {y.shape[4]}x{y.shape[3]} latent; "
                                   "UniAnimate needs the Wan2.1 VAE (8x spatial compression).")
    pose_video = torch.from_numpy(poses)  # [F, H, W, 3] uint8
    device, dtype = torch.device(model.device), model.dtype
    generator = make_generator(seed)
    noise = torch.randn((1, LATENT_CHANNELS, num_latent, height // 8, width // 8), generator=generator,
                        dtype=torch.float32)
    model.prepare()
    try:
        y = y + reference_pose_embedding(model.pose_encoders, torch.from_numpy(ref_pose)).cpu()
        cond = Conditions(embeds.positive, embeds.negative if cfg != 1.0 else None, clip_feature, y, pose_video)

        def token_fn(window: win.Window) -> torch.Tensor:
            start, stop = window.pose_pixel_slice
            return pose_tokens(model.pose_encoders, pose_video[start:stop])

        scheduler = None
        if preset == "distilled":
            single = len(win.plan_windows(num_latent, context_size, context_overlap)) == 1
            scheduler = FlowMatchDistilled.distilled(steps, seed, renoise=single)
        latents = denoise(model.transformer, token_fn, cond, noise, steps, cfg, context_size, context_overlap,
                          generator=generator, dtype=dtype, device=device, callback=callback, scheduler=scheduler)
    finally:
        model.release()
    video = vae.decode(latents).cpu()  # [1, 3, F, H, W] in [-1, 1]; no whole-video copy stays on the device
    frames = ((video[0].float() + 1) * 127.5).clamp(0, 255).to(torch.uint8)  # official tensor2video
    del video
    frames = frames.permute(1, 2, 3, 0)[:count].float() / 255.0
    return UniAnimateResult(frames.contiguous(), latents, width, height)


def progress_total(num_pose_frames: int, steps: int, context_size: int = win.CONTEXT_SIZE,
                   context_overlap: int = win.CONTEXT_OVERLAP) -> int:
    """Number of ``callback`` calls of a run: steps x windows."""
    n = win.latent_frames(win.round_up_frames(num_pose_frames))
    return steps * len(win.plan_windows(n, context_size, context_overlap))
