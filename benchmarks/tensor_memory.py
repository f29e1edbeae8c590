"""Peak bytes of live tensors created during a call, per device, counted by a dispatch mode.

Why: real sizes (480x832 x 81 frames at full channel widths) do not fit next to 7 other jobs on
a small CPU box, and CPU RSS mixes allocator caching into the figure. On the ``meta`` device
every op runs for its shapes only, so the same accounting gives the peak of a 14B-sized run in
seconds and without memory. Counted: every tensor an ATen op returns (views share their base's
storage and count once), from its creation until its last Python reference dies. Not counted:
tensors that existed before the call (weights, inputs) and a kernel's internal scratch memory.
Devices are told apart by the tensors' own device, so the "where does a copy live" question of
a pipeline can be asked on the CPU with fake devices too (``device_of``).
"""
from __future__ import annotations

import weakref
from collections import defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorMemory(TorchDispatchMode):
    """``with TensorMemory() as mem: run()`` then ``mem.peak["meta"]``, ``mem.live``, ``mem.largest``.

    ``device_of(tensor) -> str`` names the bucket a tensor counts in (default: its device type);
    ``exclude``: tensors / modules whose storages existed before (views of them never count).
    """

    def __init__(self, device_of=None, exclude=()):
        super().__init__()
        self._external = set()
        for item in exclude:
            tensors = list(item.parameters()) + list(item.buffers()) if isinstance(item, torch.nn.Module) else [item]
            self._external.update(t.untyped_storage()._cdata for t in tensors)
        self.device_of = device_of or (lambda t: t.device.type)
        self.live: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = defaultdict(int)
        self.largest: dict[str, int] = defaultdict(int)  # biggest single storage seen per bucket
        self._refs: dict[int, list] = {}  # storage key -> [bucket, nbytes, live tensor count]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._external:
            return
        entry = self._refs.get(key)
        if entry is None:
            bucket, nbytes = self.device_of(t), storage.nbytes()
            entry = self._refs[key] = [bucket, nbytes, 0]
            self.live[bucket] += nbytes
            self.peak[bucket] = max(self.peak[bucket], self.live[bucket])
            self.largest[bucket] = max(self.largest[bucket], nbytes)
        entry[2] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._refs.get(key)
        if entry is None:
            return
        entry[2] -= 1
        if entry[2] == 0:
            self.live[entry[0]] -= entry[1]
            del self._refs[key]
