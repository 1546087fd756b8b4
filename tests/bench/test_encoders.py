"""bench.encoders: the random encoders of real shapes the precision benchmarks time.

Deliberately not checked: the full-size shapes' weights (a tiny shape stands in; the benchmarks'
quick runs build the real ones).
"""

from __future__ import annotations

import torch

from bench import encoders
from bench.common import DEFAULT_CHECKPOINT
from model import BertConfig, BertForMaskedLM


def test_the_shapes_are_minilm_and_bert_base():
    assert encoders.ENCODER_SHAPES == {"mini": (6, 384, 12, 1536), "base": (12, 768, 12, 3072)}


def test_random_encoder_is_a_seeded_checkpoint_with_the_shipped_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setitem(encoders.ENCODER_SHAPES, "tiny", (2, 32, 2, 64))
    first = encoders.random_encoder("tiny", tmp_path / "a")
    second = encoders.random_encoder("tiny", tmp_path / "b")
    assert first == tmp_path / "a" / "tiny"
    for f in ("vocab.txt", "tokenizer_config.json"):
        assert (first / f).read_bytes() == (DEFAULT_CHECKPOINT / f).read_bytes()
    a, b = (BertForMaskedLM.from_pretrained(p) for p in (first, second))
    assert encoders.shape_label(a.config) == "L2 H32 A2 I64"
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, msg=name)


def test_shape_label():
    config = BertConfig(
        vocab_size=100,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
    )
    assert encoders.shape_label(config) == "L6 H384 A12 I1536"
