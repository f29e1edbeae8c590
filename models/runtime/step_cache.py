"""First-block step cache: skip a transformer call's later blocks when its first block barely changed.

Why: between neighbouring denoising steps a DiT's output changes slowly over long stretches; the
change of the first block's residual (output minus input) tells when (First-Block-Cache, as in
ParaAttention's FBCache; EasyCache and MagCache use other change measures of the same idea). No
per-model calibration: at every call the first block runs; if the mean absolute change of its
residual since the last fully computed call of the same kind, relative to that residual's mean
magnitude, is below ``threshold``, the remaining blocks are replaced by the residual they added
last time (``final = first_out + (last_final - last_first_out)``). ``threshold = 0`` never skips.

Why not cache-dit (the maintained library, which targets diffusers' Wan transformer): it swaps the
block list for one wrapper that runs all blocks with the same arguments, which drops One-to-All's
pose ControlNet added between blocks and its per-block reference features; and it tells call
types apart by parity (cond / uncond alternate), while One-to-All makes three calls per step and
UniAnimate two per window, several windows per step.

Each kind of call keeps its own entry: the key is the caller's :func:`call_key` (the guidance
call, the window) plus the model's own tag (token shape, identity of its conditioning tensors).
An entry starts over when its timestep goes up (a new run, chunk or window pass) or the shape
changes. Cached residuals live on the model's device: one token-sized pair per kind of call.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from .lifecycle import CACHE, prepare_step

_log = logging.getLogger("PoseAnimate")
CACHE_METHODS = ("off", "first_block")
DEFAULT_THRESHOLD = 0.1   # FBCache's usual range for video DiTs is 0.05-0.15
DEFAULT_MAX_SKIPS = 3     # at most this many skipped calls in a row per kind of call
MAX_ENTRIES = 16          # kinds of calls remembered (oldest dropped)

_CALL_KEY: contextvars.ContextVar = contextvars.ContextVar("poseanimate_step_cache_key", default=None)


@contextlib.contextmanager
def call_key(key):
    """Name the kind of the transformer calls made inside (e.g. ``"uncond"``, ``(window, "cond")``)."""
    token = _CALL_KEY.set(key)
    try:
        yield
    finally:
        _CALL_KEY.reset(token)


@dataclass
class _Entry:
    first_residual: torch.Tensor
    residual: torch.Tensor | None = None
    timestep: float = float("inf")
    skips: int = 0


@dataclass
class FirstBlockCache:
    """The cache state of one model; ``stats`` counts calls and skipped calls since ``reset``."""

    threshold: float = DEFAULT_THRESHOLD
    max_skips: int = DEFAULT_MAX_SKIPS
    stats: dict = field(default_factory=lambda: {"calls": 0, "skipped": 0})
    _entries: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _pending: tuple | None = field(default=None, repr=False)

    def reset(self) -> None:
        """Forget every entry (after a run, or to free their memory)."""
        self._entries.clear()
        self._pending = None
        self.stats = {"calls": 0, "skipped": 0}

    def after_first_block(self, tag, timestep, block_input: torch.Tensor, first_out: torch.Tensor):
        """Call right after the first block: returns the cached final hidden states when the rest
        may be skipped, else None (then call :meth:`after_last_block` with the computed result)."""
        self.stats["calls"] += 1
        key = (_CALL_KEY.get(), tag)
        t = float(timestep.reshape(-1)[0]) if torch.is_tensor(timestep) else float(timestep)
        residual = first_out - block_input
        entry = self._entries.get(key)
        if entry is not None and (t > entry.timestep or entry.first_residual.shape != residual.shape):
            entry = None  # a new pass over the timesteps, or another size
        if entry is not None and entry.residual is not None and entry.skips < self.max_skips:
            change = (residual - entry.first_residual).abs().mean() / entry.first_residual.abs().mean().clamp_min(1e-12)
            if float(change) < self.threshold:
                entry.skips += 1
                entry.timestep = t
                self._entries.move_to_end(key)
                self._pending = None
                self.stats["skipped"] += 1
                return first_out + entry.residual.to(first_out.dtype)
        self._pending = (key, t, residual, first_out)
        return None

    def after_last_block(self, final: torch.Tensor) -> None:
        """Remember what the blocks after the first added in this fully computed call."""
        if self._pending is None:
            return
        key, t, first_residual, first_out = self._pending
        self._pending = None
        self._entries[key] = _Entry(first_residual, final - first_out, t)
        self._entries.move_to_end(key)
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)


def get_step_cache(model: nn.Module) -> FirstBlockCache | None:
    return getattr(model, "poseanimate_step_cache", None)


# -------------------------------------------------------------------------- installation
class _CachedBlocks(nn.ModuleList):
    """The model's own block list (same modules, same state-dict names) whose first iteration
    after the condition embedder ran (diffusers' Wan forward: the block loop comes right after it)
    yields the first block, then either one callable returning the cached result or the other
    blocks plus a recorder. Fits loops of the form ``for block in self.blocks: h = block(h, *args)``;
    every other iteration is a plain ModuleList's (block swap, ``.to()``, LoRA, processor swaps)."""

    def __iter__(self):
        state = self.__dict__.pop("_poseanimate_call", None)
        if state is None:
            yield from super().__iter__()
            return
        cache, tag, timestep = state
        modules = list(self._modules.values())
        result = {}

        def first(hidden, *args, **kwargs):
            out = modules[0](hidden, *args, **kwargs)
            result["cached"] = cache.after_first_block(tag, timestep, hidden, out)
            return out

        yield first
        if result.get("cached") is not None:
            cached = result.pop("cached")
            yield lambda hidden, *args, **kwargs: cached
            return
        yield from modules[1:]

        def record(hidden, *args, **kwargs):
            cache.after_last_block(hidden)
            return hidden

        yield record


def _pre_forward(model, args, kwargs):
    cache = get_step_cache(model)
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    context = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
    tag = (tuple(hidden.shape), id(context), kwargs.get("pose_tokens") is not None)
    model.blocks.__dict__["_poseanimate_pending"] = (cache, tag, timestep)


def _arm_block_loop(blocks):
    def hook(module, args, output):
        pending = blocks.__dict__.pop("_poseanimate_pending", None)
        if pending is not None:
            blocks.__dict__["_poseanimate_call"] = pending
    return hook


def _post_forward(model, args, kwargs, output):
    model.blocks.__dict__.pop("_poseanimate_pending", None)
    model.blocks.__dict__.pop("_poseanimate_call", None)


def install_step_cache(model: nn.Module, threshold: float = DEFAULT_THRESHOLD,
                       max_skips: int = DEFAULT_MAX_SKIPS) -> FirstBlockCache | None:
    """Turn the first-block cache on (``threshold > 0``) or off (``<= 0``) for a Wan transformer.

    Models whose forward calls the cache itself (``poseanimate_step_cache_native``, e.g. One-to-
    All's, whose ControlNet sits between blocks) only get the cache object; others (diffusers'
    loop) get their block list wrapped for the duration of each forward."""
    remove_step_cache(model)
    if threshold is None or float(threshold) <= 0:
        return None
    if not isinstance(getattr(model, "blocks", None), nn.ModuleList) or len(model.blocks) < 2:
        raise TypeError("the step cache needs a transformer with a `blocks` ModuleList of at least 2 blocks")
    if max_skips < 1:
        raise ValueError(f"max_skips must be >= 1, got {max_skips}")
    cache = FirstBlockCache(float(threshold), int(max_skips))
    model.poseanimate_step_cache = cache
    if not getattr(model, "poseanimate_step_cache_native", False):
        embedder = getattr(model, "condition_embedder", None)
        if embedder is None:
            raise TypeError(f"{type(model).__name__}: the step cache wraps diffusers' Wan block loop (it follows "
                            f"`condition_embedder`); other models must call the cache in their forward")
        model.blocks.__class__ = _CachedBlocks
        model.poseanimate_step_cache_hooks = (
            model.register_forward_pre_hook(_pre_forward, with_kwargs=True),
            embedder.register_forward_hook(_arm_block_loop(model.blocks)),
            model.register_forward_hook(_post_forward, with_kwargs=True, always_call=True))
    return cache


def remove_step_cache(model: nn.Module) -> None:
    """Undo :func:`install_step_cache` (the blocks become a plain ModuleList again)."""
    for handle in getattr(model, "poseanimate_step_cache_hooks", ()):
        handle.remove()
    model.poseanimate_step_cache_hooks = ()
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, _CachedBlocks):
        blocks.__dict__.pop("_poseanimate_call", None)
        blocks.__dict__.pop("_poseanimate_pending", None)
        blocks.__class__ = nn.ModuleList
    model.poseanimate_step_cache = None


