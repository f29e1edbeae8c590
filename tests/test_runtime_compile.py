"""Regional torch.compile on CPU: a tiny Wan DiT's compiled blocks give the eager output (1e-5)."""
import pytest
import torch

import wan_tiny as T

from poseanimate.models.runtime import compile as rc

AVAILABLE, WHY = rc.inductor_available("cpu")


@pytest.mark.skipif(not AVAILABLE, reason=WHY or "inductor unavailable")
def test_compiled_blocks_match_eager_on_cpu():
    official = T.official_transformer_sd(**dict(T.TINY_DIT, num_layers=2))
    model, _ = T.diffusers_transformer_reference(official)
    inputs = T.transformer_inputs(official, frames=1, height=4, width=4, text_len=3)
    with torch.no_grad():
        eager = model(**inputs, return_dict=False)[0]
        torch._dynamo.reset()
        assert rc.compile_blocks(model, dynamic=False) == 2
        assert rc.compile_blocks(model, dynamic=False) == 2  # idempotent: not wrapped twice
        compiled = model(**inputs, return_dict=False)[0]
    assert torch.allclose(compiled, eager, atol=1e-5, rtol=1e-5), (compiled - eager).abs().max()
    names = set(model.state_dict())
    rc.uncompile_blocks(model)
    assert "forward" not in model.blocks[0].__dict__ and set(model.state_dict()) == names


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="compile mode"):
        rc.compile_blocks(torch.nn.Module(), mode="fast")


def test_runtime_prepare_step_compiles_and_uncompiles():
    """The life cycle's compile step (no forward is run: compilation itself happens lazily)."""
    from poseanimate.models.runtime.lifecycle import RuntimeOptions
    from poseanimate.models.wan.model import WanTransformerHandle

    official = T.official_transformer_sd(**T.TINY_DIT)
    model, _ = T.diffusers_transformer_reference(official)
    handle = WanTransformerHandle(model, options=RuntimeOptions(compile="default"))
    handle.prepare("cpu")
    assert model.poseanimate_compiled == AVAILABLE and ("forward" in model.blocks[0].__dict__) == AVAILABLE
    handle.options.compile = "off"
    handle.prepare("cpu")
    assert "forward" not in model.blocks[0].__dict__
