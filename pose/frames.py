"""Frame handling the hosted services do implicitly.

ComfyUI hands us IMAGE batches (T, H, W, C) float 0..1 as torch tensors; the pose
stack works on uint8 RGB numpy arrays. This module converts between the two,
accepts what users really feed (RGBA, grayscale, a single image), and does the
driving-video preparation: every n-th frame, a frame cap, the framing each model
expects (One-to-All: crop to the reference's aspect; UniAnimate: the video as it is).

Real sizes rule the design: a 300-frame 1080x1920 IMAGE is 7.5 GB of float32, so nothing
here copies it whole. Conversions run a few frames (and row blocks) at a time, driving
frames are never upsized (a crop without resampling is a view of the input), outputs are
allocated once and filled in place, and allocations larger than the free memory are
refused up front with the node's name.
"""
from __future__ import annotations

import cv2
import numpy as np


# Conversions and sizes every model family shares live in models/runtime/images.py.
from ..models.runtime.images import (RESOLUTIONS, FrameError, as_image_batch, floor_to_multiple,  # noqa: F401
                                     iter_uint8_chunks, size_for_resolution, size_for_short_side,
                                     to_image_tensor, to_uint8_rgb)
from ..models.runtime.placement import available_memory


def select_indices(num_frames: int, every_nth: int = 1, max_frames: int = 0, skip_first: int = 0) -> list[int]:
    """Indices of the frames to keep: skip, stride, cap (0 = no cap)."""
    if every_nth < 1:
        raise FrameError(f"select_every_nth must be >= 1, got {every_nth}")
    idx = list(range(max(skip_first, 0), num_frames, every_nth))
    if max_frames and max_frames > 0:
        idx = idx[:max_frames]
    if not idx:
        if num_frames == 0:
            raise FrameError("the driving video has 0 frames; upload a video that plays (at least one frame).")
        raise FrameError(f"no frame left: the video has {num_frames} frames and skip_first_frames={skip_first} skips "
                         f"them all; set skip_first_frames below {num_frames}.")
    return idx


DEFAULT_FPS = 30.0  # what the official One-to-All scripts assume when a video reports no fps


def output_fps(fps, every_nth: int = 1) -> float:
    """The fps of a clip that keeps every n-th frame: ``fps / n`` (30 / n when the fps is unknown)."""
    value = float(fps) if fps is not None else 0.0
    if not np.isfinite(value) or value <= 0:
        value = DEFAULT_FPS
    return value / max(1, int(every_nth))


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


FIT_MODES = ("crop", "keep", "pad", "stretch")


