"""Wan2.1 runtime figures: one `name: value` line per figure.

CPU (always): a tiny Wan transformer's denoising step (transformer forward +
Euler update) through our runtime (our attention processor, our scheduler) over
the same step through plain diffusers (``WanTransformer3DModel`` with its stock
processor + ``FlowMatchEulerDiscreteScheduler``): same weights, same inputs,
interleaved repetitions, ratio of medians.

GPU (when CUDA is available): the 14B T2V transformer built on the meta device
and materialised with random bf16 weights, one forward at 480x832, 81 frames
(21 x 30 x 52 = 32,760 tokens): seconds, TFLOP/s (FLOPs counted analytically,
see ``wan_forward_flops``), ratio over plain diffusers, block swap slowdown at a
24 GiB budget (enforced with ``set_per_process_memory_fraction``), fp8 weight
storage speed and deviation from bf16.

Run: ``python benchmarks/wan_step.py`` from the repository root.
"""
from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pack_loader import load_pack  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from timing import call_times  # noqa: E402  (benchmarks/timing.py)

load_pack()

from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel  # noqa: E402

from poseanimate.models.runtime import placement as offload  # noqa: E402
from poseanimate.models.one_to_all.schedule import one_to_all_scheduler  # noqa: E402
from poseanimate.models.wan import attention  # noqa: E402

WAN14B_T2V = dict(
    patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
# Tiny, but with Wan's head size (128: the RoPE split 44/42/42) and its 512-token text context.
TINY = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=64, freq_dim=64, ffn_dim=512, num_layers=4, rope_max_seq_len=256,
)


def emit(name: str, value) -> None:
    print(f"{name}: {value:.6g}" if isinstance(value, float) else f"{name}: {value}", flush=True)


def wan_forward_flops(cfg: dict, latent_shape, text_len: int = 512, image_tokens: int = 0) -> dict[str, float]:
    """FLOPs of one Wan transformer forward: ``{"linear", "attention", "total"}``.

    ``linear``: every matmul and the patch-embedding convolution (2*m*n*k):
    patch embedding, text/time embedders, per block the self-attention q/k/v/out,
    the cross-attention q/out on video tokens and k/v on the text (and image)
    tokens, the FFN, and the output projection. ``attention``: QK^T and PV of
    the self- and cross-attention (2*2*s*s_kv*d each). Elementwise work (norms,
    RoPE, modulation, softmax) is left out: memory-bound and small.
    """
    _, c, f, h, w = latent_shape
    pt, ph, pw = cfg["patch_size"]
    s = (f // pt) * (h // ph) * (w // pw)
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    ffn, blocks = cfg["ffn_dim"], cfg["num_layers"]
    patch = c * pt * ph * pw
    ctx = text_len + image_tokens
    linear = 2 * s * patch * d  # patch embedding
    linear += 2 * text_len * (cfg["text_dim"] * d + d * d)  # text embedder
    linear += 2 * (cfg["freq_dim"] * d + d * d + d * 6 * d)  # time embedder + projection (one timestep)
    linear += blocks * (
        2 * s * d * d * 4  # self-attn q, k, v, out
        + 2 * s * d * d * 2  # cross-attn q, out
        + 2 * ctx * d * d * 2  # cross-attn k, v
        + 2 * s * d * ffn * 2  # FFN
    )
    linear += 2 * s * d * patch  # output projection
    attention_flops = blocks * (2 * 2 * s * s * d + 2 * 2 * s * ctx * d)
    return {"linear": float(linear), "attention": float(attention_flops), "total": float(linear + attention_flops)}


# ----------------------------------------------------------------------------- CPU
def _diffusers_step(model, sched, x, t, ctx, i):
    v = model(x, t, ctx, return_dict=False)[0]
    sched._step_index = i
    return sched.step(v, sched.timesteps[i], x, return_dict=False)[0]


def _our_step(model, sch, x, t, ctx, i):
    v = model(x, t, ctx, return_dict=False)[0]
    return sch.step(x, v, i)


def cpu_figures(repeats: int = 41, threads: int = 1) -> None:
    """Median over interleaved pairs of (our step time / diffusers step time).

    One thread: on a shared CPU, per-pair ratios of single-threaded runs are far
    steadier than multi-threaded timings, and both sides get the same conditions.
    """
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    plain = WanTransformer3DModel(**TINY).eval()
    ours = copy.deepcopy(plain)
    attention.install_attention(ours, "auto")
    steps = 30
    ref_sched = FlowMatchEulerDiscreteScheduler(shift=7.0, num_train_timesteps=1000, use_dynamic_shifting=False)
    ref_sched.set_timesteps(steps)
    our_sched = one_to_all_scheduler(steps)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 5, 16, 16, generator=g)
    ctx = torch.randn(1, 512, TINY["text_dim"], generator=g)
    i = 10
    t = our_sched.timestep(i)
    ratios, ours_times = [], []
    with torch.inference_mode():
        a = _our_step(ours, our_sched, x, t, ctx, i)
        b = _diffusers_step(plain, ref_sched, x, t, ctx, i)
        for _ in range(3):
            _our_step(ours, our_sched, x, t, ctx, i)
            _diffusers_step(plain, ref_sched, x, t, ctx, i)
        for r in range(repeats):
            pair = {}
            for name in (("ours", "diffusers") if r % 2 == 0 else ("diffusers", "ours")):
                t0 = time.perf_counter()
                if name == "ours":
                    _our_step(ours, our_sched, x, t, ctx, i)
                else:
                    _diffusers_step(plain, ref_sched, x, t, ctx, i)
                pair[name] = time.perf_counter() - t0
            ratios.append(pair["ours"] / pair["diffusers"])
            ours_times.append(pair["ours"])
    torch.set_num_threads(saved_threads)
    emit("wan_step_ratio_vs_diffusers", statistics.median(ratios))
    emit("wan_step_cpu_ms", 1000 * statistics.median(ours_times))
    emit("wan_step_max_abs_diff", float((a - b).abs().max()))


