"""ComfyUI IMAGE batches <-> uint8 frames, and the hosted endpoints' output sizes.

Why here: every family (and the pose stage) converts the same inputs: ComfyUI hands IMAGE batches
(T, H, W, C) float 0..1 as torch tensors, models want uint8 RGB frames or [-1, 1] tensors, and
users really feed RGBA, grayscale or a single image. One converter serves them all, so the same
picture gives the same pixels whichever node reads it. It converts a few frames (and row blocks)
at a time: a 300-frame 1080x1920 IMAGE is 7.5 GB of float32, and no full-size float copy of it is
ever made; the only full-size allocation is the uint8 result.
"""
from __future__ import annotations

import numpy as np


class FrameError(ValueError):
    """Images that cannot be used (empty batch, wrong shape...)."""


_CHUNK = 8  # frames converted at a time: no full-video float copy ever exists


def as_image_batch(images, what: str = "images"):
    """(T, H, W, C) view of any IMAGE-like input (torch tensor or array), without copying."""
    arr = images.detach() if hasattr(images, "detach") else np.asarray(images)
    if arr.numel() == 0 if hasattr(arr, "numel") else arr.size == 0:
        raise FrameError(f"{what}: the image batch is empty (0 frames). Connect a video or image with at least one frame.")
    if arr.ndim == 2:
        arr = arr[None, :, :, None]
    elif arr.ndim == 3:
        arr = arr[..., None] if arr.shape[-1] not in (1, 3, 4) else arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise FrameError(f"{what}: expected (frames, height, width, channels) with 1, 3 or 4 channels, got shape {tuple(arr.shape)}.")
    return arr


_BLOCK_VALUES = 1 << 22  # float values converted at once (16 MB): bounds the temporaries for any frame size


def _chunk_to_uint8(chunk, scale: float) -> np.ndarray:
    """One chunk (torch or numpy, any dtype) -> uint8 RGB; ``scale`` maps values to 0..255."""
    if hasattr(chunk, "detach"):
        chunk = chunk.detach().cpu()
        chunk = chunk.numpy() if chunk.dtype != _torch().bfloat16 else chunk.float().numpy()
    if chunk.shape[-1] == 4:
        chunk = chunk[..., :3]
    if chunk.dtype == np.uint8:
        out = np.ascontiguousarray(chunk)
    else:
        out = np.empty(chunk.shape, np.uint8)
        rows = max(1, _BLOCK_VALUES // max(1, chunk.shape[2] * chunk.shape[3]))
        for f in range(chunk.shape[0]):  # row blocks of each frame: views in, one small float temporary
            for r in range(0, chunk.shape[1], rows):
                arr = np.array(chunk[f, r:r + rows], np.float32)
                arr[~np.isfinite(arr)] = 0.0
                arr *= scale
                np.rint(arr, out=arr)
                np.clip(arr, 0, 255, out=arr)
                out[f, r:r + rows] = arr
    return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out


def _torch():
    import torch

    return torch


def _value_scale(arr) -> float:
    """255 for 0..1 floats and booleans, 1 for integers or floats already in 0..255 (the maximum is
    read without copying the video)."""
    kind = str(arr.dtype).replace("torch.", "")
    if kind == "bool":
        return 255.0
    if not (kind.startswith("float") or kind.startswith("bfloat")):
        return 1.0
    if hasattr(arr, "detach"):
        top = float(_torch().nan_to_num(arr.amax().float(), nan=0.0))
    else:
        top = float(np.nan_to_num(np.fmax.reduce(arr, axis=None)))  # NaN-skipping, no copy
    return 1.0 if top > 1.0 + 1e-3 else 255.0


def to_uint8_rgb(images, what: str = "images") -> np.ndarray:
    """Any IMAGE-like input -> (T, H, W, 3) uint8 RGB.

    Accepts torch tensors or numpy arrays, float in 0..1 or uint8, (H, W), (H, W, C) or
    (T, H, W, C) with C = 1 (grayscale, replicated), 3, or 4 (RGBA: alpha dropped).
    Converted a few frames at a time: the only full-size allocation is the uint8 result.
    """
    arr = as_image_batch(images, what)
    scale = _value_scale(arr)
    t, h, w = (int(v) for v in arr.shape[:3])
    if isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and arr.shape[-1] == 3:
        return np.ascontiguousarray(arr)
    out = np.empty((t, h, w, 3), np.uint8)
    for start in range(0, t, _CHUNK):
        out[start:start + _CHUNK] = _chunk_to_uint8(arr[start:start + _CHUNK], scale)
    return out


def iter_uint8_chunks(images, chunk: int = _CHUNK, what: str = "images"):
    """Yield (T_i, H, W, 3) uint8 chunks of any IMAGE-like input, converting only one chunk at a time."""
    arr = as_image_batch(images, what)
    scale = _value_scale(arr)
    for start in range(0, int(arr.shape[0]), max(1, int(chunk))):
        yield _chunk_to_uint8(arr[start:start + chunk], scale)


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
