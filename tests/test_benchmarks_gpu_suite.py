"""`benchmarks/gpu_suite.py --smoke`: the GPU command's code on tiny CPU models prints every figure."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = [
    "bf16_matmul_tflops", "one_to_all_14b_s_per_call_480p", "one_to_all_14b_mfu", "one_to_all_14b_peak_vram_gib",
    "one_to_all_14b_speedup_compile", "one_to_all_14b_compile_peak_vram_gib", "blockswap_24gb_slowdown",
    "blockswap_24gb_peak_vram_gib", "gguf_q8_s_per_call_ratio", "gguf_q8_peak_vram_gib",
    "one_to_all_14b_speedup_fp8", "fp8_peak_vram_gib", "unianimate_14b_s_per_call_480p",
    "unianimate_14b_peak_vram_gib", "animatediff_s_per_frame_512", "animatediff_peak_vram_gib",
]


def test_gpu_suite_smoke_prints_every_figure():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--smoke"], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    values = dict(re.findall(r"^([a-z0-9_]+): (\S+)$", run.stdout, flags=re.M))
    missing = [name for name in FIGURES if name not in values]
    assert not missing, f"figures not printed: {missing}\n{run.stdout}"
    for name in FIGURES:
        value = float(values[name])
        assert value == value and value >= 0, (name, value)  # a number, not NaN
    for name in ("one_to_all_14b_s_per_call_480p", "unianimate_14b_s_per_call_480p", "animatediff_s_per_frame_512",
                 "blockswap_24gb_slowdown", "gguf_q8_s_per_call_ratio", "one_to_all_14b_speedup_fp8"):
        assert float(values[name]) > 0, name
    assert int(values["blockswap_24gb_blocks"]) >= 1  # blocks really streamed


def test_analytic_one_to_all_matmul_flops_match_the_flop_counter():
    """The MFU numerator: the analytic matmul count agrees with torch's FLOP counter (addmm / mm)
    on a small One-to-All model (attention products are SDPA kernels the counter may not see)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_suite as G
    from poseanimate.models.one_to_all.transformer import OneToAllTransformer

    cfg = dict(G.TINY["one_to_all"], refextractor_layers=2)
    model = G.random_model(OneToAllTransformer, cfg, torch.device("cpu"), torch.float32)
    kw = G.one_to_all_inputs(cfg, 9, 64, 96, torch.device("cpu"), torch.float32)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**kw)
    counted = sum(v for k, v in counter.get_flop_counts()["Global"].items() if str(k) in ("aten.addmm", "aten.mm"))
    analytic = G.one_to_all_flops(cfg, 3, 64, 96)["linear"]
    assert abs(analytic - counted) / counted < 0.02, (analytic, counted)
