"""AnimateDiff video-to-video: restyle a source video with SD1.5 + a motion module.

Why: the local equivalent of the hosted ``animatediff-v2v`` endpoint, for videos of any
length. Steps: pick every n-th source frame -> VAE encode (in frame batches) -> noise to
``denoise`` strength -> each sampler step runs the animated UNet (+ optional ControlNet)
with CFG over context windows (several windows per call when ``window_batch`` allows),
fuses the windows -> decode (in batches) -> restore the source frame count by
repeating or blending. Progress and interrupt go through ``callback(step)``.

The UNet is any callable ``unet(latents [B,C,F,H,W], timestep, encoder_hidden_states,
down_block_additional_residuals=None, mid_block_additional_residual=None)`` returning
the eps prediction ([B,C,F,H,W], or an object with ``.sample``); ControlNet residuals
are per frame, frames flattened batch-major (``b*F + f``), as diffusers' layout.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from . import context_windows as cw
from . import prompt_weights as pw
from . import samplers as sm

DEFAULT_NEGATIVE = "(bad quality, worst quality:1.2), ugly faces, bad anime"
RESTORE_MODES = ("repeat", "blend", "none")
MAX_SEED = 0xFFFFFFFFFFFFFFFF


@dataclass
class V2VResult:
    frames: torch.Tensor  # [T, H, W, 3] float32 0..1 (CPU)
    seed: int
    fps: float | None  # output fps (source fps when frames are restored)
    generated_frames: int  # frames actually diffused (after select_every_nth_frame)


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
    context: cw.ContextOptions = field(default_factory=cw.ContextOptions)
    freenoise: bool = False
    window_batch: int = 0  # 0 = as many as memory allows
    controlnet_strength: float = 1.0
    clip_skip: int = 1
    vae_batch: int = 16


def select_frames(frames: torch.Tensor, every_nth: int) -> torch.Tensor:
    if every_nth < 1:
        raise ValueError(f"select_every_nth_frame must be >= 1, got {every_nth}.")
    return frames[::every_nth]


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


def _to_multiple_of(frames: torch.Tensor, m: int = 8) -> torch.Tensor:
    """[T,H,W,3] -> [T,3,H',W'] in -1..1 with H', W' rounded down to multiples of ``m``."""
    x = frames.permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    h8, w8 = (h // m) * m, (w // m) * m
    if h8 < m or w8 < m:
        raise ValueError(f"Source frames are {w}x{h}; the VAE needs at least {m}x{m} pixels (use 512-ish frames).")
    if (h8, w8) != (h, w):
        x = F.interpolate(x, size=(h8, w8), mode="bilinear", antialias=True, align_corners=False)
    return x * 2.0 - 1.0


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
    """MemAvailable from /proc/meminfo in bytes (0 where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


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
    def encode_frames(self, frames: torch.Tensor, batch: int = 16) -> torch.Tensor:
        """[T,H,W,3] 0..1 -> latents [1,4,T,H/8,W/8] (posterior mean x scaling factor)."""
        vdtype = self._param(self.vae).dtype
        scale = getattr(getattr(self.vae, "config", None), "scaling_factor", 0.18215)
        out = []
        for i in range(0, frames.shape[0], max(1, batch)):  # convert per batch: no full-video copy
            chunk = _to_multiple_of(frames[i : i + batch], self.vae_scale).to(self.device, vdtype)
            dist = self.vae.encode(chunk).latent_dist
            out.append((dist.mean * scale).float().cpu())
        lat = torch.cat(out)  # [T,4,h,w]
        return lat.permute(1, 0, 2, 3)[None]

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, batch: int = 16) -> torch.Tensor:
        """[1,4,T,h,w] -> [T,H,W,3] 0..1 float32 CPU, decoded ``batch`` frames at a time."""
        vdtype = self._param(self.vae).dtype
        scale = getattr(getattr(self.vae, "config", None), "scaling_factor", 0.18215)
        lat = latents[0].permute(1, 0, 2, 3)
        out = []
        for i in range(0, lat.shape[0], max(1, batch)):
            img = _unwrap(self.vae.decode((lat[i : i + batch] / scale).to(self.device, vdtype)))
            out.append(((img.float() + 1.0) / 2.0).clamp(0, 1).permute(0, 2, 3, 1).cpu())
        return torch.cat(out)

    # ------------------------------------------------------------------ conditioning
    def encode_prompts(self, prompt: str, negative: str, clip_skip: int = 1):
        cond = pw.encode_weighted(prompt, self.tokenizer, self.text_encoder, clip_skip)
        uncond = pw.encode_weighted(negative, self.tokenizer, self.text_encoder, clip_skip)
        return cond.to(self.device, self.dtype), uncond.to(self.device, self.dtype)

    def _hint_images(self, pose_frames: torch.Tensor, count: int, size: tuple[int, int]) -> torch.Tensor:
        """Pose IMAGE [T,H,W,3] -> ControlNet hints [count,3,H,W] 0..1 at the latent's pixel size."""
        if pose_frames.shape[0] < count:
            raise ValueError(
                f"ControlNet pose video has {pose_frames.shape[0]} frames but {count} are needed after "
                "select_every_nth_frame; feed the pose frames of the same source video."
            )
        x = pose_frames[:count].permute(0, 3, 1, 2).float()
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return x.clamp(0, 1)

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

    def _eps_batch(self, x_windows, t, cond, uncond, hints, strength):
        """CFG eps for a stack of equal-length windows: x_windows [N,C,L,h,w]."""
        n, c, length, h, w = x_windows.shape
        paired = pw.pair_for_batching(cond, uncond)
        if paired is not None:
            calls = [(torch.cat([x_windows, x_windows]), torch.cat([paired[1].expand(n, -1, -1), paired[0].expand(n, -1, -1)]),
                      None if hints is None else torch.cat([hints, hints]))]
        else:
            calls = [(x_windows, uncond.expand(n, -1, -1), hints), (x_windows, cond.expand(n, -1, -1), hints)]
        outs = []
        for xb, ctx, hb in calls:
            tb = t.to(self.device).expand(xb.shape[0])
            down = mid = None
            if self.controlnet is not None and hb is not None:
                flat = xb.permute(0, 2, 1, 3, 4).reshape(-1, c, h, w)
                ctx_f = ctx.repeat_interleave(length, dim=0)
                down, mid = self.controlnet(flat, tb.repeat_interleave(length), encoder_hidden_states=ctx_f,
                                            controlnet_cond=hb.reshape(-1, *hb.shape[2:]), conditioning_scale=strength,
                                            return_dict=False)
            outs.append(_unwrap(self.unet(xb, tb, ctx, down_block_additional_residuals=down,
                                          mid_block_additional_residual=mid)).float())
        if len(outs) == 1:
            e_uncond, e_cond = outs[0].chunk(2)
        else:
            e_uncond, e_cond = outs
        return e_uncond, e_cond

    # ------------------------------------------------------------------ main entry
    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, settings: V2VSettings, pose_frames: torch.Tensor | None = None,
                 callback: Callable[[int], None] | None = None, interrupt: Callable[[], None] | None = None) -> V2VResult:
        s = settings
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"Source video must be an IMAGE batch [T,H,W,3], got shape {tuple(frames.shape)}.")
        if frames.shape[0] < 1:
            raise ValueError("Source video has no frames.")
        seed = random.randint(0, 2**53) if s.seed is None or s.seed < 0 else int(s.seed) & MAX_SEED
        total = frames.shape[0]
        picked = select_frames(frames, s.select_every_nth_frame)
        if pose_frames is not None and self.controlnet is None:
            raise ValueError("A pose video was given but no ControlNet is loaded; pick a ControlNet in the loader node.")
        pose_picked = None if pose_frames is None else select_frames(pose_frames, s.select_every_nth_frame)

        schedule = sm.DiscreteSchedule.from_name(sm.resolve_beta_schedule(s.beta_schedule, self.motion_format))
        sigmas = sm.get_sigmas(schedule, s.scheduler, s.steps, s.denoise)
        sampler = sm.get_sampler(s.sampler, schedule)

        latents = self.encode_frames(picked, s.vae_batch)
        if len(sigmas) < 2:  # denoise 0: nothing to do
            out = self.decode_latents(latents, s.vae_batch)
            return self._finish(out, total, s, seed)
        cond, uncond = self.encode_prompts(s.prompt, s.negative_prompt, s.clip_skip)
        _, c, nf, h, w = latents.shape
        hints = None
        if pose_picked is not None:
            hints = self._hint_images(pose_picked, nf, (h * self.vae_scale, w * self.vae_scale)).to(self.device, self.dtype)

        max_frames = getattr(self.unet, "max_frames", None)
        if max_frames and min(nf, s.context.context_length) > max_frames:
            raise ValueError(
                f"Windows of {min(nf, s.context.context_length)} frames exceed the motion module's {max_frames}-frame "
                f"positional encoding; set context_length <= {max_frames} in the context options."
            )
        gen = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn((nf, c, h, w), generator=gen, dtype=torch.float32).permute(1, 0, 2, 3)[None]
        if s.freenoise:
            noise = cw.freenoise(noise, s.context, seed, dim=2)
        x = schedule.noise_scaling(sigmas[0], noise, latents, sm.is_max_denoise(schedule, sigmas)).to(self.device)

        window_batch = s.window_batch or self.auto_window_batch(latents.shape, min(nf, s.context.context_length), hints is not None)

        def eps_fn(x_in: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
            windows = cw.get_windows(nf, s.context, step)
            whole = windows == [list(range(nf))]
            fuser = None if whole else cw.WindowFuser(x_in.float(), s.context, dim=2)
            by_len: dict[int, list[list[int]]] = {}
            for win in windows:
                by_len.setdefault(len(win), []).append(win)
            for group in by_len.values():
                for i in range(0, len(group), window_batch):
                    if interrupt is not None:
                        interrupt()
                    part = group[i : i + window_batch]
                    idx = torch.tensor(part, device=x_in.device)  # [N, L]
                    xw = x_in[0][:, idx].permute(1, 0, 2, 3, 4).to(self.dtype)  # [N,C,L,h,w]
                    hw = None if hints is None else hints[idx]  # [N,L,3,H,W]
                    e_u, e_c = self._eps_batch(xw, t, cond, uncond, hw, s.controlnet_strength)
                    guided = e_u + s.guidance * (e_c - e_u)
                    if fuser is None:
                        return guided
                    for k, win in enumerate(part):
                        fuser.add(win, guided[k : k + 1])
            return fuser.result()

        model = sm.eps_denoiser(schedule, eps_fn)
        noise_gen = torch.Generator(device="cpu").manual_seed(seed)
        x = sampler(model, x.float(), sigmas.to(x.device), callback=callback, generator=noise_gen)
        out = self.decode_latents(x, s.vae_batch)
        return self._finish(out, total, s, seed)

    @staticmethod
    def _finish(generated: torch.Tensor, total: int, s: V2VSettings, seed: int) -> V2VResult:
        restored = restore_frames(generated, total, s.select_every_nth_frame, s.restore)
        fps = s.fps
        if fps is not None and (s.restore == "none" and s.select_every_nth_frame > 1):
            fps = fps / s.select_every_nth_frame
        return V2VResult(frames=restored, seed=seed, fps=fps, generated_frames=generated.shape[0])
