"""The One-to-All Animation workflow (API twin) run end to end through the node classes on tiny weights.

ComfyUI's core nodes (LoadImage, LoadVideo, CreateVideo, SaveVideo) are
minimal stand-ins; every PoseAnimate node is the real class, called as ComfyUI calls it
(INPUT_TYPES, FUNCTION, return tuples). The weights are the tiny ones of tests/one_to_all_tiny.py
(the names the workflow uses). To stay fast on CPU the sampler gets the overrides the workflow
states in its ``_meta.poseanimate_test_overrides`` (2 steps, the 'reference' resolution = the
reference's own size instead of 480p, one model call per step) and fp32 loaders; everything else
is the file as shipped. The 480p / 30-step / three-way defaults are covered by the unit tests.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import one_to_all_tiny
from poseanimate.headless.executor import Executor
import poseanimate
from poseanimate.models.one_to_all import pipeline
from poseanimate.pose import sample_media

ROOT = Path(__file__).resolve().parents[1]
API = json.loads((ROOT / "workflows" / "api" / "one_to_all_animation.json").read_text())
DISTILLED = json.loads((ROOT / "workflows" / "api" / "one_to_all_animation_distilled.json").read_text())
REF_W, REF_H = 128, 160
CLIP_W, CLIP_H, CLIP_FRAMES, CLIP_FPS = 160, 200, 6, 12.0


def _reference():
    import cv2

    ref = sample_media.sample_reference_image()  # 512x512 astronaut
    ref = cv2.resize(ref[:, 51:461], (REF_W, REF_H), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(ref).float().div(255)[None]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    one_to_all_tiny.write_tiny_models(root)
    return root


@pytest.fixture()
def models(model_files, monkeypatch):
    monkeypatch.setenv("POSEANIMATE_MODELS_DIR", str(model_files))
    return model_files


def _sampler_id(graph):
    (nid,) = [k for k, n in graph.items() if n["class_type"] == "PoseAnimateOneToAllSampler"]
    return nid


def _fast(graph, **sampler):
    g = json.loads(json.dumps(graph))
    node = g[_sampler_id(g)]
    node["inputs"].update({**node["_meta"]["poseanimate_test_overrides"], **sampler})
    for node in g.values():  # fp32 VAE / text encoder / model: bf16 convolutions are slow on CPU
        if "precision" in node["inputs"]:
            node["inputs"]["precision"] = "fp32"
    return g


def test_workflow_uses_hosted_defaults_and_the_tiny_model_names():
    sampler = API[_sampler_id(API)]["inputs"]
    # image guidance 0 = the loaded model's own value (14B: the hosted 2.0; tests/test_one_to_all_defaults.py)
    assert {k: sampler[k] for k in ("resolution", "steps", "image_guidance_scale", "pose_guidance_scale")} == \
        {"resolution": "480p", "steps": 30, "image_guidance_scale": 0.0, "pose_guidance_scale": 1.5}
    names = {n["class_type"]: n["inputs"] for n in API.values()}
    assert names["PoseAnimateOneToAllLoader"]["model_name"] == one_to_all_tiny.TRANSFORMER_FILE
    assert names["PoseAnimateWanVAELoader"]["vae_name"] == one_to_all_tiny.VAE_FILE
    assert names["PoseAnimateWanTextEncoderLoader"]["text_encoder_name"] == one_to_all_tiny.TEXT_ENCODER_FILE
    assert names["PoseAnimateAlignPoses"]["mode"] == "one_to_all_ref" and names["PoseAnimateRenderPoses"]["style"] == "one_to_all"
    # with the test overrides a run keeps the reference's size (what the real-ComfyUI harness expects)
    overrides = API[_sampler_id(API)]["_meta"]["poseanimate_test_overrides"]
    assert overrides["steps"] == 2 and pipeline.output_size(256, 320, overrides["resolution"]) == (256, 320)


def test_api_twin_runs_end_to_end(models):
    clip = torch.from_numpy(sample_media.sample_driving_clip(CLIP_FRAMES, (CLIP_W, CLIP_H))).float().div(255)
    ex = Executor(_reference(), clip, CLIP_FPS)
    graph = _fast(API)
    res = ex.run(graph)
    frames, latent = res[_sampler_id(graph)]
    assert frames.shape == (CLIP_FRAMES, REF_H, REF_W, 3) and frames.dtype == torch.float32
    assert 0 <= float(frames.min()) and float(frames.max()) <= 1 and float(frames.std()) > 0
    assert latent["samples"].shape == (1, 16, 3, REF_H // 8, REF_W // 8) and latent["chunks"] == [(0, 9)]
    ((prefix, video),) = ex.saved
    assert prefix == "PoseAnimate/one_to_all" and video.fps == CLIP_FPS and video.images is frames


def test_distilled_twin_runs_with_its_lora_and_one_call_per_step(models, capsys):
    """The distilled variant: the official graph plus the step-distillation LoRA in the loader and
    the sampler's distilled preset (4 steps, one transformer call per step, said on the console)."""
    nodes = {n["class_type"]: n["inputs"] for n in DISTILLED.values()}
    assert nodes["PoseAnimateOneToAllLoader"]["lora_1"] == one_to_all_tiny.DISTILL_LORA_FILE
    sampler = nodes["PoseAnimateOneToAllSampler"]
    assert sampler["preset"] == "distilled" and sampler["steps"] == 4
    changed = {("PoseAnimateOneToAllLoader", k) for k in ("lora_1", "lora_1_strength", "lora_mode")} | {
        ("PoseAnimateOneToAllSampler", k) for k in ("steps", "image_guidance_scale", "pose_guidance_scale", "preset")}
    for nid, node in API.items():  # the same graph as the official-settings workflow, but for those inputs
        twin = DISTILLED[nid]
        assert twin["class_type"] == node["class_type"]
        assert {k: v for k, v in twin["inputs"].items() if (node["class_type"], k) not in changed} == \
            {k: v for k, v in node["inputs"].items() if (node["class_type"], k) not in changed}, \
            f"node {nid} differs from the official workflow: run python scripts/make_distilled_workflow.py"
    clip = torch.from_numpy(sample_media.sample_driving_clip(CLIP_FRAMES, (CLIP_W, CLIP_H))).float().div(255)
    ex = Executor(_reference(), clip, CLIP_FPS)
    graph = _fast(DISTILLED)
    frames, latent = ex.run(graph)[_sampler_id(graph)]
    assert frames.shape == (CLIP_FRAMES, REF_H, REF_W, 3) and float(frames.std()) > 0
    assert "4 transformer calls" in capsys.readouterr().out  # 1 chunk x 4 steps x 1 call


