"""Pose images exactly as each model saw them in training, drawn with OpenCV.

Three styles, each a faithful re-implementation of one official drawer (written from
the rules in tests/fixtures/reference/*/README.md and checked pixel by pixel against
their renders):

``openpose``
    The ControlNet drawing of comfyui_controlnet_aux (``draw_poses``): per person body
    limbs as filled ellipses in colour x 0.6, joints r=4, hand bones (thickness 2, HSV
    colours) with blue dots, white face dots r=3 including copies of the two eye joints.
    Points with score >= 0.3 are drawn. Every person is drawn.
``unianimate``
    UniAnimate-DiT's ``draw_pose`` (run_align_pose.py): 18 body points + two toe points
    (mean of big and small toe, only if both are visible; the big toe alone when the detector
    has no small toe at all, e.g. mediapipe), 19 limbs incl. ankle->toe,
    limbs darkened x 0.6 before the joints, hands, no face; colours R/B swapped as the
    model sees them (the official script writes an RGB canvas with cv2.imwrite and reads
    it back with PIL). Only the first person is drawn (the official code keeps one).
    Drawn on the official fixed canvas, 768x512 (HxW; 512x768 for landscape outputs), then
    resized with PIL bilinear to the requested size: line widths at the model input are the
    official ones whatever the reference's size.
``one_to_all``
    One-to-All Animation's ``draw_pose_aligned``: drawn on a canvas whose short side is
    2160 px, stick widths from that canvas size, colours scaled by confidence, limbs x 0.6,
    grey face dots without jaw (0-16) and nose (27-35), then ``cv2.resize`` (bilinear) to
    the output size. Only the first person is drawn.

Why the arithmetic looks fussy: each drawer truncates pixel positions with ``int()``, so
the float precision of every product decides some pixels. The official runs used NumPy 2
(openpose, unianimate: float32 products) or NumPy 1 (one_to_all: float32 scalar times a
Python number was float64); each style reproduces its own reference's precision.
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import cv2
import numpy as np

from .keypoints import FACE, LEFT_HAND, RIGHT_HAND, PoseFrame, sanitize_people

STYLES = ("openpose", "unianimate", "one_to_all")

# Defaults of every option, per style (the official drawers' own defaults).
STYLE_OPTIONS: dict[str, dict[str, bool]] = {
    "openpose": {
        "draw_body": True,            # body limbs and joints
        "draw_hands": True,           # hand bones and dots
        "draw_face": True,            # white face dots (incl. the eye copies)
        "xinsr_stick_scaling": False,  # xinsir SDXL ControlNet: thicker limbs on big canvases
    },
    "unianimate": {
        "draw_body": True,   # body + feet limbs and joints
        "draw_hands": True,  # hand bones and dots
        "draw_face": False,  # the model was trained without the face; True gives the official "with face" canvas
        "swap_rb": True,     # True: colours as the model sees them (R/B swapped); False: the raw canvas
        "official_canvas": True,  # True: draw on the fixed 768x512 canvas and resize; False: draw at the output size
    },
    "one_to_all": {
        "without_face": False,  # True: no face dots (the reference-pose image style)
        "face_change": False,   # True: face dots at 0.35 brightness (the scripts' pose-video default)
        "head_change": False,   # True: head joints black, head limbs at 0.35 (hides head shape)
    },
}

KEEP = 0.3      # comfyui_controlnet_aux / UniAnimate / One-to-All visibility threshold
_EPS = 0.01     # the drawers' "coordinate > eps" test (skips -1 and row/column 0)
_LIMIT = 30000  # cv2 draws in 16.16 fixed point: farther coordinates are treated as missing

# The classic OpenPose palette (RGB), indexed by limb and by joint.
_COLORS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
           (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
           (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]
# UniAnimate appends colours for the two toe points / ankle->toe limbs.
_COLORS_FEET = _COLORS + [(170, 255, 255), (255, 255, 0)]
# 0-based joint pairs; the first 17 are the OpenPose limbs, UniAnimate adds LAnk->LToe, RAnk->RToe.
_LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
          (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (13, 18), (10, 19)]
_HAND_EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
               (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)]
_HEAD = (0, 14, 15, 16, 17)
_ONE_TO_ALL_FACE = tuple(i for i in range(68) if not (i < 17 or 27 <= i < 36))  # no jaw, no nose
_ONE_TO_ALL_SHORT_SIDE = 2160
UNIANIMATE_CANVAS = (512, 768)  # (W, H): run_align_pose.py draws every pose with draw_pose(H=768, W=512)
WORKING_MAX_SHORT = 768         # One-to-All's infer_preprocess.py caps the short side of its canvases here
_MAX_DEFAULT_THREADS = 4
_LUT_06 = np.array([int(v * 0.6) for v in range(256)], np.uint8)  # (canvas * 0.6).astype(uint8)


def _hsv_colors() -> list[tuple[float, float, float]]:
    """matplotlib.colors.hsv_to_rgb([ie/20, 1, 1]) for the 20 hand bones, same float steps."""
    out = []
    for ie in range(len(_HAND_EDGES)):
        h = ie / float(len(_HAND_EDGES))
        i = int(h * 6.0)
        f = h * 6.0 - i
        q, t = 1.0 - f, 1.0 - (1.0 - f)
        out.append([(1.0, t, 0.0), (q, 1.0, 0.0), (0.0, 1.0, t), (0.0, q, 1.0), (t, 0.0, 1.0), (1.0, 0.0, q)][i % 6])
    return out


_HSV = _hsv_colors()
_HAND_COLORS_255 = [tuple(c * 255 for c in rgb) for rgb in _HSV]  # float colours; OpenCV rounds them


# --- options -------------------------------------------------------------------------------

def style_options(style: str) -> dict[str, bool]:
    """The options a style takes, with their defaults."""
    _check_style(style)
    return dict(STYLE_OPTIONS[style])


def _check_style(style) -> None:
    if style not in STYLES:
        raise ValueError(f"unknown pose render style {style!r}; valid styles: {', '.join(STYLES)}")


def _resolve_options(style: str, options: dict) -> dict[str, bool]:
    _check_style(style)
    valid = STYLE_OPTIONS[style]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for pose render style {style!r}; "
                         f"valid options: {', '.join(valid)}")
    out = dict(valid)
    for key, value in options.items():
        if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
            out[key] = bool(value)
        else:
            raise ValueError(f"pose render option {key!r} must be True or False, got {value!r}")
    return out


def _size(frame: PoseFrame, width, height) -> tuple[int, int]:
    w = frame.width if width is None else width
    h = frame.height if height is None else height
    for name, v in (("width", w), ("height", h)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"render {name} must be a positive integer, got {v!r}")
    return int(w), int(h)


# --- sizes -----------------------------------------------------------------------------------

def unianimate_canvas(width: int, height: int) -> tuple[int, int]:
    """UniAnimate's fixed drawing canvas (W, H) for an output of width x height: the official
    512x768 portrait canvas, transposed for landscape outputs (the official scripts are portrait only)."""
    w, h = UNIANIMATE_CANVAS
    return (h, w) if width > height else (w, h)


def working_size(style: str, width: int, height: int) -> tuple[int, int]:
    """The size a style draws at when the caller gives none, for poses on a width x height canvas.

    ``unianimate``: the official fixed canvas. ``one_to_all``: One-to-All's preprocessing size (the
    canvas with its short side capped at 768, both sides floored to multiples of 16).
    ``openpose``: the same cap (the consumers resize to their own size). Always multiples of 16,
    so every pose video can be encoded (libx264 refuses odd sizes)."""
    _check_style(style)
    if style == "unianimate":
        return unianimate_canvas(width, height)
    w, h = int(width), int(height)
    if min(w, h) > WORKING_MAX_SHORT:  # infer_preprocess.py's arithmetic: short side to the cap, long side truncated
        w, h = (WORKING_MAX_SHORT, int(h * WORKING_MAX_SHORT / w)) if w <= h else (int(w * WORKING_MAX_SHORT / h), WORKING_MAX_SHORT)
    return max(16, w // 16 * 16), max(16, h // 16 * 16)


def _resize_bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """PIL bilinear (antialiased when shrinking): torchvision's resize of a PIL image, as the
    UniAnimate inference script resizes the pose images."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def _draw_frame(out: np.ndarray, people: np.ndarray, style: str, opts: dict, draw) -> None:
    """Draw one frame into ``out``; UniAnimate goes through its official canvas."""
    h, w = out.shape[:2]
    if style == "unianimate" and opts["official_canvas"]:
        cw, ch = unianimate_canvas(w, h)
        if (cw, ch) != (w, h):
            canvas = np.zeros((ch, cw, 3), np.uint8)
            draw(canvas, people, opts)
            out[:] = _resize_bilinear(canvas, w, h)
            return
    draw(out, people, opts)


