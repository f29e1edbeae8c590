"""The one life cycle every family's model object follows: load -> prepare -> sample -> release.

Why: placement, offload, block swap, the attention backend, compile and step caching must happen
at the same point for every family, or each family grows its own variant of them. A loader reads
the weights (LoRAs merged or attached, weight storage chosen: both change weights, so they are
load-time) and returns a :class:`RuntimeModel` holding its options. Nothing touches the
accelerator until ``prepare(device)``, which runs the registered prepare steps in their order:

====  ===========  =============================================================================
10    attention    ``model.install_attention(backend)``: the family puts its processors on the
                   runtime's backend (models/runtime/attention.py)
20    placement    ``model.place(device)``: block swap of ``model.transformer.blocks``, else the
                   whole transformer moves; ``model.companions()`` (pose encoders, ...) move along
30    compile      free slot: regional torch.compile (toolkit, ``options.compile``)
40    cache        free slot: step caching (toolkit, ``options.cache`` / ``cache_threshold``)
====  ===========  =============================================================================

``release()`` runs the steps' release functions in reverse order (drop swap prefetches, RoPE and
step caches), then moves the model to ``offload_device`` when ``options.offload_after_run``, then
frees cached accelerator memory. ``sample(...)`` gives a :class:`SampleResult`, the one result
type; ``progress_total(...)`` says how many ``callback(1)`` calls a run makes and
``transformer_calls(...)`` how many transformer forwards.

A new step (a toolkit module) registers itself with :func:`prepare_step` and is imported by
``_STEP_MODULES`` below, so no family changes when the toolkit grows.
"""
from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from .placement import apply_block_swap, empty_cache

ATTENTION, PLACEMENT, COMPILE, CACHE = 10, 20, 30, 40


@dataclass
class RuntimeOptions:
    """What the loader nodes let users choose about running (not about the weights themselves)."""

    attention: str = "auto"          # models/runtime/attention.py BACKENDS
    blocks_to_swap: int = 0          # transformer blocks streamed from CPU memory
    prefetch: int = 1                # swapped blocks copied ahead of the running one
    offload_after_run: bool = True   # give the VRAM back after each run
    compile: str = "off"             # regional torch.compile mode ("off" = eager)
    cache: str = "off"               # step-caching method ("off" = every step computed)
    cache_threshold: float = 0.0
    extra: dict = field(default_factory=dict)  # options of steps this module does not know


@dataclass
class SampleResult:
    """What every family's ``sample`` returns: ComfyUI IMAGE frames plus what else the run made."""

    frames: torch.Tensor            # [T, H, W, 3] float32 in [0, 1]
    latent: dict | None = None      # a ComfyUI LATENT ({"samples": ...})
    seed: int | None = None
    fps: float | None = None
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    name: str
    order: int
    prepare: Callable[["RuntimeModel", torch.device], None]
    release: Callable[["RuntimeModel"], None] | None = None


_STEPS: dict[str, Step] = {}
# Modules that register steps when imported (the toolkit adds its compile / cache modules here).
_STEP_MODULES: tuple[str, ...] = ("compile", "step_cache")


def prepare_step(name: str, order: int, release: Callable[["RuntimeModel"], None] | None = None):
    """Decorator: run ``fn(model, device)`` in every ``prepare`` at ``order`` (see module table)."""
    def register(fn):
        _STEPS[name] = Step(name, order, fn, release)
        return fn
    return register


def steps() -> list[Step]:
    """The registered steps in the order ``prepare`` runs them."""
    for module in _STEP_MODULES:
        importlib.import_module(f"{__package__}.{module}")
    return sorted(_STEPS.values(), key=lambda s: s.order)


