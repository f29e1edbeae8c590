"""Wan runtime nodes called the way ComfyUI calls them, on tiny weight files in ComfyUI's folders."""
import sys
import types

import pytest
import torch

import poseanimate
from poseanimate.models.runtime import placement as offload
from poseanimate.models.wan import model as wan_model
from poseanimate.models.wan import text, vae_tiling
from poseanimate.models.runtime.weights import WanWeightsError
from poseanimate.nodes import common, host
from poseanimate.nodes import wan as wan_nodes

import wan_tiny


def call(node_id, **kwargs):
    """Instantiate, check inputs against INPUT_TYPES, call FUNCTION, check the return tuple."""
    cls = poseanimate.NODE_CLASS_MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()
    inputs = spec.get("required", {}) | spec.get("optional", {})
    for name in spec.get("required", {}):
        assert name in kwargs, f"{node_id}: required input {name} not given"
    assert set(kwargs) <= set(inputs), f"{node_id}: unknown inputs {set(kwargs) - set(inputs)}"
    for name, value in kwargs.items():
        kind = inputs[name][0]
        if isinstance(kind, list):
            assert value in kind, f"{node_id}.{name}={value!r} not among {kind}"
    out = getattr(cls(), cls.FUNCTION)(**kwargs)
    assert isinstance(out, tuple) and len(out) == len(cls.RETURN_TYPES)
    return out


def test_nodes_declare_what_comfyui_needs():
    assert set(wan_nodes.NODE_CLASS_MAPPINGS) <= set(poseanimate.NODE_CLASS_MAPPINGS)
    for node_id, cls in wan_nodes.NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("PoseAnimate") and node_id in wan_nodes.NODE_DISPLAY_NAME_MAPPINGS
        assert cls.CATEGORY == "PoseAnimate/wan"
        assert "required" in cls.INPUT_TYPES() and hasattr(cls, cls.FUNCTION)
    types_out = {cls.RETURN_TYPES[0] for cls in wan_nodes.NODE_CLASS_MAPPINGS.values()}
    assert types_out == {"POSEANIMATE_WAN_VAE", "POSEANIMATE_WAN_TEXT_ENCODER", "POSEANIMATE_WAN_CLIP_VISION", "POSEANIMATE_WAN_EMBEDS"}


def _write_comfy_vae(models_dir):
    model = wan_tiny.tiny_vae(z_dim=16)
    path = models_dir / "vae" / "wan_2.1_vae.safetensors"
    wan_tiny.write_file(path, wan_tiny.official_vae_sd(model.state_dict()))
    return model


