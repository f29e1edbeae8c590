"""DWPose whole-body detection from the two usual local ONNX files (onnxruntime or torch).

Pipeline (the DWPose ONNX recipe): YOLOX-L person boxes on a 640x640 letterbox -> one
288x384 affine crop per person -> RTMPose/DWPose SimCC heads -> 133 COCO-WholeBody points
-> our 134-point OpenPose-ordered layout with a neck. Nothing is ever downloaded: the files
must already be in the folder (ComfyUI ``models/pose_models``).

Channel order (``channel_order``):
  * "trained" (default): each network gets what it was trained on. Megvii's YOLOX trains on
    OpenCV-loaded BGR with raw 0..255 values; mmpose's DWPose/RTMPose training pipeline loads
    BGR and its data preprocessor converts to RGB (``bgr_to_rgb=True``, mean/std given in RGB
    order) before the network, and that step is not part of the exported ONNX, so the pose
    network wants RGB. ComfyUI IMAGEs are RGB, so the detector input is flipped, the crops not.
  * "rgb": both networks get RGB (what comfyui_controlnet_aux and ControlNet do).
  * "bgr": both get BGR (what the DWPose demo and UniAnimate-DiT's scripts do: run_align_pose.py
    hands OpenCV-read BGR frames and reference to both networks unconverted; UniAnimate's
    workflow uses this order).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .detect import as_uint8_rgb
from .keypoints import NUM_POINTS, PoseFrame
from .onnx_model import DetectorFilesError, OnnxModel, resolve_engine, shape_matches

DETECTOR_FILE = "yolox_l.onnx"
POSE_FILE = "dw-ll_ucoco_384.onnx"
DET_SIZE = 640
DET_PAD = 114.0
STRIDES = (8, 16, 32)
CROP_W, CROP_H = 288, 384
BOX_PADDING = 1.25
SIMCC_SPLIT = 2.0
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
NECK_THRESHOLD = 0.3
CHANNEL_ORDERS = ("trained", "rgb", "bgr")
# COCO-WholeBody (with the neck appended at index 17) -> OpenPose body order, DWPose's remap:
# new[:, OPENPOSE_SLOTS] = new[:, COCO_SOURCES]
OPENPOSE_SLOTS = [1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17]
COCO_SOURCES = [17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3]
MAX_CROPS_PER_CALL = 32  # bounds the pose model's activation memory on long multi-person clips
MAX_FRAMES_PER_DET_CALL = 8  # likewise for YOLOX-L (about 155 GFLOPs and large activations per 640x640 frame)


def find_model_files(folder: Path) -> tuple[Path, Path]:
    """Locate yolox_l.onnx and dw-ll_ucoco_384.onnx in ``folder`` (or a subfolder such as
    comfyui_controlnet_aux's ``yzd-v/DWPose/``)."""
    folder = Path(folder)
    expected = f"'{DETECTOR_FILE}' and '{POSE_FILE}'"
    if not folder.is_dir():
        raise DetectorFilesError(f"DWPose model folder {folder} does not exist; create it and put {expected} in it "
                                 "(from the HF repo yzd-v/DWPose). Nothing is downloaded automatically.")
    found = []
    for name in (DETECTOR_FILE, POSE_FILE):
        direct = folder / name
        if direct.is_file():
            found.append(direct)
            continue
        nested = sorted(folder.glob(f"**/{name}"), key=lambda p: (len(p.parts), str(p)))
        if not nested:
            raise DetectorFilesError(f"'{name}' not found in {folder} (nor its subfolders); the dwpose backend needs "
                                     f"{expected} there (HF repo yzd-v/DWPose). Nothing is downloaded automatically.")
        found.append(nested[0])
    return found[0], found[1]


def _existing(path: Path, usual: str) -> Path:
    if not path.is_file():
        raise DetectorFilesError(f"DWPose file {path.name!r} not found in {path.parent}; put '{usual}' (HF repo "
                                 "yzd-v/DWPose) in ComfyUI models/pose_models. Nothing is downloaded automatically.")
    return path


# --- detector -----------------------------------------------------------------------------

def letterbox(image: np.ndarray, size: int = DET_SIZE) -> tuple[np.ndarray, float]:
    """Resize keeping aspect (INTER_LINEAR) into the top-left of a size x size canvas of 114;
    returns the float32 HWC canvas (raw 0..255) and the resize ratio."""
    h, w = image.shape[:2]
    ratio = min(size / h, size / w)
    nh, nw = max(1, int(h * ratio)), max(1, int(w * ratio))
    canvas = np.full((size, size, 3), DET_PAD, np.float32)
    canvas[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    return canvas, ratio


def _grids(size: int = DET_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """YOLOX anchor-free grid (x fastest within a stride level) and per-cell strides."""
    cells, strides = [], []
    for stride in STRIDES:
        n = size // stride
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        strides.append(np.full((n * n, 1), stride))
    return np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy NMS with the legacy +1 pixel area convention of the YOLOX demo."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][overlap <= iou]
    return keep


def decode_yolox(raw: np.ndarray, ratio: float, score_thr: float = 0.3, nms_iou: float = 0.45,
                 pre_thr: float = 0.1) -> np.ndarray:
    """One image's raw YOLOX output (8400, 5 + classes) -> person boxes (K, 5) x1,y1,x2,y2,score
    in original-image pixels, best first. Class 0 (person) only: NMS over candidates scoring
    > pre_thr (the demo's multiclass NMS, which is per class), then keep score > score_thr."""
    raw = np.asarray(raw, np.float32)
    cells, strides = _grids()
    if raw.shape[0] != cells.shape[0] or raw.shape[1] < 6:
        raise DetectorFilesError(f"detector output has shape {raw.shape}, expected ({cells.shape[0]}, 85): "
                                 f"'{DETECTOR_FILE}' is not the YOLOX-L 640x640 network")
    xy = (raw[:, :2] + cells) * strides
    wh = np.exp(np.minimum(raw[:, 2:4], 30.0)) * strides  # clamp: a huge logit must not become inf
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1) / ratio
    scores = raw[:, 4] * raw[:, 5]
    cand = np.nonzero(scores > pre_thr)[0]
    if cand.size == 0:
        return np.zeros((0, 5), np.float32)
    keep = cand[nms(boxes[cand], scores[cand], nms_iou)]
    keep = keep[scores[keep] > score_thr]
    return np.concatenate([boxes[keep], scores[keep, None]], axis=1).astype(np.float32)


# --- pose model ---------------------------------------------------------------------------

def box_to_center_scale(box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box centre and padded size widened to the crop aspect (288/384)."""
    x1, y1, x2, y2 = [float(v) for v in box[:4]]
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2], np.float32)
    w, h = (x2 - x1) * BOX_PADDING, (y2 - y1) * BOX_PADDING
    aspect = CROP_W / CROP_H
    if w > h * aspect:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w, h], np.float32)


def crop_person(image: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Affine warp (uniform scale + shift, no rotation) of the scaled box to 288x384."""
    s = CROP_W / max(float(scale[0]), 1e-6)
    mat = np.array([[s, 0.0, CROP_W / 2 - s * center[0]], [0.0, s, CROP_H / 2 - s * center[1]]], np.float32)
    return cv2.warpAffine(image, mat, (CROP_W, CROP_H), flags=cv2.INTER_LINEAR)


def normalize_crops(crops: np.ndarray) -> np.ndarray:
    """(N, 384, 288, 3) uint8 -> float32 NCHW with ImageNet mean/std on 0..255."""
    return np.ascontiguousarray(((crops.astype(np.float32) - MEAN) / STD).transpose(0, 3, 1, 2))


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SimCC vectors -> crop-pixel locations (N, K, 2) and scores (N, K) = min of the two maxima."""
    xs = np.argmax(simcc_x, axis=2).astype(np.float32) / SIMCC_SPLIT
    ys = np.argmax(simcc_y, axis=2).astype(np.float32) / SIMCC_SPLIT
    scores = np.minimum(simcc_x.max(axis=2), simcc_y.max(axis=2)).astype(np.float32)
    locs = np.stack([xs, ys], axis=2)
    locs[scores <= 0] = -1.0
    return locs, scores


def crop_to_image(locs: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Crop pixels -> image pixels (inverse of crop_person)."""
    return locs / np.array([CROP_W, CROP_H], np.float32) * scale + center - scale / 2


def wholebody_to_layout(points: np.ndarray, scores: np.ndarray, width: int, height: int,
                        neck: str = "dwpose") -> np.ndarray:
    """133 COCO-WholeBody points (pixels) + scores -> one person in our 134 layout (normalised).

    The neck is the mean of the shoulders; its score follows DWPose's rule (``neck="dwpose"``:
    1 when both shoulders score > 0.3, else missing) or the Wan/One-to-All ViTPose path's
    (``neck="mean"``: the mean of the two shoulder scores, as its 20-point body averages rows).
    Every other point keeps its real score; points whose score is <= 0 are missing (score 0)."""
    kp = np.zeros((NUM_POINTS, 3), np.float32)
    kp[:17, :2], kp[18:, :2] = points[:17], points[17:]
    kp[:17, 2], kp[18:, 2] = scores[:17], scores[17:]
    kp[17, :2] = (points[5] + points[6]) / 2
    if neck == "mean":
        kp[17, 2] = (scores[5] + scores[6]) / 2
    else:
        kp[17, 2] = float(scores[5] > NECK_THRESHOLD and scores[6] > NECK_THRESHOLD)
    kp[OPENPOSE_SLOTS] = kp[COCO_SOURCES]
    kp[:, 2] = np.clip(kp[:, 2], 0.0, None)
    kp[:, 0] /= width
    kp[:, 1] /= height
    kp[kp[:, 2] <= 0] = 0.0
    return kp


class DWPoseDetector:
    """YOLOX-L + DWPose-L whole-body detector on onnxruntime (CPU) or torch (any device)."""

    name = "dwpose"

    def __init__(self, folder: Path | None = None, device: str = "cpu", threads: int | None = None,
                 channel_order: str = "trained", det_score: float = 0.3, nms_iou: float = 0.45,
                 det_path: Path | None = None, pose_path: Path | None = None):
        """Give ``folder`` (files found by name) or the two files as ``det_path``/``pose_path``;
        ``device`` auto|cpu|gpu picks onnxruntime (CPU) or torch (pose/onnx_model.py)."""
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
        self.channel_order = channel_order
        self.det_score, self.nms_iou = float(det_score), float(nms_iou)
        if det_path is None or pose_path is None:
            if folder is None:
                raise ValueError("DWPose needs the folder holding yolox_l.onnx and dw-ll_ucoco_384.onnx "
                                 "(ComfyUI models/pose_models), or both det_path and pose_path")
            found_det, found_pose = find_model_files(Path(folder))
            det_path, pose_path = det_path or found_det, pose_path or found_pose
        det_path, pose_path = _existing(Path(det_path), DETECTOR_FILE), _existing(Path(pose_path), POSE_FILE)
        self.folder = det_path.parent
        self.engine, self.device = resolve_engine(device)
        hint = " (HF repo yzd-v/DWPose)"
        self.det = OnnxModel(det_path, self.engine, self.device, threads, hint)
        self.pose = OnnxModel(pose_path, self.engine, self.device, threads, hint)
        self._check_signatures(det_path, pose_path)

    def _check_signatures(self, det_path: Path, pose_path: Path) -> None:
        """Read I/O names and batch axes from the files rather than trusting fixed names."""
        d_in, p_in = self.det.inputs, self.pose.inputs
        if len(d_in) != 1 or not shape_matches(d_in[0][1], [3, DET_SIZE, DET_SIZE]):
            raise DetectorFilesError(f"{det_path} is not a YOLOX 640x640 detector (inputs {d_in}); "
                                     "expected one input [N, 3, 640, 640]")
        if len(p_in) != 1 or not shape_matches(p_in[0][1], [3, CROP_H, CROP_W]):
            raise DetectorFilesError(f"{pose_path} is not the DWPose 384x288 model (inputs {p_in}); "
                                     "expected one input [N, 3, 384, 288]")
        self.det_input, self.pose_input = d_in[0][0], p_in[0][0]
        self.det_batched, self.pose_batched = self.det.batched, self.pose.batched
        outs = self.pose.outputs
        by_len = {shape[2] if len(shape) == 3 else None: name for name, shape in outs}
        names = {name for name, _ in outs}
        if {"simcc_x", "simcc_y"} <= names:
            self.pose_outputs = ["simcc_x", "simcc_y"]
        elif int(CROP_W * SIMCC_SPLIT) in by_len and int(CROP_H * SIMCC_SPLIT) in by_len:
            self.pose_outputs = [by_len[int(CROP_W * SIMCC_SPLIT)], by_len[int(CROP_H * SIMCC_SPLIT)]]
        else:
            raise DetectorFilesError(f"{pose_path} outputs {outs}; expected SimCC "
                                     "outputs simcc_x [N, 133, 576] and simcc_y [N, 133, 768]")

    def describe(self) -> str:
        return (f"dwpose ({self.det.path.name} + {self.pose.path.name}, {self.pose.engine} on {self.pose.device}, "
                f"channels {self.channel_order})")

    # -- stages --
    def _det_image(self, rgb: np.ndarray) -> np.ndarray:
        return rgb if self.channel_order == "rgb" else np.ascontiguousarray(rgb[..., ::-1])

    def _pose_image(self, rgb: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(rgb[..., ::-1]) if self.channel_order == "bgr" else rgb

    def detect_boxes(self, frames: np.ndarray) -> list[np.ndarray]:
        """Person boxes (K, 5) per frame, in frame pixels."""
        prepared = [letterbox(self._det_image(f)) for f in frames]
        blobs = [np.ascontiguousarray(c.transpose(2, 0, 1))[None] for c, _ in prepared]
        step = MAX_FRAMES_PER_DET_CALL if self.det_batched else 1
        raws = []
        for i in range(0, len(blobs), step):
            raws.extend(self.det.run({self.det_input: np.concatenate(blobs[i : i + step])})[0])
        return [decode_yolox(r, ratio, self.det_score, self.nms_iou) for r, (_, ratio) in zip(raws, prepared)]

    def estimate(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 384, 288, 3) uint8 crops -> crop-pixel points (N, 133, 2) and scores (N, 133)."""
        blob = normalize_crops(crops)
        step = MAX_CROPS_PER_CALL if self.pose_batched else 1
        xs, ys = [], []
        for i in range(0, len(blob), step):
            sx, sy = self.pose.run({self.pose_input: blob[i : i + step]}, self.pose_outputs)
            xs.append(sx)
            ys.append(sy)
        return decode_simcc(np.concatenate(xs), np.concatenate(ys))

    def detect_batch(self, images: np.ndarray) -> list[PoseFrame]:
        frames = as_uint8_rgb(images)
        boxes = self.detect_boxes(frames)
        crops, where = [], []
        for t, (frame, frame_boxes) in enumerate(zip(frames, boxes)):
            pose_img = self._pose_image(frame)
            for box in frame_boxes:
                center, scale = box_to_center_scale(box)
                crops.append(crop_person(pose_img, center, scale))
                where.append((t, center, scale))
        people: list[list[np.ndarray]] = [[] for _ in frames]
        if crops:
            locs, scores = self.estimate(np.stack(crops))
            h, w = frames.shape[1:3]
            for (t, center, scale), loc, score in zip(where, locs, scores):
                people[t].append(wholebody_to_layout(crop_to_image(loc, center, scale), score, w, h))
        h, w = frames.shape[1:3]
        return [PoseFrame(w, h, np.stack(p) if p else np.zeros((0, NUM_POINTS, 3), np.float32)) for p in people]
