"""Flow-matching Euler sampling with shift, as every Wan2.1 family uses it.

The model predicts a flow ``v`` (noise - x0); one Euler step moves the latents
from ``sigma_k`` to ``sigma_{k+1}``: ``x + (sigma_{k+1} - sigma_k) * v``. The
families differ only in how the sigma grid is laid out, and each keeps its grid
and shift itself (models/one_to_all/schedule.py, models/unianimate/schedule.py);
the step-distilled grid and sampler of lightx2v-style LoRAs live here, since they
serve every Wan family.

Grids end with sigma 0. Per-token timesteps (One-to-All's token replace gives the
re-encoded overlap frames timestep 0 and never steps them) are expressed as a
``[B, tokens]`` tensor, the form diffusers' ``WanTransformer3DModel`` accepts.
Mind its cost at full size: that path embeds every token's timestep and builds a
float32 ``[B, tokens, 6, dim]`` modulation in every block (about 4 GiB per block
at 14B, 480x832, 81 frames). A model that needs only a few distinct timesteps
(One-to-All: t and 0) is better served by ``frame_timesteps`` and one modulation
set per distinct value, selected per token.
Noise is drawn from a CPU ``torch.Generator`` so a seed gives the same latents on
every machine, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigmas(sigmas, shift: float):
    return shift * sigmas / (1 + (shift - 1) * sigmas)


# Step-distillation LoRAs (lightx2v's Wan2.1 "StepDistill-CfgDistill", 4 steps, no CFG) were
# trained on the timesteps [1000, 750, 500, 250] of the shift-5 grid, sampled by predicting x0
# and re-noising to the next sigma (lightx2v's WanStepDistillScheduler; kijai's wrapper calls the
# same grid "flowmatch_distill"). 4..8 steps spread the same way.
DISTILLED_SHIFT = 5.0
DISTILLED_STEPS = (4, 8)  # fewest / most steps the distilled preset accepts
# Sampler presets of the Wan families: "official" = the family's own grid, sampler and guidance;
# "distilled" = the grid and sampler above, guidance off (one transformer call per step).
PRESETS = ("official", "distilled")


def check_preset(preset: str, steps: int) -> None:
    """A clear error for an unknown preset or a distilled run outside 4..8 steps."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}.")
    lo, hi = DISTILLED_STEPS
    if preset == "distilled" and not lo <= int(steps) <= hi:
        raise ValueError(f"the distilled preset (step-distillation LoRA) takes {lo}..{hi} steps, got {steps}; "
                         f"set steps to {lo}.")


