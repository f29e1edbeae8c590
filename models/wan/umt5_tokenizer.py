"""The UMT5 tokenizer, from wherever the user's files carry it.

Why: the official release ships ``google/umt5-xxl/`` (tokenizer.json etc.), diffusers folders ship
``tokenizer/``; ComfyUI ships no UMT5 tokenizer files at all but stores the serialised
SentencePiece model as a uint8 tensor ``spiece_model`` inside ``umt5_xxl_*.safetensors`` and
tokenizes with SentencePiece directly (appending ``</s>``). Folders load through transformers;
a bare SentencePiece model is wrapped here with the same call signature, so callers write
``tok(texts, padding="max_length", max_length=512, truncation=True, return_tensors="pt")``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..runtime.weights import WanWeightsError

TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")


class SentencePieceTokenizer:
    """UMT5 tokenization straight from a SentencePiece model (pad 0, eos 1, as ComfyUI does)."""

    def __init__(self, model_proto: bytes):
        try:
            import sentencepiece
        except ImportError as exc:  # pragma: no cover - listed in requirements
            raise WanWeightsError("the 'sentencepiece' package is needed to read this UMT5 "
                                  "tokenizer; pip install sentencepiece") from exc
        self.sp = sentencepiece.SentencePieceProcessor(model_proto=bytes(model_proto))
        self.pad_token_id = max(self.sp.pad_id(), 0)
        self.eos_token_id = self.sp.eos_id()
        if self.eos_token_id < 0:
            raise WanWeightsError("the SentencePiece model has no end-of-sequence token; it is "
                                  "not a UMT5 tokenizer")
        self.model_max_length = 512

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.sp.encode(text)
        return ids + [self.eos_token_id] if add_special_tokens else ids

    def __call__(self, text, padding=False, max_length=None, truncation=False,
                 add_special_tokens=True, return_attention_mask=True, return_tensors=None, **_):
        texts = [text] if isinstance(text, str) else list(text)
        rows = [self.encode(t, add_special_tokens) for t in texts]
        if truncation and max_length:
            rows = [r[:max_length - 1] + [r[-1]] if add_special_tokens and len(r) > max_length
                    else r[:max_length] for r in rows]
        if padding == "max_length" and max_length:
            width = max_length
        elif padding in (True, "longest"):
            width = max(map(len, rows), default=0)
        else:
            width = None
        masks = [[1] * len(r) for r in rows]
        if width is not None:
            masks = [m + [0] * (width - len(m)) for m in masks]
            rows = [r + [self.pad_token_id] * (width - len(r)) for r in rows]
        if return_tensors == "pt":
            rows, masks = torch.tensor(rows, dtype=torch.long), torch.tensor(masks, dtype=torch.long)
        elif isinstance(text, str):
            rows, masks = rows[0], masks[0]
        out = {"input_ids": rows}
        if return_attention_mask:
            out["attention_mask"] = masks
        return out

    def decode(self, ids, skip_special_tokens=True) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in (self.pad_token_id, self.eos_token_id)]
        return self.sp.decode(ids)


def has_tokenizer_files(folder: Path) -> bool:
    return folder.is_dir() and any((folder / f).is_file() for f in TOKENIZER_FILES[:2])


def load_tokenizer(source) -> object:
    """Tokenizer from a folder (tokenizer.json / spiece.model), a ``spiece.model`` /
    ``tokenizer.json`` file, serialised SentencePiece bytes, or a uint8 ``spiece_model`` tensor."""
    if torch.is_tensor(source):
        return SentencePieceTokenizer(source.cpu().numpy().tobytes())
    if isinstance(source, (bytes, bytearray)):
        return SentencePieceTokenizer(bytes(source))
    path = Path(source)
    if path.is_file():
        if path.name.endswith(".json"):
            return load_tokenizer(path.parent)
        if path.name.endswith((".safetensors", ".sft")):
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                if "spiece_model" not in f.keys():
                    raise WanWeightsError(f"{path.name} has no 'spiece_model' tensor; pick ComfyUI's "
                                          f"umt5_xxl_*.safetensors or a tokenizer folder")
                return load_tokenizer(f.get_tensor("spiece_model"))
        return SentencePieceTokenizer(path.read_bytes())
    if not has_tokenizer_files(path):
        raise WanWeightsError(f"{path}: no UMT5 tokenizer files (tokenizer.json or spiece.model)")
    if (path / "tokenizer.json").is_file():
        from transformers import AutoTokenizer
        try:
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:
            if not (path / "spiece.model").is_file():
                raise WanWeightsError(f"{path}: tokenizer files unreadable ({exc})") from exc
    return SentencePieceTokenizer((path / "spiece.model").read_bytes())
