"""Wan2.1 runtime: scheduler, attention processor, block swap / offload, VAE tiling, prompt encoding."""
import json

import pytest
import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from poseanimate.models.runtime import attention as rt_attn
from poseanimate.models.wan import attention as attn_mod
from poseanimate.models.runtime import placement as offload
from poseanimate.models.wan import model as wan_model
from poseanimate.models.runtime import precision
from poseanimate.models.one_to_all.schedule import one_to_all_scheduler
from poseanimate.models.unianimate.pipeline import UNIANIMATE_TILES
from poseanimate.models.unianimate.schedule import unianimate_scheduler
from poseanimate.models.wan import scheduler, text, vae_tiling

FIX = __import__("pathlib").Path(__file__).resolve().parent / "fixtures" / "reference"

TINY = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
    text_dim=24, freq_dim=16, ffn_dim=48, num_layers=4, rope_max_seq_len=64,
)


def tiny_transformer(seed=0, **extra):
    torch.manual_seed(seed)
    return WanTransformer3DModel(**{**TINY, **extra}).eval()


def tiny_inputs(seed=1, frames=3, size=8, ctx=512):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, frames, size, size, generator=g)
    context = torch.randn(1, ctx, TINY["text_dim"], generator=g)
    return x, torch.tensor([700.0]), context


# ----------------------------------------------------------------------------- scheduler
def test_one_to_all_schedule_matches_reference_bit_for_bit():
    ref = json.loads((FIX / "one_to_all" / "schedule_and_chunks.json").read_text())["scheduler"]
    sch = one_to_all_scheduler(30)
    assert torch.equal(sch.sigmas, torch.tensor(ref["sigmas"], dtype=torch.float32))
    assert torch.equal(sch.timesteps, torch.tensor(ref["timesteps"], dtype=torch.float32))
    assert sch.timesteps[0] == 1000.0 and abs(float(sch.timesteps[-1]) - 46.75572205) < 1e-5


@pytest.mark.parametrize("key", ["steps50_shift5", "steps30_shift5", "steps4_shift5"])
def test_unianimate_schedule_matches_reference_bit_for_bit(key):
    ref = json.loads((FIX / "unianimate_dit" / "schedule_and_windows.json").read_text())["scheduler"][key]
    steps = int(key.split("steps")[1].split("_")[0])
    sch = unianimate_scheduler(steps)
    assert torch.equal(sch.sigmas[:-1], torch.tensor(ref["sigmas"], dtype=torch.float32))
    assert sch.sigmas[-1] == 0.0
    assert torch.equal(sch.timesteps, torch.tensor(ref["timesteps"], dtype=torch.float32))


