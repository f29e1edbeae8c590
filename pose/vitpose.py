"""ViTPose whole-body (H or L) + YOLOv10m from local ONNX files, as One-to-All's preprocessing runs them.

The official One-to-All inference (``video-generation/infer_utils.py`` -> ``wanpose_utils/pose2d.py``,
the Wan-Animate preprocessing code) does, per frame:
  * YOLOv10m: plain resize (no letterbox) of the RGB frame to 640x640 (cv2 INTER_LINEAR on uint8),
    /255; output rows x1,y1,x2,y2,score,class in 640 pixels. Rows with score >= 0.05 are scaled
    to the frame, truncated to integer x,y,w,h, NMS'd (cv2.dnn.NMSBoxes, IoU 0.5); one person is
    kept: class 0, score > 0.05, the largest area among boxes whose longer side is at least 0.4
    of the longest person box. No person -> the whole frame is the box.
  * ViTPose: centre/scale from the box (aspect 256:192, x1.25, scale in units of 200 px), an
    integer-rounded crop with zero padding resized to 192x256 (not a sub-pixel warp), ImageNet
    mean/std on 0..1. The official caller's frames reach ViTPose in BGR order (``Pose2d``
    converts its RGB input "BGR2RGB", then hands YOLO a re-flipped copy): channel_order
    "official" reproduces that; "rgb" is what ComfyUI-WanAnimatePreprocess feeds.
  * heatmaps (133 x 64 x 48): argmax, then the "unbiased" (DARK) refinement: Gaussian blur
    k=11 rescaled to the original maximum, log, one Newton step (Taylor) where the peak is at
    least 2 cells from the border; back to the frame with centre +- scale / 2. Score = the
    heatmap maximum; maxima <= 0 give no point.
The 133 COCO-WholeBody points map to our 134 layout as DWPose's do; the neck is the mean of the
shoulders with the mean of their scores (the official 20-point body averages whole rows).
Nothing is downloaded: the files must be in ComfyUI ``models/pose_models``.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .detect import as_uint8_rgb
from .dwpose import wholebody_to_layout
from .keypoints import NUM_POINTS, PoseFrame
from .onnx_model import DetectorFilesError, OnnxModel, resolve_engine, shape_matches

DETECTOR_FILE = "yolov10m.onnx"
# official name (Wan2.2-Animate process_checkpoint/pose2d), Kijai's split H, easy_ViTPose's L
POSE_FILES = ("vitpose_h_wholebody.onnx", "vitpose_h_wholebody_model.onnx", "vitpose-l-wholebody.onnx",
              "vitpose_l_wholebody.onnx")
FILES_HINT = (f"'{DETECTOR_FILE}' (HF Wan-AI/Wan2.2-Animate-14B process_checkpoint/det) and one ViTPose whole-body "
              "model: 'vitpose_h_wholebody.onnx' (process_checkpoint/pose2d, with its external-data file next to it) "
              "or 'vitpose-l-wholebody.onnx' (HF JunkyByte/easy_ViTPose onnx/wholebody)")
DET_SIZE = 640
DET_CONF = 0.05
DET_IOU = 0.5
BOX_SHAPE_RATIO = 0.4
PERSON_CLASS = 0
INPUT_H, INPUT_W = 256, 192
BOX_RESCALE = 1.25
SCALE_UNIT = 200.0
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
BLUR_KERNEL = 11
CHANNEL_ORDERS = ("official", "rgb", "bgr")
PEOPLE = ("official", "all")
MAX_CROPS_PER_CALL = 16


def find_model_files(folder: Path) -> tuple[Path, Path]:
    """yolov10m.onnx and the first ViTPose whole-body file (POSE_FILES order) in ``folder`` or below."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DetectorFilesError(f"ViTPose model folder {folder} does not exist; create it and put {FILES_HINT} in it. "
                                 "Nothing is downloaded automatically.")

    def first(names):
        for name in names:
            hits = [folder / name] if (folder / name).is_file() else sorted(folder.glob(f"**/{name}"))
            if hits:
                return hits[0]
        return None

    det, pose = first([DETECTOR_FILE]), first(POSE_FILES)
    if det is None or pose is None:
        missing = DETECTOR_FILE if det is None else "a ViTPose whole-body .onnx"
        raise DetectorFilesError(f"{missing} not found in {folder}; the vitpose backend needs {FILES_HINT}. "
                                 "Nothing is downloaded automatically.")
    return det, pose


# --- YOLOv10 --------------------------------------------------------------------------------

