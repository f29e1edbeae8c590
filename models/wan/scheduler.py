"""Flow-matching Euler sampling with shift, as both Wan2.1 families use it.

The model predicts a flow ``v`` (noise - x0); one Euler step moves the latents
from ``sigma_k`` to ``sigma_{k+1}``: ``x + (sigma_{k+1} - sigma_k) * v``. The two
families differ only in how the sigma grid is laid out:

* One-to-All (diffusers ``FlowMatchEulerDiscreteScheduler(shift=7)``): the grid
  runs from the largest to the smallest *shifted* training sigma, and is shifted
  a second time (``one_to_all_sigmas``).
* UniAnimate-DiT (DiffSynth ``FlowMatchScheduler(shift=5, extra_one_step=True)``):
  ``linspace(1, 0, N+1)[:-1]`` shifted once (``unianimate_sigmas``).

Both end with sigma 0. Per-token timesteps (One-to-All's token replace gives the
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

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000
ONE_TO_ALL_SHIFT = 7.0
UNIANIMATE_SHIFT = 5.0


def _shift(sigmas, shift: float):
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def one_to_all_sigmas(steps: int, shift: float = ONE_TO_ALL_SHIFT, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """``steps + 1`` sigmas (float32, last 0) of diffusers' FlowMatchEuler with a static shift.

    The training grid 1..T (float32) is divided by T and shifted; its first and
    last values bound a float64 linspace over ``steps`` points that is shifted
    again, then cast to float32. Arithmetic order follows the scheduler so the
    values match it bit for bit.
    """
    _check_steps(steps)
    train = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy()
    train_sigmas = _shift(torch.from_numpy(train).to(torch.float32) / num_train_timesteps, shift)
    sigma_max = train_sigmas[0].item()
    sigma_min = train_sigmas[-1].item()
    grid = np.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, steps)
    sigmas = _shift(grid / num_train_timesteps, shift)
    sigmas = torch.from_numpy(sigmas).to(torch.float32)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float32)])


def unianimate_sigmas(steps: int, shift: float = UNIANIMATE_SHIFT, denoising_strength: float = 1.0) -> torch.Tensor:
    """``steps + 1`` sigmas (float32, last 0) of DiffSynth's FlowMatchScheduler (extra_one_step, sigma_min 0)."""
    _check_steps(steps)
    if not 0.0 < denoising_strength <= 1.0:
        raise ValueError(f"denoising_strength must be in (0, 1], got {denoising_strength}.")
    start = 0.0 + (1.0 - 0.0) * denoising_strength
    sigmas = torch.linspace(start, 0.0, steps + 1)[:-1]
    sigmas = _shift(sigmas, shift)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float32)])


def _check_steps(steps: int) -> None:
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

    @classmethod
    def one_to_all(cls, steps: int, shift: float = ONE_TO_ALL_SHIFT) -> "FlowMatchEuler":
        return cls(one_to_all_sigmas(steps, shift))

    @classmethod
    def unianimate(cls, steps: int, shift: float = UNIANIMATE_SHIFT, denoising_strength: float = 1.0) -> "FlowMatchEuler":
        return cls(unianimate_sigmas(steps, shift, denoising_strength))

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
        if frozen_frames is not None:
            keep = frame_mask(sample.shape[2], frozen_frames, device=sample.device)
            if keep.any():
                out[:, :, keep] = sample[:, :, keep].to(out.dtype)
        return out

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
        """Flow-matching forward process at step ``index``: ``(1 - s) x0 + s * noise``."""
        s = self.sigmas[self._index(index)].to(clean.device)
        return ((1 - s) * clean.float() + s * noise.float()).to(clean.dtype)

    def _index(self, index: int) -> int:
        if not 0 <= int(index) < self.num_steps:
            raise IndexError(f"step index {index} outside 0..{self.num_steps - 1}.")
        return int(index)


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
