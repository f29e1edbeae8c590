"""Tiny ONNX stand-ins for the detectors' files, built with the onnx package: yolox_l.onnx and
dw-ll_ucoco_384.onnx (DWPose), yolov10m.onnx and vitpose_*_wholebody.onnx (ViTPose).

They keep the real files' I/O signature (detector ``images`` [N,3,640,640] -> ``output``
[N,8400,85]; pose ``input`` [N,3,384,288] -> ``simcc_x`` [N,133,576], ``simcc_y``
[N,133,768]) but compute trivially, so every decoding step can be checked exactly:

* detector: constant raw YOLOX rows that encode chosen boxes (in 640-letterbox pixels),
  optionally gated by the mean of one input channel (to check which channel order it gets);
* pose "onehot": constant SimCC vectors peaking at chosen crop pixels with chosen scores;
* pose "spot": SimCC = sigmoid of the column / row means of one input channel, so the
  brightest column and row of the crop become every keypoint (checks crop geometry);
* YOLOv10 ``images`` [N,3,640,640] -> ``output0`` [N,300,6]: constant rows x1,y1,x2,y2,score,class
  in 640x640 pixels (optionally gated by one input channel like the YOLOX stand-in);
* ViTPose ``input`` [N,3,256,192] -> ``heatmaps`` [N,133,64,48]: "peaks" = constant Gaussian
  blobs at chosen sub-pixel heatmap positions; "spot" = sigmoid of the 4x4 average of one input
  channel times a per-keypoint weight (the brightest block of the crop wins, checks geometry).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NUM_ROWS = 8400
NUM_KP = 133
OPSET = 17


def _save(nodes, inputs, outputs, inits, path: Path) -> Path:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="poseanimate-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _grid():
    cells, strides = [], []
    for stride in (8, 16, 32):
        n = 640 // stride
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        cells.append(np.stack([xs.ravel(), ys.ravel()], 1))
        strides.append(np.full(n * n, stride))
    return np.concatenate(cells), np.concatenate(strides)


def yolox_rows(boxes) -> np.ndarray:
    """Raw (8400, 85) YOLOX output encoding ``boxes`` = [(x1, y1, x2, y2, obj, cls_id, cls_score)]
    in letterbox pixels; each box sits in the stride-32 cell under its centre (distinct cells)."""
    cells, strides = _grid()
    rows = np.zeros((NUM_ROWS, 85), np.float32)
    base = 6400 + 1600
    used = set()
    for x1, y1, x2, y2, obj, cls_id, cls_score in boxes:
        cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
        idx = base + int(cy // 32) * 20 + int(cx // 32)
        if idx in used:
            raise ValueError("two test boxes share a grid cell; move one")
        used.add(idx)
        rows[idx, 0] = cx / 32 - cells[idx, 0]
        rows[idx, 1] = cy / 32 - cells[idx, 1]
        rows[idx, 2] = np.log(w / 32)
        rows[idx, 3] = np.log(h / 32)
        rows[idx, 4] = obj
        rows[idx, 5 + int(cls_id)] = cls_score
    return rows


def _gated_rows(path: Path, images, output, rows: np.ndarray, gate_channel: int | None, score: int,
                mid: float, gain: float) -> Path:
    """A detector graph returning the constant ``rows`` for each image (the batch axis comes from the
    input). With ``gate_channel`` the ``score`` column is multiplied by
    sigmoid((mean of that input channel - mid) * gain), so a box only appears when that channel is bright."""
    gated = np.zeros_like(rows)
    if gate_channel is not None:
        gated[..., score], rows = rows[..., score].copy(), rows.copy()
        rows[..., score] = 0.0
    inits = [numpy_helper.from_array(rows, "rows"), numpy_helper.from_array(gated, "gated"),
             numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
             numpy_helper.from_array(np.array([mid], np.float32), "mid"),
             numpy_helper.from_array(np.array([gain], np.float32), "gain"),
             numpy_helper.from_array(np.array([gate_channel or 0], np.int64), "chan"),
             numpy_helper.from_array(np.array([(gate_channel or 0) + 1], np.int64), "chan_end"),
             numpy_helper.from_array(np.array([1], np.int64), "one")]
    nodes = [
        helper.make_node("Slice", ["images", "chan", "chan_end", "one"], ["ch"]),  # channel c only
        helper.make_node("ReduceMean", ["ch"], ["m"], axes=[1, 2, 3], keepdims=1),  # [N,1,1,1]
        helper.make_node("Squeeze", ["m", "one"], ["m3"]),  # [N,1,1]
        helper.make_node("Sub", ["m3", "mid"], ["c"]),
        helper.make_node("Mul", ["c", "gain"], ["cq"]),
        helper.make_node("Sigmoid", ["cq"], ["gate"]),
        helper.make_node("Mul", ["m3", "zero"], ["z"]),  # 0 per image: gives the batch axis
        helper.make_node("Add", ["rows", "z"], ["base"]),
        helper.make_node("Mul", ["gated", "gate"], ["g"]),
        helper.make_node("Add", ["base", "g"], [output.name]),
    ]
    return _save(nodes, [images], [output], inits, path)


def build_detector(path: Path, boxes, dynamic_batch: bool = False, gate_channel: int | None = None) -> Path:
    """YOLOX-signature model returning ``yolox_rows(boxes)`` for each image. With ``gate_channel``
    the objectness is multiplied by sigmoid((mean of that input channel - 128) / 4), so a box
    only appears when that channel is bright."""
    batch = "N" if dynamic_batch else 1
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 640, 640])
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, NUM_ROWS, 85])
    return _gated_rows(path, images, output, yolox_rows(boxes)[None], gate_channel, score=4, mid=128.0, gain=0.25)


def simcc_onehot(points, scores) -> tuple[np.ndarray, np.ndarray]:
    """(133, 576), (133, 768) SimCC vectors peaking at crop pixel ``points[k]`` with value
    ``scores[k]`` (both maxima equal); a non-positive score gives an all-equal vector."""
    sx = np.zeros((NUM_KP, 576), np.float32)
    sy = np.zeros((NUM_KP, 768), np.float32)
    for k, ((x, y), s) in enumerate(zip(points, scores)):
        if s > 0:
            sx[k, int(round(x * 2))] = s
            sy[k, int(round(y * 2))] = s
        else:
            sx[k], sy[k] = s, s
    return sx, sy


def build_pose_onehot(path: Path, points, scores, dynamic_batch: bool = True) -> Path:
    """DWPose-signature model whose output is ``simcc_onehot(points, scores)`` for every crop."""
    batch = "N" if dynamic_batch else 1
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 384, 288])
    outs = [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [batch, NUM_KP, 576]),
            helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [batch, NUM_KP, 768])]
    sx, sy = simcc_onehot(points, scores)
    inits = [numpy_helper.from_array(sx[None], "sx"), numpy_helper.from_array(sy[None], "sy"),
             numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one")]
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Squeeze", ["m", "one"], ["m3"]),
        helper.make_node("Mul", ["m3", "zero"], ["z"]),
        helper.make_node("Add", ["sx", "z"], ["simcc_x"]),
        helper.make_node("Add", ["sy", "z"], ["simcc_y"]),
    ]
    return _save(nodes, [inp], outs, inits, path)


def build_pose_spot(path: Path, channel: int = 0, dynamic_batch: bool = True) -> Path:
    """DWPose-signature model: simcc_x[n, k, 2c] = simcc_x[n, k, 2c+1] = sigmoid(mean over rows of
    input channel ``channel`` at column c), likewise simcc_y over columns, for every k. The
    brightest column/row of that (normalised) channel in the crop wins the argmax."""
    batch = "N" if dynamic_batch else 1
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 384, 288])
    outs = [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [batch, NUM_KP, 576]),
            helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [batch, NUM_KP, 768])]
    inits = [numpy_helper.from_array(np.array([channel], np.int64), "c0"),
             numpy_helper.from_array(np.array([channel + 1], np.int64), "c1"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.array([0, 1, 576], np.int64), "shape_x"),
             numpy_helper.from_array(np.array([0, 1, 768], np.int64), "shape_y"),
             numpy_helper.from_array(np.array([1, NUM_KP, 1], np.int64), "tile")]
    nodes = [helper.make_node("Slice", ["input", "c0", "c1", "ax1"], ["ch"])]  # [N,1,384,288]
    for axis_name, reduce_axis, shape in (("x", 2, "shape_x"), ("y", 3, "shape_y")):
        nodes += [
            helper.make_node("ReduceMean", ["ch"], [f"p{axis_name}"], axes=[reduce_axis], keepdims=0),  # [N,1,L]
            helper.make_node("Sigmoid", [f"p{axis_name}"], [f"s{axis_name}"]),
            # interleave each value twice (split ratio 2): stack on a new last axis, flatten
            helper.make_node("Unsqueeze", [f"s{axis_name}", "last"], [f"e{axis_name}"]),
            helper.make_node("Concat", [f"e{axis_name}", f"e{axis_name}"], [f"d{axis_name}"], axis=-1),
            helper.make_node("Reshape", [f"d{axis_name}", shape], [f"r{axis_name}"]),
            helper.make_node("Tile", [f"r{axis_name}", "tile"], [f"simcc_{axis_name}"]),
        ]
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), "last"))
    return _save(nodes, [inp], outs, inits, path)


def build_yolov10(path: Path, boxes, dynamic_batch: bool = False, gate_channel: int | None = None) -> Path:
    """YOLOv10-signature model returning rows ``boxes`` = [(x1, y1, x2, y2, score, class)] (in
    640x640 input pixels) then zero rows, for each image. With ``gate_channel`` each score is
    multiplied by sigmoid((mean of that input channel * 255 - 128) / 4) (inputs are 0..1)."""
    batch = "N" if dynamic_batch else 1
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 640, 640])
    output = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, 300, 6])
    rows = np.zeros((1, 300, 6), np.float32)
    rows[0, : len(boxes)] = np.asarray(boxes, np.float32).reshape(-1, 6)
    return _gated_rows(path, images, output, rows, gate_channel, score=4, mid=0.5, gain=255.0 / 4)


def gaussian_heatmaps(peaks, height: int = 64, width: int = 48, sigma: float = 2.0) -> np.ndarray:
    """(K, H, W) float32: keypoint k is value * exp(-d^2 / 2 sigma^2) around heatmap point
    (x, y) = peaks[k][:2] with value peaks[k][2]; value 0 gives an all-zero map (no response)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    maps = [v * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2)) for x, y, v in peaks]
    return np.asarray(maps, np.float32)


