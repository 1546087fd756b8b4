"""Reranking: a first-stage retriever's top-k candidates per query re-ordered by a cross-encoder,
scored with the retrieval metrics (recall@k, MRR) on the same `RetrievalSet`.

    rset = retrieval_set(["data/wordnet.valid.txt"])
    first = embedding_scores(CheckpointEmbedder.load("checkpoints/default"), rset)  # (Q, C)
    top = nearest(first, 20)                                                         # (Q, 20)
    ce = cross_scores(reranker, PairTokens.build(rset, tok), top, max_length=128)   # (Q, 20)
    retrieval_metrics(reranked_scores(first, top, ce), rset.targets)

`reranked_scores` makes the two-stage system one (Q, C) score matrix: a row's k reranked
candidates come first, in the cross-encoder's order, then every other candidate in the
retriever's order. So recall@1..k are the reranker's, and recall beyond k and the reciprocal rank
of a target the retriever missed are the retriever's, which is what a search that shows the k
reranked hits and then the rest would give. Ties count at their expected value, as everywhere in
`retrieval_metrics`.

`evaluate_checkpoint_rerank` is `bert-eval --task rerank`: TF-IDF, the retriever alone and the
retriever + reranker side by side on the pairs of some files. The reranker is read by the one
loader and must be what the server serves on `/rerank` (a one-label classifier); pairs are cut
as the server cuts them (`training.data.rerank.pair_batch`).

Deliberately not here: training (finetune/reranker.py), rerank depths other than one k per call,
and score calibration (the order is all the metrics read).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.data.pairs import RetrievalSet, retrieval_set
from training.data.rerank import PairTokens, pair_batch
from training.evaluation.retrieval import (
    CheckpointEmbedder,
    evaluating,
    load_for_eval,
    retrieval_metrics,
    tfidf_scores,
)

__all__ = [
    "METRICS",
    "cross_scores",
    "embedding_scores",
    "evaluate_checkpoint_rerank",
    "evaluate_reranking",
    "load_reranker",
    "nearest",
    "reranked_scores",
    "unit_vectors",
]

METRICS = ("recall@1", "recall@10", "mrr")


def unit_vectors(embedder: CheckpointEmbedder, texts: Sequence[str]) -> torch.Tensor:
    """The embedder's vectors (N, H) of `texts` (the server's), scaled to unit length."""
    return F.normalize(embedder.embed(texts), p=2.0, dim=-1)


def embedding_scores(embedder: CheckpointEmbedder, rset: RetrievalSet) -> torch.Tensor:
    """Cosine similarities (Q, C) of the embedder's query and candidate vectors."""
    return unit_vectors(embedder, rset.queries) @ unit_vectors(embedder, rset.candidates).T


def nearest(
    scores: torch.Tensor,
    k: int,
    exclude: Sequence[Sequence[int]] | None = None,
    *,
    candidates: torch.Tensor | None = None,
    chunk: int = 2048,
) -> torch.Tensor:
    """The k best-scoring candidates (Q, k) of each row of `scores` (Q, C), best first, with
    `exclude[i]` (candidate indices) never among row i's. k is cut to what a row can give.

    With `candidates` (C, H), `scores` is (Q, H) query vectors instead, scored against them by
    dot product a chunk of rows at a time: no (Q, C) matrix is ever held (mining 40k queries
    against 30k candidates).

    Example: scores [[0.1, 0.9, 0.5]], k=2 -> [[1, 2]]; with exclude [[1]] -> [[2, 0]].
    """
    Q = scores.shape[0]
    C = scores.shape[1] if candidates is None else candidates.shape[0]
    if exclude is not None and len(exclude) != Q:
        raise ValueError(f"exclude has {len(exclude)} rows for {Q} queries")
    most = max((len(e) for e in exclude), default=0) if exclude is not None else 0
    k = min(k, C - most)
    if k < 1:
        raise ValueError(f"no candidate left to rank ({C} candidates, {most} excluded)")
    out = torch.empty((Q, k), dtype=torch.long)
    for start in range(0, Q, chunk):
        rows = scores[start : start + chunk].float()
        block = rows @ candidates.T if candidates is not None else rows.clone()  # (q, C)
        if exclude is not None:
            for r, cols in enumerate(exclude[start : start + chunk]):
                if len(cols):
                    block[r, list(cols)] = float("-inf")
        out[start : start + chunk] = block.topk(k, dim=1).indices
    return out


