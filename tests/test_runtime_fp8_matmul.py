"""Scaled fp8 matmul (torch._scaled_mm, which torch also runs on CPU): matches its own float
emulation, stays close to the weight-only path, and falls back where the shapes do not fit."""
import pytest
import torch

from poseanimate.models.runtime.fp8 import FP8Linear, fp8_max, scaled_mm_supported, set_fp8_compute


def _layer(in_f=64, out_f=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(in_f, out_f)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_f, in_f, generator=g) * 0.05)
        linear.bias.copy_(torch.randn(out_f, generator=g) * 0.1)
    return FP8Linear.from_linear(linear)


def test_scaled_mm_matches_emulation_and_weight_only_path():
    layer = _layer()
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    layer.compute = "upcast"
    upcast = layer(x).float()
    layer.compute = "scaled_mm"
    scaled = layer(x).float()
    # emulation: the same activation quantization, then a float32 matmul of the dequantized operands
    rows = x.reshape(-1, 64).float()
    s = rows.abs().amax() / fp8_max(torch.float8_e4m3fn)
    xq = (rows / s).to(torch.float8_e4m3fn).float() * s
    w = layer.weight.float() * layer.scale_weight
    expected = (xq @ w.t() + layer.bias.float()).reshape(2, 5, 48)
    assert torch.allclose(scaled, expected, atol=2e-2, rtol=1e-2), (scaled - expected).abs().max()
    assert (scaled - upcast).abs().max() < 0.05 * upcast.abs().max()
    assert scaled.shape == upcast.shape == (2, 5, 48)


def test_shapes_off_16_and_e5m2_fall_back_to_weight_only():
    layer = _layer(in_f=40, out_f=24)
    x = torch.randn(3, 40, dtype=torch.bfloat16)
    layer.compute = "scaled_mm"
    assert not layer._scaled_mm_ok(x)
    w = layer.weight.to(torch.bfloat16) * layer.scale_weight.to(torch.bfloat16)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, w, layer.bias.to(torch.bfloat16)))


def test_auto_uses_scaled_mm_only_on_fp8_gpus_and_set_compute_checks():
    layer = _layer()
    assert not layer._scaled_mm_ok(torch.zeros(1, 64, dtype=torch.bfloat16))  # auto on CPU: weight-only
    model = torch.nn.Sequential(layer, torch.nn.Linear(48, 4))
    assert set_fp8_compute(model, "upcast") == 1 and layer.compute == "upcast"
    with pytest.raises(ValueError, match="fp8 compute"):
        set_fp8_compute(model, "int8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_scaled_mm_on_gpu():
    layer = _layer(in_f=256, out_f=128).cuda()
    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    layer.compute = "upcast"
    upcast = layer(x).float()
    layer.compute = "auto"
    out = layer(x).float()
    assert layer._scaled_mm_ok(x) == scaled_mm_supported("cuda")
    assert (out - upcast).abs().max() < 0.05 * upcast.abs().max()