@pytest.mark.parametrize("steps", [2, 7, 30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_equals_diffusers_flow_match_euler(steps, dtype):
    ref = FlowMatchEulerDiscreteScheduler(shift=7.0, num_train_timesteps=1000, use_dynamic_shifting=False)
    ref.set_timesteps(steps)
    ours = one_to_all_scheduler(steps)
    assert torch.equal(ref.sigmas, ours.sigmas) and torch.equal(ref.timesteps, ours.timesteps)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 3, 4, 4, generator=g).to(dtype)
    for i in range(steps):
        v = torch.randn(x.shape, generator=g).to(dtype)
        expected = ref.step(v, ref.timesteps[i], x, return_dict=False)[0]
        got = ours.step(x, v, i)
        assert got.dtype == expected.dtype and torch.equal(got, expected), i
        x = got


def test_sampling_with_exact_flow_reaches_the_clean_sample():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 5, 6, 6, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    for sch in (one_to_all_scheduler(9), unianimate_scheduler(9)):
        x = sch.add_noise(x0, noise, 0)
        for i in range(sch.num_steps):
            x = sch.step(x, noise - x0, i)
        assert torch.allclose(x, x0, atol=1e-5)


def test_frozen_frames_are_not_stepped():
    sch = one_to_all_scheduler(5)
    x = torch.randn(1, 4, 6, 2, 2)
    v = torch.randn(1, 4, 6, 2, 2)
    out = sch.step(x, v, 1, frozen_frames=[0, 1])
    assert torch.equal(out[:, :, :2], x[:, :, :2])
    free = sch.step(x, v, 1)
    assert torch.equal(out[:, :, 2:], free[:, :, 2:])
    assert not torch.equal(free[:, :, :2], x[:, :, :2])
    mask = torch.tensor([True, False, False, False, False, True])
    out2 = sch.step(x, v, 1, frozen_frames=mask)
    assert torch.equal(out2[:, :, 5], x[:, :, 5]) and torch.equal(out2[:, :, 1:5], free[:, :, 1:5])


def test_per_token_timesteps_layout_and_model_equivalence():
    per_frame = scheduler.frame_timesteps(930.5, 4, clean_frames=[1, 2])
    assert per_frame.tolist() == [930.5, 0.0, 0.0, 930.5]
    tokens = scheduler.token_timesteps(per_frame, tokens_per_frame=3, batch=2)
    assert tokens.shape == (2, 12)
    assert tokens[0].tolist() == [930.5] * 3 + [0.0] * 6 + [930.5] * 3
    # All tokens at the same timestep == the scalar timestep in diffusers' Wan transformer.
    model = tiny_transformer()
    x, t, ctx = tiny_inputs()
    tokens_per_frame = (x.shape[3] // 2) * (x.shape[4] // 2)
    same = scheduler.token_timesteps(scheduler.frame_timesteps(t, x.shape[2]), tokens_per_frame)
    with torch.no_grad():
        a = model(x, t, ctx, return_dict=False)[0]
        b = model(x, same, ctx, return_dict=False)[0]
        c = model(x, scheduler.token_timesteps(scheduler.frame_timesteps(t, x.shape[2], [1]), tokens_per_frame), ctx, return_dict=False)[0]
    assert (a - b).abs().max() < 1e-5
    assert (a - c).abs().max() > 1e-3  # a clean frame changes the output


def test_seeded_noise_is_bit_identical_and_seed_dependent():
    a = scheduler.seeded_noise((1, 16, 3, 8, 8), 42)
    b = scheduler.seeded_noise((1, 16, 3, 8, 8), 42)
    c = scheduler.seeded_noise((1, 16, 3, 8, 8), 43)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(42)))
    bf = scheduler.seeded_noise((2, 3), 7, dtype=torch.float32, draw_dtype=torch.bfloat16)
    assert torch.equal(bf, torch.randn(2, 3, generator=torch.Generator().manual_seed(7), dtype=torch.bfloat16).float())
    g = scheduler.make_generator(5)
    first, second = scheduler.seeded_noise((4,), g), scheduler.seeded_noise((4,), g)
    assert not torch.equal(first, second)  # a generator continues its stream


def test_scheduler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="positive integer"):
        one_to_all_scheduler(0)
    sch = unianimate_scheduler(3)
    with pytest.raises(IndexError):
        sch.step(torch.zeros(1, 1, 1, 1, 1), torch.zeros(1, 1, 1, 1, 1), 3)
    with pytest.raises(ValueError, match="shape"):
        sch.step(torch.zeros(1, 1, 2, 1, 1), torch.zeros(1, 1, 1, 1, 1), 0)
    with pytest.raises(ValueError, match="seed"):
        scheduler.make_generator(-1)


def test_precision_names():
    assert precision.dtype_from_name("bf16") is torch.bfloat16
    assert precision.dtype_from_name("float32") is torch.float32
    assert precision.name_from_dtype(torch.float16) == "fp16"
    assert precision.weight_dtype_from_name("default") is None
    assert precision.weight_dtype_from_name("fp8_e4m3fn_scaled") is torch.float8_e4m3fn
    with pytest.raises(ValueError, match="bf16, fp16, fp32"):
        precision.dtype_from_name("int8")
    with pytest.raises(ValueError, match="weight storage"):
        precision.weight_dtype_from_name("fp4")


