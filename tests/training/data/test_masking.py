"""Masking statistics (15%, 80/10/10), special tokens never masked, whole-word groups."""

from __future__ import annotations

import numpy as np
import pytest

from training.data.masking import IGNORE_INDEX, MaskingSpec, mask_batch

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [f"w{i}" for i in range(200)] + [f"##p{i}" for i in range(100)]
VOCAB = {t: i for i, t in enumerate(SPECIALS + WORDS)}
FIRST_PIECE = VOCAB["##p0"]


def spec(**kw) -> MaskingSpec:
    return MaskingSpec.from_vocab(VOCAB, range(5), VOCAB["[MASK]"], **kw)


def random_batch(rng: np.random.Generator, B: int = 400, T: int = 128) -> np.ndarray:
    ids = rng.integers(5, FIRST_PIECE, size=(B, T))  # whole-word tokens only
    ids[:, 0] = 2  # [CLS]
    ids[:, 40] = 3  # a [SEP] between documents, as packing makes
    ids[:, -1] = 3
    return ids


def test_spec_from_vocab_classifies_tokens():
    s = spec()
    assert s.is_special[:5].all() and not s.is_special[5:].any()
    assert s.is_continuation[VOCAB["##p3"]] and not s.is_continuation[VOCAB["w3"]]
    assert set(s.random_ids.tolist()) == set(range(5, len(VOCAB)))  # never a special token


def test_rate_and_80_10_10_split_on_a_big_sample():
    rng = np.random.default_rng(0)
    ids = random_batch(rng)
    out, labels = mask_batch(ids, spec(), np.random.default_rng(1))
    chosen = labels != IGNORE_INDEX
    maskable = ids >= 5
    rate = chosen.sum() / maskable.sum()
    assert rate == pytest.approx(0.15, abs=0.005)  # ~49k candidates: sd ~0.0016
    # Labels hold the original ids exactly where chosen.
    np.testing.assert_array_equal(labels[chosen], ids[chosen])
    n = chosen.sum()
    as_mask = (out[chosen] == VOCAB["[MASK]"]).sum() / n
    unchanged = (out[chosen] == ids[chosen]).sum() / n
    replaced = 1 - as_mask - unchanged
    assert as_mask == pytest.approx(0.8, abs=0.015)
    # A random replacement can draw the original id (1 / 295 of the time): count it as kept.
    assert replaced == pytest.approx(0.1 * (1 - 1 / 295), abs=0.01)
    assert unchanged == pytest.approx(0.1 + 0.1 / 295, abs=0.01)
    # Unchosen positions are untouched.
    np.testing.assert_array_equal(out[~chosen], ids[~chosen])


def test_special_tokens_and_padding_are_never_masked():
    rng = np.random.default_rng(2)
    ids = random_batch(rng, B=200, T=64)
    ids[:, 10:14] = [0, 1, 4, 3]  # [PAD] [UNK] [MASK] [SEP] in the middle of the row
    attn = np.ones_like(ids)
    attn[:, 50:] = 0  # padding region (holds real-looking ids on purpose)
    s = spec(mlm_probability=0.9)
    for seed in range(5):
        out, labels = mask_batch(ids, s, np.random.default_rng(seed), attn)
        chosen = labels != IGNORE_INDEX
        assert not chosen[ids < 5].any()
        assert not chosen[attn == 0].any()
        np.testing.assert_array_equal(out[ids < 5], ids[ids < 5])
        assert chosen.mean() > 0.5  # a high rate really masks the rest


def test_fresh_masks_come_from_the_generator():
    ids = random_batch(np.random.default_rng(3), B=8)
    a = mask_batch(ids, spec(), np.random.default_rng(10))
    b = mask_batch(ids, spec(), np.random.default_rng(10))
    c = mask_batch(ids, spec(), np.random.default_rng(11))
    np.testing.assert_array_equal(a[1], b[1])  # same seed, same mask
    assert not np.array_equal(a[1], c[1])  # another seed, another mask


def test_whole_word_masking_masks_pieces_with_their_word():
    # [CLS] w1 ##p1 ##p2 w2 w3 ##p3 [SEP] ##p4 w4 [SEP], repeated over many rows.
    row = [2, VOCAB["w1"], VOCAB["##p1"], VOCAB["##p2"], VOCAB["w2"], VOCAB["w3"], VOCAB["##p3"]]
    row += [3, VOCAB["##p4"], VOCAB["w4"], 3]
    ids = np.array([row] * 5000)
    out, labels = mask_batch(ids, spec(whole_word=True), np.random.default_rng(4))
    chosen = labels != IGNORE_INDEX
    # A word and its pieces are chosen together or not at all.
    np.testing.assert_array_equal(chosen[:, 1], chosen[:, 2])
    np.testing.assert_array_equal(chosen[:, 1], chosen[:, 3])
    np.testing.assert_array_equal(chosen[:, 5], chosen[:, 6])
    assert not chosen[:, [0, 7, 10]].any()
    # A piece right after a special token (a packed row cut mid-word) is a word of its own.
    assert 0.12 < chosen[:, 8].mean() < 0.18
    assert not np.array_equal(chosen[:, 8], chosen[:, 9])
    # Each of the 5 words is chosen at the configured rate.
    for col in (1, 4, 5, 8, 9):
        assert chosen[:, col].mean() == pytest.approx(0.15, abs=0.02)
    # 80/10/10 still applies per token inside chosen words.
    assert (out[chosen] == VOCAB["[MASK]"]).mean() == pytest.approx(0.8, abs=0.02)


def test_without_whole_word_pieces_are_masked_independently():
    row = [2] + [VOCAB["w1"], VOCAB["##p1"]] * 10 + [3]
    ids = np.array([row] * 3000)
    _, labels = mask_batch(ids, spec(), np.random.default_rng(5))
    chosen = labels != IGNORE_INDEX
    both = (chosen[:, 1] & chosen[:, 2]).mean()
    assert both == pytest.approx(0.15 * 0.15, abs=0.01)  # independent draws


def test_a_batch_never_comes_back_without_labels():
    ids = np.array([[2, 7, 8, 3]])  # two candidates: P(no mask) = 0.85^2 per draw
    for seed in range(200):
        _, labels = mask_batch(ids, spec(), np.random.default_rng(seed))
        assert (labels != IGNORE_INDEX).sum() >= 1


def test_rejects_non_2d_input():
    with pytest.raises(ValueError, match="batch, seq"):
        mask_batch(np.arange(10), spec(), np.random.default_rng(0))