def _output_size(frame: PoseFrame, style: str, opts: dict, width, height) -> tuple[int, int]:
    if style == "unianimate" and opts["official_canvas"] and width is None and height is None:
        return unianimate_canvas(frame.width, frame.height)
    return _size(frame, width, height)


# --- public API ------------------------------------------------------------------------------

def render_pose(frame: PoseFrame, style: str = "openpose", width: int | None = None,
                height: int | None = None, **options) -> np.ndarray:
    """Draw one frame: (H, W, 3) uint8 RGB. Size defaults to the frame's canvas (``unianimate``:
    to the official fixed canvas)."""
    opts = _resolve_options(style, options)
    if not isinstance(frame, PoseFrame):
        raise ValueError(f"render_pose needs a PoseFrame (pose/keypoints.py), got {type(frame).__name__}")
    w, h = _output_size(frame, style, opts, width, height)
    out = np.zeros((h, w, 3), np.uint8)
    _draw_frame(out, _bounded(frame.people), style, opts, _DRAWERS[style])
    return out


def render_poses(frames: list[PoseFrame], style: str = "openpose", width: int | None = None,
                 height: int | None = None, threads: int | None = None, **options) -> np.ndarray:
    """Draw a sequence: (T, H, W, 3) uint8 RGB, frames drawn in parallel (OpenCV releases the GIL).

    Without width/height every frame must have the same canvas size (``unianimate`` then draws
    at its official fixed canvas). ``threads`` defaults to
    the CPU count, at most 4 (the Python part of drawing holds the GIL, more threads do not help).
    """
    opts = _resolve_options(style, options)
    frames = list(frames)
    for i, f in enumerate(frames):
        if not isinstance(f, PoseFrame):
            raise ValueError(f"render_poses: frame {i} is a {type(f).__name__}, not a PoseFrame (pose/keypoints.py)")
    if not frames:
        if width is None or height is None:
            raise ValueError("render_poses got no frames; pass width and height to get an empty (0, H, W, 3) array")
        w, h = _size(PoseFrame(1, 1), width, height)
        return np.zeros((0, h, w, 3), np.uint8)
    sizes = {_output_size(f, style, opts, width, height) for f in frames}
    if len(sizes) > 1:
        raise ValueError(f"render_poses: frames have different canvas sizes {sorted(sizes)}; pass width and height "
                         "to render them all at one size")
    w, h = sizes.pop()
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1):
        raise ValueError(f"render_poses: threads must be a positive integer or None, got {threads!r}")
    out = np.zeros((len(frames), h, w, 3), np.uint8)
    n = min(len(frames), int(threads) if threads else min(os.cpu_count() or 1, _MAX_DEFAULT_THREADS))
    draw = _DRAWERS[style]
    if style == "one_to_all":  # supersampled canvases reused across frames, freed with the call
        draw = partial(_draw_one_to_all, pool=_BufferPool(keep=n))
    if n <= 1:
        for i, f in enumerate(frames):
            _draw_frame(out[i], _bounded(f.people), style, opts, draw)
    else:
        def work(i: int) -> None:
            _draw_frame(out[i], _bounded(frames[i].people), style, opts, draw)
        with ThreadPoolExecutor(max_workers=n) as pool:
            list(pool.map(work, range(len(frames))))
    return out


