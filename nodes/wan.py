"""ComfyUI nodes of the shared Wan2.1 runtime: VAE / text encoder / CLIP vision loaders and prompt encoding.

Files are listed from ComfyUI's ``vae``, ``text_encoders`` and ``clip_vision``
folders (through nodes/host.py); the layout of a file is detected from its keys
by models/wan/loading.py. Each loader returns one of our own types:

* ``POSEANIMATE_WAN_VAE``: ``models.wan.vae_tiling.WanVAE`` (placement, dtype, tiling, latent normalisation)
* ``POSEANIMATE_WAN_TEXT_ENCODER``: ``models.wan.text.WanTextEncoder``
* ``POSEANIMATE_WAN_CLIP_VISION``: ``models.runtime.placement.Placement`` around a transformers ``CLIPVisionModel``
* ``POSEANIMATE_WAN_EMBEDS``: ``models.wan.text.WanPromptEmbeds`` (positive + negative, zero-padded to 512)
"""
from __future__ import annotations

from ..models.wan import loading, text, vae_tiling
from ..models.runtime import precision as wan_precision
from ..models.runtime.placement import Placement
from . import host
from .common import model_choices, released_on_error
from .host import comfy_memory_manager

CATEGORY = "PoseAnimate/wan"
VAE_TYPE = "POSEANIMATE_WAN_VAE"
TEXT_ENCODER_TYPE = "POSEANIMATE_WAN_TEXT_ENCODER"
CLIP_VISION_TYPE = "POSEANIMATE_WAN_CLIP_VISION"
EMBEDS_TYPE = "POSEANIMATE_WAN_EMBEDS"


# ------------------------------------------------------------------------------------- nodes
class LoadWanVAE:
    """Wan2.1 VAE from ComfyUI's vae folder (official .pth, diffusers or ComfyUI single file)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae_name": (model_choices("vae", "wan_2.1_vae.safetensors"), {"tooltip": "Wan2.1 VAE in models/vae"}),
                "precision": (list(wan_precision.COMPUTE_PRECISIONS), {"default": "bf16"}),
                "offload_after_use": ("BOOLEAN", {"default": True, "tooltip": "Move the VAE off the GPU after each encode/decode"}),
                "tiled": ("BOOLEAN", {"default": True, "tooltip": "Encode/decode in overlapping spatial tiles (less VRAM)"}),
                "tile_size": ("INT", {"default": 256, "min": 64, "max": 2048, "step": 8, "tooltip": "Tile size in pixels"}),
                "tile_stride": ("INT", {"default": 192, "min": 32, "max": 2048, "step": 8, "tooltip": "Distance between tiles in pixels (smaller than tile_size)"}),
            }
        }

    RETURN_TYPES = (VAE_TYPE,)
    RETURN_NAMES = ("vae",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, vae_name, precision="bf16", offload_after_use=True, tiled=True, tile_size=256, tile_stride=192):
        dtype = wan_precision.dtype_from_name(precision)
        tiles = vae_tiling.TileConfig(tile_size, tile_size, tile_stride, tile_stride).validate() if tiled else None
        path = host.resolve_model("vae", vae_name)
        vae = loading.load_vae(path, dtype=dtype, device="cpu")
        return (vae_tiling.WanVAE(vae, host.torch_device(), dtype, host.offload_device(), offload_after_use,
                                  tiles=tiles, manager=comfy_memory_manager()),)


class LoadWanTextEncoder:
    """UMT5-XXL text encoder from ComfyUI's text_encoders folder, with its tokenizer."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text_encoder_name": (model_choices("text_encoders", "umt5_xxl_fp16.safetensors"), {"tooltip": "UMT5-XXL encoder in models/text_encoders"}),
                "precision": (list(wan_precision.COMPUTE_PRECISIONS), {"default": "bf16"}),
                "offload_after_use": ("BOOLEAN", {"default": True, "tooltip": "Move the encoder off the GPU after encoding"}),
            }
        }

    RETURN_TYPES = (TEXT_ENCODER_TYPE,)
    RETURN_NAMES = ("text_encoder",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, text_encoder_name, precision="bf16", offload_after_use=True):
        dtype = wan_precision.dtype_from_name(precision)
        path = host.resolve_model("text_encoders", text_encoder_name)
        encoder, tokenizer = loading.load_text_encoder(path, dtype=dtype, device="cpu")
        return (text.WanTextEncoder(encoder, tokenizer, host.torch_device(), dtype, host.offload_device(),
                                    offload_after_use, manager=comfy_memory_manager()),)


class LoadWanCLIPVision:
    """CLIP ViT-H/14 image encoder (Wan2.1 I2V) from ComfyUI's clip_vision folder."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip_name": (model_choices("clip_vision", "clip_vision_h.safetensors"), {"tooltip": "CLIP vision model in models/clip_vision"}),
                "precision": (list(wan_precision.COMPUTE_PRECISIONS), {"default": "bf16"}),
                "offload_after_use": ("BOOLEAN", {"default": True, "tooltip": "Move the encoder off the GPU after encoding"}),
            }
        }

    RETURN_TYPES = (CLIP_VISION_TYPE,)
    RETURN_NAMES = ("clip_vision",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, clip_name, precision="bf16", offload_after_use=True):
        dtype = wan_precision.dtype_from_name(precision)
        path = host.resolve_model("clip_vision", clip_name)
        model = loading.load_clip_vision(path, dtype=dtype, device="cpu")
        return (Placement(model, host.torch_device(), host.offload_device(), offload_after_use, dtype=dtype,
                          manager=comfy_memory_manager()),)


class WanTextEncode:
    """Prompt and negative prompt -> UMT5 embeddings (512 tokens, zero rows after the prompt)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text_encoder": (TEXT_ENCODER_TYPE,),
                "prompt": ("STRING", {"multiline": True, "default": ""}),
                "negative_prompt": ("STRING", {"multiline": True, "default": text.WAN_DEFAULT_NEGATIVE_PROMPT}),
            }
        }

    RETURN_TYPES = (EMBEDS_TYPE,)
    RETURN_NAMES = ("embeds",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY

    def encode(self, text_encoder, prompt, negative_prompt):
        host.check_interrupt()
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            count = text_encoder.token_count(value)
            if count > text_encoder.max_length:
                host.notify(f"{name} is {count} UMT5 tokens; Wan reads only the first {text_encoder.max_length}, so "
                            f"the last {count - text_encoder.max_length} tokens are cut. Shorten {name} to keep all of it.")
        with released_on_error(text_encoder):
            embeds = text_encoder.encode_pair(prompt, negative_prompt)
        if text_encoder.placement.offload_after_use:
            host.free_memory()
        return (embeds,)


NODE_CLASS_MAPPINGS = {
    "PoseAnimateWanVAELoader": LoadWanVAE,
    "PoseAnimateWanTextEncoderLoader": LoadWanTextEncoder,
    "PoseAnimateWanCLIPVisionLoader": LoadWanCLIPVision,
    "PoseAnimateWanTextEncode": WanTextEncode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PoseAnimateWanVAELoader": "Load Wan VAE (PoseAnimate)",
    "PoseAnimateWanTextEncoderLoader": "Load Wan Text Encoder (PoseAnimate)",
    "PoseAnimateWanCLIPVisionLoader": "Load Wan CLIP Vision (PoseAnimate)",
    "PoseAnimateWanTextEncode": "Wan Text Encode (PoseAnimate)",
}
