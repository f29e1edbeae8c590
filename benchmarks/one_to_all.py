"""One-to-All Animation figures (prints one ``name: value`` line per figure).

CPU, tiny random models (the pack's ``OneToAllTransformer`` and diffusers' Wan VAE, small widths):
- ``one_to_all_overhead``: wall time of the pack's full sample (reference / mask / empty-reference
  encoding, per-chunk noise, token-replace re-encoding, guidance, scheduler, decoding; pose stage
  excluded) over the sum of the wall times of its transformer forwards in the same run.
  Target <= 1.10 (everything around the model is small).
- ``one_to_all_mem_321_vs_81``: peak resident memory growth while sampling (above the process's
  size just before the call, RSS sampled every 2 ms in a thread), 321 frames (5 chunks) over
  81 frames (2 chunks), each in its own subprocess. Target <= 1.3 (chunking keeps memory flat).
- ``one_to_all_hint_mem_ratio``: peak bytes of live tensors of the pose hint encoder
  (``input_hint_block``, released widths: 16-channel blocks, 5120 output channels) run chunked
  over frames, over the same run on the whole video, at 480x832 x 81 frames. Counted on the meta
  device by benchmarks/tensor_memory.py (shapes only: the whole-video run needs ~10 GB). Target <= 0.35.
- ``one_to_all_hint_max_abs``: max |chunked - whole| of real CPU runs of that encoder (seeded
  random weights, 81 frames at ``--hint-size``, default 240x416). Target <= 1e-5.
GPU figures of the 14B model (seconds per call, MFU, attention backends, compile, fp8, block
swap, GGUF): ``benchmarks/gpu_suite.py``, one script for every family.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from peak_memory import peak_rss_growth  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pack_loader import load_pack  # noqa: E402

load_pack()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from poseanimate.models.one_to_all.pipeline import sample_one_to_all  # noqa: E402
from poseanimate.models.one_to_all.transformer import OneToAllTransformer  # noqa: E402
from poseanimate.models.wan.text import WanPromptEmbeds  # noqa: E402
from poseanimate.models.wan.vae_tiling import WanVAE  # noqa: E402

# Tiny CPU model: 2 heads x 128 (the released head size), 4 main blocks.
TINY = dict(num_attention_heads=2, attention_head_dim=128, text_dim=64, freq_dim=64, ffn_dim=512, num_layers=4,
            controlnet_layers=1, refextractor_layers=1)
# The released 14B configuration (manifest_14b.json): 40 x 128, 40 blocks, 1 controlnet block, 7 refextractor blocks.
MODEL_14B = dict(num_attention_heads=40, attention_head_dim=128, text_dim=4096, freq_dim=256, ffn_dim=13824,
                 num_layers=40, controlnet_layers=1, refextractor_layers=7)


def emit(name: str, value) -> None:
    print(f"{name}: {value}", flush=True)


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Seeded random weights (zero-initialised layers would hide the reference and pose paths)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g) + (1.0 if torch.all(p == 1) else 0.0))
    return module.eval().requires_grad_(False)


def tiny_setup():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    model = _randomize(OneToAllTransformer(**TINY))
    vae = WanVAE(AutoencoderKLWan(base_dim=8, z_dim=16).eval(), "cpu", torch.float32, offload_after_use=False)
    g = torch.Generator().manual_seed(1)
    embeds = WanPromptEmbeds(torch.randn(1, 512, TINY["text_dim"], generator=g),
                             torch.randn(1, 512, TINY["text_dim"], generator=g), "", "", 8, 12)
    return model, vae, embeds


def inputs(frames: int, size: int):
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    poses = np.zeros((frames, size, size, 3), np.uint8)
    for t in range(frames):  # a moving bar: a cheap stand-in for rendered poses
        x = (4 * t) % (size - 8)
        poses[t, size // 4: 3 * size // 4, x:x + 8] = (255, 128, 0)
    ref_pose = poses[0].copy()
    return ref, poses, ref_pose


class TimedModel(torch.nn.Module):
    """Wraps the transformer; sums the wall time of its forwards."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.seconds = 0.0
        self.calls = 0

    def forward(self, **kwargs):
        t0 = time.perf_counter()
        out = self.model(**kwargs)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def overhead(frames: int = 81, size: int = 16, steps: int = 30) -> None:
    model, vae, embeds = tiny_setup()
    ref, poses, ref_pose = inputs(frames, size)
    timed = TimedModel(model)
    run = dict(resolution=(size, size), steps=steps, image_guidance_scale=2.0, pose_guidance_scale=1.5, seed=0)
    sample_one_to_all(timed, vae, embeds, ref, poses[:5], ref_pose, **dict(run, steps=2))  # warm-up
    timed.seconds, timed.calls = 0.0, 0
    t0 = time.perf_counter()
    sample_one_to_all(timed, vae, embeds, ref, poses, ref_pose, **run)
    total = time.perf_counter() - t0
    print(f"# {frames} frames at {size}x{size}, {steps} steps, 3-way guidance: sample {total:.2f}s, "
          f"{timed.calls} transformer forwards {timed.seconds:.2f}s", flush=True)
    emit("one_to_all_overhead", round(total / timed.seconds, 4))


