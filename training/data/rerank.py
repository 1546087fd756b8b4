"""Query -> text pairs for a reranker (a cross-encoder): reading them, holding out a dev set, and
(query, candidate) batches of token ids.

Where the pairs come from (`read_rerank_pairs`), told apart by each file's suffix:
- `.tsv` / `.csv` / `.jsonl`: a `query` and a `text` column (`labelled.read_columns`, with its
  checks and messages); each row says that the text answers the query;
- anything else: WordNet-style gloss files, whose (usage example, definition) pairs
  (`pairs.example_definition_pairs`) are the pairs.
Either way a pair sharing a sentence with the holdout files (`pairs.holdout_keys`: case and
white space aside) is dropped, so nothing the retrieval benchmark asks about is trained on.

The pairs become a `pairs.RetrievalSet` (queries, distinct texts as candidates, each query's
target): every candidate but a query's own is one of its negatives. `split_dev` holds out some
candidates with every query they answer, as a dev set of the same shape as the benchmark's
(queries must find their text among the held-out candidates), and drops from training every pair
that shares a sentence with it.

`PairTokens` tokenizes every query and candidate once (without special tokens); `pair_batch`
lays (query, candidate) pairs out as `[CLS] query [SEP] candidate [SEP]` rows with token types
0 / 1, cut to `max_length` as the server's `/rerank` cuts a pair: on the candidate's side
(`only_second`), or `longest_first` when the query alone is too long; the ids equal
`tokenizer.encode(query, candidate, max_length=..., truncation=...)`'s.

    rset = read_rerank_pairs(["data/wordnet.train.txt"], holdout=["data/wordnet.valid.txt"])
    train, dev = split_dev(rset, 800, seed=0)

Deliberately not here: negatives (mined with a model: finetune/reranker.py), graded relevance
(a pair is relevant, every other candidate is not) and any model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokenization import truncation_lengths
from training.data.labelled import FORMATS, read_columns
from training.data.pairs import (
    RetrievalSet,
    example_definition_pairs,
    holdout_keys,
    retrieval_set_of,
    text_key,
)

__all__ = [
    "PairTokens",
    "pair_batch",
    "positives_by_query",
    "read_rerank_pairs",
    "split_dev",
]

PAIR_COLUMNS = ("query", "text")


def _is_pair_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in FORMATS


def _file_pairs(paths: Iterable[str | Path]) -> list[tuple[str, str]]:
    """Every (query, text) pair of the files, pair files and gloss files alike, in file order."""
    out: list[tuple[str, str]] = []
    for path in paths:
        if _is_pair_file(path):
            out += [(q, t) for q, t in read_columns(path, PAIR_COLUMNS)]
        else:
            out += example_definition_pairs([path])
    return out


def read_rerank_pairs(
    paths: Iterable[str | Path], holdout: Iterable[str | Path] = ()
) -> RetrievalSet:
    """The (query, text) pairs of `paths` that share no sentence with the `holdout` files, as a
    RetrievalSet. Holdout files may be pair files (their queries and texts are held out) or
    gloss files (their definitions and examples). ValueError when no pair is left."""
    paths, holdout = [str(p) for p in paths], [str(p) for p in holdout]
    held = holdout_keys(h for h in holdout if not _is_pair_file(h))
    for q, t in _file_pairs(h for h in holdout if _is_pair_file(h)):
        held.update((text_key(q), text_key(t)))
    pairs = [
        (q, t) for q, t in _file_pairs(paths) if text_key(q) not in held and text_key(t) not in held
    ]
    if not pairs:
        raise ValueError(
            f"no (query, text) pairs in {', '.join(paths)} outside the holdout: a reranker needs "
            "query/text files (.tsv/.csv/.jsonl) or WordNet-style gloss lines with examples"
        )
    return retrieval_set_of(pairs)


def positives_by_query(rset: RetrievalSet) -> list[frozenset[int]]:
    """For each query, every candidate that some pair with the same query text names: none of
    them may be one of its negatives. Example: queries [a, b, a], targets [0, 1, 2] ->
    [{0, 2}, {1}, {0, 2}]."""
    by_text: dict[str, set[int]] = {}
    for q, t in zip(rset.queries, rset.targets, strict=True):
        by_text.setdefault(q, set()).add(t)
    frozen = {q: frozenset(ts) for q, ts in by_text.items()}
    return [frozen[q] for q in rset.queries]


def _subset(rset: RetrievalSet, rows: Sequence[int], candidates: Sequence[int]) -> RetrievalSet:
    """The queries `rows` of `rset` against the candidates `candidates` (re-indexed)."""
    new = {c: i for i, c in enumerate(candidates)}
    return RetrievalSet(
        queries=[rset.queries[r] for r in rows],
        candidates=[rset.candidates[c] for c in candidates],
        targets=[new[rset.targets[r]] for r in rows],
    )


def split_dev(rset: RetrievalSet, n_candidates: int, seed: int = 0) -> tuple[RetrievalSet, RetrievalSet]:
    """(train, dev): `n_candidates` candidates drawn with `seed`, with the queries they answer,
    become the dev set; training keeps the other pairs that share no sentence with it (a query
    asked of a dev candidate too is dev only). `n_candidates` 0: (rset, an empty set)."""
    if n_candidates <= 0:
        return rset, RetrievalSet([], [], [])
    C = len(rset.candidates)
    if n_candidates >= C:
        raise ValueError(f"a dev set of {n_candidates} candidates leaves none of {C} to train on")
    held = np.random.default_rng(seed).choice(C, size=n_candidates, replace=False)
    held_set = {int(c) for c in held}
    dev_rows = [i for i, t in enumerate(rset.targets) if t in held_set]
    keys = {text_key(rset.candidates[c]) for c in held_set}
    keys.update(text_key(rset.queries[i]) for i in dev_rows)
    train_rows = [
        i
        for i, (q, t) in enumerate(zip(rset.queries, rset.targets, strict=True))
        if text_key(q) not in keys and text_key(rset.candidates[t]) not in keys
    ]
    train_candidates = sorted(
        c for c in range(C) if c not in held_set and text_key(rset.candidates[c]) not in keys
    )
    return (
        _subset(rset, train_rows, train_candidates),
        _subset(rset, dev_rows, sorted(held_set)),
    )


@dataclass
class PairTokens:
    """Token ids (no special tokens) of every query and every candidate of a RetrievalSet, and
    the ids a pair row needs: [CLS], [SEP], [PAD]."""

    queries: list[list[int]]
    candidates: list[list[int]]
    cls_id: int
    sep_id: int
    pad_id: int

    @classmethod
    def build(cls, rset: RetrievalSet, tokenizer: Any) -> PairTokens:
        def ids(texts: Sequence[str]) -> list[list[int]]:
            return [tokenizer.encode(t, add_special_tokens=False).ids for t in texts]

        return cls(
            queries=ids(rset.queries),
            candidates=ids(rset.candidates),
            cls_id=tokenizer.cls_token_id,
            sep_id=tokenizer.sep_token_id,
            pad_id=tokenizer.pad_token_id,
        )

    def pair_ids(self, query: int, candidate: int, max_length: int) -> tuple[list[int], int]:
        """(`[CLS] q [SEP] c [SEP]` ids, where the candidate's segment starts), cut to
        `max_length` on the candidate's side (longest_first when the query alone is too long)."""
        q, c = self.queries[query], self.candidates[candidate]
        room = max_length - 3
        try:
            n1, n2 = truncation_lengths(len(q), len(c), room, "only_second")
        except ValueError:
            n1, n2 = truncation_lengths(len(q), len(c), room, "longest_first")
        first = [self.cls_id, *q[:n1], self.sep_id]
        return [*first, *c[:n2], self.sep_id], len(first)


def pair_batch(
    tokens: PairTokens, pairs: Sequence[tuple[int, int]], max_length: int
) -> tuple[Any, Any, Any]:
    """(input_ids, attention_mask, token_type_ids), each (len(pairs), T) torch int64, for
    (query index, candidate index) pairs, padded to the longest row."""
    import torch  # only here: the data wing hands tensors to a model at this one point

    rows = [tokens.pair_ids(q, c, max_length) for q, c in pairs]
    T = max(len(ids) for ids, _ in rows)
    ids = np.full((len(rows), T), tokens.pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), T), dtype=np.int64)
    types = np.zeros((len(rows), T), dtype=np.int64)
    for r, (row, second) in enumerate(rows):
        ids[r, : len(row)] = row
        mask[r, : len(row)] = 1
        types[r, second : len(row)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types)
