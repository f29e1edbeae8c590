"""Noise schedules and k-diffusion-style samplers for SD1.5 + AnimateDiff.

Why: AnimateDiff motion modules were trained with a plain linear beta schedule
(0.00085..0.012, 1000 steps), not SD1.5's scaled-linear one, and ComfyUI users
pick samplers/schedulers by ComfyUI's names. This module follows ComfyUI's
discrete-sigma model sampling, its ``normal``/``karras``/``simple`` schedulers, its
img2img ``denoise`` semantics (``steps`` are always run, over the last ``steps+1``
sigmas of ``int(steps/denoise)``) and the k-diffusion update rules.

A sampler is ``fn(model, x, sigmas, callback=None, seed=None) -> x`` where
``model(x, sigma) -> denoised`` and ``callback(i)`` runs after step ``i`` (an index, as
k-diffusion's callbacks get it). Latents are in ComfyUI's video layout ``[F, C, h, w]`` and
the ancestral/LCM noise is drawn as ComfyUI's ``default_noise_sampler`` draws it (a generator
on ``x``'s device seeded with the job's seed, ``randn(x.size())`` per step), so a seed gives
ComfyUI's noise. Inside ComfyUI every sampler and scheduler it offers runs through
``nodes/host.py`` instead; these are the built-in set for runs without ComfyUI.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

# ADE's beta-schedule names (utils_model.BetaSchedules); "autoselect" resolves per motion module.
BETA_SCHEDULES = (
    "autoselect",
    "sqrt_linear (AnimateDiff)",
    "linear (AnimateDiff-SDXL)",
    "linear (HotshotXL/default)",
    "lcm",
    "lcm >> sqrt_linear",
)
SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "lcm")
SCHEDULERS = ("normal", "karras", "simple")


def resolve_beta_schedule(name: str, motion_format: str | None = None) -> str:
    """ADE's autoselect: AnimateLCM -> 'lcm', every other SD1.5 module -> 'sqrt_linear (AnimateDiff)'."""
    if name != "autoselect":
        if name not in BETA_SCHEDULES:
            raise ValueError(f"Unknown beta_schedule {name!r}; use one of {', '.join(BETA_SCHEDULES)}.")
        return name
    if motion_format and "lcm" in motion_format.lower():
        return "lcm"
    return "sqrt_linear (AnimateDiff)"


def make_betas(kind: str, timesteps: int = 1000, start: float = 0.00085, end: float = 0.012) -> torch.Tensor:
    """LDM naming: 'sqrt_linear' is linear in beta, 'linear' is linear in sqrt(beta) (= scaled_linear)."""
    if kind == "sqrt_linear":
        return torch.linspace(start, end, timesteps, dtype=torch.float64)
    if kind == "linear":
        return torch.linspace(start**0.5, end**0.5, timesteps, dtype=torch.float64) ** 2
    raise ValueError(f"Unknown beta kind {kind!r}")


