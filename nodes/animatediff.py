"""AnimateDiff video-to-video nodes: loader, context options, sampler.

The local equivalent of the hosted ``animatediff-v2v`` endpoint. Each node is argument
plumbing into ``models/animatediff``; model files come from ComfyUI's folders
(``checkpoints``, ``animatediff_models``, ``loras``, ``controlnet``).
"""
from __future__ import annotations

import json

from . import host
from ..models import lora_family
from ..models.lora_family import check_lora_family
from ..models.animatediff import context_windows as cw
from ..models.animatediff import pipeline as pl
from ..models.animatediff import samplers as sm
from ..models.animatediff.model import PRECISIONS, AnimateDiffModel
from .common import NONE, attention_input, model_choices, released_after_run, runtime_options

CATEGORY = "PoseAnimate/animatediff"
MODEL_TYPE = "POSEANIMATE_ANIMATEDIFF"
CONTEXT_TYPE = "POSEANIMATE_AD_CONTEXT"
LORA_SLOTS = 3


def parse_lora_list(slots: list[tuple[str, float]], loras_json: str = "") -> list[tuple[str, float]]:
    """The endpoint's ``loras`` [{name|path, scale}] (JSON) plus the node's fixed slots, in order."""
    out = [(name, float(scale)) for name, scale in slots if name and name != NONE]
    text = (loras_json or "").strip()
    if text:
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"loras_json is not valid JSON ({exc}); expected e.g. "
                             '[{"name": "style.safetensors", "scale": 0.8}]') from exc
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list):
            raise ValueError("loras_json must be a list of {\"name\": ..., \"scale\": ...} objects.")
        for item in items:
            if not isinstance(item, dict) or not (item.get("name") or item.get("path")):
                raise ValueError(f"loras_json entry {item!r} needs a 'name' (a file in models/loras) and optional 'scale'.")
            out.append((str(item.get("name") or item.get("path")), float(item.get("scale", 1.0))))
    return out


class AnimateDiffLoader:
    """SD1.5 checkpoint + motion module + LoRAs (SD kohya or motion LoRAs) + optional ControlNet."""

    @classmethod
    def INPUT_TYPES(cls):
        loras = model_choices("loras", optional=True)
        required = {
            "checkpoint": (model_choices("checkpoints"), {"tooltip": "SD1.5 single-file checkpoint (models/checkpoints)"}),
            "motion_module": (model_choices("animatediff_models"), {"tooltip": "mm_sd_v15_v2 / v3 / v1 / AnimateLCM (models/animatediff_models)"}),
        }
        for i in range(1, LORA_SLOTS + 1):
            required[f"lora_{i}"] = (loras, {"tooltip": "kohya SD LoRA or original motion LoRA (models/loras)"})
            required[f"lora_{i}_scale"] = ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01})
        required["controlnet"] = (model_choices("controlnet", optional=True), {"tooltip": "Optional SD1.5 ControlNet, e.g. OpenPose"})
        required["precision"] = (list(PRECISIONS), {"default": "auto", "tooltip": "auto: fp16 on CUDA, fp32 on CPU"})
        return {
            "required": required,
            "optional": {
                "loras_json": ("STRING", {"default": "", "multiline": True,
                                          "tooltip": 'More LoRAs: [{"name": "x.safetensors", "scale": 0.8}]'}),
                "motion_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.001,
                                           "tooltip": "ADE scale_multival: multiplies the motion attention keys (more/less motion)"}),
                "motion_effect": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.001,
                                            "tooltip": "ADE effect_multival: blends each motion module's output with its input (0 = off)"}),
                "attention": attention_input(),
            },
        }

    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("animatediff",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, checkpoint, motion_module, controlnet=NONE, precision="auto", loras_json="", motion_scale=1.0,
             motion_effect=1.0, attention="auto", **kw):
        from ..models.animatediff import controlnet as cn_io
        from ..models.animatediff import lora as lora_io
        from ..models.animatediff import motion_loader, sd15_checkpoint, unet3d
        from ..models.animatediff.weights_io import read_state_dict

        slots = [(kw.get(f"lora_{i}", NONE), kw.get(f"lora_{i}_scale", 1.0)) for i in range(1, LORA_SLOTS + 1)]
        loras = parse_lora_list(slots, loras_json)
        parts = sd15_checkpoint.load_sd15_checkpoint(host.resolve_model("checkpoints", checkpoint))
        motion = motion_loader.load_motion_module(host.resolve_model("animatediff_models", motion_module))
        motion.set_scale(float(motion_scale))
        motion.set_effect(float(motion_effect))
        sd_loras = []
        for name, scale in loras:
            sd = read_state_dict(host.resolve_model("loras", name))
            check_lora_family(name, list(sd), (lora_family.SD15, lora_family.MOTION), "the AnimateDiff loader")
            if lora_io.is_motion_lora(sd):
                motion_loader.apply_motion_lora(motion, sd, scale)
            else:
                sd_loras.append((sd, scale))
        lora_io.apply_sd_loras(parts, sd_loras)
        cn = None if controlnet in (None, "", NONE) else cn_io.load_controlnet(host.resolve_model("controlnet", controlnet))
        unet = unet3d.build_animated_unet(parts.unet, motion)
        pipe = pl.AnimateDiffV2V(unet, parts.vae, parts.text_encoder, parts.tokenizer, controlnet=cn,
                                 motion_format=motion.format, precision=precision)
        return (AnimateDiffModel(pipe, host.torch_device(), host.offload_device(), runtime_options(attention=attention)),)


