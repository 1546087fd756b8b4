"""Sentence-pair objectives on packed rows: sentence-order prediction (SOP, ALBERT) and
next-sentence prediction (NSP, BERT), both through BERT's NSP head (`cls.seq_relationship`).

A packed row is `[CLS] s_1 ... s_{T-1}`, a window of the corpus stream (consecutive documents
of one file joined by [SEP]: neighbouring WordNet glosses, paragraphs of one documentation page).
`make_pairs` cuts the window at a random point into two consecutive segments A and B and
rebuilds the row as `[CLS] A [SEP] B [SEP]` (the last two stream tokens make room for the new
[SEP]s), with token types 0 for `[CLS] A [SEP]` and 1 for `B [SEP]`. Then, for half the rows:
- "sop": the two segments swap places (`[CLS] B [SEP] A [SEP]`), label 1; in order, label 0.
  Both segments come from the same text, so only their order tells the classes apart (what
  ALBERT found more useful than NSP's topic cue);
- "nsp": B is replaced by the same-length window of another row of the batch, label 1
  ("random next"); the real continuation is label 0, as transformers' `next_sentence_label`.
The cut lies in the middle half of the row, so both segments carry context. Rows stay full: no
padding, no attention mask. Draws come from the generator passed in (the trainer seeds it from
the data position, as it does the masks), so a resume sees the same pairs.

Deliberately not here: line-by-line rows (pairs need the packed stream), cuts at sentence
boundaries (the glosses are one or two sentences; any cut inside a window is a valid order
question), and masking (applied afterwards; the new [SEP]s are special tokens, never masked).
"""

from __future__ import annotations

import numpy as np

__all__ = ["SENTENCE_OBJECTIVES", "make_pairs"]

SENTENCE_OBJECTIVES = ("sop", "nsp")


def make_pairs(
    ids: np.ndarray, rng: np.random.Generator, objective: str, sep_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input ids (B, T), token type ids (B, T), sentence labels (B,)) from packed rows (B, T).

    Example (T = 8, cut after 2 body tokens, no swap): `[CLS] a b c d e f g` ->
    `[CLS] a b [SEP] c d e [SEP]`, types `0 0 0 0 1 1 1 1`, label 0; swapped (SOP):
    `[CLS] c d e [SEP] a b [SEP]`, label 1.
    """
    if objective not in SENTENCE_OBJECTIVES:
        raise ValueError(f"sentence objective {objective!r} must be one of {SENTENCE_OBJECTIVES}")
    ids = np.asarray(ids, dtype=np.int64)
    B, T = ids.shape
    if T < 8:
        raise ValueError(f"sentence pairs need rows of at least 8 tokens, got {T}")
    body = ids[:, 1 : T - 2]  # (B, L): the stream window that fits with three specials
    L = body.shape[1]
    cut = rng.integers(L // 4, L - L // 4 + 1, size=B)  # (B,) |A| = cut, |B| = L - cut
    flip = rng.random(B) < 0.5  # (B,) rows that get the label 1
    if objective == "nsp" and B > 1:
        # The second segment of row i comes from row i + shift (a whole other window).
        other = (np.arange(B) + rng.integers(1, B, size=B)) % B
    out = np.empty_like(ids)
    types = np.zeros_like(ids)
    out[:, 0] = ids[:, 0]
    for i in range(B):
        a, b = body[i, : cut[i]], body[i, cut[i] :]
        if flip[i] and objective == "sop":
            a, b = b, a
        elif flip[i] and B > 1:  # nsp: a random continuation of the same length
            b = body[other[i], cut[i] :]
        n = len(a)
        out[i, 1 : 1 + n] = a
        out[i, 1 + n] = sep_id
        out[i, 2 + n : T - 1] = b
        out[i, T - 1] = sep_id
        types[i, 2 + n :] = 1
    labels = (flip if B > 1 or objective == "sop" else np.zeros(B, bool)).astype(np.int64)
    return out, types, labels
