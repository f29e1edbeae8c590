"""Run an ONNX graph with torch ops on any torch device: the detectors' GPU path.

Why our own: every ONNX->torch converter on PyPI (onnx2torch and its forks) imports torchvision
at import time (for NMS / RoiAlign converters) and requires it as a dependency, and this pack
never installs or imports torchvision (it would pull another torch build). The detector networks
need none of those ops, so the graph is interpreted node by node: initializers become tensors on
the device once, each node maps to a torch function with ONNX semantics (opsets 11-20). Ops the
file needs but this table lacks are named at load time, before any frame is processed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

_ONNX_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
                9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


class UnsupportedOnnxOps(RuntimeError):
    """The file uses ops the torch path does not implement (onnxruntime on the CPU still runs it)."""


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ints(t) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


def _axis(a, rank: int) -> int:
    return int(a) + rank if int(a) < 0 else int(a)


def _pads_nd(pads, spatial: int):
    """ONNX pads [x1_begin, x2_begin, ..., x1_end, x2_end, ...] -> F.pad order (last dim first)."""
    begin, end = pads[:spatial], pads[spatial:]
    out = []
    for b, e in zip(reversed(begin), reversed(end)):
        out += [int(b), int(e)]
    return out


def _same_pads(x, kernel, strides, dilations, upper: bool):
    pads_b, pads_e = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        pads_b.append(small if upper else big)
        pads_e.append(big if upper else small)
    return pads_b + pads_e


def _spatial_pads(x, a, kernel, strides, dilations):
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(x, kernel, strides, dilations, auto == "SAME_UPPER")
    return list(a.get("pads", [0] * (2 * len(kernel))))


def _conv(x, w, b=None, **a):
    n = w.dim() - 2
    strides, dil = a.get("strides", [1] * n), a.get("dilations", [1] * n)
    pads = _spatial_pads(x, a, w.shape[2:], strides, dil)
    conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    if pads[:n] == pads[n:]:
        return conv(x, w, b, strides, pads[:n], dil, a.get("group", 1))
    return conv(F.pad(x, _pads_nd(pads, n)), w, b, strides, 0, dil, a.get("group", 1))


def _conv_transpose(x, w, b=None, **a):
    n = w.dim() - 2
    strides, dil = a.get("strides", [1] * n), a.get("dilations", [1] * n)
    pads = list(a.get("pads", [0] * (2 * n)))
    if pads[:n] != pads[n:]:
        raise UnsupportedOnnxOps("ConvTranspose with asymmetric pads")
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
    return fn(x, w, b, strides, pads[:n], a.get("output_padding", [0] * n), a.get("group", 1), dil)


def _pool(kind):
    def run(x, **a):
        k = a["kernel_shape"]
        n = len(k)
        strides, dil = a.get("strides", [1] * n), a.get("dilations", [1] * n)
        pads = _spatial_pads(x, a, k, strides, dil)
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "max":
            if pads[:n] != pads[n:] or any(p > kk // 2 for p, kk in zip(pads[:n], k)):
                x, pads = F.pad(x, _pads_nd(pads, n), value=float("-inf")), [0] * (2 * n)
            fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
            return fn(x, k, strides, pads[:n], dil, ceil)
        include = bool(a.get("count_include_pad", 0))
        if pads[:n] != pads[n:] or any(p > kk // 2 for p, kk in zip(pads[:n], k)):
            if include:
                x = F.pad(x, _pads_nd(pads, n))
                pads = [0] * (2 * n)
            else:
                raise UnsupportedOnnxOps("AveragePool with asymmetric pads excluding padding")
        fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
        return fn(x, k, strides, pads[:n], ceil, include)
    return run


def _reduce(fn):
    def run(x, axes=None, **a):
        keep = bool(a.get("keepdims", 1))
        axes = a.get("axes", axes)
        if axes is None or (isinstance(axes, torch.Tensor) and axes.numel() == 0):
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        axes = [_axis(v, x.dim()) for v in _ints(axes)]
        return fn(x, axes, keep)
    return run


def _reduce_max(x, axes, keep):
    for ax in sorted(axes, reverse=True):
        x = x.amax(dim=ax, keepdim=keep)
    return x


def _reduce_min(x, axes, keep):
    for ax in sorted(axes, reverse=True):
        x = x.amin(dim=ax, keepdim=keep)
    return x


def _reduce_prod(x, axes, keep):
    for ax in sorted(axes, reverse=True):
        x = x.prod(dim=ax, keepdim=keep)
    return x


def _slice(x, starts, ends, axes=None, steps=None, **_):
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else [_axis(v, x.dim()) for v in _ints(axes)]
    steps = [1] * len(starts) if steps is None else _ints(steps)
    for s, e, ax, st in zip(starts, ends, axes, steps):
        size = x.shape[ax]
        if st > 0:  # Python slicing clamps the way ONNX does
            x = x[(slice(None),) * ax + (slice(s, e, st),)]
            continue
        s = min(max(s + size if s < 0 else s, 0), size - 1)  # negative step: ONNX clamps to [0, size-1] / [-1, size-1]
        e = min(max(e + size if e < 0 else e, -1), size - 1)
        x = x.index_select(ax, torch.arange(s, e, st, device=x.device))
    return x


def _resize(x, roi=None, scales=None, sizes=None, **a):
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ctm = a.get("coordinate_transformation_mode", b"half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    if sizes is not None and sizes.numel():
        out = _ints(sizes)[2:]
    else:
        sc = [float(v) for v in scales.tolist()][2:]
        out = [int(np.floor(d * s)) for d, s in zip(x.shape[2:], sc)]
    if mode == "nearest":
        nearest = a.get("nearest_mode", b"round_prefer_floor")
        nearest = nearest.decode() if isinstance(nearest, bytes) else nearest
        if ctm == "asymmetric" and nearest == "floor":
            return F.interpolate(x, size=out, mode="nearest")
        if ctm in ("half_pixel", "pytorch_half_pixel") and nearest in ("round_prefer_ceil", "round_prefer_floor"):
            return F.interpolate(x, size=out, mode="nearest-exact")
        if ctm == "asymmetric" and all(o % i == 0 for o, i in zip(out, x.shape[2:])):
            return F.interpolate(x, size=out, mode="nearest")  # integer upsampling: every mode agrees
        raise UnsupportedOnnxOps(f"Resize nearest with {ctm}/{nearest}")
    if mode == "linear":
        interp = ("linear", "bilinear", "trilinear")[x.dim() - 3]
        if ctm == "align_corners":
            return F.interpolate(x, size=out, mode=interp, align_corners=True)
        if ctm in ("half_pixel", "pytorch_half_pixel"):
            return F.interpolate(x, size=out, mode=interp, align_corners=False)
        raise UnsupportedOnnxOps(f"Resize linear with {ctm}")
    if mode == "cubic" and ctm in ("half_pixel", "pytorch_half_pixel") and x.dim() == 4:
        return F.interpolate(x, size=out, mode="bicubic", align_corners=False)
    raise UnsupportedOnnxOps(f"Resize mode {mode}/{ctm}")


def _split(x, split=None, **a):
    ax = _axis(a.get("axis", 0), x.dim())
    split = a.get("split", split)
    if split is None:
        n = a["_outputs"]
        return list(torch.chunk(x, n, ax)) if x.shape[ax] % n == 0 else list(torch.split(x, -(-x.shape[ax] // n), ax))
    return list(torch.split(x, _ints(split), ax))


def _gemm(a_, b_, c=None, **a):
    if a.get("transA", 0):
        a_ = a_.t()
    if a.get("transB", 0):
        b_ = b_.t()
    y = a.get("alpha", 1.0) * (a_ @ b_)
    return y if c is None else y + a.get("beta", 1.0) * c


def _layer_norm(x, scale, bias=None, **a):
    ax = _axis(a.get("axis", -1), x.dim())
    return F.layer_norm(x, x.shape[ax:], scale, bias, a.get("epsilon", 1e-5))


def _batch_norm(x, scale, bias, mean, var, **a):
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))


def _softmax(x, **a):
    if a.get("_opset", 13) < 13:  # opsets < 13 flatten from `axis` (default 1)
        ax, shape = _axis(a.get("axis", 1), x.dim()), x.shape
        return torch.softmax(x.reshape(int(np.prod(shape[:ax])), -1), -1).reshape(shape)
    return torch.softmax(x, a.get("axis", -1))


def _reshape(x, shape, **a):
    shape = _ints(shape)
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _squeeze(x, axes=None, **a):
    axes = a.get("axes", axes)
    if axes is None:
        return x.squeeze()
    for ax in sorted((_axis(v, x.dim()) for v in _ints(axes)), reverse=True):
        x = x.squeeze(ax)
    return x


def _unsqueeze(x, axes=None, **a):
    axes = _ints(a.get("axes", axes))
    rank = x.dim() + len(axes)
    for ax in sorted(_axis(v, rank) for v in axes):
        x = x.unsqueeze(ax)
    return x


def _gather(x, idx, **a):
    ax = _axis(a.get("axis", 0), x.dim())
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[ax], idx)
    return x.index_select(ax, idx.reshape(-1)).reshape(x.shape[:ax] + idx.shape + x.shape[ax + 1:])


def _gather_elements(x, idx, **a):
    ax = _axis(a.get("axis", 0), x.dim())
    idx = idx.long()
    return torch.gather(x, ax, torch.where(idx < 0, idx + x.shape[ax], idx))


def _topk(x, k, **a):
    ax = _axis(a.get("axis", -1), x.dim())
    values, idx = torch.topk(x, int(k.reshape(-1)[0]), ax, bool(a.get("largest", 1)), bool(a.get("sorted", 1)))
    return [values, idx]


def _arg(fn):
    def run(x, **a):
        ax = _axis(a.get("axis", 0), x.dim())
        if a.get("select_last_index", 0):
            flipped = fn(x.flip(ax), ax, keepdim=True)
            out = x.shape[ax] - 1 - flipped
        else:
            out = fn(x, ax, keepdim=True)
        return out if a.get("keepdims", 1) else out.squeeze(ax)
    return run


def _pad(x, pads, value=None, axes=None, **a):
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = _ints(pads)
    if axes is not None:
        full = [0] * (2 * x.dim())
        ax = [_axis(v, x.dim()) for v in _ints(axes)]
        for i, a_ in enumerate(ax):
            full[a_], full[a_ + x.dim()] = pads[i], pads[i + len(ax)]
        pads = full
    torch_pads = _pads_nd(pads, x.dim())
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    if mode == "constant":
        return F.pad(x, torch_pads, value=0.0 if value is None or value.numel() == 0 else float(value.reshape(-1)[0]))
    return F.pad(x, torch_pads, mode={"reflect": "reflect", "edge": "replicate"}[mode])


def _constant(**a):
    from onnx import numpy_helper

    if "value" in a:
        return torch.from_numpy(numpy_helper.to_array(a["value"]).copy())
    for key, dtype in (("value_float", torch.float32), ("value_int", torch.int64)):
        if key in a:
            return torch.tensor(a[key], dtype=dtype)
    for key, dtype in (("value_floats", torch.float32), ("value_ints", torch.int64)):
        if key in a:
            return torch.tensor(list(a[key]), dtype=dtype)
    raise UnsupportedOnnxOps("Constant without a tensor/float/int value")


def _constant_of_shape(shape, **a):
    from onnx import numpy_helper

    fill = torch.from_numpy(numpy_helper.to_array(a["value"]).copy()) if "value" in a else torch.zeros(1)
    return torch.full(_ints(shape), fill.reshape(-1)[0].item(), dtype=fill.dtype)


def _clip(x, lo=None, hi=None, **a):
    lo = a.get("min", lo)
    hi = a.get("max", hi)
    lo = None if lo is None or (isinstance(lo, torch.Tensor) and lo.numel() == 0) else lo
    hi = None if hi is None or (isinstance(hi, torch.Tensor) and hi.numel() == 0) else hi
    return torch.clamp(x, lo, hi)


def _variadic(fn):
    def run(*xs, **_):
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out
    return run


def _binary(fn):
    return lambda a, b, **_: fn(a, b)


def _unary(fn):
    return lambda x, **_: fn(x)


def _cast(x, **a):
    return x.to(_ONNX_DTYPES[a["to"]])


def _div(a, b, **_):
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def _mod(a, b, **kw):
    return torch.fmod(a, b) if kw.get("fmod", 0) else torch.remainder(a, b)


def _range(start, limit, delta, **_):
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


def _einsum(*xs, **a):
    eq = a["equation"]
    return torch.einsum(eq.decode() if isinstance(eq, bytes) else eq, *xs)


def _hard_sigmoid(x, **a):
    return torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0, 1)


def _flatten(x, **a):
    ax = _axis(a.get("axis", 1), x.dim())
    return x.reshape(int(np.prod(x.shape[:ax])), -1)


def _depth_to_space(x, **a):
    b = a["blocksize"]
    n, c, h, w = x.shape
    mode = a.get("mode", b"DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "DCR":
        return x.reshape(n, b, b, c // b ** 2, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c // b ** 2, h * b, w * b)
    return F.pixel_shuffle(x, b)


def _cumsum(x, axis, **a):
    ax = _axis(int(axis.reshape(-1)[0]), x.dim())
    if a.get("reverse", 0):
        x = x.flip(ax)
    out = x.cumsum(ax)
    if a.get("exclusive", 0):
        out = out - x
    return out.flip(ax) if a.get("reverse", 0) else out


def _instance_norm(x, scale, bias, **a):
    return F.instance_norm(x, weight=scale, bias=bias, eps=a.get("epsilon", 1e-5))


OPS = {
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _div,
    "Pow": _binary(torch.pow), "Mod": _mod, "Max": _variadic(torch.maximum), "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add), "Equal": _binary(torch.eq), "Greater": _binary(torch.gt), "Less": _binary(torch.lt),
    "GreaterOrEqual": _binary(torch.ge), "LessOrEqual": _binary(torch.le), "And": _binary(torch.logical_and),
    "Or": _binary(torch.logical_or), "Not": _unary(torch.logical_not), "Where": lambda c, a, b, **_: torch.where(c.bool(), a, b),
    "Sqrt": _unary(torch.sqrt), "Exp": _unary(torch.exp), "Log": _unary(torch.log), "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs), "Reciprocal": _unary(torch.reciprocal), "Floor": _unary(torch.floor),
    "Ceil": _unary(torch.ceil), "Round": _unary(torch.round), "Sign": _unary(torch.sign), "Sin": _unary(torch.sin),
    "Cos": _unary(torch.cos), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh), "Relu": _unary(F.relu),
    "Erf": _unary(torch.erf), "Softplus": _unary(F.softplus), "HardSwish": _unary(F.hardswish),
    "HardSigmoid": _hard_sigmoid, "LeakyRelu": lambda x, **a: F.leaky_relu(x, a.get("alpha", 0.01)),
    "Elu": lambda x, **a: F.elu(x, a.get("alpha", 1.0)), "Selu": _unary(F.selu),
    "Gelu": lambda x, **a: F.gelu(x, approximate=(a.get("approximate", b"none").decode()
                                                  if isinstance(a.get("approximate", b"none"), bytes) else a.get("approximate", "none"))),
    "Identity": _unary(lambda x: x), "Dropout": lambda x, *_, **__: x, "Cast": _cast, "Clip": _clip,
    "Conv": _conv, "ConvTranspose": _conv_transpose, "BatchNormalization": _batch_norm,
    "InstanceNormalization": _instance_norm, "LayerNormalization": _layer_norm,
    "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda x, **_: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "GlobalMaxPool": lambda x, **_: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
    "Gemm": _gemm, "MatMul": _binary(torch.matmul), "Softmax": _softmax, "Resize": _resize, "Flatten": _flatten,
    "Shape": lambda x, **a: torch.tensor(list(x.shape)[a.get("start", 0): a.get("end", None)], dtype=torch.int64),
    "Size": lambda x, **_: torch.tensor(x.numel(), dtype=torch.int64),
    "Reshape": _reshape, "Transpose": lambda x, **a: x.permute(*a.get("perm", list(range(x.dim()))[::-1])),
    "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Concat": lambda *xs, **a: torch.cat(xs, _axis(a["axis"], xs[0].dim())),
    "Split": _split, "Slice": _slice, "Gather": _gather, "GatherElements": _gather_elements,
    "Expand": lambda x, shape, **_: x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(shape)))),
    "Tile": lambda x, reps, **_: x.repeat(*_ints(reps)), "ConstantOfShape": _constant_of_shape, "Constant": _constant,
    "Range": _range, "Pad": _pad, "ReduceMean": _reduce(lambda x, ax, k: x.mean(dim=ax, keepdim=k)),
    "ReduceSum": _reduce(lambda x, ax, k: x.sum(dim=ax, keepdim=k)), "ReduceMax": _reduce(_reduce_max),
    "ReduceMin": _reduce(_reduce_min), "ReduceProd": _reduce(_reduce_prod),
    "ReduceL2": _reduce(lambda x, ax, k: x.pow(2).sum(dim=ax, keepdim=k).sqrt()),
    "ReduceSumSquare": _reduce(lambda x, ax, k: x.pow(2).sum(dim=ax, keepdim=k)),
    "ArgMax": _arg(torch.argmax), "ArgMin": _arg(torch.argmin), "TopK": _topk, "Einsum": _einsum,
    "CumSum": _cumsum, "DepthToSpace": _depth_to_space, "NonZero": lambda x, **_: torch.nonzero(x).t(),
}
# ops whose inputs past the first are shape-like (read on the host, never moved to the device)
_HOST_ARGS = {"Reshape", "Slice", "Squeeze", "Unsqueeze", "Expand", "Tile", "ConstantOfShape", "Range", "Split",
              "TopK", "Pad", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
              "ReduceSumSquare", "Resize", "CumSum"}


class OnnxGraph(torch.nn.Module):
    """An ONNX graph as a torch module: initializers are buffers, ``forward`` walks the nodes."""

    def __init__(self, proto, device: str):
        super().__init__()
        from onnx import numpy_helper

        graph = proto.graph
        self.opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=13)
        missing = sorted({n.op_type for n in graph.node if n.domain not in ("", "ai.onnx") or n.op_type not in OPS})
        if missing:
            raise UnsupportedOnnxOps(f"ops not supported by the torch path: {', '.join(missing)}")
        self.consts: dict[str, torch.Tensor] = {}
        for init in graph.initializer:
            arr = numpy_helper.to_array(init)
            self.consts[init.name] = torch.from_numpy(np.array(arr, copy=True))
        self.device = torch.device(device)
        for name, t in self.consts.items():  # float weights live on the device, int tensors stay on the host too
            self.consts[name] = t.to(self.device) if t.is_floating_point() else t
        self.nodes = [(n.op_type, list(n.input), list(n.output), _attrs(n)) for n in graph.node]
        self.input_names = [i.name for i in graph.input if i.name not in self.consts]
        self.output_names = [o.name for o in graph.output]

    @torch.inference_mode()
    def forward(self, *inputs):
        env: dict[str, torch.Tensor] = dict(self.consts)
        env.update(zip(self.input_names, inputs))
        for op, ins, outs, attrs in self.nodes:
            args = []
            for i, name in enumerate(ins):
                if not name:
                    args.append(None)
                    continue
                value = env[name]
                if i > 0 and op in _HOST_ARGS and not value.is_floating_point():
                    value = value.cpu()
                elif value.device != self.device and (i == 0 or op not in _HOST_ARGS):
                    value = value.to(self.device)
                args.append(value)
            while args and args[-1] is None:
                args.pop()
            kw = dict(attrs, _outputs=len(outs), _opset=self.opset) if op in ("Split", "Softmax") else attrs
            result = OPS[op](*args, **kw)
            if isinstance(result, (list, tuple)):
                for name, value in zip(outs, result):
                    env[name] = value
            else:
                env[outs[0]] = result
        return [env[n] for n in self.output_names]


def convert(proto, path: Path, device: str) -> OnnxGraph:
    """Build the torch module for ``proto`` (loaded with its external data) on ``device``."""
    try:
        return OnnxGraph(proto, device)
    except UnsupportedOnnxOps as exc:
        raise UnsupportedOnnxOps(f"{Path(path).name}: {exc} (device 'cpu' runs it on onnxruntime)") from exc


def run(module: OnnxGraph, arrays: list[np.ndarray], device: str) -> list[np.ndarray]:
    """numpy in, numpy (float32 where floating) out; the work runs on ``device``."""
    dev = torch.device(device)
    outs = module(*[torch.from_numpy(np.ascontiguousarray(a)).to(dev) for a in arrays])
    return [o.detach().float().cpu().numpy() if o.is_floating_point() else o.cpu().numpy() for o in outs]
