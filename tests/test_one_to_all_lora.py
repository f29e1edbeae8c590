"""LoRAs on One-to-All: every spelling UniAnimate's extra LoRAs accept, strengths, merged or
unmerged (over fp8 too), Wan2.1-T2V LoRAs on the main blocks only, and the loader node."""
import pytest
import torch

import one_to_all_tiny
import poseanimate
import unianimate_tiny as ut
import wan_tiny
from poseanimate.models.one_to_all.loading import load_one_to_all
from poseanimate.models.runtime.fp8 import FP8Linear
from poseanimate.models.runtime.lora import LoRALinear
from test_manifest_one_to_all import _inputs

CFG = one_to_all_tiny.TINY_ONE_TO_ALL
DIM = CFG["num_attention_heads"] * CFG["attention_head_dim"]
STYLES = ("comfy", "comfy_updown", "kohya", "diffusers")
RANK, ALPHA = 2, 1.0


def t2v_lora(style, seed=5):
    """A Wan2.1-T2V LoRA of the tiny model's size (self/cross attention q/k/v/o, FFN of each block)."""
    return ut.tiny_wan_lora_sd(style, dim=DIM, ffn_dim=CFG["ffn_dim"], num_layers=CFG["num_layers"], rank=RANK,
                               alpha=ALPHA, seed=seed)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("o2a_lora")
    sd = one_to_all_tiny.tiny_state_dict()
    return wan_tiny.write_file(folder / "o2a.safetensors", sd), sd, folder


def _delta(lora_sd, module):
    """B @ A of the "comfy" spelling of ``module`` (official name)."""
    a = lora_sd[f"diffusion_model.{module}.lora_A.weight"]
    b = lora_sd[f"diffusion_model.{module}.lora_B.weight"]
    return b @ a


@pytest.mark.parametrize("style", STYLES)
def test_every_spelling_merges_onto_the_main_blocks(base, style):
    path, sd, folder = base
    lora = wan_tiny.write_file(folder / f"{style}.safetensors", t2v_lora(style))
    model = load_one_to_all(path, dtype=torch.float32, loras=[(lora, 0.7)])
    got = model.state_dict()
    comfy = t2v_lora("comfy")
    scale = 0.7 * ALPHA / RANK
    # official -> diffusers names (models/wan/lora_keys.py): self_attn.q -> attn1.to_q, ffn.2 -> ffn.net.2
    for official, ours in (("blocks.0.self_attn.q", "blocks.0.attn1.to_q"), ("blocks.1.cross_attn.o", "blocks.1.attn2.to_out.0"),
                           ("blocks.1.ffn.2", "blocks.1.ffn.net.2")):
        want = sd[f"{ours}.weight"] + scale * _delta(comfy, official)
        assert torch.allclose(got[f"{ours}.weight"], want, atol=1e-6), (style, ours)
    # the reference K/V, the reference extractor and the pose ControlNet are not in a T2V LoRA: untouched
    untouched = [k for k in sd if k.startswith(("refextractor.", "controlnet.", "input_hint_block.", "image_to_cond."))
                 or ".attn1.add_" in k]
    assert untouched and all(torch.equal(got[k], sd[k]) for k in untouched)


