"""The AnimateDiff v2v workflow (API twin) run end to end through the node classes on tiny weights.

ComfyUI's core video nodes (LoadVideo, CreateVideo, SaveVideo) are
replaced by minimal stand-ins; every PoseAnimate node is the real class, called as ComfyUI
calls it (INPUT_TYPES, FUNCTION, return tuples).
"""
import json
from pathlib import Path

import pytest
import torch

import ad_tiny
from paths import ui_workflow
from workflow_executor import widget_names
from poseanimate.headless.executor import Executor
from poseanimate.nodes import animatediff as ad_nodes
from poseanimate.nodes import pose as pose_nodes
from poseanimate.nodes import video as video_nodes

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("animatediff_v2v", "animatediff_v2v_pose")  # hosted twin (no ControlNet) and the pose-ControlNet one
API = json.loads((ROOT / "workflows" / "api" / "animatediff_v2v.json").read_text())
UI = json.loads(ui_workflow("animatediff_v2v").read_text())
API_POSE = json.loads((ROOT / "workflows" / "api" / "animatediff_v2v_pose.json").read_text())
CORE_WIDGETS = {"LoadVideo": ["file"], "CreateVideo": ["fps"],
                "SaveVideo": ["filename_prefix", "format", "codec"]}


def _source_clip(frames=12, size=64):
    """A moving bright square on a gradient: deterministic 'video'."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = torch.stack([x, y, 0.5 * torch.ones_like(x)], -1).repeat(frames, 1, 1, 1)
    for t in range(frames):
        out[t, 20:40, 4 + 3 * t : 20 + 3 * t] = 1.0
    return out.clamp(0, 1)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    loader = API["3"]["inputs"]
    ad_tiny.write_tiny_sd15(root / "checkpoints" / loader["checkpoint"])
    ad_tiny.write_tiny_motion_module(root / "animatediff_models" / loader["motion_module"], version="v2")
    ad_tiny.write_tiny_controlnet(root / "controlnet" / API_POSE["3"]["inputs"]["controlnet"])
    ad_tiny.write_tiny_kohya_lora(root / "loras" / "style.safetensors")
    ad_tiny.write_tiny_motion_lora(root / "loras" / "zoom_motion.safetensors", version="v2")
    return root


@pytest.fixture()
def models(model_files, monkeypatch):
    monkeypatch.setenv("POSEANIMATE_MODELS_DIR", str(model_files))
    return model_files


def _fast(graph, steps=3, **sampler):
    g = json.loads(json.dumps(graph))
    g["8"]["inputs"]["steps"] = steps
    g["8"]["inputs"].update(sampler)
    return g


def test_api_twin_runs_end_to_end(models):
    """The hosted twin: no ControlNet, no pose stage, so a server without the OpenPose ControlNet runs it."""
    assert API["3"]["inputs"]["controlnet"] == "None"
    assert not any(n["class_type"].startswith(("PoseAnimateDetect", "PoseAnimateLoadPose")) for n in API.values())
    clip = _source_clip(12)
    ex = Executor(clip=clip, fps=24.0)
    res = ex.run(_fast(API))
    frames, seed, fps = res["8"]
    assert frames.shape == (12, 64, 64, 3) and frames.dtype == torch.float32
    assert seed == API["8"]["inputs"]["seed"] and fps == 24.0
    assert torch.equal(frames[0], frames[1])  # every 2nd frame diffused, restored by repeat
    (prefix, video), = ex.saved
    assert prefix == "PoseAnimate/animatediff_v2v" and video.fps == 24.0 and video.images is frames


def test_pose_workflow_runs_end_to_end(models):
    ex = Executor(clip=_source_clip(4), fps=24.0)
    res = ex.run(_fast(API_POSE, steps=1))
    frames, seed, fps = res["8"]
    assert frames.shape == (4, 64, 64, 3) and res["6"][0].shape[0] == 4
    (prefix, _), = ex.saved
    assert prefix == "PoseAnimate/animatediff_v2v_pose"


def test_workflow_with_windows_loras_and_blend(models):
    g = _fast(API_POSE, steps=2, seed=7, restore_frames="blend", select_every_nth_frame=1)
    g["7"]["inputs"].update(context_length=8, context_overlap=2, window_batch=2, freenoise=True)
    g["3"]["inputs"].update(lora_1="style.safetensors", lora_1_scale=0.5,
                            loras_json='[{"name": "zoom_motion.safetensors", "scale": 0.8}]')
    frames, seed, fps = Executor(clip=_source_clip(20)).run(g)["8"]
    assert frames.shape == (20, 64, 64, 3) and seed == 7
    again = Executor(clip=_source_clip(20)).run(g)["8"][0]
    assert torch.equal(again, frames)  # same seed, same video (CPU)


@pytest.mark.parametrize("name", NAMES)
def test_ui_matches_api_twin(name):
    """Each UI node is its API node: same type, links and widget values in INPUT_TYPES order."""
    API = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
    UI = json.loads(ui_workflow(name).read_text())
    classes = {**ad_nodes.NODE_CLASS_MAPPINGS, **pose_nodes.NODE_CLASS_MAPPINGS, **video_nodes.NODE_CLASS_MAPPINGS}
    links = {l[0]: l for l in UI["links"]}
    ui_nodes = {str(n["id"]): n for n in UI["nodes"] if n["type"] != "Note"}
    assert set(ui_nodes) == set(API)
    for nid, node in ui_nodes.items():
        api = API[nid]
        assert node["type"] == api["class_type"]
        for inp in node["inputs"]:
            if inp["link"] is None:
                assert inp["name"] not in api["inputs"]
                continue
            _, src, slot, dst, dst_slot, _ = links[inp["link"]]
            assert api["inputs"][inp["name"]] == [str(src), slot] and dst == int(nid)
        if api["class_type"] in classes:
            names = widget_names(classes[api["class_type"]].INPUT_TYPES())
        else:
            names = CORE_WIDGETS[api["class_type"]]
        values = node["widgets_values"][: len(names)]
        for k, v in zip(names, values):
            if k is not None and not isinstance(api["inputs"].get(k), list):
                assert api["inputs"][k] == v, (nid, k)


def test_loader_errors_name_the_fix(models):
    loader = ad_nodes.AnimateDiffLoader()
    with pytest.raises(Exception, match="checkpoints"):
        loader.load("missing.safetensors", API["3"]["inputs"]["motion_module"])
    with pytest.raises(ValueError, match="loras_json"):
        ad_nodes.parse_lora_list([], "[{bad json")
    assert ad_nodes.parse_lora_list([("a.safetensors", 0.5), ("None", 1.0)], '[{"path": "b.safetensors"}]') == [
        ("a.safetensors", 0.5), ("b.safetensors", 1.0)]


def test_loader_motion_scale_and_effect(models):
    inputs = dict(API["3"]["inputs"], motion_scale=1.3, motion_effect=0.4)
    spec = ad_nodes.AnimateDiffLoader.INPUT_TYPES()["optional"]
    assert spec["motion_scale"][1]["default"] == 1.0 and spec["motion_effect"][1]["default"] == 1.0
    model, = ad_nodes.AnimateDiffLoader().load(**inputs)
    mods = model.pipeline.unet.motion.temporal_modules()
    assert mods and all(m.scale == 1.3 and m.effect == 0.4 for m in mods)


def test_sampler_node_inputs_follow_comfyui_apply_controlnet():
    opt = ad_nodes.AnimateDiffSampler.INPUT_TYPES()["optional"]
    assert opt["controlnet_strength"][1]["max"] == 10.0
    assert opt["controlnet_start_percent"][1]["default"] == 0.0 and opt["controlnet_end_percent"][1]["default"] == 1.0
    assert opt["short_side"][1]["default"] == 512 and opt["max_frames"][1]["default"] == 0
    req = ad_nodes.AnimateDiffSampler.INPUT_TYPES()["required"]
    assert req["sampler_name"][0] == list(ad_nodes.sm.SAMPLERS)  # outside ComfyUI: the built-in set


def test_sampler_node_progress_is_exact(models, monkeypatch):
    """The node sizes ComfyUI's bar from the pipeline (VAE batches + steps) and every unit arrives."""
    from poseanimate.nodes import host

    seen = {}

    def step_callback(total):
        seen["total"], seen["done"] = total, 0

        def cb(n=1):
            seen["done"] += n
        return cb

    monkeypatch.setattr(host, "step_callback", step_callback)
    Executor(clip=_source_clip(4)).run(_fast(API, steps=2))
    assert seen["total"] == 1 + 2 + 1 and seen["done"] == seen["total"]
