"""ComfyUI nodes of UniAnimate-DiT: model loader, CLIP vision encode, sampler.

Types:

* ``POSEANIMATE_UNIANIMATE``: ``models.unianimate.pipeline.UniAnimateModel`` (Wan2.1-I2V DiT with
  the UniAnimate LoRA merged or unmerged, extra LoRAs, the two pose modules, compute dtype,
  device and block swap). Base model from ComfyUI's ``diffusion_models`` folder, the UniAnimate
  file (``UniAnimate-Wan2.1-14B-Lora-12000.ckpt`` or its fp16 safetensors) and extra LoRAs from
  ``loras``.
* ``POSEANIMATE_WAN_CLIP_EMBEDS``: ``models.unianimate.pipeline.ClipEmbeds`` (CLIP tokens of the
  reference, computed at the generation size exactly as the official pipeline does).

The sampler takes the Wan VAE / CLIP vision / prompt embeddings of nodes/wan.py and pose images
rendered in the ``unianimate`` style (nodes/pose.py), and returns IMAGE frames and a LATENT.
"""
from __future__ import annotations

from ..models import lora_family
from ..models.lora_family import check_lora_family, lora_keys
from ..models.unianimate import pipeline
from ..models.unianimate import windows as win
from ..models.runtime import precision as wan_precision
from ..pose import frames
from . import host
from .common import (chosen_loras, lora_inputs, model_choices, preset_input, released_after_run, run_sampler,
                     runtime_inputs, runtime_options, toolkit_inputs)
from .wan import CLIP_VISION_TYPE, EMBEDS_TYPE, VAE_TYPE

CATEGORY = "PoseAnimate/unianimate"
MODEL_TYPE = "POSEANIMATE_UNIANIMATE"
CLIP_EMBEDS_TYPE = "POSEANIMATE_WAN_CLIP_EMBEDS"
DEFAULT_BASE = "wan2.1_i2v_720p_14B_bf16.safetensors"
DEFAULT_UNIANIMATE = "UniAnimate-Wan2.1-14B-Lora-12000.ckpt"
EXTRA_LORAS = 2


def _unianimate_choices() -> list[str]:
    names = host.list_models("loras")
    first = [n for n in names if "unianimate" in n.lower()]
    return first + [n for n in names if n not in first] or [DEFAULT_UNIANIMATE]


class UniAnimateLoader:
    """Wan2.1-I2V-14B + the UniAnimate LoRA and pose modules (+ optional extra Wan LoRAs)."""

    @classmethod
    def INPUT_TYPES(cls):
        optional = {**lora_inputs(EXTRA_LORAS, "Any Wan2.1 LoRA in models/loras, stacked on top"), **toolkit_inputs()}
        return {
            "required": {
                "base_model": (model_choices("diffusion_models", DEFAULT_BASE), {"tooltip": "Wan2.1-I2V-14B (720P, as official) in models/diffusion_models: "
                                                            "official, diffusers or ComfyUI single file (fp8 too)"}),
                "unianimate_file": (_unianimate_choices(), {"tooltip": "UniAnimate-Wan2.1-14B-Lora-12000.ckpt (or its fp16 "
                                                                       "safetensors) in models/loras"}),
                "unianimate_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                                  "tooltip": "LoRA scale (official: 1.0)"}),
                "precision": (list(wan_precision.COMPUTE_PRECISIONS), {"default": "bf16"}),
                "weight_storage": (list(wan_precision.WEIGHT_STORAGE), {"default": "default",
                                                                         "tooltip": "fp8 stores the block weights in 8 bits (about half the VRAM); "
                                                                                    "LoRAs then stay unmerged"}),
                "lora_mode": (["merged", "unmerged"], {"default": "merged",
                                                       "tooltip": "merged: added into the weights once (fastest); unmerged: "
                                                                  "side branches (needed with fp8 weights)"}),
                **runtime_inputs(),
            },
            "optional": optional,
        }

    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, base_model, unianimate_file, unianimate_strength=1.0, precision="bf16", weight_storage="default",
             lora_mode="merged", block_swap=0, attention="auto", **extra):
        from ..models.unianimate.transformer import load_unianimate

        dtype = wan_precision.dtype_from_name(precision)
        weight_dtype = wan_precision.weight_dtype_from_name(weight_storage)
        merge = lora_mode == "merged"
        base = host.resolve_model("diffusion_models", base_model)
        unianimate = host.resolve_model("loras", unianimate_file)
        loras = chosen_loras(extra, EXTRA_LORAS)
        for path, _ in loras:
            check_lora_family(path.name, lora_keys(path), (lora_family.WAN,), "the UniAnimate loader's extra LoRA slots")
        transformer, pose_encoders = load_unianimate(base, unianimate, dtype=dtype, device="cpu", weight_dtype=weight_dtype,
                                                     lora_scale=float(unianimate_strength), merge=merge, extra_loras=loras)
        info = {"base": base_model, "unianimate": unianimate_file, "merged": merge, "loras": [str(p.name) for p, _ in loras]}
        return (pipeline.UniAnimateModel(transformer, pose_encoders, dtype, host.torch_device(), host.offload_device(),
                                         runtime_options(block_swap, attention, extra.get("compile", "off"),
                                                         extra.get("step_cache_threshold", 0.0)), info),)


