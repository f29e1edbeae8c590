"""Loading One-to-All checkpoints: the full-size 14B / 1.3B manifests on the meta device (every key
consumed with the model's shape, sizes read from the shapes, nothing allocated), and tiny
checkpoints in the released sharded layout, as a single file (plain or ComfyUI-prefixed), with
fp8 weights and block swap, plus the errors a wrong file gets."""
from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest
import torch

import one_to_all_tiny
import wan_tiny
from poseanimate.models.one_to_all.loading import (load_one_to_all, one_to_all_from_state_dict,
                                                   read_one_to_all_weights)
from poseanimate.models.one_to_all.pipeline import OneToAllModel
from poseanimate.models.runtime.fp8 import FP8Linear
from poseanimate.models.runtime.lifecycle import RuntimeOptions
from poseanimate.models.runtime.weights import WanWeightsError

REF = Path(__file__).resolve().parent / "fixtures" / "reference" / "one_to_all"
MANIFESTS = ["manifest_14b.json", "manifest_1_3b.json"]


def _manifest(name: str) -> dict:
    return json.loads((REF / name).read_text())


def _meta_sd(keys: dict, prefix: str = "", dtype=torch.bfloat16) -> dict:
    return {prefix + k: torch.empty(shape, dtype=dtype, device="meta") for k, shape in keys.items()}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."], ids=["official", "comfy_prefixed"])
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_loads_on_meta(name, prefix):
    manifest = _manifest(name)
    keys = manifest["state_dict"]
    files = manifest["config_files"]
    main, ctrl, ref = (manifest["configs"][Path(files[part]).name] for part in ("main", "controlnet", "refextractor"))
    before = _rss_mb()
    model = one_to_all_from_state_dict(_meta_sd(keys, prefix), device="meta")
    assert _rss_mb() - before < 300, "loading a meta manifest must not allocate the weights"

    state = model.state_dict()
    assert set(state) == set(keys), (sorted(set(keys) - set(state))[:5], sorted(set(state) - set(keys))[:5])
    wrong = [k for k, shape in keys.items() if tuple(state[k].shape) != tuple(shape)]
    assert not wrong, wrong[:5]
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        assert t.is_meta, f"{n} was allocated"
    assert sum(t.numel() for t in model.parameters()) == manifest["total_parameters"]

    cfg = model.config
    for key in ("num_layers", "num_attention_heads", "attention_head_dim", "ffn_dim", "freq_dim", "text_dim",
                "in_channels", "out_channels"):
        assert cfg[key] == main[key], key
    assert cfg.controlnet_layers == ctrl["num_layers"] and cfg.controlnet_ffn_dim == ctrl["ffn_dim"]
    assert cfg.refextractor_layers == ref["num_layers"] and cfg.refextractor_in_channels == ref["in_channels"]
    assert cfg.refextractor_ffn_dim == ref["ffn_dim"] and cfg.ref_repeat == ref.get("ref_repeat", True)
    values = manifest["effective_values"]
    assert model.num_ref_samples == values["refextractor.num_ref_blocks(zero linears = num_layers+1)"]
    per_sample = -(-main["num_layers"] // model.num_ref_samples)
    assert [model.ref_sample_index(i) for i in range(main["num_layers"])] == \
        [i // per_sample for i in range(main["num_layers"])]


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_fp8_keeps_block_linears_in_fp8_on_meta(name):
    keys = _manifest(name)["state_dict"]
    model = one_to_all_from_state_dict(_meta_sd(keys), device="meta", weight_dtype=torch.float8_e4m3fn)
    fp8 = {n for n, m in model.named_modules() if isinstance(m, FP8Linear)}
    assert "blocks.0.attn1.add_k_proj" in fp8 and "refextractor.blocks.0.ffn.net.0.proj" in fp8
    assert "controlnet.blocks.0.attn1.to_q" in fp8
    assert "controlnet_zero.0" not in fp8 and "refextractor.ref_blocks.0" not in fp8 and "proj_out" not in fp8
    assert all(p.is_meta for p in model.parameters())
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn


# ----------------------------------------------------------------------------- tiny files
@pytest.fixture(scope="module")
def tiny():
    model = one_to_all_tiny.tiny_one_to_all()
    return model, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _inputs(model, frames=5, height=32, width=32, seed=3):
    g = torch.Generator().manual_seed(seed)
    lat_f, h, w = (frames - 1) // 4 + 1, height // 8, width // 8
    return dict(hidden_states=torch.randn(1, 16, lat_f, h, w, generator=g), timestep=torch.tensor([700.0]),
                encoder_hidden_states=torch.randn(1, 6, model.config.text_dim, generator=g),
                image_latents=torch.randn(1, 32, 1, h, w, generator=g),
                controlnet_cond=torch.rand(1, 3, frames, height, width, generator=g) * 2 - 1,
                image_pose=torch.rand(1, 3, 1, height, width, generator=g) * 2 - 1,
                conditioning_scale=1.0, token_replace=True, return_dict=False)


def _same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k].float(), sb[k].float()), k