# ----------------------------------------------------------------------------- attention
@pytest.mark.parametrize("i2v", [False, True])
def test_attention_processor_matches_diffusers(i2v):
    extra = dict(image_dim=20, added_kv_proj_dim=32) if i2v else {}
    model = tiny_transformer(**extra)
    x, t, ctx = tiny_inputs()
    kwargs = dict(encoder_hidden_states_image=torch.randn(1, 257, 20)) if i2v else {}
    with torch.no_grad():
        ref = model(x, t, ctx, return_dict=False, **kwargs)[0]
        backend = attn_mod.install_attention(model, "auto")
        got = model(x, t, ctx, return_dict=False, **kwargs)[0]
    assert backend.name == "sdpa"  # CPU: nothing else applies
    assert all(isinstance(m.processor, attn_mod.WanAttentionProcessor) for m in model.modules() if hasattr(m, "set_processor"))
    assert (ref - got).abs().max() < 1e-5
    processor = model.blocks[0].attn1.processor
    assert processor.rope_cache._freqs is not None
    attn_mod.release(model)
    assert processor.rope_cache._freqs is None
    attn_mod.uninstall_attention(model)
    assert all(type(m.processor) is WanAttnProcessor for m in model.modules() if hasattr(m, "set_processor"))


def test_attention_processor_bf16_within_tolerance():
    model = tiny_transformer().to(torch.bfloat16)
    x, t, ctx = tiny_inputs()
    x, ctx = x.bfloat16(), ctx.bfloat16()
    with torch.no_grad():
        ref = model(x, t, ctx, return_dict=False)[0].float()
        attn_mod.install_attention(model, "sdpa")
        got = model(x, t, ctx, return_dict=False)[0].float()
    assert (ref - got).abs().max() <= 0.02 * ref.abs().max()


def test_install_keeps_custom_processors():
    class Custom(WanAttnProcessor):
        pass

    model = tiny_transformer()
    custom = Custom()
    model.blocks[0].attn1.set_processor(custom)
    attn_mod.install_attention(model, "sdpa")
    assert model.blocks[0].attn1.processor is custom
    assert isinstance(model.blocks[0].attn2.processor, attn_mod.WanAttentionProcessor)


def test_backend_selection_and_fallback(monkeypatch):
    with pytest.raises(ValueError, match="Unknown attention backend"):
        rt_attn.select_backend("xformers2")
    assert rt_attn.select_backend("sdpa").name == "sdpa"
    if not torch.cuda.is_available():
        assert rt_attn.available_backends() == ["sdpa"]
        assert rt_attn.select_backend("flash_attn").name == "sdpa"
    # A kernel is only used where it applies (CUDA fp16/bf16); elsewhere SDPA answers.
    calls = []
    fake = rt_attn.AttentionBackend("fake", lambda q, k, v: calls.append(1) or q)
    q = torch.randn(1, 5, 2, 8)
    out = rt_attn.attention(q, q, q, fake)
    ref = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), q.transpose(1, 2), q.transpose(1, 2)).transpose(1, 2)
    assert not calls and torch.allclose(out, ref)
    sage = rt_attn.AttentionBackend("sageattention", lambda q, k, v: q)
    assert not sage.applies(torch.zeros(1, 2, 2, 128))  # CPU tensor
    assert not rt_attn.AttentionBackend("sdpa").applies(q)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and flash-attn/sageattention")
def test_fast_backends_match_sdpa_on_gpu():
    q, k, v = (torch.randn(1, 1024, 4, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ref = rt_attn.attention(q, k, v, rt_attn.AttentionBackend())
    for name in rt_attn.available_backends()[1:]:
        got = rt_attn.attention(q, k, v, rt_attn.select_backend(name))
        tol = 0.05 if name == "sageattention" else 0.02
        assert (got.float() - ref.float()).abs().max() < tol, name


# ----------------------------------------------------------------------------- block swap / offload
def test_block_swap_cpu_hooks_stream_blocks_and_keep_numerics():
    model = tiny_transformer()
    x, t, ctx = tiny_inputs()
    with torch.no_grad():
        ref = model(x, t, ctx, return_dict=False)[0]
    swap = offload.apply_block_swap(model, 2, "cpu", prefetch=1)
    assert swap.swapped == [2, 3]
    masters = {i: [m.data_ptr() for _, _, _, m in swap._masters[i]] for i in swap.swapped}
    seen = {}

    def spy(index):
        def hook(module, args):
            seen[index] = [p.data_ptr() for p in module.parameters()]
        return hook

    for i in swap.swapped:
        model.blocks[i].register_forward_pre_hook(spy(i))
    with torch.no_grad():
        out1 = model(x, t, ctx, return_dict=False)[0]
        out2 = model(x, t, ctx, return_dict=False)[0]
    assert torch.equal(out1, ref) and torch.equal(out2, ref)
    for i in swap.swapped:
        assert not set(seen[i]) & set(masters[i])  # while running: a streamed copy
    # between runs: the CPU master again (block 2 is already prefetched for the next run)
    assert [p.data_ptr() for p in model.blocks[3].parameters()] == masters[3]
    assert swap.stats["misses"] == 0  # block 2 is prefetched while block 0 runs
    # every load was used by a block, except the one prefetched for the next forward
    assert swap.stats["prefetch_hits"] == 4 and swap.stats["loads"] == 5 and list(swap._loaded) == [2]
    swap.release()
    assert not swap._loaded
    for i in swap.swapped:
        assert [p.data_ptr() for p in model.blocks[i].parameters()] == masters[i]
    # Order: each swapped block is requested one block ahead of its turn (overlap on a GPU).
    events = []
    load = swap._load
    swap._load = lambda i: (events.append(("load", i)), load(i))
    for i in range(4):
        model.blocks[i].register_forward_hook(lambda m, a, o, i=i: events.append(("ran", i)))
    with torch.no_grad():
        model(x, t, ctx, return_dict=False)
    assert events == [("load", 2), ("ran", 0), ("ran", 1), ("load", 3), ("ran", 2), ("load", 2), ("ran", 3)]
    swap.detach()
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx, return_dict=False)[0], ref)
    assert swap.stats["offloads"] >= 4


