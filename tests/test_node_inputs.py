"""Input checks shared by every node, without ComfyUI: FLOAT inputs (nodes/validation.py), LoRA
families (models/lora_family.py), blank references. The real-ComfyUI side is in
tests/test_comfyui_bad_inputs.py."""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

import ad_tiny
import poseanimate
from poseanimate.models import lora_family
from poseanimate.nodes import validation
from poseanimate.nodes.pose import is_blank_white

FLOAT_NODES = {k: c for k, c in poseanimate.NODE_CLASS_MAPPINGS.items() if validation.float_inputs(c)}


def test_every_float_node_has_the_checks():
    assert len(FLOAT_NODES) >= 5, sorted(FLOAT_NODES)
    for node_id, cls in FLOAT_NODES.items():
        floats = validation.float_inputs(cls)
        args = inspect.getfullargspec(cls.VALIDATE_INPUTS).args  # what ComfyUI reads
        assert set(floats) <= set(args), (node_id, args)
        assert getattr(getattr(cls, cls.FUNCTION), "_poseanimate_checked", False), node_id


@pytest.mark.parametrize("node_id", sorted(FLOAT_NODES))
def test_non_finite_and_out_of_range_refused(node_id):
    cls = FLOAT_NODES[node_id]
    floats = validation.float_inputs(cls)
    name, opts = next(iter(floats.items()))
    good = opts.get("default", opts.get("min", 0.0))
    assert cls.VALIDATE_INPUTS(**{name: good}) is True
    for bad in (math.nan, math.inf, -math.inf):
        answer = cls.VALIDATE_INPUTS(**{name: bad})
        assert isinstance(answer, str) and answer.startswith(name) and "finite" in answer and f"set {name} to" in answer
    if opts.get("max") is not None:
        assert "above its maximum" in cls.VALIDATE_INPUTS(**{name: opts["max"] + 1})
    if opts.get("min") is not None:
        assert "below its minimum" in cls.VALIDATE_INPUTS(**{name: opts["min"] - 1})
    assert cls.VALIDATE_INPUTS() is True  # linked inputs are not handed over at validation


def test_run_time_check_catches_linked_nan():
    cls = poseanimate.NODE_CLASS_MAPPINGS["PoseAnimateAnimateDiffSampler"]
    with pytest.raises(validation.InputValueError, match="guidance is nan"):
        getattr(cls(), cls.FUNCTION)(animatediff=None, source_video=None, prompt="", guidance=math.nan)


def test_lora_family_from_keys():
    assert lora_family.family_of(ad_tiny.tiny_kohya_lora_state_dict()) == lora_family.SD15
    assert lora_family.family_of(ad_tiny.tiny_motion_lora_state_dict()) == lora_family.MOTION
    assert lora_family.family_of(["diffusion_model.blocks.0.self_attn.q.lora_A.weight"]) == lora_family.WAN
    assert lora_family.family_of(["lora_unet_blocks_3_cross_attn_k.lora_down.weight"]) == lora_family.WAN
    assert lora_family.family_of(["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"]) == lora_family.SDXL
    assert lora_family.family_of(["double_blocks.0.img_attn.qkv.lora_A.weight"]) == lora_family.FLUX
    assert lora_family.family_of(["something.else"]) is None
    with pytest.raises(ValueError, match=r"'x.safetensors' is a Wan2\.1 LoRA.*SD1\.5"):
        lora_family.check_lora_family("x.safetensors", ["blocks.0.ffn.0.lora_down.weight"], (lora_family.SD15,), "here")
    assert lora_family.check_lora_family("y", ["something.else"], (lora_family.SD15,), "here") is None


def test_blank_white_reference():
    assert is_blank_white(np.full((1, 32, 32, 3), 255, np.uint8))
    img = np.full((1, 32, 32, 3), 255, np.uint8)
    img[0, 8:24, 8:24] = 40
    assert not is_blank_white(img)
