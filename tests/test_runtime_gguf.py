"""GGUF weights: torch dequantizers vs gguf's numpy reference, and a tiny Wan DiT loaded from GGUF
files (kept quantized, unpacked per layer) against the same DiT built from the dequantized weights."""
import numpy as np
import pytest
import torch

pytest.importorskip("gguf")

import gguf_tiny as G  # noqa: E402
import wan_tiny as T  # noqa: E402

from poseanimate.models.runtime import gguf as R  # noqa: E402
from poseanimate.models.wan import loading  # noqa: E402
from poseanimate.models.wan.layouts import detect_layout  # noqa: E402
from poseanimate.models.runtime.weights import read_state_dict  # noqa: E402

# dim 256 (2 heads of 128) so every block Linear has rows of whole k-quant super-blocks
GGUF_DIT = dict(T.TINY_DIT, dim=256, ffn_dim=256)
TYPES = ("F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q4_0")  # the model test; every block type below


@pytest.fixture(scope="module")
def official():
    return T.official_transformer_sd(**GGUF_DIT)


@pytest.mark.parametrize("qtype", sorted(R.BLOCKS))
def test_torch_dequantizer_matches_gguf_numpy(qtype):
    import gguf

    rows, cols = 3, 512
    if qtype in G.RANDOM_BLOCK_TYPES:
        raw = G.random_k_blocks(qtype, rows, cols, seed=7)
    else:
        raw = gguf.quants.quantize(np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32),
                                   gguf.GGMLQuantizationType[qtype])
    expected = R.numpy_reference(raw, qtype)
    got = R.dequantize(torch.from_numpy(raw), qtype, (rows, cols))
    assert np.isfinite(expected).all()
    np.testing.assert_array_equal(got.numpy(), expected.astype(np.float32))


@pytest.mark.parametrize("qtype,prefix", [(t, "") for t in TYPES] + [("Q8_0", "model.diffusion_model.")])
def test_gguf_dit_matches_dequantized_dit(tmp_path, official, qtype, prefix):
    path = G.write_gguf(tmp_path / f"wan_tiny_{qtype}.gguf", official, qtype, prefix=prefix)
    sd = read_state_dict(path)
    assert detect_layout(sd.keys(), "transformer") == ("comfy_gguf" if prefix else "official_gguf")
    quantized = sum(isinstance(v, R.QuantizedWeight) for v in sd.values())
    model = loading.transformer_from_state_dict(sd, dtype=torch.float32, source=path.name)
    layers = [m for m in model.modules() if isinstance(m, R.GGUFLinear)]
    if qtype in R.BLOCKS:
        assert len(layers) == quantized >= 2 * 10  # at least q k v o of both attentions + 2 FFN layers per block
        assert all(m.gguf_weight.dtype == torch.uint8 for m in layers)
    else:
        assert not layers  # float GGUFs load as ordinary weights

    reference = loading.transformer_from_state_dict(
        {k.removeprefix(prefix): v for k, v in G.dequantized_sd(path).items()}, dtype=torch.float32)
    inputs = T.transformer_inputs(official)
    with torch.no_grad():
        got = model(**inputs, return_dict=False)[0]
        expected = reference(**inputs, return_dict=False)[0]
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (got - expected).abs().max()


def test_gguf_layers_keep_their_blocks_through_dtype_casts(tmp_path, official):
    path = G.write_gguf(tmp_path / "wan_tiny_q4k.gguf", official, "Q4_K")
    model = loading.load_transformer(path, dtype=torch.float32)
    before = model(**T.transformer_inputs(official), return_dict=False)[0]
    model.to(torch.bfloat16)
    layer = next(m for m in model.modules() if isinstance(m, R.GGUFLinear))
    assert layer.gguf_weight.dtype == torch.uint8 and layer.bias.dtype == torch.bfloat16
    inputs = {k: v.to(torch.bfloat16) for k, v in T.transformer_inputs(official).items()}
    with torch.no_grad():
        after = model(**inputs, return_dict=False)[0].float()
    assert (after - before).abs().max() < 0.05 * before.abs().max()
    assert R.gguf_summary(model)["Q4_K"] >= 20


def test_foreign_gguf_is_refused(tmp_path):
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "llama.gguf"), arch="llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(R.GGUFError, match="architecture 'llama'"):
        read_state_dict(tmp_path / "llama.gguf")


def test_torch_q8_0_quantizer_matches_gguf():
    import gguf

    w = np.random.default_rng(3).standard_normal((4, 96)).astype(np.float32)
    w[1, :32] = 0  # an all-zero block (scale 0)
    expected = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
    got = R.quantize_q8_0(torch.from_numpy(w))
    np.testing.assert_array_equal(got.data.numpy(), expected)
    assert got.shape == (4, 96) and torch.allclose(got.dequantize(), torch.from_numpy(w), atol=0.02)


def test_one_to_all_and_unianimate_load_gguf_files(tmp_path):
    """The families' loaders take GGUF files: One-to-All (diffusers names) and a UniAnimate base
    model (its LoRA then runs unmerged over the quantized blocks)."""
    from safetensors.torch import load_file

    import one_to_all_tiny
    import unianimate_tiny
    from poseanimate.models.one_to_all.loading import load_one_to_all
    from poseanimate.models.unianimate.transformer import load_unianimate

    ota = load_one_to_all(G.write_gguf(tmp_path / "ota.gguf", one_to_all_tiny.tiny_state_dict(), "Q8_0"),
                          dtype=torch.float32)
    assert R.gguf_summary(ota)["Q8_0"] > 0
    paths = unianimate_tiny.write_tiny_models(tmp_path / "models")
    base = G.write_gguf(tmp_path / "base.gguf", load_file(paths["base"]), "Q8_0")
    model, _ = load_unianimate(base, paths["unianimate_ckpt"], dtype=torch.float32, merge=True)
    assert R.gguf_summary(model)["Q8_0"] > 0


def test_loader_nodes_list_and_load_gguf_with_toolkit_options(models_dir):
    """A GGUF in diffusion_models is offered by the One-to-All loader node and loads with the
    compile / step-cache options passed on to the runtime."""
    import one_to_all_tiny
    from poseanimate.nodes.one_to_all import OneToAllLoader

    (models_dir / "diffusion_models").mkdir()
    G.write_gguf(models_dir / "diffusion_models" / "one_to_all_tiny-Q8_0.gguf", one_to_all_tiny.tiny_state_dict(), "Q8_0")
    inputs = OneToAllLoader.INPUT_TYPES()
    assert "one_to_all_tiny-Q8_0.gguf" in inputs["required"]["model_name"][0]
    assert {"compile", "step_cache_threshold"} <= set(inputs["optional"])
    (model,) = OneToAllLoader().load("one_to_all_tiny-Q8_0.gguf", precision="fp32", compile="off",
                                     step_cache_threshold=0.1)
    assert R.gguf_summary(model.transformer)["Q8_0"] > 0
    assert (model.options.cache, model.options.cache_threshold, model.options.compile) == ("first_block", 0.1, "off")
