"""Parity of our tokenizer with `transformers` (Rust-backed and legacy Python) and round trips,
single texts and sentence pairs (every truncation strategy, errors included)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from tokenization import WordPieceTokenizer

DATA = Path(__file__).resolve().parents[2] / "data"

HOSTILE = [
    "",
    " ",
    "\t\n\r  \u3000",
    "😀 hello 🥰 👨‍👩‍👧",
    "café naïve résumé e\u0301 a\u0300",
    "中文字符 and 日本語 mixed日本english한국어",
    "a\x00b\x01c\x7f d\x0be\x85f",
    "x" * 10_000,
    "ab" * 5_000 + " end",
    "Ελληνικά ΟΔΟΣ σας",
    "Привет, мир! مرحبا بالعالم",
    "hello\u200bworld a\ufffdb a\ue000b a\u00a0b a\u2028b",
    "İstanbul ǅ ﬁ ℌ𝔢𝔩𝔩𝔬",
    "[MASK] is [mask] [CLS]x[SEP]",
    "don't stop-believing... $100 & 50% off!!!",
    "trailing   ",
]


@pytest.fixture(scope="module")
def tokenizers(small_vocab_dir):
    from transformers import BertTokenizerFast
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    ours = WordPieceTokenizer.from_pretrained(small_vocab_dir)
    fast = BertTokenizerFast.from_pretrained(small_vocab_dir)
    slow = BertTokenizerLegacy.from_pretrained(small_vocab_dir)
    # transformers 5 silently falls back to a 5-token vocabulary when it misses the file.
    assert len(fast) == len(slow) == ours.vocab_size == 2000
    return ours, fast, slow


def _valid_sample(n_per_file: int = 150) -> list[str]:
    lines = []
    for name in ("wordnet.valid.txt", "pydocs.valid.txt"):
        with open(DATA / name, encoding="utf-8") as fh:
            lines += [line.rstrip("\n") for line in itertools.islice(fh, n_per_file)]
    return lines


@pytest.mark.parametrize("source", ["valid", "hostile"])
def test_ids_and_offsets_match_transformers(tokenizers, source):
    ours, fast, slow = tokenizers
    texts = _valid_sample() if source == "valid" else HOSTILE
    for text in texts:
        enc = ours.encode(text)
        ref = fast(text, return_offsets_mapping=True)
        assert enc.ids == ref["input_ids"], text[:80]
        assert enc.offsets == [tuple(o) for o in ref["offset_mapping"]], text[:80]
        assert enc.tokens == fast.convert_ids_to_tokens(ref["input_ids"])
        assert enc.ids == slow(text)["input_ids"], text[:80]


def test_pairs_and_batches_match_transformers(tokenizers):
    ours, fast, _ = tokenizers
    texts = _valid_sample(20)
    firsts, seconds = texts[:20], texts[20:]
    ref = fast(firsts, seconds, truncation="longest_first", max_length=48, padding="longest")
    encs = ours.encode_batch(firsts, seconds, truncation=True, max_length=48, padding="longest")
    assert [e.ids for e in encs] == ref["input_ids"]
    assert [e.type_ids for e in encs] == ref["token_type_ids"]
    assert [e.attention_mask for e in encs] == ref["attention_mask"]


@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second"])
def test_pair_strategies_in_batches_match_transformers(tokenizers, strategy):
    ours, fast, _ = tokenizers
    texts = _valid_sample(20)
    # A short query against long passages, so that only_second can always fit.
    firsts, seconds = [t[:30] for t in texts[:20]], texts[20:]
    if strategy == "only_first":
        firsts, seconds = seconds, firsts
    kwargs = dict(truncation=strategy, max_length=40, padding="longest")
    ref = fast(firsts, seconds, return_offsets_mapping=True, **kwargs)
    encs = ours.encode_batch(firsts, seconds, **kwargs)
    assert any(e.truncated for e in encs)
    assert [e.ids for e in encs] == ref["input_ids"]
    assert [e.type_ids for e in encs] == ref["token_type_ids"]
    assert [e.attention_mask for e in encs] == ref["attention_mask"]
    assert [e.offsets for e in encs] == [[tuple(o) for o in row] for row in ref["offset_mapping"]]
    assert [e.sequence_ids for e in encs] == [ref.sequence_ids(i) for i in range(len(encs))]


# Letters and punctuation, whole words (several tokens per text fast) and a literal [MASK].
_PAIR_TEXT = st.lists(
    st.sampled_from([*"abcdefghijklmnopqrstuvwxyz .,!?'é", " the", " cat", " running", "[MASK]"]),
    max_size=30,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    _PAIR_TEXT,
    _PAIR_TEXT,
    st.sampled_from([False, True, "longest_first", "only_first", "only_second"]),
    st.integers(min_value=3, max_value=20),
)
def test_pairs_match_transformers_with_and_without_truncation(tokenizers, a, b, strategy, limit):
    """ids, type ids, offsets and sequence ids of a pair equal transformers' for every strategy;
    where the Rust tokenizer refuses a truncation, we raise ValueError.

    The batch call is the reference: transformers' single call drops ``text_pair=""``.
    """
    ours, fast, _ = tokenizers
    try:
        ref = fast([a], [b], truncation=strategy, max_length=limit, return_offsets_mapping=True)
    except Exception as e:  # the Rust tokenizer's TruncationError is a bare Exception
        assert "Truncation error" in str(e)
        event("refused")
        with pytest.raises(ValueError, match="cannot fit"):
            ours.encode(a, b, truncation=strategy, max_length=limit)
        return
    enc = ours.encode(a, b, truncation=strategy, max_length=limit)
    event("truncated" if enc.truncated else "whole")
    assert enc.ids == ref["input_ids"][0]
    assert enc.type_ids == ref["token_type_ids"][0]
    assert enc.offsets == [tuple(o) for o in ref["offset_mapping"][0]]
    assert enc.sequence_ids == ref.sequence_ids(0)
    assert enc.tokens == ref.tokens(0)


@settings(max_examples=100, deadline=None)
@given(
    _PAIR_TEXT,
    st.sampled_from(["longest_first", "only_first", "only_second"]),
    st.integers(min_value=2, max_value=12),
)
def test_single_text_strategies_match_transformers(tokenizers, text, strategy, limit):
    ours, fast, _ = tokenizers
    try:
        ref = fast([text], truncation=strategy, max_length=limit)["input_ids"][0]
    except Exception as e:
        assert "Second sequence not provided" in str(e)
        with pytest.raises(ValueError, match="needs a pair"):
            ours.encode(text, truncation=strategy, max_length=limit)
        return
    assert ours.encode(text, truncation=strategy, max_length=limit).ids == ref


def test_decode_matches_transformers(tokenizers):
    ours, fast, _ = tokenizers
    for text in _valid_sample(30):
        ids = ours.encode(text).ids
        assert ours.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True) == (
            fast.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
        )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 1999), max_size=16),
    st.booleans(),
)
def test_wordpiece_cleanup_decodes_as_the_rust_decoder(tokenizers, ids, skip):
    """Any id sequence (a leading ##piece, specials, punctuation anywhere) decodes as
    transformers' fast tokenizer decodes it by default (TEI's /decode)."""
    ours, fast, _ = tokenizers
    assert ours.decode(ids, skip_special_tokens=skip, wordpiece_cleanup=True) == fast.decode(
        ids, skip_special_tokens=skip
    )


_ALPHABET = st.sampled_from(
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'()-\té")
)


@settings(max_examples=200, deadline=None)
@given(st.text(_ALPHABET, max_size=80))
def test_decode_inverts_encode_up_to_normalisation(tokenizers, text):
    ours, _, _ = tokenizers
    ids = ours.encode(text).ids
    assume(ours.unk_token_id not in ids)
    assert ours.decode(ids, skip_special_tokens=True) == ours.normalize(text)


def test_hf_reads_our_saved_directory(tmp_path, tokenizers):
    from transformers import AutoTokenizer

    ours, _, _ = tokenizers
    ours.save_pretrained(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert len(hf) == ours.vocab_size
    assert hf.mask_token_id == ours.mask_token_id and hf.pad_token_id == 0
    assert hf("The [MASK] sat.")["input_ids"] == ours.encode("The [MASK] sat.").ids
