"""UniAnimate-DiT sampler figures (prints one ``name: value`` line per figure).

CPU, the tiny golden model (tests/fixtures/reference/unianimate_dit: Wan I2V DiT width 64, 2
blocks, LoRA merged, the real pose modules), 128x96 pixels, official windows (21 / 4):
- ``unianimate_overhead`` (also printed as ``unianimate_window_overhead``): wall time of the
  whole denoising loop (both CFG passes, scheduler, private frames, window blending, progress
  callbacks) over the sum of the model forwards inside it - the DiT's and the pose encoder's
  (one per window, cached; at this size its 3-D convolutions over 84 full-resolution frames
  cost as much as the tiny DiT, at 14B they are noise) - 161 frames (3 windows), measured in
  the same run. Target <= 1.10. ``unianimate_pose_encoder_share`` says how much of the model
  time the pose encoder took.
- ``unianimate_mem_321_vs_81``: peak resident memory growth during sampling (above the
  process's size just before the call, RSS sampled every 2 ms in a thread), 321 frames over
  81 frames, each in its own subprocess (median of three each). Target <= 1.3 (windows keep it
  flat: one window's activations, the pose encoder's 3-D convolutions dominating).
GPU (only when CUDA is available): Wan2.1-I2V-14B-size random weights, 480p (832x480), 81
frames, one step with cfg 1.5 (two forwards): ``unianimate_14b_step_s``, ``unianimate_14b_tflops``
(model FLOPs of both passes / step time), ``unianimate_merged_vs_unmerged`` (step time with the
rank-128 UniAnimate LoRA merged over unmerged).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from peak_memory import peak_rss_growth  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pack_loader import load_pack  # noqa: E402

load_pack()

import torch  # noqa: E402

from poseanimate.models.unianimate import pipeline as pl  # noqa: E402
from poseanimate.models.unianimate import windows as win  # noqa: E402
from poseanimate.models.unianimate.transformer import load_unianimate  # noqa: E402

REF = ROOT / "tests" / "fixtures" / "reference" / "unianimate_dit"
H, W = 128, 96


def _tiny_model():
    cfg = json.loads((REF / "tiny_config.json").read_text())
    model, enc = load_unianimate(REF / "tiny_base_weights.safetensors", REF / "tiny_lora.safetensors",
                                 dtype=torch.float32, device="cpu", num_attention_heads=cfg["model"]["num_heads"])
    return model, enc, cfg


def _inputs(cfg, frames: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = win.latent_frames(frames)
    window = min(n, win.CONTEXT_SIZE)
    text, clip = cfg["model"]["text_dim"], cfg["clip_dim"]
    pose = torch.randint(0, 256, (frames, H, W, 3), generator=g, dtype=torch.uint8)
    cond = pl.Conditions(torch.randn(1, 512, text, generator=g), torch.randn(1, 512, text, generator=g),
                         torch.randn(1, 257, clip, generator=g), torch.randn(1, 20, window, H // 8, W // 8, generator=g),
                         pose)
    noise = torch.randn(1, 16, n, H // 8, W // 8, generator=g)
    return cond, noise


class _Timed(torch.nn.Module):
    """Times every forward of the wrapped transformer."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def forward(self, *args, **kw):
        t = time.perf_counter()
        out = self.inner(*args, **kw)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out


def _run(model, enc, cond, noise, steps, callback=None, timer=None):
    def token_fn(window):
        t = time.perf_counter()
        tokens = pl.pose_tokens(enc, cond.pose_video[slice(*window.pose_pixel_slice)])
        if timer is not None:
            timer.append(time.perf_counter() - t)
        return tokens

    return pl.denoise(model, token_fn, cond, noise, steps, 1.5, callback=callback)


def overhead(frames: int = 161, steps: int = 3) -> tuple[float, float]:
    """(loop wall time / model forward time, pose-encoder share of the model time)."""
    model, enc, cfg = _tiny_model()
    cond, noise = _inputs(cfg, frames)
    _run(model, enc, cond, noise, 1)  # warm-up
    timed, ticks, pose = _Timed(model), [], []
    t = time.perf_counter()
    _run(timed, enc, cond, noise, steps, ticks.append, pose)
    total = time.perf_counter() - t
    windows = len(win.plan_windows(noise.shape[2]))
    assert timed.calls == 2 * steps * windows == 2 * len(ticks) and len(pose) == windows
    model_time = timed.seconds + sum(pose)
    return total / model_time, sum(pose) / model_time


def peak_growth(frames: int, steps: int = 1) -> int:
    """Bytes of peak RSS above the size just before sampling (in this process)."""
    model, enc, cfg = _tiny_model()
    cond, noise = _inputs(cfg, 81)
    _run(model, enc, cond, noise, 1)  # warm-up: allocator pools, kernels
    cond, noise = _inputs(cfg, frames)
    growth, latents = peak_rss_growth(lambda: _run(model, enc, cond, noise, steps))
    assert latents.shape[2] == noise.shape[2]
    return growth


