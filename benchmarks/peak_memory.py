"""Peak resident-memory growth of one call, for the memory figures of the sampler benchmarks.

RSS is sampled every 2 ms in a thread while the call runs; the figure is the peak above the
process's size just before the call. Run each measurement in a fresh process so runs do not
share a peak.
"""
from __future__ import annotations

import os
import threading
import time


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_growth(run, interval: float = 0.002):
    """(peak RSS growth in bytes while ``run()`` ran, its return value)."""
    base = rss_bytes()
    peak = [base]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(interval)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        result = run()
    finally:
        stop.set()
        thread.join()
    peak[0] = max(peak[0], rss_bytes())
    return peak[0] - base, result
