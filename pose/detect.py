"""Pose detection: the common detector interface, input coercion and the video driver.

Every backend turns a batch of RGB uint8 frames into ``PoseFrame`` objects (the internal
134-point layout of ``pose/keypoints.py``) and knows nothing about videos; ``detect_video``
adds batching, person selection, missing-frame filling and progress callbacks on top, so
every backend behaves the same in a graph.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from .keypoints import PoseFrame

BACKENDS = ("dwpose", "vitpose", "mediapipe")
# Why there is no classic-OpenPose backend through controlnet-aux 0.0.10 (checked on its wheel):
# importing controlnet_aux.open_pose runs controlnet_aux/__init__.py, which imports every
# annotator (timm, einops, scikit-image, torchvision users); open_pose/__init__.py itself
# imports open_pose/face.py, which does ``from torchvision.transforms import ToPILImage,
# ToTensor`` at module level, and open_pose/hand.py needs scikit-image. The pack never imports
# torchvision, so the module cannot be loaded; OpenposeDetector.from_pretrained(<dir>) would
# also insist on facenet.pth next to body_pose_model.pth/hand_pose_model.pth.
OPENPOSE_AUX_REFUSAL = (
    "the 'openpose_aux' backend is not available: controlnet-aux 0.0.10's open_pose module imports "
    "torchvision (open_pose/face.py) and every other annotator through controlnet_aux/__init__.py, and "
    "this pack never imports torchvision. Use backend 'dwpose' (yolox_l.onnx + dw-ll_ucoco_384.onnx in "
    "models/pose_models) or 'mediapipe'.")
PERSON_CHOICES = ("largest", "first", "all")
MISSING_CHOICES = ("hold_last", "empty")


@runtime_checkable
class PoseDetector(Protocol):
    """What ``detect_video`` needs from a backend."""

    name: str

    def detect_batch(self, images: np.ndarray) -> list[PoseFrame]:
        """images (T, H, W, 3) uint8 RGB -> one PoseFrame per image with every person found."""
        ...


def as_uint8_rgb(images) -> np.ndarray:
    """Coerce what users really pass (ComfyUI IMAGE float 0..1, uint8, RGBA, grayscale,
    a single frame, a torch tensor) to a contiguous (T, H, W, 3) uint8 RGB array."""
    if hasattr(images, "detach"):  # torch tensor (ComfyUI IMAGE) without importing torch
        images = images.detach().cpu().float().numpy()
    arr = np.asarray(images)
    if arr.size == 0:
        raise ValueError("pose detection got no frames (empty image batch); connect a video or image with at least one frame")
    if arr.ndim == 2:  # one grayscale frame
        arr = arr[None, ..., None]
    elif arr.ndim == 3:
        # (H, W, C) single frame when the last axis looks like channels, else (T, H, W) grayscale
        arr = arr[None] if arr.shape[-1] in (1, 3, 4) else arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"images must be (frames, height, width, channels), got shape {arr.shape}")
    channels = arr.shape[-1]
    if channels == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif channels == 4:
        arr = arr[..., :3]
    elif channels != 3:
        raise ValueError(f"images must have 1, 3 or 4 channels (last axis), got {channels} in shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr.astype(np.uint8) * 255)
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
    if np.issubdtype(np.asarray(images).dtype, np.integer) or arr.max(initial=0.0) > 1.0 + 1e-3:
        return np.ascontiguousarray(np.clip(arr, 0, 255).round().astype(np.uint8))
    return np.ascontiguousarray((np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8))


def _check_person(person: str) -> str:
    person = str(person).strip()
    if person in PERSON_CHOICES:
        return person
    try:
        if int(person) >= 0:
            return str(int(person))
    except ValueError:
        pass
    raise ValueError(f"person must be one of {PERSON_CHOICES} or a person index like '0', got {person!r}")


def fill_missing(frames: list[PoseFrame], missing: str = "hold_last") -> list[PoseFrame]:
    """Frames where nobody was found: ``empty`` keeps them empty; ``hold_last`` repeats the
    previous frame's people (leading empty frames take the first frame that has someone)."""
    if missing not in MISSING_CHOICES:
        raise ValueError(f"missing must be one of {MISSING_CHOICES}, got {missing!r}")
    if missing == "empty":
        return frames
    found = [i for i, f in enumerate(frames) if f.num_people]
    if not found:
        return frames
    out, last = [], frames[found[0]]
    for frame in frames:
        if frame.num_people:
            last = frame
            out.append(frame)
        else:
            out.append(PoseFrame(frame.width, frame.height, last.people.copy()))
    return out


