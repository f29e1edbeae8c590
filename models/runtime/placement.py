"""Placement of a family's models: block swap and offload after use (the placement step of
models/runtime/lifecycle.py for transformers, ``Placement`` for the once-per-run encoders).

Block swap keeps the weights of some transformer blocks in (pinned) CPU memory
and streams each one to the GPU just before it runs, on a side CUDA stream, so
the copy of block i+1 overlaps the compute of block i. After a block ran, its
parameters point back at their CPU copies and the GPU copies are freed. Weights
never change at inference, so nothing is copied back. The swapped blocks are the
last ones: the resident first blocks hide the first transfer.

On a CPU "device" the same hooks run with plain synchronous copies, which keeps
the logic testable without a GPU and makes the numerics trivially identical.

``Placement`` handles the models used once per run (text encoder, CLIP vision,
VAE): moved to the compute device for a call and back to the offload device after
it when offloading is on.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        total += t.numel() * t.element_size()
    return total


def _named_tensors(module: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """(owner module, attribute name, tensor) for every parameter and buffer, without duplicates."""
    out = []
    seen: set[int] = set()
    for owner in module.modules():
        for name, param in owner.named_parameters(recurse=False):
            if param is not None and id(param) not in seen:
                seen.add(id(param))
                out.append((owner, name, param))
        for name, buf in owner.named_buffers(recurse=False):
            if buf is not None and id(buf) not in seen:
                seen.add(id(buf))
                out.append((owner, name, buf))
    return out


def _set_tensor(owner: nn.Module, name: str, tensor: torch.Tensor, value: torch.Tensor) -> None:
    if isinstance(tensor, nn.Parameter):
        tensor.data = value
    else:
        owner._buffers[name] = value


class BlockSwap:
    """Stream the last ``num_swapped`` blocks of ``blocks`` from CPU memory to ``device``.

    ``prefetch`` = how many swapped blocks are copied ahead of the one running
    (1 is enough when a block's compute outlasts its transfer). Use ``attach()`` /
    ``detach()`` or the instance as a context manager. ``stats`` counts loads,
    prefetch hits (block already on its way) and misses (loaded on demand).
    """

    def __init__(self, blocks: nn.ModuleList, num_swapped: int, device: torch.device | str, prefetch: int = 1, pin_memory: bool | None = None):
        if not isinstance(blocks, nn.ModuleList):
            raise TypeError("BlockSwap needs the model's nn.ModuleList of transformer blocks (model.blocks).")
        n = len(blocks)
        if not 0 <= int(num_swapped) <= n:
            raise ValueError(f"blocks_to_swap must be between 0 and {n} (the model has {n} blocks), got {num_swapped}.")
        if prefetch < 0:
            raise ValueError("prefetch must be >= 0.")
        self.blocks = blocks
        self.device = torch.device(device)
        self.num_swapped = int(num_swapped)
        self.swapped = list(range(n - self.num_swapped, n))
        self.prefetch = int(prefetch)
        self.use_cuda = self.device.type == "cuda"
        self.pin_memory = self.use_cuda if pin_memory is None else bool(pin_memory and self.use_cuda)
        self.stats = {"loads": 0, "prefetch_hits": 0, "misses": 0, "offloads": 0}
        self._masters: dict[int, list[tuple[nn.Module, str, torch.Tensor, torch.Tensor]]] = {}
        self._loaded: dict[int, object] = {}  # block index -> CUDA event (or True on CPU)
        self._handles: list = []
        self._copy_stream = None

    # -- setup -----------------------------------------------------------------
    def attach(self) -> "BlockSwap":
        """Move the swapped blocks to CPU (pinned) memory, the others to ``device``, and hook them."""
        if self._handles:
            return self
        if self.use_cuda:
            self._copy_stream = torch.cuda.Stream(device=self.device)
        for i, block in enumerate(self.blocks):
            if i in self.swapped:
                entries = []
                for owner, name, tensor in _named_tensors(block):
                    master = tensor.detach().to("cpu")
                    if self.pin_memory:
                        master = master.pin_memory()
                    _set_tensor(owner, name, tensor, master)
                    # Keep Parameter objects (their .data is swapped); never keep a buffer's
                    # original device tensor alive.
                    entries.append((owner, name, tensor if isinstance(tensor, nn.Parameter) else master, master))
                self._masters[i] = entries
            else:
                block.to(self.device)
            self._handles.append(block.register_forward_pre_hook(self._make_pre_hook(i)))
            self._handles.append(block.register_forward_hook(self._make_post_hook(i)))
        return self

    def detach(self, to_device: bool = False) -> None:
        """Remove the hooks; swapped blocks stay on the CPU unless ``to_device``."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for i in list(self._loaded):
            self._offload(i)
        if to_device:
            for i in self.swapped:
                self.blocks[i].to(self.device)
        self._masters.clear()
        self._copy_stream = None

    def release(self) -> None:
        """Drop prefetched GPU copies (between runs, or after an interrupt)."""
        for i in list(self._loaded):
            self._offload(i)

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc):
        self.detach()

    # -- hooks -------------------------------------------------------------------
    def _make_pre_hook(self, index: int):
        def hook(module, args):
            if index in self._masters:
                if index in self._loaded:
                    self.stats["prefetch_hits"] += 1
                else:
                    self.stats["misses"] += 1
                    self._load(index)
                event = self._loaded[index]
                if self.use_cuda:
                    torch.cuda.current_stream(self.device).wait_event(event)
            for j in self._next_swapped(index):
                if j not in self._loaded:
                    self._load(j)
            return None

        return hook

    def _make_post_hook(self, index: int):
        def hook(module, args, output):
            if index in self._masters:
                self._offload(index)
            return None

        return hook

    def _next_swapped(self, index: int) -> list[int]:
        """The next ``prefetch`` swapped blocks after ``index``, wrapping to the next forward."""
        if not self.swapped or self.prefetch == 0:
            return []
        after = [j for j in self.swapped if j > index] + [j for j in self.swapped if j <= index]
        return [j for j in after if j != index][: self.prefetch]

    # -- transfers ---------------------------------------------------------------
    def _load(self, index: int) -> None:
        entries = self._masters[index]
        self.stats["loads"] += 1
        if self.use_cuda:
            stream = self._copy_stream
            with torch.cuda.stream(stream):
                for owner, name, tensor, master in entries:
                    _set_tensor(owner, name, tensor, master.to(self.device, non_blocking=self.pin_memory))
                event = torch.cuda.Event()
                event.record(stream)
            self._loaded[index] = event
        else:
            for owner, name, tensor, master in entries:
                _set_tensor(owner, name, tensor, master.to(self.device, copy=True))
            self._loaded[index] = True

    def _offload(self, index: int) -> None:
        if index not in self._loaded:
            return
        compute = torch.cuda.current_stream(self.device) if self.use_cuda else None
        for owner, name, tensor, master in self._masters[index]:
            live = tensor.data if isinstance(tensor, nn.Parameter) else owner._buffers[name]
            if compute is not None and live.is_cuda:
                # Allocated on the copy stream, used on the compute stream: keep the
                # allocator from handing the memory out before the compute finished.
                live.record_stream(compute)
            _set_tensor(owner, name, tensor, master)
        del self._loaded[index]
        self.stats["offloads"] += 1

    def resident_bytes(self) -> int:
        """Bytes of block weights currently on the compute device."""
        total = 0
        for i, block in enumerate(self.blocks):
            if i not in self._masters or i in self._loaded:
                total += tensor_bytes(block)
        return total


