"""Prompt weighting against ComfyUI's recorded parsing and chunking (README section 4)."""
import json
from pathlib import Path

import pytest
import torch

from poseanimate.models.animatediff import prompt_weights as pw

REF = Path(__file__).parent / "fixtures" / "reference" / "animatediff" / "prompt_weights.json"
CASES = json.loads(REF.read_text())["cases"]
IDS = [f"case{i}" for i in range(len(CASES))]


def _tokenizer():
    from poseanimate.models.animatediff import sd15_checkpoint

    return sd15_checkpoint.load_clip_tokenizer()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_segments(case):
    got = pw.segments(case["prompt"])
    assert [list(s) for s in got] == case["segments"]
    # weights are exact Python floats (e.g. 1.1 * 1.1 = 1.2100000000000002)
    assert all(type(w) is float for _, w in got)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_parse_parentheses(case):
    text = pw.escape_important(case["prompt"])
    got = [pw.unescape_important(p) for p in pw.parse_parentheses(text)]
    assert got == case["parse_parentheses_top_level"]


def test_rules_from_readme():
    assert pw.segments("((a cat:1.5))") == [("a cat", 1.5)]
    assert pw.segments("(:1.5)") == [(":1.5", 1.1)]
    assert pw.segments("()") == []
    assert pw.segments("[x]") == [("[x]", 1.0)]
    assert pw.segments(pw.escape_important("\\(lit\\)")) == [("(lit)", 1.0)]


@pytest.fixture(scope="module")
def tokenizer():
    return _tokenizer()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_chunks_match_comfyui(case, tokenizer):
    chunks = pw.tokenize_with_weights(case["prompt"], tokenizer)
    assert len(chunks) == case["num_chunks"] == len(case["chunks"])
    for got, want in zip(chunks, case["chunks"]):
        assert len(got.ids) == 77
        assert got.ids == want["ids"]
        assert got.weights == want["weights"]
        assert got.word_ids == want["word_ids"]


def test_empty_prompt_gives_one_chunk(tokenizer):
    (chunk,) = pw.tokenize_with_weights("", tokenizer)
    assert chunk.ids == [49406] + [49407] * 76
    assert chunk.weights == [1.0] * 77


class _FakeTokenizer:
    """Deterministic stand-in: one token per character (start/end added like CLIP)."""

    def __call__(self, text):
        return {"input_ids": [49406] + [100 + (ord(c) % 1000) for c in text] + [49407]}


def test_chunking_rules_without_bpe():
    tok = _FakeTokenizer()
    # a short segment that does not fit moves whole to the next chunk
    text = "a" * 70 + "(bcdefg:1.5)"
    c1, c2 = pw.tokenize_with_weights(text, tok)
    assert c1.ids[71] == 49407 and c1.weights[71] == 1.0
    assert c2.ids[1:7] == [100 + ord(c) for c in "bcdefg"] and c2.weights[1:7] == [1.5] * 6
    # a segment of >= 8 tokens is split at the boundary
    c1, c2 = pw.tokenize_with_weights("a" * 70 + "(bcdefghij:1.5)", tok)
    assert c1.ids[71:76] == [100 + ord(c) for c in "bcdef"] and c1.ids[76] == 49407
    assert c2.ids[1:5] == [100 + ord(c) for c in "ghij"]


class _TinyTE(torch.nn.Module):
    """Position-aware fake text encoder: z[j] depends on token and position."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Parameter(torch.randn(50000, 8, generator=g))
        self.pos = torch.nn.Parameter(torch.randn(77, 8, generator=g))

    def forward(self, ids, output_hidden_states=False):
        class Out:
            pass

        o = Out()
        o.last_hidden_state = torch.tanh(self.emb[ids] + self.pos[None] + self.emb[ids].cumsum(1) * 0.1)
        return o


def test_weighted_encode_formula():
    tok, te = _FakeTokenizer(), _TinyTE()
    plain = pw.encode_weighted("abc", tok, te)
    weighted = pw.encode_weighted("(abc:1.5)", tok, te)
    empty = te(torch.tensor([pw.empty_chunk()])).last_hidden_state[0]
    assert plain.shape == (1, 77, 8)
    want = plain[0].clone()
    want[1:4] = (plain[0, 1:4] - empty[1:4]) * 1.5 + empty[1:4]
    assert torch.allclose(weighted[0], want, atol=1e-6)
    # unit weights: no empty-prompt pass and nothing changes
    assert torch.equal(pw.encode_weighted("abc", tok, te), plain)
    # two chunks concatenate along the sequence axis
    assert pw.encode_weighted("a" * 80, tok, te).shape == (1, 154, 8)


def test_pair_for_batching():
    a, b = torch.zeros(1, 77, 4), torch.ones(1, 154, 4)
    ca, cb = pw.pair_for_batching(a, b)
    assert ca.shape == cb.shape == (1, 154, 4)
    assert pw.pair_for_batching(torch.zeros(1, 77 * 5, 4), torch.zeros(1, 77 * 7, 4)) is None
