"""Sequence parallel for the Wan transformers: one video's tokens split over the ranks of a
torch.distributed process group (one GPU each; gloo on CPU).

Each rank keeps a contiguous 1/N of the video tokens through every block; only attention needs
the other ranks, through yunchang (the sequence-parallel engine xDiT uses):

* Ulysses: q/k/v ``[B, S/N, H, D]`` go through yunchang's all-to-all (``SeqAllToAll4D``) to
  ``[B, S, H/N, D]``, attention runs on the whole sequence for a slice of the heads with the
  pack's backend (SDPA / flash-attn / sage), and the inverse all-to-all returns ``[B, S/N, H, D]``.
* Where the heads do not divide by N, the ranks form ``ulysses x ring`` groups (ulysses =
  gcd(heads, N), yunchang's ``set_seq_parallel_pg`` layout) and K/V blocks travel round the ring
  (yunchang's ``RingComm``), merged exactly by their log-sum-exp (yunchang's ``update_out_and_lse``).

Attention whose keys are not split (text / CLIP cross-attention, One-to-All's reference K/V, the
reference extractor) stays local: it uses ``backend.local``. Tokens must divide by N (the error
says which sizes would). Inference only (no autograd through the collectives).
"""
from __future__ import annotations

import math
import weakref

import torch
import torch.distributed as dist

from ..runtime.attention import AttentionBackend, attention
from .attention import WanAttentionProcessor