def detect_video(detector: PoseDetector, images, person: str = "largest", missing: str = "hold_last",
                 callback: Callable[[int], None] | None = None, batch_size: int = 8,
                 smoothing: float = 0.0) -> list[PoseFrame]:
    """Detect poses in every frame, ``batch_size`` frames per backend call.

    People are linked into tracks over the clip (pose/tracking.py) and ``person`` picks a track:
    "largest" (largest on average over the clip) | "first" (first seen) | "all" (ordered by
    track) | a track index as text. ``smoothing`` in 0..1 runs the One-Euro filter of
    pose/smoothing.py on each kept track (0 = off). missing: "hold_last" | "empty";
    callback(n) runs after each batch with the number of frames done in it (the node passes
    host.step_callback, which also raises on interrupt).
    """
    from .smoothing import smooth_tracks
    from .tracking import select_tracks, track_people

    person = _check_person(person)
    if missing not in MISSING_CHOICES:
        raise ValueError(f"missing must be one of {MISSING_CHOICES}, got {missing!r}")
    frames = as_uint8_rgb(images)
    batch_size = max(1, int(batch_size))
    reset = getattr(detector, "reset", None)
    if callable(reset):  # a tracking backend must not carry state from an earlier video
        reset()
    out: list[PoseFrame] = []
    for start in range(0, len(frames), batch_size):
        chunk = frames[start : start + batch_size]
        found = detector.detect_batch(chunk)
        if len(found) != len(chunk):
            raise RuntimeError(f"pose backend {detector.name!r} returned {len(found)} frames for {len(chunk)} images")
        out.extend(found)
        if callback is not None:
            callback(len(chunk))
    out, ids = select_tracks(out, track_people(out), person)
    if smoothing:
        out = smooth_tracks(out, ids, smoothing)
    return fill_missing(out, missing)


def load_detector(backend: str, folder: Path | str | None = None, **kw) -> PoseDetector:
    """Build a backend: "dwpose" (yolox_l.onnx + dw-ll_ucoco_384.onnx) or "vitpose" (yolov10m.onnx
    + a ViTPose whole-body .onnx), from ``folder`` or ``det_path=``/``pose_path=``; "mediapipe"
    (embedded weights, or on mediapipe >= 1.x the .task files in ``folder``); "openpose_aux" is
    refused with the reason in OPENPOSE_AUX_REFUSAL."""
    name = str(backend).strip().lower()
    if name == "dwpose":
        from .dwpose import DWPoseDetector

        return DWPoseDetector(folder, **kw)  # folder, or det_path= and pose_path=
    if name == "vitpose":
        from .vitpose import ViTPoseDetector

        return ViTPoseDetector(folder, **kw)
    if name == "mediapipe":  # bundled Holistic (<= 3.12), or the Tasks API's .task files in ``folder``
        from .mediapipe_pose import load_embedded

        return load_embedded(folder, **kw)
    if name == "openpose_aux":
        raise ValueError(OPENPOSE_AUX_REFUSAL)
    raise ValueError(f"unknown pose backend {backend!r}; choose one of {BACKENDS}")


def describe(detector: PoseDetector) -> str:
    """One line naming the detector actually in use (files, engine, channel order)."""
    text = getattr(detector, "describe", None)
    return text() if callable(text) else str(getattr(detector, "name", type(detector).__name__))


def load_auto(prefer: str, det_path: Path | str | None, pose_path: Path | str | None,
              log: Callable[[str], None] | None = None, embedded_folder: Path | str | None = None,
              **kw) -> tuple[PoseDetector, str]:
    """The model family's own detector (``prefer``: "vitpose" or "dwpose") when both of its files
    exist, else the embedded mediapipe detector with a warning through ``log``.

    Returns the detector and a line naming what is used (and why, on fallback). Files that exist
    but fail to load are an error, not a silent fallback: the user put them there to be used."""
    if prefer not in ("vitpose", "dwpose"):
        raise ValueError(f"auto detector preference must be 'vitpose' or 'dwpose', got {prefer!r}")
    missing = [str(p) for p in (det_path, pose_path) if p is None or not Path(p).is_file()]
    if not missing:
        detector = load_detector(prefer, det_path=Path(det_path), pose_path=Path(pose_path), **kw)
        return detector, describe(detector)
    files = ("yolov10m.onnx + vitpose_h_wholebody.onnx (or vitpose-l-wholebody.onnx)" if prefer == "vitpose"
             else "yolox_l.onnx + dw-ll_ucoco_384.onnx")
    detector = load_detector("mediapipe", embedded_folder)
    text = (f"{describe(detector)} instead of {prefer}: {files} not found in models/pose_models; the poses "
            f"differ from the official pipeline's (see README, detectors)")
    if log is not None:
        log(text)
    return detector, text
