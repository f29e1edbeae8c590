"""ComfyUI nodes of the pose stack: load a detector, detect, prepare frames, align, render, save/load JSON.

Each node is argument plumbing around pose/; model files come from ComfyUI's
``pose_models`` folder through nodes/host.py.
"""
from __future__ import annotations

import json
import logging

import numpy as np

from ..pose import align, detect, frames, keypoints, reference, render, stage
from . import host

CATEGORY = "PoseAnimate/pose"
DETECTOR_TYPE = "POSEANIMATE_POSE_DETECTOR"
DWPOSE_DET = "yolox_l.onnx"
DWPOSE_POSE = "dw-ll_ucoco_384.onnx"
VITPOSE_DET = "yolov10m.onnx"
VITPOSE_POSE = "vitpose_h_wholebody.onnx"
BACKENDS = ("mediapipe (embedded)", "dwpose (onnx)", "vitpose (onnx)", "auto: vitpose (One-to-All)",
            "auto: dwpose (UniAnimate)")
CHANNEL_ORDERS = ("default", "rgb", "bgr")
DEVICES = ("auto", "cpu", "gpu")
_log = logging.getLogger("PoseAnimate")


def _onnx_choices(default: str) -> list[str]:
    names = host.list_models("pose_models", {".onnx"})
    return names or [default]


def _detector_device(device: str) -> str:
    """auto -> ComfyUI's torch device (torch engine on a GPU, onnxruntime on the CPU); gpu -> it or an error."""
    if device == "cpu":
        return "cpu"
    chosen = host.torch_device()
    if chosen.type == "cpu":
        if device == "gpu":
            raise ValueError("Load Pose Detector: device 'gpu' asked for, but ComfyUI runs on the CPU; choose 'auto' or 'cpu'")
        return "cpu"
    return str(chosen)


def _maybe_file(name: str):
    try:
        return host.resolve_model("pose_models", name)
    except host.ModelFileError:
        return None


