"""Read checkpoint files into flat ``{name: tensor}`` dicts, safely, for every family.

Why a module of its own: every component (Wan DiT, VAE, UMT5, CLIP; SD1.5 checkpoints, motion
modules, LoRAs) arrives as a single file, a
sharded set with an index JSON, or a folder, in safetensors or PyTorch pickle form. Only
safetensors and ``torch.load(weights_only=True)`` are used, so a file can never run code; a pickle
that needs code is refused with an explanation instead of being trusted.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
# Container keys that some trainers wrap a flat state dict in (Lightning, EMA exports, ...).
_WRAPPER_KEYS = ("state_dict", "model", "module", "params", "ema")


class WeightsError(ValueError):
    """A weight file that cannot be used as asked: says which layout was found, the first
    missing / unexpected keys, and which file the user should pick instead."""


WanWeightsError = WeightsError  # the name the Wan families' modules and tests use


def read_state_dict(path: Path, device="cpu") -> dict[str, torch.Tensor]:
    """All tensors of ``path``: a weight file, a ``*.index.json`` of shards, or a folder holding
    either. Non-tensor entries of pickles (epoch counters, optimizer info) are dropped; ComfyUI's
    ``spiece_model`` tokenizer is a uint8 tensor and is kept."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weight path {path} does not exist")
    if path.is_dir():
        return read_state_dict(_weights_in_folder(path), device=device)
    name = path.name.lower()
    if name.endswith(".json"):
        return _read_index(path, device)
    if name.endswith(SAFETENSORS_SUFFIXES):
        return _read_safetensors(path, device)
    if name.endswith(PICKLE_SUFFIXES):
        return _read_pickle(path, device)
    if name.endswith(".gguf"):  # quantized tensors stay on the CPU until their model moves
        from .gguf import read_gguf
        return read_gguf(path)
    raise WeightsError(
        f"{path.name}: unsupported weight file type; use .safetensors (preferred), a sharded "
        f"'*.safetensors.index.json', a GGUF (.gguf), or a PyTorch '.pth/.pt/.ckpt/.bin' state dict")


def _read_safetensors(path: Path, device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types
        raise WeightsError(f"{path.name}: not a readable safetensors file ({exc})") from exc


def _read_pickle(path: Path, device) -> dict[str, torch.Tensor]:
    kwargs = dict(map_location=device, weights_only=True)
    try:
        try:
            obj = torch.load(str(path), mmap=True, **kwargs)
        except RuntimeError as exc:  # legacy (non-zip) pickles cannot be memory-mapped
            if "mmap" not in str(exc).lower():
                raise
            obj = torch.load(str(path), **kwargs)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        detail = (f"it references {found.group(1)}" if found else
                  "it uses pickle instructions that plain torch.save tensor files never need"
                  if "Unsupported operand" in str(exc) else str(exc).strip().splitlines()[0])
        raise WeightsError(
            f"{path.name}: refused to load. This pickle needs Python code or objects beyond "
            f"plain tensors to unpickle, and running code from a weight file is unsafe. Use the "
            f"safetensors version of this model, or convert it once in a trusted environment "
            f"(safetensors.torch.save_file). Detail: {detail}") from exc
    except Exception as exc:
        raise WeightsError(f"{path.name}: not a readable PyTorch checkpoint ({exc})") from exc
    return _flatten(obj, path)


def _flatten(obj, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": {...}}``-style containers and keep tensor entries only."""
    if not isinstance(obj, dict):
        raise WeightsError(f"{path.name}: holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and torch.is_tensor(v)}
    if not tensors:
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                return _flatten(obj[key], path)
        raise WeightsError(f"{path.name}: contains no tensors (top-level keys: "
                              f"{sorted(map(str, obj))[:8]})")
    return tensors


def _read_index(path: Path, device) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"{path.name}: not a shard index (needs a 'weight_map')") from exc
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = path.parent / shard
        if Path(shard).is_absolute() or ".." in Path(shard).parts:
            raise WeightsError(f"{path.name}: shard name {shard!r} leaves the folder")
        if not shard_path.is_file():
            raise WeightsError(f"{path.name}: shard {shard} is missing next to the index; "
                                  f"download every shard listed in the index")
        out.update(read_state_dict(shard_path, device=device))
    missing = [k for k in weight_map if k not in out]
    if missing:
        raise WeightsError(f"{path.name}: keys listed in the index are absent from their "
                              f"shards, first: {missing[:5]}")
    return out


def _weights_in_folder(folder: Path) -> Path:
    """The one weight entry point of a folder: an index JSON, else a single weight file."""
    indexes = sorted(folder.glob("*.safetensors.index.json")) or sorted(folder.glob("*.bin.index.json"))
    if len(indexes) == 1:
        return indexes[0]
    if len(indexes) > 1:
        raise WeightsError(f"{folder}: several shard indexes {[p.name for p in indexes]}; "
                              f"pass the one to use")
    for suffixes in (SAFETENSORS_SUFFIXES, PICKLE_SUFFIXES):
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(suffixes))
        if len(files) == 1:
            return files[0]
        if len(files) > 1:
            raise WeightsError(f"{folder}: several weight files {[p.name for p in files][:6]} "
                                  f"and no '*.index.json'; pass the file to use")
    raise WeightsError(f"{folder}: no weight files (.safetensors / index JSON / .pth) inside")
