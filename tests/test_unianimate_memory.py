"""UniAnimate keeps one window on the accelerator: the whole video's latents, the window average and
the private states live on the CPU, each window's slice visits the device for its step.

The accelerator is played by the meta device (shapes only, no memory): a dispatch mode hands meta
tensors back to the CPU as zeros, so the real ``denoise`` runs end to end with the real tiny
transformer placed on "the device", and every tensor the device ever holds is seen."""
import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from paths import REFERENCE
from poseanimate.models.unianimate import pipeline as pl
from poseanimate.models.unianimate.transformer import load_unianimate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from tensor_memory import TensorMemory  # noqa: E402

REF = REFERENCE / "unianimate_dit"
CONFIG = json.loads((REF / "tiny_config.json").read_text())


class MetaAccelerator(TorchDispatchMode):
    """The meta device as a stand-in accelerator: copies back to the CPU become CPU zeros; records
    the shape of every tensor created on the device."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and args[0].is_meta and kwargs.get("device") == torch.device("cpu"):
            return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        out = func(*args, **kwargs)
        self.shapes += [tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.is_meta]
        return out


@pytest.fixture(scope="module")
def meta_model():
    model, _ = load_unianimate(REF / "tiny_base_weights.safetensors", REF / "tiny_lora.safetensors",
                               dtype=torch.float32, device="cpu", weight_dtype=None, lora_scale=1.0, merge=True,
                               num_attention_heads=CONFIG["model"]["num_heads"])
    return model.to("meta")


def _conditions(window_latent, h, w, text_dim, clip_dim):
    g = torch.Generator().manual_seed(0)
    return pl.Conditions(torch.randn(1, 8, text_dim, generator=g), torch.randn(1, 8, text_dim, generator=g),
                         torch.randn(1, 257, clip_dim, generator=g), torch.randn(1, 20, window_latent, h, w, generator=g),
                         torch.zeros(3, 1, 1, 1))


def test_only_window_slices_visit_the_device(meta_model):
    text_dim = meta_model.condition_embedder.text_embedder.linear_1.in_features
    clip_dim = meta_model.condition_embedder.image_embedder.norm1.normalized_shape[0]
    n, h, w, size, overlap = 10, 4, 4, 4, 2
    dim = meta_model.blocks[0].attn1.to_q.in_features
    tokens = lambda window: torch.zeros(1, len(window.frames) * (h // 2) * (w // 2), dim)  # noqa: E731
    noise = torch.randn(1, 16, n, h, w, generator=torch.Generator().manual_seed(1))
    plan = pl.win.plan_windows(n, size, overlap)
    assert len(plan) > 2 and any(wd.private for wd in plan)
    calls = []
    with MetaAccelerator() as device, TensorMemory(exclude=[meta_model]) as mem:
        latents = pl.denoise(meta_model, tokens, _conditions(size, h, w, text_dim, clip_dim), noise, steps=2,
                             cfg=1.5, context_size=size, context_overlap=overlap, device="meta",
                             callback=calls.append)
    assert latents.device.type == "cpu" and latents.shape == noise.shape
    assert len(calls) == 2 * len(plan)
    # every latent-shaped tensor the device held was one window long, never the whole video
    latent_like = [s for s in device.shapes if len(s) == 5 and s[1] == 16 and s[3:] == (h, w)]
    assert latent_like and max(s[2] for s in latent_like) == size
    assert mem.live["meta"] == 0, "tensors were left on the device after the run"
    whole = noise.numel() * 4
    assert mem.peak["cpu"] >= whole  # the whole video's latents (and their average) live on the CPU