class LoadPoseDetector:
    """Pose detector: the embedded mediapipe model (nothing to download), DWPose or ViTPose ONNX
    files, or ``auto``: the model family's own detector when its files are in pose_models, else
    the embedded one (with a warning). The second output names the detector actually used."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "backend": (list(BACKENDS), {"default": BACKENDS[0], "tooltip": "auto: the detector the model was trained with (One-to-All: ViTPose + YOLOv10, UniAnimate: DWPose) when its files are in models/pose_models, else the embedded mediapipe one"}),
                "dwpose_detector": (_onnx_choices(DWPOSE_DET), {"tooltip": f"YOLOX person detector ({DWPOSE_DET}) in models/pose_models"}),
                "dwpose_model": (_onnx_choices(DWPOSE_POSE), {"tooltip": f"DWPose whole-body model ({DWPOSE_POSE}) in models/pose_models"}),
            },
            "optional": {
                "vitpose_model": (_onnx_choices(VITPOSE_POSE), {"default": VITPOSE_POSE, "tooltip": "ViTPose whole-body model in models/pose_models (vitpose_h_wholebody.onnx as One-to-All uses, or vitpose-l-wholebody.onnx)"}),
                "vitpose_detector": (_onnx_choices(VITPOSE_DET), {"default": VITPOSE_DET, "tooltip": f"YOLOv10 person detector ({VITPOSE_DET}) in models/pose_models"}),
                "channel_order": (list(CHANNEL_ORDERS), {"default": "default", "tooltip": "Colour order fed to the ONNX networks. default: DWPose gets each network's training order, ViTPose One-to-All's official order (YOLO RGB, ViTPose BGR). UniAnimate's official scripts feed BGR to both DWPose networks"}),
                "device": (list(DEVICES), {"default": "auto", "tooltip": "ONNX detectors: auto = ComfyUI's GPU through torch when there is one, else onnxruntime on the CPU"}),
            },
        }

    RETURN_TYPES = (DETECTOR_TYPE, "STRING")
    RETURN_NAMES = ("detector", "detector_name")
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, backend, dwpose_detector=DWPOSE_DET, dwpose_model=DWPOSE_POSE, vitpose_model=VITPOSE_POSE,
             vitpose_detector=VITPOSE_DET, channel_order="default", device="auto"):
        if backend not in BACKENDS:
            raise ValueError(f"Load Pose Detector: backend {backend!r} is not one of {BACKENDS}")
        if backend.startswith("mediapipe"):
            detector = detect.load_detector("mediapipe", host.resolve_folder("pose_models"))
            return (detector, detect.describe(detector))
        family = "vitpose" if "vitpose" in backend else "dwpose"
        kw = {"device": _detector_device(device)}
        if channel_order != "default":
            kw["channel_order"] = channel_order
        det_name, pose_name = (vitpose_detector, vitpose_model) if family == "vitpose" else (dwpose_detector, dwpose_model)
        if backend.startswith("auto"):
            detector, name = detect.load_auto(family, _maybe_file(det_name), _maybe_file(pose_name),
                                              log=lambda text: _log.warning("PoseAnimate: %s", text),
                                              embedded_folder=host.resolve_folder("pose_models"), **kw)
            return (detector, name)
        det = host.resolve_model("pose_models", det_name)
        pose = host.resolve_model("pose_models", pose_name)
        detector = detect.load_detector(family, det_path=det, pose_path=pose, **kw)
        return (detector, detect.describe(detector))


class DetectPoses:
    """IMAGE frames -> POSE_KEYPOINT (whole body, real scores kept), with progress and cancel.

    People are tracked over the clip, so the person kept is the same one in every frame;
    optional One-Euro smoothing per track (pose/tracking.py, pose/smoothing.py).
    A single image (the reference) is detected at most 2048 px on its long side, and once more
    at 640 px when nobody is found (pose/reference.py)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "detector": (DETECTOR_TYPE,),
                "person": (["largest", "first", "all", "index"], {"default": "largest", "tooltip": "Which person to keep, by track over the whole clip: largest on average, first seen, all (ordered by track), or the track number person_index"}),
                "missing_frames": (["hold_last", "empty"], {"default": "hold_last", "tooltip": "Frames with nobody: repeat the last pose, or leave empty"}),
                "batch_size": ("INT", {"default": 8, "min": 1, "max": 256}),
            },
            "optional": {
                "person_index": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip": "Track number for person = index (tracks are numbered in order of first appearance, left to right)"}),
                "smoothing": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "One-Euro filter over each track's keypoints: 0 = off, 1 = strongest (fast moves still follow)"}),
            },
        }

    RETURN_TYPES = ("POSE_KEYPOINT",)
    RETURN_NAMES = ("poses",)
    FUNCTION = "detect"
    CATEGORY = CATEGORY

    def detect(self, images, detector, person="largest", missing_frames="hold_last", batch_size=8, person_index=0,
               smoothing=0.0):
        pixels = frames.to_uint8_rgb(images, "images")
        choice = str(int(person_index)) if person == "index" else person
        if is_blank_white(pixels):
            host.notify("the images are (almost) all white, so no person can be found. A 16-bit PNG turns white in "
                        "ComfyUI's Load Image: save it as an 8-bit PNG or a JPEG.")
        try:
            if len(pixels) == 1:  # a picture (the reference): capped size for huge photos, a smaller retry
                found = [reference.detect_reference(detector, pixels[0], choice)[0]]
            else:
                found = detect.detect_video(detector, pixels, person=choice, missing=missing_frames,
                                            callback=host.step_callback(len(pixels)), batch_size=batch_size,
                                            smoothing=float(smoothing))
        finally:
            host.free_memory()
        return (keypoints.frames_to_pose_keypoint(found),)


def is_blank_white(pixels: np.ndarray) -> bool:
    """Mostly white with almost no mid-tones: what ComfyUI's Load Image makes of a 16-bit PNG
    (every sample above 255 clips to white; only near-black survives)."""
    if not pixels.size:
        return False
    sample = pixels[..., ::4, ::4, :]
    mid = np.mean((sample > 8) & (sample < 247))
    return bool(np.mean(sample >= 250) > 0.5 and mid < 0.02)