def test_block_swap_without_prefetch_loads_on_demand():
    model = tiny_transformer()
    x, t, ctx = tiny_inputs()
    with torch.no_grad():
        ref = model(x, t, ctx, return_dict=False)[0]
    swap = offload.apply_block_swap(model, 4, "cpu", prefetch=0)
    with torch.no_grad():
        out = model(x, t, ctx, return_dict=False)[0]
    assert torch.equal(out, ref)
    assert swap.stats == {"loads": 4, "prefetch_hits": 0, "misses": 4, "offloads": 4}
    assert swap.resident_bytes() == 0
    with pytest.raises(ValueError, match="between 0 and 4"):
        offload.BlockSwap(model.blocks, 5, "cpu")


def test_block_swap_streams_fp8_layers_with_their_scales():
    from poseanimate.models.runtime.fp8 import convert_to_fp8

    model = tiny_transformer().to(torch.bfloat16)
    convert_to_fp8(model)
    x, t, ctx = tiny_inputs()
    x, ctx = x.bfloat16(), ctx.bfloat16()
    with torch.no_grad():
        ref = model(x, t, ctx, return_dict=False)[0]
        swap = offload.apply_block_swap(model, 3, "cpu")
        scale = model.blocks[3].attn1.to_q._buffers["scale_weight"]
        assert any(m is scale for _, n, _, m in swap._masters[3] if n == "scale_weight")
        out = model(x, t, ctx, return_dict=False)[0]
    assert torch.equal(out, ref)
    assert model.blocks[3].attn1.to_q.weight.dtype == torch.float8_e4m3fn


def test_prepare_and_release_transformer():
    model = tiny_transformer()
    x, t, ctx = tiny_inputs()
    with torch.no_grad():
        ref = model(x, t, ctx, return_dict=False)[0]
        wan_model.prepare_transformer(model, "cpu", "auto", blocks_to_swap=2)
        assert model.poseanimate_attention.name == "sdpa" and model.poseanimate_block_swap.num_swapped == 2
        assert torch.allclose(model(x, t, ctx, return_dict=False)[0], ref, atol=1e-5)
    wan_model.release_transformer(model)
    assert not model.poseanimate_block_swap._loaded
    assert model.blocks[0].attn1.processor.rope_cache._freqs is None
    wan_model.prepare_transformer(model, "cpu", "sdpa", blocks_to_swap=0)  # swap removed again
    assert model.poseanimate_block_swap is None and not model.blocks[3]._forward_pre_hooks


def test_plan_block_swap_fits_budget():
    model = tiny_transformer()
    block = offload.tensor_bytes(model.blocks[0])
    other = offload.tensor_bytes(model) - 4 * block
    assert offload.plan_block_swap(model, other + 4 * block, 0).blocks_to_swap == 0
    plan = offload.plan_block_swap(model, other + 3 * block + 10, 0, prefetch=1)
    assert plan.blocks_to_swap == 3  # 1 resident + 2 in flight
    with pytest.raises(ValueError, match="budget"):
        offload.plan_block_swap(model, other + block, 0)
    est = offload.estimate_activation_bytes(32760, 5120, 13824)
    assert 2 * 2**30 < est < 12 * 2**30