def test_prepare_reference_pose_mode_mask(models):
    """'pose' alignment: the warped reference and its outpaint mask reach the sampler's inputs."""
    node = poseanimate.NODE_CLASS_MAPPINGS["PoseAnimateOneToAllPrepareReference"]()
    image = _reference()
    mask = torch.zeros(1, REF_H, REF_W)
    mask[:, :, : REF_W // 4] = 1.0
    pose_img = torch.zeros(1, REF_H, REF_W, 3)
    ref, drawn = node.prepare(image, reference_pose_image=pose_img, outpaint_mask=mask)
    assert ref["image"].shape == (REF_H, REF_W, 3) and ref["image"].dtype == np.uint8
    assert ref["mask"].shape == (REF_H, REF_W) and float(ref["mask"][:, : REF_W // 4].min()) == 1.0
    assert drawn.shape == (1, REF_H, REF_W, 3)
    ref, _ = node.prepare(image, reference_pose_image=pose_img, outpaint_mask=torch.zeros(1, REF_H, REF_W))
    assert ref["mask"] is None  # 'ref' mode's all-zero mask = no outpainting
    with pytest.raises(ValueError, match="reference_pose"):
        node.prepare(image)
    with pytest.raises(ValueError, match="outpaint_mask"):
        node.prepare(image, reference_pose_image=pose_img, outpaint_mask=torch.zeros(1, 10, 10))


def test_loader_reports_missing_file(models):
    from poseanimate.nodes.host import ModelFileError

    node = poseanimate.NODE_CLASS_MAPPINGS["PoseAnimateOneToAllLoader"]()
    with pytest.raises(ModelFileError, match="diffusion_models"):
        node.load("no_such_model.safetensors")
    spec = node.INPUT_TYPES()["required"]
    assert one_to_all_tiny.TRANSFORMER_FILE in spec["model_name"][0]
    assert spec["weight_storage"][0] == ["default", "fp8_e4m3fn", "fp8_e4m3fn_scaled"]


def test_sampler_node_progress_interrupt_and_release(monkeypatch):
    """The node reports chunks x steps of progress, and frees model and VAE after a run and on Cancel."""
    from test_one_to_all_pipeline import LinearVAE, RecordingModel, embeds, images

    from poseanimate.nodes import host

    class Interrupted(Exception):
        pass

    events, totals = [], []

    class VAE(LinearVAE):
        def release(self):
            events.append("vae released")

    def step_callback(total, stop_after=None):
        totals.append(total)

        def cb(n=1):
            events.append("step")
            if stop_after is not None and events.count("step") == stop_after:
                raise Interrupted()
        return cb

    model = pipeline.OneToAllModel(RecordingModel(), torch.float32, "cpu")
    monkeypatch.setattr(model, "release", lambda: events.append("model released"))
    monkeypatch.setattr(host, "free_memory", lambda: events.append("freed"))
    node = poseanimate.NODE_CLASS_MAPPINGS["PoseAnimateOneToAllSampler"]()
    ref, poses, ref_pose = images(90)
    reference = {"image": ref, "pose": ref_pose, "mask": None}
    args = dict(resolution="reference", steps=2, image_guidance_scale=2.0, pose_guidance_scale=1.5, seed=1)

    monkeypatch.setattr(host, "step_callback", step_callback)
    frames, latent = node.sample(model, VAE(), embeds(), reference, torch.from_numpy(poses).float() / 255, **args)
    assert totals == [4] and events.count("step") == 4 and frames.shape == (90, 48, 32, 3)
    assert events[-3:] == ["model released", "vae released", "freed"] and latent["chunks"] == [(0, 81), (25, 90)]

    events.clear()
    monkeypatch.setattr(host, "step_callback", lambda total: step_callback(total, stop_after=3))
    calls_before = len(model.transformer.calls)
    with pytest.raises(Interrupted):
        node.sample(model, VAE(), embeds(), reference, torch.from_numpy(poses).float() / 255, **args)
    assert events == ["step"] * 3 + ["model released", "vae released", "freed"]
    assert len(model.transformer.calls) - calls_before == 3 * 3  # nothing ran after the interrupt


def test_loader_takes_the_released_shard_folder(models_dir):
    """Picking one shard of the released folder loads every shard (as the official scripts do)."""
    sd = one_to_all_tiny.tiny_state_dict()
    one_to_all_tiny.write_official_checkpoint(models_dir / "diffusion_models" / "One-to-All-14b", sd, shards=2)
    node = poseanimate.NODE_CLASS_MAPPINGS["PoseAnimateOneToAllLoader"]()
    names = node.INPUT_TYPES()["required"]["model_name"][0]
    shard = "One-to-All-14b/model-00001-of-00002.safetensors"
    assert shard in names
    (model,) = node.load(shard, precision="fp32")
    assert isinstance(model, pipeline.OneToAllModel) and model.dtype == torch.float32
    loaded = model.transformer.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
