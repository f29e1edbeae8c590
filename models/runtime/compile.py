"""Regional torch.compile: each transformer block's forward compiled on its own.

Why regional: compiling a whole 40-block DiT takes minutes and recompiles whenever a Python-side
choice changes (guidance call, token replace, window size); the blocks of one model share one
class and one graph, so compiling ``block.forward`` costs one compilation reused by all 40 (and
by every call type), and the model's own loop, hooks (block swap, step cache) and LoRA wrappers
stay eager. Only ``forward`` is compiled, never ``Module.__call__``, so forward hooks keep
running outside the graph.
"""
from __future__ import annotations

import logging
import shutil

import torch
from torch import nn

from .lifecycle import COMPILE, prepare_step

_log = logging.getLogger("PoseAnimate")

# Block lists compiled when a model has them (main blocks; One-to-All's ControlNet and reference
# extractor blocks are separate classes, so each list is its own graph).
BLOCK_LISTS = ("blocks", "controlnet.blocks", "refextractor.ref_blocks")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_CHOICES = ("off", "default", "max-autotune-no-cudagraphs")  # what the loader nodes offer


def inductor_available(device: str | torch.device = "cpu") -> tuple[bool, str]:
    """Whether inductor can build kernels for ``device`` here, with the reason when it cannot
    (CPU kernels need a C++ compiler; CUDA kernels need triton)."""
    if torch.device(device).type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "torch.compile on CUDA needs triton (pip install triton)"
        return True, ""
    from torch._inductor import config

    cxx = config.cpp.cxx[-1] if isinstance(config.cpp.cxx, tuple) else config.cpp.cxx
    for candidate in (cxx, "g++", "c++", "clang++"):
        if candidate and shutil.which(candidate):
            return True, ""
    return False, "torch.compile on CPU needs a C++ compiler (g++ or clang++) on PATH"


def _block_lists(model: nn.Module) -> list[nn.ModuleList]:
    found = []
    for name in BLOCK_LISTS:
        try:
            blocks = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList):
            found.append(blocks)
    return found


def compile_blocks(model: nn.Module, mode: str = "default", dynamic: bool | None = None,
                   backend: str = "inductor", fullgraph: bool = False) -> int:
    """Compile the forward of every block in the model's block lists; returns how many.
    Idempotent; :func:`uncompile_blocks` undoes it. ``dynamic=None`` lets torch decide (static
    shapes first, dynamic after a size change: new video sizes do not recompile forever)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
    count = 0
    for blocks in _block_lists(model):
        for block in blocks:
            if "forward" not in block.__dict__:
                block.forward = torch.compile(block.forward, mode=None if mode == "default" else mode,
                                              dynamic=dynamic, backend=backend, fullgraph=fullgraph)
            count += 1
    model.poseanimate_compiled = count > 0
    return count


def uncompile_blocks(model: nn.Module) -> None:
    """Back to eager forwards (compiled code stays in torch's cache until the process ends)."""
    for blocks in _block_lists(model):
        for block in blocks:
            block.__dict__.pop("forward", None)
    model.poseanimate_compiled = False
    model.poseanimate_compile_mode = None


@prepare_step("compile", COMPILE)
def _compile_step(model, device: torch.device) -> None:
    """Runtime step: ``options.compile`` names the mode ("off" = eager). Where inductor cannot build
    kernels (no C++ compiler / no triton) the model stays eager and the log says why."""
    mode = getattr(model.options, "compile", "off") or "off"
    transformer = model.transformer
    if mode == "off":
        if getattr(transformer, "poseanimate_compiled", False):
            uncompile_blocks(transformer)
        return
    ok, why = inductor_available(device)
    if not ok:
        _log.warning("PoseAnimate: compile=%s ignored: %s; running eager.", mode, why)
        return
    if getattr(transformer, "poseanimate_compile_mode", None) != mode:
        uncompile_blocks(transformer)
        compile_blocks(transformer, mode)
        transformer.poseanimate_compile_mode = mode
