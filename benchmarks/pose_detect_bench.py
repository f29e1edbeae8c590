"""Pose-detection speed: the pack's detect_video against the bare detector on the same frames.

``measure_detect(frames)`` runs, side by side in one process and interleaved over a few
rounds (best round kept for each):
  * raw: a fresh mediapipe Holistic (same options as the pack's) called with ``process()`` on
    each frame, nothing else timed;
  * pack: ``detect_video(load_detector("mediapipe"), frames)`` end to end (input coercion,
    graph reset, mapping to the 134-point layout, person choice, missing-frame filling).
pose_detect_overhead = pack time / raw time (target <= 1.2); pose_detect_fps = frames / pack time.

``measure_torch_vs_ort()`` runs one ViTPose-shaped ONNX network (tests/tiny_onnx.build_vit_like:
real 256x192 input and 133x64x48 heatmaps, small width) through the detectors' two engines on
the CPU, interleaved, best round each, both on one thread (torch's OpenMP pool collapses when
the cores are shared with other work): pose_torch_vs_ort_fps = torch crops/s over onnxruntime's.
Run as a script to print the figures on the sample driving clip.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


def _pack():
    if "poseanimate" not in sys.modules:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from pack_loader import load_pack

        load_pack()
    from poseanimate.pose import detect, mediapipe_pose

    return detect, mediapipe_pose


def measure_detect(frames: np.ndarray, rounds: int = 3) -> dict:
    """frames (T, H, W, 3) uint8 RGB -> {"pose_detect_fps", "pose_detect_overhead", ...}."""
    detect, mediapipe_pose = _pack()
    frames = detect.as_uint8_rgb(frames)
    solutions = mediapipe_pose.import_mediapipe()
    detector = detect.load_detector("mediapipe")
    raw_times, pack_times, inside_times = [], [], []
    for _ in range(max(1, int(rounds))):
        raw = solutions.holistic.Holistic(**detector.options)
        try:
            spent = 0.0
            for frame in frames:
                t0 = time.perf_counter()
                raw.process(frame)
                spent += time.perf_counter() - t0
        finally:
            raw.close()
        raw_times.append(spent)

        inner = detector.process
        inside = [0.0]

        def timed(frame, _inner=inner, _acc=inside):
            t0 = time.perf_counter()
            try:
                return _inner(frame)
            finally:
                _acc[0] += time.perf_counter() - t0

        detector.process = timed
        try:
            t0 = time.perf_counter()
            detect.detect_video(detector, frames)
            pack_times.append(time.perf_counter() - t0)
        finally:
            del detector.process
        inside_times.append(inside[0])
    detector.close()
    best_raw, best_pack = min(raw_times), min(pack_times)
    i = int(np.argmin(pack_times))
    return {
        "pose_detect_fps": len(frames) / best_pack,
        "pose_detect_overhead": best_pack / best_raw,
        "pose_detect_raw_fps": len(frames) / best_raw,
        # same run, pack time over the mediapipe calls made inside it (no run-to-run noise)
        "pose_detect_inside_overhead": pack_times[i] / max(inside_times[i], 1e-9),
    }


def measure_torch_vs_ort(batch: int = 4, rounds: int = 5, dim: int = 96, depth: int = 2, threads: int = 1) -> dict:
    """CPU crops/s of the same ONNX file through torch (pose/onnx_torch.py) and onnxruntime."""
    import tempfile

    import torch

    _pack()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import tiny_onnx
    from poseanimate.pose.onnx_model import OnnxModel

    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_onnx.build_vit_like(Path(tmp) / "vit.onnx", dim=dim, depth=depth)
        engines = {"onnxruntime": OnnxModel(path, threads=threads), "torch": OnnxModel(path, "torch", "cpu")}
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    crops = np.random.default_rng(0).standard_normal((batch, 3, 256, 192)).astype(np.float32)
    best = {name: float("inf") for name in engines}
    for name, model in engines.items():  # warm-up
        model.run({"input": crops})
    for _ in range(max(1, int(rounds))):
        for name, model in engines.items():
            t0 = time.perf_counter()
            model.run({"input": crops})
            best[name] = min(best[name], time.perf_counter() - t0)
    torch.set_num_threads(torch_threads)
    return {"pose_torch_vs_ort_fps": best["onnxruntime"] / best["torch"],
            "pose_torch_cpu_crops_per_s": batch / best["torch"], "pose_ort_cpu_crops_per_s": batch / best["onnxruntime"]}


def main(num_frames: int = 24) -> None:
    _pack()
    from poseanimate.pose.sample_media import sample_driving_clip

    frames = sample_driving_clip(num_frames)
    for name, value in {**measure_detect(frames), **measure_torch_vs_ort()}.items():
        print(f"{name}: {value:.3f}")


if __name__ == "__main__":
    main()