class RuntimeModel:
    """Base of every family's model object (a mixin: families keep their own dataclass fields).

    A subclass has ``transformer`` (the denoiser: the module that is block-swapped, compiled and
    cached), ``options`` (:class:`RuntimeOptions`), ``device`` and ``offload_device``; it
    overrides ``install_attention``, ``companions``, ``sample``, ``progress_total`` and
    ``transformer_calls``."""

    transformer: nn.Module
    options: RuntimeOptions
    device: torch.device | str = "cpu"
    offload_device: torch.device | str = "cpu"

    # -- family hooks ------------------------------------------------------------------
    def install_attention(self, backend: str) -> None:
        """Put the family's attention processors on ``backend`` (default: nothing to install)."""

    def release_attention(self) -> None:
        """Drop what the attention processors cached during a run (RoPE tables, ...)."""

    def companions(self) -> list[nn.Module]:
        """Small modules that live wherever the transformer lives (pose encoders, ...)."""
        return []

    def place(self, device: torch.device) -> None:
        """The placement step: block swap of ``transformer.blocks`` (``options.blocks_to_swap``),
        else the whole transformer moves; companions move along. A family whose models need more
        (per-model dtypes, several denoisers) overrides it."""
        blocks = getattr(self.transformer, "blocks", None)
        if isinstance(blocks, nn.ModuleList):
            apply_block_swap(self.transformer, int(self.options.blocks_to_swap), device, prefetch=self.options.prefetch)
        elif self.options.blocks_to_swap:
            raise ValueError(f"{type(self).__name__}: block swap needs a transformer with a `blocks` list; set it to 0")
        else:
            self.transformer.to(device)
        for module in self.companions():
            module.to(device)

    def offload(self) -> None:
        """Move everything :meth:`place` placed to ``offload_device`` (block swap removed)."""
        _remove_block_swap(self.transformer)
        for module in [self.transformer, *self.companions()]:
            module.to(self.offload_device)

    def sample(self, *args, **kwargs) -> SampleResult:
        raise NotImplementedError(f"{type(self).__name__} does not implement sample()")

    def progress_total(self, *args, **kwargs) -> int:
        raise NotImplementedError(f"{type(self).__name__} does not implement progress_total()")

    def transformer_calls(self, *args, **kwargs) -> int:
        raise NotImplementedError(f"{type(self).__name__} does not implement transformer_calls()")

    # -- the life cycle ----------------------------------------------------------------
    def prepare(self, device: torch.device | str | None = None) -> None:
        """Make the model ready to sample on ``device`` (default: ``self.device``): every step in order."""
        if device is not None:
            self.device = device
        target = torch.device(self.device)
        for step in steps():
            step.prepare(self, target)

    def release(self) -> None:
        """After a run or an interrupt: each step's release in reverse order; with
        ``options.offload_after_run`` the model goes to ``offload_device`` (the next ``prepare``
        brings it back); cached accelerator memory is freed."""
        for step in reversed(steps()):
            if step.release is not None:
                step.release(self)
        if self.options.offload_after_run and torch.device(self.device) != torch.device(self.offload_device):
            self.offload()
        empty_cache(self.device)

    @contextlib.contextmanager
    def running(self, device: torch.device | str | None = None) -> Iterator["RuntimeModel"]:
        """``prepare`` for the body, ``release`` after it, also when it fails or is interrupted."""
        self.prepare(device)
        try:
            yield self
        finally:
            self.release()


def _remove_block_swap(module: nn.Module) -> None:
    swap = getattr(module, "poseanimate_block_swap", None)
    if swap is not None:
        swap.detach()
        module.poseanimate_block_swap = None


# ------------------------------------------------------------------------ built-in steps
@prepare_step("attention", ATTENTION, release=lambda model: model.release_attention())
def _attention(model: RuntimeModel, device: torch.device) -> None:
    model.install_attention(model.options.attention)


def _release_placement(model: RuntimeModel) -> None:
    swap = getattr(model.transformer, "poseanimate_block_swap", None)
    if swap is not None:
        swap.release()


@prepare_step("placement", PLACEMENT, release=_release_placement)
def _placement(model: RuntimeModel, device: torch.device) -> None:
    model.place(device)
