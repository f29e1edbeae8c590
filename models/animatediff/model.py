"""AnimateDiff on the runtime life cycle (models/runtime/lifecycle.py).

Why a wrapper and not the pipeline itself: ``AnimateDiffV2V`` is the sampler over already-built
models; this object adds what every family's model object has: ``prepare`` places the UNet,
text encoder and ControlNet in the loader's precision and the VAE in its own (the placement
step), ``sample`` runs a video through the pipeline into the runtime's ``SampleResult``,
``release`` gives the memory back, ``progress_total`` / ``transformer_calls`` count steps and
UNet calls; the attention step puts the runtime's backend (SDPA, flash-attn, SageAttention) on
the UNet's and ControlNet's attention. Block swap does not apply to the SD1.5 UNet.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..runtime.attention import install_diffusers_attention
from ..runtime.lifecycle import RuntimeModel, RuntimeOptions, SampleResult
from . import context_windows as cw
from .pipeline import AnimateDiffV2V, V2VSettings

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def dtypes_for(precision: str, device) -> tuple[torch.dtype, torch.dtype]:
    """(UNet / text encoder / ControlNet dtype, VAE dtype): ``auto`` = fp16 (+ bf16 VAE where
    supported, else fp32) on CUDA, fp32 elsewhere."""
    device = torch.device(device)
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return torch.float32, torch.float32
    if precision == "fp16" or precision == "auto":
        vae = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        return torch.float16, vae
    return torch.bfloat16, torch.bfloat16


@dataclass
class AnimateDiffModel(RuntimeModel):
    """The loader node's output: the pipeline, where it runs, and the runtime options."""

    pipeline: AnimateDiffV2V
    device: torch.device | str = "cpu"
    offload_device: torch.device | str = "cpu"
    options: RuntimeOptions = field(default_factory=RuntimeOptions)

    @property
    def transformer(self) -> torch.nn.Module:
        """The denoiser (the animated UNet): what compile and step caching act on."""
        return self.pipeline.unet

    @property
    def precision(self) -> str:
        return self.pipeline.precision

    def install_attention(self, backend: str) -> None:
        """The SD1.5 UNet's and ControlNet's spatial attention on the runtime backend (the motion
        module's temporal attention spans at most 32 frames and stays on SDPA)."""
        resolved = None
        for module in (self.pipeline.unet, self.pipeline.controlnet):
            if module is not None:
                resolved = install_diffusers_attention(module, resolved or backend)

    def place(self, device: torch.device) -> None:
        dtype, vae_dtype = dtypes_for(self.pipeline.precision, device)
        self.pipeline.to(device, dtype, vae_dtype)

    def offload(self) -> None:
        self.pipeline.to(self.offload_device)

    def progress_total(self, settings: V2VSettings, num_frames: int | None = None) -> int:
        """Progress units of a run (VAE encode batches + steps + decode batches); steps alone when
        the frame count is not known yet."""
        if num_frames is None:
            return int(settings.steps)
        return self.pipeline.progress_total(num_frames, settings)

    def transformer_calls(self, num_frames: int, settings: V2VSettings) -> int:
        """UNet window evaluations of a run with a one-evaluation-per-step sampler (euler, dpmpp_2m,
        ...): steps x context windows (cond and uncond run batched in each; cfg 1 runs cond only)."""
        picked = len(range(0, num_frames, settings.select_every_nth_frame))
        if settings.max_frames:
            picked = min(picked, settings.max_frames)
        return int(settings.steps) * len(cw.get_windows(picked, self.pipeline._context_for(picked, settings), 0))

    def sample(self, frames: torch.Tensor, settings: V2VSettings, pose_frames=None, callback=None,
               interrupt=None, sampling=None) -> SampleResult:
        """The pipeline between ``prepare`` and ``release``, as the runtime's one result type.
        ``sampling``: ComfyUI's samplers when hosted (nodes/host.py), the built-in set when None."""
        with self.running():
            result = self.pipeline(frames, settings, pose_frames=pose_frames, callback=callback, interrupt=interrupt,
                                   sampling=sampling)
        return SampleResult(result.frames, None, result.seed, result.fps,
                            info={"generated_frames": result.generated_frames, "size": result.size,
                                  "unet_calls": result.unet_calls})


__all__ = ["AnimateDiffModel", "PRECISIONS", "dtypes_for"]