class SequenceParallel:
    """The split of one sequence over the ranks of ``group`` (default: the world)."""

    def __init__(self, group=None):
        if not dist.is_initialized():
            raise RuntimeError("sequence parallel needs torch.distributed initialised (launch with torchrun; "
                               "gloo on CPU, nccl on GPUs)")
        self.group = group or dist.group.WORLD
        self.world = dist.get_world_size(self.group)
        self.rank = dist.get_rank(self.group)
        self._groups: dict[int, tuple] = {}
        self.split_attention_calls = 0  # attention calls on split tokens (tests check it ran)

    # ---------------------------------------------------------------- tokens
    def _span(self, seq: int) -> tuple[int, int]:
        if seq % self.world:
            raise ValueError(f"sequence parallel over {self.world} ranks needs a token count divisible by "
                             f"{self.world}; this video has {seq} tokens (latent frames x (height/16) x (width/16)): "
                             "change the frame count or the size, or use a rank count that divides it")
        size = seq // self.world
        return self.rank * size, size

    def shard(self, t: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's contiguous part of ``t`` along ``dim``."""
        start, size = self._span(t.shape[dim])
        return t.narrow(dim, start, size).contiguous()

    def gather(self, t: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """The whole sequence back from every rank's part (on every rank)."""
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    def shard_spans(self, spans: list, seq: int) -> list:
        """``[(start, end, value)]`` in whole-sequence positions -> this rank's local positions."""
        lo, size = self._span(seq)
        out = []
        for start, end, value in spans:
            s, e = max(start, lo) - lo, min(end, lo + size) - lo
            if s < e:
                out.append((s, e, value))
        return out

    # ---------------------------------------------------------------- attention
    def groups(self, heads: int) -> tuple:
        """(ulysses group, ring group, ulysses degree, ring degree) for ``heads`` heads; made once per
        head count, collectively (every rank must enable the same models in the same order)."""
        if heads not in self._groups:
            import yunchang
            from yunchang.globals import PROCESS_GROUP

            if self.group is not dist.group.WORLD:
                raise ValueError("sequence parallel with yunchang's groups runs over the whole world group")
            ulysses = math.gcd(heads, self.world)
            ring = self.world // ulysses
            yunchang.set_seq_parallel_pg(ulysses, ring, self.rank, self.world)
            self._groups[heads] = (PROCESS_GROUP.ULYSSES_PG, PROCESS_GROUP.RING_PG, ulysses, ring)
        return self._groups[heads]

    def backend(self, inner: AttentionBackend | None = None) -> "SequenceParallelBackend":
        return SequenceParallelBackend(self, inner or AttentionBackend())


def _block_attention(q, k, v):
    """Attention of one K/V block with its float32 log-sum-exp: (out [B, S, H, D], lse [B, H, S])."""
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(qt, kt, vt)[:2]
    elif q.is_cuda:  # float32 on CUDA: no fused kernel returns the lse
        scores = (qt.float() @ kt.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
        lse = scores.logsumexp(-1)
        out = (scores - lse.unsqueeze(-1)).exp() @ vt.float()
    else:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qt, kt, vt)[:2]
    return out.transpose(1, 2).to(q.dtype), lse.float()


class SequenceParallelBackend(AttentionBackend):
    """An attention backend for tensors split along the sequence (see the module doc)."""

    def __init__(self, sp: SequenceParallel, inner: AttentionBackend):
        super().__init__(f"sequence_parallel[{inner.name}]", self._attention)
        self.sp, self.local = sp, inner

    def applies(self, q: torch.Tensor) -> bool:
        return True

    def _attention(self, q, k, v):
        from yunchang.comm.all_to_all import SeqAllToAll4D

        ulysses_pg, ring_pg, ulysses, ring = self.sp.groups(q.shape[2])
        self.sp.split_attention_calls += 1
        if ulysses > 1:  # [B, S/N, H, D] -> [B, S/ring, H/ulysses, D]
            q, k, v = (SeqAllToAll4D.apply(ulysses_pg, t.contiguous(), 2, 1, False) for t in (q, k, v))
        out = self._ring(ring_pg, q, k, v) if ring > 1 else attention(q, k, v, self.local)
        if ulysses > 1:
            out = SeqAllToAll4D.apply(ulysses_pg, out.contiguous(), 1, 2, False)
        return out

    @staticmethod
    def _ring(group, q, k, v):
        from yunchang.ring.utils import RingComm, update_out_and_lse

        comm = RingComm(group)
        out = lse = None
        k, v = k.contiguous(), v.contiguous()
        for step in range(comm.world_size):
            if step + 1 < comm.world_size:
                next_k, next_v = comm.send_recv(k), comm.send_recv(v)
                comm.commit()
            block_out, block_lse = _block_attention(q, k, v)
            out, lse = update_out_and_lse(out, lse, block_out, block_lse)
            if step + 1 < comm.world_size:
                comm.wait()
                k, v = next_k, next_v
        return out.to(q.dtype)


# -------------------------------------------------------------------- models
def enable(model: torch.nn.Module, sp: SequenceParallel) -> None:
    """Split ``model``'s tokens over ``sp``'s ranks from its next forward on.

    A model that supports it natively (One-to-All: ``supports_sequence_parallel``) reads
    ``model.poseanimate_sequence_parallel``; a diffusers Wan transformer (UniAnimate, plain Wan)
    gets hooks where diffusers' own context-parallel plan splits and gathers: the RoPE tables and
    the first block's input are split, the output norm's input gathered, and the self-attention
    layers get the sequence-parallel backend.
    """
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

    disable(model)
    heads = model.config.num_attention_heads
    sp.groups(heads)  # collective: every rank creates the groups now, not inside a forward
    if getattr(model, "supports_sequence_parallel", False):
        model.poseanimate_sequence_parallel = sp
        return
    if not isinstance(model, WanTransformer3DModel):
        raise TypeError(f"sequence parallel supports Wan transformers, not {type(model).__name__}")
    handles = [
        model.rope.register_forward_hook(lambda m, a, out: tuple(sp.shard(t) for t in out)),
        model.blocks[0].register_forward_pre_hook(lambda m, args: (sp.shard(args[0]),) + tuple(args[1:])),
        model.norm_out.register_forward_pre_hook(lambda m, args: (sp.gather(args[0]),) + tuple(args[1:])),
    ]
    processors = []
    for block in model.blocks:
        processors.append((block.attn1, block.attn1.processor))
        block.attn1.set_processor(_SelfAttention(sp, model))
    model._poseanimate_sp_undo = (handles, processors)
    model.poseanimate_sequence_parallel = sp


class _SelfAttention(WanAttentionProcessor):
    """Self-attention on split tokens: the model's current backend (install_attention may change it
    at each run, and leaves this subclass in place) wrapped for sequence parallel."""

    def __init__(self, sp: SequenceParallel, model: torch.nn.Module):
        super().__init__()
        self.sp, self.model = sp, weakref.ref(model)

    def __call__(self, attn, hidden_states, *args, **kwargs):
        self.backend = self.sp.backend(getattr(self.model(), "poseanimate_attention", None))
        return super().__call__(attn, hidden_states, *args, **kwargs)


def disable(model: torch.nn.Module) -> None:
    """Back to single-process forwards."""
    handles, processors = getattr(model, "_poseanimate_sp_undo", ((), ()))
    for h in handles:
        h.remove()
    for attn, processor in processors:
        attn.set_processor(processor)
    for name in ("_poseanimate_sp_undo", "poseanimate_sequence_parallel"):
        if hasattr(model, name):
            delattr(model, name)
