"""Node helpers every model family shares: model-file choice lists, the loader inputs of the
runtime (attention, block swap, LoRA slots) and releasing models after a run.

Why one module: each family's loader offers the same runtime options with the same names,
defaults and tooltips, and each sampler frees the same way after a run or a Cancel; a family's
node file imports these instead of another family's node file.
"""
from __future__ import annotations

import contextlib
import logging

import torch

from ..models.runtime.attention import available_backends
from ..models.runtime.compile import COMPILE_CHOICES
from ..models.runtime.lifecycle import RuntimeOptions
from ..models.wan.scheduler import DISTILLED_STEPS, PRESETS
from . import host

NONE = "None"
_log = logging.getLogger("PoseAnimate")


def model_choices(kind: str, example: str | None = None, optional: bool = False) -> list[str]:
    """Weight files of a model folder, plus shard index files (``*.index.json``) of sharded
    checkpoints. ``optional``: ``None`` first (no file); otherwise ``example`` (or a hint) when the
    folder is empty, so a graph still validates."""
    names = host.list_models(kind)
    names = sorted(set(names + [n for n in host.list_models(kind, {".json"}) if n.endswith(".index.json")]))
    if optional:
        return [NONE] + names
    return names or [example or f"(put files in models/{kind})"]


def attention_choices() -> list[str]:
    """``auto`` plus the backends usable here (SDPA always; flash-attn / sage when installed)."""
    return ["auto"] + [b for b in available_backends() if b != "auto"]


def runtime_inputs(max_blocks: int = 40) -> dict:
    """The loader inputs of models/runtime/lifecycle.py's RuntimeOptions, the same in every family."""
    return {
        "block_swap": ("INT", {"default": 0, "min": 0, "max": max_blocks,
                               "tooltip": "Transformer blocks kept in CPU memory and streamed to the GPU (less VRAM, slower)"}),
        "attention": attention_input(),
    }


def attention_input() -> tuple:
    """The loaders' attention backend choice (models/runtime/attention.py)."""
    return (attention_choices(), {"default": "auto",
                                  "tooltip": "auto: flash-attn 3/2 or SageAttention when installed, else PyTorch SDPA"})


def toolkit_inputs() -> dict:
    """Optional loader inputs of the toolkit's prepare steps (models/runtime/compile.py,
    step_cache.py), the same in every Wan family; both off by default."""
    return {
        "compile": (list(COMPILE_CHOICES), {"default": "off",
                                            "tooltip": "Regional torch.compile of the transformer blocks: the first run "
                                                       "compiles (a minute or more), later runs are faster. Needs triton "
                                                       "on a GPU (a C++ compiler on CPU); otherwise the model stays eager"}),
        "step_cache_threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                           "tooltip": "First-block step cache: skip a call's later blocks when its first "
                                                      "block changed less than this since the last computed step. 0 = off "
                                                      "(exact); 0.05-0.15 saves calls at a small quality cost"}),
    }


def runtime_options(block_swap: int = 0, attention: str = "auto", compile: str = "off",
                    step_cache_threshold: float = 0.0, **extra) -> RuntimeOptions:
    """RuntimeOptions from the values of :func:`runtime_inputs` and :func:`toolkit_inputs`
    (unknown keys go to ``extra``)."""
    threshold = float(step_cache_threshold or 0.0)
    return RuntimeOptions(attention=attention, blocks_to_swap=int(block_swap), compile=compile or "off",
                          cache="first_block" if threshold > 0 else "off", cache_threshold=threshold, extra=extra)


def preset_input() -> tuple:
    """The samplers' preset choice (models/wan/scheduler.py PRESETS)."""
    lo, hi = DISTILLED_STEPS
    return (list(PRESETS), {"default": "official",
                            "tooltip": f"official: the model's own scheduler and guidance; distilled: for a step-distillation "
                                       f"LoRA (lightx2v kind) in the loader: {lo}-{hi} steps, guidance off (one transformer "
                                       f"call per step), the distilled timesteps (shift 5)"})


def say_calls(family: str, calls: int, preset: str) -> None:
    """Tell the user (console and ComfyUI's log) how many transformer calls the run will make."""
    _log.info("PoseAnimate %s (%s preset): this run makes %d transformer calls.", family, preset, calls)
    print(f"[PoseAnimate] {family} ({preset} preset): {calls} transformer calls")


def run_sampler(family: str, model, handles, total: int, calls: int, *args, preset: str = "official", **kwargs):
    """A sampler node's run: progress bar of ``total`` steps, the transformer calls said, the
    interrupt checked, ``model.sample(*args, callback=..., preset=..., **kwargs)`` (which prepares
    and releases the model), the other ``handles`` (VAE, encoders) released after it or a Cancel."""
    callback = host.step_callback(total)
    say_calls(family, calls, preset)
    host.check_interrupt()
    with released_after_run(*handles):
        return model.sample(*args, callback=callback, preset=preset, **kwargs)


def lora_inputs(count: int, tooltip: str) -> dict:
    """Optional ``lora_i`` / ``lora_i_strength`` slots listing the ``loras`` folder."""
    names = [NONE] + host.list_models("loras")
    slots = {}
    for i in range(1, count + 1):
        slots[f"lora_{i}"] = (names, {"default": NONE, "tooltip": tooltip})
        slots[f"lora_{i}_strength"] = ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05})
    return slots


def chosen_loras(values: dict, count: int) -> list[tuple]:
    """(path, strength) of the filled LoRA slots, resolved in the ``loras`` folder."""
    out = []
    for i in range(1, count + 1):
        name = values.get(f"lora_{i}", NONE)
        if name and name != NONE:
            out.append((host.resolve_model("loras", name), float(values.get(f"lora_{i}_strength", 1.0))))
    return out


def release_all(*handles) -> None:
    """Release every handle (errors ignored), then free cached memory.

    Handles with ``release()`` (model objects, WanVAE, WanTextEncoder, Placement) call it; a bare
    Wan transformer module drops its prefetched swap blocks and attention caches.
    """
    for handle in handles:
        release = getattr(handle, "release", None)
        if release is None and isinstance(handle, torch.nn.Module):
            from ..models.wan.model import release_transformer

            release = lambda module=handle: release_transformer(module)  # noqa: E731
        if release is not None:
            with contextlib.suppress(Exception):
                release()
    host.free_memory()


@contextlib.contextmanager
def released_after_run(*handles, on_success: bool = True):
    """Release the handles' accelerator memory when the body ends (``on_success``) or fails.

    Failure includes ComfyUI's interrupt (Cancel), which raises out of a step
    callback; the memory is freed before the exception goes on. Samplers wrap
    their run in this with the VAE's and encoders' handles (model objects release
    themselves at the end of ``sample``).
    """
    try:
        yield
    except BaseException:
        release_all(*handles)
        raise
    if on_success:
        release_all(*handles)


def released_on_error(*handles):
    """``released_after_run`` that only releases when the body fails or is interrupted."""
    return released_after_run(*handles, on_success=False)