def _vitpose_io(dynamic_batch: bool, num_kp: int, in_hw=(256, 192)):
    batch = "N" if dynamic_batch else 1
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, *in_hw])
    out = helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, [batch, num_kp, in_hw[0] // 4, in_hw[1] // 4])
    return inp, out


def build_vitpose_peaks(path: Path, peaks, dynamic_batch: bool = True, sigma: float = 2.0) -> Path:
    """ViTPose-signature model whose heatmaps are ``gaussian_heatmaps(peaks)`` for every crop."""
    inp, out = _vitpose_io(dynamic_batch, len(peaks))
    maps = gaussian_heatmaps(peaks, sigma=sigma)[None]
    inits = [numpy_helper.from_array(maps, "maps"), numpy_helper.from_array(np.array([0.0], np.float32), "zero")]
    nodes = [helper.make_node("ReduceMean", ["input"], ["m"], axes=[1, 2, 3], keepdims=1),  # [N,1,1,1]
             helper.make_node("Mul", ["m", "zero"], ["z"]),
             helper.make_node("Add", ["maps", "z"], ["heatmaps"])]
    return _save(nodes, [inp], [out], inits, path)


def build_vitpose_spot(path: Path, weights, channel: int = 0, dynamic_batch: bool = True) -> Path:
    """ViTPose-signature model: heatmaps[n, k] = weights[k] * sigmoid(4x4 average of input
    channel ``channel``), so every keypoint sits on the crop's brightest 4x4 block."""
    inp, out = _vitpose_io(dynamic_batch, len(weights))
    inits = [numpy_helper.from_array(np.array([channel], np.int64), "c0"),
             numpy_helper.from_array(np.array([channel + 1], np.int64), "c1"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.asarray(weights, np.float32).reshape(1, -1, 1, 1), "w")]
    nodes = [helper.make_node("Slice", ["input", "c0", "c1", "ax1"], ["ch"]),  # [N,1,256,192]
             helper.make_node("AveragePool", ["ch"], ["pool"], kernel_shape=[4, 4], strides=[4, 4]),
             helper.make_node("Sigmoid", ["pool"], ["sig"]),
             helper.make_node("Mul", ["sig", "w"], ["heatmaps"])]
    return _save(nodes, [inp], [out], inits, path)


def build_vit_like(path: Path, dim: int = 96, depth: int = 2, heads: int = 4, num_kp: int = NUM_KP, seed: int = 0) -> Path:
    """A small ViTPose-shaped network with random weights and the real I/O ([N,3,256,192] ->
    [N,133,64,48]): 16x16 patch-embedding conv, ``depth`` pre-norm transformer blocks
    (LayerNormalization, MatMul attention with Softmax, Erf GELU MLP), two 4x4 stride-2
    ConvTranspose + BatchNormalization + Relu, a 1x1 conv head. For engine parity and speed."""
    rng = np.random.default_rng(seed)
    tokens, head_dim = 16 * 12, dim // heads
    inits, nodes = {}, []

    def w(name, *shape, scale=None):
        inits[name] = (rng.standard_normal(shape) * (scale or 1 / np.sqrt(np.prod(shape[1:]) or 1))).astype(np.float32)
        return name

    def const(name, value, dtype=np.int64):
        inits[name] = np.asarray(value, dtype)
        return name

    N = helper.make_node
    nodes += [N("Conv", ["input", w("pe_w", dim, 3, 16, 16), w("pe_b", dim, scale=0.02)], ["pe"], strides=[16, 16]),
              N("Reshape", ["pe", const("to_seq", [0, dim, tokens])], ["seq_t"]),
              N("Transpose", ["seq_t"], ["x0"], perm=[0, 2, 1]),
              N("Add", ["x0", w("pos", 1, tokens, dim, scale=0.02)], ["x0p"])]
    x = "x0p"
    for b in range(depth):
        p = f"b{b}_"
        nodes += [N("LayerNormalization", [x, const(p + "g1", np.ones(dim), np.float32), const(p + "be1", np.zeros(dim), np.float32)],
                    [p + "n1"], axis=-1, epsilon=1e-6),
                  N("MatMul", [p + "n1", w(p + "qkv", dim, 3 * dim)], [p + "qkv_o"]),
                  N("Reshape", [p + "qkv_o", const(p + "qkv_s", [0, tokens, 3, heads, head_dim])], [p + "qkv_r"]),
                  N("Transpose", [p + "qkv_r"], [p + "qkv_t"], perm=[2, 0, 3, 1, 4]),
                  N("Split", [p + "qkv_t", const(p + "sp", [1, 1, 1])], [p + "q1", p + "k1", p + "v1"], axis=0),
                  N("Squeeze", [p + "q1", const(p + "z", [0])], [p + "q"]),
                  N("Squeeze", [p + "k1", p + "z"], [p + "k"]),
                  N("Squeeze", [p + "v1", p + "z"], [p + "v"]),
                  N("Transpose", [p + "k"], [p + "kt"], perm=[0, 1, 3, 2]),
                  N("MatMul", [p + "q", p + "kt"], [p + "att"]),
                  N("Mul", [p + "att", const(p + "scl", head_dim ** -0.5, np.float32)], [p + "atts"]),
                  N("Softmax", [p + "atts"], [p + "attp"], axis=-1),
                  N("MatMul", [p + "attp", p + "v"], [p + "ctx"]),
                  N("Transpose", [p + "ctx"], [p + "ctx_t"], perm=[0, 2, 1, 3]),
                  N("Reshape", [p + "ctx_t", const(p + "ctx_s", [0, tokens, dim])], [p + "ctx_r"]),
                  N("MatMul", [p + "ctx_r", w(p + "proj", dim, dim)], [p + "o"]),
                  N("Add", [x, p + "o"], [p + "x1"]),
                  N("LayerNormalization", [p + "x1", const(p + "g2", np.ones(dim), np.float32), const(p + "be2", np.zeros(dim), np.float32)],
                    [p + "n2"], axis=-1, epsilon=1e-6),
                  N("MatMul", [p + "n2", w(p + "fc1", dim, 2 * dim)], [p + "h"]),
                  N("Div", [p + "h", const(p + "sqrt2", np.sqrt(2.0), np.float32)], [p + "hd"]),
                  N("Erf", [p + "hd"], [p + "he"]),
                  N("Add", [p + "he", const(p + "one", 1.0, np.float32)], [p + "he1"]),
                  N("Mul", [p + "h", p + "he1"], [p + "hm"]),
                  N("Mul", [p + "hm", const(p + "half", 0.5, np.float32)], [p + "g"]),
                  N("MatMul", [p + "g", w(p + "fc2", 2 * dim, dim)], [p + "m"]),
                  N("Add", [p + "x1", p + "m"], [p + "out"])]
        x = p + "out"
    nodes += [N("Transpose", [x], ["feat_t"], perm=[0, 2, 1]),
              N("Reshape", ["feat_t", const("to_map", [0, dim, 16, 12])], ["feat"])]
    y, ch = "feat", dim
    for d in range(2):
        p = f"up{d}_"
        nodes += [N("ConvTranspose", [y, w(p + "w", ch, 64, 4, 4)], [p + "t"], strides=[2, 2], pads=[1, 1, 1, 1]),
                  N("BatchNormalization", [p + "t", const(p + "s", np.ones(64), np.float32), const(p + "b", np.zeros(64), np.float32),
                                           const(p + "m", np.zeros(64), np.float32), const(p + "v", np.ones(64), np.float32)], [p + "n"]),
                  N("Relu", [p + "n"], [p + "r"])]
        y, ch = p + "r", 64
    nodes.append(N("Conv", [y, w("head_w", num_kp, 64, 1, 1), w("head_b", num_kp, scale=0.02)], ["heatmaps"]))
    inp, out = _vitpose_io(True, num_kp)
    return _save(nodes, [inp], [out], [numpy_helper.from_array(v, k) for k, v in inits.items()], path)


def write_corrupt(path: Path, data: bytes = b"this is not an onnx model\x00\x01") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
