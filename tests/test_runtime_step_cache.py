"""First-block step cache on the real tiny transformers: off / threshold 0 changes nothing, a
skipped call reuses the blocks' last residual exactly, One-to-All's three guidance calls and
UniAnimate's windows each keep their own entry."""
import pytest
import torch
from safetensors.torch import load_file

import one_to_all_tiny
import wan_tiny as T
from test_one_to_all_pipeline import LinearVAE, images
from test_unianimate_pipeline import LONG, REF, _long_conditions, _token_fn, tiny_model  # noqa: F401 (fixture)

from poseanimate.models.one_to_all import pipeline
from poseanimate.models.runtime import step_cache as sc
from poseanimate.models.unianimate import pipeline as ua
from poseanimate.models.wan.text import WanPromptEmbeds


def _one_to_all_run(model, steps=2):
    ref, poses, ref_pose = images(9, h=16, w=16)
    g = torch.Generator().manual_seed(2)
    dim = one_to_all_tiny.TINY_ONE_TO_ALL["text_dim"]
    text = WanPromptEmbeds(torch.randn(1, 512, dim, generator=g), torch.randn(1, 512, dim, generator=g), "", "", 3, 5)
    return pipeline.sample_one_to_all(pipeline.OneToAllModel(model, torch.float32, "cpu"), LinearVAE(), text, ref,
                                      poses, ref_pose, resolution=(16, 16), steps=steps, seed=3).chunk_latents[0]


@pytest.fixture(scope="module")
def one_to_all():
    model = one_to_all_tiny.tiny_one_to_all()
    return model, _one_to_all_run(model)


def test_one_to_all_threshold_zero_is_off_and_never_skipping_is_identical(one_to_all):
    model, baseline = one_to_all
    assert sc.install_step_cache(model, 0.0) is None and sc.get_step_cache(model) is None  # 0 = off: the eager model
    cache = sc.install_step_cache(model, 1e-12)  # cache path active, nothing close enough to skip
    try:
        assert torch.equal(_one_to_all_run(model), baseline)
        assert cache.stats == {"calls": 2 * 3, "skipped": 0}
        assert {call for call, _tag in cache._entries} == {"cond", "uncond", "ref_uncond"}
    finally:
        sc.remove_step_cache(model)


def test_one_to_all_skips_per_call_type(one_to_all):
    model, baseline = one_to_all
    cache = sc.install_step_cache(model, 1e9, max_skips=1)  # skip whenever allowed
    try:
        latents = _one_to_all_run(model)
        assert cache.stats == {"calls": 6, "skipped": 3}  # per call type: step 0 computed, step 1 skipped
    finally:
        sc.remove_step_cache(model)
    assert torch.isfinite(latents).all() and not torch.equal(latents, baseline)


def test_skipped_call_reuses_the_blocks_residual_exactly():
    """Plain diffusers loop (block list wrapped): the same inputs twice -> the skipped second call
    equals the computed one; state-dict names and the plain block list come back on removal."""
    official = T.official_transformer_sd(**T.TINY_DIT)
    model, _ = T.diffusers_transformer_reference(official)
    names = list(model.state_dict())
    inputs = T.transformer_inputs(official)
    with torch.no_grad():
        expected = model(**inputs, return_dict=False)[0]
        cache = sc.install_step_cache(model, 1e9)
        assert list(model.state_dict()) == names and len(list(model.blocks)) == len(model.blocks)
        first = model(**inputs, return_dict=False)[0]
        second = model(**inputs, return_dict=False)[0]
    assert cache.stats == {"calls": 2, "skipped": 1}
    assert torch.equal(first, expected) and torch.allclose(second, expected, atol=1e-6)
    sc.remove_step_cache(model)
    assert type(model.blocks) is torch.nn.ModuleList and list(model.state_dict()) == names


def test_unianimate_windows_have_their_own_entries(tiny_model):  # noqa: F811
    model, encoders = tiny_model
    inp = load_file(REF / "tiny_long_inputs.safetensors")
    steps = 2

    def run():
        return ua.denoise(model, _token_fn(encoders, inp), _long_conditions(inp), inp["noise"], steps,
                          LONG["cfg_scale"], LONG["context_size"], LONG["context_overlap"],
                          first_features=inp["first_features"])

    baseline = run()
    windows = len(LONG["windows"])
    cache = sc.install_step_cache(model, 1e-12)
    try:
        assert torch.equal(run(), baseline)
        assert {call for call, _tag in cache._entries} == {(i, kind) for i in range(windows) for kind in ("cond", "uncond")}
        sc.install_step_cache(model, 1e9, max_skips=1)
        cache = sc.get_step_cache(model)
        cached = run()
        assert cache.stats == {"calls": steps * windows * 2, "skipped": windows * 2}  # step 1 of every entry
        assert torch.isfinite(cached).all() and not torch.equal(cached, baseline)
    finally:
        sc.remove_step_cache(model)


def test_runtime_prepare_step_installs_and_release_resets(one_to_all):
    """The life cycle's cache step: options turn it on at prepare, release frees the entries and
    says how many calls were skipped; 'off' removes it again."""
    from poseanimate.models.runtime.lifecycle import RuntimeOptions

    model, _ = one_to_all
    handle = pipeline.OneToAllModel(model, torch.float32, "cpu", options=RuntimeOptions(cache="first_block",
                                                                                       cache_threshold=0.2))
    handle.prepare("cpu")
    cache = sc.get_step_cache(model)
    assert cache is not None and cache.threshold == 0.2
    cache.stats["calls"] = 3
    handle.release()
    assert cache.stats == {"calls": 0, "skipped": 0}
    handle.options.cache = "off"
    handle.prepare("cpu")
    assert sc.get_step_cache(model) is None
    handle.release()
