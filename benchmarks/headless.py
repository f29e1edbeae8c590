"""Headless figures: one `name: value` line per figure.

headless_overhead: the main job (``job.run_request``: request filling, media, the in-process
executor, video and result JSON) on a tiny One-to-All request (tiny random weights written by
tests/one_to_all_tiny.py, fp32 loaders, 2 steps, the reference's own size), its wall time over
the summed times of the workflow's nodes in the same run (second of two runs, so imports and
first-call warm-ups are not counted). Target <= 1.05.

batch_resume_rerun: the batch test's scenario (tests/test_headless_batch.py: 6 pose requests, one
failing, 2 CPU workers on a local Ray cluster, SIGKILL once 2 are done, then the same command
again): requests finished before the resume that the resume executed again. Target 0.

sp_max_abs: max |2-process - 1-process| of the final latents of a full denoising run with
guidance, sequence parallel over 2 gloo processes (tests/sequence_parallel_run.py: tiny One-to-All
on the ring path, tiny UniAnimate on the Ulysses path; the larger of the two). Target <= 1e-5.

Run: ``python benchmarks/headless.py`` from the repository root.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pack_loader import load_pack  # noqa: E402

load_pack()

import one_to_all_tiny  # noqa: E402
import test_headless_job as helpers  # noqa: E402

from poseanimate.headless import job  # noqa: E402


def headless_overhead() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one_to_all_tiny.write_tiny_models(tmp / "models")
        job.configure_models(tmp / "models")
        ref, drive = helpers.write_media(tmp)
        request = {"prompt": "a dance", "image_url": ref, "video_url": drive, "num_inference_steps": 2,
                   "resolution": "reference", "image_guidance_scale": 1.0, "pose_guidance_scale": 1.0, "seed": 1}
        workflow = helpers.fast_one_to_all(tmp)
        ratios = []
        for _ in range(2):
            t0 = time.perf_counter()
            done = job.run_request(request, tmp / "out", workflow=workflow, quiet=True)
            ratios.append((time.perf_counter() - t0) / sum(done.node_seconds.values()))
        return ratios[-1]


def batch_resume_rerun() -> int:
    import test_headless_batch

    with tempfile.TemporaryDirectory() as tmp:
        finished_before, _, summary, _, stderr = test_headless_batch.kill_and_resume(Path(tmp))
        if not summary:
            raise RuntimeError(stderr[-2000:])
        return len(set(summary["executed"]) & finished_before)


def sp_max_abs() -> float:
    import sequence_parallel_run

    return max(sequence_parallel_run.max_abs_difference(world=2).values())


if __name__ == "__main__":
    print(f"headless_overhead: {headless_overhead():.4f}", flush=True)
    print(f"batch_resume_rerun: {batch_resume_rerun()}", flush=True)
    print(f"sp_max_abs: {sp_max_abs():.3g}", flush=True)
