"""The shipped checkpoint (`checkpoints/default`): the contract with transformers and its card.

What `make serve` answers must be what `transformers` computes from the same directory, opened
with the Auto classes and nothing else (a rotary checkpoint is a RoFormerForMaskedLM, a learned-
position one a BertForMaskedLM), and the directory stays small enough to ship in git.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from model import BertForMaskedLM
from tokenization import WordPieceTokenizer

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

DEFAULT = Path(__file__).resolve().parents[2] / "checkpoints" / "default"
TEXTS = [
    "of or [MASK] to the study of plants.",
    "the cat sat on the [MASK].",
    "Return a new [MASK] containing the items of the iterable.",
]


def test_default_checkpoint_opens_unchanged_in_transformers(one_torch_thread):
    ours = BertForMaskedLM.from_pretrained(DEFAULT)
    hf = transformers.AutoModelForMaskedLM.from_pretrained(DEFAULT).eval()
    arch = json.loads((DEFAULT / "config.json").read_text())["architectures"][0]
    assert type(hf).__name__ == arch
    hf_tok = transformers.AutoTokenizer.from_pretrained(DEFAULT)
    tok = WordPieceTokenizer.from_pretrained(DEFAULT)
    assert len(hf_tok) == tok.vocab_size == ours.config.vocab_size
    batch = hf_tok(TEXTS, padding=True, return_tensors="pt")
    for text, ids in zip(TEXTS, batch["input_ids"], strict=True):
        n = int((ids != hf_tok.pad_token_id).sum())
        assert ids[:n].tolist() == tok.encode(text).ids
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        ref = hf(**batch).logits
        out = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
        # fp32, as served: trained logits reach |20|, so the two implementations' different
        # summation orders (fused QKV, SDPA, complex rotary) differ by a few 1e-5 in absolute
        # terms; probabilities agree to 1e-5.
        assert_close(out[real].softmax(-1), ref[real].softmax(-1), atol=1e-5, rtol=0)
        assert (out[real].argmax(-1) == ref[real].argmax(-1)).all()
        # float64 removes the accumulated rounding: logits then agree to ~1e-6 (what is left is
        # the float32 sinusoid table RoFormer builds, against our angles), well inside 1e-5.
        ref64 = hf.double()(**batch).logits
        out64 = ours.double()(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert_close(out64.logits[real], ref64[real], atol=1e-5, rtol=0)


def test_default_checkpoint_is_small_and_documented():
    size = sum(p.stat().st_size for p in DEFAULT.rglob("*") if p.is_file())
    assert size < 30 * 2**20, f"checkpoints/default is {size / 2**20:.1f} MB (limit 30 MB)"
    card = (DEFAULT / "README.md").read_text(encoding="utf-8")
    assert "bert-train" in card and "curves.png" in card
