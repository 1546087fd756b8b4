"""Retrieval evaluation of sentence embeddings: example -> definition, against a TF-IDF baseline.

Each query (a usage example) must find its own definition among all candidates of a
`training.data.pairs.RetrievalSet`. Systems are scored by recall@k and mean reciprocal rank over a
(queries x candidates) score matrix:

    rset = retrieval_set(["data/wordnet.valid.txt"])
    ours = evaluate_retrieval(model, tokenizer, rset, pooling="mean")
    base = tfidf_retrieval(rset)          # same pairs, bag-of-words cosine
    ours["recall@1"] / base["recall@1"]

`evaluate_checkpoint_retrieval` is `bert-eval --task retrieval`: both systems on the pairs of some
files, side by side, for a checkpoint directory embedding as the server embeds with it
(`CheckpointEmbedder`: the one loader's pooling, normalisation and token limit).

Ties count at their expected value under random tie-breaking: a query whose target ties with
other candidates is neither a sure hit nor a sure miss. This matters for TF-IDF, whose score row
is all zeros for a query sharing no word with any candidate (that query gets recall@1 = 1/C, not
1 or 0 depending on a sort's whim). Ties are exact float equality, no tolerance.

Deliberately not here: approximate nearest-neighbour search (the sets are ~10^3 x 10^3, a dense
matrix product is instant), other metrics (nDCG, MAP: one relevant candidate per query makes MRR
the same thing), and stemming or stop words in the TF-IDF baseline (plain word counts, as
scikit-learn's `TfidfVectorizer` defaults except for its token pattern, which drops one-letter
words and which we keep).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model import POOLINGS, BertForMaskedLM, LoadedCheckpoint, load_checkpoint
from model.layout import read_layout
from tokenization import WordPieceTokenizer
from training.data.pairs import RetrievalSet, retrieval_set

__all__ = [
    "CheckpointEmbedder",
    "checkpoint_pooling",
    "embed_texts",
    "evaluate_checkpoint_retrieval",
    "evaluate_retrieval",
    "evaluating",
    "load_for_eval",
    "pad_rows",
    "retrieval_metrics",
    "tfidf_retrieval",
    "tfidf_scores",
]

_WORD = re.compile(r"\w+")


def load_for_eval(checkpoint: str | Path, device: str = "cpu") -> LoadedCheckpoint:
    """A checkpoint directory through the one loader, as the server reads it (model, tokenizer,
    capabilities); ValueError for one without a tokenizer."""
    loaded = load_checkpoint(
        checkpoint,
        BertForMaskedLM,
        tokenizer_factory=WordPieceTokenizer.from_pretrained,
        map_location=device,
    )
    if loaded.tokenizer is None:
        raise ValueError(f"{checkpoint}: no tokenizer (vocab.txt or tokenizer.json)")
    return loaded


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode under no_grad (dropout off: the same input always gives the same
    output); its previous training mode is restored afterwards, also when the body fails."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (len(rows), longest) int64, of token id lists.

    Example: [[2, 7, 3], [2, 3]], pad 0 -> ids [[2, 7, 3], [2, 3, 0]], mask [[1, 1, 1], [1, 1, 0]].
    """
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[b, : len(r)] = 1
    return ids, mask


