"""Corpus reading, packing (no padding, [SEP] between documents), line mode, row order, cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from train_testing import tiny_tokenizer, write_corpus

from training.data.corpus import (
    DataError,
    LineDataset,
    PackedDataset,
    RowOrder,
    TokenizedCorpus,
    iter_documents,
    load_corpus,
    tokenize_file,
)

CLS, SEP, PAD = 2, 3, 0


def corpus_of(*docs: list[int]) -> TokenizedCorpus:
    tokens = np.array([t for d in docs for t in d], dtype=np.uint16)
    offsets = np.cumsum([0, *map(len, docs)]).astype(np.int64)
    return TokenizedCorpus(tokens, offsets)


def test_iter_documents_text_and_jsonl(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("first doc\n\n  second doc  \n", encoding="utf-8")
    assert list(iter_documents(txt)) == ["first doc", "second doc"]
    jl = tmp_path / "b.jsonl"
    jl.write_text(json.dumps({"text": "one", "id": 1}) + "\n\n" + json.dumps({"text": "two"}))
    assert list(iter_documents(jl)) == ["one", "two"]
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match=r"c\.jsonl:1: expected an object with a string 'text'"):
        list(iter_documents(bad))
    with pytest.raises(DataError, match="does not exist"):
        list(iter_documents(tmp_path / "missing.txt"))


def test_packing_joins_documents_with_sep_and_wastes_nothing():
    docs = ([10, 11, 12], [20, 21], [30, 31, 32, 33, 34], [40])
    ds = PackedDataset([corpus_of(*docs)], seq_len=5, cls_id=CLS, sep_id=SEP)
    # stream: 10 11 12 S 20 21 S 30 31 32 33 34 S 40 S  (15 ids) -> 3 rows of [CLS] + 4 ids
    assert len(ds) == 3
    ids, attn = ds.rows(np.arange(3))
    assert attn is None  # full rows: no attention mask needed
    np.testing.assert_array_equal(
        ids,
        [[CLS, 10, 11, 12, SEP], [CLS, 20, 21, SEP, 30], [CLS, 31, 32, 33, 34]],
    )
    assert not (ids == PAD).any()
    assert ids.dtype == np.int64


def test_packing_spans_files_and_keeps_every_token_in_order():
    a = corpus_of([5, 6, 7], [8])
    b = corpus_of([9, 10, 11, 12, 13, 14, 15])
    ds = PackedDataset([a, b], seq_len=4, cls_id=CLS, sep_id=SEP)
    ids, _ = ds.rows(np.arange(len(ds)))
    body = ids[:, 1:].ravel().tolist()
    assert body == [5, 6, 7, SEP, 8, SEP, 9, 10, 11, 12, 13, 14][: len(body)]
    assert (ids[:, 0] == CLS).all()


def test_packing_needs_at_least_one_row():
    with pytest.raises(DataError, match="fewer than one row"):
        PackedDataset([corpus_of([5, 6])], seq_len=8, cls_id=CLS, sep_id=SEP)


def test_line_by_line_rows_split_long_documents_and_pad_per_batch():
    ds = LineDataset(
        [corpus_of([10, 11], [20, 21, 22, 23, 24, 25, 26], [30])],
        seq_len=5,
        cls_id=CLS,
        sep_id=SEP,
        pad_id=PAD,
    )
    assert len(ds) == 5  # 1 + ceil(7 / 3) + 1
    ids, attn = ds.rows(np.arange(5))
    np.testing.assert_array_equal(
        ids,
        [
            [CLS, 10, 11, SEP, PAD],
            [CLS, 20, 21, 22, SEP],
            [CLS, 23, 24, 25, SEP],
            [CLS, 26, SEP, PAD, PAD],
            [CLS, 30, SEP, PAD, PAD],
        ],
    )
    np.testing.assert_array_equal(attn, ids != PAD)
    short, _ = ds.rows(np.array([4]))
    assert short.shape == (1, 3)  # padded to the longest row of the batch only


def test_row_order_is_a_seeded_permutation_per_epoch():
    order = RowOrder(10, seed=3)
    first, second = order.rows(0, 10), order.rows(10, 10)
    assert sorted(first.tolist()) == list(range(10)) == sorted(second.tolist())
    assert first.tolist() != second.tolist()  # reshuffled every epoch
    # Any split of positions gives the same rows (resume / a different process count).
    np.testing.assert_array_equal(np.concatenate([order.rows(0, 7), order.rows(7, 13)]),
                                  np.concatenate([first, second]))  # fmt: skip
    np.testing.assert_array_equal(RowOrder(10, seed=3).rows(5, 10), order.rows(5, 10))
    assert RowOrder(10, seed=4).rows(0, 10).tolist() != first.tolist()


def test_cache_is_reused_and_matches_a_fresh_tokenization(tmp_path):
    tok = tiny_tokenizer()
    corpus = write_corpus(tmp_path / "c.txt", 80)
    cache = tmp_path / "cache"
    first = tokenize_file(corpus, tok, cache)
    assert not first.cache_hit
    assert first.tokens.dtype == np.uint16  # a small vocabulary fits 16 bits
    second = tokenize_file(corpus, tok, cache)
    assert second.cache_hit
    np.testing.assert_array_equal(first.tokens, second.tokens)
    np.testing.assert_array_equal(first.offsets, second.offsets)
    uncached = tokenize_file(corpus, tok, None)
    np.testing.assert_array_equal(uncached.tokens, first.tokens)
    docs = list(iter_documents(corpus))
    assert uncached.num_documents == len(docs)
    doc3 = uncached.tokens[uncached.offsets[3] : uncached.offsets[4]].tolist()
    assert doc3 == tok.encode(docs[3], add_special_tokens=False).ids
    assert len(list(cache.glob("*.npz"))) == 1
    assert not list(cache.glob(".*tmp"))  # no temporary file left behind


def test_cache_is_invalidated_by_content_and_by_vocabulary(tmp_path):
    from tokenization import WordPieceTokenizer

    tok = tiny_tokenizer()
    corpus = write_corpus(tmp_path / "c.txt", 40)
    cache = tmp_path / "cache"
    tokenize_file(corpus, tok, cache)
    # Same size and mtime, different content: still re-tokenized (content is hashed).
    stat = corpus.stat()
    text = corpus.read_text(encoding="utf-8")
    swapped = text.replace("a", "e", 1) if "a" in text else text.upper()
    assert len(swapped) == len(text)
    corpus.write_text(swapped, encoding="utf-8")
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = tokenize_file(corpus, tok, cache)
    assert not changed.cache_hit
    assert tokenize_file(corpus, tok, cache).cache_hit
    # Another vocabulary (one token fewer) must not reuse ids made with the first one.
    other = WordPieceTokenizer([tok.id_to_token(i) for i in range(tok.vocab_size - 1)])
    assert not tokenize_file(corpus, other, cache).cache_hit
    assert len(list(cache.glob("*.npz"))) == 3


def test_a_damaged_cache_file_is_rebuilt(tmp_path):
    tok = tiny_tokenizer()
    corpus = write_corpus(tmp_path / "c.txt", 20)
    cache = tmp_path / "cache"
    good = tokenize_file(corpus, tok, cache)
    (npz,) = cache.glob("*.npz")
    npz.write_bytes(b"garbage")
    again = tokenize_file(corpus, tok, cache)
    assert not again.cache_hit
    np.testing.assert_array_equal(again.tokens, good.tokens)


def test_load_corpus_rejects_empty_input(tmp_path):
    empty = tmp_path / "e.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="contains no tokens"):
        load_corpus([empty], tiny_tokenizer(), None)
    with pytest.raises(DataError, match="no corpus files"):
        load_corpus([], tiny_tokenizer(), None)
