"""AnimateDiff video-to-video: restyle a source video with SD1.5 + a motion module.

Why: the local equivalent of the hosted ``animatediff-v2v`` endpoint, for videos of any
length. Steps: pick every n-th source frame (up to ``max_frames``) -> scale to the working
size (short side ``short_side``, aspect kept; then centre-cropped to multiples of 8 as
ComfyUI's VAE Encode crops) -> VAE encode (in frame batches) -> noise to ``denoise``
strength -> each sampler step runs the animated UNet (+ optional ControlNet) with CFG over
context windows (only when the clip is longer than the motion module's length, or when
context options are given), fuses the windows -> decode (in batches) -> restore the source
frame count by repeating or blending.

Latents are sampled in ComfyUI's layout ``[F, C, h, w]``, so a seed gives ComfyUI's initial
and per-step noise. ``sampling`` chooses the sampler/scheduler implementation: the built-in
set (:class:`BuiltinSampling`) or, inside ComfyUI, ComfyUI's own (``nodes/host.py``).
Progress: ``callback(n)`` advances by n units out of :meth:`AnimateDiffV2V.progress_total`
(VAE batches and sampler steps); ``interrupt()`` is called before every UNet/ControlNet
call and between the UNet's blocks.

The UNet is any callable ``unet(latents [B,C,F,H,W], timestep, encoder_hidden_states,
down_block_additional_residuals=None, mid_block_additional_residual=None)`` returning
the eps prediction ([B,C,F,H,W], or an object with ``.sample``); ControlNet residuals
are per frame, frames flattened batch-major (``b*F + f``), as diffusers' layout.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..runtime.placement import available_memory
from . import context_windows as cw
from . import prompt_weights as pw
from . import samplers as sm

log = logging.getLogger(__name__)

DEFAULT_NEGATIVE = "(bad quality, worst quality:1.2), ugly faces, bad anime"
RESTORE_MODES = ("repeat", "blend", "none")
OUTPUT_SIZES = ("working", "source")
DEFAULT_SHORT_SIDE = 512  # SD1.5 and the motion modules were trained at 512
MAX_SEED = 0xFFFFFFFFFFFFFFFF


@dataclass
class V2VResult:
    frames: torch.Tensor  # [T, H, W, 3] float32 0..1 (CPU)
    seed: int
    fps: float | None  # output fps (source fps when frames are restored)
    generated_frames: int  # frames actually diffused (after select_every_nth_frame / max_frames)
    size: tuple[int, int] = (0, 0)  # working (height, width) the frames were diffused at
    unet_calls: int = 0  # UNet forward calls of the run (cond/uncond batched together count once)


@dataclass
class V2VSettings:
    """The endpoint's parameters plus the local extras (defaults = endpoint defaults)."""

    prompt: str = ""
    negative_prompt: str = DEFAULT_NEGATIVE
    steps: int = 25
    guidance: float = 7.0
    seed: int = 0
    denoise: float = 0.7
    sampler: str = "dpmpp_2m"
    scheduler: str = "karras"
    beta_schedule: str = "autoselect"
    select_every_nth_frame: int = 2
    restore: str = "repeat"
    fps: float | None = None
    short_side: int = DEFAULT_SHORT_SIDE  # larger frames are scaled down to this short side; 0 = native size
    max_frames: int = 0  # at most this many diffused frames (after select_every_nth_frame); 0 = all
    output_size: str = "working"  # or "source": scale the result back to the source size
    context: cw.ContextOptions | None = None  # None: windows only when the clip exceeds the motion module
    freenoise: bool = False
    window_batch: int = 0  # 0 = as many as memory allows
    controlnet_strength: float = 1.0
    controlnet_start: float = 0.0  # ComfyUI Apply ControlNet's start_percent / end_percent
    controlnet_end: float = 1.0
    clip_skip: int = 1
    vae_batch: int = 16


