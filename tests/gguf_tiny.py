"""Tiny GGUF files in ComfyUI-GGUF's layout, written with the ``gguf`` package (reusable by other areas).

Rules of city96's convert.py: original tensor names, ``general.architecture = "wan"``; 1-D tensors,
tensors of <= 1024 values, ``.modulation`` and 5-D tensors stay F32; the rest gets the asked type.
gguf's numpy quantizer covers Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 / BF16 / F16; for the k-quants
(which it can only dequantize) the blocks are random bytes with small finite scales, so every bit
of the format is exercised. ``dequantized_sd`` gives the weights as gguf's numpy reader sees them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

QUANTIZER_TYPES = ("F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
RANDOM_BLOCK_TYPES = {"Q4_K": (144, (0, 2)), "Q5_K": (176, (0, 2)), "Q6_K": (210, (208,))}  # bytes, f16 scale offsets


def _keep_f32(name: str, array: np.ndarray) -> bool:
    return array.ndim == 1 or array.size <= 1024 or ".modulation" in name or array.ndim > 4


def random_k_blocks(qtype: str, rows: int, cols: int, seed: int) -> np.ndarray:
    """``[rows, cols // 256 * bytes]`` uint8 of random k-quant blocks with finite small scales."""
    size, scale_offsets = RANDOM_BLOCK_TYPES[qtype]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(rows * cols // 256, size), dtype=np.uint8)
    scale = {"Q4_K": 2e-4, "Q5_K": 1e-4, "Q6_K": 2e-5}[qtype]
    for off in scale_offsets:
        d = (np.abs(rng.standard_normal(blocks.shape[0])) * scale).astype(np.float16)
        blocks[:, off:off + 2] = d.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


def write_gguf(path: Path, sd: dict, qtype: str, prefix: str = "", seed: int = 0) -> Path:
    """Write ``sd`` (float tensors) as a GGUF whose 2-D weights are ``qtype``."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="wan")
    for i, (name, tensor) in enumerate(sorted(sd.items())):
        array = tensor.detach().float().numpy()
        key = prefix + name
        target = gguf.GGMLQuantizationType[qtype]
        if _keep_f32(name, array):
            writer.add_tensor(key, array)
        elif qtype in RANDOM_BLOCK_TYPES:
            if array.shape[-1] % 256:
                writer.add_tensor(key, gguf.quants.quantize(array, gguf.GGMLQuantizationType.F16),
                                  raw_dtype=gguf.GGMLQuantizationType.F16)
            else:
                blocks = random_k_blocks(qtype, array.shape[0], array.shape[1], seed + i)
                writer.add_tensor(key, blocks, raw_shape=blocks.shape, raw_dtype=target)
        else:
            try:
                writer.add_tensor(key, gguf.quants.quantize(array, target), raw_dtype=target)
            except gguf.QuantError:  # rows not a whole number of blocks: F16, as convert.py falls back
                f16 = gguf.GGMLQuantizationType.F16
                writer.add_tensor(key, gguf.quants.quantize(array, f16), raw_dtype=f16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def dequantized_sd(path: Path) -> dict:
    """Float32 state dict of a GGUF as gguf's own numpy dequantizer reads it (the reference)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        shape = tuple(int(v) for v in reversed(t.shape))
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name] = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(shape)
    return out
