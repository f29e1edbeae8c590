"""SD1.5 LoRA formats beyond kohya, checked against PEFT's own adapters as the reference.

PEFT implements LoRA, LoHa and LoKr as forward-time adapters; a file written from a
PEFT-adapted model (in the diffusers/PEFT, the older attention-processor, or the LyCORIS
kohya-name layout) merged by our loader must give the adapted model's outputs.
"""
import copy

import pytest
import torch

import ad_tiny
from poseanimate.models.animatediff.lora import is_motion_lora, lora_module_table, merge_lora

peft = pytest.importorskip("peft")
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2"]


def _unet_io(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500.0]), torch.randn(1, 5, 32, generator=g))


def _adapted(config, seed=5):
    """(base UNet, PEFT-adapted copy with random adapter weights, adapter state dict)."""
    unet, _, te = ad_tiny.tiny_sd15_models()
    adapted = peft.inject_adapter_in_model(config, copy.deepcopy(unet))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if any(tag in name for tag in ("lora_", "hada_", "lokr_")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    sd = {k: v.clone() for k, v in peft.get_peft_model_state_dict(adapted).items()}
    return unet, te, adapted.eval(), sd


def _merged_output(unet, te, sd, scale=1.0):
    merged = copy.deepcopy(unet)
    n = merge_lora(lora_module_table(merged, te), sd, scale)
    with torch.no_grad():
        return merged(*_unet_io()).sample, n


def _reference_output(adapted):
    with torch.no_grad():
        return adapted(*_unet_io()).sample


def _kohya(key: str) -> str:
    stem, _, suffix = key.rpartition(".")
    return "lora_unet_" + stem.replace(".", "_") + "." + suffix


def test_peft_lora_and_processor_layout_match_peft():
    cfg = peft.LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS + ["conv1"], init_lora_weights=False)
    unet, te, adapted, sd = _adapted(cfg)
    assert any(k.endswith(".lora_A.weight") for k in sd)
    want = _reference_output(adapted)
    base = _reference_output(unet)
    got, n = _merged_output(unet, te, {"unet." + k: v for k, v in sd.items()})
    assert n == len(sd) // 2 and (want - base).abs().max() > 1e-2  # the adapters matter
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    # the older diffusers attention-processor names: <attn>.processor.to_q_lora.down.weight
    old = {}
    for k, v in sd.items():
        stem, role = k.rsplit(".lora_", 1)
        attn, _, proj = stem.rpartition(".")
        if proj == "0":  # to_out.0
            attn, _, proj = attn.rpartition(".")
        if proj not in ("to_q", "to_k", "to_v", "to_out"):
            continue
        old[f"unet.{attn}.processor.{proj}_lora.{'down' if role.startswith('A') else 'up'}.weight"] = v
    got_old, n_old = _merged_output(unet, te, old)
    assert n_old == len(old) // 2 > 0
    ref = copy.deepcopy(unet)
    merge_lora(lora_module_table(ref, te), {"unet." + k: v for k, v in sd.items()
                                           if any(f".{p}." in k for p in ("to_q", "to_k", "to_v", "to_out"))}, 1.0)
    with torch.no_grad():
        assert torch.allclose(got_old, ref(*_unet_io()).sample, atol=1e-5)


def test_lycoris_loha_matches_peft():
    cfg = peft.LoHaConfig(r=4, alpha=8, target_modules=TARGETS, init_weights=False)
    unet, te, adapted, sd = _adapted(cfg)
    assert any(k.endswith(".hada_w1_a") for k in sd)
    stems = {k.rsplit(".", 1)[0] for k in sd}
    lycoris = {_kohya(k): v for k, v in sd.items()}
    lycoris.update({"lora_unet_" + s.replace(".", "_") + ".alpha": torch.tensor(8.0) for s in stems})
    got, n = _merged_output(unet, te, lycoris)
    want = _reference_output(adapted)
    assert n == len(stems) and (want - _reference_output(unet)).abs().max() > 1e-2
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_lycoris_lokr_matches_peft():
    cfg = peft.LoKrConfig(r=2, alpha=2, target_modules=TARGETS, init_weights=False, decompose_factor=4)
    unet, te, adapted, sd = _adapted(cfg)
    assert any(".lokr_w" in k for k in sd)
    stems = {k.rsplit(".", 1)[0] for k in sd}
    lycoris = {_kohya(k): v for k, v in sd.items()}
    # LyCORIS scales by alpha/rank only when a factor is low-rank (ComfyUI's rule); PEFT always does
    # alpha/r, which is 1 here, so no alpha key is needed for the two to agree
    got, n = _merged_output(unet, te, lycoris)
    want = _reference_output(adapted)
    assert n == len(stems) and (want - _reference_output(unet)).abs().max() > 1e-2
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_peft_text_encoder_lora_and_locon_mid():
    unet, _, te = ad_tiny.tiny_sd15_models()
    cfg = peft.LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "fc1"], init_lora_weights=False)
    adapted = peft.inject_adapter_in_model(cfg, copy.deepcopy(te))
    sd = peft.get_peft_model_state_dict(adapted)
    with torch.no_grad():
        for k in sd:
            dict(adapted.named_parameters())[k.replace(".weight", ".default.weight")].normal_(0, 0.3)
    sd = {k: v.clone() for k, v in peft.get_peft_model_state_dict(adapted).items()}
    prefix = "text_encoder." + ("" if any(k.startswith("text_model.") for k in sd) else "text_model.")
    merged = copy.deepcopy(te)
    assert merge_lora(lora_module_table(unet, merged), {prefix + k: v for k, v in sd.items()}, 1.0) == len(sd) // 2
    ids = torch.tensor([[49406, 320, 1125, 49407]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).last_hidden_state, adapted(ids).last_hidden_state, atol=1e-4)
    # LoCon with a CP "mid" factor: down [r,in,1,1], mid [r,r,3,3], up [out,r,1,1] = one 3x3 conv chain
    conv = unet.down_blocks[0].resnets[0].conv1
    g = torch.Generator().manual_seed(1)
    r, cin, cout = 3, conv.in_channels, conv.out_channels
    down, mid, up = (torch.randn(r, cin, 1, 1, generator=g), torch.randn(r, r, 3, 3, generator=g),
                     torch.randn(cout, r, 1, 1, generator=g))
    x = torch.randn(1, cin, 6, 6, generator=g)
    chain = torch.nn.functional.conv2d(torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, down), mid, padding=1), up)
    before = conv(x).detach()
    key = "lora_unet_down_blocks_0_resnets_0_conv1"
    merge_lora(lora_module_table(unet, te), {f"{key}.lora_down.weight": down, f"{key}.lora_mid.weight": mid,
                                             f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(6.0)}, 0.5)
    with torch.no_grad():
        assert torch.allclose(conv(x), before + 0.5 * (6.0 / r) * chain, atol=1e-4)


def test_motion_lora_is_told_apart():
    assert is_motion_lora(ad_tiny.tiny_motion_lora_state_dict())
    assert not is_motion_lora(ad_tiny.tiny_kohya_lora_state_dict())