class WanCLIPVisionEncode:
    """CLIP tokens of the reference (official Wan I2V preprocessing: stretch to the generation
    size, bicubic 224, penultimate block)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip_vision": (CLIP_VISION_TYPE,),
                "image": ("IMAGE",),
                "resolution": (list(pipeline.RESOLUTIONS), {"default": "480p", "tooltip": "Same as the sampler's"}),
            }
        }

    RETURN_TYPES = (CLIP_EMBEDS_TYPE,)
    RETURN_NAMES = ("clip_embeds",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY

    def encode(self, clip_vision, image, resolution="480p"):
        host.check_interrupt()
        ref = frames.to_uint8_rgb(image, "image")[0]
        width, height = pipeline.output_size(ref.shape[1], ref.shape[0], resolution)
        with released_after_run(clip_vision):
            embeds = pipeline.encode_clip(clip_vision, pipeline.reference_tensor(ref, width, height))
        return (pipeline.ClipEmbeds(embeds, width, height),)


class UniAnimateSampler:
    """Animate the reference with the pose video (any length: official sliding windows)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL_TYPE,),
                "vae": (VAE_TYPE,),
                "clip_vision": (CLIP_VISION_TYPE,),
                "embeds": (EMBEDS_TYPE, {"tooltip": "Prompt and negative prompt (Wan Text Encode)"}),
                "reference_image": ("IMAGE", {"tooltip": "The character"}),
                "pose_images": ("IMAGE", {"tooltip": "Driving poses aligned in 'unianimate' mode and drawn in the 'unianimate' style"}),
                "reference_pose_image": ("IMAGE", {"tooltip": "The reference's own pose drawn in the 'unianimate' style"}),
                "resolution": (list(pipeline.RESOLUTIONS), {"default": "480p",
                                                            "tooltip": "480p / 720p: the official size, 480x832 / 720x1280 portrait (480p is "
                                                                       "the trained size; the reference is stretched to it, as official). "
                                                                       "*_keep_aspect: the same pixel area on the reference's aspect; outside "
                                                                       "the training distribution, expect weaker results. reference: the "
                                                                       "reference's own size, capped at the 720p area"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
                "steps": ("INT", {"default": pipeline.DEFAULT_STEPS, "min": 1, "max": 100}),
                "cfg": ("FLOAT", {"default": pipeline.DEFAULT_CFG, "min": 1.0, "max": 20.0, "step": 0.1,
                                  "tooltip": "1.0 = no negative pass (about 2x faster)"}),
            },
            "optional": {
                "clip_embeds": (CLIP_EMBEDS_TYPE, {"tooltip": "Precomputed CLIP tokens (Wan CLIP Vision Encode); "
                                                              "otherwise computed from clip_vision"}),
                "context_size": ("INT", {"default": win.CONTEXT_SIZE, "min": win.PRIVATE_FRAMES + 1, "max": 64,
                                         "tooltip": "Window length in latent frames (21 = 81 video frames, official)"}),
                "context_overlap": ("INT", {"default": win.CONTEXT_OVERLAP, "min": win.PRIVATE_FRAMES, "max": 32,
                                            "tooltip": "Overlap between windows in latent frames (official 4)"}),
                "preset": preset_input(),
            },
        }

    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("frames", "latent")
    FUNCTION = "sample"
    CATEGORY = CATEGORY

    def sample(self, model, vae, clip_vision, embeds, reference_image, pose_images, reference_pose_image,
               resolution="480p", seed=0, steps=pipeline.DEFAULT_STEPS, cfg=pipeline.DEFAULT_CFG, clip_embeds=None,
               context_size=win.CONTEXT_SIZE, context_overlap=win.CONTEXT_OVERLAP, preset="official"):
        if context_overlap >= context_size:
            raise ValueError(f"context_overlap ({context_overlap}) must be smaller than context_size ({context_size}).")
        poses = frames.to_uint8_rgb(pose_images, "pose_images")
        result = run_sampler(
            "UniAnimate", model, (vae, clip_vision),
            model.progress_total(len(poses), int(steps), int(context_size), int(context_overlap)),
            model.transformer_calls(len(poses), int(steps), float(cfg), int(context_size), int(context_overlap), preset),
            vae, clip_vision, embeds, frames.to_uint8_rgb(reference_image, "reference_image")[0], poses,
            frames.to_uint8_rgb(reference_pose_image, "reference_pose_image")[0], resolution=resolution,
            seed=int(seed), steps=int(steps), cfg=float(cfg), context_size=int(context_size),
            context_overlap=int(context_overlap), clip_embeds=clip_embeds, preset=preset)
        return (result.frames, result.latent)


NODE_CLASS_MAPPINGS = {
    "PoseAnimateUniAnimateLoader": UniAnimateLoader,
    "PoseAnimateWanCLIPVisionEncode": WanCLIPVisionEncode,
    "PoseAnimateUniAnimateSampler": UniAnimateSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PoseAnimateUniAnimateLoader": "Load UniAnimate-DiT Model (PoseAnimate)",
    "PoseAnimateWanCLIPVisionEncode": "Wan CLIP Vision Encode (PoseAnimate)",
    "PoseAnimateUniAnimateSampler": "UniAnimate-DiT Sampler (PoseAnimate)",
}
