"""Step-cache figures on tiny models (prints one ``name: value`` line per figure).

The first-block cache (models/runtime/step_cache.py) at its default threshold, on the real
samplers with random tiny weights, against the same run without it:
- ``step_cache_one_to_all_calls_saved``: fraction of transformer calls skipped in a 30-step
  One-to-All run with three-way guidance (90 calls); ``step_cache_one_to_all_rel_dev``: max abs
  deviation of the final latents over their max magnitude.
- ``step_cache_unianimate_calls_saved`` / ``step_cache_unianimate_rel_dev``: the same for the
  tiny UniAnimate golden model, 30 steps, cfg 1.5, two windows (2 calls per window and step).
Random weights change less smoothly over the steps than trained ones, so real savings differ;
the figures show the mechanism works end to end and what it costs in accuracy here.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pack_loader import load_pack  # noqa: E402

load_pack()

import torch  # noqa: E402

from poseanimate.models.runtime import step_cache as sc  # noqa: E402


def emit(name: str, value) -> None:
    print(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}", flush=True)


def _compare(prefix: str, model, run) -> None:
    baseline = run()
    cache = sc.install_step_cache(model, sc.DEFAULT_THRESHOLD)
    try:
        cached = run()
    finally:
        sc.remove_step_cache(model)
    emit(f"{prefix}_calls", cache.stats["calls"])
    emit(f"{prefix}_calls_saved", cache.stats["skipped"] / cache.stats["calls"])
    emit(f"{prefix}_rel_dev", float((cached - baseline).abs().max() / baseline.abs().max()))


def one_to_all(steps: int = 30) -> None:
    import one_to_all_tiny
    from test_one_to_all_pipeline import LinearVAE, images

    from poseanimate.models.one_to_all import pipeline
    from poseanimate.models.wan.text import WanPromptEmbeds

    model = one_to_all_tiny.tiny_one_to_all()
    ref, poses, ref_pose = images(9, h=16, w=16)
    g = torch.Generator().manual_seed(2)
    dim = one_to_all_tiny.TINY_ONE_TO_ALL["text_dim"]
    text = WanPromptEmbeds(torch.randn(1, 512, dim, generator=g), torch.randn(1, 512, dim, generator=g), "", "", 3, 5)

    def run():
        return pipeline.sample_one_to_all(pipeline.OneToAllModel(model, torch.float32, "cpu"), LinearVAE(), text, ref,
                                          poses, ref_pose, resolution=(16, 16), steps=steps, seed=3).chunk_latents[0]

    _compare("step_cache_one_to_all", model, run)


def unianimate(steps: int = 30) -> None:
    from safetensors.torch import load_file
    from test_unianimate_pipeline import CONFIG, LONG, REF, _long_conditions, _token_fn

    from poseanimate.models.unianimate import pipeline as ua
    from poseanimate.models.unianimate.transformer import load_unianimate

    model, encoders = load_unianimate(REF / "tiny_base_weights.safetensors", REF / "tiny_lora.safetensors",
                                      dtype=torch.float32, num_attention_heads=CONFIG["model"]["num_heads"])
    inp = load_file(REF / "tiny_long_inputs.safetensors")

    def run():
        return ua.denoise(model, _token_fn(encoders, inp), _long_conditions(inp), inp["noise"], steps,
                          LONG["cfg_scale"], LONG["context_size"], LONG["context_overlap"],
                          first_features=inp["first_features"])

    _compare("step_cache_unianimate", model, run)


if __name__ == "__main__":
    emit("step_cache_threshold", sc.DEFAULT_THRESHOLD)
    one_to_all()
    unianimate()
