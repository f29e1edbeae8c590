"""Numerical parity of ``OneToAllTransformer`` with the official One-to-All forward.

Goldens: tests/fixtures/reference/one_to_all/tiny_* (README section 2: every case output and
every variant within the ``max_abs_error`` the golden states, float32 on CPU), plus every folder
in ``POSEANIMATE_EXTRA_GOLDENS`` (os.pathsep-separated) that holds the One-to-All golden files;
each test id starts with the folder's path. All sizes come from the folder's tiny_config.json.
Also: the model built by the loader from the golden weights agrees with the config-built one, and
block swap / the attention-backend plumbing leave the output unchanged.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from poseanimate.models.one_to_all.loading import load_one_to_all, one_to_all_from_state_dict
from poseanimate.models.one_to_all.transformer import OneToAllTransformer

REF = Path(__file__).resolve().parent / "fixtures" / "reference" / "one_to_all"
FILES = ("tiny_config.json", "tiny_weights.safetensors", "tiny_inputs.json", "tiny_inputs.safetensors",
         "tiny_outputs.safetensors")


def _is_one_to_all(d: Path) -> bool:
    if not all((d / f).is_file() for f in FILES):
        return False
    cfg = json.loads((d / "tiny_config.json").read_text())
    return cfg.get("family", "one_to_all") == "one_to_all" and "refextractor" in cfg


def golden_dirs() -> list[Path]:
    dirs = [REF]
    for entry in os.environ.get("POSEANIMATE_EXTRA_GOLDENS", "").split(os.pathsep):
        if entry.strip() and _is_one_to_all(Path(entry.strip())):
            dirs.append(Path(entry.strip()))
    return dirs


def golden_cases():
    params = []
    for d in golden_dirs():
        spec = json.loads((d / "tiny_inputs.json").read_text())
        for case, cs in spec["cases"].items():
            for name, out in cs.get("outputs", {}).items():
                params.append(pytest.param(str(d), case, out["key"], {}, id=f"{d}::{case}::{name}"))
            for variant in cs.get("variants", []):
                params.append(pytest.param(str(d), case, variant["key"], variant.get("override", {}),
                                           id=f"{d}::{variant['key']}"))
    return params


def config_from_golden(cfg: dict) -> dict:
    """``OneToAllTransformer`` arguments from the golden's main / controlnet / refextractor configs."""
    main, ctrl, ref = cfg["main"], cfg["controlnet"], cfg["refextractor"]
    inner = main["num_attention_heads"] * main["attention_head_dim"]
    ref_inner = ref["num_attention_heads"] * ref["attention_head_dim"]
    assert ref_inner == inner, "refextractor width must equal the main width (its features feed add_k_proj)"
    assert tuple(ref["patch_size"]) == tuple(main["patch_size"]), "refextractor patch size differs from main"
    assert ctrl.get("inner_dim", inner) == inner, "controlnet width differs from main"
    assert ref.get("eps", main["eps"]) == main["eps"] and ctrl.get("eps", main["eps"]) == main["eps"]
    return dict(
        patch_size=tuple(main["patch_size"]), num_attention_heads=main["num_attention_heads"],
        attention_head_dim=main["attention_head_dim"], in_channels=main["in_channels"],
        out_channels=main["out_channels"], text_dim=main["text_dim"], freq_dim=main["freq_dim"],
        ffn_dim=main["ffn_dim"], num_layers=main["num_layers"], cross_attn_norm=main["cross_attn_norm"],
        qk_norm=main["qk_norm"], eps=main["eps"], rope_max_seq_len=main["rope_max_seq_len"],
        controlnet_layers=ctrl.get("num_layers", 4), controlnet_heads=ctrl.get("num_attention_heads", 40),
        controlnet_ffn_dim=ctrl.get("ffn_dim", 13824),
        refextractor_layers=ref["num_layers"], refextractor_heads=ref["num_attention_heads"],
        refextractor_ffn_dim=ref["ffn_dim"], refextractor_freq_dim=ref["freq_dim"],
        refextractor_in_channels=ref["in_channels"], ref_repeat=ref.get("ref_repeat", True))


@functools.lru_cache(maxsize=4)
def golden_model(d: str) -> OneToAllTransformer:
    cfg = json.loads((Path(d) / "tiny_config.json").read_text())
    model = OneToAllTransformer(**config_from_golden(cfg)).eval().requires_grad_(False)
    weights = {k: v.float() for k, v in load_file(str(Path(d) / "tiny_weights.safetensors")).items()}
    model.load_state_dict(weights, strict=True)
    return model