def test_placement_moves_in_for_use_and_out_after():
    moves = []

    class Recorder(torch.nn.Linear):
        def to(self, *args, **kwargs):
            moves.append(torch.device(args[0]))
            return self

    module = Recorder(2, 2)
    place = offload.Placement(module, "cuda", "cpu", offload_after_use=True)
    assert not place.on_device
    with place.use() as m:
        assert m is module and place.on_device
    assert moves == [torch.device("cuda"), torch.device("cpu")] and not place.on_device
    keep = offload.Placement(module, "cuda", "cpu", offload_after_use=False)
    moves.clear()
    for _ in range(2):
        with keep.use():
            pass
    assert moves == [torch.device("cuda")]
    with pytest.raises(RuntimeError):
        with place.use():
            raise RuntimeError("boom")
    assert not place.on_device  # offloaded even when the call failed
    keep.release()
    assert moves[-1] == torch.device("cpu")


# ----------------------------------------------------------------------------- VAE tiling
def tiny_vae():
    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1).eval()


class _PointEncoder(torch.nn.Module):
    """Stand-in causal encoder: 8x8 average pool per frame group, frame 0 alone then groups of 4."""

    def forward(self, x, feat_cache=None, feat_idx=(0,), first_chunk=False):
        frames = x.mean(dim=2, keepdim=True)
        pooled = torch.nn.functional.avg_pool3d(frames, (1, 8, 8))
        c = pooled.repeat(1, 32 // 3 + 1, 1, 1, 1)[:, :32]
        return c * torch.linspace(0.5, 1.5, 32).view(1, 32, 1, 1, 1)


class _PointDecoder(torch.nn.Module):
    """Stand-in decoder: nearest 8x upsampling, 1 frame for the first latent frame, 4 after."""

    def forward(self, x, feat_cache=None, feat_idx=(0,), first_chunk=False):
        frames = 1 if first_chunk else 4
        up = torch.nn.functional.interpolate(x[:, :3], scale_factor=(frames, 8, 8), mode="nearest")
        return up


def test_tiling_arithmetic_exact_with_pointwise_stand_ins():
    vae = tiny_vae()
    vae.encoder, vae.decoder = _PointEncoder(), _PointDecoder()
    vae.quant_conv = torch.nn.Identity()
    vae.post_quant_conv = torch.nn.Identity()
    g = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, 5, 136, 200, generator=g) * 2 - 1  # not a multiple of tile or stride
    with torch.no_grad():
        z = vae.encode(video).latent_dist.mode()
        d = vae.decode(z).sample
        with vae_tiling.tiled(vae, vae_tiling.TileConfig(64, 96, 40, 64)):
            zt = vae.encode(video).latent_dist.mode()
            dt = vae.decode(z).sample
    assert zt.shape == z.shape and dt.shape == d.shape
    assert (zt - z).abs().max() < 1e-5
    assert (dt - d).abs().max() < 1e-5
    assert vae.use_tiling is False  # restored
    # A stride that is not a multiple of 8 misplaces tiles in diffusers: refused here.
    with pytest.raises(ValueError, match="multiple of 8"):
        vae_tiling.set_tiling(vae, vae_tiling.TileConfig(64, 64, 44, 40))
    with pytest.raises(ValueError, match="smaller than the tile"):
        vae_tiling.TileConfig(64, 64, 64, 32).validate()


def test_tiled_real_vae_close_to_untiled_and_closer_with_more_overlap():
    """Real AutoencoderKLWan modules, made local: residual branches and mid-attention outputs zeroed.

    With random weights a full VAE has no locality (global mid-block attention,
    deep random convs), so tiles cannot agree with the whole frame; what is left
    here is a stack of local convolutions, where tiling must come close in the
    mean and get closer as the overlap grows (errors sit on the seams).
    """
    vae = tiny_vae()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.split(".")[-2] == "conv2" or ("attentions" in name and ".proj." in name):
                p.zero_()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 16, 2, 16, 24, generator=g)
    with torch.no_grad():
        full = vae.decode(z).sample
        errors = []
        for tiles in (vae_tiling.TileConfig(64, 64, 48, 48), vae_tiling.TileConfig(128, 128, 64, 64)):
            with vae_tiling.tiled(vae, tiles):
                errors.append((vae.decode(z).sample - full).abs())
    assert errors[1].mean() < 0.01 * full.abs().max()
    assert errors[1].mean() < 0.5 * errors[0].mean()
    assert errors[1].max() < 0.5


