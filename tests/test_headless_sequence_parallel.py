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
