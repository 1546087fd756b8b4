"""Sparse (SPLADE) retrieval from a checkpoint's MLM head: example -> definition, against TF-IDF.

`CheckpointSparseEncoder` gives the vectors the server's `/embed_sparse` gives for a checkpoint
directory, computed through `model` alone: per text, the MLM head's logits at its tokens,
weighted log(1 + relu(logit)) and max-pooled over the tokens (`BertForMaskedLM.splade`), with
the settings the one loader reads: a plain MLM checkpoint leaves [CLS] and [SEP] out (the
positions the tokenizer added, which cover no characters), a sentence-transformers SparseEncoder
directory keeps them and brings its own pooling, activation and `max_active_dims`. Vectors are
cut to the tokenizer's vocabulary, as the server answers only ids it can name. Texts longer than
the token limit are cut at the end (the server's `truncate: true`).

A query scores a candidate by the dot product of their vectors (SPLADE's score, not a cosine),
and the metrics are `retrieval.retrieval_metrics`' on the same pairs as the dense evaluation.

    bert-eval --task retrieval --sparse --checkpoint checkpoints/default --corpus data/wordnet.valid.txt

An MLM that was never trained for SPLADE (our default) puts weight on every vocabulary entry its
head finds plausible at some position: vectors with thousands of active dimensions whose mass
grows with the text, so that under the dot product a few long candidates outscore the rest for
every query. `active_dims` in the result says how dense they are, and `cosine` gives the same
vectors' figures scaled to unit length (a diagnostic: SPLADE scores by the dot product).

Deliberately not here: an inverted index (the sets are ~10^3 x 10^3: dense matrix products),
prompts (the server prepends a model's default prompt; our checkpoints have none), and SPLADE
training (FLOPS regularisation, distillation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from model.heads import top_k_dims
from training.data.pairs import retrieval_set
from training.evaluation.retrieval import (
    evaluating,
    load_for_eval,
    pad_rows,
    retrieval_metrics,
    tfidf_retrieval,
)

__all__ = ["CheckpointSparseEncoder", "evaluate_checkpoint_sparse_retrieval"]


@dataclass
class CheckpointSparseEncoder:
    """A checkpoint directory's SPLADE vectors as `/embed_sparse` makes them (see the module)."""

    model: Any
    tokenizer: Any
    pooling: str  # "max" or "sum" over the counted tokens
    activation: str  # "relu" (log(1 + relu)) or "log1p_relu"
    max_active_dims: int | None  # keep each vector's k largest weights (None: all)
    skip_special: bool  # [CLS]/[SEP] do not count (a plain MLM) or do (a SparseEncoder)
    max_length: int  # tokens per text, specials included
    device: str = "cpu"

    @classmethod
    def load(
        cls, checkpoint: str | Path, *, max_length: int | None = None, device: str = "cpu"
    ) -> CheckpointSparseEncoder:
        """ValueError for a checkpoint without MLM head (no SPLADE vectors) or tokenizer."""
        loaded = load_for_eval(checkpoint, device)
        caps = loaded.capabilities
        if not caps.sparse:
            raise ValueError(
                f"{checkpoint}: no SPLADE vectors ({caps.kind}: they need a masked-language-model "
                "head)"
            )
        return cls(
            model=loaded.model,
            tokenizer=loaded.tokenizer,
            pooling=caps.splade_pooling,
            activation=caps.splade_activation,
            max_active_dims=caps.splade_max_active_dims,
            skip_special=not caps.sparse_encoder,
            max_length=max_length or caps.max_tokens,
            device=device,
        )

    def encode(self, texts: Sequence[str], *, batch_size: int = 32) -> torch.Tensor:
        """(N, vocabulary) float32 SPLADE vectors of `texts`, zeros where a weight is 0.

        Batched by length; each text's added [CLS]/[SEP] (empty character spans, as the server
        finds them) are left out of the pooling unless the directory is a SparseEncoder's.
        """
        limit = min(self.max_length, int(self.model.config.max_position_embeddings))
        encs = [self.tokenizer.encode(t, max_length=limit, truncation=True) for t in texts]
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
        vocab = int(self.tokenizer.vocab_size)
        out = torch.zeros((len(encs), vocab), dtype=torch.float32)
        pad = int(self.tokenizer.pad_token_id)
        with evaluating(self.model):
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                ids, mask = pad_rows([encs[r].ids for r in rows], pad)
                special = torch.zeros_like(mask, dtype=torch.bool)  # (B, T)
                for b, r in enumerate(rows if self.skip_special else ()):
                    spans = encs[r].offsets
                    special[b, : len(spans)] = torch.tensor([s == e for s, e in spans])
                vectors = self.model.splade(
                    ids.to(self.device),
                    mask.to(self.device),
                    special_tokens_mask=special.to(self.device),
                    pooling=self.pooling,
                    activation=self.activation,
                )  # (B, V)
                # Cut to the tokenizer's ids first, then keep the top dims: the server's order.
                vectors = top_k_dims(vectors[:, :vocab].float().cpu(), self.max_active_dims)
                out[torch.tensor(rows)] = vectors
        return out


def evaluate_checkpoint_sparse_retrieval(
    checkpoint: Path,
    corpus: Sequence[str],
    *,
    batch_size: int = 32,
    max_seq_length: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """What `bert-eval --task retrieval --sparse` prints: SPLADE retrieval (dot products of the
    checkpoint's sparse vectors) and TF-IDF on the example -> definition pairs of `corpus`, side
    by side, with ratios and the mean number of active dimensions of queries and candidates."""
    rset = retrieval_set(corpus)
    if not rset.queries:
        raise ValueError(f"no example/definition pairs in {', '.join(map(str, corpus))}")
    encoder = CheckpointSparseEncoder.load(checkpoint, max_length=max_seq_length, device=device)
    q = encoder.encode(rset.queries, batch_size=batch_size)  # (Q, V)
    c = encoder.encode(rset.candidates, batch_size=batch_size)  # (C, V)
    ours = retrieval_metrics(q @ c.T, rset.targets)
    # The same vectors scaled to unit length first: what is left when the vectors' mass, which
    # an MLM never trained for SPLADE spreads unevenly, no longer decides.
    unit = retrieval_metrics(F.normalize(q, dim=1) @ F.normalize(c, dim=1).T, rset.targets)
    tfidf = tfidf_retrieval(rset)
    names = [k for k in tfidf if k.startswith("recall@") or k == "mrr"]
    return {
        "task": "retrieval",
        "system": "splade",
        "checkpoint": str(checkpoint),
        "corpus": [str(x) for x in corpus],
        "pooling": encoder.pooling,
        "activation": encoder.activation,
        "special_tokens_counted": not encoder.skip_special,
        "max_seq_length": encoder.max_length,
        "queries": len(rset.queries),
        "candidates": len(rset.candidates),
        "vocabulary": int(q.shape[1]),
        "active_dims": {
            "queries": float((q > 0).sum(dim=1).double().mean()),
            "candidates": float((c > 0).sum(dim=1).double().mean()),
        },
        "ours": {k: ours[k] for k in names},
        "cosine": {k: unit[k] for k in names},
        "tfidf": {k: tfidf[k] for k in names},
        "ratio_to_tfidf": {k: ours[k] / tfidf[k] if tfidf[k] else None for k in names},
    }
