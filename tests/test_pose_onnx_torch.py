"""The detectors' torch path: ONNX graphs run with torch ops give onnxruntime's outputs (1e-4),
op by op and on the tiny detector models, and the detectors give the same poses either way."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import tiny_onnx
from poseanimate.pose import dwpose, onnx_model, vitpose
from poseanimate.pose.onnx_model import OnnxModel
from poseanimate.pose.onnx_torch import UnsupportedOnnxOps

RNG = np.random.default_rng(7)


def _parity(path, batch=2, scale=1.0, atol=1e-4):
    ort_model, torch_model = OnnxModel(path), OnnxModel(path, "torch", "cpu")
    assert torch_model.inputs == ort_model.inputs and [n for n, _ in torch_model.outputs] == [n for n, _ in ort_model.outputs]
    feeds = {}
    for name, shape in ort_model.inputs:
        dims = [batch if i == 0 and not isinstance(d, int) else d for i, d in enumerate(shape)]
        feeds[name] = (RNG.standard_normal(dims) * scale).astype(np.float32)
    expected, got = ort_model.run(feeds), torch_model.run(feeds)
    assert len(expected) == len(got)
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        np.testing.assert_allclose(g, e, atol=atol, rtol=1e-4)
    return expected


@pytest.mark.parametrize("build", ["yolox", "dwpose_onehot", "dwpose_spot", "yolov10", "vitpose_spot", "vitpose_peaks"])
def test_tiny_detector_models_match_onnxruntime(tmp_path, build):
    path = tmp_path / f"{build}.onnx"
    if build == "yolox":
        tiny_onnx.build_detector(path, [(10, 20, 200, 400, 0.9, 0, 0.9)], dynamic_batch=True, gate_channel=0)
    elif build == "dwpose_onehot":
        tiny_onnx.build_pose_onehot(path, [(5 + k, 7 + k) for k in range(133)], [0.5] * 133)
    elif build == "dwpose_spot":
        tiny_onnx.build_pose_spot(path, channel=1)
    elif build == "yolov10":
        tiny_onnx.build_yolov10(path, [(10, 20, 200, 400, 0.9, 0)], dynamic_batch=True, gate_channel=2)
    elif build == "vitpose_spot":
        tiny_onnx.build_vitpose_spot(path, np.linspace(0.2, 1.0, 133))
    else:
        tiny_onnx.build_vitpose_peaks(path, [(3 + k % 40, 4 + k % 50, 0.9) for k in range(133)])
    _parity(path, scale=60.0)


def _graph(tmp_path, nodes, inputs, inits=(), opset=17, name="g"):
    """inputs: {name: array} fed at run time; inits: {name: array} stored in the file."""
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)) for n, a in inputs.items()]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in nodes[-1].output]
    graph = helper.make_graph(nodes, name, ins, outs, initializer=[numpy_helper.from_array(a, n) for n, a in dict(inits).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _run_both(path, inputs):
    ort_model, torch_model = OnnxModel(path), OnnxModel(path, "torch", "cpu")
    return ort_model.run(inputs), torch_model.run(inputs)


def f32(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def i64(*values):
    return np.array(values, np.int64)


N = helper.make_node
OP_CASES = {
    "conv_group_stride_asym_pad": ([N("Conv", ["x", "w", "b"], ["y"], group=2, strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2])],
                                   {"x": f32(2, 4, 11, 9)}, {"w": f32(6, 2, 3, 3), "b": f32(6)}),
    "conv_same_upper": ([N("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])], {"x": f32(1, 3, 10, 7)}, {"w": f32(4, 3, 4, 4)}),
    "conv_transpose_bn_relu": ([N("ConvTranspose", ["x", "w"], ["t"], strides=[2, 2], pads=[1, 1, 1, 1]),
                                N("BatchNormalization", ["t", "s", "bb", "m", "v"], ["n"], epsilon=1e-5), N("Relu", ["n"], ["y"])],
                               {"x": f32(2, 4, 5, 3)}, {"w": f32(4, 3, 4, 4), "s": f32(3), "bb": f32(3), "m": f32(3),
                                                         "v": np.abs(f32(3)) + 0.5}),
    "layernorm_matmul_softmax_gelu": ([N("LayerNormalization", ["x", "g", "b"], ["n"], axis=-1, epsilon=1e-6),
                                       N("MatMul", ["n", "w"], ["q"]), N("Softmax", ["q"], ["p"], axis=-1),
                                       N("Erf", ["p"], ["e"]), N("Mul", ["e", "p"], ["y"])],
                                      {"x": f32(2, 5, 8)}, {"g": f32(8), "b": f32(8), "w": f32(8, 6)}),
    "maxpool_pads_avgpool_global": ([N("MaxPool", ["x"], ["m"], kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2]),
                                     N("AveragePool", ["m"], ["a"], kernel_shape=[2, 2], strides=[2, 2]),
                                     N("GlobalAveragePool", ["a"], ["y"])], {"x": f32(1, 3, 9, 8)}, {}),
    "maxpool_ceil": ([N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)], {"x": f32(1, 2, 8, 7)}, {}),
    "gemm_transb_hardsigmoid_hardswish": ([N("Gemm", ["x", "w", "c"], ["g"], transB=1, alpha=0.5, beta=2.0),
                                           N("HardSigmoid", ["g"], ["h"], alpha=0.3, beta=0.4), N("HardSwish", ["h"], ["y"])],
                                          {"x": f32(3, 6)}, {"w": f32(5, 6), "c": f32(5)}),
    "resize_nearest_x2": ([N("Resize", ["x", "", "s"], ["y"], mode="nearest", coordinate_transformation_mode="asymmetric",
                             nearest_mode="floor")], {"x": f32(1, 2, 4, 3)}, {"s": np.array([1, 1, 2, 2], np.float32)}),
    "resize_linear_sizes": ([N("Resize", ["x", "", "", "sz"], ["y"], mode="linear", coordinate_transformation_mode="half_pixel")],
                            {"x": f32(1, 2, 4, 3)}, {"sz": i64(1, 2, 9, 7)}),
    "split_slice_steps_negative": ([N("Split", ["x", "sp"], ["a", "b"], axis=1),
                                    N("Slice", ["a", "st", "en", "ax", "stp"], ["c"]),
                                    N("Slice", ["b", "st2", "en2", "ax2", "stp2"], ["d"]),
                                    N("Concat", ["c", "d"], ["y"], axis=1)],
                                   {"x": f32(2, 6, 8)}, {"sp": i64(2, 4), "st": i64(0, 1), "en": i64(2, 9), "ax": i64(1, 2),
                                                         "stp": i64(1, 3), "st2": i64(-1, 6), "en2": i64(-9223372036854775807, 0),
                                                         "ax2": i64(1, 2), "stp2": i64(-2, -2)}),
    "topk_gather_elements_mod_div": ([N("ReduceMax", ["x"], ["m"], axes=[2], keepdims=0),
                                      N("TopK", ["m", "k"], ["v", "i"], axis=-1),
                                      N("Unsqueeze", ["i", "ax"], ["iu"]), N("Tile", ["iu", "rep"], ["it"]),
                                      N("GatherElements", ["x", "it"], ["g"], axis=1),
                                      N("Mod", ["i", "three"], ["md"]), N("Div", ["i", "three"], ["dv"]),
                                      N("Cast", ["md"], ["mf"], to=TensorProto.FLOAT), N("Cast", ["dv"], ["df"], to=TensorProto.FLOAT),
                                      N("Unsqueeze", ["mf", "ax"], ["mu"]), N("Unsqueeze", ["df", "ax"], ["du"]),
                                      N("Concat", ["g", "mu", "du", "v_u"], ["y"], axis=-1)],
                                     {"x": f32(2, 20, 4)}, {"k": i64(5), "ax": i64(-1), "rep": i64(1, 1, 4), "three": i64(3),
                                                            "v_u": np.zeros((2, 5, 1), np.float32)}),
    "shape_gather_reshape_flatten_transpose": ([N("Shape", ["x"], ["s"]), N("Gather", ["s", "zero"], ["n"], axis=0),
                                                N("Unsqueeze", ["n", "ax0"], ["nu"]), N("Concat", ["nu", "minus1"], ["shp"], axis=0),
                                                N("Reshape", ["x", "shp"], ["r"]), N("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
                                                N("Flatten", ["t"], ["f"], axis=1), N("Add", ["r", "f"], ["y"])],
                                               {"x": f32(2, 3, 4, 5)}, {"zero": np.array(0, np.int64), "ax0": i64(0), "minus1": i64(-1)}),
    "expand_where_equal_clip_pad": ([N("Expand", ["x", "shp"], ["e"]), N("Greater", ["e", "zerof"], ["gt"]),
                                     N("Where", ["gt", "e", "negf"], ["w"]), N("Clip", ["w", "lo", "hi"], ["c"]),
                                     N("Pad", ["c", "pads", "padv"], ["y"], mode="constant")],
                                    {"x": f32(3, 1)}, {"shp": i64(2, 3, 4), "zerof": np.array(0, np.float32),
                                                       "negf": np.array(-0.25, np.float32), "lo": np.array(-0.1, np.float32),
                                                       "hi": np.array(0.7, np.float32), "pads": i64(0, 1, 2, 0, 0, 1),
                                                       "padv": np.array(0.5, np.float32)}),
    "reduce_l2_mean_sum_argmax": ([N("ReduceL2", ["x"], ["l"], axes=[1], keepdims=1), N("Div", ["x", "l"], ["d"]),
                                   N("ReduceSum", ["d", "ax"], ["s"], keepdims=0), N("ReduceMean", ["x"], ["m"], axes=[1], keepdims=0),
                                   N("ArgMax", ["x"], ["a"], axis=1, keepdims=0), N("Cast", ["a"], ["af"], to=TensorProto.FLOAT),
                                   N("Add", ["s", "m"], ["sm"]), N("Add", ["sm", "af"], ["y"])], {"x": f32(3, 4, 5)}, {"ax": i64(1)}),
    "constant_of_shape_range_cumsum_einsum": ([N("ConstantOfShape", ["shp"], ["c"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
                                               N("Range", ["r0", "r1", "r2"], ["r"]), N("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
                                               N("CumSum", ["x", "cax"], ["cs"]), N("Einsum", ["cs", "c"], ["e"], equation="bij,jk->bik"),
                                               N("Add", ["e", "rf"], ["y"])],
                                              {"x": f32(2, 3, 4)}, {"shp": i64(4, 5), "r0": np.array(0, np.int64), "r1": np.array(5, np.int64), "r2": np.array(1, np.int64),
                                                                    "cax": i64(2)}),
    "depth_to_space_sqrt_pow": ([N("DepthToSpace", ["x"], ["d"], blocksize=2, mode="DCR"), N("Abs", ["d"], ["a"]),
                                 N("Sqrt", ["a"], ["s"]), N("Pow", ["s", "three"], ["y"])],
                                {"x": f32(1, 8, 3, 2)}, {"three": np.array(3.0, np.float32)}),
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_ops_match_onnxruntime(tmp_path, case):
    nodes, inputs, inits = OP_CASES[case]
    expected, got = _run_both(_graph(tmp_path, nodes, inputs, inits, name=case), inputs)
    for e, g in zip(expected, got):
        assert e.shape == g.shape, case
        np.testing.assert_allclose(g, e, atol=1e-4, rtol=1e-4)


def test_unsupported_ops_are_named_at_load_time_and_fall_back_to_onnxruntime(tmp_path, caplog):
    path = _graph(tmp_path, [N("Det", ["x"], ["y"])], {"x": f32(3, 3)})
    with pytest.raises(UnsupportedOnnxOps, match=r"g.onnx: ops not supported by the torch path: Det.*device 'cpu'"):
        OnnxModel(path, "torch", "cpu", strict=True)
    with caplog.at_level("WARNING", logger="PoseAnimate"):
        model = OnnxModel(path, "torch", "cpu")
    assert (model.engine, model.device) == ("onnxruntime", "cpu")
    assert any("Det" in r.getMessage() and "onnxruntime" in r.getMessage() for r in caplog.records)
    x = f32(3, 3)
    np.testing.assert_allclose(model.run({"x": x})[0], np.linalg.det(x), rtol=1e-4)


def test_device_choice():
    assert onnx_model.resolve_engine("cpu") == ("onnxruntime", "cpu")
    assert onnx_model.resolve_engine("torch:cpu") == ("torch", "cpu")
    expected = ("torch", "cuda") if torch.cuda.is_available() else ("onnxruntime", "cpu")
    assert onnx_model.resolve_engine("auto") == expected
    with pytest.raises(ValueError, match="auto"):
        onnx_model.resolve_engine("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            onnx_model.resolve_engine("gpu")


def _frames():
    frames = np.zeros((3, 200, 260, 3), np.uint8)
    for t in range(3):
        frames[t, 40 + 10 * t: 70 + 10 * t, 90:120, 2] = 255
        frames[t, 120:150, 150 + 5 * t: 180 + 5 * t, 0] = 255
    return frames


def test_detectors_give_the_same_poses_on_torch_and_onnxruntime(tmp_path):
    folder = tmp_path / "m"
    tiny_onnx.build_yolov10(folder / "yolov10m.onnx", [(30, 20, 600, 620, 0.9, 0)], dynamic_batch=True)
    tiny_onnx.build_vitpose_spot(folder / "vitpose_h_wholebody.onnx", np.linspace(0.3, 1.0, 133))
    tiny_onnx.build_detector(folder / "yolox_l.onnx", [(30, 20, 600, 620, 0.95, 0, 0.95)], dynamic_batch=True)
    tiny_onnx.build_pose_spot(folder / "dw-ll_ucoco_384.onnx", channel=0)
    for cls in (vitpose.ViTPoseDetector, dwpose.DWPoseDetector):
        ort_frames = cls(folder, device="cpu").detect_batch(_frames())
        det = cls(folder, device="torch:cpu")
        assert det.engine == "torch"
        torch_frames = det.detect_batch(_frames())
        for a, b in zip(ort_frames, torch_frames):
            assert a.num_people == b.num_people == 1
            np.testing.assert_allclose(b.people, a.people, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tiny_models_on_the_gpu_match_onnxruntime(tmp_path):
    path = tiny_onnx.build_vitpose_spot(tmp_path / "v.onnx", np.linspace(0.2, 1.0, 133))
    ort_model, gpu_model = OnnxModel(path), OnnxModel(path, "torch", "cuda")
    x = f32(2, 3, 256, 192, scale=3.0)
    np.testing.assert_allclose(gpu_model.run({"input": x})[0], ort_model.run({"input": x})[0], atol=1e-4)


def test_vit_shaped_network_matches_onnxruntime(tmp_path):
    """Patch conv, attention, LayerNormalization, Erf GELU, ConvTranspose + BatchNorm head: the op
    pattern of a ViTPose export, random weights, at the real 256x192 input."""
    _parity(tiny_onnx.build_vit_like(tmp_path / "vit.onnx", dim=32, depth=1), batch=2, atol=1e-4)
