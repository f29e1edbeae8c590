"""AnimateDiff sampling through ComfyUI's own samplers and schedules (nodes/host.py), in ComfyUI's python.

Opt-in like the harness (``COMFYUI_DIR``): a script imports ComfyUI's ``comfy.samplers`` (no
server) next to the pack and compares, on an analytic denoiser (data ~ N(mu, std^2), whose
exact x0-prediction is known):
- the built-in schedules and samplers against ComfyUI's (same sigmas; same seed -> same result,
  which for euler_ancestral and lcm means the same per-step noise);
- every sampler ComfyUI offers runs through ``host.ComfySampling`` (CFG++ ones read the cond /
  uncond parts) and lands near the data, with step callbacks 0..steps-1.
"""
import json
import subprocess
from pathlib import Path

import pytest

from comfyui_server import ENABLE_HINT, comfyui_location

ROOT = Path(__file__).resolve().parents[1]
LOCATION = comfyui_location()
pytestmark = pytest.mark.skipif(LOCATION is None, reason=ENABLE_HINT)

PROBE = r'''
import json, sys
COMFY, ROOT = sys.argv[1], sys.argv[2]
sys.argv = [sys.argv[0], "--cpu"]
sys.path[:0] = [COMFY, ROOT]
import comfy.options
comfy.options.enable_args_parsing()
import torch
from pack_loader import load_pack
load_pack()
from poseanimate.models.animatediff import pipeline as pl, samplers as sm
from poseanimate.nodes import host

MU, STD, CFG = 0.3, 0.5, 1.5
comfy, ours = host.ComfySampling(), pl.BuiltinSampling()
out = {"samplers": comfy.samplers, "schedulers": comfy.schedulers, "sigmas": {}, "same": {}, "runs": {}}


def denoiser(x, sigma, parts=False):
    sig = torch.as_tensor(sigma).reshape(-1)[0].to(x.dtype)
    den = (STD**2 * x + sig**2 * MU) / (STD**2 + sig**2)
    if not parts:
        return den
    cond, uncond = den, den * 0.9  # cond/uncond whose CFG at CFG=1.5 is not `den`: CFG++ must read them
    return uncond + CFG * (cond - uncond), cond, uncond


for beta in ("sqrt_linear (AnimateDiff)", "lcm"):
    sched = sm.DiscreteSchedule.from_name(beta)
    for scheduler in sm.SCHEDULERS:
        for sampler, denoise in (("euler", 1.0), ("euler", 0.7), ("uni_pc", 1.0), ("dpm_2", 0.6)):
            a = sm.get_sigmas(sched, scheduler, 6, denoise, sampler=sampler)  # the built-in schedules
            b = comfy.sigmas(sched, scheduler, 6, denoise, sampler)
            key = f"{beta}|{scheduler}|{sampler}|{denoise}"
            out["sigmas"][key] = [len(a), len(b), float((a - b).abs().max()) if len(a) == len(b) else None]

torch.manual_seed(0)
noise = torch.randn(6, 4, 3, 5)  # [F, C, h, w]
latent = torch.randn(6, 4, 3, 5) * 0.1
for name in sm.SAMPLERS:
    sched = sm.DiscreteSchedule.from_name("lcm" if name == "lcm" else "sqrt_linear (AnimateDiff)")
    sig = comfy.sigmas(sched, "normal" if name == "lcm" else "karras", 8, 0.8, name)
    a = ours.sample(name, sched, denoiser, noise, latent, sig, 123, lambda i: None, CFG)
    b = comfy.sample(name, sched, denoiser, noise, latent, sig, 123, lambda i: None, CFG)
    c = comfy.sample(name, sched, denoiser, noise, latent, sig, 124, lambda i: None, CFG)
    out["same"][name] = [float((a - b).abs().max()), float((b - c).abs().max())]

sched = sm.DiscreteSchedule.from_name("sqrt_linear (AnimateDiff)")
for name in comfy.samplers:
    steps = []
    sig = comfy.sigmas(sched, "karras", 10, 1.0, name)
    try:
        x = comfy.sample(name, sched, denoiser, noise, torch.zeros_like(noise), sig, 5, steps.append, CFG)
        out["runs"][name] = {"mean": float(x.mean()), "finite": bool(torch.isfinite(x).all()), "steps": steps,
                             "n": len(sig) - 1}
    except Exception as exc:  # reported, asserted on below
        out["runs"][name] = {"error": repr(exc)}
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    comfy_dir, python = LOCATION
    script = tmp_path_factory.mktemp("samplers") / "probe.py"
    script.write_text(PROBE)
    proc = subprocess.run([str(python), str(script), str(comfy_dir), str(ROOT)], capture_output=True, text=True,
                          timeout=600, cwd=str(comfy_dir))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, f"probe failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(line[len("RESULT "):])


def test_comfyui_offers_more_than_the_builtin_set(probe):
    assert {"dpmpp_2m_sde", "uni_pc", "euler_cfg_pp", "dpmpp_3m_sde"} <= set(probe["samplers"])
    assert {"normal", "karras", "simple", "beta", "sgm_uniform"} <= set(probe["schedulers"])


def test_builtin_sigmas_equal_comfyuis(probe):
    for key, (na, nb, diff) in probe["sigmas"].items():
        assert na == nb and diff is not None and diff < 1e-4, (key, na, nb, diff)


def test_same_seed_same_result_as_comfyui(probe):
    """Ours vs ComfyUI's own sampler functions: identical, also for the noise of euler_ancestral and lcm."""
    for name, (ours_vs_comfy, other_seed) in probe["same"].items():
        assert ours_vs_comfy < 1e-5, (name, ours_vs_comfy)
        if name in ("euler_ancestral", "lcm"):
            assert other_seed > 1e-3, name  # the seed really drives the noise


def test_every_comfyui_sampler_runs_through_host(probe):
    failed = {k: v["error"] for k, v in probe["runs"].items() if "error" in v}
    assert not failed, failed
    for name in ("dpmpp_2m_sde", "uni_pc", "euler_cfg_pp", "dpmpp_3m_sde", "heun", "ddim", "res_multistep"):
        run = probe["runs"][name]
        assert run["finite"] and abs(run["mean"] - 0.3) < 0.2, (name, run)
    for name, run in probe["runs"].items():
        if name not in ("dpm_fast", "dpm_adaptive"):  # adaptive step counts; the pipeline closes the bar
            assert run["steps"] == list(range(run["n"])), (name, run["steps"][:5], run["n"])
