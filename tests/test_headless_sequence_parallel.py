"""Sequence parallel over 2 gloo processes on CPU: a full denoising run with guidance of the tiny
One-to-All (1 head: the ring path, with its reference K/V and prefix frame) and UniAnimate (2 heads:
the Ulysses path) gives the single-process latents within 1e-5."""
import pytest
import torch
import torch.distributed as dist

import sequence_parallel_run as spr
from poseanimate.models.wan import sequence_parallel

pytest.importorskip("yunchang")


def test_two_processes_match_one_within_1e5():
    parallel = spr.run_parallel(world=2)
    for name, single in (("one_to_all", spr.one_to_all()), ("unianimate", spr.unianimate())):
        assert parallel[name + "_split_calls"] > 0, f"{name}: no attention ran on split tokens"
        assert parallel[name].shape == single.shape
        assert float((parallel[name] - single).abs().max()) <= 1e-5, name


def test_uneven_tokens_and_no_process_group_are_refused():
    with pytest.raises(RuntimeError, match="torchrun"):
        sequence_parallel.SequenceParallel()
    sp = object.__new__(sequence_parallel.SequenceParallel)
    sp.world, sp.rank = 2, 0
    with pytest.raises(ValueError, match="7 tokens"):
        sp.shard(torch.zeros(1, 7, 4))
    assert sp.shard_spans([(0, 4, "a"), (4, 6, "b"), (6, 8, "c")], 8) == [(0, 4, "a")]
    sp.rank = 1
    assert sp.shard_spans([(0, 4, "a"), (4, 6, "b"), (6, 8, "c")], 8) == [(0, 2, "b"), (2, 4, "c")]
    assert not dist.is_initialized()


def test_torchrun_launch_of_the_main_job(tmp_path):
    """torchrun --nproc-per-node 2 animate.py REQUEST.json: the tiny One-to-All over 2 gloo ranks;
    rank 0 writes one video and its result JSON, the other rank leaves nothing behind."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import one_to_all_tiny
    from test_headless_job import ROOT, fast_one_to_all, write_media

    one_to_all_tiny.write_tiny_models(tmp_path / "models")
    ref, drive = write_media(tmp_path)
    request = tmp_path / "r.json"
    request.write_text(json.dumps({"prompt": "a dance", "image_url": ref, "video_url": drive, "num_inference_steps": 2,
                                   "resolution": "reference", "image_guidance_scale": 1.0, "pose_guidance_scale": 1.5}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(ROOT / "animate.py"), str(request), "--models", str(tmp_path / "models"), "--workflow",
                           str(fast_one_to_all(tmp_path)), "--out", str(tmp_path / "out"), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    videos = sorted(p.name for p in (tmp_path / "out").rglob("*.mp4"))
    assert videos == [result["video"]["file_name"]] == ["one_to_all_00001_.mp4"]
    assert not list(Path(tmp_path).glob("poseanimate-rank*"))
