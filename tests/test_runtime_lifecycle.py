"""The one runtime life cycle: every family's model object prepares (attention, placement, the
registered steps in order), samples into one result type and releases the same way."""
import pytest
import torch

import one_to_all_tiny
import poseanimate
from poseanimate.models.one_to_all import pipeline as o2a
from poseanimate.models.runtime import lifecycle
from poseanimate.models.runtime.lifecycle import RuntimeOptions, SampleResult
from poseanimate.models.unianimate import pipeline as ua
from poseanimate.models.unianimate import windows as win
from test_one_to_all_pipeline import LinearVAE, embeds, images
from test_unianimate_pipeline import tiny_model  # noqa: F401 (fixture)


@pytest.fixture()
def recorded_step():
    """A step registered between placement and the toolkit's slots, as a toolkit module would."""
    seen = []

    def release(model):
        seen.append(("release", type(model).__name__))

    lifecycle.prepare_step("test_probe", 25, release=release)(
        lambda model, device: seen.append(("prepare", type(model).__name__, getattr(model.transformer, "poseanimate_block_swap", None) is not None)))
    yield seen
    del lifecycle._STEPS["test_probe"]


def test_steps_run_in_order():
    names = [s.name for s in lifecycle.steps()]
    assert names[:2] == ["attention", "placement"]
    orders = [s.order for s in lifecycle.steps()]
    assert orders == sorted(orders)


def test_one_to_all_prepares_attention_and_block_swap_and_samples_one_result_type(recorded_step):
    """One-to-All gets the attention backend in production (the loader's choice), placement at
    prepare, the toolkit's steps after placement, and a SampleResult."""
    transformer = one_to_all_tiny.tiny_one_to_all()
    model = o2a.OneToAllModel(transformer, torch.float32, "cpu", options=RuntimeOptions(attention="sdpa", blocks_to_swap=1))
    ref, poses, ref_pose = images(9)
    result = model.sample(LinearVAE(), embeds(one_to_all_tiny.TINY_ONE_TO_ALL["text_dim"]), ref, poses, ref_pose,
                          resolution=(16, 16), steps=2, image_guidance_scale=1.0, seed=1)
    assert transformer.poseanimate_attention.name == "sdpa"
    assert recorded_step == [("prepare", "OneToAllModel", True), ("release", "OneToAllModel")]
    assert isinstance(result, SampleResult) and result.frames.shape == (9, 16, 16, 3)
    assert result.frames.dtype == torch.float32 and 0 <= float(result.frames.min()) <= float(result.frames.max()) <= 1
    assert result.latent["samples"].shape[:2] == (1, 16) and result.seed == 1
    assert result.info["transformer_calls"] == model.transformer_calls(9, 2, 1.0) == 2
    assert not transformer.poseanimate_block_swap._loaded  # released: no prefetched block left


def test_unianimate_same_life_cycle(tiny_model, recorded_step):  # noqa: F811
    transformer, encoders = tiny_model
    model = ua.UniAnimateModel(transformer, encoders, torch.float32, "cpu", "meta", RuntimeOptions(blocks_to_swap=1))
    model.prepare()
    assert transformer.poseanimate_block_swap.num_swapped == 1 and transformer.poseanimate_attention.name == "sdpa"
    model.options.offload_after_run = False  # keep the module-scoped fixture on the CPU
    model.release()
    assert recorded_step == [("prepare", "UniAnimateModel", True), ("release", "UniAnimateModel")]
    windows = len(win.plan_windows(7, 4, 3))  # 23 frames -> 25 -> 7 latent frames
    assert model.progress_total(23, 2, 4, 3) == 2 * windows and model.transformer_calls(23, 2, 1.5, 4, 3) == 4 * windows
    transformer.poseanimate_block_swap.detach()
    transformer.poseanimate_block_swap = None


def test_loader_nodes_share_the_runtime_inputs(models_dir):
    one_to_all_tiny.write_tiny_models(models_dir)
    specs = {name: poseanimate.NODE_CLASS_MAPPINGS[name].INPUT_TYPES()["required"]
             for name in ("PoseAnimateOneToAllLoader", "PoseAnimateUniAnimateLoader")}
    for spec in specs.values():
        assert spec["attention"][0][0] == "auto" and "sdpa" in spec["attention"][0]
        assert spec["block_swap"][1]["default"] == 0
    node = poseanimate.NODE_CLASS_MAPPINGS["PoseAnimateOneToAllLoader"]()
    (model,) = node.load(one_to_all_tiny.TRANSFORMER_FILE, precision="fp32", block_swap=1, attention="sdpa")
    assert model.options.blocks_to_swap == 1 and model.options.attention == "sdpa"
    assert not hasattr(model.transformer, "poseanimate_block_swap")  # placement waits for prepare
    assert {p.device.type for p in model.transformer.parameters()} == {"cpu"}
    assert model.transformer_calls(81, 30) == model.progress_total(81, 30) * 3  # chunks x steps x 3 calls