# ------------------------------------------------------------------------- runtime step
def _release_cache(model) -> None:
    cache = get_step_cache(model.transformer)
    if cache is not None and cache.stats["calls"]:
        calls, skipped = cache.stats["calls"], cache.stats["skipped"]
        _log.info("PoseAnimate step cache: %d of %d transformer calls skipped", skipped, calls)
        print(f"[PoseAnimate] step cache: {skipped} of {calls} transformer calls skipped")
    if cache is not None:
        cache.reset()  # frees the cached residuals


@prepare_step("cache", CACHE, release=_release_cache)
def _cache_step(model, device: torch.device) -> None:
    """Runtime step: ``options.cache`` ("first_block") with ``options.cache_threshold`` > 0 turns
    the cache on; anything else leaves every call computed."""
    options = model.options
    method = getattr(options, "cache", "off") or "off"
    if method not in CACHE_METHODS:
        raise ValueError(f"step cache method must be one of {CACHE_METHODS}, got {method!r}")
    threshold = float(getattr(options, "cache_threshold", 0.0) or 0.0) if method != "off" else 0.0
    current = get_step_cache(model.transformer)
    if threshold <= 0:
        if current is not None:
            remove_step_cache(model.transformer)
    elif current is None or current.threshold != threshold:
        install_step_cache(model.transformer, threshold)
