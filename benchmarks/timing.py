"""Wall time of calls that may run on a GPU: CUDA works asynchronously, so each call is timed
between two synchronisations. One copy for every benchmark that times model calls."""
from __future__ import annotations

import time

import torch


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def call_times(fn, repeats: int, device) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` (no warm-up: the caller decides)."""
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out