class PrepareDrivingVideo:
    """Every n-th frame, a frame cap, and the framing a model expects: ``crop`` to the reference's
    aspect (One-to-All), ``keep`` the video's own framing (UniAnimate), ``pad`` or ``stretch``.

    Never upsizes: without short_side the output is the video's own pixels (a view of the input
    when no resampling is needed). With reference_pose connected the reference is checked first,
    so a reference with nobody fails before any driving frame is detected."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "select_every_nth": ("INT", {"default": 1, "min": 1, "max": 64}),
                "max_frames": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "0 = all frames"}),
                "skip_first_frames": ("INT", {"default": 0, "min": 0, "max": 100000}),
                "short_side": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 16,
                                       "tooltip": "0 = the video's own pixels (cropped, never upsized); else this short "
                                                  "side, multiples of 16, at most the video's own size"}),
                "fit": (list(frames.FIT_MODES), {"default": "crop",
                                                 "tooltip": "crop: centre crop to the reference's aspect (One-to-All); "
                                                            "keep: the video's own framing (UniAnimate); pad / stretch"}),
            },
            "optional": {
                "reference_image": ("IMAGE", {"tooltip": "The reference picture (its aspect is used by crop/pad/stretch)"}),
                "reference_pose": ("POSE_KEYPOINT", {"tooltip": "The reference's detected pose: checked before the "
                                                                "driving video is touched; its canvas gives the aspect"}),
                "fps": ("FLOAT", {"forceInput": True, "tooltip": "The driving video's fps (Get Video Components); "
                                                                  "the fps output divides it by select_every_nth"}),
            },
        }

    RETURN_TYPES = ("IMAGE", "INT", "INT", "INT", "FLOAT")
    RETURN_NAMES = ("frames", "frame_count", "width", "height", "fps")
    FUNCTION = "prepare"
    CATEGORY = CATEGORY

    def prepare(self, images, select_every_nth=1, max_frames=0, skip_first_frames=0, short_side=0, fit="crop",
                reference_image=None, reference_pose=None, fps=None):
        size = None
        if reference_pose is not None:
            parsed = keypoints.frames_from_pose_keypoint(reference_pose)
            if not parsed:
                raise ValueError("reference_pose is empty: connect Detect Poses run on the reference image.")
            ref = reference.require_person(parsed[0])
            size = (ref.width, ref.height)
        elif reference_image is not None:
            shape = reference_image.shape
            if len(shape) != 4 or shape[0] < 1:
                raise ValueError(f"reference_image must be an IMAGE batch (1, H, W, C), got shape {tuple(shape)}")
            size = (int(shape[2]), int(shape[1]))
        out = frames.prepare_driving_image(images, size, select_every_nth, max_frames, skip_first_frames, short_side, fit)
        return (out, int(out.shape[0]), int(out.shape[2]), int(out.shape[1]), frames.output_fps(fps, select_every_nth))


class AlignPoses:
    """Retarget the driving poses to the character in the reference (per-model modes)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "driving_poses": ("POSE_KEYPOINT",),
                "reference_pose": ("POSE_KEYPOINT",),
                "mode": (list(align.MODES), {"default": "unianimate"}),
                "anchor_frame": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "Driving frame whose proportions are matched to the reference"}),
            },
            "optional": {
                "reference_image": ("IMAGE", {"tooltip": "Needed by one_to_all_pose (the reference is warped onto the pose)"}),
                "auto_anchor": ("BOOLEAN", {"default": False, "tooltip": "Pick the anchor frame automatically (One-to-All's "
                                                                         "pick_good_source_frame); anchor_frame is then ignored"}),
                "rescale_limbs": ("BOOLEAN", {"default": True, "tooltip": "One-to-All's 'align' switch: off keeps the driving "
                                                                          "skeletons as detected (the official cross-scale "
                                                                          "example turns it off); UniAnimate always aligns"}),
            },
        }

    RETURN_TYPES = ("POSE_KEYPOINT", "POSE_KEYPOINT", "IMAGE", "MASK", "IMAGE")
    RETURN_NAMES = ("aligned_poses", "reference_pose", "reference_image", "outpaint_mask", "reference_pose_image")
    FUNCTION = "align"
    CATEGORY = CATEGORY

    def align(self, driving_poses, reference_pose, mode="unianimate", anchor_frame=0, reference_image=None,
              auto_anchor=False, rescale_limbs=True):
        import torch

        driving = keypoints.frames_from_pose_keypoint(driving_poses)
        reference = keypoints.frames_from_pose_keypoint(reference_pose)[0]
        warps = mode == "one_to_all_pose"  # the only mode that reads the picture's pixels
        ref_img = frames.to_uint8_rgb(reference_image, "reference_image")[0] if warps and reference_image is not None else None
        nobody = reference.num_people == 0 or not np.any(reference.people[:, :18, 2] > 0)
        if nobody and mode != "none" and reference_image is not None and \
                is_blank_white(frames.to_uint8_rgb(reference_image, "reference_image")[0]):
            raise ValueError("the reference image is (almost) all white, so no person was found in it. A 16-bit PNG "
                             "turns white in ComfyUI's Load Image: save the reference as an 8-bit PNG or a JPEG.")
        if not auto_anchor and anchor_frame >= len(driving):
            raise ValueError(f"anchor_frame {anchor_frame} is past the last driving frame ({len(driving) - 1}); "
                             f"use 0..{len(driving) - 1}")
        anchor = align.AUTO_ANCHOR if auto_anchor else anchor_frame
        result = align.align_poses(driving, reference, mode, ref_img, anchor, rescale=bool(rescale_limbs))
        if warps:
            image_out = frames.to_image_tensor(result.reference_image[None])
        elif reference_image is not None and reference_image.shape[-1] == 3:
            image_out = reference_image  # unchanged: handed on, no float copy of a 12-megapixel picture
        elif reference_image is not None:
            image_out = frames.to_image_tensor(frames.to_uint8_rgb(reference_image, "reference_image")[:1])
        else:
            image_out = torch.zeros(1, 1, 1, 3).expand(1, reference.height, reference.width, 3)
        if result.mask is not None:
            mask = torch.from_numpy(np.ascontiguousarray(result.mask, np.float32))[None]
        else:  # nothing to outpaint: an all-zero mask of the reference's size that costs no memory
            mask = torch.zeros(1, 1, 1).expand(1, int(image_out.shape[1]), int(image_out.shape[2]))
        pose_image = result.reference_pose_image
        if pose_image is None:  # the mode's own style at its working size (UniAnimate: the official canvas)
            style = stage.STYLE_FOR_MODE[mode]
            pose_image = render.render_pose(result.reference_pose, style,
                                            *render.working_size(style, reference.width, reference.height))
        return (
            keypoints.frames_to_pose_keypoint(result.frames),
            keypoints.frames_to_pose_keypoint([result.reference_pose]),
            image_out,
            mask,
            frames.to_image_tensor(pose_image[None]),
        )


