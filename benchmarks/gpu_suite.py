"""The GPU figures of the toolkit in one command (one ``name: value`` line per figure).

``python benchmarks/gpu_suite.py`` on one H100 / H200 (about 5 of the allowed 8 minutes): the
models are built at full size with random bf16 weights directly on the GPU (meta construction,
then ``to_empty``; no files), 480x832, 81 frames:

- ``bf16_matmul_tflops``: measured dense bf16 GEMM rate (8192^3), the MFU denominator;
- ``one_to_all_14b_s_per_call_480p``: one One-to-All 14B transformer call (the ``cond`` call of
  a token-replace chunk: pose branch, reference extractor, prefix frame), bf16, SDPA attention;
  ``one_to_all_14b_mfu``: its FLOPs (counted analytically by :func:`one_to_all_flops`: every
  matmul and attention product of the transformer; the convolutional pose / reference encoders
  are left out, so the figure is slightly low) per second over ``bf16_matmul_tflops``;
- ``one_to_all_14b_speedup_<backend>``: that call with flash-attn / SageAttention (only those
  installed), with regional ``torch.compile`` (``compile``) and with fp8 weights (``fp8``,
  scaled fp8 matmul where the GPU has it), each as SDPA-bf16 time over its time;
- ``blockswap_24gb_slowdown``: the call with as many blocks streamed from CPU memory as a 24 GiB
  allocator cap needs, over the all-resident call;
- ``gguf_q8_s_per_call_ratio``: the call with the blocks' Linear weights as GGUF Q8_0 (kept
  quantized, dequantized per layer) over bf16;
- ``unianimate_14b_s_per_call_480p``: one UniAnimate (Wan2.1-I2V-14B + pose tokens) call, one
  21-latent-frame window, bf16, SDPA;
- ``animatediff_s_per_frame_512``: AnimateDiff v2v, SD1.5-size random weights, 512x512, 32
  frames, 25 steps, fp16, seconds per output frame;
- ``*_peak_vram_gib`` after each: the CUDA allocator's peak during that measurement.

``--smoke`` runs the same code on tiny models on the CPU (tiny sizes, float32, the compile
figure with dynamo's ``eager`` backend so no C++ build is needed; VRAM figures print 0): the test suite runs
it so the GPU command cannot rot while no GPU is around. Timings are ratios of runs made side by
side in one process; no test reads the values.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pack_loader import load_pack  # noqa: E402
from timing import call_times, sync  # noqa: E402  (benchmarks/timing.py)

load_pack()

import torch  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from torch import nn  # noqa: E402

from poseanimate.models.runtime import compile as rc  # noqa: E402
from poseanimate.models.runtime import gguf  # noqa: E402
from poseanimate.models.runtime import placement as offload  # noqa: E402
from poseanimate.models.runtime.attention import available_backends  # noqa: E402
from poseanimate.models.runtime.fp8 import convert_to_fp8, set_fp8_compute  # noqa: E402
from poseanimate.models.wan import attention  # noqa: E402

# Released 14B shapes (manifests): One-to-All = Wan2.1-T2V-14B + 1 ControlNet block + 7 reference
# blocks; UniAnimate = Wan2.1-I2V-14B (36 input channels, CLIP image tokens).
WAN14B = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, text_dim=4096, freq_dim=256,
              ffn_dim=13824, num_layers=40)
ONE_TO_ALL_14B = dict(WAN14B, controlnet_layers=1, refextractor_layers=7)
UNIANIMATE_14B = dict(WAN14B, in_channels=36, out_channels=16, image_dim=1280, added_kv_proj_dim=5120)
TINY_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, text_dim=64, freq_dim=64,
                ffn_dim=512, num_layers=4)
TINY = dict(one_to_all=dict(TINY_WAN, controlnet_layers=1, refextractor_layers=1),
            unianimate=dict(TINY_WAN, in_channels=36, out_channels=16, image_dim=64, added_kv_proj_dim=256))
FULL = dict(one_to_all=ONE_TO_ALL_14B, unianimate=UNIANIMATE_14B)
BUDGET_GIB = 24
TEXT_LEN, CLIP_TOKENS = 512, 257


def emit(name: str, value) -> None:
    print(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}", flush=True)


# ------------------------------------------------------------------------------ helpers
def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


def seconds_per_call(fn, device, repeats: int) -> float:
    """Median wall time of ``fn`` after one warm-up call."""
    fn()
    return statistics.median(call_times(fn, repeats, device))


def matmul_rate(device, n: int, repeats: int = 20) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    t = seconds_per_call(lambda: [a @ b for _ in range(repeats)], device, 3)
    return 2 * n ** 3 * repeats / t


def random_model(cls, config: dict, device, dtype=torch.bfloat16) -> nn.Module:
    """``cls(**config)`` built on the meta device and materialised on ``device`` with random weights
    (scaled so activations stay O(1) through 40 blocks); RoPE tables, computed in ``__init__``, are
    rebuilt for real."""
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    with torch.device("meta"):
        model = cls(**config)
    model = model.to(dtype).to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5, generator=g)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.01, generator=g)
    for name, module in list(model.named_modules()):
        if isinstance(module, WanRotaryPosEmbed):
            parent, _, child = name.rpartition(".")
            fresh = WanRotaryPosEmbed(module.attention_head_dim, module.patch_size, module.max_seq_len).to(device)
            setattr(model.get_submodule(parent) if parent else model, child, fresh)
    return model.eval().requires_grad_(False)


def block_flops(tokens: int, dim: int, ffn: int, kv_tokens: int | None = None) -> dict[str, float]:
    """Self-attention (q, k, v, out projections; QK^T and AV) + FFN of one block over ``tokens``."""
    kv = tokens if kv_tokens is None else kv_tokens
    return {"linear": 2 * tokens * dim * dim * 4 + 2 * tokens * dim * ffn * 2, "attention": 4 * tokens * kv * dim}


def one_to_all_flops(config: dict, latent_frames: int, height: int, width: int,
                     text_len: int = TEXT_LEN) -> dict[str, float]:
    """Matmul (``linear``) and attention-product FLOPs of one One-to-All call, and their ``total``.
    Token counts as the model sees them: ``latent_frames + 1`` frames with the prefix, one
    reference frame of ``r`` tokens. The pose / reference convolution encoders are left out (at
    480p x 81 frames they are < 0.1% of the total)."""
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    ffn, layers = config["ffn_dim"], config["num_layers"]
    r = (height // 16) * (width // 16)
    s = (latent_frames + 1) * r
    patch = 16 * 4
    main = block_flops(s, dim, ffn, s + r)  # the self-attention also attends to the reference tokens
    linear = layers * (main["linear"] + 2 * r * dim * dim * 2  # + reference key / value projections
                       + 2 * s * dim * dim * 2 + 2 * text_len * dim * dim * 2)  # cross-attention q, out; k, v
    attn = layers * (main["attention"] + 4 * s * text_len * dim)
    control = block_flops(s, dim, ffn)
    linear += config["controlnet_layers"] * (control["linear"] + 2 * s * dim * dim)  # + zero linear
    attn += config["controlnet_layers"] * control["attention"]
    reference = block_flops(r, dim, ffn)
    linear += config["refextractor_layers"] * reference["linear"]
    attn += config["refextractor_layers"] * reference["attention"]
    linear += 2 * text_len * (config["text_dim"] * dim + dim * dim) + 2 * s * dim * patch  # text embedder, output head
    return {"linear": float(linear), "attention": float(attn), "total": float(linear + attn)}


def one_to_all_inputs(config, frames, height, width, device, dtype):
    from poseanimate.models.one_to_all.guidance import COND, Conditions

    g = torch.Generator(device=device).manual_seed(1)
    bf = dict(device=device, dtype=dtype)
    lat = (frames - 1) // 4 + 1

    def randn(*shape):
        return torch.randn(*shape, generator=g, **bf)

    cond = Conditions(reference=randn(1, 32, 1, height // 8, width // 8),
                      empty_reference=randn(1, 32, 1, height // 8, width // 8),
                      pose_video=randn(1, 3, frames, height, width).clamp(-1, 1),
                      reference_pose=randn(1, 3, 1, height, width).clamp(-1, 1),
                      positive=randn(1, TEXT_LEN, config["text_dim"]), negative=randn(1, TEXT_LEN, config["text_dim"]))
    return dict(hidden_states=randn(1, 16, lat, height // 8, width // 8), timestep=torch.tensor([900.0], device=device),
                **cond.inputs_for(COND), token_replace=True, return_dict=False)


# ------------------------------------------------------------------------------ figures
def one_to_all_figures(config, frames, height, width, device, dtype, repeats, rate, compile_backend, budget_bytes):
    from poseanimate.models.one_to_all.transformer import OneToAllTransformer

    model = random_model(OneToAllTransformer, config, device, dtype)
    kw = one_to_all_inputs(config, frames, height, width, device, dtype)

    def call():
        with torch.no_grad():
            return model(**kw)[0]

    def timed(name: str) -> float:
        reset_peak(device)
        seconds = seconds_per_call(call, device, repeats)
        emit(f"{name}_peak_vram_gib", peak_gib(device))
        return seconds

    attention.install_attention(model, "sdpa")
    base = timed("one_to_all_14b")
    emit("one_to_all_14b_s_per_call_480p", base)
    flops = one_to_all_flops(config, (frames - 1) // 4 + 1, height, width)["total"]
    emit("one_to_all_14b_tflop_per_call", flops / 1e12)
    emit("one_to_all_14b_mfu", flops / base / rate)

    for backend in ("flash_attn_3", "flash_attn", "sageattention"):
        if backend in available_backends():
            attention.install_attention(model, backend)
            emit(f"one_to_all_14b_speedup_{backend}", base / timed(f"one_to_all_14b_{backend}"))
        else:
            print(f"# one_to_all_14b_speedup_{backend}: skipped ({backend} is not installed / no CUDA)", flush=True)
    attention.install_attention(model, "sdpa")

    torch._dynamo.reset()
    rc.compile_blocks(model, backend=compile_backend, dynamic=False)
    emit("one_to_all_14b_speedup_compile", base / timed("one_to_all_14b_compile"))
    rc.uncompile_blocks(model)
    torch._dynamo.reset()

    emit("blockswap_24gb_slowdown", block_swap_seconds(model, call, config, frames, height, width, device,
                                                        repeats, budget_bytes) / base)

    originals = to_gguf_q8(model)
    emit("gguf_q8_s_per_call_ratio", timed("gguf_q8") / base)
    for name, linear in originals.items():  # back to bf16 for the fp8 conversion
        gguf._set_submodule(model, name, linear)
    del originals

    convert_to_fp8(model)
    set_fp8_compute(model, "auto")
    emit("one_to_all_14b_speedup_fp8", base / timed("fp8"))
    del model, kw
    gc.collect()


def block_swap_seconds(model, call, config, frames, height, width, device, repeats, budget_bytes) -> float:
    """The call with the fewest swapped blocks that fit under ``budget_bytes`` (enforced on CUDA
    by the allocator cap); ``budget_bytes=None`` (the CPU smoke run) swaps half the blocks."""
    if budget_bytes is None:
        blocks = config["num_layers"] // 2
    else:
        tokens = ((frames - 1) // 4 + 2) * (height // 16) * (width // 16)
        dim = config["num_attention_heads"] * config["attention_head_dim"]
        act = offload.estimate_activation_bytes(tokens, dim, config["ffn_dim"], TEXT_LEN, torch.bfloat16)
        blocks = max(1, offload.plan_block_swap(model, int(budget_bytes), act, prefetch=1).blocks_to_swap)
    while True:
        swap = offload.apply_block_swap(model, blocks, device, prefetch=1)
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                total = torch.cuda.get_device_properties(device).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, budget_bytes / total), device)
            reset_peak(device)
            seconds = seconds_per_call(call, device, repeats)
            emit("blockswap_24gb_blocks", blocks)
            emit("blockswap_24gb_peak_vram_gib", peak_gib(device))
            return seconds
        except torch.cuda.OutOfMemoryError:
            if blocks >= config["num_layers"]:
                raise
            blocks = min(config["num_layers"], blocks + 2)  # the activation estimate was short: swap more
        finally:
            if device.type == "cuda":
                torch.cuda.set_per_process_memory_fraction(1.0, device)
            if swap is not None:
                swap.detach(to_device=True)
                model.poseanimate_block_swap = None


def to_gguf_q8(model) -> dict[str, nn.Module]:
    """Swap the blocks' Linear layers for Q8_0 GGUF layers (quantized in torch, no file); returns
    the originals so the caller can put them back."""
    originals = {}
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and name.startswith("blocks.") and module.in_features % 32 == 0:
            layer = gguf.GGUFLinear(gguf.quantize_q8_0(module.weight), module.bias is not None)
            if module.bias is not None:
                layer.bias = nn.Parameter(module.bias.detach(), requires_grad=False)
            originals[name] = module
            gguf._set_submodule(model, name, layer)
    return originals


def unianimate_figures(config, frames, height, width, device, dtype, repeats) -> None:
    from poseanimate.models.unianimate.transformer import UniAnimateTransformer

    model = random_model(UniAnimateTransformer, config, device, dtype)
    attention.install_attention(model, "sdpa")
    g = torch.Generator(device=device).manual_seed(2)
    bf = dict(device=device, dtype=dtype)
    lat = min((frames - 1) // 4 + 1, 21)  # one window
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    tokens = lat * (height // 16) * (width // 16)
    hidden = torch.randn(1, 36, lat, height // 8, width // 8, generator=g, **bf)
    text = torch.randn(1, TEXT_LEN, config["text_dim"], generator=g, **bf)
    clip = torch.randn(1, CLIP_TOKENS, config["image_dim"], generator=g, **bf)
    pose = torch.randn(1, tokens, dim, generator=g, **bf) * 0.1
    t = torch.tensor([900.0], device=device)

    def call():
        with torch.no_grad():
            return model(hidden, t, text, clip, pose_tokens=pose, return_dict=False)[0]

    reset_peak(device)
    emit("unianimate_14b_s_per_call_480p", seconds_per_call(call, device, repeats))
    emit("unianimate_14b_peak_vram_gib", peak_gib(device))
    del model
    gc.collect()


def animatediff_figures(smoke: bool, device) -> None:
    import animatediff as ad  # benchmarks/animatediff.py: the SD1.5-topology random models

    frames, size, steps = (2, 64, 1) if smoke else (32, 512, 25)
    pipe = ad.ours_pipe(ad.TINY if smoke else ad.SD15)
    if device.type == "cuda":
        pipe = pipe.to(device, torch.float16, torch.bfloat16)
    src = ad.source_frames(frames, size)
    settings = ad.pl.V2VSettings(prompt=ad.PROMPT, steps=steps, seed=0, select_every_nth_frame=1)
    if not smoke:  # warm-up (cuDNN / cuBLAS kernel choice)
        pipe(src[:16], ad.pl.V2VSettings(prompt=ad.PROMPT, steps=1, seed=0, select_every_nth_frame=1))
    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    pipe(src, settings)
    sync(device)
    emit("animatediff_s_per_frame_512", (time.perf_counter() - t0) / frames)
    emit("animatediff_peak_vram_gib", peak_gib(device))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="the same code on tiny models on the CPU")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per figure (default 2; 1 with --smoke)")
    args = ap.parse_args(argv)
    if args.smoke:  # float32: CPUs without bf16 matmul units would spend the time in conversions
        device, configs, (frames, height, width), n = torch.device("cpu"), TINY, (5, 32, 48), 256
        compile_backend, dtype = "eager", torch.float32
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_suite.py needs a CUDA GPU (H100/H200 class, >= 80 GB); "
                             "use --smoke to run the same code on tiny CPU models")
        device, configs, (frames, height, width), n = torch.device("cuda"), FULL, (81, 480, 832), 8192
        compile_backend, dtype = "inductor", torch.bfloat16
        print(f"# {torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    diffusers_logging.set_verbosity_error()  # random bf16 models: no "keep in float32" advice wanted
    torch.manual_seed(0)
    start = time.perf_counter()
    rate = matmul_rate(device, n)
    emit("bf16_matmul_tflops", rate / 1e12)
    budget = None if args.smoke else BUDGET_GIB * 2**30
    args.repeats = args.repeats or (1 if args.smoke else 2)
    one_to_all_figures(configs["one_to_all"], frames, height, width, device, dtype, args.repeats, rate,
                       compile_backend, budget)
    unianimate_figures(configs["unianimate"], frames, height, width, device, dtype, args.repeats)
    animatediff_figures(args.smoke, device)
    print(f"# total {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