# ----------------------------------------------------------------------------- GPU
def build_random(cfg: dict, device, dtype=torch.bfloat16) -> WanTransformer3DModel:
    """Build on the meta device, then materialise random weights on ``device`` (no checkpoint needed)."""
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    with torch.device("meta"):
        model = WanTransformer3DModel(**cfg)
    model = model.to(dtype=dtype).to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "scale_shift_table" in name:
                p.normal_(0.0, dim ** -0.5, generator=g)
            elif p.ndim >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5, generator=g)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)
    # RoPE tables are computed in __init__: on meta they are empty, rebuild them for real.
    model.rope = WanRotaryPosEmbed(cfg["attention_head_dim"], cfg["patch_size"], cfg.get("rope_max_seq_len", 1024)).to(device)
    return model.eval().requires_grad_(False)


def gpu_figures(cfg: dict = WAN14B_T2V, latent_shape=(1, 16, 21, 60, 104), device="cuda", budget_bytes: int = 24 * 2**30,
                repeats: int = 3, prefix: str = "wan14b") -> dict[str, float]:
    """The GPU figures (defaults: 14B, 81 frames at 480x832, 24 GiB block-swap budget).

    Written so the same code runs on the CPU with a tiny config (the test suite
    does that) -- only the allocator cap is CUDA-specific.
    """
    device = torch.device(device)
    is_cuda = device.type == "cuda"
    model = build_random(cfg, device)
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(latent_shape, generator=g, device=device, dtype=torch.bfloat16)
    ctx = torch.randn(1, 512, cfg["text_dim"], generator=g, device=device, dtype=torch.bfloat16)
    ctx[:, 40:] = 0  # a 40-token prompt, zero padding after it (the Wan convention)
    t = torch.tensor([930.0], device=device)
    flops = wan_forward_flops(cfg, latent_shape)["total"]
    figures: dict[str, float] = {}

    def put(name, value):
        figures[name] = value
        emit(name, value)

    def forward():
        return model(x, t, ctx, return_dict=False)[0]

    with torch.inference_mode():
        attention.uninstall_attention(model)
        forward()  # warm-up (cuBLAS / SDPA kernel selection)
        backend = attention.install_attention(model, "auto")
        forward()
        base, ours = [], []
        for r in range(repeats):
            for name in (("ours", "base") if r % 2 == 0 else ("base", "ours")):
                if name == "ours":
                    attention.install_attention(model, backend)
                    ours += call_times(forward, 1, device)
                else:
                    attention.uninstall_attention(model)
                    base += call_times(forward, 1, device)
        attention.install_attention(model, backend)
        reference = forward().float()
        t_ours = statistics.median(ours)
        emit(f"{prefix}_attention_backend", backend.name)
        put(f"{prefix}_forward_s", t_ours)
        put(f"{prefix}_tflops", flops / t_ours / 1e12)
        put(f"{prefix}_ratio_vs_diffusers", t_ours / statistics.median(base))
        put(f"{prefix}_forward_tflop", flops / 1e12)

        # Block swap at the budget: fewest swapped blocks that fit, enforced by the CUDA allocator.
        _, _, f, h, w = latent_shape
        tokens = f * (h // cfg["patch_size"][1]) * (w // cfg["patch_size"][2])
        dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        act = offload.estimate_activation_bytes(tokens, dim, cfg["ffn_dim"], 512, torch.bfloat16)
        plan = offload.plan_block_swap(model, int(budget_bytes), act, prefetch=1)
        blocks = plan.blocks_to_swap
        while True:
            swap = offload.apply_block_swap(model, blocks, device, prefetch=1)
            try:
                if is_cuda:
                    torch.cuda.empty_cache()
                    total = torch.cuda.get_device_properties(device).total_memory
                    torch.cuda.set_per_process_memory_fraction(min(1.0, budget_bytes / total), device)
                    torch.cuda.reset_peak_memory_stats(device)
                forward()
                swapped = call_times(forward, repeats, device)
                swap_out = forward().float()
                peak = torch.cuda.max_memory_allocated(device) if is_cuda else 0
                break
            except torch.cuda.OutOfMemoryError:
                if blocks >= cfg["num_layers"]:
                    raise
                blocks = min(cfg["num_layers"], blocks + 2)  # the activation estimate was short: swap more
            finally:
                if is_cuda:
                    torch.cuda.set_per_process_memory_fraction(1.0, device)
                if swap is not None:
                    swap.detach(to_device=True)
        put("blockswap_24gb_blocks", blocks)
        put("blockswap_24gb_peak_gib", peak / 2**30)
        put("blockswap_24gb_slowdown", statistics.median(swapped) / t_ours)
        put("blockswap_max_abs_dev", float((swap_out - reference).abs().max()))

        # fp8 weight storage (blocks' Linear layers, per-layer scale), compute in bf16.
        from poseanimate.models.runtime.fp8 import convert_to_fp8

        convert_to_fp8(model)
        if is_cuda:
            torch.cuda.empty_cache()
        forward()
        fp8_times = call_times(forward, repeats, device)
        fp8_out = forward().float()
        put("fp8_speedup", t_ours / statistics.median(fp8_times))
        put("fp8_max_abs_dev", float((fp8_out - reference).abs().max()))
        put("fp8_rel_dev", float((fp8_out - reference).abs().max() / reference.abs().max()))
        put("fp8_weights_gib", offload.tensor_bytes(model) / 2**30)
    return figures


def main() -> None:
    cpu_figures()
    if not torch.cuda.is_available():
        print("# GPU figures skipped: torch.cuda.is_available() is False (no GPU lent to this run)", flush=True)
        return
    gpu_figures()


if __name__ == "__main__":
    main()