def cross_scores(
    model: torch.nn.Module,
    tokens: PairTokens,
    candidates: torch.Tensor,
    *,
    max_length: int,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The cross-encoder's logits (Q, k), float32, of query i with candidate candidates[i, j].

    Pairs are batched by length (little padding) and cut as the server cuts them; the model runs
    in eval mode under no_grad, and its training mode is restored afterwards.
    """
    Q, k = candidates.shape
    pairs = [(i, int(c)) for i in range(Q) for c in candidates[i]]
    lengths = [len(tokens.queries[q]) + len(tokens.candidates[c]) for q, c in pairs]
    order = np.argsort(lengths, kind="stable")
    out = torch.empty(len(pairs), dtype=torch.float32)
    with evaluating(model):
        for start in range(0, len(pairs), batch_size):
            rows = order[start : start + batch_size]
            ids, mask, types = pair_batch(tokens, [pairs[r] for r in rows], max_length)
            logits = model.classify(ids.to(device), mask.to(device), types.to(device)).logits
            out[torch.from_numpy(rows)] = logits[:, 0].float().cpu()  # (B,)
    return out.view(Q, k)


def reranked_scores(first: torch.Tensor, top: torch.Tensor, reranked: torch.Tensor) -> torch.Tensor:
    """(Q, C) float64 scores of the two-stage system: row i's candidates top[i] (Q, k) in the
    order of reranked[i] (Q, k) first, then the rest in the order of first[i] (Q, C).

    Reranked entries become reranked - min over the row (>= 0), the others first - max(first)
    - 1 (< 0), so one sort of the row gives the two-stage order. Example: first [[0.9, 0.5,
    0.1]], top [[0, 1]], reranked [[1.0, 3.0]] -> candidate 1, then 0, then 2.
    """
    out = first.double() - first.double().max() - 1.0  # (Q, C), all < 0
    r = reranked.double()
    out.scatter_(1, top, r - r.min(dim=1, keepdim=True).values)  # (Q, k) >= 0
    return out


def evaluate_reranking(
    model: torch.nn.Module,
    tokens: PairTokens,
    rset: RetrievalSet,
    first: torch.Tensor,
    top: torch.Tensor,
    *,
    max_length: int,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
) -> dict[str, float | int]:
    """`retrieval_metrics` of the retriever's top candidates `top` (Q, k) reranked by `model`,
    with `first_stage_recall` (the share of queries whose target is among them: what any
    reranker can reach at recall@1) and `mean_logit` (of the reranked pairs)."""
    ce = cross_scores(model, tokens, top, max_length=max_length, batch_size=batch_size,
                      device=device)  # fmt: skip
    metrics: dict[str, float | int] = dict(
        retrieval_metrics(reranked_scores(first, top, ce), rset.targets)
    )
    target = torch.as_tensor(rset.targets)[:, None]  # (Q, 1)
    metrics["first_stage_recall"] = float((top == target).any(dim=1).double().mean())
    metrics["reranked"] = int(top.shape[1])
    metrics["mean_logit"] = float(ce.double().mean())
    return metrics


def load_reranker(checkpoint: str | Path, device: str = "cpu") -> tuple[Any, Any, int]:
    """(model, tokenizer, token limit of a pair) of a cross-encoder directory, through the one
    loader; ValueError unless it is what the server reranks with (a one-label classifier)."""
    loaded = load_for_eval(checkpoint, device)
    caps = loaded.capabilities
    if not caps.rerank:
        raise ValueError(
            f"{checkpoint}: not a reranker (a classifier with one label; this is {caps.kind} "
            f"with labels {list(caps.labels)})"
        )
    return loaded.model, loaded.tokenizer, caps.max_tokens


def evaluate_checkpoint_rerank(
    checkpoint: Path,
    corpus: Sequence[str],
    *,
    retriever: Path,
    top_k: int = 20,
    batch_size: int = 128,
    device: str = "cpu",
) -> dict[str, Any]:
    """What `bert-eval --task rerank` prints: TF-IDF, the `retriever` checkpoint's embeddings
    alone, and its top_k reranked by the `checkpoint` cross-encoder, on the example ->
    definition pairs of `corpus`, with ratios of the reranked system to the other two."""
    rset = retrieval_set(corpus)
    if not rset.queries:
        raise ValueError(f"no example/definition pairs in {', '.join(map(str, corpus))}")
    model, tokenizer, max_length = load_reranker(checkpoint, device)
    first = embedding_scores(CheckpointEmbedder.load(retriever, device=device), rset)
    top = nearest(first, top_k)
    reranked = evaluate_reranking(
        model, PairTokens.build(rset, tokenizer), rset, first, top,
        max_length=max_length, batch_size=batch_size, device=device,
    )  # fmt: skip
    systems = {
        "tfidf": retrieval_metrics(tfidf_scores(rset.queries, rset.candidates), rset.targets),
        "retriever": retrieval_metrics(first, rset.targets),
        "reranked": reranked,
    }
    figures = {name: {k: m[k] for k in METRICS} for name, m in systems.items()}

    def ratios(base: str) -> dict[str, float | None]:
        return {
            k: figures["reranked"][k] / figures[base][k] if figures[base][k] else None
            for k in METRICS
        }

    return {
        "task": "rerank",
        "checkpoint": str(checkpoint),
        "retriever": str(retriever),
        "corpus": [str(c) for c in corpus],
        "top_k": int(top.shape[1]),
        "max_length": max_length,
        "queries": len(rset.queries),
        "candidates": len(rset.candidates),
        **figures,
        "first_stage_recall": reranked["first_stage_recall"],
        "ratio_to_retriever": ratios("retriever"),
        "ratio_to_tfidf": ratios("tfidf"),
    }