class RenderPoses:
    """POSE_KEYPOINT -> pose images in the drawing style a model was trained on."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "poses": ("POSE_KEYPOINT",),
                "style": (list(render.STYLES), {"default": "openpose"}),
                "width": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 2,
                                  "tooltip": "0 = the style's working size: unianimate the official 512x768 canvas, "
                                             "one_to_all/openpose the poses' canvas with its short side capped at 768 "
                                             "(multiples of 16). Other sizes must be even (video encoders)."}),
                "height": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 2, "tooltip": "0 = the style's working size (see width)"}),
                "draw_body": ("BOOLEAN", {"default": True}),
                "draw_hands": ("BOOLEAN", {"default": True}),
                "draw_face": ("BOOLEAN", {"default": True}),
                "face_change": ("BOOLEAN", {"default": True, "tooltip": "one_to_all: faded face (the official scripts' default)"}),
                "head_change": ("BOOLEAN", {"default": False, "tooltip": "one_to_all: hide head joints"}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("pose_images",)
    FUNCTION = "render"
    CATEGORY = CATEGORY

    def render(self, poses, style="openpose", width=0, height=0, draw_body=True, draw_hands=True,
               draw_face=True, face_change=True, head_change=False):
        parsed = keypoints.frames_from_pose_keypoint(poses)
        if not parsed:
            raise ValueError("Render Poses: the poses are empty (0 frames); connect Detect Poses or Align Poses.")
        options = render_options(style, draw_body, draw_hands, draw_face, face_change, head_change)
        width, height = render_size(style, parsed[0], width, height)
        chunks = (render.render_poses(parsed[i:i + _RENDER_CHUNK], style, width, height, **options)
                  for i in range(0, len(parsed), _RENDER_CHUNK))
        return (frames.image_from_chunks(chunks, len(parsed), width, height, "Render Poses"),)


_RENDER_CHUNK = 32


def render_size(style: str, frame: keypoints.PoseFrame, width: int = 0, height: int = 0) -> tuple[int, int]:
    """The node's width/height: 0 = the style's working size (one side 0: that side follows the aspect)."""
    ww, wh = render.working_size(style, frame.width, frame.height)
    if not width and not height:
        return ww, wh
    width = width or frames.even_floor(round(height * ww / wh))
    height = height or frames.even_floor(round(width * wh / ww))
    frames.check_even_size(int(width), int(height), "Render Poses")
    return int(width), int(height)


def render_options(style, draw_body=True, draw_hands=True, draw_face=True, face_change=True, head_change=False) -> dict:
    """The node's switches, translated to the options each style understands."""
    if style == "openpose":
        return {"draw_body": draw_body, "draw_hands": draw_hands, "draw_face": draw_face}
    if style == "one_to_all":
        return {"without_face": not draw_face, "face_change": face_change, "head_change": head_change}
    return {}