@functools.lru_cache(maxsize=4)
def golden_data(d: str):
    spec = json.loads((Path(d) / "tiny_inputs.json").read_text())
    return spec, load_file(str(Path(d) / "tiny_inputs.safetensors")), load_file(str(Path(d) / "tiny_outputs.safetensors"))


def tolerance(d: str) -> float:
    spec = golden_data(d)[0]
    tol = spec.get("tolerance", {}).get("max_abs_error")
    if tol is None:
        tol = json.loads((Path(d) / "tiny_config.json").read_text())["tolerance"]["max_abs_error"]
    return float(tol)


def call_kwargs(d: str, case: str, override: dict) -> dict:
    spec, inputs, _ = golden_data(d)
    kwargs = {}
    for name, value in spec["cases"][case]["forward_kwargs"].items():
        kwargs[name] = inputs[value].float() if isinstance(value, str) and value in inputs else value
    kwargs.update(override)
    kwargs["return_dict"] = False
    return kwargs


def _debug_report(model, d: str, case: str, kwargs: dict) -> str:
    """Max error of each debug tensor the golden has (prefix, reference features, pose hints,
    block outputs), to locate a mismatch."""
    _, _, outputs = golden_data(d)
    seen = {}
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(f"blocks.{i}", o))
             for i, b in enumerate(model.blocks)]
    hooks += [b.register_forward_hook(lambda m, a, o, j=j: seen.__setitem__(f"controlnet.blocks.{j}", o))
              for j, b in enumerate(model.controlnet.blocks)]
    hooks.append(model.image_to_cond.register_forward_hook(lambda m, a, o: seen.__setitem__("image_prefix", o)))
    hooks.append(model.refextractor.register_forward_hook(
        lambda m, a, o: seen.update({f"ref_samples.{k}": s for k, s in enumerate(o[0])})))
    hooks.append(model.input_hint_block.register_forward_hook(  # called for the video, then the image
        lambda m, a, o: seen.__setitem__("hint_image_pose" if "hint_pose_video" in seen else "hint_pose_video", o)))
    try:
        with torch.no_grad():
            model(**kwargs)
    finally:
        for h in hooks:
            h.remove()
    lines = [f"{name}: {(seen[name] - outputs[f'{case}.debug.{name}']).abs().max().item():.3g}"
             for name in seen if f"{case}.debug.{name}" in outputs]
    return "; ".join(lines)


@pytest.mark.parametrize("d, case, key, override", golden_cases())
def test_golden_forward(d, case, key, override):
    model = golden_model(d)
    expected = golden_data(d)[2][key]
    kwargs = call_kwargs(d, case, override)
    with torch.no_grad():
        out = model(**kwargs)[0]
    assert out.shape == expected.shape
    err = (out - expected.float()).abs().max().item()
    tol = tolerance(d)
    report = "" if err <= tol else _debug_report(model, d, case, kwargs)
    assert err <= tol, f"{key}: max abs error {err:.3g} > {tol} ({report})"


def test_loader_reads_the_golden_sizes_from_shapes():
    """load_one_to_all on the golden weights file builds the same model as tiny_config.json."""
    d = str(REF)
    cfg = json.loads((REF / "tiny_config.json").read_text())
    loaded = load_one_to_all(REF / "tiny_weights.safetensors", dtype=torch.float32,
                             num_attention_heads=cfg["main"]["num_attention_heads"])
    expected = config_from_golden(cfg)
    for key, value in expected.items():
        assert loaded.config[key] == value, key
    kwargs = call_kwargs(d, "case1", {})
    with torch.no_grad():
        assert torch.equal(loaded(**kwargs)[0], golden_model(d)(**kwargs)[0])


def test_block_swap_and_backend_plumbing_keep_the_output():
    """Block swap (CPU 'device': same hooks, plain copies) and the installed SDPA backend give
    bit-identical outputs; the reference processors are not replaced by the stock one."""
    from poseanimate.models.wan.attention import WanAttentionProcessor
    from poseanimate.models.wan.model import prepare_transformer, release_transformer

    d = str(REF)
    base = golden_model(d)
    model = OneToAllTransformer(**dict(base.config)).eval().requires_grad_(False)
    model.load_state_dict(base.state_dict())
    kwargs = call_kwargs(d, "case1", {})
    with torch.no_grad():
        expected = base(**kwargs)[0]
        prepare_transformer(model, "cpu", attention_backend="sdpa", blocks_to_swap=2)
        try:
            assert model.poseanimate_block_swap.num_swapped == 2
            assert all(not isinstance(b.attn1.processor, WanAttentionProcessor) for b in model.blocks)
            assert all(isinstance(b.attn2.processor, WanAttentionProcessor) for b in model.blocks)
            out = model(**kwargs)[0]
            assert model.poseanimate_block_swap.stats["loads"] >= 2
        finally:
            release_transformer(model)
            model.poseanimate_block_swap.detach()
    assert torch.equal(out, expected)


