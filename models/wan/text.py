"""Prompt encoding for Wan2.1 with UMT5, following the Wan convention.

Prompts are cleaned (ftfy when installed, HTML entities unescaped twice,
whitespace collapsed), tokenised to exactly 512 tokens (padded, truncated, end
token added), and run through the encoder with the attention mask. The
embeddings of the real tokens are kept and every padding position is set to
zero, so the transformer's cross-attention sees zero rows after the prompt
(Wan2.1's T5 code and diffusers' WanPipeline both do this; the models were
trained with it).
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Sequence

import torch

from ..runtime.placement import Placement

TEXT_LENGTH = 512

# Wan2.1's default negative prompt (wan/configs/shared_config.py, sample_neg_prompt).
WAN_DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


def clean_prompt(text: str) -> str:
    """Wan's prompt clean-up: ftfy (if installed), double HTML unescape, whitespace collapse."""
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a string, got {type(text).__name__}.")
    try:
        import ftfy  # optional, as in the reference pipelines

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


@dataclass
class WanPromptEmbeds:
    """What the prompt-encoding node hands to the samplers.

    ``positive``/``negative``: ``[1, 512, dim]`` float tensors on the CPU with zero
    rows after the real tokens; ``*_length``: number of real tokens (incl. end token).
    """

    positive: torch.Tensor
    negative: torch.Tensor
    positive_text: str
    negative_text: str
    positive_length: int
    negative_length: int

    def to(self, device=None, dtype=None) -> "WanPromptEmbeds":
        return WanPromptEmbeds(
            self.positive.to(device=device, dtype=dtype),
            self.negative.to(device=device, dtype=dtype),
            self.positive_text,
            self.negative_text,
            self.positive_length,
            self.negative_length,
        )


class WanTextEncoder:
    """UMT5 encoder + tokenizer with a placement (moved in for encoding, offloaded after)."""

    def __init__(self, encoder, tokenizer, device="cpu", dtype: torch.dtype = torch.float32, offload_device="cpu", offload_after_use: bool = True, max_length: int = TEXT_LENGTH, manager=None):
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.max_length = int(max_length)
        self.placement = Placement(encoder, device, offload_device, offload_after_use, dtype=dtype, manager=manager)

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embeddings [B, max_length, dim] float32 on CPU, lengths [B])``; padding rows are zero."""
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        with self.placement.use() as encoder:
            return self._encode(encoder, texts)

    def _encode(self, encoder, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(
            [clean_prompt(t) for t in texts],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        lengths = mask.gt(0).sum(dim=1).long()
        hidden = encoder(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
        hidden = hidden.float().cpu()
        keep = torch.arange(hidden.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        hidden = torch.where(keep.unsqueeze(-1), hidden, torch.zeros((), dtype=hidden.dtype))
        return hidden, lengths

    def token_count(self, text: str) -> int:
        """UMT5 tokens of ``text`` as encoded (end token included), before the cut to ``max_length``."""
        return len(self.tokenizer(clean_prompt(text), add_special_tokens=True)["input_ids"])

    @torch.no_grad()
    def encode_pair(self, prompt: str, negative_prompt: str) -> WanPromptEmbeds:
        """Both prompts, each in its own encoder call (as the reference pipelines), one device round trip."""
        with self.placement.use() as encoder:
            pos, pos_len = self._encode(encoder, [prompt])
            neg, neg_len = self._encode(encoder, [negative_prompt])
        return WanPromptEmbeds(pos, neg, prompt, negative_prompt, int(pos_len[0]), int(neg_len[0]))

    def release(self) -> None:
        self.placement.release()
