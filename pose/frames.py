"""Frame handling the hosted services do implicitly.

ComfyUI hands us IMAGE batches (T, H, W, C) float 0..1 as torch tensors; the pose
stack works on uint8 RGB numpy arrays. This module converts between the two,
accepts what users really feed (RGBA, grayscale, a single image), and does the
driving-video preparation: every n-th frame, a frame cap, crop/resize to the
reference's aspect ratio at sizes that are multiples of 16.
"""
from __future__ import annotations

import cv2
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


def select_indices(num_frames: int, every_nth: int = 1, max_frames: int = 0, skip_first: int = 0) -> list[int]:
    """Indices of the frames to keep: skip, stride, cap (0 = no cap)."""
    if every_nth < 1:
        raise FrameError(f"select_every_nth must be >= 1, got {every_nth}")
    idx = list(range(max(skip_first, 0), num_frames, every_nth))
    if max_frames and max_frames > 0:
        idx = idx[:max_frames]
    if not idx:
        raise FrameError(f"no frame left: {num_frames} frames, skip_first={skip_first}, every_nth={every_nth}")
    return idx


DEFAULT_FPS = 30.0  # what the official One-to-All scripts assume when a video reports no fps


def output_fps(fps, every_nth: int = 1) -> float:
    """The fps of a clip that keeps every n-th frame: ``fps / n`` (30 / n when the fps is unknown)."""
    value = float(fps) if fps is not None else 0.0
    if not np.isfinite(value) or value <= 0:
        value = DEFAULT_FPS
    return value / max(1, int(every_nth))


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


def crop_box_for_aspect(width: int, height: int, target_w: int, target_h: int) -> tuple[int, int, int, int]:
    """Centred (x0, y0, w, h) crop of a width x height frame with the target aspect ratio."""
    target = target_w / target_h
    if width / height > target:
        w = max(1, int(round(height * target)))
        return (width - w) // 2, 0, w, height
    h = max(1, int(round(width / target)))
    return 0, (height - h) // 2, width, h


def fit_frames(frames: np.ndarray, width: int, height: int, mode: str = "crop") -> np.ndarray:
    """Resize (T, H, W, 3) uint8 frames to width x height.

    ``crop``: centre-crop to the target aspect first (what the hosted services do);
    ``pad``: letterbox with black; ``stretch``: plain resize.
    """
    if mode not in ("crop", "pad", "stretch"):
        raise FrameError(f"fit mode must be crop, pad or stretch, got {mode!r}")
    t, h, w, _ = frames.shape
    if (w, h) == (width, height):
        return frames.copy()
    out = np.empty((t, height, width, 3), np.uint8)
    for i in range(t):
        out[i] = fit_image(frames[i], width, height, mode)
    return out


def fit_image(image: np.ndarray, width: int, height: int, mode: str = "crop") -> np.ndarray:
    h, w = image.shape[:2]
    if mode == "crop":
        x0, y0, cw, ch = crop_box_for_aspect(w, h, width, height)
        image = image[y0 : y0 + ch, x0 : x0 + cw]
        h, w = ch, cw
    if mode == "pad":
        scale = min(width / w, height / h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = np.zeros((height, width, 3), np.uint8)
        resized = cv2.resize(image, (nw, nh), interpolation=_interp(w, h, nw, nh))
        y0, x0 = (height - nh) // 2, (width - nw) // 2
        canvas[y0 : y0 + nh, x0 : x0 + nw] = resized
        return canvas
    return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=_interp(w, h, width, height))


def _interp(w: int, h: int, nw: int, nh: int) -> int:
    return cv2.INTER_AREA if nw * nh < w * h else cv2.INTER_CUBIC


def prepare_driving(frames, reference_size: tuple[int, int] | None = None, every_nth: int = 1,
                    max_frames: int = 0, skip_first: int = 0, short_side: int = 0, mode: str = "crop",
                    multiple: int = 16) -> np.ndarray:
    """Driving video -> frames the pose stage and the models expect.

    Selects frames, then crops/resizes them to the reference's aspect ratio (``reference_size``
    = (W, H) of the reference image; None keeps the video's own aspect) at a size that is a
    multiple of ``multiple``; ``short_side`` 0 keeps the reference's own scale.
    """
    frames = to_uint8_rgb(frames, "driving video")
    frames = frames[select_indices(len(frames), every_nth, max_frames, skip_first)]
    h, w = frames.shape[1:3]
    ref_w, ref_h = reference_size or (w, h)
    if short_side:
        out_w, out_h = size_for_short_side(ref_w, ref_h, short_side, multiple)
    else:
        out_w, out_h = floor_to_multiple(ref_w, multiple), floor_to_multiple(ref_h, multiple)
    return fit_frames(frames, out_w, out_h, mode)