def test_wan_vae_encode_decode_with_and_without_tiles():
    vae = tiny_vae()
    runner = vae_tiling.WanVAE(vae, "cpu", torch.float32, tiles=None)
    g = torch.Generator().manual_seed(1)
    video = torch.rand(1, 3, 5, 48, 64, generator=g) * 2 - 1
    lat = runner.encode(video)
    assert lat.shape == (1, 16, 2, 6, 8)
    raw = vae.encode(video).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    assert torch.allclose(lat, (raw - mean) / std, atol=1e-5)
    out = runner.decode(lat)
    assert out.shape == video.shape and out.abs().max() <= 1.0
    assert torch.allclose(out, vae.decode(raw).sample, atol=1e-5)
    # A tile larger than the frame takes the untiled path: identical result.
    big = runner.decode(lat, tiles=vae_tiling.TileConfig(128, 128, 64, 64))
    assert torch.equal(big, out)
    tiled_out = runner.decode(lat, tiles=vae_tiling.TileConfig(32, 32, 16, 16))
    assert tiled_out.shape == out.shape and torch.isfinite(tiled_out).all()
    assert UNIANIMATE_TILES == vae_tiling.TileConfig(240, 416, 120, 208)
    with pytest.raises(ValueError, match="multiple of 8"):
        runner.encode(torch.zeros(1, 3, 1, 20, 64))


# ----------------------------------------------------------------------------- prompt encoding
def tiny_text_encoder():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    words = "<pad> </s> <unk> a person is dancing in the park slowly black background".split()
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = UMT5Config(vocab_size=len(words), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                     relative_attention_num_buckets=8, relative_attention_max_distance=16)
    return UMT5EncoderModel(cfg).eval(), tokenizer


def test_clean_prompt():
    assert text.clean_prompt("  a &amp;amp; b\n\t c  ") == "a & b c"
    with pytest.raises(TypeError):
        text.clean_prompt(None)


def test_prompt_embeddings_zero_after_real_tokens():
    encoder, tokenizer = tiny_text_encoder()
    wte = text.WanTextEncoder(encoder, tokenizer, "cpu", torch.float32)
    emb, lengths = wte.encode("a  person is dancing")
    assert emb.shape == (1, 512, 16) and lengths.tolist() == [5]
    assert emb[0, 5:].abs().max() == 0 and emb[0, :5].abs().min() > 0
    ids = tokenizer("a person is dancing", return_tensors="pt").input_ids
    with torch.no_grad():
        direct = encoder(input_ids=ids).last_hidden_state
    assert torch.allclose(emb[:, :5], direct, atol=1e-5)  # padding does not leak into real tokens
    pair = wte.encode_pair("a person is dancing", "black background")
    assert pair.positive_length == 5 and pair.negative_length == 3
    assert torch.equal(pair.positive, emb)
    assert pair.negative[0, 3:].abs().max() == 0
    long = wte.encode(" ".join(["a"] * 600))[1]
    assert long.tolist() == [512]


def test_default_negative_prompt_is_wans():
    assert text.WAN_DEFAULT_NEGATIVE_PROMPT.startswith("色调艳丽")
    assert text.WAN_DEFAULT_NEGATIVE_PROMPT.endswith("三条腿，背景人很多，倒着走")


# ----------------------------------------------------------------------------- benchmark FLOP count
def test_benchmark_flop_count_matches_torch_flop_counter():
    """The analytic count behind wan14b_tflops: its matmul part equals torch's FLOP counter exactly."""
    import importlib.util

    from torch.utils.flop_counter import FlopCounterMode

    path = FIX.parents[2] / "benchmarks" / "wan_step.py"
    spec = importlib.util.spec_from_file_location("wan_step_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model = tiny_transformer()
    for shape in [(1, 16, 3, 8, 8), (1, 16, 2, 6, 10)]:
        x = torch.randn(shape)
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x, torch.tensor([500.0]), torch.randn(1, 512, TINY["text_dim"]))
        flops = bench.wan_forward_flops(TINY, shape)
        assert flops["linear"] == counter.get_total_flops()
        s = shape[2] * shape[3] // 2 * shape[4] // 2
        assert flops["attention"] == TINY["num_layers"] * 4 * s * (s + 512) * 32
    full = bench.wan_forward_flops(bench.WAN14B_T2V, (1, 16, 21, 60, 104))
    assert 1.5e15 < full["total"] < 1.9e15  # ~1.7 PFLOP per 14B forward at 480x832x81


