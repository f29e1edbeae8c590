"""AnimateDiff video-to-video figures (prints one ``name: value`` line per figure).

CPU, tiny random models (SD1.5 topology, small channels):
- ``animatediff_vs_diffusers``: our v2v sampling time / diffusers' ``AnimateDiffVideoToVideoPipeline``
  on the same UNet, motion-module, VAE and text-encoder weights, the same frames, the same
  number of UNet evaluations (ours: ``steps`` at ``denoise``; diffusers: ``steps/strength`` at
  ``strength``) and Euler on the same beta schedule. Target <= 1.0.
- ``animatediff_mem_96_vs_32``: peak resident memory growth during sampling (above the
  process's size just before the call, RSS sampled every 2 ms in a thread), 96 frames over 32
  frames, each in its own subprocess. Target <= 1.3 (context windows keep it flat).
- ``animatediff_window_batch_speedup``: 48 frames (4 windows of 16/4), one window pair per UNet
  call over four per call.
- ``animatediff_cfg1_calls_per_step``: UNet calls per sampler step at guidance 1 (must be 1: the
  unconditional pass is skipped, as ComfyUI and ADE do), on a 16-frame clip in one window.
GPU (only when CUDA is available): ``animatediff_s_per_frame`` for SD1.5-size random weights,
512x512, 32 frames, 25 steps, fp16.
"""
from __future__ import annotations

import argparse
import json
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

from poseanimate.models.animatediff import context_windows as cw  # noqa: E402
from poseanimate.models.animatediff import pipeline as pl  # noqa: E402
from poseanimate.models.animatediff.motion_loader import MotionModuleSet, to_diffusers_motion_keys  # noqa: E402
from poseanimate.models.animatediff.sd15_checkpoint import load_clip_tokenizer  # noqa: E402
from poseanimate.models.animatediff.unet3d import build_animated_unet  # noqa: E402

