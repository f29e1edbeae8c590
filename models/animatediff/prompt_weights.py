"""ComfyUI/A1111 prompt weighting for SD1.5: ``(text)``, ``(text:1.3)``, 77-token chunks.

Why: the hosted endpoint's default negative prompt uses this syntax, and users bring
prompts written for ComfyUI, so weights must be parsed, chunked and applied exactly
as ComfyUI does (reference: tests/fixtures/reference/animatediff/prompt_weights.json,
README section 4). The tokenizer is any callable returning ``{"input_ids": [...]}``
with start and end tokens (a transformers ``CLIPTokenizer``).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

START_TOKEN = 49406
END_TOKEN = 49407
PAD_TOKEN = 49407
MAX_LENGTH = 77
MAX_WORD_LENGTH = 8  # segments this long may be split across chunks
EMBEDDING_PREFIX = "embedding:"

_ESC_CLOSE, _ESC_OPEN = "\0\1", "\0\2"


def escape_important(text: str) -> str:
    """Hide ``\\(`` and ``\\)`` from the parser (they are literal parentheses)."""
    return text.replace("\\)", _ESC_CLOSE).replace("\\(", _ESC_OPEN)


def unescape_important(text: str) -> str:
    return text.replace(_ESC_CLOSE, ")").replace(_ESC_OPEN, "(")


def parse_parentheses(text: str) -> list[str]:
    """Split into top-level pieces: plain runs and balanced ``( ... )`` groups.

    An unmatched ``)`` only lowers the depth (its text stays in the current piece);
    an unmatched ``(`` leaves the rest of the string as one piece.
    """
    pieces: list[str] = []
    current = ""
    depth = 0
    for ch in text:
        if ch == "(":
            if depth == 0:
                if current:
                    pieces.append(current)
                current = "("
            else:
                current += ch
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                pieces.append(current + ")")
                current = ""
            else:
                current += ch
        else:
            current += ch
    if current:
        pieces.append(current)
    return pieces


def _parse_weight(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def token_weights(text: str, weight: float) -> list[tuple[str, float]]:
    """(segment, weight) pairs: ``(x)`` multiplies by 1.1, ``(x:w)`` sets ``w`` absolutely."""
    out: list[tuple[str, float]] = []
    for piece in parse_parentheses(text):
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner = piece[1:-1]
            inner_weight = weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                explicit = _parse_weight(inner[colon + 1 :])
                if explicit is not None:
                    inner_weight = explicit
                    inner = inner[:colon]
            out.extend(token_weights(inner, inner_weight))
        else:
            out.append((piece, weight))
    return out


def segments(text: str) -> list[tuple[str, float]]:
    """The weighted segments ComfyUI tokenises, escapes resolved."""
    return [(unescape_important(seg), w) for seg, w in token_weights(escape_important(text), 1.0)]


@dataclass
class Chunk:
    """One 77-token CLIP input with per-token weights and word ids (0 = special token)."""

    ids: list[int]
    weights: list[float]
    word_ids: list[int]


def _words(segment: str) -> list[str]:
    """ComfyUI tokenises a segment piecewise, split before each ``embedding:`` name."""
    parts = re.split(" {0}|\n{0}".format(EMBEDDING_PREFIX), segment)
    words = [parts[0]] + [EMBEDDING_PREFIX + p for p in parts[1:]]
    return [w for w in words if w != ""]


def tokenize_with_weights(text: str, tokenizer) -> list[Chunk]:
    """Weighted 77-token chunks, as ComfyUI's ``SDTokenizer.tokenize_with_weights``.

    Each word group is BPE-tokenised without start/end tokens. A group of
    ``MAX_WORD_LENGTH`` or more tokens is split at a chunk boundary; a shorter group
    that does not fit moves whole to the next chunk (the current one is closed and
    padded).
    """
    groups: list[list[tuple[int, float]]] = []
    for seg, weight in segments(text):
        for word in _words(seg):
            ids = list(tokenizer(word)["input_ids"])[1:-1]
            groups.append([(int(t), weight) for t in ids])

    room = MAX_LENGTH - 1  # keep one place for the end token
    chunks: list[list[tuple[int, float, int]]] = [[(START_TOKEN, 1.0, 0)]]
    for word_id, group in enumerate(groups, start=1):
        large = len(group) >= MAX_WORD_LENGTH
        while group:
            chunk = chunks[-1]
            if len(chunk) + len(group) > room:
                free = room - len(chunk)
                if large:
                    chunk.extend((t, w, word_id) for t, w in group[:free])
                    chunk.append((END_TOKEN, 1.0, 0))
                    group = group[free:]
                else:
                    chunk.append((END_TOKEN, 1.0, 0))
                    chunk.extend([(PAD_TOKEN, 1.0, 0)] * free)
                chunks.append([(START_TOKEN, 1.0, 0)])
            else:
                chunk.extend((t, w, word_id) for t, w in group)
                group = []
    last = chunks[-1]
    last.append((END_TOKEN, 1.0, 0))
    last.extend([(PAD_TOKEN, 1.0, 0)] * (MAX_LENGTH - len(last)))
    return [Chunk([t for t, _, _ in c], [w for _, w, _ in c], [i for _, _, i in c]) for c in chunks]


def empty_chunk() -> list[int]:
    return [START_TOKEN] + [END_TOKEN] * (MAX_LENGTH - 1)


def _run_text_encoder(text_encoder, ids: torch.Tensor, clip_skip: int) -> torch.Tensor:
    """Last layer (clip_skip 1) or an earlier one, always through the final LayerNorm."""
    if clip_skip <= 1:
        return text_encoder(ids).last_hidden_state
    out = text_encoder(ids, output_hidden_states=True)
    hidden = out.hidden_states[-clip_skip]
    model = getattr(text_encoder, "text_model", text_encoder)
    return model.final_layer_norm(hidden)


@torch.no_grad()
def encode_weighted(text: str, tokenizer, text_encoder, clip_skip: int = 1) -> torch.Tensor:
    """Prompt -> [1, 77*K, dim] conditioning with ComfyUI's weighting.

    Tokens with weight w != 1 become ``(z - z_empty) * w + z_empty`` where z_empty is
    the encoding of the empty prompt at the same position; no mean re-normalisation.
    """
    chunks = tokenize_with_weights(text, tokenizer)
    weighted = any(w != 1.0 for c in chunks for w in c.weights)
    rows = [c.ids for c in chunks] + ([empty_chunk()] if weighted else [])
    device = next(text_encoder.parameters()).device
    z = _run_text_encoder(text_encoder, torch.tensor(rows, device=device), clip_skip).float()
    out = []
    for k, chunk in enumerate(chunks):
        zk = z[k].clone()
        if weighted:
            w = torch.tensor(chunk.weights, dtype=zk.dtype, device=zk.device)[:, None]
            z_empty = z[-1]
            zk = torch.where(w != 1.0, (zk - z_empty) * w + z_empty, zk)
        out.append(zk)
    return torch.cat(out, dim=0)[None]


def pair_for_batching(cond: torch.Tensor, uncond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Make cond/uncond the same length so they can share one UNet call, or None.

    Repeating a prompt's tokens leaves cross-attention unchanged; ComfyUI does this up
    to 4x the shorter length (``CONDCrossAttn.concat``), beyond that it runs them apart.
    """
    a, b = cond.shape[1], uncond.shape[1]
    if a == b:
        return cond, uncond
    lcm = a * b // math.gcd(a, b)
    if lcm > 4 * min(a, b):
        return None
    return cond.repeat(1, lcm // a, 1), uncond.repeat(1, lcm // b, 1)
