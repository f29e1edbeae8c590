"""UniAnimate-DiT's sigma grid: DiffSynth's ``FlowMatchScheduler(shift=5, extra_one_step=True)``.

``linspace(1, 0, N+1)[:-1]`` shifted once; sampling is the flow-matching Euler update of
models/wan/scheduler.py.
"""
from __future__ import annotations

import torch

from ..wan.scheduler import FlowMatchEuler, check_steps, shift_sigmas

UNIANIMATE_SHIFT = 5.0


def unianimate_sigmas(steps: int, shift: float = UNIANIMATE_SHIFT, denoising_strength: float = 1.0) -> torch.Tensor:
    """``steps + 1`` sigmas (float32, last 0) of DiffSynth's FlowMatchScheduler (extra_one_step, sigma_min 0)."""
    check_steps(steps)
    if not 0.0 < denoising_strength <= 1.0:
        raise ValueError(f"denoising_strength must be in (0, 1], got {denoising_strength}.")
    start = 0.0 + (1.0 - 0.0) * denoising_strength
    sigmas = torch.linspace(start, 0.0, steps + 1)[:-1]
    sigmas = shift_sigmas(sigmas, shift)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float32)])


def unianimate_scheduler(steps: int, shift: float = UNIANIMATE_SHIFT, denoising_strength: float = 1.0) -> FlowMatchEuler:
    return FlowMatchEuler(unianimate_sigmas(steps, shift, denoising_strength))