def select_frames(frames: torch.Tensor, every_nth: int, max_frames: int = 0) -> torch.Tensor:
    if every_nth < 1:
        raise ValueError(f"select_every_nth_frame must be >= 1, got {every_nth}.")
    if max_frames < 0:
        raise ValueError(f"max_frames must be >= 0 (0 = every frame), got {max_frames}.")
    picked = frames[::every_nth]
    return picked[:max_frames] if max_frames else picked


def restore_frames(generated: torch.Tensor, total: int, every_nth: int, mode: str) -> torch.Tensor:
    """Back to ``total`` frames: 'repeat' holds each generated frame, 'blend' cross-fades."""
    if mode not in RESTORE_MODES:
        raise ValueError(f"Unknown restore mode {mode!r}; use one of {', '.join(RESTORE_MODES)}.")
    if mode == "none" or every_nth == 1:
        return generated
    n = generated.shape[0]
    t = torch.arange(total, dtype=torch.float64) / every_nth
    lo = t.floor().long().clamp(max=n - 1)
    if mode == "repeat":
        return generated[lo]
    hi = (lo + 1).clamp(max=n - 1)
    w = (t - t.floor()).to(generated.dtype).view(-1, *([1] * (generated.ndim - 1)))
    return generated[lo] * (1 - w) + generated[hi] * w  # past the last frame lo == hi: a plain hold


