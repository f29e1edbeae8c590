"""One-to-All's sigma grid: diffusers' ``FlowMatchEulerDiscreteScheduler(shift=7)`` as the official
pipeline configures it.

The grid runs from the largest to the smallest *shifted* training sigma and is shifted a second
time; sampling is the flow-matching Euler update of models/wan/scheduler.py.
"""
from __future__ import annotations

import numpy as np
import torch

from ..wan.scheduler import NUM_TRAIN_TIMESTEPS, FlowMatchEuler, check_steps, shift_sigmas

ONE_TO_ALL_SHIFT = 7.0


def one_to_all_sigmas(steps: int, shift: float = ONE_TO_ALL_SHIFT, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """``steps + 1`` sigmas (float32, last 0) of diffusers' FlowMatchEuler with a static shift.

    The training grid 1..T (float32) is divided by T and shifted; its first and
    last values bound a float64 linspace over ``steps`` points that is shifted
    again, then cast to float32. Arithmetic order follows the scheduler so the
    values match it bit for bit.
    """
    check_steps(steps)
    train = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy()
    train_sigmas = shift_sigmas(torch.from_numpy(train).to(torch.float32) / num_train_timesteps, shift)
    sigma_max = train_sigmas[0].item()
    sigma_min = train_sigmas[-1].item()
    grid = np.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, steps)
    sigmas = shift_sigmas(grid / num_train_timesteps, shift)
    sigmas = torch.from_numpy(sigmas).to(torch.float32)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float32)])


def one_to_all_scheduler(steps: int, shift: float = ONE_TO_ALL_SHIFT) -> FlowMatchEuler:
    return FlowMatchEuler(one_to_all_sigmas(steps, shift))