class DiscreteSchedule:
    """Discrete sigmas of a DDPM beta schedule (ComfyUI ``ModelSamplingDiscrete``).

    ``distilled_steps`` keeps every (T/n)-th sigma as LCM does (``ModelSamplingDiscreteDistilled``)
    and ``lcm`` switches the denoiser to LCM's consistency boundary condition.
    """

    def __init__(self, beta_kind: str = "sqrt_linear", linear_end: float = 0.012, distilled_steps: int | None = None, lcm: bool = False):
        betas = make_betas(beta_kind, end=linear_end)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float()
        self.num_timesteps = len(sigmas)
        self.skip = 1
        self.offset = 0
        if distilled_steps:
            self.skip = self.num_timesteps // distilled_steps
            self.offset = self.skip - 1
            sigmas = torch.stack([sigmas[self.num_timesteps - 1 - x * self.skip] for x in range(distilled_steps)]).flip(0)
        self.sigmas = sigmas.float()
        self.log_sigmas = self.sigmas.log()
        self.lcm = lcm

    @classmethod
    def from_name(cls, name: str) -> "DiscreteSchedule":
        name = resolve_beta_schedule(name)
        if name == "sqrt_linear (AnimateDiff)":
            return cls("sqrt_linear")
        if name == "linear (HotshotXL/default)":
            return cls("linear")
        if name == "linear (AnimateDiff-SDXL)":
            return cls("linear", linear_end=0.020)
        if name == "lcm":
            return cls("linear", distilled_steps=50, lcm=True)
        if name == "lcm >> sqrt_linear":
            return cls("sqrt_linear", distilled_steps=50, lcm=True)
        raise ValueError(f"Unknown beta_schedule {name!r}")

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Nearest training timestep (in log sigma) of each sigma."""
        dists = sigma.float().log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        idx = dists.abs().argmin(dim=0).view(sigma.shape)
        return (idx * self.skip + self.offset).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Log-linear interpolation of sigma at a (fractional) timestep."""
        t = torch.clamp((timestep.float() - self.offset) / self.skip, min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def denoised(self, x: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """eps-prediction -> x0 (LCM adds its skip/out mixing)."""
        x0 = x - eps * sigma
        if not self.lcm:
            return x0
        t = self.timestep(sigma.reshape(1)).float() * 10.0
        c_skip = 0.25 / (t**2 + 0.25)
        c_out = t / (t**2 + 0.25) ** 0.5
        return c_out * x0 + c_skip * x

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor, max_denoise: bool = False) -> torch.Tensor:
        scale = torch.sqrt(1.0 + sigma**2) if max_denoise else sigma
        return noise * scale + latent

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return latent  # eps prediction: nothing to undo (ComfyUI's EPS)

    def percent_to_sigma(self, percent: float) -> float:
        """ComfyUI's ``ModelSamplingDiscrete.percent_to_sigma`` (ControlNet start/end percent)."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * 999.0)))


def _normal(s: DiscreteSchedule, steps: int) -> torch.Tensor:
    start, end = s.timestep(s.sigma_max), s.timestep(s.sigma_min)
    append_zero = True
    if math.isclose(float(s.sigma(end)), 0, abs_tol=1e-5):
        steps += 1
        append_zero = False
    ts = torch.linspace(float(start), float(end), steps)
    sigs = [float(s.sigma(t)) for t in ts]
    return torch.FloatTensor(sigs + ([0.0] if append_zero else []))


def _karras(s: DiscreteSchedule, steps: int, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, steps)
    lo, hi = float(s.sigma_min) ** (1 / rho), float(s.sigma_max) ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sig, sig.new_zeros(1)])


def _simple(s: DiscreteSchedule, steps: int) -> torch.Tensor:
    stride = len(s.sigmas) / steps
    return torch.FloatTensor([float(s.sigmas[-(1 + int(x * stride))]) for x in range(steps)] + [0.0])


# ComfyUI's KSampler runs these on one more sigma and drops the next-to-last one.
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset(("dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"))


def get_sigmas(schedule: DiscreteSchedule, scheduler: str, steps: int, denoise: float = 1.0,
               calculate: Callable | None = None, sampler: str = "") -> torch.Tensor:
    """Sigmas for ``steps`` steps; with denoise < 1 the tail of a longer schedule (ComfyUI KSampler).

    ``calculate(schedule, scheduler, n)`` gives the full n-step schedule (ComfyUI's
    ``calculate_sigmas`` when hosted; the built-in normal/karras/simple otherwise).
    """
    fns = {"normal": _normal, "karras": _karras, "simple": _simple}
    if calculate is None:
        if scheduler not in fns:
            raise ValueError(f"Unknown scheduler {scheduler!r}; use one of {', '.join(SCHEDULERS)}.")
        calculate = lambda sched, name, n: fns[name](sched, n)  # noqa: E731
    discard = sampler in DISCARD_PENULTIMATE_SIGMA_SAMPLERS

    def full(n: int) -> torch.Tensor:
        sig = calculate(schedule, scheduler, n + 1 if discard else n)
        return torch.cat([sig[:-2], sig[-1:]]) if discard else sig
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    if not 0.0 <= denoise <= 1.0:
        raise ValueError(f"denoise must be in 0..1, got {denoise}.")
    if denoise > 0.9999:
        return full(steps)
    if denoise <= 0.0:
        return torch.FloatTensor([])
    return full(int(steps / denoise))[-(steps + 1) :]


def is_max_denoise(schedule: DiscreteSchedule, sigmas: torch.Tensor) -> bool:
    max_sigma, sigma = float(schedule.sigma_max), float(sigmas[0])
    return math.isclose(max_sigma, sigma, rel_tol=1e-5) or sigma > max_sigma


def noise_sampler(x: torch.Tensor, seed: int | None):
    """ComfyUI's ``default_noise_sampler``: one generator on x's device, ``randn(x.size())`` per call."""
    gen = None
    if seed is not None:
        gen = torch.Generator(device=x.device)
        gen.manual_seed(int(seed))
    return lambda: torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=gen)


def sample_euler(model, x, sigmas, callback=None, seed=None):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
        if callback is not None:
            callback(i)
    return x


def ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0):
    """(sigma_down, sigma_up) so that sigma_down^2 + sigma_up^2 = sigma_to^2."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    down = (sigma_to**2 - up**2) ** 0.5
    return down, up


def sample_euler_ancestral(model, x, sigmas, callback=None, seed=None, eta: float = 1.0):
    noise = noise_sampler(x, seed)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if float(down) == 0.0:
            x = denoised
        else:
            d = (x - denoised) / sigmas[i]
            x = x + d * (down - sigmas[i]) + noise() * up
        if callback is not None:
            callback(i)
    return x


def sample_dpmpp_2m(model, x, sigmas, callback=None, seed=None):
    """DPM-Solver++(2M): second-order multistep in log-sigma time."""
    old = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        ratio = sigmas[i + 1] / sigmas[i]
        if old is None or float(sigmas[i + 1]) == 0.0:
            x = ratio * x - torch.expm1(-h) * denoised
        else:
            r = (t - (-sigmas[i - 1].log())) / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = ratio * x - torch.expm1(-h) * d
        old = denoised
        if callback is not None:
            callback(i)
    return x


def make_sample_lcm(schedule: DiscreteSchedule):
    def sample_lcm(model, x, sigmas, callback=None, seed=None):
        """Consistency sampling: jump to x0, re-noise to the next sigma."""
        noise = noise_sampler(x, seed)
        for i in range(len(sigmas) - 1):
            x = model(x, sigmas[i])
            if float(sigmas[i + 1]) > 0:
                x = schedule.noise_scaling(sigmas[i + 1], noise(), x, max_denoise=False)
            if callback is not None:
                callback(i)
        return x

    return sample_lcm


def get_sampler(name: str, schedule: DiscreteSchedule) -> Callable:
    if name == "euler":
        return sample_euler
    if name == "euler_ancestral":
        return sample_euler_ancestral
    if name == "dpmpp_2m":
        return sample_dpmpp_2m
    if name == "lcm":
        return make_sample_lcm(schedule)
    raise ValueError(f"Unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}.")