def test_vae_loader_lists_loads_and_round_trips(models_dir):
    reference = _write_comfy_vae(models_dir)
    spec = wan_nodes.LoadWanVAE.INPUT_TYPES()["required"]
    assert spec["vae_name"][0] == ["wan_2.1_vae.safetensors"]
    (vae,) = call("PoseAnimateWanVAELoader", vae_name="wan_2.1_vae.safetensors", precision="fp32",
                  offload_after_use=True, tiled=True, tile_size=64, tile_stride=48)
    assert isinstance(vae, vae_tiling.WanVAE) and vae.tiles == vae_tiling.TileConfig(64, 64, 48, 48)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(vae.vae.state_dict()[name], tensor), name
    video = torch.rand(1, 3, 5, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = vae.encode(video, tiles=None)
    assert latents.shape == (1, 16, 2, 4, 6)
    with torch.no_grad():
        raw = reference.encode(video).latent_dist.mode()
        mean = torch.tensor(reference.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(reference.config.latents_std).view(1, -1, 1, 1, 1)
        assert torch.allclose(latents, (raw - mean) / std, atol=1e-5)
        frames = vae.decode(latents, tiles=None)
        assert torch.allclose(frames, reference.decode(raw).sample, atol=1e-5)
        assert torch.equal(vae.decode(latents), frames)  # 32x48 px fits in one 64 px tile: untiled path
        big = torch.randn(1, 16, 2, 10, 12, generator=torch.Generator().manual_seed(1))
        tiled = vae.decode(big)  # 80x96 px: 2x2 tiles of 64 px, stride 48
        assert tiled.shape == (1, 3, 5, 80, 96) and torch.isfinite(tiled).all()
        assert not vae.vae.use_tiling  # the loader's tiling is scoped to each call
    with pytest.raises(ValueError, match="smaller than the tile"):
        call("PoseAnimateWanVAELoader", vae_name="wan_2.1_vae.safetensors", precision="fp32",
             offload_after_use=True, tiled=True, tile_size=64, tile_stride=64)


def _write_comfy_umt5(models_dir):
    model = wan_tiny.tiny_umt5()
    sd = wan_tiny.transformers_umt5_sd(model)
    sd["spiece_model"] = torch.frombuffer(bytearray(wan_tiny.tiny_spiece_model()), dtype=torch.uint8)
    wan_tiny.write_file(models_dir / "text_encoders" / "umt5_xxl_fp16.safetensors", sd)
    return model


def test_text_encoder_loader_and_prompt_encoding(models_dir):
    reference = _write_comfy_umt5(models_dir)
    (encoder,) = call("PoseAnimateWanTextEncoderLoader", text_encoder_name="umt5_xxl_fp16.safetensors",
                      precision="fp32", offload_after_use=True)
    assert isinstance(encoder, text.WanTextEncoder)
    spec = wan_nodes.WanTextEncode.INPUT_TYPES()["required"]
    assert spec["negative_prompt"][1]["default"] == text.WAN_DEFAULT_NEGATIVE_PROMPT
    (embeds,) = call("PoseAnimateWanTextEncode", text_encoder=encoder, prompt="a person is  dancing in the park",
                     negative_prompt="three legs, many people in the background")
    assert isinstance(embeds, text.WanPromptEmbeds)
    assert embeds.positive.shape == (1, 512, 32) and embeds.negative.shape == (1, 512, 32)
    n = embeds.positive_length
    assert 1 < n < 512 and embeds.positive[0, n:].abs().max() == 0
    ids = encoder.tokenizer("a person is dancing in the park", return_tensors="pt")["input_ids"]
    assert ids.shape[1] == n and int(ids[0, -1]) == 1  # cleaned prompt, end token appended
    with torch.no_grad():
        direct = reference(input_ids=ids).last_hidden_state
    assert torch.allclose(embeds.positive[:, :n], direct, atol=1e-5)
    assert not torch.equal(embeds.positive, embeds.negative)


def test_clip_vision_loader(models_dir):
    model = wan_tiny.tiny_clip()
    wan_tiny.write_file(models_dir / "clip_vision" / "clip_vision_h.safetensors",
                        {k: v.detach().clone() for k, v in model.state_dict().items()})
    (clip,) = call("PoseAnimateWanCLIPVisionLoader", clip_name="clip_vision_h.safetensors", precision="fp32",
                   offload_after_use=True)
    assert isinstance(clip, offload.Placement) and clip.dtype == torch.float32
    pixels = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with clip.use() as vision, torch.no_grad():
        got = vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        want = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    assert torch.allclose(got, want, atol=1e-5)


def test_bad_names_and_wrong_files_give_clear_errors(models_dir):
    _write_comfy_vae(models_dir)
    with pytest.raises(host.ModelFileError, match="outside"):
        wan_nodes.LoadWanVAE().load("../secret.safetensors", "fp32")
    with pytest.raises(host.ModelFileError, match="not found"):
        wan_nodes.LoadWanTextEncoder().load("missing.safetensors", "bf16")
    (models_dir / "text_encoders").mkdir()
    (models_dir / "vae" / "wan_2.1_vae.safetensors").rename(models_dir / "text_encoders" / "wrong.safetensors")
    with pytest.raises(WanWeightsError) as err:
        wan_nodes.LoadWanTextEncoder().load("wrong.safetensors", "fp32")
    assert "vae" in str(err.value).lower()
    with pytest.raises(ValueError, match="precision"):
        wan_nodes.LoadWanCLIPVision().load("x.safetensors", "int4")


def test_sharded_index_files_are_listed(models_dir):
    folder = models_dir / "text_encoders" / "umt5-xxl"
    wan_tiny.write_sharded(folder, wan_tiny.transformers_umt5_sd(wan_tiny.tiny_umt5()), stem="model")
    names = wan_nodes.LoadWanTextEncoder.INPUT_TYPES()["required"]["text_encoder_name"][0]
    assert "umt5-xxl/model.safetensors.index.json" in names


def test_release_on_error_frees_memory(monkeypatch):
    freed, released = [], []
    monkeypatch.setattr(host, "free_memory", lambda: freed.append(1))
    handle = types.SimpleNamespace(release=lambda: released.append(1))
    with pytest.raises(KeyboardInterrupt):
        with common.released_on_error(handle):
            raise KeyboardInterrupt
    assert freed == [1] and released == [1]
    with common.released_on_error(handle):
        pass
    assert freed == [1]
    with common.released_after_run(handle, types.SimpleNamespace()):
        pass
    assert freed == [1, 1] and released == [1, 1]
    # A Wan transformer handle: its prefetched swap blocks are dropped.
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(num_attention_heads=1, attention_head_dim=16, text_dim=8, freq_dim=8,
                                  ffn_dim=16, num_layers=2).eval()
    wan_model.prepare_transformer(model, "cpu", "sdpa", blocks_to_swap=2)
    model.poseanimate_block_swap._load(0)
    with pytest.raises(RuntimeError):
        with common.released_after_run(model):
            raise RuntimeError("failed step")
    assert not model.poseanimate_block_swap._loaded and freed == [1, 1, 1]


def test_comfy_memory_manager_routes_moves(monkeypatch):
    assert host.comfy_memory_manager() is None  # no ComfyUI here
    calls = []

    class Patcher:
        def __init__(self, model, load_device, offload_device):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device
            calls.append(("patcher", load_device.type))

        def detach(self):
            calls.append(("detach",))

    class Loaded:
        def __init__(self, patcher):
            self.model = patcher

        def model_unload(self):
            calls.append(("unload",))

    mm = types.ModuleType("comfy.model_management")
    mm.current_loaded_models = []
    mm.load_models_gpu = lambda models, force_full_load=False: (calls.append(("load", force_full_load)),
                                                                 mm.current_loaded_models.append(Loaded(models[0])))
    mp = types.ModuleType("comfy.model_patcher")
    mp.ModelPatcher = Patcher
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.model_patcher = mm, mp
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.model_management", mm)
    monkeypatch.setitem(sys.modules, "comfy.model_patcher", mp)
    manager = host.comfy_memory_manager()
    assert isinstance(manager, host.ComfyMemoryManager)

    moved = []

    class Module(torch.nn.Linear):
        def to(self, *args, **kwargs):
            moved.append(torch.device(args[0]))
            return self

    place = offload.Placement(Module(2, 2), "cuda", "cpu", offload_after_use=True, manager=manager)
    with place.use():
        assert place.on_device
    assert calls == [("patcher", "cuda"), ("load", True), ("unload",)]
    assert moved == [torch.device("cpu")] and not mm.current_loaded_models
    with place.use():
        pass
    assert calls[-2:] == [("load", True), ("unload",)] and calls.count(("patcher", "cuda")) == 1
    # Kept on the device: ComfyUI is still asked at every use (it may have evicted the model meanwhile).
    calls.clear()
    keep = offload.Placement(Module(2, 2), "cuda", "cpu", offload_after_use=False, manager=manager)
    for _ in range(2):
        with keep.use():
            pass
    assert calls == [("patcher", "cuda"), ("load", True), ("load", True)]
