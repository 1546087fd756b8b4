"""Dynamic MLM masking of token-id batches (numpy, vectorised).

`MaskingSpec` holds what masking needs to know about a vocabulary (which ids are special, which
are `##` continuation pieces, which ids a "random token" may be); `mask_batch` turns a `(B, T)`
batch of ids into model inputs and labels:

* each maskable *word* is chosen with probability `mlm_probability` (a word is a single token
  unless whole-word masking is on, in which case it is a token and the `##` pieces that follow it);
* of the chosen tokens 80% become [MASK], 10% a random non-special token, 10% stay as they are;
* labels hold the original id at chosen positions and -100 everywhere else;
* special tokens ([CLS], [SEP], [PAD], ...) and padding are never chosen.

Masks are drawn from the generator passed in, so the caller decides what "fresh" means: the
trainer seeds it from the global position of the batch (a new mask each time a row is seen, and
the same one after a resume); evaluation uses a fixed seed. Deliberately not here: span/n-gram
masking and any exact-count sampling (the per-word Bernoulli draw gives the right rate in
expectation, which is what BERT's statistics need; a batch that draws no token at all gets one
forced, so that its loss is defined).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["MaskingSpec", "mask_batch"]

IGNORE_INDEX = -100  # torch CrossEntropyLoss / transformers convention


@dataclass(frozen=True)
class MaskingSpec:
    """Vocabulary facts and rates for masking; build with `MaskingSpec.from_vocab`."""

    mask_token_id: int
    is_special: np.ndarray  # (V,) bool: never masked
    is_continuation: np.ndarray  # (V,) bool: `##` pieces, joined to the preceding token's word
    random_ids: np.ndarray  # (R,) int: candidates for the 10% random replacement
    mlm_probability: float = 0.15
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    whole_word: bool = False

    @classmethod
    def from_vocab(
        cls,
        vocab: Mapping[str, int],
        special_ids: Iterable[int],
        mask_token_id: int,
        *,
        mlm_probability: float = 0.15,
        mask_token_prob: float = 0.8,
        random_token_prob: float = 0.1,
        whole_word: bool = False,
    ) -> MaskingSpec:
        """`vocab` maps token -> id (ids need not be dense, but must be < len(table))."""
        size = max(vocab.values()) + 1
        is_special = np.zeros(size, dtype=bool)
        is_special[list(special_ids)] = True
        is_cont = np.zeros(size, dtype=bool)
        for tok, i in vocab.items():
            if tok.startswith("##") and len(tok) > 2:
                is_cont[i] = True
        known = np.zeros(size, dtype=bool)
        known[list(vocab.values())] = True
        random_ids = np.flatnonzero(known & ~is_special)
        if random_ids.size == 0:
            raise ValueError("vocabulary has no non-special token to mask with")
        return cls(
            mask_token_id=int(mask_token_id),
            is_special=is_special,
            is_continuation=is_cont,
            random_ids=random_ids,
            mlm_probability=mlm_probability,
            mask_token_prob=mask_token_prob,
            random_token_prob=random_token_prob,
            whole_word=whole_word,
        )


def word_starts(ids: np.ndarray, spec: MaskingSpec, maskable: np.ndarray) -> np.ndarray:
    """Positions that begin a maskable word.

    Without whole-word masking every maskable token is a word. With it, a `##` piece belongs to
    the word before it, unless it directly follows a special token or padding (a packed row can
    start mid-word), in which case it starts a word itself.
    Example (whole word): [CLS] play ##ing now [SEP] -> starts at "play" and "now".
    """
    if not spec.whole_word:
        return maskable.copy()
    cont = spec.is_continuation[ids]
    prev_maskable = np.zeros_like(maskable)
    prev_maskable[:, 1:] = maskable[:, :-1]
    return maskable & ~(cont & prev_maskable)


def mask_batch(
    ids: np.ndarray,
    spec: MaskingSpec,
    rng: np.random.Generator,
    attention_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mask a `(B, T)` batch; returns `(input_ids, labels)` as int64 arrays of the same shape.

    `attention_mask` (1 = real token) keeps padding out of the candidates.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 2:
        raise ValueError(f"ids must be (batch, seq); got shape {ids.shape}")
    maskable = ~spec.is_special[ids]
    if attention_mask is not None:
        maskable &= np.asarray(attention_mask).astype(bool)
    starts = word_starts(ids, spec, maskable)
    chosen_start = starts & (rng.random(ids.shape) < spec.mlm_probability)
    if spec.whole_word:
        # Every token inherits the choice made at its word's start: index of the latest start
        # at or before each position (running max of start positions), then gather.
        T = ids.shape[1]
        pos = np.where(starts, np.arange(T)[None, :], 0)  # (B, T)
        owner = np.maximum.accumulate(pos, axis=1)  # (B, T) start position of each token's word
        chosen = np.take_along_axis(chosen_start, owner, axis=1) & maskable
    else:
        chosen = chosen_start
    if not chosen.any() and maskable.any():
        # A batch without a single label would make the mean loss 0/0 (NaN); with real batch
        # sizes this has probability ~0.85**(B*T), so forcing one token biases nothing measurable.
        flat = np.flatnonzero(maskable)
        chosen = np.zeros_like(maskable)
        chosen.flat[flat[rng.integers(0, flat.size)]] = True
    labels = np.where(chosen, ids, IGNORE_INDEX)
    # One uniform draw splits chosen tokens into [MASK] / random / unchanged (80/10/10).
    u = rng.random(ids.shape)
    to_mask = chosen & (u < spec.mask_token_prob)
    to_random = (
        chosen & (u >= spec.mask_token_prob) & (u < spec.mask_token_prob + spec.random_token_prob)
    )
    out = ids.copy()
    out[to_mask] = spec.mask_token_id
    n_random = int(to_random.sum())
    if n_random:
        out[to_random] = spec.random_ids[rng.integers(0, spec.random_ids.size, n_random)]
    return out, labels