@pytest.mark.parametrize("index", [False, True], ids=["shards_only", "with_index"])
def test_official_sharded_folder_loads(tmp_path, tiny, index):
    model, sd = tiny
    folder = one_to_all_tiny.write_official_checkpoint(tmp_path / "One-to-All-tiny", sd, shards=3, index=index)
    assert len(list(folder.glob("*.safetensors"))) == 3
    loaded = load_one_to_all(folder, dtype=torch.float32)
    _same_model(loaded, model)
    assert loaded.config.num_layers == model.config.num_layers
    kw = _inputs(model)
    with torch.no_grad():
        # Same weights, same math; safetensors >= 0.8 hands out zero-copy views at file offsets that
        # are not 64-byte aligned, which moves CPU matmuls onto another SIMD path (last-bit changes).
        torch.testing.assert_close(loaded(**kw)[0], model(**kw)[0], rtol=0, atol=1e-6)


def test_single_file_with_comfy_prefix_and_bf16(tmp_path, tiny):
    model, sd = tiny
    path = wan_tiny.write_file(tmp_path / "o2a.safetensors",
                               {"model.diffusion_model." + k: v.to(torch.bfloat16) for k, v in sd.items()})
    loaded = load_one_to_all(path)  # default: bf16
    assert loaded.blocks[0].attn1.add_k_proj.weight.dtype == torch.bfloat16
    assert loaded.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32  # diffusers' fp32 list
    kw = _inputs(model)
    with torch.no_grad():
        out, ref = loaded(**kw)[0].float(), model(**kw)[0]
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_fp8_weights_and_block_swap(tmp_path, tiny):
    model, sd = tiny
    path = wan_tiny.write_file(tmp_path / "o2a.safetensors", sd)
    loaded = load_one_to_all(path, dtype=torch.float32, weight_dtype=torch.float8_e4m3fn)
    runtime = OneToAllModel(loaded, torch.float32, "cpu", options=RuntimeOptions(blocks_to_swap=1))
    runtime.prepare()  # block swap is the life cycle's placement step, not the loader's
    assert isinstance(loaded.refextractor.blocks[0].attn1.to_k, FP8Linear)
    assert loaded.poseanimate_block_swap.num_swapped == 1
    kw = _inputs(model)
    with torch.no_grad():
        out, ref = loaded(**kw)[0], model(**kw)[0]
    loaded.poseanimate_block_swap.detach()
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_wrong_files_get_clear_errors(tmp_path, tiny):
    _, sd = tiny
    missing = dict(sd)
    missing.pop("blocks.1.attn1.norm_added_k.weight")
    with pytest.raises(WanWeightsError, match=r"missing keys.*blocks\.1\.attn1\.norm_added_k\.weight"):
        load_one_to_all(wan_tiny.write_file(tmp_path / "missing.safetensors", missing), dtype=torch.float32)
    extra = dict(sd, **{"controlnet_zero.5.weight": torch.zeros(128, 128)})
    with pytest.raises(WanWeightsError, match=r"unexpected keys.*controlnet_zero\.5\.weight"):
        load_one_to_all(wan_tiny.write_file(tmp_path / "extra.safetensors", extra), dtype=torch.float32)
    plain = wan_tiny.official_transformer_sd()
    with pytest.raises(WanWeightsError, match="One-to-All"):
        load_one_to_all(wan_tiny.write_file(tmp_path / "plain_wan.safetensors", plain), dtype=torch.float32)
    folder = tmp_path / "loose"  # no shard naming: every file is read, as the official scripts do
    wan_tiny.write_file(folder / "a.safetensors", sd)
    wan_tiny.write_file(folder / "b.safetensors", {k: v for k, v in list(sd.items())[:3]})
    with pytest.raises(WanWeightsError, match="repeats keys"):
        read_one_to_all_weights(folder)
    folder = tmp_path / "incomplete"
    one_to_all_tiny.write_official_checkpoint(folder, sd, shards=3)
    (folder / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(WanWeightsError, match=r"model-00002-of-00003\.safetensors.*missing"):
        read_one_to_all_weights(folder)


def test_shard_set_is_read_without_the_files_next_to_it(tmp_path, tiny):
    """Shards dropped straight into diffusion_models/ next to other models: only the set is read."""
    model, sd = tiny
    folder = one_to_all_tiny.write_official_checkpoint(tmp_path / "diffusion_models", sd, shards=2)
    wan_tiny.write_file(folder / "wan2.1_t2v_1.3B_fp16.safetensors", wan_tiny.official_transformer_sd())
    _same_model(load_one_to_all(folder, dtype=torch.float32), model)


def test_write_tiny_models_layout(tmp_path):
    one_to_all_tiny.write_tiny_models(tmp_path)
    model = load_one_to_all(tmp_path / "diffusion_models" / one_to_all_tiny.TRANSFORMER_FILE, dtype=torch.float32)
    assert model.config.text_dim == wan_tiny.TINY_UMT5["d_model"]
    assert (tmp_path / "vae" / one_to_all_tiny.VAE_FILE).is_file()
    assert (tmp_path / "text_encoders" / one_to_all_tiny.TEXT_ENCODER_FILE).is_file()
