"""ComfyUI nodes of One-to-All Animation: model loader, reference preparation, sampler.

Types:

* ``POSEANIMATE_ONE_TO_ALL``: ``models.one_to_all.pipeline.OneToAllModel`` (the transformer with
  its compute dtype and device), loaded from ComfyUI's ``diffusion_models`` folder;
* ``POSEANIMATE_ONE_TO_ALL_REFERENCE``: a dict with the reference image (uint8), the reference
  pose drawing (uint8, the reference's own pose without face, warped in 'pose' alignment mode)
  and the outpaint mask (1 = area the warped reference does not cover; none in 'ref' mode).

The sampler takes the Wan VAE and prompt embeddings of nodes/wan.py (One-to-All Text Encode is Wan
Text Encode with the released scripts' negative prompt as default) and the pose images of
nodes/pose.py (rendered in the ``one_to_all`` style), and returns IMAGE frames and a LATENT.

Model-size defaults: ComfyUI always sends a widget's value, so "left at default" cannot be told
from "set to the same number". Inputs whose official value depends on the loaded model (14B or
1.3B) therefore default to 0 = "the model's own value" (``pipeline.MODEL_DEFAULTS``); any other
value is the user's and is used as given.
"""
from __future__ import annotations

import re

import numpy as np

from ..models.one_to_all import pipeline
from ..models.one_to_all.guidance import ONE_TO_ALL_NEGATIVE_PROMPT
from ..models.runtime import precision as wan_precision
from ..pose import frames, keypoints, render
from . import host
from .common import (chosen_loras, lora_inputs, model_choices, preset_input, run_sampler, runtime_inputs, runtime_options,
                     toolkit_inputs)
from .wan import EMBEDS_TYPE, VAE_TYPE, WanTextEncode

CATEGORY = "PoseAnimate/one_to_all"
MODEL_TYPE = "POSEANIMATE_ONE_TO_ALL"
REFERENCE_TYPE = "POSEANIMATE_ONE_TO_ALL_REFERENCE"
DEFAULT_MODEL = "one_to_all_14b.safetensors"
LORA_SLOTS = 2
_SHARD = re.compile(r"-\d+-of-\d+\.(safetensors|sft)$", re.IGNORECASE)


class OneToAllLoader:
    """One-to-All Animation transformer (14B or 1.3B) from ComfyUI's diffusion_models folder."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": (model_choices("diffusion_models", DEFAULT_MODEL), {"tooltip": "One-to-All checkpoint in models/diffusion_models: a single "
                                                             "safetensors file, a shard index JSON, or one shard of the "
                                                             "released folder (the whole folder is loaded)"}),
                "precision": (list(wan_precision.COMPUTE_PRECISIONS), {"default": "bf16"}),
                "weight_storage": (list(wan_precision.WEIGHT_STORAGE), {"default": "default",
                                                                         "tooltip": "fp8 stores the block weights in 8 bits (about half the VRAM)"}),
                **runtime_inputs(),
            },
            "optional": {
                **lora_inputs(LORA_SLOTS, "A Wan2.1-T2V LoRA (same size as the model: 14B or 1.3B) in models/loras, e.g. a "
                                          "step-distillation LoRA for the sampler's distilled preset; lands on the main blocks"),
                "lora_mode": (["merged", "unmerged"], {"default": "merged",
                                                       "tooltip": "merged: added into the weights once (fastest); unmerged: "
                                                                  "side branches over the (fp8) weights"}),
                **toolkit_inputs(),
            },
        }

    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, model_name, precision="bf16", weight_storage="default", block_swap=0, attention="auto",
             lora_mode="merged", **slots):
        from ..models.one_to_all.loading import load_one_to_all

        dtype = wan_precision.dtype_from_name(precision)
        weight_dtype = wan_precision.weight_dtype_from_name(weight_storage)
        path = host.resolve_model("diffusion_models", model_name)
        if _SHARD.search(path.name):
            path = path.parent  # one shard picked: the official release folder holds the rest
        loras = chosen_loras(slots, LORA_SLOTS)
        model = load_one_to_all(path, dtype=dtype, device="cpu", weight_dtype=weight_dtype, loras=loras,
                                merge=lora_mode == "merged")
        options = runtime_options(block_swap, attention, slots.pop("compile", "off"), slots.pop("step_cache_threshold", 0.0))
        info = {"loras": [(p.name, s) for p, s in loras], "merged": lora_mode == "merged"}
        return (pipeline.OneToAllModel(model.eval(), dtype, host.torch_device(), model_name, host.offload_device(),
                                       options, info),)


class OneToAllTextEncode(WanTextEncode):
    """Wan Text Encode whose negative prompt defaults to One-to-All's own (``inference_14b.py``)."""

    @classmethod
    def INPUT_TYPES(cls):
        spec = super().INPUT_TYPES()
        kind, options = spec["required"]["negative_prompt"]
        spec["required"]["negative_prompt"] = (kind, {**options, "default": ONE_TO_ALL_NEGATIVE_PROMPT})
        return spec

    CATEGORY = CATEGORY