class AnimateDiffContextOptions:
    """Sliding context windows (ADE's options). Without this node the whole clip is one window when it
    fits the motion module's length, else ADE's defaults (static, 16/4, pyramid) with a log line."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "context_schedule": (list(cw.SCHEDULES), {"default": "standard_static"}),
                "context_length": ("INT", {"default": 16, "min": 1, "max": 128}),
                "context_overlap": ("INT", {"default": 4, "min": 0, "max": 127}),
                "context_stride": ("INT", {"default": 1, "min": 1, "max": 8, "tooltip": "uniform schedules: dilated windows 2^(stride-1)"}),
                "closed_loop": ("BOOLEAN", {"default": False}),
                "fuse_method": (list(cw.FUSE_METHODS), {"default": "pyramid"}),
                "use_on_equal_length": ("BOOLEAN", {"default": False}),
                "freenoise": ("BOOLEAN", {"default": False, "tooltip": "FreeNoise: each window reuses shuffled noise of the previous one"}),
                "window_batch": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip": "windows per UNet call; 0 = as many as memory allows"}),
            }
        }

    RETURN_TYPES = (CONTEXT_TYPE,)
    RETURN_NAMES = ("context_options",)
    FUNCTION = "build"
    CATEGORY = CATEGORY

    def build(self, context_schedule="standard_static", context_length=16, context_overlap=4, context_stride=1,
              closed_loop=False, fuse_method="pyramid", use_on_equal_length=False, freenoise=False, window_batch=0):
        opts = cw.ContextOptions(context_length=context_length, context_overlap=context_overlap,
                                 context_stride=context_stride, schedule=context_schedule, closed_loop=closed_loop,
                                 fuse_method=fuse_method, use_on_equal_length=use_on_equal_length)
        return ({"context": opts, "freenoise": bool(freenoise), "window_batch": int(window_batch)},)


class AnimateDiffSampler:
    """Restyle a source video (hosted animatediff-v2v parameters and defaults); returns frames + seed."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "animatediff": (MODEL_TYPE,),
                "source_video": ("IMAGE",),
                "prompt": ("STRING", {"multiline": True, "default": ""}),
                "negative_prompt": ("STRING", {"multiline": True, "default": pl.DEFAULT_NEGATIVE}),
                "steps": ("INT", {"default": 25, "min": 1, "max": 150}),
                "guidance": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 30.0, "step": 0.1}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
                "denoise": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.01}),
                "sampler_name": (host.sampler_names(sm.SAMPLERS), {"default": "dpmpp_2m",
                                                                   "tooltip": "inside ComfyUI: every sampler ComfyUI offers"}),
                "scheduler": (host.scheduler_names(sm.SCHEDULERS), {"default": "karras"}),
                "beta_schedule": (list(sm.BETA_SCHEDULES), {"default": "autoselect"}),
                "select_every_nth_frame": ("INT", {"default": 2, "min": 1, "max": 16}),
                "restore_frames": (list(pl.RESTORE_MODES), {"default": "repeat", "tooltip": "back to the source frame count: hold or cross-fade"}),
            },
            "optional": {
                "context_options": (CONTEXT_TYPE,),
                "pose_video": ("IMAGE", {"tooltip": "Rendered poses (openpose style) for the ControlNet"}),
                "controlnet_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
                "fps": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 240.0, "step": 0.01, "tooltip": "source fps (0 = unknown)"}),
                "clip_skip": ("INT", {"default": 1, "min": 1, "max": 12}),
                "short_side": ("INT", {"default": pl.DEFAULT_SHORT_SIDE, "min": 0, "max": 4096, "step": 8,
                                       "tooltip": "working size: larger frames are scaled down to this short side (aspect kept, "
                                                  "then cropped to multiples of 8); 0 = the source size"}),
                "max_frames": ("INT", {"default": 0, "min": 0, "max": 100000,
                                       "tooltip": "at most this many frames are diffused (after select_every_nth_frame); 0 = all"}),
                "output_size": (list(pl.OUTPUT_SIZES), {"default": "working", "tooltip": "source: scale the result back to the source size"}),
                "controlnet_start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
                "controlnet_end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}),
            },
        }

    RETURN_TYPES = ("IMAGE", "INT", "FLOAT")
    RETURN_NAMES = ("frames", "seed", "fps")
    HOST_DEPENDENT_INPUTS = ("sampler_name", "scheduler")  # ComfyUI's full lists when hosted, the built-in ones otherwise
    FUNCTION = "sample"
    CATEGORY = CATEGORY

    def sample(self, animatediff, source_video, prompt, negative_prompt=pl.DEFAULT_NEGATIVE, steps=25, guidance=7.0,
               seed=0, denoise=0.7, sampler_name="dpmpp_2m", scheduler="karras", beta_schedule="autoselect",
               select_every_nth_frame=2, restore_frames="repeat", context_options=None, pose_video=None,
               controlnet_strength=1.0, fps=0.0, clip_skip=1, short_side=pl.DEFAULT_SHORT_SIDE, max_frames=0,
               output_size="working", controlnet_start_percent=0.0, controlnet_end_percent=1.0):
        # no context-options node: windows only when the clip is longer than the motion module (see the pipeline)
        ctx = context_options or {"context": None, "freenoise": False, "window_batch": 0}
        settings = pl.V2VSettings(
            prompt=prompt, negative_prompt=negative_prompt, steps=steps, guidance=guidance, seed=seed, denoise=denoise,
            sampler=sampler_name, scheduler=scheduler, beta_schedule=beta_schedule,
            select_every_nth_frame=select_every_nth_frame, restore=restore_frames, fps=fps or None,
            context=ctx["context"], freenoise=ctx["freenoise"], window_batch=ctx["window_batch"],
            controlnet_strength=controlnet_strength, clip_skip=clip_skip, short_side=int(short_side),
            max_frames=int(max_frames), output_size=output_size, controlnet_start=float(controlnet_start_percent),
            controlnet_end=float(controlnet_end_percent),
        )
        with released_after_run():
            callback = host.step_callback(animatediff.progress_total(settings, source_video.shape[0]))
            result = animatediff.sample(source_video, settings, pose_frames=pose_video, callback=callback,
                                        interrupt=host.check_interrupt, sampling=host.comfy_sampling())
        return (result.frames, result.seed, float(result.fps or 0.0))


NODE_CLASS_MAPPINGS = {
    "PoseAnimateAnimateDiffLoader": AnimateDiffLoader,
    "PoseAnimateAnimateDiffContextOptions": AnimateDiffContextOptions,
    "PoseAnimateAnimateDiffSampler": AnimateDiffSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PoseAnimateAnimateDiffLoader": "AnimateDiff Loader (PoseAnimate)",
    "PoseAnimateAnimateDiffContextOptions": "AnimateDiff Context Options (PoseAnimate)",
    "PoseAnimateAnimateDiffSampler": "AnimateDiff Video-to-Video (PoseAnimate)",
}