# --- shared pieces ---------------------------------------------------------------------------

def _bounded(people: np.ndarray) -> np.ndarray:
    """Clamp absurd coordinates (> 1e4 canvases away) so products and int casts stay finite;
    such points are beyond _LIMIT and count as missing anyway. In-range values are unchanged.
    (PoseFrame already turns NaN/inf into missing points; arrays edited afterwards get it again.)"""
    if not people.size:
        return people
    if not np.isfinite(people).all():
        people = sanitize_people(people)
    if np.abs(people[..., :2]).max() > 1e4:
        people = people.copy()
        np.clip(people[..., :2], -1e4, 1e4, out=people[..., :2])
    return people


def _finite_box(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Points whose pixel position cv2 can hold (others count as missing)."""
    return (np.abs(px) < _LIMIT) & (np.abs(py) < _LIMIT)


def _limb_poly(x0: float, y0: float, x1: float, y1: float, mx: float, my: float, half_len: int,
               width: int) -> np.ndarray:
    """The official limb ellipse: centre truncated, angle truncated to whole degrees."""
    angle = math.degrees(math.atan2(float(y0) - float(y1), float(x0) - float(x1)))
    return cv2.ellipse2Poly((int(mx), int(my)), (half_len, width), int(angle), 0, 360, 1)


def _swap(color, swap: bool):
    return (color[2], color[1], color[0]) if swap else color


# --- openpose (comfyui_controlnet_aux) -------------------------------------------------------

def _snap(v: np.ndarray, size: int) -> np.ndarray:
    """Undo float32 storage noise on pixel positions that were whole or short decimals.

    Normalised float32 coordinates move a pixel position by up to size * 2^-25, enough to
    flip int() on 256.0 -> 255.99998 (pose editors and JSON write such values). A position
    within that noise of a 1e-3 px grid point is put on it; other values stay as they are.
    """
    grid = np.round(v, 3)
    return np.where(np.abs(v - grid) <= size * 2.0 ** -24, grid, v)


def _draw_openpose(canvas: np.ndarray, people: np.ndarray, opts: dict) -> None:
    h, w = canvas.shape[:2]
    stick = 4
    if opts["xinsr_stick_scaling"]:
        side = max(w, h)
        stick *= 1 if side < 500 else min(2 + side // 1000, 7)
    limb_colors = [tuple(int(float(c) * 0.6) for c in col) for col in _COLORS]
    for person in people:
        # comfyui_controlnet_aux works in float64 pixels.
        px = _snap(person[:, 0].astype(np.float64) * w, w)
        py = _snap(person[:, 1].astype(np.float64) * h, h)
        keep = (person[:, 2] >= KEEP) & _finite_box(px, py)
        ix, iy = px.astype(np.int64), py.astype(np.int64)  # int(): truncation toward zero
        if opts["draw_body"]:
            for (a, b), color in zip(_LIMBS[:17], limb_colors):
                if not (keep[a] and keep[b]):
                    continue
                xa, xb, ya, yb = float(px[a]), float(px[b]), float(py[a]), float(py[b])
                length = ((ya - yb) ** 2 + (xa - xb) ** 2) ** 0.5
                poly = _limb_poly(xa, ya, xb, yb, (xa + xb) / 2, (ya + yb) / 2, int(length / 2), stick)
                cv2.fillConvexPoly(canvas, poly, color)
            for j in range(18):
                if keep[j]:
                    cv2.circle(canvas, (int(ix[j]), int(iy[j])), 4, _COLORS[j], thickness=-1)
        if opts["draw_hands"]:
            for part in (LEFT_HAND, RIGHT_HAND):
                _draw_hand_plain(canvas, ix[part], iy[part], keep[part], 2, 4, (0, 0, 255))
        if opts["draw_face"] and keep[FACE].any():
            # comfyui_controlnet_aux appends the REye and LEye body joints to the face.
            idx = list(range(FACE.start, FACE.stop)) + [14, 15]
            for j in idx:
                if keep[j] and ix[j] > _EPS and iy[j] > _EPS:
                    cv2.circle(canvas, (int(ix[j]), int(iy[j])), 3, (255, 255, 255), thickness=-1)


def _draw_hand_plain(canvas, ix, iy, keep, thickness: int, radius: int, dot, swap: bool = False) -> None:
    """Hand bones in HSV colours, then dots, each only where the truncated position is > eps."""
    ok = keep & (ix > _EPS) & (iy > _EPS)
    for ie, (a, b) in enumerate(_HAND_EDGES):
        if ok[a] and ok[b]:
            cv2.line(canvas, (int(ix[a]), int(iy[a])), (int(ix[b]), int(iy[b])),
                     _swap(_HAND_COLORS_255[ie], swap), thickness=thickness)
    for j in range(21):
        if ok[j]:
            cv2.circle(canvas, (int(ix[j]), int(iy[j])), radius, dot, thickness=-1)


# --- unianimate (UniAnimate-DiT run_align_pose.draw_pose) ------------------------------------

def _unianimate_points(person: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 20-point body of UniAnimate (18 OpenPose + left toe, right toe) and its visibility."""
    pts = np.empty((20, 2), np.float32)
    pts[:18] = person[:18, :2]
    score = person[:, 2]
    vis = np.zeros(20, bool)
    vis[:18] = score[:18] > KEEP
    for k, (big, small) in ((18, (18, 19)), (19, (21, 22))):
        if score[big] > KEEP and score[small] > KEEP:
            pts[k] = (person[big, :2] + person[small, :2]) / np.float32(2)  # float32, as the official mean
            vis[k] = True
        elif score[big] > KEEP and _never_located(person[small]):
            pts[k] = person[big, :2]  # a detector without small toes (mediapipe): the big toe alone
            vis[k] = True
        else:
            pts[k] = -1.0
    return pts, vis


def _never_located(point: np.ndarray) -> bool:
    """(0, 0) with score 0: the layout's mark of a point the detector does not have at all."""
    return bool(point[2] <= 0 and point[0] == 0 and point[1] == 0)


def _draw_unianimate(canvas: np.ndarray, people: np.ndarray, opts: dict) -> None:
    if len(people) == 0:
        return
    h, w = canvas.shape[:2]
    swap = opts["swap_rb"]
    person = people[0]
    fw, fh = np.float32(w), np.float32(h)
    if opts["draw_body"]:
        pts, vis = _unianimate_points(person)
        # NumPy 2 float32 arithmetic, as in the reference run.
        X = pts[:, 0] * fw
        Y = pts[:, 1] * fh
        vis &= _finite_box(X, Y)
        for i, (a, b) in enumerate(_LIMBS):
            if not (vis[a] and vis[b]):
                continue
            mx = (X[a] + X[b]) / np.float32(2)
            my = (Y[a] + Y[b]) / np.float32(2)
            dy, dx = Y[a] - Y[b], X[a] - X[b]
            length = np.sqrt(dy * dy + dx * dx)
            poly = _limb_poly(X[a], Y[a], X[b], Y[b], mx, my, int(length / np.float32(2)), 4)
            # limbs then canvas * 0.6 == limbs drawn in int(colour * 0.6) (opaque fills, black canvas)
            cv2.fillConvexPoly(canvas, poly, _swap(tuple(int(_LUT_06[c]) for c in _COLORS_FEET[i]), swap))
        ix, iy = X.astype(np.int64), Y.astype(np.int64)
        for j in range(20):
            if vis[j]:
                cv2.circle(canvas, (int(ix[j]), int(iy[j])), 4, _swap(_COLORS_FEET[j], swap), thickness=-1)
    parts = []
    if opts["draw_hands"]:
        parts += [(LEFT_HAND, "hand"), (RIGHT_HAND, "hand")]
    if opts["draw_face"]:
        parts.append((FACE, "face"))
    for part, kind in parts:
        pts = person[part]
        keep = pts[:, 2] >= KEEP  # the official code moves points below 0.3 to (-1, -1)
        X = pts[:, 0] * fw
        Y = pts[:, 1] * fh
        keep &= _finite_box(X, Y)
        ix, iy = X.astype(np.int64), Y.astype(np.int64)
        if kind == "hand":
            _draw_hand_plain(canvas, ix, iy, keep, 2, 4, _swap((0, 0, 255), swap), swap)
        else:
            for j in np.flatnonzero(keep & (ix > _EPS) & (iy > _EPS)):
                cv2.circle(canvas, (int(ix[j]), int(iy[j])), 3, (255, 255, 255), thickness=-1)


# --- one_to_all (One-to-All Animation draw_pose_aligned) -------------------------------------

def _stickwidth(w: int, h: int, base: int) -> int:
    side = max(w, h)
    ratio = (1.0 if side < 512 else 1.5 if side < 1080 else 2.0 if side < 2160 else 2.5 if side < 3240
             else 3.5 if side < 4320 else 4.5 if side < 5400 else 4.0)
    return int(base * ratio)


def _f32mul(a, b) -> float:
    """float32 product of two float32 values (NumPy scalar * scalar of the same type)."""
    return float(np.float32(float(a) * float(b)))


def _one_to_all_ops(person: np.ndarray, cw: int, ch: int, opts: dict) -> tuple[list, list]:
    """Drawing operations on the supersampled (cw x ch) canvas, in official order.

    Returns (ops, boxes): ops are ("poly", points, colour) / ("circle", x, y, r, colour) /
    ("line", x1, y1, x2, y2, colour, thickness); boxes are (x0, y0, x1, y1) rectangles that
    together hold every pixel the ops may touch (one per limb/joint, one per hand, one for the face).
    """
    ops: list = []
    boxes: list = []
    body_w = _stickwidth(cw, ch, 3)
    hand_w = _stickwidth(cw, ch, 2)
    score = person[:18, 2].astype(np.float32)
    present = score > 0                      # subset = -1 where score <= 0
    eff = score.copy()
    if opts["head_change"]:
        eff[list(_HEAD)] = -2.0
    fw, fh = np.float32(cw), np.float32(ch)
    # Limbs: float32 positions (float32 array * Python float), float64 length (NumPy 1 scalar ** 2).
    X = person[:18, 0] * fw
    Y = person[:18, 1] * fh
    present &= _finite_box(X, Y)
    for i, (a, b) in enumerate(_LIMBS[:17]):
        if not (present[a] and present[b]):
            continue
        ca, cb = eff[a], eff[b]
        alpha = max(_f32mul(ca, cb), 0.0) if ca > 0 and cb > 0 else 0.35
        # colour * alpha (saturated by the uint8 canvas), then canvas * 0.6
        color = tuple(int(_LUT_06[min(int(c * alpha), 255)]) for c in _COLORS[i])
        mx = (X[a] + X[b]) / np.float32(2)
        my = (Y[a] + Y[b]) / np.float32(2)
        dy, dx = float(Y[a] - Y[b]), float(X[a] - X[b])
        length = (dy ** 2 + dx ** 2) ** 0.5
        poly = _limb_poly(X[a], Y[a], X[b], Y[b], mx, my, int(length / 2), body_w)
        ops.append(("poly", poly, color))
        boxes.append((*poly.min(axis=0).tolist(), *(poly.max(axis=0) + 1).tolist()))
    # Joints: float64 positions (NumPy 1: float32 scalar * int is float64).
    jx = (person[:18, 0].astype(np.float64) * cw).astype(np.int64).tolist()
    jy = (person[:18, 1].astype(np.float64) * ch).astype(np.int64).tolist()
    for j in np.flatnonzero(present).tolist():
        alpha = 0.0 if eff[j] == -2 else max(float(eff[j]), 0.0)
        x, y = jx[j], jy[j]
        ops.append(("circle", x, y, body_w, tuple(int(c * alpha) for c in _COLORS[j])))
        boxes.append((x - body_w, y - body_w, x + body_w + 1, y + body_w + 1))
    # Hands: hands[0] is the right hand, hands[1] the left one (official order).
    for part in (RIGHT_HAND, LEFT_HAND):
        pts = person[part]
        hx = pts[:, 0].astype(np.float64) * cw
        hy = pts[:, 1].astype(np.float64) * ch
        ix, iy = hx.astype(np.int64), hy.astype(np.int64)
        ok = (pts[:, 2] >= KEEP) & _finite_box(hx, hy) & (ix > _EPS) & (iy > _EPS)
        if not ok.any():
            continue
        s = pts[:, 2].tolist()
        xs, ys = ix.tolist(), iy.tolist()
        for ie, (a, b) in enumerate(_HAND_EDGES):
            if ok[a] and ok[b]:
                sc = int(_f32mul(s[a], s[b]) * 255)
                ops.append(("line", xs[a], ys[a], xs[b], ys[b], tuple(c * sc for c in _HSV[ie]), hand_w))
        conf = (pts[:, 2].astype(np.float64) * 255).astype(np.int64).tolist()
        for j in np.flatnonzero(ok).tolist():
            ops.append(("circle", xs[j], ys[j], hand_w, (0, 0, conf[j])))
        r = hand_w + 2
        boxes.append((int(ix[ok].min()) - r, int(iy[ok].min()) - r,
                      int(ix[ok].max()) + r + 1, int(iy[ok].max()) + r + 1))
    if not opts["without_face"]:
        pts = person[FACE][list(_ONE_TO_ALL_FACE)]
        fx = pts[:, 0].astype(np.float64) * cw
        fy = pts[:, 1].astype(np.float64) * ch
        ix, iy = fx.astype(np.int64), fy.astype(np.int64)
        ok = (pts[:, 2] >= KEEP) & _finite_box(fx, fy) & (ix > _EPS) & (iy > _EPS)
        if ok.any():
            conf = (pts[ok, 2].astype(np.float64) * 255).astype(np.int64)
            if opts["face_change"]:
                conf = (conf * 0.35).astype(np.int64)
            for x, y, c in zip(ix[ok].tolist(), iy[ok].tolist(), conf.tolist()):
                ops.append(("circle", x, y, hand_w, (c, c, c)))
            boxes.append((int(ix[ok].min()) - hand_w, int(iy[ok].min()) - hand_w,
                          int(ix[ok].max()) + hand_w + 1, int(iy[ok].max()) + hand_w + 1))
    return ops, boxes


def _run_ops(canvas: np.ndarray, ops: list, ox: int = 0, oy: int = 0) -> None:
    """Replay drawing ops on ``canvas`` whose pixel (0, 0) is (ox, oy) of the full canvas."""
    shift = np.array([ox, oy], np.int32)
    for op in ops:
        kind = op[0]
        if kind == "circle":
            _, x, y, r, color = op
            cv2.circle(canvas, (x - ox, y - oy), r, color, thickness=-1)
        elif kind == "line":
            _, x1, y1, x2, y2, color, t = op
            cv2.line(canvas, (x1 - ox, y1 - oy), (x2 - ox, y2 - oy), color, thickness=t)
        else:
            cv2.fillConvexPoly(canvas, op[1] - shift, op[2])


def _one_to_all_canvas_size(w: int, h: int) -> tuple[int, int]:
    sz = min(h, w)
    sr = (_ONE_TO_ALL_SHORT_SIDE / sz) if sz != _ONE_TO_ALL_SHORT_SIDE else 1
    return int(w * sr), int(h * sr)


def _crop_grid(out: int, src: int) -> tuple[int, int] | None:
    """(source step, output step) at which a crop resizes exactly like the whole canvas.

    cv2.resize maps output pixel d to source (d + 0.5) * src/out - 0.5. When src/out = p/q
    with q a power of two, every such position is exact in float, so a crop starting at a
    multiple of p (source) / q (output) sees the same weights as the full image.
    """
    g = math.gcd(out, src)
    p, q = src // g, out // g
    if q & (q - 1) or q > 1 << 12:
        return None
    return p, q


class _BufferPool:
    """Zeroed supersampled canvases for one render_poses call (all-zero whenever in the pool).

    A 2160-short-side canvas is ~24 MB: allocating one per frame costs more than drawing.
    """

    def __init__(self, keep: int):
        self._lock = threading.Lock()
        self._free: list[np.ndarray] = []
        self._keep = keep

    def acquire(self, cw: int, ch: int) -> np.ndarray:
        with self._lock:
            for i, buf in enumerate(self._free):
                if buf.shape[:2] == (ch, cw):
                    return self._free.pop(i)
        return np.zeros((ch, cw, 3), np.uint8)

    def release(self, buf: np.ndarray) -> None:
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(buf)


def _draw_one_to_all(canvas: np.ndarray, people: np.ndarray, opts: dict, crop: bool = True,
                     pool: _BufferPool | None = None) -> None:
    if len(people) == 0:
        return
    h, w = canvas.shape[:2]
    cw, ch = _one_to_all_canvas_size(w, h)
    ops, boxes = _one_to_all_ops(people[0], cw, ch, opts)
    if not ops:
        return
    gx, gy = _crop_grid(w, cw), _crop_grid(h, ch)
    # Without a pool a fresh calloc'ed canvas is used: untouched pages are never even mapped.
    buf = pool.acquire(cw, ch) if pool is not None else np.zeros((ch, cw, 3), np.uint8)
    try:
        if not crop or gx is None or gy is None:
            try:
                _run_ops(buf, ops)
                cv2.resize(buf, (w, h), dst=canvas)
            finally:
                if pool is not None:
                    buf[:] = 0
            return
        # Only the region that holds drawing (plus a black margin, on the resize grid) is drawn
        # and resized; the rest of the output is black either way.
        margin = 3
        box = np.array(boxes, np.int64)
        x0, y0 = (box[:, :2].min(axis=0) - margin).tolist()
        x1, y1 = (box[:, 2:].max(axis=0) + margin).tolist()
        (px, qx), (py, qy) = gx, gy
        x0, y0 = max(x0 // px, 0) * px, max(y0 // py, 0) * py
        x1, y1 = min(-(-x1 // px) * px, cw), min(-(-y1 // py) * py, ch)
        if x1 <= x0 or y1 <= y0:
            return
        region = buf[y0:y1, x0:x1]
        try:
            _run_ops(region, ops, x0, y0)
            ox0, oy0 = x0 // px * qx, y0 // py * qy
            ow, oh = (x1 - x0) // px * qx, (y1 - y0) // py * qy
            canvas[oy0:oy0 + oh, ox0:ox0 + ow] = cv2.resize(region, (ow, oh))
        finally:
            if pool is not None:  # back to all-zero: clear the op boxes, cheaper than the region
                _clear_boxes(region, box - np.array([x0, y0, x0, y0]))
    finally:
        if pool is not None:
            pool.release(buf)


def _clear_boxes(region: np.ndarray, box: np.ndarray) -> None:
    np.maximum(box, 0, out=box)
    for bx0, by0, bx1, by1 in box.tolist():
        region[by0:by1, bx0:bx1] = 0


_DRAWERS = {"openpose": _draw_openpose, "unianimate": _draw_unianimate, "one_to_all": _draw_one_to_all}

__all__ = ["STYLES", "STYLE_OPTIONS", "UNIANIMATE_CANVAS", "render_pose", "render_poses", "style_options",
           "unianimate_canvas", "working_size"]