class OneToAllPrepareReference:
    """Reference image + its pose drawing (+ the outpaint mask of 'pose' alignment) for the sampler."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reference_image": ("IMAGE", {"tooltip": "The character (the aligned/warped reference from Align Poses)"}),
            },
            "optional": {
                "reference_pose": ("POSE_KEYPOINT", {"tooltip": "The reference's pose (from Align Poses); drawn in the "
                                                                "one_to_all style without face"}),
                "reference_pose_image": ("IMAGE", {"tooltip": "An already drawn reference pose (used instead of reference_pose)"}),
                "outpaint_mask": ("MASK", {"tooltip": "1 = area to outpaint (Align Poses, one_to_all_pose mode)"}),
            },
        }

    RETURN_TYPES = (REFERENCE_TYPE, "IMAGE")
    RETURN_NAMES = ("reference", "reference_pose_image")
    FUNCTION = "prepare"
    CATEGORY = CATEGORY

    def prepare(self, reference_image, reference_pose=None, reference_pose_image=None, outpaint_mask=None):
        image = frames.to_uint8_rgb(reference_image, "reference_image")[0]
        h, w = image.shape[:2]
        if reference_pose_image is not None:
            pose = frames.to_uint8_rgb(reference_pose_image, "reference_pose_image")[0]
        elif reference_pose is not None:
            parsed = keypoints.frames_from_pose_keypoint(reference_pose)
            if not parsed:
                raise ValueError("reference_pose is empty: connect the reference_pose output of Align Poses.")
            pose = render.render_poses(parsed[:1], "one_to_all", w, h, without_face=True, face_change=False,
                                       head_change=False)[0]
        else:
            raise ValueError("Connect reference_pose (from Align Poses) or reference_pose_image: One-to-All needs "
                             "the reference's own pose drawing.")
        if abs(pose.shape[1] * h - pose.shape[0] * w) > 0.02 * h * pose.shape[1]:
            raise ValueError(f"reference pose drawing is {pose.shape[1]}x{pose.shape[0]} but the reference image is "
                             f"{w}x{h}: draw the pose on the reference's canvas (Render Poses with width/height 0).")
        mask = None
        if outpaint_mask is not None:
            m = outpaint_mask.detach().cpu().float().numpy() if hasattr(outpaint_mask, "detach") else np.asarray(outpaint_mask, np.float32)
            m = m[0] if m.ndim == 3 else m
            if m.shape != (h, w):
                raise ValueError(f"outpaint_mask is {m.shape[1]}x{m.shape[0]} but the reference image is {w}x{h}: "
                                 f"use the mask and reference_image outputs of the same Align Poses node.")
            mask = m if m.any() else None
        ref = {"image": image, "pose": pose, "mask": mask}
        return (ref, frames.to_image_tensor(pose[None]))


class OneToAllSampler:
    """Animate the reference with the pose video: chunks of 81 frames joined by token replace."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL_TYPE,),
                "vae": (VAE_TYPE,),
                "embeds": (EMBEDS_TYPE, {"tooltip": "Prompt and negative prompt (Wan Text Encode)"}),
                "reference": (REFERENCE_TYPE,),
                "pose_images": ("IMAGE", {"tooltip": "Driving poses drawn in the one_to_all style (Render Poses)"}),
                "resolution": (list(pipeline.RESOLUTIONS), {"default": "480p", "tooltip": "480p/580p/720p: short side of the output on the reference's aspect "
                                                                                             "(hosted endpoint); reference: the official scripts' rule (the reference's "
                                                                                             "size, short side at most 576)"}),
                "steps": ("INT", {"default": 30, "min": pipeline.MIN_STEPS, "max": pipeline.MAX_STEPS}),
                "image_guidance_scale": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.1,
                                                   "tooltip": "Reference guidance 1..10 (1 = off: one call per step); "
                                                              "0 = the loaded model's official value (14B: 2.0, 1.3B: 2.5)"}),
                "pose_guidance_scale": ("FLOAT", {"default": 1.5, "min": 1.0, "max": 10.0, "step": 0.1,
                                                  "tooltip": "Pose guidance (1 = off: two calls per step)"}),
                "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
            },
            "optional": {
                "preset": preset_input(),
                "reference_max_short": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 16,
                                                "tooltip": "'reference' resolution: cap on the short side; 0 = the loaded "
                                                           "model's official value (14B: 576, 1.3B: 384)"}),
            },
        }

    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("frames", "latent")
    FUNCTION = "sample"
    CATEGORY = CATEGORY

    def sample(self, model, vae, embeds, reference, pose_images, resolution="480p", steps=30,
               image_guidance_scale=0.0, pose_guidance_scale=1.5, seed=42, preset="official", reference_max_short=0):
        if 0 < float(image_guidance_scale) < 1:
            raise ValueError(f"image_guidance_scale must be 0 (the model's default) or 1..10, got {image_guidance_scale}.")
        poses = frames.to_uint8_rgb(pose_images, "pose_images")
        image_guidance = float(image_guidance_scale) or None  # 0 = the model's own default
        result = run_sampler(
            "One-to-All", model, (vae,), model.progress_total(len(poses), int(steps)),
            model.transformer_calls(len(poses), int(steps), image_guidance, pose_guidance_scale, preset),
            vae, embeds, reference["image"], poses, reference["pose"], reference.get("mask"),
            resolution=resolution, steps=int(steps), image_guidance_scale=image_guidance,
            reference_max_short=int(reference_max_short) or None,
            pose_guidance_scale=float(pose_guidance_scale), seed=int(seed), preset=preset)
        return (result.frames, result.latent)


NODE_CLASS_MAPPINGS = {
    "PoseAnimateOneToAllLoader": OneToAllLoader,
    "PoseAnimateOneToAllTextEncode": OneToAllTextEncode,
    "PoseAnimateOneToAllPrepareReference": OneToAllPrepareReference,
    "PoseAnimateOneToAllSampler": OneToAllSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PoseAnimateOneToAllLoader": "Load One-to-All Animation Model (PoseAnimate)",
    "PoseAnimateOneToAllTextEncode": "One-to-All Text Encode (PoseAnimate)",
    "PoseAnimateOneToAllPrepareReference": "One-to-All Prepare Reference (PoseAnimate)",
    "PoseAnimateOneToAllSampler": "One-to-All Animation Sampler (PoseAnimate)",
}

