"""Memory and time of turning a video file into an IMAGE batch: the pack's Get Video Components
against the method of ComfyUI's own node (every frame decoded to float32, then ``torch.stack``).

``video_decode_peak_over_clip``: peak resident-memory growth while decoding, over the bytes of
the float32 frames it returns (the pack's: at most 1.25, uint8 frames plus one float buffer;
``comfyui_decode_peak_over_clip``, ComfyUI's method: the float frames, their stack and what the
allocator keeps, about 3 measured). At 300 frames of 1080p the clip is 7.5 GB, so the
difference is about 13-15 GB of host memory. ``video_decode_time_ratio``: the pack's decode time over
ComfyUI's method, measured side by side in this run (frame threads make it faster, not slower).
Each measurement runs in a fresh process so peaks do not mix:

    python benchmarks/video_decode.py [--frames 60] [--width 1920] [--height 1080]
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from pack_loader import load_pack  # noqa: E402

METHODS = ("pack", "comfyui")


def comfyui_method(path: str):
    """What ComfyUI's Get Video Components does with a file (its algorithm, for the comparison)."""
    import av
    import torch

    frames = []
    with av.open(path) as container:
        for frame in container.decode(video=0):
            frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")) / 255.0)
    return torch.stack(frames)


def measure(method: str, path: str) -> dict:
    """In this process: (peak RSS growth over the returned frames' bytes, seconds)."""
    from peak_memory import peak_rss_growth

    load_pack()
    import torch  # noqa: F401  (imported before the baseline: its own pages are not the decode's)

    from poseanimate.pose import video_io

    decode = (lambda: video_io.decode_components(path)[0]) if method == "pack" else (lambda: comfyui_method(path))
    gc.collect()
    start = time.perf_counter()
    growth, images = peak_rss_growth(decode)
    seconds = time.perf_counter() - start
    return {"ratio": growth / images.nbytes, "seconds": seconds, "frames": int(images.shape[0])}


def write_clip(path: Path, frames: int, width: int, height: int) -> Path:
    """A moving gradient clip (H.264), so the decoder has real work per frame."""
    import numpy as np

    load_pack()
    from poseanimate.pose import video_io

    y, x = np.mgrid[0:height, 0:width]
    clip = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        clip[t, ..., 0] = (x + 8 * t) % 256
        clip[t, ..., 1] = (y + 4 * t) % 256
        clip[t, ..., 2] = (x // 4 + y // 4 + t) % 256
    return video_io.write_mp4(path, clip, fps=30)


def compare(frames: int = 60, width: int = 1920, height: int = 1080) -> dict:
    """Both methods on one clip, each in its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(Path(tmp) / "clip.mp4", frames, width, height)
        out = {}
        for method in METHODS:
            run = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", method, str(clip)],
                                 capture_output=True, text=True)
            if run.returncode:
                raise RuntimeError(f"video decode benchmark ({method}) failed:\n{run.stderr[-3000:]}")
            out[method] = json.loads(run.stdout.strip().splitlines()[-1])
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child)))
        return
    result = compare(args.frames, args.width, args.height)
    print(f"video_decode_peak_over_clip: {result['pack']['ratio']:.3f}")
    print(f"comfyui_decode_peak_over_clip: {result['comfyui']['ratio']:.3f}")
    print(f"video_decode_time_ratio: {result['pack']['seconds'] / result['comfyui']['seconds']:.3f}")


if __name__ == "__main__":
    main()