def test_zero_scale_skips_the_pose_branch_exactly():
    """conditioning_scale 0 (the uncond call) skips the pose encoder and control blocks; the
    result equals the official 'add 0 * residual' path, which the golden's case2 pins."""
    d = str(REF)
    model = golden_model(d)
    calls = []
    hook = model.input_hint_block.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            out = model(**call_kwargs(d, "case2", {}))[0]
    finally:
        hook.remove()
    assert not calls
    assert (out - golden_data(d)[2]["case2.output"]).abs().max().item() <= tolerance(d)


def test_bad_inputs_get_clear_errors():
    d = str(REF)
    model = golden_model(d)
    kwargs = call_kwargs(d, "case1", {})
    with pytest.raises(ValueError, match="image_latents"):
        model(**{**kwargs, "image_latents": None})
    with pytest.raises(ValueError, match="pose tokens"):
        model(**{**kwargs, "controlnet_cond": kwargs["controlnet_cond"][:, :, :4]})
    with pytest.raises(ValueError, match="image_pose"):
        model(**{**kwargs, "image_pose": None})


def test_debug_report_locates_a_mismatch():
    """The aid used in failure messages compares every intermediate the golden stores."""
    d = str(REF)
    report = _debug_report(golden_model(d), d, "case1", call_kwargs(d, "case1", {}))
    names = [part.split(":")[0] for part in report.split("; ")]
    assert {"image_prefix", "ref_samples.0", "hint_pose_video", "hint_image_pose", "blocks.2",
            "controlnet.blocks.1"} <= set(names)
    assert all(float(part.split(": ")[1]) <= tolerance(d) for part in report.split("; ")), report


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_golden_in_bf16_on_cuda():
    """The bf16 GPU path (backend of the installed attention) stays close to the fp32 golden."""
    from poseanimate.models.wan.attention import install_attention

    d = str(REF)
    base = golden_model(d)
    model = one_to_all_from_state_dict(dict(base.state_dict()), dtype=torch.bfloat16, device="cuda",
                                       num_attention_heads=base.config.num_attention_heads)
    install_attention(model, "auto")
    for case in ("case1", "case2"):
        kwargs = {k: v.cuda() if torch.is_tensor(v) else v for k, v in call_kwargs(d, case, {}).items()}
        with torch.no_grad():
            out = model(**kwargs)[0].float().cpu()
        expected = golden_data(d)[2][f"{case}.output"]
        assert (out - expected).abs().max() < 0.1 * expected.abs().max(), case


@pytest.mark.parametrize("case", ["case1", "case2"])
def test_embeddings_match_the_golden_debug_tensors(case):
    """Timestep embeddings (real t and the token-replace t=0), text projection and the
    refextractor's own timestep embedding against the official intermediates."""
    from poseanimate.models.one_to_all.refextractor import time_embedding

    d = str(REF)
    model, outputs = golden_model(d), golden_data(d)[2]
    kwargs = call_kwargs(d, case, {})
    t, text = kwargs["timestep"], kwargs["encoder_hidden_states"]
    tol = tolerance(d)
    checks = {}
    with torch.no_grad():
        temb, proj = time_embedding(model.condition_embedder, t, text)
        checks["temb"], checks["timestep_proj"] = temb, proj.flatten(1)
        temb0, proj0 = time_embedding(model.condition_embedder, torch.zeros_like(t), text)
        checks["temb_token_replace"], checks["timestep_proj_token_replace"] = temb0, proj0.flatten(1)
        checks["text_embeds"] = model.condition_embedder.text_embedder(text)
        ref_tokens = model.refextractor.patch_embedding(kwargs["image_latents"]).flatten(2).transpose(1, 2)
        rtemb, rproj = time_embedding(model.refextractor.condition_embedder, t, ref_tokens)
        checks["refextractor.temb"], checks["refextractor.timestep_proj"] = rtemb, rproj.flatten(1)
    compared = 0
    for name, value in checks.items():
        key = f"{case}.debug.{name}"
        if key in outputs:
            compared += 1
            err = (value - outputs[key]).abs().max().item()
            assert err <= tol * max(1.0, outputs[key].abs().max().item()), f"{key}: {err:.3g}"
    assert compared >= 5