def mem_child(frames: int, size: int, steps: int) -> None:
    """In a fresh process: peak RSS growth (bytes) while sampling ``frames`` frames."""
    model, vae, embeds = tiny_setup()
    ref, poses, ref_pose = inputs(frames, size)
    run = dict(resolution=(size, size), steps=steps, image_guidance_scale=2.0, pose_guidance_scale=1.5, seed=0)
    sample_one_to_all(model, vae, embeds, ref, poses[:5], ref_pose, **dict(run, steps=2))  # first-call allocations
    growth, _ = peak_rss_growth(lambda: sample_one_to_all(model, vae, embeds, ref, poses, ref_pose, **run))
    print(json.dumps({"frames": frames, "growth": growth}))


def memory(size: int = 16, steps: int = 2) -> None:
    growth = {}
    for n in (81, 321):
        out = subprocess.run([sys.executable, __file__, "--mem-child", str(n), "--size", str(size), "--steps", str(steps)],
                             capture_output=True, text=True, check=True)
        growth[n] = json.loads(out.stdout.strip().splitlines()[-1])["growth"]
    print(f"# peak RSS growth while sampling: 81 frames {growth[81] / 2**20:.1f} MiB, "
          f"321 frames {growth[321] / 2**20:.1f} MiB", flush=True)
    emit("one_to_all_mem_321_vs_81", round(growth[321] / max(growth[81], 1), 4))


# --------------------------------------------------------------------------------------- GPU
def hint_encoder(height: int = 480, width: int = 832, frames: int = 81, check_size=(240, 416)) -> None:
    from tensor_memory import TensorMemory

    from poseanimate.models.one_to_all.conv_encoders import PoseHintEncoder

    dim = MODEL_14B["num_attention_heads"] * MODEL_14B["attention_head_dim"]
    peaks = {}
    with torch.device("meta"):
        encoder = PoseHintEncoder(out_channels=dim).eval().requires_grad_(False)
        video = torch.empty(1, 3, frames, height, width)
    chunk = encoder.chunk_frames
    for name, chunk_frames in (("whole", 0), ("chunked", chunk)):
        encoder.chunk_frames = chunk_frames
        with torch.no_grad(), TensorMemory(exclude=[encoder, video]) as mem:
            out = encoder(video)
        peaks[name] = mem.peak["meta"]
        del out
    print(f"# hint encoder at {width}x{height} x {frames} frames, {dim} channels out: peak live tensors whole "
          f"{peaks['whole'] / 2**30:.2f} GiB, chunked ({chunk} frames) {peaks['chunked'] / 2**30:.2f} GiB", flush=True)
    emit("one_to_all_hint_mem_ratio", round(peaks["chunked"] / peaks["whole"], 4))

    h, w = check_size
    encoder = _randomize(PoseHintEncoder(out_channels=dim), seed=3)
    video = torch.rand(1, 3, frames, h, w, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        encoder.chunk_frames = 0
        whole = encoder(video)
        encoder.chunk_frames = chunk
        chunked = encoder(video)
    print(f"# real CPU run at {w}x{h} x {frames} frames: output {tuple(whole.shape)}, "
          f"max |value| {float(whole.abs().max()):.3f}", flush=True)
    emit("one_to_all_hint_max_abs", f"{float((chunked - whole).abs().max()):.3g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mem-child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=64, help="frame size of the memory runs (pixels; at 16 px allocator noise outweighs the chunk working set)")
    ap.add_argument("--steps", type=int, default=2, help="steps of the memory runs")
    ap.add_argument("--overhead-size", type=int, default=16)
    ap.add_argument("--overhead-steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--hint-size", type=int, nargs=2, default=(240, 416), metavar=("H", "W"),
                    help="frame size of the real chunked-vs-whole hint encoder check")
    ap.add_argument("--hint-only", action="store_true", help="only the two hint encoder figures")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mem_child:
        mem_child(args.mem_child, args.size, args.steps)
        return
    if args.hint_only:
        hint_encoder(check_size=tuple(args.hint_size))
        return
    hint_encoder(check_size=tuple(args.hint_size))
    overhead(size=args.overhead_size, steps=args.overhead_steps)
    memory(size=args.size, steps=args.steps)


if __name__ == "__main__":
    main()
