"""One-to-All Animation sampling: reference + pose video -> frames, for videos of any length.

Follows the released scripts (``inference_14b.py``) and pipeline
(``pipeline_wanx_vhuman_tokenreplace.py``); facts in tests/fixtures/reference/one_to_all/README.md §3:

* size: the hosted endpoint's resolution name (480p/580p/720p = short side) on the
  reference's aspect, both sides floored to multiples of 16; every image is centre-cropped
  to that aspect and resized with PIL's default filter (the official ``resizecrop``);
* reference: VAE-encoded (distribution mode, normalised), followed by the encoded outpaint
  mask (``mask * 2 - 1`` as 3 channels; 1 = area the warped reference does not cover, all
  zeros in 'ref' mode) -> 32 channels; the 'empty' reference is a black image encoded and
  concatenated with itself;
* guidance: models/one_to_all/guidance.py; scheduler: flow-matching Euler with shift 7
  (models/wan/scheduler.py);
* chunks: models/one_to_all/chunks.py. Each chunk draws its noise from a fresh generator with
  the seed (as the scripts do), in the VAE dtype on the CPU. A chunk that follows generated
  frames re-encodes its first 5 frames (2 latent frames), puts them in front of the noise,
  passes ``token_replace=True`` (the model gives them the timestep-0 modulation) and keeps
  them fixed in every Euler step. Later chunks overwrite the frames they share with earlier ones;
* output: decode, ``x / 2 + 0.5``, clamp to [0, 1], ``* 255``, truncated to uint8.

Deviations: the scripts round-trip the rendered pose video through a lossy mp4 before the
model sees it; here the rendered frames are used as they are. Inputs shorter than 81 frames
(unsupported by the scripts) run as one chunk padded with the last pose, output trimmed.
"""
from __future__ import annotations

import gc
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..runtime.images import RESOLUTIONS, size_for_resolution, to_uint8_rgb
from ..runtime.lifecycle import RuntimeOptions, SampleResult
from ..wan.model import WanModel
from ..wan.scheduler import FlowMatchDistilled, check_preset, seeded_noise
from .schedule import one_to_all_scheduler
from .chunks import OVERLAP_FRAMES, ChunkPlan, pad_frames, plan_chunks
from .guidance import Conditions, empty_reference_latents, guidance_plan, guided_velocity

# The hosted endpoint's sizes (short side) plus the official scripts' own rule: the reference's
# size with the short side capped at 576 (14B scripts), floored to multiples of 16.
RESOLUTIONS = tuple(RESOLUTIONS) + ("reference",)
REFERENCE_MAX_SHORT = 576
MIN_STEPS, MAX_STEPS = 2, 30
MIN_GUIDANCE, MAX_GUIDANCE = 1.0, 10.0
DEFAULTS = {"resolution": "480p", "steps": 30, "image_guidance_scale": 2.0, "pose_guidance_scale": 1.5}
# What the released scripts use per model size (``inference_14b.py``: max_short 576, guidance
# (2.0, 1.5) as the hosted endpoint; ``inference_1.3b.py``: max_short 384, guidance (2.5, 1.5)).
# A value the caller leaves as None takes the loaded model's entry.
MODEL_DEFAULTS = {
    "14b": {"image_guidance_scale": 2.0, "reference_max_short": REFERENCE_MAX_SHORT},
    "1.3b": {"image_guidance_scale": 2.5, "reference_max_short": 384},
}
WIDTH_1_3B = 1536  # Wan2.1 1.3B's model width (14B: 5120)


class OneToAllInputError(ValueError):
    """Inputs the sampler cannot use; the message names the input and the fix."""


