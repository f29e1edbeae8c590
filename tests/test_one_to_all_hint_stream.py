"""The pose hint encoder run a few frames at a time equals the whole-video pass and holds far less."""
import sys
from pathlib import Path

import pytest
import torch

from poseanimate.models.one_to_all.conv_encoders import PoseHintEncoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from tensor_memory import TensorMemory  # noqa: E402


def _encoder(out_channels=24, seed=0):
    torch.manual_seed(seed)
    enc = PoseHintEncoder(out_channels=out_channels).eval().requires_grad_(False)
    with torch.no_grad():  # non-trivial GroupNorm affine parameters
        for name, p in enc.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p) if name.endswith("weight") else 0.2 * torch.randn_like(p))
    return enc


@pytest.mark.parametrize("frames", [1, 5, 9, 17, 33])
def test_chunked_equals_whole_video(frames):
    enc = _encoder()
    video = torch.rand(1, 3, frames, 32, 48, generator=torch.Generator().manual_seed(frames)) * 2 - 1
    with torch.no_grad():
        enc.chunk_frames = 0
        whole = enc(video)
        assert whole.shape == (1, 24, (frames - 1) // 4 + 1, 2, 3)
        for chunk in ((1, 2, 3, 8) if frames < 10 else (3, 8)):
            enc.chunk_frames = chunk
            out = enc(video)
            assert out.shape == whole.shape
            assert (out - whole).abs().max() <= 1e-5 * max(1.0, float(whole.abs().max())), chunk


def test_chunked_equals_whole_video_in_bf16_and_batched():
    enc = _encoder().to(torch.bfloat16)
    video = torch.rand(2, 3, 13, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        enc.chunk_frames = 0
        whole = enc(video).float()
        enc.chunk_frames = 4
        out = enc(video).float()
    assert out.shape == whole.shape == (2, 24, 4, 2, 2)
    assert (out - whole).abs().max() <= 0.05 * float(whole.abs().max())  # bf16 rounding only


def test_chunked_peak_memory_at_real_size_on_meta():
    """480x832, 81 frames, the released widths (5120 out): peak live tensors chunked / whole <= 0.35."""
    with torch.device("meta"):
        enc = PoseHintEncoder(out_channels=5120).eval().requires_grad_(False)
        video = torch.empty(1, 3, 81, 480, 832)
    peaks = {}
    for chunk in (0, PoseHintEncoder.chunk_frames):
        enc.chunk_frames = chunk
        with torch.no_grad(), TensorMemory(exclude=[enc, video]) as mem:
            out = enc(video)
        assert out.shape == (1, 5120, 21, 30, 52)
        peaks[chunk] = mem.peak["meta"]
        del out
    ratio = peaks[PoseHintEncoder.chunk_frames] / peaks[0]
    assert ratio <= 0.35, ratio


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (real allocator peaks at 480x832 x 81 frames)")
def test_chunked_peak_memory_and_result_on_cuda():
    """The same figure from CUDA's allocator (kernel workspaces included), and the same output."""
    torch.manual_seed(0)
    enc = PoseHintEncoder(out_channels=5120).cuda().eval().requires_grad_(False)
    video = torch.rand(1, 3, 81, 480, 832, device="cuda") * 2 - 1
    peaks, outs = {}, {}
    for chunk in (0, PoseHintEncoder.chunk_frames):
        enc.chunk_frames = chunk
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.no_grad():
            outs[chunk] = enc(video)
        torch.cuda.synchronize()
        peaks[chunk] = torch.cuda.max_memory_allocated() - base
    assert peaks[PoseHintEncoder.chunk_frames] / peaks[0] <= 0.35
    assert (outs[0] - outs[PoseHintEncoder.chunk_frames]).abs().max() <= 1e-4  # TF32/cuDNN algorithm choices