def detector_input(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, 640, 640) float32 0..1, resized without keeping the aspect."""
    small = cv2.resize(rgb, (DET_SIZE, DET_SIZE))
    return (small / 255.0).transpose(2, 0, 1).astype(np.float32)


def decode_yolov10(rows: np.ndarray, height: int, width: int) -> np.ndarray:
    """One image's (300, 6) output -> (K, 6) x1, y1, x2, y2, score, class in frame pixels after
    the official threshold, integer truncation and NMS (highest score first)."""
    rows = np.asarray(rows, np.float32).reshape(-1, rows.shape[-1])
    if rows.shape[-1] != 6:
        raise DetectorFilesError(f"detector output rows have {rows.shape[-1]} values, expected 6 (x1, y1, x2, y2, "
                                 f"score, class): '{DETECTOR_FILE}' is not the YOLOv10 end-to-end network")
    keep = rows[:, 4] >= DET_CONF
    boxes = rows[keep, :4].copy()
    scores, classes = rows[keep, 4], rows[keep, 5]
    boxes[:, [0, 2]] *= np.float64(width) / DET_SIZE  # float64 product stored as float32, as numpy does in place
    boxes[:, [1, 3]] *= np.float64(height) / DET_SIZE
    boxes[:, 2] -= boxes[:, 0]
    boxes[:, 3] -= boxes[:, 1]
    xywh = boxes.astype(np.int32)
    if not len(xywh):
        return np.zeros((0, 6))
    order = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), DET_CONF, DET_IOU), int).reshape(-1)
    out = np.zeros((len(order), 6))
    for row, i in enumerate(order):
        x, y, w, h = (int(v) for v in xywh[i])
        out[row] = (x, y, x + w, y + h, float(scores[i]), float(classes[i]))
    return out


def person_boxes(dets: np.ndarray) -> tuple[np.ndarray, int]:
    """Person rows (class 0, score > 0.05) as (K, 5) boxes and the index of the one the official
    code keeps (largest area among boxes not much thinner than the longest), -1 if none."""
    persons = dets[(dets[:, 5] == PERSON_CLASS) & (dets[:, 4] > DET_CONF)] if len(dets) else np.zeros((0, 6))
    if not len(persons):
        return np.zeros((0, 5)), -1
    sides = np.maximum(persons[:, 2] - persons[:, 0], persons[:, 3] - persons[:, 1])
    areas = (persons[:, 2] - persons[:, 0]) * (persons[:, 3] - persons[:, 1])
    longest, best, best_area = sides.max(), -1, -np.inf
    for i in range(len(persons)):  # order matters on ties: first one wins, as in the official loop
        if areas[i] > best_area and sides[i] >= longest * BOX_SHAPE_RATIO:
            best, best_area, longest = i, areas[i], sides[i]
    return persons[:, :5], best


# --- ViTPose --------------------------------------------------------------------------------

def box_center_scale(box, input_hw=(INPUT_H, INPUT_W), rescale: float = BOX_RESCALE):
    """Box (x1, y1, x2, y2) -> centre (2,) and (width, height) of the crop in units of 200 px."""
    aspect = input_hw[0] / float(input_hw[1])
    center = np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0])
    size = max((box[2] - box[0]) * aspect, box[3] - box[1])
    return center, np.array([size / aspect, size]) / SCALE_UNIT * rescale


def _crop_corner(center, scale: float, res, pt) -> np.ndarray:
    """Frame pixel of crop pixel ``pt`` (x, y): inverse of the crop transform, rounded half to even."""
    h = SCALE_UNIT * scale
    w = h / (res[0] / float(res[1]))
    t = np.array([[res[1] / w, 0, res[1] * (-float(center[0]) / w + 0.5)],
                  [0, res[0] / h, res[0] * (-float(center[1]) / h + 0.5)], [0, 0, 1]])
    x, y, _ = np.linalg.inv(t) @ np.array([pt[0], pt[1], 1.0])
    return np.array([round(x), round(y)], int)


def crop_box(image: np.ndarray, center, scale, res=(INPUT_H, INPUT_W)) -> np.ndarray:
    """Integer crop of the box (zero outside the frame) resized to ``res`` (rows, cols): float32."""
    s = float(np.max(scale))
    ul, br = _crop_corner(center, s, res, (0, 0)), _crop_corner(center, s, res, (res[1], res[0]))
    out = np.zeros((br[1] - ul[1], br[0] - ul[0], image.shape[2]), np.float32)
    h, w = image.shape[:2]
    nx0, nx1, ny0, ny1 = max(0, -ul[0]), min(br[0], w) - ul[0], max(0, -ul[1]), min(br[1], h) - ul[1]
    ox0, ox1, oy0, oy1 = max(0, ul[0]), min(w, br[0]), max(0, ul[1]), min(h, br[1])
    if nx1 > nx0 and ny1 > ny0:
        out[ny0:ny1, nx0:nx1] = image[oy0:oy1, ox0:ox1]
    return cv2.resize(out, (res[1], res[0]))


def normalize_crop(crop: np.ndarray) -> np.ndarray:
    """(H, W, 3) 0..255 -> (3, H, W) float32 with ImageNet mean/std on 0..1 (in the crop's channel order)."""
    return ((crop / 255.0 - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def _blur_log(heatmap: np.ndarray) -> np.ndarray:
    """Gaussian k=11 over a zero-padded map, rescaled to the original maximum, then log."""
    border = (BLUR_KERNEL - 1) // 2
    peak = np.max(heatmap)
    padded = np.zeros((heatmap.shape[0] + 2 * border, heatmap.shape[1] + 2 * border), np.float32)
    padded[border:-border, border:-border] = heatmap
    blurred = cv2.GaussianBlur(padded, (BLUR_KERNEL, BLUR_KERNEL), 0)[border:-border, border:-border].copy()
    blurred *= peak / np.max(blurred)
    return np.log(np.maximum(blurred, 1e-10))


def _taylor(logmap: np.ndarray, x: float, y: float) -> tuple[float, float]:
    """One Newton step on the log-heatmap around an integer peak (DARK), away from the border."""
    h, w = logmap.shape
    px, py = int(x), int(y)
    if not (1 < px < w - 2 and 1 < py < h - 2):
        return x, y
    m = logmap
    dx = 0.5 * (m[py, px + 1] - m[py, px - 1])
    dy = 0.5 * (m[py + 1, px] - m[py - 1, px])
    dxx = 0.25 * (m[py, px + 2] - 2 * m[py, px] + m[py, px - 2])
    dxy = 0.25 * (m[py + 1, px + 1] - m[py - 1, px + 1] - m[py + 1, px - 1] + m[py - 1, px - 1])
    dyy = 0.25 * (m[py + 2, px] - 2 * m[py, px] + m[py - 2, px])
    if dxx * dyy - dxy ** 2 == 0:
        return x, y
    offset = -np.linalg.inv(np.array([[dxx, dxy], [dxy, dyy]])) @ np.array([dx, dy])
    return x + offset[0], y + offset[1]


def decode_heatmaps(heatmaps: np.ndarray, center: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, H, W) heatmaps + per-crop centre (N, 2) and scale (N, 2, units of 200 px) ->
    frame points (N, K, 2) and scores (N, K)."""
    heatmaps = np.asarray(heatmaps, np.float32)
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    idx, scores = flat.argmax(axis=2), flat.max(axis=2)
    preds = np.stack([idx % w, idx // w], axis=2).astype(np.float32)
    preds[scores <= 0] = -1
    with np.errstate(divide="ignore", invalid="ignore"):  # all-zero maps: NaN there, point stays -1
        for i in range(n):
            for j in range(k):
                if scores[i, j] > 0:
                    preds[i, j] = _taylor(_blur_log(heatmaps[i, j]), preds[i, j, 0], preds[i, j, 1])
    size = np.asarray(scale, np.float64).reshape(n, 1, 2) * SCALE_UNIT
    points = preds * (size / np.array([w, h])) + np.asarray(center, np.float64).reshape(n, 1, 2) - size * 0.5
    return points.astype(np.float32), scores


class ViTPoseDetector:
    """YOLOv10m person box + ViTPose whole-body heatmaps (One-to-All's official preprocessing)."""

    name = "vitpose"

    def __init__(self, folder: Path | None = None, det_path: Path | None = None, pose_path: Path | None = None,
                 device: str = "cpu", threads: int | None = None, channel_order: str = "official",
                 people: str = "official"):
        """``people``: "official" keeps the one person the official code keeps (the whole frame
        when no box is found); "all" keeps every person box (the official one first)."""
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
        if people not in PEOPLE:
            raise ValueError(f"people must be one of {PEOPLE}, got {people!r}")
        self.channel_order, self.people = channel_order, people
        if det_path is None or pose_path is None:
            if folder is None:
                raise ValueError(f"ViTPose needs the folder holding {FILES_HINT} (ComfyUI models/pose_models), "
                                 "or both det_path and pose_path")
            found_det, found_pose = find_model_files(Path(folder))
            det_path, pose_path = det_path or found_det, pose_path or found_pose
        for path in (Path(det_path), Path(pose_path)):
            if not path.is_file():
                raise DetectorFilesError(f"ViTPose file {path.name!r} not found in {path.parent}; put {FILES_HINT} in "
                                         "ComfyUI models/pose_models. Nothing is downloaded automatically.")
        self.engine, self.device = resolve_engine(device)
        self.det = OnnxModel(det_path, self.engine, self.device, threads, " (yolov10m.onnx from Wan2.2-Animate)")
        self.pose = OnnxModel(pose_path, self.engine, self.device, threads, " (a ViTPose whole-body ONNX export)")
        self._check_signatures()

    def _check_signatures(self) -> None:
        d_in, p_in = self.det.inputs, self.pose.inputs
        if len(d_in) != 1 or not shape_matches(d_in[0][1], [3, DET_SIZE, DET_SIZE]):
            raise DetectorFilesError(f"{self.det.path} is not a 640x640 YOLOv10 detector (inputs {d_in}); "
                                     f"expected one input [N, 3, 640, 640] ({FILES_HINT})")
        if len(p_in) != 1 or not shape_matches(p_in[0][1], [3, INPUT_H, INPUT_W]):
            raise DetectorFilesError(f"{self.pose.path} is not a 256x192 ViTPose whole-body model (inputs {p_in}); "
                                     f"expected one input [N, 3, 256, 192] ({FILES_HINT})")
        out = self.pose.outputs[0][1]
        if len(out) != 4 or (isinstance(out[1], int) and out[1] != 133):
            raise DetectorFilesError(f"{self.pose.path} outputs {self.pose.outputs}; expected whole-body heatmaps "
                                     "[N, 133, 64, 48] (a body-only ViTPose has 17 points)")

    def describe(self) -> str:
        return (f"vitpose ({self.pose.path.name} + {self.det.path.name}, {self.pose.engine} on {self.pose.device}, "
                f"channels {self.channel_order})")

    def _pose_image(self, rgb: np.ndarray) -> np.ndarray:
        return rgb if self.channel_order == "rgb" else np.ascontiguousarray(rgb[..., ::-1])

    def _det_image(self, rgb: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(rgb[..., ::-1]) if self.channel_order == "bgr" else rgb

    def detect_boxes(self, frames: np.ndarray) -> list[np.ndarray]:
        """Per frame the boxes (K, 5) to run ViTPose on, official choice first (or the whole frame)."""
        h, w = frames.shape[1:3]
        blobs = np.stack([detector_input(self._det_image(f)) for f in frames])
        step = len(blobs) if self.det.batched else 1
        rows = []
        for i in range(0, len(blobs), step):
            rows.extend(self.det.run({self.det.inputs[0][0]: blobs[i : i + step]})[0])
        out = []
        for r in rows:
            boxes, best = person_boxes(decode_yolov10(r, h, w))
            if best < 0:
                out.append(np.array([[0.0, 0.0, w, h, -1.0]]))
                continue
            rest = [i for i in range(len(boxes)) if i != best] if self.people == "all" else []
            out.append(boxes[[best, *rest]])
        return out

    def estimate(self, blobs: np.ndarray) -> np.ndarray:
        step = MAX_CROPS_PER_CALL if self.pose.batched else 1
        return np.concatenate([self.pose.run({self.pose.inputs[0][0]: blobs[i : i + step]})[0]
                               for i in range(0, len(blobs), step)])

    def detect_batch(self, images: np.ndarray) -> list[PoseFrame]:
        frames = as_uint8_rgb(images)
        h, w = frames.shape[1:3]
        blobs, centers, scales, owner = [], [], [], []
        for t, (frame, boxes) in enumerate(zip(frames, self.detect_boxes(frames))):
            pose_img = self._pose_image(frame)
            for box in boxes:
                if box[4] <= 0 or box[2] - box[0] < 10 or box[3] - box[1] < 10:  # official: tiny box -> whole frame
                    box = np.array([0.0, 0.0, w, h, box[4]])
                center, scale = box_center_scale(box)
                blobs.append(normalize_crop(crop_box(pose_img, center, scale)))
                centers.append(center)
                scales.append(scale)
                owner.append(t)
        points, scores = decode_heatmaps(self.estimate(np.stack(blobs)), np.stack(centers), np.stack(scales))
        people: list[list[np.ndarray]] = [[] for _ in frames]
        for t, pts, sc in zip(owner, points, scores):
            people[t].append(wholebody_to_layout(pts, sc, w, h, neck="mean"))
        return [PoseFrame(w, h, np.stack(p) if p else np.zeros((0, NUM_POINTS, 3), np.float32)) for p in people]