def even_floor(value: float) -> int:
    """The largest even size <= value (at least 2): video encoders (libx264) refuse odd sizes."""
    return max(2, int(value) // 2 * 2)


def _short_side_size(width: int, height: int, short_side: int, multiple: int) -> tuple[int, int]:
    """(W, H) with ``short_side`` on the width:height aspect, multiples of ``multiple``, never
    larger than width x height (short sides larger than the source give the source's own size)."""
    if short_side >= min(width, height):
        return floor_to_multiple(width, 2), floor_to_multiple(height, 2)
    scale = short_side / min(width, height)
    return floor_to_multiple(width * scale, multiple), floor_to_multiple(height * scale, multiple)


def driving_plan(shape, reference_size: tuple[int, int] | None = None, every_nth: int = 1, max_frames: int = 0,
                 skip_first: int = 0, short_side: int = 0, mode: str = "crop", multiple: int = 16) -> dict:
    """What Prepare Driving Video does to a (T, H, W, C) video, before touching a pixel.

    ``crop``: centre crop to the reference's aspect (One-to-All's ``resizecrop``); ``keep``: the
    video's own framing (UniAnimate: the official x/y ratios absorb the aspect); ``pad`` /
    ``stretch``: letterbox / plain resize to the reference's aspect. ``short_side`` 0 keeps the
    video's own pixels (a crop at its own size, sides made even); a short side is never upsized.
    Returns {"indices", "box": (x0, y0, w, h) of the crop, "size": (W, H), "resize": bool}.
    """
    if mode not in FIT_MODES:
        raise FrameError(f"fit mode must be one of {', '.join(FIT_MODES)}, got {mode!r}")
    t, h, w = (int(v) for v in shape[:3])
    indices = select_indices(t, every_nth, max_frames, skip_first)
    ref_w, ref_h = reference_size if reference_size and mode != "keep" else (w, h)
    box = (0, 0, w, h)
    if mode == "crop":
        box = crop_box_for_aspect(w, h, ref_w, ref_h)
    bw, bh = box[2], box[3]
    if mode in ("crop", "keep"):
        if short_side:
            size = _short_side_size(bw, bh, short_side, multiple)
        else:
            size = (even_floor(bw), even_floor(bh))
            if size != (bw, bh):  # trim the odd last row / column: a view, no resampling
                box = (box[0], box[1], size[0], size[1])
    else:  # pad / stretch: the reference's aspect at the video's own scale
        if mode == "pad":  # a canvas of the reference's aspect whose long side is the video's long side
            side = max(w, h)
            cw, ch = (side, side * ref_h / ref_w) if ref_w >= ref_h else (side * ref_w / ref_h, side)
        else:
            cw = (w * h * ref_w / ref_h) ** 0.5
            ch = w * h / cw
        size = _short_side_size(int(cw), int(ch), short_side, multiple) if short_side else (even_floor(cw), even_floor(ch))
    resize = mode in ("pad", "stretch") or size != (box[2], box[3])
    return {"indices": indices, "box": box, "size": size, "resize": resize}


def _selected(arr, indices: list[int]):
    """Frames ``indices`` (an arithmetic run) as a view when possible."""
    if len(indices) == 1:
        return arr[indices[0]:indices[0] + 1]
    step = indices[1] - indices[0]
    return arr[indices[0]:indices[-1] + 1:step]


def prepare_driving(frames, reference_size: tuple[int, int] | None = None, every_nth: int = 1,
                    max_frames: int = 0, skip_first: int = 0, short_side: int = 0, mode: str = "crop",
                    multiple: int = 16) -> np.ndarray:
    """Driving video -> (T, H, W, 3) uint8 frames for the pose detector (see ``driving_plan``).

    Frames are converted and resized a few at a time, so the peak is the uint8 result."""
    arr = as_image_batch(frames, "driving video")
    plan = driving_plan(arr.shape, reference_size, every_nth, max_frames, skip_first, short_side, mode, multiple)
    x0, y0, bw, bh = plan["box"]
    width, height = plan["size"]
    selected = _selected(arr, plan["indices"])
    check_memory(len(plan["indices"]) * width * height * 3, "Prepare Driving Video", f"{len(plan['indices'])} frames at {width}x{height}")
    out = np.empty((len(plan["indices"]), height, width, 3), np.uint8)
    done = 0
    for chunk in iter_uint8_chunks(selected, what="driving video"):
        for frame in chunk:
            crop = frame[y0:y0 + bh, x0:x0 + bw]
            out[done] = fit_image(crop, width, height, "pad" if mode == "pad" else "stretch") if plan["resize"] else crop
            done += 1
    return out


def prepare_driving_image(images, reference_size: tuple[int, int] | None = None, every_nth: int = 1,
                          max_frames: int = 0, skip_first: int = 0, short_side: int = 0, mode: str = "crop",
                          multiple: int = 16):
    """The same on a ComfyUI IMAGE: a view of the input (no copy) whenever no resampling is needed,
    else a float32 IMAGE filled a few frames at a time."""
    import torch

    images = images if hasattr(images, "detach") else torch.from_numpy(np.asarray(images))
    arr = as_image_batch(images, "driving video")
    plan = driving_plan(arr.shape, reference_size, every_nth, max_frames, skip_first, short_side, mode, multiple)
    x0, y0, bw, bh = plan["box"]
    width, height = plan["size"]
    selected = _selected(arr, plan["indices"])
    if not plan["resize"] and arr.shape[-1] == 3 and arr.dtype == torch.float32:
        return selected[:, y0:y0 + bh, x0:x0 + bw, :]
    count = len(plan["indices"])
    check_memory(count * width * height * 3 * 4, "Prepare Driving Video", f"{count} frames at {width}x{height}")
    out = torch.empty((count, height, width, 3), dtype=torch.float32)
    done = 0
    for chunk in iter_uint8_chunks(selected, what="driving video"):
        crops = [f[y0:y0 + bh, x0:x0 + bw] for f in chunk]
        if plan["resize"]:
            crops = [fit_image(c, width, height, "pad" if mode == "pad" else "stretch") for c in crops]
        part = out[done:done + len(crops)]
        part.copy_(torch.from_numpy(np.stack(crops)))
        part.div_(255.0)
        done += len(crops)
    return out



class NotEnoughMemoryError(MemoryError):
    """An allocation the machine cannot hold, refused before it is tried."""


def check_memory(nbytes: int, node: str, what: str) -> None:
    """Refuse an allocation larger than the free memory with a message naming the node and the size."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise NotEnoughMemoryError(
            f"{node}: {what} need {nbytes / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB of memory is free. "
            "Use fewer frames (max_frames, select_every_nth), a smaller size (width/height or short_side), "
            "or a smaller reference image.")


def image_from_chunks(chunks, count: int, width: int, height: int, node: str):
    """uint8 (T_i, H, W, 3) chunks -> one ComfyUI IMAGE, allocated once (no uint8 copy of the whole video)."""
    import torch

    check_memory(count * width * height * 3 * 4, node, f"{count} frames at {width}x{height}")
    out = torch.empty((count, height, width, 3), dtype=torch.float32)
    done = 0
    for chunk in chunks:
        part = out[done:done + len(chunk)]
        part.copy_(torch.from_numpy(np.ascontiguousarray(chunk)))  # uint8 -> float32 in place, no temporary
        part.div_(255.0)
        done += len(chunk)
    if done != count:
        raise FrameError(f"{node}: produced {done} frames, expected {count}")
    return out


def check_even_size(width: int, height: int, node: str) -> None:
    """Video encoders (libx264, ComfyUI's SaveVideo) refuse odd sizes: say so where the size is chosen."""
    if width % 2 or height % 2:
        raise FrameError(f"{node}: {width}x{height} has an odd side, and video encoders (libx264) refuse odd sizes; "
                         f"use {even_floor(width)}x{even_floor(height)} (or 0 for the working size, always a multiple of 16).")
