"""The Wan families' side of the runtime life cycle (models/runtime/lifecycle.py).

Every Wan-based family's model object derives from :class:`WanModel`: its attention step puts
models/wan/attention.py's processor (on the runtime's backend) on the transformer's stock Wan
attention layers, and its release drops the processors' RoPE cache. ``prepare_transformer`` /
``release_transformer`` run a bare Wan transformer (benchmarks, parity checks) through the same
steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..runtime.lifecycle import RuntimeModel, RuntimeOptions
from .attention import install_attention
from .attention import release as release_attention_cache


class WanModel(RuntimeModel):
    """Wan attention hooks; families add their fields, ``sample`` and ``progress_total``."""

    def install_attention(self, backend: str) -> None:
        from diffusers.models.transformers.transformer_wan import WanAttention

        if any(isinstance(m, WanAttention) for m in self.transformer.modules()):  # test doubles have none
            install_attention(self.transformer, backend)

    def release_attention(self) -> None:
        release_attention_cache(self.transformer)


@dataclass
class WanTransformerHandle(WanModel):
    """A bare Wan transformer as a runtime model (no sampler of its own)."""

    transformer: nn.Module
    options: RuntimeOptions = field(default_factory=lambda: RuntimeOptions(offload_after_run=False))
    device: torch.device | str = "cpu"
    offload_device: torch.device | str = "cpu"


def prepare_transformer(model: nn.Module, device: torch.device | str, attention_backend: str = "auto",
                        blocks_to_swap: int = 0, prefetch: int = 1) -> nn.Module:
    """Attention backend, then placement (``blocks_to_swap`` blocks streamed from CPU memory)."""
    options = RuntimeOptions(attention=attention_backend, blocks_to_swap=int(blocks_to_swap), prefetch=prefetch,
                             offload_after_run=False)
    handle = WanTransformerHandle(model, options, device)
    handle.prepare()
    return model


def release_transformer(model: nn.Module) -> None:
    """After a run or an interrupt: drop prefetched blocks and attention caches, free cached memory."""
    WanTransformerHandle(model).release()
