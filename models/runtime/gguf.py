"""GGUF weights (the ComfyUI-GGUF layout) kept quantized in memory, dequantized per layer in torch.

Why: GGUF files are how most users fit a 14B Wan DiT on a 12-24 GB card (Q8_0 ~ 15 GB, Q4_K ~ 9
GB). The facts of the layout, as city96/ComfyUI-GGUF writes and reads them:

- the tensors keep the checkpoint's own names (original Wan names for the Wan DiTs, optionally
  under ``model.diffusion_model.``), ``general.architecture`` is ``"wan"``;
- GGUF lists dimensions innermost first: a tensor's torch shape is ``reversed(tensor.shape)``,
  unless a ``comfy.gguf.orig_shape.<name>`` INT32 array gives it (tensors stored reshaped);
- 1-D tensors, tensors of <= 1024 values, ``.modulation`` and the 5-D patch embedding are F32;
  the rest is F16 / BF16 or a quantized type.

Quantized tensors are read as :class:`QuantizedWeight` (raw blocks as a uint8 tensor, memory-
mapped from the file until moved); the loader swaps each quantized ``nn.Linear`` for a
:class:`GGUFLinear` that dequantizes its weight on the fly in the input's dtype and device, so a
GPU does the unpacking and only one layer's float weight exists at a time. Block formats follow
ggml's ``ggml-quants.c`` (``gguf.quants``' numpy dequantizers are the test reference).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .weights import WeightsError

QK_K = 256  # super-block size of the k-quants
GGUF_SUFFIXES = (".gguf",)
GGUF_MARKER = "gguf_quantized"  # root key the reader adds so layout detection can name the format

# qtype name -> (values per block, bytes per block), as ggml defines them
BLOCKS = {"Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
          "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210)}
SUPPORTED = ("F32", "F16", "BF16", *BLOCKS)


class GGUFError(WeightsError):
    """A GGUF file this pack cannot use (names the tensor / type and what to pick instead)."""


class QuantizedWeight:
    """A quantized tensor as stored: ``data`` uint8 ``[rows, bytes per row]``, its ggml type name
    and its logical torch ``shape``. Has ``shape`` / ``dtype`` like a tensor so key checks and
    config readers treat it as one; :meth:`dequantize` gives the float tensor."""

    def __init__(self, data: torch.Tensor, qtype: str, shape: tuple[int, ...]):
        self.data, self.qtype, self.shape = data, qtype, torch.Size(shape)

    dtype = torch.uint8
    is_meta = False

    def is_floating_point(self) -> bool:
        return False

    @property
    def device(self) -> torch.device:
        return self.data.device

    def to(self, device=None, *args, **kwargs) -> "QuantizedWeight":
        if isinstance(device, torch.dtype):  # a dtype cast never applies to raw blocks
            return self
        return QuantizedWeight(self.data.to(device) if device is not None else self.data, self.qtype, self.shape)

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return dequantize(self.data, self.qtype, self.shape, dtype)

    def __repr__(self) -> str:
        return f"QuantizedWeight({self.qtype}, shape={tuple(self.shape)})"


# ------------------------------------------------------------------------------ reading
def read_gguf(path: Path) -> dict:
    """``{name: tensor or QuantizedWeight}`` of a GGUF file plus the :data:`GGUF_MARKER` key.
    F32 / F16 / BF16 tensors come back as torch tensors of that dtype."""
    import gguf

    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError / struct errors on foreign files
        raise GGUFError(f"{path.name}: not a readable GGUF file ({exc})") from exc
    arch = _string_field(reader, "general.architecture")
    if arch not in (None, "wan"):
        raise GGUFError(f"{path.name}: a GGUF of architecture '{arch}', not a Wan DiT; pick a Wan2.1 GGUF "
                        f"(e.g. city96's Wan2.1-*-14B-*.gguf) in the diffusion_models (or unet) folder")
    out: dict = {GGUF_MARKER: torch.zeros(0, dtype=torch.uint8)}
    for tensor in reader.tensors:
        qtype = tensor.tensor_type.name
        shape = _orig_shape(reader, tensor.name) or tuple(int(v) for v in reversed(tensor.shape))
        with warnings.catch_warnings():  # the memory map is read-only; nothing here writes to it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            raw = torch.from_numpy(tensor.data)
        if qtype == "F32":
            out[tensor.name] = raw.view(torch.float32).reshape(shape)
        elif qtype == "F16":
            out[tensor.name] = raw.view(torch.float16).reshape(shape)
        elif qtype == "BF16":
            out[tensor.name] = raw.view(torch.uint8).view(torch.bfloat16).reshape(shape)
        elif qtype in BLOCKS:
            out[tensor.name] = QuantizedWeight(raw.view(torch.uint8).reshape(-1, _row_bytes(qtype, shape)), qtype, shape)
        else:
            raise GGUFError(f"{path.name}: tensor {tensor.name} is {qtype}, which this pack does not read "
                            f"(supported: {', '.join(SUPPORTED)}); pick a Q8_0, Q6_K, Q5_K_M, Q4_K_M or Q4_0 file")
    return out


def _string_field(reader, name: str) -> str | None:
    field = reader.get_field(name)
    if field is None:
        return None
    return bytes(field.parts[field.data[-1]]).decode("utf-8")


def _orig_shape(reader, name: str) -> tuple[int, ...] | None:
    field = reader.get_field(f"comfy.gguf.orig_shape.{name}")
    if field is None:
        return None
    return tuple(int(field.parts[i][0]) for i in field.data)


def _row_bytes(qtype: str, shape) -> int:
    block, size = BLOCKS[qtype]
    if shape[-1] % block:
        raise GGUFError(f"a {qtype} tensor's last dimension must be a multiple of {block}, got {tuple(shape)}")
    return shape[-1] // block * size


# ------------------------------------------------------------------------- dequantization
def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The little-endian float16 at byte ``start`` of each block, as float32 ``[n, 1]``."""
    return blocks[:, start:start + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """``[n, k]`` bytes -> ``[n, 2k]`` 4-bit values: all low nibbles, then all high nibbles."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=1)


def _bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Bit ``j`` of a little-endian bit field, for ``j < count``: ``[n, count]`` of 0/1."""
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    return ((packed.unsqueeze(-1) >> shifts) & 1).flatten(1)[:, :count]


def _scale_min_k4(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 six-bit (scale, min) pairs packed in a k-quant's 12 bytes (ggml ``get_scale_min_k4``)."""
    s = scales.to(torch.int32)
    sc_lo, m_lo = s[:, 0:4] & 63, s[:, 4:8] & 63
    sc_hi = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    m_hi = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return torch.cat([sc_lo, sc_hi], 1).float(), torch.cat([m_lo, m_hi], 1).float()


def _dequant_blocks(b: torch.Tensor, qtype: str) -> torch.Tensor:
    """``[n, bytes per block]`` uint8 -> ``[n, values per block]`` float32."""
    if qtype == "Q8_0":
        return _f16(b, 0) * b[:, 2:].contiguous().view(torch.int8).float()
    if qtype == "Q4_0":
        return _f16(b, 0) * (_nibbles(b[:, 2:]).float() - 8)
    if qtype == "Q4_1":
        return _f16(b, 0) * _nibbles(b[:, 4:]).float() + _f16(b, 2)
    if qtype in ("Q5_0", "Q5_1"):
        off = 2 if qtype == "Q5_0" else 4
        q = _nibbles(b[:, off + 4:]) | (_bits(b[:, off:off + 4], 32) << 4)
        if qtype == "Q5_0":
            return _f16(b, 0) * (q.float() - 16)
        return _f16(b, 0) * q.float() + _f16(b, 2)
    if qtype in ("Q4_K", "Q5_K"):
        d, dmin = _f16(b, 0), _f16(b, 2)
        sc, mn = _scale_min_k4(b[:, 4:16])
        qs = b[:, 16:] if qtype == "Q4_K" else b[:, 48:]
        # 4 chunks of 32 bytes: low nibbles -> sub-block 2i, high nibbles -> sub-block 2i+1
        q = torch.stack([qs.reshape(-1, 4, 32) & 0x0F, qs.reshape(-1, 4, 32) >> 4], dim=2).reshape(-1, 8, 32)
        if qtype == "Q5_K":  # bit 2i / 2i+1 of qh[l] is the fifth bit of element l of sub-block 2i / 2i+1
            qh = b[:, 16:48]
            high = (qh.unsqueeze(1) >> torch.arange(8, device=b.device, dtype=torch.uint8).view(1, 8, 1)) & 1
            q = q | (high << 4)
        return (d.unsqueeze(-1) * sc.unsqueeze(-1) * q.float() - dmin.unsqueeze(-1) * mn.unsqueeze(-1)).reshape(-1, QK_K)
    if qtype == "Q6_K":
        ql, qh = b[:, :128].reshape(-1, 2, 64), b[:, 128:192].reshape(-1, 2, 32)
        scales = b[:, 192:208].contiguous().view(torch.int8).float().reshape(-1, 2, 8)
        d = _f16(b, 208).unsqueeze(-1)
        lo = torch.stack([ql[..., :32] & 0x0F, ql[..., 32:] & 0x0F, ql[..., :32] >> 4, ql[..., 32:] >> 4], dim=2)
        hi = torch.stack([(qh >> s) & 3 for s in (0, 2, 4, 6)], dim=2)
        q = ((lo | (hi << 4)).to(torch.int16) - 32).float()  # [n, 2 halves, 4 quarters, 32]
        # 16 values share a scale: quarter k of half h, elements l in [16j, 16j+16) use scale 8h + 2k + j
        sc = scales.reshape(-1, 2, 4, 2).repeat_interleave(16, dim=-1)
        return (d.unsqueeze(-1) * sc * q).reshape(-1, QK_K)
    raise GGUFError(f"GGUF type {qtype} is not supported (supported: {', '.join(SUPPORTED)})")


def dequantize(data: torch.Tensor, qtype: str, shape, dtype=torch.float32) -> torch.Tensor:
    """Raw GGUF blocks (uint8, any leading shape) -> a ``shape`` tensor of ``dtype`` on their device."""
    _, size = BLOCKS[qtype]
    blocks = data.reshape(-1, size)
    return _dequant_blocks(blocks, qtype).reshape(tuple(shape)).to(dtype)


def numpy_reference(data: np.ndarray, qtype: str) -> np.ndarray:
    """gguf's own numpy dequantizer (for tests and checks)."""
    import gguf

    return gguf.quants.dequantize(data, gguf.GGMLQuantizationType[qtype])


# ------------------------------------------------------------------------------- modules
class GGUFLinear(nn.Module):
    """``nn.Linear`` look-alike whose weight stays in GGUF blocks (buffer ``gguf_weight``), unpacked
    into the input's dtype on the input's device at every call; ``.to(dtype)`` keeps the blocks."""

    def __init__(self, weight: QuantizedWeight, bias: bool | torch.Tensor = True):
        super().__init__()
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.qtype = weight.qtype
        self.register_buffer("gguf_weight", weight.data)
        if isinstance(bias, torch.Tensor):
            self.bias = nn.Parameter(bias, requires_grad=False)
        else:  # filled by ``load_state_dict(..., assign=True)`` with the rest of the model
            self.bias = nn.Parameter(torch.empty(self.out_features, device="meta"), requires_grad=False) if bias else None

    @property
    def weight_shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    def dequantized_weight(self, dtype=torch.float32, device=None) -> torch.Tensor:
        data = self.gguf_weight if device is None else self.gguf_weight.to(device, non_blocking=True)
        return dequantize(data, self.qtype, self.weight_shape, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.dequantized_weight(x.dtype, x.device)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, qtype={self.qtype}"


def quantize_q8_0(weight: torch.Tensor) -> QuantizedWeight:
    """A float tensor as GGUF Q8_0 blocks, in torch on its device (ggml's reference rounding:
    ``d = amax / 127`` per 32 values, ``q = round(x / d)``); the benchmark uses it to turn a
    random bf16 model into a Q8_0 one without files."""
    rows = weight.detach().float().reshape(-1, 32)
    d = rows.abs().amax(dim=1, keepdim=True) / 127
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    q = torch.round(rows * inv).clamp(-127, 127).to(torch.int8)
    packed = torch.cat([d.to(torch.float16).view(torch.uint8), q.view(torch.uint8)], dim=1)
    shape = tuple(weight.shape)
    return QuantizedWeight(packed.reshape(shape[0], -1), "Q8_0", shape)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def take_quantized(sd: dict) -> dict[str, QuantizedWeight]:
    """Pop the quantized entries (and the marker) out of a converted state dict."""
    sd.pop(GGUF_MARKER, None)
    return {k: sd.pop(k) for k in [k for k, v in sd.items() if isinstance(v, QuantizedWeight)]}


def install_gguf_layers(model: nn.Module, quantized: dict[str, QuantizedWeight], sd: dict, dtype: torch.dtype,
                        source: str = "") -> list[str]:
    """Swap the Linear layers whose weight is quantized for :class:`GGUFLinear` (their biases stay
    in ``sd`` and load with the rest); a quantized weight of any other module is dequantized into
    ``sd`` instead. Returns the swapped layer names. Call on the meta-built model, before loading."""
    swapped = []
    for key, weight in quantized.items():
        module_name, _, leaf = key.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            module = None
        if type(module) is nn.Linear and leaf == "weight":
            if tuple(weight.shape) != (module.out_features, module.in_features):
                raise GGUFError(f"{source}: {key} is {tuple(weight.shape)} in the file, the model expects "
                                f"{(module.out_features, module.in_features)}; pick a GGUF of this model")
            _set_submodule(model, module_name, GGUFLinear(weight, module.bias is not None))
            swapped.append(module_name)
        else:
            sd[key] = weight.dequantize(dtype)
    return swapped


def gguf_summary(model: nn.Module) -> dict[str, int]:
    """How many layers of each GGUF type a model holds (for loader info lines)."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, GGUFLinear):
            counts[module.qtype] = counts.get(module.qtype, 0) + 1
    return counts
