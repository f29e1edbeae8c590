"""ComfyUI IMAGE batches <-> uint8 frames, and the hosted endpoints' output sizes.

Why here: every family (and the pose stage) converts the same inputs: ComfyUI hands IMAGE batches
(T, H, W, C) float 0..1 as torch tensors, models want uint8 RGB frames or [-1, 1] tensors, and
users really feed RGBA, grayscale or a single image. One converter serves them all, so the same
picture gives the same pixels whichever node reads it.
"""
from __future__ import annotations

import numpy as np


class FrameError(ValueError):
    """Images that cannot be used (empty batch, wrong shape...)."""


def to_uint8_rgb(images, what: str = "images") -> np.ndarray:
    """Any IMAGE-like input -> (T, H, W, 3) uint8 RGB.

    Accepts torch tensors or numpy arrays, float in 0..1 or uint8, (H, W), (H, W, C) or
    (T, H, W, C) with C = 1 (grayscale, replicated), 3, or 4 (RGBA: alpha dropped).
    """
    if hasattr(images, "detach"):
        images = images.detach().cpu().float().numpy()
    arr = np.asarray(images)
    if arr.size == 0:
        raise FrameError(f"{what}: the image batch is empty (0 frames). Connect a video or image with at least one frame.")
    if arr.ndim == 2:
        arr = arr[None, :, :, None]
    elif arr.ndim == 3:
        arr = arr[..., None] if arr.shape[-1] not in (1, 3, 4) else arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise FrameError(f"{what}: expected (frames, height, width, channels) with 1, 3 or 4 channels, got shape {tuple(arr.shape)}.")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.nan_to_num(arr.astype(np.float32), nan=0.0)
        if arr.max(initial=0.0) > 1.0 + 1e-3:  # already 0..255 floats
            arr = arr / 255.0
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def to_image_tensor(frames: np.ndarray):
    """(T, H, W, 3) uint8 -> ComfyUI IMAGE (torch float32 0..1)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(frames)).float().div_(255.0)


def floor_to_multiple(value: float, multiple: int = 16) -> int:
    return max(multiple, int(value) // multiple * multiple)


def size_for_short_side(width: int, height: int, short_side: int, multiple: int = 16) -> tuple[int, int]:
    """(W, H) with the given short side, the input's aspect ratio, both multiples of ``multiple``."""
    scale = short_side / min(width, height)
    return floor_to_multiple(width * scale, multiple), floor_to_multiple(height * scale, multiple)


RESOLUTIONS = {"480p": 480, "580p": 580, "720p": 720}


def size_for_resolution(width: int, height: int, resolution: str, multiple: int = 16) -> tuple[int, int]:
    """Hosted-endpoint resolution names -> (W, H) on the reference's aspect ratio."""
    if resolution not in RESOLUTIONS:
        raise FrameError(f"resolution must be one of {sorted(RESOLUTIONS)}, got {resolution!r}")
    return size_for_short_side(width, height, RESOLUTIONS[resolution], multiple)


def round_up_frames(frames: int, stride: int = 4) -> int:
    """Smallest ``stride * k + 1`` frame count >= ``frames``: what a video VAE with ``stride``x
    temporal compression (Wan: 4) encodes without dropping frames."""
    frames = int(frames)
    if frames < 1:
        raise ValueError(f"frame count must be positive, got {frames}.")
    return (frames - 1 + stride - 1) // stride * stride + 1