def test_strength_zero_and_unmerged_match_merged(base):
    path, sd, folder = base
    lora = wan_tiny.write_file(folder / "kohya_s.safetensors", t2v_lora("kohya"))
    plain = load_one_to_all(path, dtype=torch.float32)
    kw = _inputs(plain)
    with torch.no_grad():
        ref = plain(**kw)[0]
        zero = load_one_to_all(path, dtype=torch.float32, loras=[(lora, 0.0)])(**kw)[0]
        merged = load_one_to_all(path, dtype=torch.float32, loras=[(lora, 1.5)])(**kw)[0]
        side = load_one_to_all(path, dtype=torch.float32, loras=[(lora, 1.5)], merge=False)
        unmerged = side(**kw)[0]
    assert torch.allclose(zero, ref, atol=1e-6)
    assert (merged - ref).abs().max() > 1e-3  # the LoRA changes the output ...
    assert torch.allclose(unmerged, merged, atol=1e-5)  # ... the same way merged or as branches
    assert isinstance(side.blocks[0].attn1.to_q, LoRALinear) and not isinstance(side.refextractor.blocks[0].attn1.to_q, LoRALinear)


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged"])
def test_loras_over_fp8_weights(base, merge):
    path, sd, folder = base
    lora = wan_tiny.write_file(folder / "comfy_fp8.safetensors", t2v_lora("comfy"))
    full = load_one_to_all(path, dtype=torch.float32, loras=[(lora, 1.0)])
    fp8 = load_one_to_all(path, dtype=torch.float32, weight_dtype=torch.float8_e4m3fn, loras=[(lora, 1.0)], merge=merge)
    layer = fp8.blocks[0].attn1.to_q
    base_layer = layer if merge else layer.base
    assert isinstance(base_layer, FP8Linear) and base_layer.weight.dtype == torch.float8_e4m3fn
    assert isinstance(layer, LoRALinear) != merge
    kw = _inputs(full)
    with torch.no_grad():
        want, got = full(**kw)[0], fp8(**kw)[0].float()
    assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_a_file_naming_the_reference_extractor_patches_it(base):
    path, sd, folder = base
    g = torch.Generator().manual_seed(1)
    name = "refextractor.blocks.0.attn1.to_q"
    lora_sd = {f"transformer.{name}.lora_A.weight": torch.randn(RANK, DIM, generator=g) * 0.05,
               f"transformer.{name}.lora_B.weight": torch.randn(DIM, RANK, generator=g) * 0.05}
    lora = wan_tiny.write_file(folder / "ref.safetensors", lora_sd)
    got = load_one_to_all(path, dtype=torch.float32, loras=[(lora, 1.0)]).state_dict()
    want = sd[f"{name}.weight"] + lora_sd[f"transformer.{name}.lora_B.weight"] @ lora_sd[f"transformer.{name}.lora_A.weight"]
    assert torch.allclose(got[f"{name}.weight"], want, atol=1e-6)
    assert torch.equal(got["blocks.0.attn1.to_q.weight"], sd["blocks.0.attn1.to_q.weight"])


def test_loader_node_takes_lora_slots(models_dir):
    one_to_all_tiny.write_tiny_models(models_dir)
    wan_tiny.write_file(models_dir / "loras" / "t2v_style.safetensors", t2v_lora("comfy_updown"))
    node = poseanimate.NODE_CLASS_MAPPINGS["PoseAnimateOneToAllLoader"]()
    spec = node.INPUT_TYPES()
    assert "t2v_style.safetensors" in spec["optional"]["lora_1"][0] and "attention" in spec["required"]
    (model,) = node.load(one_to_all_tiny.TRANSFORMER_FILE, precision="fp32", lora_1="t2v_style.safetensors",
                         lora_1_strength=0.5, lora_mode="unmerged")
    assert isinstance(model.transformer.blocks[1].ffn.net[2], LoRALinear)
    assert model.info["loras"] == [("t2v_style.safetensors", 0.5)]
    with pytest.raises(ValueError, match="not in this model"):
        wan_tiny.write_file(models_dir / "loras" / "deep.safetensors",
                            ut.tiny_wan_lora_sd("comfy", dim=DIM, ffn_dim=CFG["ffn_dim"], num_layers=4))
        node.load(one_to_all_tiny.TRANSFORMER_FILE, precision="fp32", lora_1="deep.safetensors")


def test_lora_over_gguf_weights_runs_unmerged(base):
    """A GGUF (quantized) One-to-All cannot absorb a merge: the LoRA runs as side branches over the
    packed blocks, and the output follows the full-precision merged model (within Q8_0 error)."""
    import gguf_tiny as G
    from poseanimate.models.runtime.gguf import gguf_summary

    path, sd, folder = base
    lora = wan_tiny.write_file(folder / "comfy_gguf.safetensors", t2v_lora("comfy", seed=9))
    gguf_path = G.write_gguf(folder / "o2a-Q8_0.gguf", {k: v.clone() for k, v in sd.items()}, "Q8_0")
    quant = load_one_to_all(gguf_path, dtype=torch.float32, loras=[(lora, 3.0)], merge=True)
    assert gguf_summary(quant)["Q8_0"] > 0 and any(isinstance(m, LoRALinear) for m in quant.modules())
    bare = load_one_to_all(gguf_path, dtype=torch.float32)
    plain = load_one_to_all(path, dtype=torch.float32, loras=[(lora, 3.0)])
    kw = _inputs(plain)
    with torch.no_grad():
        got, want, without = quant(**kw)[0], plain(**kw)[0], bare(**kw)[0]
    assert (got - want).abs().max() < 0.5 * (without - want).abs().max()  # the LoRA's effect is there
    assert (got - want).abs().max() < 2e-2 * want.abs().max()