def working_size(height: int, width: int, short_side: int = DEFAULT_SHORT_SIDE, multiple: int = 8):
    """(scaled (h, w), cropped (h, w)): short side down to ``short_side`` (aspect kept, never
    upscaled; 0 = native), then cropped to multiples of ``multiple`` (ComfyUI's VAE Encode crop)."""
    if short_side < 0:
        raise ValueError(f"short_side must be >= 0 (0 = the source size), got {short_side}.")
    sh, sw = height, width
    if short_side and min(height, width) > short_side:
        scale = short_side / min(height, width)
        sh, sw = max(1, round(height * scale)), max(1, round(width * scale))
    ch, cw_ = (sh // multiple) * multiple, (sw // multiple) * multiple
    if ch < multiple or cw_ < multiple:
        raise ValueError(f"Source frames are {width}x{height}; the VAE needs at least {multiple}x{multiple} pixels "
                         "(use 512-ish frames).")
    return (sh, sw), (ch, cw_)


def _to_working(frames: torch.Tensor, scaled: tuple[int, int], cropped: tuple[int, int]) -> torch.Tensor:
    """[T,H,W,3] 0..1 -> [T,3,h,w] in -1..1: bilinear (antialiased) scale, then ComfyUI's centre crop."""
    x = frames.permute(0, 3, 1, 2).float()
    if tuple(x.shape[-2:]) != tuple(scaled):
        x = F.interpolate(x, size=scaled, mode="bilinear", antialias=True, align_corners=False)
    (sh, sw), (ch, cw_) = scaled, cropped
    top, left = (sh - ch) // 2, (sw - cw_) // 2
    return x[..., top : top + ch, left : left + cw_] * 2.0 - 1.0


def resize_hint(hint: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """ComfyUI's ControlNet hint resize (``common_upscale(..., 'nearest-exact', 'center')``):
    centre-crop to the target aspect, then nearest-exact resize. hint [N,3,H,W]."""
    old_h, old_w = hint.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    s = hint.narrow(-2, y, old_h - 2 * y).narrow(-1, x, old_w - 2 * x)
    if tuple(s.shape[-2:]) == (height, width):
        return s
    return F.interpolate(s, size=(height, width), mode="nearest-exact")


class BuiltinSampling:
    """The built-in samplers and schedulers (runs without ComfyUI)."""

    samplers = sm.SAMPLERS
    schedulers = sm.SCHEDULERS

    def sigmas(self, schedule, scheduler: str, steps: int, denoise: float, sampler: str) -> torch.Tensor:
        if sampler not in sm.SAMPLERS:
            raise ValueError(f"Unknown sampler {sampler!r}; use one of {', '.join(sm.SAMPLERS)}.")
        return sm.get_sigmas(schedule, scheduler, steps, denoise, sampler=sampler)

    def sample(self, sampler: str, schedule, denoiser, noise, latent, sigmas, seed: int, on_step, cfg: float) -> torch.Tensor:
        """Noise the latent to ``sigmas[0]`` and sample; ``denoiser(x, sigma)`` -> denoised,
        ``on_step(i)`` after step i (the ComfyUI implementation in nodes/host.py has the same call)."""
        fn = sm.get_sampler(sampler, schedule)
        x = schedule.noise_scaling(sigmas[0], noise, latent, sm.is_max_denoise(schedule, sigmas.cpu()))
        return fn(lambda xx, sig: denoiser(xx, sig), x, sigmas, callback=on_step, seed=seed)


class DiffusersMotionUNet(torch.nn.Module):
    """Adapts diffusers' ``UNetMotionModel`` (which wants per-frame text states) to our call.

    Our UNet call passes one ``encoder_hidden_states`` row per video; diffusers' AnimateDiff
    pipelines repeat it per frame before calling the UNet, so this wrapper does the same.
    """

    def __init__(self, unet):
        super().__init__()
        self.inner = unet

    def forward(self, latents, timestep, encoder_hidden_states, down_block_additional_residuals=None,
                mid_block_additional_residual=None):
        frames = latents.shape[2]
        ctx = encoder_hidden_states.repeat_interleave(frames, dim=0)
        return self.inner(latents, timestep, ctx, down_block_additional_residuals=down_block_additional_residuals,
                          mid_block_additional_residual=mid_block_additional_residual, return_dict=False)[0]


def _mem_available() -> int:
    """Free host memory in bytes (0 where unknown)."""
    return available_memory() or 0


def _unwrap(out):
    return out.sample if hasattr(out, "sample") else (out[0] if isinstance(out, (tuple, list)) else out)


class AnimateDiffV2V:
    """The video-to-video sampler over already-built models.

    ``unet`` is the animated UNet (see module docstring); ``vae`` a diffusers
    ``AutoencoderKL``; ``text_encoder``/``tokenizer`` the SD1.5 CLIP pair;
    ``controlnet`` an optional diffusers ``ControlNetModel``; ``motion_format`` feeds
    the beta-schedule autoselect (AnimateLCM -> 'lcm').
    """

    def __init__(self, unet, vae, text_encoder, tokenizer, controlnet=None, motion_format: str | None = None,
                 device=None, dtype: torch.dtype | None = None, precision: str = "auto"):
        self.precision = precision  # what the loader node asked for; applied by the sampler node
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.controlnet = controlnet
        self.motion_format = motion_format
        self.device = torch.device(device) if device is not None else self._param(unet).device
        self.dtype = dtype or self._param(unet).dtype

    def to(self, device=None, dtype: torch.dtype | None = None, vae_dtype: torch.dtype | None = None) -> "AnimateDiffV2V":
        """Move every model (UNet/text encoder/ControlNet to ``dtype``, the VAE to ``vae_dtype``)."""
        device = torch.device(device) if device is not None else self.device
        for module, want in ((self.unet, dtype), (self.text_encoder, dtype), (self.controlnet, dtype), (self.vae, vae_dtype or dtype)):
            if module is not None:
                if want is not None and self._param(module).dtype == want:
                    want = None  # diffusers warns on every dtype cast, even a no-op one
                module.to(device=device, dtype=want)
        self.device = device
        if dtype is not None:
            self.dtype = dtype
        return self

    @staticmethod
    def _param(module):
        try:
            return next(module.parameters())
        except (AttributeError, StopIteration):
            return torch.zeros(())

    # ------------------------------------------------------------------ VAE
    @property
    def vae_scale(self) -> int:
        """Pixels per latent pixel (8 for SD1.5's VAE)."""
        channels = getattr(getattr(self.vae, "config", None), "block_out_channels", None)
        return 2 ** (len(channels) - 1) if channels else 8

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor, batch: int = 16, short_side: int = 0,
                      progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """[T,H,W,3] 0..1 -> latents [1,4,T,h,w] (posterior mean x scaling factor) at the working size."""
        vdtype = self._param(self.vae).dtype
        scale = getattr(getattr(self.vae, "config", None), "scaling_factor", 0.18215)
        scaled, cropped = working_size(frames.shape[1], frames.shape[2], short_side, self.vae_scale)
        out = []
        for i in range(0, frames.shape[0], max(1, batch)):  # convert per batch: no full-video copy
            chunk = _to_working(frames[i : i + batch], scaled, cropped).to(self.device, vdtype)
            dist = self.vae.encode(chunk).latent_dist
            out.append((dist.mean * scale).float().cpu())
            if progress is not None:
                progress(1)
        lat = torch.cat(out)  # [T,4,h,w]
        return lat.permute(1, 0, 2, 3)[None]

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, batch: int = 16,
                       progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """[1,4,T,h,w] -> [T,H,W,3] 0..1 float32 CPU, decoded ``batch`` frames at a time."""
        vdtype = self._param(self.vae).dtype
        scale = getattr(getattr(self.vae, "config", None), "scaling_factor", 0.18215)
        lat = latents[0].permute(1, 0, 2, 3)
        out = []
        for i in range(0, lat.shape[0], max(1, batch)):
            img = _unwrap(self.vae.decode((lat[i : i + batch] / scale).to(self.device, vdtype)))
            out.append(((img.float() + 1.0) / 2.0).clamp(0, 1).permute(0, 2, 3, 1).cpu())
            if progress is not None:
                progress(1)
        return torch.cat(out)

    # ------------------------------------------------------------------ conditioning
    def encode_prompts(self, prompt: str, negative: str, clip_skip: int = 1):
        cond = pw.encode_weighted(prompt, self.tokenizer, self.text_encoder, clip_skip)
        uncond = pw.encode_weighted(negative, self.tokenizer, self.text_encoder, clip_skip)
        return cond.to(self.device, self.dtype), uncond.to(self.device, self.dtype)

    def _hint_images(self, pose_frames: torch.Tensor, count: int, size: tuple[int, int]) -> torch.Tensor:
        """Pose IMAGE [T,H,W,3] -> ControlNet hints [count,3,H,W] 0..1 at the latent's pixel size
        (centre crop + nearest-exact, as ComfyUI's Apply ControlNet)."""
        if pose_frames.shape[0] < count:
            raise ValueError(
                f"ControlNet pose video has {pose_frames.shape[0]} frames but {count} are needed after "
                "select_every_nth_frame; feed the pose frames of the same source video."
            )
        x = pose_frames[:count].permute(0, 3, 1, 2).float()
        return resize_hint(x, *size).clamp(0, 1)

    # ------------------------------------------------------------------ window batching
    def auto_window_batch(self, latent_shape, length: int, has_controlnet: bool, cap: int = 16) -> int:
        """Windows per UNet call: as many as fit in free memory (a rough estimate), at most ``cap``.

        Estimate: ~24 kB of live activations per latent pixel per frame image in fp32 (half in
        fp16/bf16), x2 for cond/uncond, x1.5 with a ControlNet; 60% of the free accelerator
        memory (CUDA) or of MemAvailable (CPU, capped at 4 windows: CPU caches gain little more).
        """
        pixels = latent_shape[-1] * latent_shape[-2]
        per_frame = pixels * 24_000 * (1.0 if self.dtype == torch.float32 else 0.5) * (1.5 if has_controlnet else 1.0)
        per_window = 2 * length * per_frame
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
        else:
            free, cap = _mem_available(), min(cap, 4)
        if not free:
            return 1
        return int(max(1, min(cap, free * 0.6 // max(per_window, 1))))

    def _eps_batch(self, x_windows, t, cond, uncond, hints, strength, with_uncond=True, interrupt=None, counter=None):
        """(eps_uncond or None, eps_cond) for a stack of equal-length windows x_windows [N,C,L,h,w].

        ``with_uncond=False`` (cfg 1) runs the positive prompt only, as ComfyUI and ADE do.
        """
        n, c, length, h, w = x_windows.shape
        paired = pw.pair_for_batching(cond, uncond) if with_uncond else None
        if paired is not None:
            calls = [(torch.cat([x_windows, x_windows]), torch.cat([paired[1].expand(n, -1, -1), paired[0].expand(n, -1, -1)]),
                      None if hints is None else torch.cat([hints, hints]))]
        elif with_uncond:
            calls = [(x_windows, uncond.expand(n, -1, -1), hints), (x_windows, cond.expand(n, -1, -1), hints)]
        else:
            calls = [(x_windows, cond.expand(n, -1, -1), hints)]
        outs = []
        for xb, ctx, hb in calls:
            if interrupt is not None:
                interrupt()
            tb = t.to(self.device).expand(xb.shape[0])
            down = mid = None
            if self.controlnet is not None and hb is not None:
                flat = xb.permute(0, 2, 1, 3, 4).reshape(-1, c, h, w)
                ctx_f = ctx.repeat_interleave(length, dim=0)
                down, mid = self.controlnet(flat, tb.repeat_interleave(length), encoder_hidden_states=ctx_f,
                                            controlnet_cond=hb.reshape(-1, *hb.shape[2:]), conditioning_scale=strength,
                                            return_dict=False)
                if interrupt is not None:
                    interrupt()
            if counter is not None:
                counter[0] += 1
            outs.append(_unwrap(self.unet(xb, tb, ctx, down_block_additional_residuals=down,
                                          mid_block_additional_residual=mid)).float())
        if not with_uncond:
            return None, outs[0]
        if len(outs) == 1:
            e_uncond, e_cond = outs[0].chunk(2)
        else:
            e_uncond, e_cond = outs
        return e_uncond, e_cond

    # ------------------------------------------------------------------ progress
    def progress_total(self, source_frames: int, settings: V2VSettings) -> int:
        """Units of ``callback`` a run reports: VAE encode batches + sampler steps + decode batches."""
        s = settings
        n = len(range(0, source_frames, max(1, s.select_every_nth_frame)))
        if s.max_frames:
            n = min(n, s.max_frames)
        batches = math.ceil(n / max(1, s.vae_batch))
        steps = s.steps if s.denoise > 0 else 0
        return 2 * batches + steps

    def _context_for(self, nf: int, s: V2VSettings) -> cw.ContextOptions:
        """Given options, or: one window when the clip fits the motion module, else ADE's defaults."""
        if s.context is not None:
            return s.context
        limit = getattr(self.unet, "max_frames", None)
        if limit and nf > limit:
            ctx = cw.ContextOptions()
            log.info("AnimateDiff: %d frames exceed the motion module's %d-frame length; using the default context "
                     "windows (%s, length %d, overlap %d, %s fuse). Connect a context-options node to change them.",
                     nf, limit, ctx.schedule, ctx.context_length, ctx.context_overlap, ctx.fuse_method)
            return ctx
        return cw.ContextOptions(context_length=max(nf, 1), context_overlap=0)

    # ------------------------------------------------------------------ main entry
    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, settings: V2VSettings, pose_frames: torch.Tensor | None = None,
                 callback: Callable[[int], None] | None = None, interrupt: Callable[[], None] | None = None,
                 sampling=None) -> V2VResult:
        s = settings
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"Source video must be an IMAGE batch [T,H,W,3], got shape {tuple(frames.shape)}.")
        if frames.shape[0] < 1:
            raise ValueError("Source video has no frames.")
        if s.output_size not in OUTPUT_SIZES:
            raise ValueError(f"Unknown output_size {s.output_size!r}; use one of {', '.join(OUTPUT_SIZES)}.")
        sampling = sampling or BuiltinSampling()
        progress = callback or (lambda n=1: None)
        seed = random.randint(0, 2**53) if s.seed is None or s.seed < 0 else int(s.seed) & MAX_SEED
        picked = select_frames(frames, s.select_every_nth_frame, s.max_frames)
        total = min(frames.shape[0], picked.shape[0] * s.select_every_nth_frame)  # source frames the result covers
        if pose_frames is not None and self.controlnet is None:
            raise ValueError("A pose video was given but no ControlNet is loaded; pick a ControlNet in the loader node.")
        pose_picked = None if pose_frames is None else select_frames(pose_frames, s.select_every_nth_frame, s.max_frames)

        schedule = sm.DiscreteSchedule.from_name(sm.resolve_beta_schedule(s.beta_schedule, self.motion_format))
        sigmas = sampling.sigmas(schedule, s.scheduler, s.steps, s.denoise, s.sampler)

        latents = self.encode_frames(picked, s.vae_batch, s.short_side, progress)
        size = (latents.shape[-2] * self.vae_scale, latents.shape[-1] * self.vae_scale)
        if len(sigmas) < 2:  # denoise 0: nothing to do
            out = self.decode_latents(latents, s.vae_batch, progress)
            return self._finish(out, total, s, seed, frames.shape[1:3], size, 0)
        cond, uncond = self.encode_prompts(s.prompt, s.negative_prompt, s.clip_skip)
        _, c, nf, h, w = latents.shape
        hints = None
        if pose_picked is not None:
            hints = self._hint_images(pose_picked, nf, size).to(self.device, self.dtype)
        cn_range = (schedule.percent_to_sigma(s.controlnet_start), schedule.percent_to_sigma(s.controlnet_end))
        ctx_opts = self._context_for(nf, s)

        max_frames = getattr(self.unet, "max_frames", None)
        if max_frames and min(nf, ctx_opts.context_length) > max_frames:
            raise ValueError(
                f"Windows of {min(nf, ctx_opts.context_length)} frames exceed the motion module's {max_frames}-frame "
                f"positional encoding; set context_length <= {max_frames} in the context options."
            )
        gen = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn((nf, c, h, w), generator=gen, dtype=torch.float32)  # ComfyUI's prepare_noise layout
        if s.freenoise:
            noise = cw.freenoise(noise, ctx_opts, seed, dim=0)
        lat = latents[0].permute(1, 0, 2, 3).to(self.device)  # [F,C,h,w]

        window_batch = s.window_batch or self.auto_window_batch(latents.shape, min(nf, ctx_opts.context_length), hints is not None)
        skip_uncond = math.isclose(s.guidance, 1.0)
        sigma_list = [float(v) for v in sigmas]
        calls = [0]

        def eps_parts(x_in: torch.Tensor, sigma: float, t: torch.Tensor, need_uncond: bool):
            """Fused (eps_guided, eps_cond, eps_uncond) over the windows; x_in [F,C,h,w]."""
            step = min(range(len(sigma_list)), key=lambda k: abs(sigma_list[k] - sigma))
            windows = cw.get_windows(nf, ctx_opts, step)
            whole = windows == [list(range(nf))]
            with_uncond = need_uncond or not skip_uncond
            x5 = x_in.permute(1, 0, 2, 3)[None]
            use_hints = hints if (hints is not None and cn_range[1] <= sigma <= cn_range[0]) else None
            parts_fused = 3 if need_uncond and with_uncond else 1  # cond/uncond fused apart only for CFG++ samplers
            fusers = None if whole else [cw.WindowFuser(x5.float(), ctx_opts, dim=2) for _ in range(parts_fused)]
            by_len: dict[int, list[list[int]]] = {}
            for win in windows:
                by_len.setdefault(len(win), []).append(win)
            for group in by_len.values():
                for i in range(0, len(group), window_batch):
                    part = group[i : i + window_batch]
                    idx = torch.tensor(part, device=x_in.device)  # [N, L]
                    xw = x5[0][:, idx].permute(1, 0, 2, 3, 4).to(self.dtype)  # [N,C,L,h,w]
                    hw = None if use_hints is None else use_hints[idx]  # [N,L,3,H,W]
                    e_u, e_c = self._eps_batch(xw, t, cond, uncond, hw, s.controlnet_strength, with_uncond, interrupt, calls)
                    guided = e_c if e_u is None else e_u + s.guidance * (e_c - e_u)
                    outs = (guided, e_c, e_u)
                    if fusers is None:
                        return outs
                    for k, win in enumerate(part):
                        for fuser, o in zip(fusers, outs):
                            fuser.add(win, o[k : k + 1])
            res = [f.result() for f in fusers]
            return tuple(res + [None] * (3 - len(res)))

        def denoiser(x_in: torch.Tensor, sigma, parts: bool = False):
            """x [F,C,h,w] at ``sigma`` -> denoised (or (denoised, cond_denoised, uncond_denoised))."""
            sig = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1)[0].cpu()
            c_in = 1.0 / torch.sqrt(sig**2 + 1.0)
            t = schedule.timestep(sig.reshape(1)).float()
            xs = (x_in.float() * c_in.to(x_in.device))
            guided, e_c, e_u = eps_parts(xs, float(sig), t, parts)
            to_x = lambda e: e[0].permute(1, 0, 2, 3)  # noqa: E731  [1,C,F,h,w] -> [F,C,h,w]
            den = lambda e: schedule.denoised(x_in.float(), sig.to(x_in.device), to_x(e).float()).to(x_in.dtype)  # noqa: E731
            if not parts:
                return den(guided)
            return den(guided), den(e_c), den(e_u)

        done = [0]

        def on_step(i: int) -> None:
            """Sampler callbacks give a step index (k-diffusion); progress wants increments."""
            advance = min(int(i) + 1, len(sigmas) - 1) - done[0]
            if advance > 0:
                done[0] += advance
                progress(advance)
            elif interrupt is not None:
                interrupt()

        hooked = interrupt is not None and hasattr(self.unet, "interrupt_hook")
        previous = getattr(self.unet, "interrupt_hook", None)
        if hooked:  # checked between the UNet's blocks: an interrupt stops within one UNet call
            self.unet.interrupt_hook = interrupt
        try:
            x = sampling.sample(s.sampler, schedule, denoiser, noise.to(self.device), lat.float(), sigmas.to(self.device),
                                seed, on_step, float(s.guidance))
        finally:
            if hooked:
                self.unet.interrupt_hook = previous
        if done[0] < len(sigmas) - 1:  # samplers that report fewer steps (e.g. dpm_adaptive): close the bar
            progress(len(sigmas) - 1 - done[0])
        out = self.decode_latents(x.permute(1, 0, 2, 3)[None].float(), s.vae_batch, progress)
        return self._finish(out, total, s, seed, frames.shape[1:3], size, calls[0])

    @staticmethod
    def _finish(generated: torch.Tensor, total: int, s: V2VSettings, seed: int, source_hw, size, calls) -> V2VResult:
        n = generated.shape[0]
        if s.output_size == "source" and tuple(generated.shape[1:3]) != tuple(source_hw):
            generated = F.interpolate(generated.permute(0, 3, 1, 2), size=tuple(source_hw), mode="bilinear",
                                      antialias=True, align_corners=False).clamp(0, 1).permute(0, 2, 3, 1)
        restored = restore_frames(generated, total, s.select_every_nth_frame, s.restore)
        fps = s.fps
        if fps is not None and (s.restore == "none" and s.select_every_nth_frame > 1):
            fps = fps / s.select_every_nth_frame
        return V2VResult(frames=restored, seed=seed, fps=fps, generated_frames=n, size=tuple(size), unet_calls=calls)