@dataclass
class OneToAllModel(WanModel):
    """What the loader node hands to the sampler: the transformer, its compute dtype, device and
    runtime options (attention, block swap, ...; life cycle in models/runtime/lifecycle.py)."""

    transformer: torch.nn.Module
    dtype: torch.dtype = torch.float32
    device: torch.device | str = "cpu"
    name: str = ""
    offload_device: torch.device | str = "cpu"
    options: RuntimeOptions = field(default_factory=lambda: RuntimeOptions(offload_after_run=False))
    info: dict = field(default_factory=dict)
    variant: str | None = None  # "14b" / "1.3b"; None = read from the transformer's width

    @property
    def defaults(self) -> dict:
        """The released scripts' defaults for this model size (see ``MODEL_DEFAULTS``)."""
        return MODEL_DEFAULTS[self.variant or variant_of(self.transformer)]

    def progress_total(self, num_frames: int, steps: int) -> int:
        return total_steps(num_frames, steps)

    def transformer_calls(self, num_frames: int, steps: int, image_guidance_scale: float | None = None,
                          pose_guidance_scale: float = 1.5, preset: str = "official") -> int:
        """Transformer forwards of a run: chunks x steps x calls per step of the guidance plan
        (1 with the distilled preset); image guidance None / 0 = the model's default."""
        image_guidance_scale = image_guidance_scale or self.defaults["image_guidance_scale"]
        calls = 1 if preset == "distilled" else len(guidance_plan(image_guidance_scale, pose_guidance_scale).calls)
        return total_steps(num_frames, steps) * calls

    def sample(self, vae, embeds, reference_image, pose_frames, reference_pose, mask=None, **kwargs) -> SampleResult:
        """:func:`sample_one_to_all` between ``prepare`` and ``release``, as the runtime's one result type."""
        with self.running():
            result = sample_one_to_all(self, vae, embeds, reference_image, pose_frames, reference_pose, mask,
                                       **kwargs)
        return SampleResult(result.frames_float(), result.latent(), kwargs.get("seed"), info=dict(result.info))


@dataclass
class OneToAllResult:
    frames: np.ndarray                      # (T, H, W, 3) uint8
    chunk_latents: list[torch.Tensor]       # final latents of each chunk, [1, 16, F_lat, H/8, W/8] float32 (CPU)
    plan: ChunkPlan
    width: int
    height: int
    info: dict = field(default_factory=dict)

    def frames_float(self) -> torch.Tensor:
        """ComfyUI IMAGE: (T, H, W, 3) float32 in [0, 1]."""
        return torch.from_numpy(self.frames).float().div_(255.0)

    def latent(self) -> dict:
        """A ComfyUI LATENT dict: every chunk's latents in order, without its re-encoded (replaced) frames.

        For full chunks this is a contiguous latent sequence of the video; ``chunks`` gives the
        frame ranges and ``chunk_latent_frames`` how many latent frames each contributes.
        """
        parts, counts = [], []
        for chunk, z in zip(self.plan, self.chunk_latents):
            keep = z[:, :, chunk.replaced_latent_frames:]
            parts.append(keep)
            counts.append(int(keep.shape[2]))
        return {"samples": torch.cat(parts, dim=2), "chunks": self.plan.ranges, "chunk_latent_frames": counts,
                "frames": self.plan.frames}


def variant_of(transformer) -> str:
    """"1.3b" for a transformer of Wan2.1 1.3B's width, else "14b" (the tiny test models count as 14B)."""
    dim = getattr(transformer, "inner_dim", None)
    return "1.3b" if dim == WIDTH_1_3B else "14b"


def model_defaults(model) -> dict:
    """``MODEL_DEFAULTS`` of a ``OneToAllModel`` or a bare transformer."""
    return model.defaults if isinstance(model, OneToAllModel) else MODEL_DEFAULTS[variant_of(model)]


