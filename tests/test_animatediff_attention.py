"""AnimateDiff on the runtime: the loader's attention backend reaches the SD1.5 UNet's and
ControlNet's attention (same numbers as diffusers' SDPA processor; the backend's kernel gets the
runtime's [B, S, H, D] layout), and the model object follows the one life cycle."""
import torch

from poseanimate.models.animatediff import pipeline as pl
from poseanimate.models.animatediff.model import AnimateDiffModel
from poseanimate.models.runtime import attention as rt_attn
from poseanimate.models.runtime.lifecycle import RuntimeOptions, SampleResult
from test_animatediff_sampling import CharTokenizer, tiny_models, video


class AlwaysBackend(rt_attn.AttentionBackend):
    """A backend whose kernel runs on CPU too (SDPA in the runtime's layout), counting calls."""

    def applies(self, q):
        return True


def _sdpa_kernel(calls):
    def kernel(q, k, v):
        calls.append(tuple(q.shape))
        return torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    return kernel


def test_unet_and_controlnet_attention_use_the_backend_with_the_same_output():
    unet, vae, te, cn = tiny_models(controlnet=True)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(1))
    inner = unet.unet if hasattr(unet, "unet") else unet
    with torch.no_grad():
        ref = cn(x, torch.tensor([500.0]), ctx, torch.zeros(2, 3, 64, 64), return_dict=False)[0][0]
    calls = []
    model = AnimateDiffModel(pl.AnimateDiffV2V(unet, vae, te, CharTokenizer(), controlnet=cn),
                             options=RuntimeOptions(attention="sdpa"))
    model.install_attention(AlwaysBackend("test", _sdpa_kernel(calls)))
    assert isinstance(inner.poseanimate_attention, AlwaysBackend) and cn.poseanimate_attention is inner.poseanimate_attention
    with torch.no_grad():
        got = cn(x, torch.tensor([500.0]), ctx, torch.zeros(2, 3, 64, 64), return_dict=False)[0][0]
    assert calls and all(len(s) == 4 and s[0] == 2 for s in calls)  # [B, S, H, D]
    assert torch.allclose(got, ref, atol=1e-5)


def test_model_object_samples_into_the_runtime_result():
    unet, vae, te, _ = tiny_models()
    model = AnimateDiffModel(pl.AnimateDiffV2V(unet, vae, te, CharTokenizer()), options=RuntimeOptions(attention="sdpa"))
    settings = pl.V2VSettings(prompt="a dancer", steps=2, seed=3, select_every_nth_frame=2)
    frames = video(frames=6)
    ticks = []
    assert model.progress_total(settings) == 2 and model.transformer_calls(6, settings) == 2  # 3 frames: one window
    result = model.sample(frames, settings, callback=lambda *a: ticks.append(1))
    assert isinstance(result, SampleResult) and result.frames.shape == frames.shape and result.seed == 3
    assert result.info["generated_frames"] == 3 and len(ticks) == model.progress_total(settings, 6)
    inner = unet.unet if hasattr(unet, "unet") else unet
    assert inner.poseanimate_attention.name == "sdpa"  # the attention step ran in prepare