def apply_block_swap(model: nn.Module, blocks_to_swap: int, device: torch.device | str, prefetch: int = 1) -> BlockSwap | None:
    """Place a Wan transformer for block swap: non-block parts and resident blocks on ``device``.

    The model may start on the CPU; the swapped blocks never visit the device
    outside their turn, so a model larger than the device memory can be placed.
    Returns the attached ``BlockSwap`` (``model.poseanimate_block_swap``), or None
    for 0 blocks (the model is then simply moved to ``device``).
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError("Block swap needs a model with a `blocks` ModuleList (a Wan transformer).")
    existing = getattr(model, "poseanimate_block_swap", None)
    if existing is not None:
        existing.detach()
        model.poseanimate_block_swap = None
    if blocks_to_swap <= 0:
        model.to(device)
        model.poseanimate_block_swap = None
        return None
    for name, child in model.named_children():
        if child is not blocks:
            child.to(device)
    for name, param in model.named_parameters(recurse=False):
        param.data = param.data.to(device)
    for name, buf in list(model.named_buffers(recurse=False)):
        model._buffers[name] = buf.to(device)
    swap = BlockSwap(blocks, blocks_to_swap, device, prefetch=prefetch).attach()
    model.poseanimate_block_swap = swap
    return swap


@dataclass
class SwapPlan:
    blocks_to_swap: int
    resident_bytes: int
    block_bytes: int
    other_bytes: int


def plan_block_swap(model: nn.Module, budget_bytes: int, activation_bytes: int, prefetch: int = 1) -> SwapPlan:
    """Fewest swapped blocks so weights + ``activation_bytes`` fit ``budget_bytes``.

    Counts the non-block weights, the resident blocks, and ``1 + prefetch``
    streamed blocks in flight. Raises when even swapping every block does not fit.
    """
    blocks = model.blocks
    sizes = [tensor_bytes(b) for b in blocks]
    other = tensor_bytes(model) - sum(sizes)
    in_flight = (1 + prefetch) * max(sizes)
    for n in range(len(blocks) + 1):
        resident = sum(sizes[: len(blocks) - n])
        need = other + resident + (in_flight if n else 0) + activation_bytes
        if need <= budget_bytes:
            return SwapPlan(n, resident, max(sizes), other)
    raise ValueError(
        f"Even with all {len(blocks)} blocks swapped the model needs about "
        f"{(other + in_flight + activation_bytes) / 2**30:.1f} GiB, over the budget of {budget_bytes / 2**30:.1f} GiB; "
        "lower the resolution or frame count, or use fp8 weights."
    )


def estimate_activation_bytes(tokens: int, dim: int, ffn_dim: int, context_tokens: int = 512, dtype: torch.dtype = torch.bfloat16) -> int:
    """Rough peak activation memory of one Wan block at inference.

    Hidden state, its float32 LayerNorm copy, q/k/v and their float32 RoPE copies,
    the attention output and the FFN hidden layer before and after GELU; plus
    the text context. Conservative on purpose: used to leave headroom.
    """
    b = torch.finfo(dtype).bits // 8
    per_token = dim * (6 * b + 2 * 4 + 2 * 4) + 2 * ffn_dim * b
    return int(tokens * per_token + context_tokens * dim * 4 * b)


class Placement:
    """Where a once-per-run model lives: ``device`` while used, ``offload_device`` otherwise.

    ``with placement.use() as module:`` moves it in (if needed) and, when
    ``offload_after_use`` is on, back out afterwards even if the call raised.
    ``manager`` (optional) is asked to do the moves instead of ``module.to``: a
    host such as ComfyUI can then evict other models first and reclaim this one
    later. It has ``move(placement, target_device) -> bool`` (False = not handled).
    """

    def __init__(self, module: nn.Module, device: torch.device | str, offload_device: torch.device | str = "cpu", offload_after_use: bool = True, dtype: torch.dtype | None = None, manager=None):
        self.module = module
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self.offload_after_use = bool(offload_after_use)
        self.dtype = dtype
        self.manager = manager
        self.moves = 0
        first = next(iter(module.parameters()), None)
        self._where = first.device if first is not None else self.offload_device

    @property
    def on_device(self) -> bool:
        return _same_device(self._where, self.device)

    def _move(self, target: torch.device) -> None:
        loading = _same_device(target, self.device) and not _same_device(self.device, self.offload_device)
        if self.manager is not None and loading:
            # Always ask the host: it may have evicted the model since the last call.
            if self.manager.move(self, target):
                self._where = target
                self.moves += 1
                return
        if _same_device(self._where, target):
            return
        if self.manager is None or not self.manager.move(self, target):
            self.module.to(target)
        self._where = target
        self.moves += 1

    @contextlib.contextmanager
    def use(self) -> Iterator[nn.Module]:
        self._move(self.device)
        try:
            yield self.module
        finally:
            if self.offload_after_use:
                self._move(self.offload_device)

    def release(self) -> None:
        """Move the model off the compute device and free cached accelerator memory."""
        self._move(self.offload_device)
        empty_cache(self.device)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` are the same place when 0 is the current device."""
    if a.type != b.type:
        return False
    if a.type != "cuda" or a.index == b.index:
        return True
    current = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


def empty_cache(device: torch.device | str | None = None) -> None:
    """Return cached CUDA blocks to the driver (no-op elsewhere)."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.empty_cache()


def available_memory() -> int | None:
    """Bytes of memory the OS can still give (Linux MemAvailable; psutil elsewhere; None if unknown).
    Used to refuse or shrink host-memory allocations before they are made."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - unknown platform: no check
        return None