TINY = dict(channels=(32, 64, 96, 96), cross=32, te_hidden=32, vae=(32, 64, 96, 96))
SD15 = dict(channels=(320, 640, 1280, 1280), cross=768, te_hidden=768, vae=(128, 256, 512, 512))
PROMPT = "1girl dancing, anime style, (masterpiece:1.2)"


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Seeded random weights (zero-initialised output layers would hide the motion module)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5))
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def build_models(cfg: dict, seed: int = 0):
    """SD1.5-topology UNet2D + v2 motion module + VAE + CLIP text model, random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    ch = cfg["channels"]
    unet = UNet2DConditionModel(sample_size=64, block_out_channels=ch, layers_per_block=2,
                                cross_attention_dim=cfg["cross"], attention_head_dim=8,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3).eval()
    motion = MotionModuleSet(list(ch), [2] * 4, list(reversed(ch)), [3] * 4, ch[-1], 32, "v2", "AnimateDiff").eval()
    vae = AutoencoderKL(block_out_channels=cfg["vae"], down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                        sample_size=512).eval()
    heads = max(1, cfg["te_hidden"] // 64)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=cfg["te_hidden"], intermediate_size=4 * cfg["te_hidden"],
                                      num_hidden_layers=2 if cfg is TINY else 12, num_attention_heads=heads,
                                      max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406,
                                      eos_token_id=49407, pad_token_id=49407)).eval()
    for i, m in enumerate((unet, motion, vae, te)):
        if cfg is TINY:
            _randomize(m, seed + i)
    return unet, motion, vae, te


def source_frames(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, size, size, 3, generator=g)
    drift = torch.linspace(0, 1, n).view(-1, 1, 1, 1)
    return (base * (1 - 0.3 * drift) + 0.3 * drift * torch.rand(1, size, size, 3, generator=g)).clamp(0, 1)


def ours_pipe(cfg=TINY):
    unet, motion, vae, te = build_models(cfg)
    return pl.AnimateDiffV2V(build_animated_unet(unet, motion), vae, te, load_clip_tokenizer(), motion_format="AnimateDiff")


# ------------------------------------------------------------------ figure 1
def bench_vs_diffusers(frames=16, size=128, steps=8, strength=0.5, repeats=3):
    from diffusers import AnimateDiffVideoToVideoPipeline, EulerDiscreteScheduler, MotionAdapter
    from PIL import Image

    ch = TINY["channels"]
    unet, motion, vae, te = build_models(TINY)
    tok = load_clip_tokenizer()
    adapter = MotionAdapter(block_out_channels=ch, motion_layers_per_block=2, motion_num_attention_heads=8,
                            motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=True)
    missing, unexpected = adapter.load_state_dict(to_diffusers_motion_keys(motion.state_dict()), strict=False)
    assert not unexpected and all("pos_embed" in k for k in missing), (missing, unexpected)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                                   timestep_spacing="linspace", steps_offset=1)
    theirs = AnimateDiffVideoToVideoPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                             motion_adapter=adapter.eval(), scheduler=sched)
    theirs.set_progress_bar_config(disable=True)
    ours = pl.AnimateDiffV2V(build_animated_unet(unet, motion), vae, te, tok, motion_format="AnimateDiff")
    src = source_frames(frames, size)
    pil = [Image.fromarray((f.numpy() * 255).astype("uint8")) for f in src]
    settings = pl.V2VSettings(prompt=PROMPT, steps=int(steps * strength), denoise=strength, guidance=7.0, seed=0,
                              sampler="euler", scheduler="normal", select_every_nth_frame=1)

    def run_ours():
        ours(src, settings)

    def run_theirs():
        theirs(video=pil, height=size, width=size, prompt=PROMPT, negative_prompt=pl.DEFAULT_NEGATIVE, num_inference_steps=steps,
               strength=strength, guidance_scale=7.0, generator=torch.Generator().manual_seed(0), output_type="pt")

    run_ours(), run_theirs()  # warm-up
    t_ours, t_theirs = [], []
    for _ in range(repeats):
        for fn, acc in ((run_ours, t_ours), (run_theirs, t_theirs)):
            t = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t)
    return statistics.median(t_ours) / statistics.median(t_theirs)


# ------------------------------------------------------------------ figure 2
def peak_memory_child(frames: int, size: int) -> int:
    """Run in a fresh process: peak RSS growth (bytes) while sampling ``frames`` frames."""
    pipe = ours_pipe()
    src = source_frames(frames, size)
    settings = pl.V2VSettings(prompt=PROMPT, steps=2, seed=0, select_every_nth_frame=1, sampler="euler",
                              scheduler="normal", window_batch=1, context=cw.ContextOptions())  # 16/4 windows for both
    pipe(source_frames(16, size), settings)  # warm-up: allocator pools and kernels
    growth, _ = peak_rss_growth(lambda: pipe(src, settings))
    return growth


def bench_memory(size=128):
    def child(n):
        out = subprocess.run([sys.executable, __file__, "--mem-child", str(n), "--size", str(size)],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]

    p32, p96 = child(32), child(96)
    return p96 / p32, p32, p96


# ------------------------------------------------------------------ figure 3
def bench_window_batch(frames=48, size=64, repeats=3):
    pipe = ours_pipe()
    src = source_frames(frames, size)
    base = dict(prompt=PROMPT, steps=2, seed=0, select_every_nth_frame=1, sampler="euler", scheduler="normal",
                context=cw.ContextOptions())
    one, four = pl.V2VSettings(window_batch=1, **base), pl.V2VSettings(window_batch=4, **base)
    pipe(src, one), pipe(src, four)
    t1, t4 = [], []
    for _ in range(repeats):
        for st, acc in ((one, t1), (four, t4)):
            t = time.perf_counter()
            pipe(src, st)
            acc.append(time.perf_counter() - t)
    return statistics.median(t1) / statistics.median(t4)


# ------------------------------------------------------------------ figure 4
def bench_cfg1_calls_per_step(frames=16, size=64, steps=4):
    """UNet forward calls per step at guidance 1, counted on the real animated UNet."""
    pipe = ours_pipe()
    calls = []
    hook = pipe.unet.unet.conv_in.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    st = pl.V2VSettings(prompt=PROMPT, steps=steps, guidance=1.0, seed=0, select_every_nth_frame=1, sampler="euler",
                        scheduler="normal")
    res = pipe(source_frames(frames, size), st)
    hook.remove()
    assert all(b == frames for b in calls), calls  # one window, positive prompt only
    return len(calls) / steps, res.unet_calls / steps


# ------------------------------------------------------------------ GPU figure
def bench_gpu_s_per_frame(frames=32, size=512, steps=25):
    dev = torch.device("cuda")
    pipe = ours_pipe(SD15).to(dev, torch.float16, torch.bfloat16)
    src = source_frames(frames, size)
    st = pl.V2VSettings(prompt=PROMPT, steps=steps, seed=0, select_every_nth_frame=1)
    pipe(src[:16], pl.V2VSettings(prompt=PROMPT, steps=1, seed=0, select_every_nth_frame=1))
    torch.cuda.synchronize()
    t = time.perf_counter()
    pipe(src, st)
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / frames


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mem-child", type=int, default=0)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    if args.mem_child:
        print(json.dumps({"peak_bytes": peak_memory_child(args.mem_child, args.size)}))
        return
    torch.manual_seed(0)
    print(f"animatediff_vs_diffusers: {bench_vs_diffusers():.3f}", flush=True)
    ratio, p32, p96 = bench_memory()
    print(f"animatediff_mem_96_vs_32: {ratio:.3f}", flush=True)
    print(f"# peak RSS growth while sampling: 32 frames {p32 / 2**20:.1f} MiB, 96 frames {p96 / 2**20:.1f} MiB", flush=True)
    print(f"animatediff_window_batch_speedup: {bench_window_batch():.3f}", flush=True)
    per_step, counted = bench_cfg1_calls_per_step()
    print(f"animatediff_cfg1_calls_per_step: {per_step:g}", flush=True)
    print(f"# the pipeline's own count agrees: {counted:g} UNet calls per step", flush=True)
    if torch.cuda.is_available():
        print(f"animatediff_s_per_frame: {bench_gpu_s_per_frame():.3f}", flush=True)
    else:
        print("# animatediff_s_per_frame: skipped (no CUDA device; needs a GPU for SD1.5-size 512x512x32 frames)")


if __name__ == "__main__":
    main()