def embed_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    pooling: str = "mean",
    normalize: bool = True,
    batch_size: int = 64,
    max_length: int = 128,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Sentence embeddings (N, H), float32 on the CPU, in the order of `texts`: pooled with
    `pooling` (one of model.POOLINGS), L2-normalised unless `normalize` is False.

    Texts are truncated to `max_length` tokens (and to the model's position limit), encoded once
    and batched by length so that a batch carries little padding. The model runs in eval mode
    under no_grad (dropout off: the same text always gives the same vector); its previous
    training mode is restored, also when encoding fails.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of str, not a single str")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    limit = min(int(max_length), int(model.config.max_position_embeddings))
    encodings = tokenizer.encode_batch(
        list(texts), max_length=limit, truncation=True, padding=False
    )
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
    out = torch.zeros(len(encodings), int(model.config.hidden_size), dtype=torch.float32)
    pad_id = int(tokenizer.pad_token_id)
    with evaluating(model):
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            ids, mask = pad_rows([encodings[r].ids for r in rows], pad_id)
            vecs = model.embed(ids.to(device), mask.to(device), pooling=pooling).float()
            if normalize:
                vecs = F.normalize(vecs, p=2.0, dim=-1)  # (B, H)
            out[torch.tensor(rows)] = vecs.cpu()
    return out


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def tfidf_scores(queries: Sequence[str], candidates: Sequence[str]) -> torch.Tensor:
    """Cosine similarities (Q, C), float64, of the TF-IDF vectors of queries and candidates.

    Terms are lowercase `\\w+` words; a term weighs count x idf with the smooth idf
    `log((1 + N) / (1 + df)) + 1`, fitted on the N = Q + C texts of the set; each vector has
    unit L2 norm (a text without words stays all zeros, so its row or column is 0). Scores
    accumulate through an inverted index of the candidates, so the vocabulary never becomes a
    dense dimension.
    """
    docs = [Counter(_tokens(t)) for t in (*queries, *candidates)]
    df: Counter[str] = Counter()
    for counts in docs:
        df.update(counts.keys())
    n = len(docs)
    idf = {term: math.log((1 + n) / (1 + d)) + 1.0 for term, d in df.items()}

    def unit(counts: Counter[str]) -> dict[str, float]:
        weights = {term: c * idf[term] for term, c in counts.items()}
        norm = math.sqrt(sum(w * w for w in weights.values()))
        return {term: w / norm for term, w in weights.items()}

    postings: dict[str, tuple[list[int], list[float]]] = {}
    for j, counts in enumerate(docs[len(queries) :]):
        for term, w in unit(counts).items():
            cols, vals = postings.setdefault(term, ([], []))
            cols.append(j)
            vals.append(w)
    index = {t: (np.asarray(c, dtype=np.int64), np.asarray(v)) for t, (c, v) in postings.items()}
    scores = np.zeros((len(queries), len(candidates)), dtype=np.float64)
    for i, counts in enumerate(docs[: len(queries)]):
        row = scores[i]
        for term, w in unit(counts).items():
            if term in index:
                cols, vals = index[term]
                row[cols] += w * vals  # a candidate appears once per term: no index collisions
    return torch.from_numpy(scores)


def retrieval_metrics(
    scores: torch.Tensor, targets: Sequence[int], ks: Sequence[int] = (1, 10)
) -> dict[str, float | int]:
    """recall@k for each k, MRR, and the set's size, from scores (Q, C) and each query's target.

    For a query whose target has g candidates scoring strictly higher and t others scoring
    exactly the same, the values are their expectation under random tie-breaking:
    recall@k = clamp((k - g) / (t + 1), 0, 1) and reciprocal rank = mean of 1/r for r in
    g+1 .. g+t+1. Example: scores [[0.9, 0.5, 0.5]], target 1 -> recall@1 0, recall@2 0.5,
    reciprocal rank (1/2 + 1/3) / 2.
    """
    if scores.dim() != 2:
        raise ValueError(
            f"scores must be a (queries, candidates) matrix, got {tuple(scores.shape)}"
        )
    Q, C = scores.shape
    if Q == 0 or C == 0:
        raise ValueError(f"need at least one query and one candidate, got {Q} x {C}")
    if len(targets) != Q:
        raise ValueError(f"got {len(targets)} targets for {Q} queries")
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive ints, got {ks!r}")
    target = torch.as_tensor(list(targets), dtype=torch.long)
    if int(target.min()) < 0 or int(target.max()) >= C:
        raise ValueError(
            f"targets must lie in [0, {C}), got [{int(target.min())}, {int(target.max())}]"
        )
    scores = scores.detach().cpu()
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores contain NaN or infinite values")
    own = scores.gather(1, target[:, None])  # (Q, 1)
    higher = (scores > own).sum(dim=1).double()  # (Q,) g
    tied = (scores == own).sum(dim=1).double() - 1.0  # (Q,) t, the target itself excluded
    # harmonic[n] = sum_{r=1..n} 1/r, so the mean of 1/r over g+1..g+t+1 is a difference.
    harmonic = torch.cat(
        [
            torch.zeros(1, dtype=torch.float64),
            (1.0 / torch.arange(1, C + 1, dtype=torch.float64)).cumsum(0),
        ]
    )
    first, last = higher.long(), (higher + tied + 1).long()
    rr = (harmonic[last] - harmonic[first]) / (tied + 1.0)  # (Q,)
    out: dict[str, float | int] = {}
    for k in ks:
        out[f"recall@{k}"] = float(((k - higher) / (tied + 1.0)).clamp(0.0, 1.0).mean())
    out["mrr"] = float(rr.mean())
    out["queries"] = Q
    out["candidates"] = C
    return out


def evaluate_retrieval(
    model: torch.nn.Module,
    tokenizer: Any,
    rset: RetrievalSet,
    *,
    pooling: str = "mean",
    normalize: bool = True,
    batch_size: int = 64,
    max_length: int = 128,
    device: torch.device | str = "cpu",
    ks: Sequence[int] = (1, 10),
) -> dict[str, float | int | str]:
    """Our embeddings on `rset` (`embed_texts` with these settings), scored by the cosine of
    query and candidate vectors through `retrieval_metrics`. The model's training mode is left
    as it was."""
    if not rset.queries:
        raise ValueError("the retrieval set has no queries")
    kw = {"pooling": pooling, "normalize": normalize, "batch_size": batch_size}
    kw.update(max_length=max_length, device=device)
    q = embed_texts(model, tokenizer, rset.queries, **kw)  # (Q, H)
    c = embed_texts(model, tokenizer, rset.candidates, **kw)  # (C, H)
    if not normalize:  # unit vectors either way: the score is the cosine
        q, c = F.normalize(q, p=2.0, dim=-1), F.normalize(c, p=2.0, dim=-1)
    metrics: dict[str, float | int | str] = dict(retrieval_metrics(q @ c.T, rset.targets, ks))
    metrics["pooling"] = pooling
    return metrics


def tfidf_retrieval(rset: RetrievalSet, ks: Sequence[int] = (1, 10)) -> dict[str, float | int]:
    """The TF-IDF baseline's `retrieval_metrics` on `rset` (see `tfidf_scores`)."""
    if not rset.queries:
        raise ValueError("the retrieval set has no queries")
    return retrieval_metrics(tfidf_scores(rset.queries, rset.candidates), rset.targets, ks)


@dataclass
class CheckpointEmbedder:
    """A checkpoint directory's sentence embeddings as `bert-serve` makes them.

    `load` reads the directory through the one loader (`model.load_checkpoint`: ours, a
    transformers BERT or a sentence-transformers directory) and takes the pooling, the
    normalisation and the token limit from its capabilities (a sentence-transformers directory's
    1_Pooling, 2_Normalize and max_seq_length included), so `embed` gives the vectors `/embed`
    returns with the checkpoint's defaults. `pooling` and `max_length` may override them.
    """

    model: Any
    tokenizer: Any
    pooling: str  # one of model.POOLINGS
    normalize: bool
    max_length: int  # tokens per text, [CLS] and [SEP] included
    device: str = "cpu"

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        *,
        pooling: str | None = None,
        max_length: int | None = None,
        device: str = "cpu",
    ) -> CheckpointEmbedder:
        loaded = load_for_eval(checkpoint, device)
        caps = loaded.capabilities
        return cls(
            model=loaded.model,
            tokenizer=loaded.tokenizer,
            pooling=pooling or caps.pooling,
            normalize=caps.normalize,
            max_length=max_length or caps.max_tokens,
            device=device,
        )

    def settings(self) -> dict[str, Any]:
        """Keyword arguments of `embed_texts` and `evaluate_retrieval` for these embeddings."""
        return {
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_length": self.max_length,
            "device": self.device,
        }

    def embed(self, texts: Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
        """(N, H) float32: the embeddings of `texts`, as the server computes them."""
        return embed_texts(
            self.model, self.tokenizer, texts, batch_size=batch_size, **self.settings()
        )


def checkpoint_pooling(checkpoint: str | Path) -> str:
    """The pooling a checkpoint embeds with by default, as the one loader reads it (config.json's
    `pooling`, or a sentence-transformers directory's 1_Pooling), without loading weights."""
    return read_layout(checkpoint).config.pooling


def evaluate_checkpoint_retrieval(
    checkpoint: Path,
    corpus: Sequence[str],
    *,
    pooling: str | None = None,
    batch_size: int = 64,
    max_seq_length: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """What `bert-eval --task retrieval` prints: our retrieval metrics and TF-IDF's on the
    example -> definition pairs of `corpus`, side by side, with ratios ours / TF-IDF.

    The embeddings are the server's (`CheckpointEmbedder`): the checkpoint's pooling,
    normalisation and token limit unless `pooling` / `max_seq_length` are given. Raises
    ValueError when the files hold no gloss with a usage example.
    """
    rset = retrieval_set(corpus)
    if not rset.queries:
        raise ValueError(
            f"no example/definition pairs in {', '.join(map(str, corpus))}: retrieval needs "
            "WordNet-style gloss lines ('lemma, lemma: definition. Usage example.')"
        )
    embedder = CheckpointEmbedder.load(
        checkpoint, pooling=pooling, max_length=max_seq_length, device=device
    )
    ours = evaluate_retrieval(
        embedder.model, embedder.tokenizer, rset, batch_size=batch_size, **embedder.settings()
    )
    tfidf = tfidf_retrieval(rset)
    metric_names = [k for k in tfidf if k.startswith("recall@") or k == "mrr"]
    return {
        "task": "retrieval",
        "checkpoint": str(checkpoint),
        "corpus": [str(c) for c in corpus],
        "pooling": embedder.pooling,
        "normalize": embedder.normalize,
        "max_seq_length": embedder.max_length,
        "queries": len(rset.queries),
        "candidates": len(rset.candidates),
        "ours": {k: ours[k] for k in metric_names},
        "tfidf": {k: tfidf[k] for k in metric_names},
        # None, not inf, when TF-IDF scores 0: JSON has no infinity.
        "ratio_to_tfidf": {k: ours[k] / tfidf[k] if tfidf[k] else None for k in metric_names},
    }