def _subprocess_growth(frames: int) -> int:
    out = subprocess.run([sys.executable, __file__, "--peak", str(frames)], check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------- GPU
def gpu_figures(device="cuda", d=5120, layers=40, ffn=13824, h=832, w=480, frames=81, rank=128,
                dtype=torch.bfloat16) -> None:
    """The 14B figures (defaults: Wan2.1-I2V-14B shapes, 480p, 81 frames, rank-128 LoRA)."""
    from poseanimate.models.runtime.lora import LoRAWeights
    from poseanimate.models.wan.lora_keys import apply_wan_lora as apply_lora
    from poseanimate.models.unianimate.pose_modules import PoseEncoders
    from poseanimate.models.unianimate.transformer import UniAnimateTransformer

    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cfg = dict(patch_size=(1, 2, 2), num_attention_heads=d // 128, attention_head_dim=128, in_channels=36,
               out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=ffn, num_layers=layers, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280, added_kv_proj_dim=d)
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)  # build the 14B model directly in bf16 (fp32 would need 64 GB)
    try:
        with torch.device(device):
            model = UniAnimateTransformer(**cfg).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(torch.float32)
    enc = PoseEncoders(d).to(device).eval()
    from poseanimate.models.wan.attention import install_attention

    install_attention(model, "auto")
    n = win.latent_frames(frames)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, 16, n, h // 8, w // 8, device=device, generator=g)
    y = torch.randn(1, 20, n, h // 8, w // 8, device=device, generator=g)
    ctx = torch.randn(1, 512, 4096, device=device, dtype=dtype, generator=g)
    clip = torch.randn(1, 257, 1280, device=device, dtype=dtype, generator=g)
    pose = torch.randint(0, 256, (frames, h, w, 3), device=device, dtype=torch.uint8, generator=g)
    cond = pl.Conditions(ctx, ctx, clip, y, pose)

    def step() -> float:
        sync()
        t = time.perf_counter()
        pl.denoise(model, lambda win_: pl.pose_tokens(enc, pose[slice(*win_.pose_pixel_slice)]), cond, x, 1, 1.5,
                   dtype=dtype, device=device)
        sync()
        return time.perf_counter() - t

    step()
    merged = min(step() for _ in range(2))
    tokens = n * (h // 16) * (w // 16)
    text = 512 + 257
    per_layer = 2 * tokens * (4 * d * d + 2 * d * ffn) + 4 * tokens * tokens * d  # self-attn + FFN
    per_layer += 2 * tokens * 2 * d * d + 2 * text * 2 * d * d + 4 * tokens * text * d  # cross-attn (q, o; k, v)
    flops = 2 * layers * per_layer  # two passes (cfg)
    print(f"unianimate_14b_step_s: {merged:.3f}")
    print(f"unianimate_14b_tflops: {flops / merged / 1e12:.1f}")
    lora = LoRAWeights(source=f"random rank-{rank} UniAnimate-shaped LoRA")
    shapes = {"ffn.0": (d, ffn), "ffn.2": (ffn, d)}
    for i in range(layers):
        for target in [f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo"] + ["ffn.0", "ffn.2"]:
            fan_in, fan_out = shapes.get(target, (d, d))
            lora.downs[f"blocks.{i}.{target}"] = torch.randn(rank, fan_in, device=device, dtype=dtype) * 0.01
            lora.ups[f"blocks.{i}.{target}"] = torch.randn(fan_out, rank, device=device, dtype=dtype) * 0.01
    apply_lora(model, lora, 1.0, merge=False, use_alpha=False)
    step()
    unmerged = min(step() for _ in range(2))
    print(f"unianimate_merged_vs_unmerged: {merged / unmerged:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peak", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--gpu-smoke", action="store_true", help="run the GPU figures' code on a small CPU model")
    args = parser.parse_args()
    if args.gpu_smoke:
        gpu_figures("cpu", d=256, layers=2, ffn=512, h=64, w=48, frames=9, rank=8, dtype=torch.float32)
        return
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    if args.peak:
        print(peak_growth(args.peak))
        return
    ratio, pose_share = overhead()
    print(f"unianimate_overhead: {ratio:.3f}")
    print(f"unianimate_window_overhead: {ratio:.3f}")
    print(f"unianimate_pose_encoder_share: {pose_share:.3f}")
    # median of three fresh processes each: the growth is a few hundred MB and the allocator's
    # reuse of freed blocks varies from run to run
    m81 = statistics.median(_subprocess_growth(81) for _ in range(3))
    m321 = statistics.median(_subprocess_growth(321) for _ in range(3))
    print(f"unianimate_mem_321_vs_81: {m321 / max(m81, 1):.3f}")
    if torch.cuda.is_available():
        gpu_figures()
    else:
        print("# GPU figures skipped: CUDA is not available (unianimate_14b_step_s, unianimate_14b_tflops, "
              "unianimate_merged_vs_unmerged need one GPU with >= 40 GB)")


if __name__ == "__main__":
    main()