# ------------------------------------------------------------------------------- image prep
def output_size(reference_width: int, reference_height: int, resolution,
                reference_max_short: int = REFERENCE_MAX_SHORT) -> tuple[int, int]:
    """(W, H): a resolution name on the reference's aspect (multiples of 16), or an explicit (W, H).

    'reference' caps the short side at ``reference_max_short`` (576 for 14B, 384 for 1.3B)."""
    if resolution == "reference":
        w, h = float(reference_width), float(reference_height)
        cap = int(reference_max_short)
        if cap < 16:
            raise OneToAllInputError(f"reference_max_short must be at least 16 pixels, got {cap}.")
        if min(w, h) > cap:  # the scripts' arithmetic: short side to the cap, long side truncated
            w, h = (int(w * cap / h), cap) if h < w else (cap, int(h * cap / w))
        w, h = int(w // 16 * 16), int(h // 16 * 16)
        if w < 16 or h < 16:
            raise OneToAllInputError(f"the reference image ({reference_width}x{reference_height}) is smaller than 16 pixels; use a larger image.")
        return w, h
    if isinstance(resolution, str):
        if resolution not in RESOLUTIONS:
            raise OneToAllInputError(f"resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}.")
        return size_for_resolution(reference_width, reference_height, resolution)
    w, h = (int(v) for v in resolution)
    if w < 16 or h < 16 or w % 16 or h % 16:
        raise OneToAllInputError(f"output size must be multiples of 16 pixels (at least 16), got {w}x{h}.")
    return w, h


def resize_crop(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """The official ``resizecrop``: centre crop to the target aspect, then PIL's default resize."""
    from PIL import Image

    if image.shape[1] == width and image.shape[0] == height:
        return image
    pil = Image.fromarray(image)
    w, h = pil.size
    if h / w > height / width:
        cw, ch = int(w), int(int(w) * height / width)
    else:
        ch, cw = int(h), int(int(h) * width / height)
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    return np.array(pil.crop(box).resize((width, height)))


def _to_signed(frames: np.ndarray) -> torch.Tensor:
    """(F, H, W, C) uint8 -> [1, C, F, H, W] float32 in [-1, 1] (uint8 / 255 * 2 - 1)."""
    arr = frames if frames.flags.writeable and frames.flags.c_contiguous else np.array(frames)
    t = torch.from_numpy(arr).float()
    return (t / 255.0 * 2 - 1).permute(3, 0, 1, 2).unsqueeze(0)


def _mask_uint8(mask, height: int, width: int) -> np.ndarray:
    """Outpaint mask (1 = area to fill) as an 8-bit gray image like the official mask_input.png."""
    if mask is None:
        return np.zeros((height, width), np.uint8)
    m = mask.detach().cpu().float().numpy() if hasattr(mask, "detach") else np.asarray(mask, np.float32)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise OneToAllInputError(f"outpaint mask must be (H, W) (or one MASK frame), got shape {m.shape}.")
    return np.clip(np.rint(np.nan_to_num(m) * 255.0), 0, 255).astype(np.uint8)


def _check_scales(steps: int, image_scale: float, pose_scale: float) -> None:
    if int(steps) != steps or not MIN_STEPS <= steps <= MAX_STEPS:
        raise OneToAllInputError(f"steps must be an integer in {MIN_STEPS}..{MAX_STEPS}, got {steps!r}.")
    for name, value in (("image_guidance_scale", image_scale), ("pose_guidance_scale", pose_scale)):
        if not MIN_GUIDANCE <= float(value) <= MAX_GUIDANCE:
            raise OneToAllInputError(f"{name} must be in {MIN_GUIDANCE:g}..{MAX_GUIDANCE:g}, got {value!r}.")


def total_steps(num_frames: int, steps: int) -> int:
    """Denoising steps over all chunks (the progress bar's total)."""
    return len(plan_chunks(num_frames)) * int(steps)


def _model_dtype(model) -> torch.dtype:
    if isinstance(model, OneToAllModel):
        return model.dtype
    first = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    return first.dtype if first is not None and first.dtype.is_floating_point else torch.float32


# ----------------------------------------------------------------------------------- sampler
@torch.no_grad()
def sample_one_to_all(
    model,
    vae,
    embeds,
    reference_image,
    pose_frames,
    reference_pose,
    mask=None,
    resolution="480p",
    steps: int = 30,
    image_guidance_scale: float | None = None,
    pose_guidance_scale: float = 1.5,
    seed: int = 42,
    callback: Callable[[int], None] | None = None,
    control_scale: float = 1.0,
    case1: bool = False,
    device=None,
    validate_ranges: bool = True,
    reference_max_short: int | None = None,
    preset: str = "official",
) -> OneToAllResult:
    """Animate ``reference_image`` with ``pose_frames`` (rendered in the ``one_to_all`` style).

    ``model``: a ``OneToAllModel`` or the transformer itself; ``vae``: ``models.wan.vae_tiling.WanVAE``;
    ``embeds``: ``models.wan.text.WanPromptEmbeds``. Images are uint8 or 0..1 float arrays/tensors:
    ``reference_image`` (H, W, 3), ``pose_frames`` (T, H', W', 3), ``reference_pose`` (H, W, 3) (the
    reference's own pose drawn without face, warped in 'pose' mode), ``mask`` (H, W) 1 = outpaint.
    ``callback(1)`` runs after every denoising step (chunks x steps in all); an exception it
    raises (ComfyUI's interrupt) stops sampling, and the run's tensors are dropped before it
    propagates. ``image_guidance_scale`` / ``reference_max_short`` left as None take the model
    size's official values (``MODEL_DEFAULTS``: 2.0 / 576 for 14B, 2.5 / 384 for 1.3B).
    ``preset="distilled"`` (a step-distillation LoRA loaded): 4..8 steps on the
    distilled grid and sampler (models/wan/scheduler.py), guidance off: one call per step.
    """
    defaults = model_defaults(model)
    if image_guidance_scale is None:
        image_guidance_scale = defaults["image_guidance_scale"]
    if reference_max_short is None:
        reference_max_short = defaults["reference_max_short"]
    if validate_ranges:
        _check_scales(steps, image_guidance_scale, pose_guidance_scale)
    try:
        check_preset(preset, steps)
    except ValueError as exc:
        raise OneToAllInputError(str(exc)) from exc
    transformer = model.transformer if isinstance(model, OneToAllModel) else model
    dtype = _model_dtype(model)
    device = torch.device(device if device is not None else (model.device if isinstance(model, OneToAllModel) else "cpu"))

    ref = to_uint8_rgb(reference_image, "reference_image")[0]
    poses = to_uint8_rgb(pose_frames, "pose_frames")
    ref_pose = to_uint8_rgb(reference_pose, "reference_pose")[0]
    width, height = output_size(ref.shape[1], ref.shape[0], resolution, reference_max_short)
    plan = plan_chunks(len(poses))
    if preset == "distilled":
        guidance = guidance_plan(1.0, 1.0)
        scheduler = FlowMatchDistilled.distilled(int(steps), seed)
    else:
        guidance = guidance_plan(image_guidance_scale, pose_guidance_scale, case1=case1)
        scheduler = one_to_all_scheduler(int(steps))
    work: dict = {}
    try:
        return _run(transformer, vae, embeds, ref, poses, ref_pose, mask, width, height, plan, guidance,
                    scheduler, seed, dtype, device, control_scale, callback, work)
    except BaseException as exc:
        # Interrupt or error: drop every tensor of the run before the exception travels on
        # (its traceback would otherwise keep the chunk's latents and conditions alive).
        work.clear()
        traceback.clear_frames(exc.__traceback__)
        gc.collect()
        raise
    finally:
        work.clear()


def _run(transformer, vae, embeds, ref, poses, ref_pose, mask, width, height, plan, guidance, scheduler,
         seed, dtype, device, control_scale, callback, work) -> OneToAllResult:
    conditions = _conditions(vae, embeds, ref, ref_pose, mask, width, height, dtype, device, control_scale)
    work["conditions"] = conditions
    out = np.zeros((plan.frames, height, width, 3), np.uint8)
    chunk_latents: list[torch.Tensor] = []
    generated: set[int] = set()
    padded = pad_frames(poses, plan.padded_frames)
    for chunk in plan:
        sub = np.stack([resize_crop(f, width, height) for f in padded[chunk.start:chunk.end]])
        conditions.pose_video, conditions._empty_pose = None, None  # free the previous chunk's first
        conditions.pose_video = _to_signed(sub).to(device, dtype)
        prev = None
        if chunk.replace:
            idx = range(chunk.start, chunk.start + chunk.replace)
            if not all(k in generated for k in idx):  # the plan guarantees it; the official check
                raise RuntimeError(f"chunk {chunk.index}: overlap frames {list(idx)} were not generated.")
            prev = vae.encode(_to_signed(out[chunk.start:chunk.start + chunk.replace])).to(device, dtype)
        latents = _denoise_chunk(transformer, vae, scheduler, guidance, conditions, chunk, prev,
                                 seed, dtype, device, callback, work)
        chunk_latents.append(latents.float().cpu())
        video = vae.decode(latents)
        work.pop("latents", None)
        del latents, prev
        # official conversion: in the VAE dtype, x / 2 + 0.5, then float, clamp, * 255, truncate
        video = (video[0].to(vae.dtype).cpu() / 2 + 0.5).float().clamp(0, 1) * 255
        frames = video.permute(1, 2, 3, 0).numpy().astype(np.uint8)
        del video
        for j in range(chunk.length):
            g = chunk.start + j
            if g < plan.frames:
                out[g] = frames[j]
                generated.add(g)
    return OneToAllResult(out, chunk_latents, plan, width, height,
                          {"guidance": guidance.mode, "calls_per_step": len(guidance.calls),
                           "image_guidance_scale": guidance.image_scale, "pose_guidance_scale": guidance.pose_scale,
                           "transformer_calls": len(plan.ranges) * scheduler.num_steps * len(guidance.calls),
                           "chunks": plan.ranges, "padded_frames": plan.padded_frames})


def _conditions(vae, embeds, ref, ref_pose, mask, width, height, dtype, device, control_scale) -> Conditions:
    """Reference + mask latents (32 ch), the empty reference, the reference-pose image and the texts."""
    ref_img = _to_signed(resize_crop(ref, width, height)[None])
    mask_img = resize_crop(_mask_uint8(mask, ref.shape[0], ref.shape[1]), width, height).astype(np.float32) / 255.0
    mask_vid = torch.from_numpy(mask_img * 2 - 1)[None, None, None].repeat(1, 3, 1, 1, 1)
    reference = torch.cat([vae.encode(ref_img), vae.encode(mask_vid)], dim=1)
    empty = empty_reference_latents(vae.encode, height, width)
    pose_img = _to_signed(resize_crop(ref_pose, width, height)[None])
    positive, negative = embeds.positive, embeds.negative
    if positive.ndim == 2:
        positive, negative = positive[None], negative[None]
    return Conditions(
        reference=reference.to(device, dtype),
        empty_reference=empty.to(device, dtype),
        pose_video=torch.empty(0),
        reference_pose=pose_img.to(device, dtype),
        positive=positive.to(device, dtype),
        negative=negative.to(device, dtype),
        control_scale=float(control_scale),
    )


def _denoise_chunk(transformer, vae, scheduler, guidance, conditions, chunk, prev, seed, dtype, device,
                   callback, work) -> torch.Tensor:
    """All steps of one chunk; returns its final latents (model dtype, on ``device``)."""
    temporal, spatial = vae.compression
    _, _, _, height, width = conditions.pose_video.shape
    shape = (1, 16, (chunk.length - 1) // temporal + 1, height // spatial, width // spatial)
    latents = seeded_noise(shape, int(seed), dtype=vae.dtype, device=device, draw_dtype=vae.dtype)
    frozen = None
    if prev is not None:
        n = prev.shape[2]
        latents = torch.cat([prev.to(dtype), latents[:, :, n:]], dim=2)
        frozen = list(range(n))
    work["latents"] = latents
    for i in range(scheduler.num_steps):
        t = scheduler.timestep(i, batch=1, device=device)
        velocity = guided_velocity(transformer, guidance, conditions, latents.to(dtype), t, prev is not None)
        latents = scheduler.step(latents, velocity, i, frozen_frames=frozen)
        work["latents"] = latents
        del velocity
        if callback is not None:
            callback(1)
    return latents


__all__ = ["OneToAllModel", "OneToAllResult", "OneToAllInputError", "sample_one_to_all", "output_size",
           "resize_crop", "total_steps", "DEFAULTS", "MODEL_DEFAULTS", "model_defaults", "variant_of",
           "OVERLAP_FRAMES", "RESOLUTIONS"]
