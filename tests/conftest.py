"""Shared fixtures: a small vocabulary trained once per session from the bundled corpus."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
# Every server a test starts (in process or as a subprocess) computes in fp32, so answers compare
# with transformers' at fp32 tolerances on any machine; the precision tests ask for others.
os.environ.setdefault("BERT_SERVE_PRECISION", "fp32")


@pytest.fixture(scope="session")
def corpus_sample(tmp_path_factory) -> Path:
    """The first 3,000 WordNet and 1,000 Python-docs training lines, as one file."""
    out = tmp_path_factory.mktemp("corpus") / "sample.txt"
    lines = []
    for name, n in (("wordnet.train.txt", 3000), ("pydocs.train.txt", 1000)):
        with open(DATA / name, encoding="utf-8") as fh:
            lines += [next(fh) for _ in range(n)]
    out.write_text("".join(lines), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def small_vocab_dir(tmp_path_factory, corpus_sample) -> Path:
    """A 2,000-token uncased vocabulary learned from `corpus_sample`, saved as a tokenizer dir."""
    from tokenization import WordPieceTokenizer

    out = tmp_path_factory.mktemp("vocab")
    WordPieceTokenizer.train([corpus_sample], vocab_size=2000, min_frequency=2).save_pretrained(out)
    return out


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread (tiny models are fastest so, and a busy shared machine
    makes multi-threaded tiny ops stall on synchronisation), restoring the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
