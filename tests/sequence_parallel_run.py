"""Tiny full denoising runs (with guidance) of One-to-All and UniAnimate, in one process or split
over N gloo processes with models/wan/sequence_parallel.py; used by the sequence-parallel test
and benchmarks/headless.py (sp_max_abs).

One-to-All's tiny model has 1 head, so 2 ranks take the ring path; UniAnimate's has 2 heads, so
2 ranks take the Ulysses path. Both runs are short (2 steps, a few latent frames).
"""
import os
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from pack_loader import load_pack  # noqa: E402

load_pack()

from poseanimate.models.wan import sequence_parallel  # noqa: E402


def one_to_all(sp=None, frames: int = 10, size=(32, 32)) -> torch.Tensor:
    """Final latents of a 10-frame run: 2 steps, image + pose guidance (three model calls a step)."""
    import one_to_all_tiny
    from test_one_to_all_pipeline import LinearVAE, images

    from poseanimate.models.one_to_all import pipeline
    from poseanimate.models.wan.text import WanPromptEmbeds

    model = one_to_all_tiny.tiny_one_to_all()
    if sp is not None:
        sequence_parallel.enable(model, sp)
    ref, poses, ref_pose = images(frames, size[1], size[0])
    dim = one_to_all_tiny.TINY_ONE_TO_ALL["text_dim"]
    g = torch.Generator().manual_seed(2)
    text = WanPromptEmbeds(torch.randn(1, 512, dim, generator=g), torch.randn(1, 512, dim, generator=g), "", "", 3, 5)
    result = pipeline.sample_one_to_all(pipeline.OneToAllModel(model, torch.float32, "cpu"), LinearVAE(), text, ref,
                                        poses, ref_pose, resolution=size, steps=2, image_guidance_scale=2.0,
                                        pose_guidance_scale=1.5, seed=3)
    return torch.cat([z.flatten() for z in result.chunk_latents])


def unianimate(sp=None) -> torch.Tensor:
    """Final latents of the UniAnimate pipeline test's short run: 2 steps, cfg 1.5."""
    import test_unianimate_pipeline as t

    from poseanimate.models.unianimate.transformer import load_unianimate

    model, encoders = load_unianimate(t.REF / "tiny_base_weights.safetensors", t.REF / "tiny_lora.safetensors",
                                      dtype=torch.float32, device="cpu", weight_dtype=None, lora_scale=1.0, merge=True,
                                      num_attention_heads=t.CONFIG["model"]["num_heads"])
    if sp is not None:
        sequence_parallel.enable(model, sp)
    return t._generate((model, encoders)).latents.flatten()


FAMILIES = {"one_to_all": one_to_all, "unianimate": unianimate}


def _worker(rank, world, port, out, families):
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        sp = sequence_parallel.SequenceParallel()
        results = {}
        for name in families:
            before = sp.split_attention_calls
            results[name] = FAMILIES[name](sp)
            results[name + "_split_calls"] = sp.split_attention_calls - before
        if rank == 0:
            torch.save(results, out)
        dist.barrier()  # no rank tears gloo down while its peer may still be talking to it
    finally:
        dist.destroy_process_group()


def run_parallel(families=tuple(FAMILIES), world: int = 2) -> dict:
    """{family: final latents} of rank 0 of a ``world``-process gloo run."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.pt")
        mp.spawn(_worker, args=(world, port, out, tuple(families)), nprocs=world)
        return torch.load(out)


def max_abs_difference(world: int = 2) -> dict:
    """{family: max |N-process - 1-process|} over the final latents."""
    parallel = run_parallel(world=world)
    return {name: float((parallel[name] - FAMILIES[name]()).abs().max()) for name in FAMILIES}


if __name__ == "__main__":
    print(max_abs_difference())
