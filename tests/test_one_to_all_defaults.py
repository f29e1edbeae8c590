"""One-to-All defaults as the released scripts use them: the negative prompt of ``inference_14b.py``
in the node, the workflow and client requests; the 1.3B model's own guidance and 'reference' size
(``inference_1.3b.py``: image guidance 2.5, short side 384) unless the user sets them."""
import json
from pathlib import Path

import pytest
import torch

import client
import poseanimate
from paths import ui_workflow
from poseanimate.models.one_to_all import pipeline
from poseanimate.models.one_to_all.guidance import ONE_TO_ALL_NEGATIVE_PROMPT
from poseanimate.models.one_to_all.loading import one_to_all_from_state_dict
from test_one_to_all_pipeline import LinearVAE, RecordingModel, embeds, images

ROOT = Path(__file__).resolve().parents[1]
API = json.loads((ROOT / "workflows" / "api" / "one_to_all_animation.json").read_text())
UI = json.loads(ui_workflow("one_to_all_animation").read_text())
REF = ROOT / "tests" / "fixtures" / "reference" / "one_to_all"
OFFICIAL_NEGATIVE = ("black background, Aerial view, aerial view, overexposed, low quality, deformation, a poor "
                     "composition, bad hands, bad teeth, bad eyes, bad limbs, distortion")


def test_negative_prompt_defaults_to_the_official_string_in_node_workflow_and_client():
    assert ONE_TO_ALL_NEGATIVE_PROMPT == OFFICIAL_NEGATIVE
    spec = poseanimate.NODE_CLASS_MAPPINGS["PoseAnimateOneToAllTextEncode"].INPUT_TYPES()["required"]
    assert spec["negative_prompt"][1]["default"] == OFFICIAL_NEGATIVE
    # the shared Wan node keeps Wan's default (UniAnimate's workflow sets its own)
    wan = poseanimate.NODE_CLASS_MAPPINGS["PoseAnimateWanTextEncode"].INPUT_TYPES()["required"]
    assert wan["negative_prompt"][1]["default"] != OFFICIAL_NEGATIVE
    (text,) = [n for n in API.values() if n["class_type"] == "PoseAnimateOneToAllTextEncode"]
    assert text["inputs"]["negative_prompt"] == OFFICIAL_NEGATIVE
    (ui_text,) = [n for n in UI["nodes"] if n["type"] == "PoseAnimateOneToAllTextEncode"]
    assert ui_text["widgets_values"][1] == OFFICIAL_NEGATIVE
    # a hosted request without negative_prompt gets it; one with it overrides it
    endpoint = client.ENDPOINTS["one-to-all"]
    req = {"prompt": "a person dancing", "image_url": "data:image/png;base64,iVBORw0KGgo=",
           "video_url": "data:video/mp4;base64,AAAAGGZ0eXBpc29t"}
    filled = client.fill_workflow(endpoint, API, req)
    (node,) = [n for n in filled.prompt.values() if n["class_type"] == "PoseAnimateOneToAllTextEncode"]
    assert node["inputs"]["negative_prompt"] == OFFICIAL_NEGATIVE and node["inputs"]["prompt"] == "a person dancing"
    filled = client.fill_workflow(endpoint, API, {**req, "negative_prompt": "blurry"})
    (node,) = [n for n in filled.prompt.values() if n["class_type"] == "PoseAnimateOneToAllTextEncode"]
    assert node["inputs"]["negative_prompt"] == "blurry"


@pytest.mark.parametrize("name, variant", [("manifest_1_3b.json", "1.3b"), ("manifest_14b.json", "14b")])
def test_model_size_is_read_from_the_checkpoint(name, variant):
    keys = json.loads((REF / name).read_text())["state_dict"]
    sd = {k: torch.empty(shape, dtype=torch.bfloat16, device="meta") for k, shape in keys.items()}
    model = one_to_all_from_state_dict(sd, device="meta")
    assert pipeline.variant_of(model) == variant
    assert pipeline.OneToAllModel(model).defaults == pipeline.MODEL_DEFAULTS[variant]
    assert pipeline.MODEL_DEFAULTS["1.3b"] == {"image_guidance_scale": 2.5, "reference_max_short": 384}
    assert pipeline.MODEL_DEFAULTS["14b"] == {"image_guidance_scale": 2.0, "reference_max_short": 576}


def _sample_node(monkeypatch, variant, **args):
    """Run the sampler node on stand-in model/VAE; returns the pipeline's result (its info and size)."""
    results = []
    original = pipeline.sample_one_to_all

    def spy(*a, **kw):
        results.append(original(*a, **kw))
        return results[-1]

    monkeypatch.setattr(pipeline, "sample_one_to_all", spy)
    model = pipeline.OneToAllModel(RecordingModel(), torch.float32, "cpu", variant=variant)
    ref, poses, ref_pose = images(5, h=600, w=400)
    node = poseanimate.NODE_CLASS_MAPPINGS["PoseAnimateOneToAllSampler"]()
    spec = node.INPUT_TYPES()
    defaults = {k: v[1]["default"] for k, v in {**spec["required"], **spec["optional"]}.items()
                if len(v) > 1 and "default" in v[1]}
    call = {**defaults, "resolution": "reference", "steps": 2, **args}
    node.sample(model, LinearVAE(), embeds(), {"image": ref, "pose": ref_pose, "mask": None},
                torch.from_numpy(poses).float() / 255, **call)
    return results[-1], model


@pytest.mark.parametrize("variant, guidance, size", [("1.3b", 2.5, (384, 576)), ("14b", 2.0, (400, 592))])
def test_sampler_node_defaults_follow_the_loaded_model(monkeypatch, variant, guidance, size):
    result, model = _sample_node(monkeypatch, variant)
    assert result.info["image_guidance_scale"] == guidance and result.info["calls_per_step"] == 3
    assert (result.width, result.height) == size
    assert len(model.transformer.calls) == 3 * 2


def test_values_the_user_sets_win_over_the_model_defaults(monkeypatch):
    result, _ = _sample_node(monkeypatch, "1.3b", image_guidance_scale=2.0, reference_max_short=512)
    assert result.info["image_guidance_scale"] == 2.0 and (result.width, result.height) == (400, 592)
    result, _ = _sample_node(monkeypatch, "1.3b", image_guidance_scale=1.0, reference_max_short=256)
    assert result.info["calls_per_step"] == 1 and (result.width, result.height) == (256, 384)
    with pytest.raises(ValueError, match="image_guidance_scale must be 0"):
        _sample_node(monkeypatch, "1.3b", image_guidance_scale=0.5)