class SavePoseJSON:
    """Write POSE_KEYPOINT to the output folder as JSON (controlnet_aux compatible, scores kept)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"poses": ("POSE_KEYPOINT",), "filename_prefix": ("STRING", {"default": "PoseAnimate/poses"})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = CATEGORY

    def save(self, poses, filename_prefix="PoseAnimate/poses"):
        parsed = keypoints.frames_from_pose_keypoint(poses)  # validates before writing
        path = host.new_output_file(filename_prefix, ".json")
        path.write_text(json.dumps(keypoints.frames_to_pose_keypoint(parsed)))
        return {"ui": {"text": [path.relative_to(host.output_directory()).as_posix()]}, "result": ()}


class LoadPoseJSON:
    """Read a POSE_KEYPOINT JSON file from the input folder (ours, or comfyui_controlnet_aux's)."""

    @classmethod
    def INPUT_TYPES(cls):
        root = host.input_directory()
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.json")) if root.is_dir() else []
        return {"required": {"file": (files or ["poses.json"],)}}

    RETURN_TYPES = ("POSE_KEYPOINT",)
    RETURN_NAMES = ("poses",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, file):
        path = host.resolve_input_file(file)
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise keypoints.PoseFormatError(f"{file} is not valid JSON: {exc}") from exc
        return (keypoints.frames_to_pose_keypoint(keypoints.frames_from_pose_keypoint(data)),)


NODE_CLASS_MAPPINGS = {
    "PoseAnimateLoadPoseDetector": LoadPoseDetector,
    "PoseAnimateDetectPoses": DetectPoses,
    "PoseAnimatePrepareDrivingVideo": PrepareDrivingVideo,
    "PoseAnimateAlignPoses": AlignPoses,
    "PoseAnimateRenderPoses": RenderPoses,
    "PoseAnimateSavePoseJSON": SavePoseJSON,
    "PoseAnimateLoadPoseJSON": LoadPoseJSON,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PoseAnimateLoadPoseDetector": "Load Pose Detector (PoseAnimate)",
    "PoseAnimateDetectPoses": "Detect Poses (PoseAnimate)",
    "PoseAnimatePrepareDrivingVideo": "Prepare Driving Video (PoseAnimate)",
    "PoseAnimateAlignPoses": "Align Poses to Reference (PoseAnimate)",
    "PoseAnimateRenderPoses": "Render Poses (PoseAnimate)",
    "PoseAnimateSavePoseJSON": "Save Pose JSON (PoseAnimate)",
    "PoseAnimateLoadPoseJSON": "Load Pose JSON (PoseAnimate)",
}