def test_benchmark_gpu_path_runs_on_cpu_with_a_tiny_model(capsys):
    """The GPU section of benchmarks/wan_step.py (meta build, block swap under a budget, fp8) on a tiny config."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("wan_step_bench2", FIX.parents[2] / "benchmarks" / "wan_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = dict(TINY, attention_head_dim=32, ffn_dim=64)
    probe = bench.build_random(cfg, "cpu")
    block = offload.tensor_bytes(probe.blocks[0])
    other = offload.tensor_bytes(probe) - 4 * block
    act = offload.estimate_activation_bytes(2 * 4 * 4, 64, 64, 512, torch.bfloat16)
    figures = bench.gpu_figures(cfg, (1, 16, 2, 8, 8), "cpu", budget_bytes=other + 3 * block + act, repeats=1, prefix="tiny")
    assert figures["blockswap_24gb_blocks"] == 3
    assert figures["blockswap_max_abs_dev"] == 0.0  # streaming weights changes nothing numerically
    assert 0 < figures["fp8_rel_dev"] < 0.2
    assert figures["fp8_weights_gib"] < offload.tensor_bytes(probe) / 2**30
    out = capsys.readouterr().out
    for name in ("tiny_forward_s", "tiny_tflops", "tiny_ratio_vs_diffusers", "blockswap_24gb_slowdown", "fp8_speedup", "fp8_max_abs_dev"):
        assert f"\n{name}: " in "\n" + out


def test_tiny_sampling_loop_is_bit_identical_per_seed():
    """Seeded noise + transformer + Euler steps: the same seed gives the same latents, bit for bit, on CPU."""
    model = tiny_transformer()
    attn_mod.install_attention(model, "auto")
    _, _, ctx = tiny_inputs()
    sch = one_to_all_scheduler(3)

    def run(seed):
        x = scheduler.seeded_noise((1, 16, 2, 8, 8), seed)
        with torch.no_grad():
            for i in range(sch.num_steps):
                x = sch.step(x, model(x, sch.timestep(i), ctx, return_dict=False)[0], i)
        return x

    a, b, c = run(42), run(42), run(43)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------- GPU-only checks
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_block_swap_on_cuda_overlaps_and_keeps_numerics():
    model = tiny_transformer().to(torch.bfloat16)
    x, t, ctx = (v.to("cuda") for v in tiny_inputs())
    x, ctx = x.bfloat16(), ctx.bfloat16()
    with torch.no_grad():
        model.to("cuda")
        ref = model(x, t, ctx, return_dict=False)[0]
        model.to("cpu")
        swap = offload.apply_block_swap(model, 3, "cuda", prefetch=1)
        assert all(p.device.type == "cpu" and p.is_pinned() for p in model.blocks[3].parameters())
        for _ in range(2):
            out = model(x, t, ctx, return_dict=False)[0]
        torch.cuda.synchronize()
    assert (out.float() - ref.float()).abs().max() <= 1e-2 * ref.float().abs().max()
    assert swap.stats["misses"] == 0 and swap.stats["prefetch_hits"] == 6
    swap.release()
    assert all(p.device.type == "cpu" for i in swap.swapped for p in model.blocks[i].parameters())


@needs_cuda
def test_placement_and_vae_on_cuda():
    vae = tiny_vae()
    runner = vae_tiling.WanVAE(vae, "cuda", torch.float32, offload_after_use=True)
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    lat = runner.encode(video)
    assert lat.device.type == "cuda" and next(vae.parameters()).device.type == "cpu"
    cpu = vae_tiling.WanVAE(tiny_vae(), "cpu", torch.float32).encode(video)
    assert torch.allclose(lat.cpu(), cpu, atol=1e-3)