def distilled_sigmas(steps: int = 4, shift: float = DISTILLED_SHIFT,
                     num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """``steps + 1`` sigmas (float32, last 0): entries ``T * k / steps`` of the shifted training grid
    ``linspace(1, 0, T + 1)[:-1]`` (for 4 steps: timesteps 1000, 750, 500, 250, as lightx2v)."""
    check_steps(steps)
    grid = shift_sigmas(torch.linspace(1.0, 0.0, num_train_timesteps + 1)[:-1], shift)
    index = [round(num_train_timesteps * k / steps) for k in range(steps)]
    return torch.cat([grid[index].to(torch.float32), torch.zeros(1, dtype=torch.float32)])


def check_steps(steps: int) -> None:
    if int(steps) != steps or steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {steps!r}.")


@dataclass
class FlowMatchEuler:
    """A sigma grid and the Euler update over it.

    ``sigmas`` has ``steps + 1`` entries ending in 0; ``timesteps[k] = T * sigmas[k]``.
    """

    sigmas: torch.Tensor
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS

    def __post_init__(self):
        self.sigmas = torch.as_tensor(self.sigmas, dtype=torch.float32).flatten()
        if self.sigmas.numel() < 2 or float(self.sigmas[-1]) != 0.0:
            raise ValueError("sigmas must hold at least two values and end with 0.")
        self.timesteps = self.sigmas[:-1] * self.num_train_timesteps

    @property
    def num_steps(self) -> int:
        return self.sigmas.numel() - 1

    def timestep(self, index: int, batch: int = 1, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """The model's timestep for step ``index`` as a ``[batch]`` tensor."""
        t = self.timesteps[self._index(index)]
        return t.expand(batch).to(device=device, dtype=dtype)

    def step(
        self,
        sample: torch.Tensor,
        velocity: torch.Tensor,
        index: int,
        frozen_frames: Sequence[int] | torch.Tensor | None = None,
        out_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """One Euler step from ``sigmas[index]`` to ``sigmas[index + 1]``.

        The sample is promoted to float32 and ``dt * v`` is added (``v`` keeps its
        dtype in the product, like diffusers), then the result is cast to
        ``out_dtype`` (default: the velocity's dtype). Latent frames listed in
        ``frozen_frames`` (dim 2 of ``[B, C, F, H, W]``) are returned unchanged:
        clean frames that must not be denoised.
        """
        if sample.shape != velocity.shape:
            raise ValueError(f"sample {tuple(sample.shape)} and velocity {tuple(velocity.shape)} differ in shape.")
        i = self._index(index)
        dt = (self.sigmas[i + 1] - self.sigmas[i]).to(velocity.device)
        out = sample.to(torch.float32) + dt * velocity
        out = out.to(out_dtype or velocity.dtype)
        return _keep_frozen(out, sample, frozen_frames)

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
        """Flow-matching forward process at step ``index``: ``(1 - s) x0 + s * noise``."""
        s = self.sigmas[self._index(index)].to(clean.device)
        return ((1 - s) * clean.float() + s * noise.float()).to(clean.dtype)

    def _index(self, index: int) -> int:
        if not 0 <= int(index) < self.num_steps:
            raise IndexError(f"step index {index} outside 0..{self.num_steps - 1}.")
        return int(index)


@dataclass
class FlowMatchDistilled(FlowMatchEuler):
    """The step-distilled sampler: ``x0 = x - sigma_k * v``, then (unless last) fresh noise to the
    next sigma, ``(1 - sigma_{k+1}) x0 + sigma_{k+1} * noise`` (lightx2v's Wan2.1 sampler). The
    noise comes from ``generator`` (a seeded CPU generator: the same seed gives the same video).
    ``renoise=False`` keeps the predicted noise instead, ``x0 + sigma_{k+1} * v`` (= an Euler step
    on the distilled grid, the Wan2.2-Lightning sampler): what overlapping windows need, since
    windows averaged after independent fresh noise would lose noise variance."""

    generator: torch.Generator | None = None
    renoise: bool = True

    @classmethod
    def distilled(cls, steps: int = 4, seed: int = 0, shift: float = DISTILLED_SHIFT,
                  renoise: bool = True) -> "FlowMatchDistilled":
        return cls(distilled_sigmas(steps, shift), generator=make_generator(seed), renoise=renoise)

    def step(self, sample, velocity, index, frozen_frames=None, out_dtype=None):
        if sample.shape != velocity.shape:
            raise ValueError(f"sample {tuple(sample.shape)} and velocity {tuple(velocity.shape)} differ in shape.")
        i = self._index(index)
        if not self.renoise:
            return super().step(sample, velocity, index, frozen_frames, out_dtype)
        out = sample.to(torch.float32) - self.sigmas[i].to(velocity.device) * velocity.float()
        nxt = float(self.sigmas[i + 1])
        if nxt > 0:
            noise = torch.randn(out.shape, generator=self.generator, dtype=torch.float32).to(out.device)
            out = (1 - nxt) * out + nxt * noise
        out = out.to(out_dtype or velocity.dtype)
        return _keep_frozen(out, sample, frozen_frames)


def _keep_frozen(out: torch.Tensor, sample: torch.Tensor, frozen_frames) -> torch.Tensor:
    """``out`` with the latent frames listed in ``frozen_frames`` put back from ``sample``."""
    if frozen_frames is not None:
        keep = frame_mask(sample.shape[2], frozen_frames, device=sample.device)
        if keep.any():
            out[:, :, keep] = sample[:, :, keep].to(out.dtype)
    return out


def frame_mask(num_frames: int, frames: Sequence[int] | torch.Tensor, device=None) -> torch.Tensor:
    """Boolean ``[num_frames]`` mask from frame indices or a boolean tensor."""
    if isinstance(frames, torch.Tensor) and frames.dtype == torch.bool:
        if frames.numel() != num_frames:
            raise ValueError(f"frame mask has {frames.numel()} entries, expected {num_frames}.")
        return frames.to(device)
    mask = torch.zeros(num_frames, dtype=torch.bool, device=device)
    idx = torch.as_tensor(list(frames) if not isinstance(frames, torch.Tensor) else frames, dtype=torch.long)
    if idx.numel():
        if int(idx.min()) < -num_frames or int(idx.max()) >= num_frames:
            raise IndexError(f"frame index out of range for {num_frames} latent frames: {idx.tolist()}.")
        mask[idx.to(mask.device)] = True
    return mask


def frame_timesteps(
    timestep: float | torch.Tensor,
    num_frames: int,
    clean_frames: Sequence[int] | torch.Tensor = (),
    clean_timestep: float = 0.0,
) -> torch.Tensor:
    """``[num_frames]`` float32 timesteps: ``timestep`` everywhere, ``clean_timestep`` on clean frames."""
    out = torch.full((num_frames,), float(torch.as_tensor(timestep, dtype=torch.float32)), dtype=torch.float32)
    out[frame_mask(num_frames, clean_frames)] = clean_timestep
    return out


def token_timesteps(per_frame: torch.Tensor, tokens_per_frame: int, batch: int = 1) -> torch.Tensor:
    """Expand per-latent-frame timesteps to one timestep per token: ``[batch, F * tokens_per_frame]``.

    Token order is frame-major (frame, row, column), the order of Wan's patchified
    sequence, so this is what ``WanTransformer3DModel(timestep=...)`` accepts as a
    2-D timestep.
    """
    per_frame = torch.as_tensor(per_frame, dtype=torch.float32).flatten()
    if tokens_per_frame < 1:
        raise ValueError("tokens_per_frame must be positive.")
    tokens = per_frame.repeat_interleave(int(tokens_per_frame))
    return tokens.unsqueeze(0).expand(batch, -1).contiguous()


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator: CPU draws are identical on every machine and device."""
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}.")
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def seeded_noise(
    shape: Sequence[int],
    seed: int | torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    draw_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise drawn on the CPU with a seeded generator, then moved and cast.

    ``draw_dtype`` is the dtype the numbers are drawn in (One-to-All draws in the
    VAE dtype, UniAnimate in float32); drawing on the CPU makes the result
    independent of the compute device.
    """
    g = seed if isinstance(seed, torch.Generator) else make_generator(seed)
    noise = torch.randn(tuple(int(s) for s in shape), generator=g, dtype=draw_dtype, device="cpu")
    return noise.to(device=device, dtype=dtype)
