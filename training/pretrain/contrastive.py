"""The contrastive (sentence-embedding) objective: InfoNCE over pooled embeddings, and its data.

A contrastive micro-batch is B positive pairs (a_i, b_i); every other b_j of the batch is a
negative for a_i (in-batch negatives). Both sides are encoded in one forward pass, pooled with
`model.pool` (mean over real tokens, or [CLS]) and scored by `info_nce`: cross-entropy over the
(B, B) cosine similarities divided by a temperature, the diagonal being the right answers.

Where the pairs come from (`train.contrastive_data`):

* ``pairs``: (usage example, definition) of the same WordNet gloss, from the train corpus files
  that are gloss files (`gloss_files`), minus anything sharing text with the run's ``--valid``
  files (`training.data.pairs.training_pairs`), so no valid text is ever trained on.
* ``simcse``: unsupervised SimCSE. Each document of the train corpus (truncated) is both a_i and
  b_i; the two copies go through the model in train mode, so dropout is the only difference
  between them. Without dropout the pair would be identical and the loss would teach nothing:
  `check_objective` refuses that configuration.
* ``both``: ceil(B / 2) gloss pairs and floor(B / 2) SimCSE sentences in one InfoNCE batch.

Data order mirrors `training.data.corpus`: every stream (pairs, sentences) is read through a
`RowOrder` seeded from the run seed, so the data position of a stream is one integer that the
training state saves, and a resumed run sees the same batches. Text is tokenized once (cached
like the MLM corpus, keyed by the texts and the tokenizer) and padded per batch to its longest row.

Deliberately not here: hard-negative mining, a momentum queue of extra negatives, projection
heads (the served embedding is the pooled encoder output itself), and cross-rank gathering of
negatives under DDP (each process contrasts its own micro-batch, as with gradient accumulation).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model import pool
from training.data.corpus import (
    DataError,
    RowOrder,
    TokenizedCorpus,
    read_token_arrays,
    tokenizer_fingerprint,
    write_token_arrays,
)
from training.data.pairs import gloss_files, training_pairs
from training.pretrain.config import TrainConfig
from training.run.options import TrainConfigError

__all__ = [
    "ContrastiveData",
    "TextTable",
    "build_contrastive_data",
    "check_objective",
    "contrastive_loss",
    "info_nce",
    "tokenize_texts",
]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
# Stream ids keep the row orders of the contrastive data apart from the MLM order (same seed).
_STREAM_SEEDS = {"pairs": 0x50414952, "simcse": 0x53494D43}  # "PAIR", "SIMC"
STREAMS = tuple(_STREAM_SEEDS)


# ----------------------------------------------------------------------------------------------
# The loss


def info_nce(
    a: torch.Tensor, b: torch.Tensor, temperature: float, *, symmetric: bool = False
) -> torch.Tensor:
    """InfoNCE with in-batch negatives: rows of `a` (B, H) match the same-index rows of `b`.

    Logits are cosine similarities / temperature; the loss is the mean cross-entropy of each
    a_i picking b_i among all b_j (and, with `symmetric`, the mean of that and b_i picking a_i).
    Since a cosine is at most 1, row i's loss is at least
    ``log(1 + sum_{j != i} exp((cos(a_i, b_j) - 1) / temperature))``, with equality exactly when
    b_i points like a_i: identical inputs reach that bound. For B orthonormal rows and b = a it
    is ``log(1 + (B - 1) * exp(-1 / temperature))``.
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"a and b must both be (B, H), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < 2:
        raise ValueError("InfoNCE needs at least 2 pairs (the others are the negatives)")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature  # (B, B)
    target = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = (loss + F.cross_entropy(logits.T, target)) / 2
    return loss


def contrastive_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    pooling: str,
    temperature: float,
    symmetric: bool,
) -> torch.Tensor:
    """InfoNCE of one contrastive batch laid out as rows [a_1..a_B, b_1..b_B] (2B, T).

    The model is called through its forward with an empty prediction mask rather than through
    `encode`: a DistributedDataParallel wrapper only sees its forward, and DDP expects every
    parameter to get a gradient. The MLM head's logits are (0, V), so adding their sum (exactly
    0.0) changes no value but gives the head's parameters their (zero) gradients.
    """
    nothing = torch.zeros_like(input_ids, dtype=torch.bool)
    out = model(input_ids, attention_mask=attention_mask, prediction_mask=nothing)
    emb = pool(out.last_hidden_state, attention_mask, pooling)  # (2B, H)
    a, b = emb.float().chunk(2)  # (B, H) each
    return info_nce(a, b, temperature, symmetric=symmetric) + out.logits.float().sum()


def check_objective(model_config: Any, cfg: TrainConfig) -> None:
    """Refuse settings whose contrastive stage could not work (TrainConfigError says why)."""
    if cfg.contrastive_weight <= 0:
        return
    if cfg.contrastive_data in ("simcse", "both") and not (
        model_config.hidden_dropout_prob > 0 or model_config.attention_probs_dropout_prob > 0
    ):
        raise TrainConfigError(
            f"train.contrastive_data={cfg.contrastive_data!r} (SimCSE) needs dropout, its only "
            f"augmentation, but model.hidden_dropout_prob={model_config.hidden_dropout_prob} "
            f"and model.attention_probs_dropout_prob="
            f"{model_config.attention_probs_dropout_prob}: set e.g. "
            "--model.hidden_dropout_prob 0.1, or use contrastive_data 'pairs'"
        )
    if cfg.contrastive_max_length > model_config.max_position_embeddings:
        raise TrainConfigError(
            f"train.contrastive_max_length={cfg.contrastive_max_length} exceeds "
            f"model.max_position_embeddings={model_config.max_position_embeddings}"
        )


# ----------------------------------------------------------------------------------------------
# Text


@dataclass
class TextTable:
    """Tokenized texts without special tokens: text i is `tokens[offsets[i]:offsets[i + 1]]`."""

    tokens: np.ndarray  # (N,) int32
    offsets: np.ndarray  # (D + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def from_corpora(cls, corpora: Sequence[TokenizedCorpus]) -> TextTable:
        """The documents of tokenized corpus files (shared with the MLM data, no re-tokenizing)."""
        tokens = [c.tokens.astype(np.int32) for c in corpora]
        offsets, base = [np.zeros(1, np.int64)], 0
        for c in corpora:
            offsets.append(c.offsets[1:].astype(np.int64) + base)
            base += c.num_tokens
        return cls(
            tokens=np.concatenate(tokens) if tokens else np.zeros(0, np.int32),
            offsets=np.concatenate(offsets),
        )


def _encode_texts(texts: Sequence[str], tokenizer: Any) -> TextTable:
    ids = [tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in ids], out=offsets[1:])
    flat = [i for x in ids for i in x]
    return TextTable(tokens=np.asarray(flat, dtype=np.int32), offsets=offsets)


def tokenize_texts(
    texts: Sequence[str], tokenizer: Any, cache_dir: str | os.PathLike[str] | None
) -> TextTable:
    """Token ids of `texts`, from the cache when the texts and the tokenizer are unchanged."""
    if cache_dir is None:
        return _encode_texts(texts, tokenizer)
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "tokenizer": tokenizer_fingerprint(tokenizer)})
             .encode())  # fmt: skip
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    key = "texts-" + h.hexdigest()[:32]
    cache = Path(cache_dir)
    target = cache / f"{key}.npz"
    cached = read_token_arrays(target)
    if cached is not None:
        table = TextTable(tokens=cached[0], offsets=cached[1])
        if len(table) == len(texts):
            logger.info("token cache hit for %d texts (%s)", len(texts), target.name)
            return table
    table = _encode_texts(texts, tokenizer)
    write_token_arrays(target, table.tokens, table.offsets)
    logger.info("tokenized %d texts (%d tokens)", len(texts), int(table.tokens.size))
    return table


# ----------------------------------------------------------------------------------------------
# Batches


class ContrastiveData:
    """Positive pairs of the configured kind, served as padded (2B, T) batches by position.

    `per_batch` says how many rows each stream gives to one micro-batch; `batch(starts)` builds
    the micro-batch whose rows of stream s sit at global positions `starts[s] ...`.
    """

    def __init__(
        self,
        *,
        mode: str,
        batch_size: int,
        max_length: int,
        seed: int,
        cls_id: int,
        sep_id: int,
        pad_id: int,
        texts: TextTable | None = None,
        pairs: np.ndarray | None = None,
        sentences: TextTable | None = None,
    ) -> None:
        if mode not in ("pairs", "simcse", "both"):
            raise ValueError(f"unknown contrastive data {mode!r}")
        self.mode, self.max_length = mode, max_length
        self.cls_id, self.sep_id, self.pad_id = cls_id, sep_id, pad_id
        self.texts, self.pairs, self.sentences = texts, pairs, sentences
        if mode == "pairs":
            self.per_batch = {"pairs": batch_size}
        elif mode == "simcse":
            self.per_batch = {"simcse": batch_size}
        else:
            self.per_batch = {"pairs": (batch_size + 1) // 2, "simcse": batch_size // 2}
        sizes = {"pairs": 0 if pairs is None else len(pairs), "simcse": len(sentences or ())}
        for stream in self.per_batch:
            if sizes[stream] == 0:
                raise DataError(f"contrastive data {mode!r}: no {stream} to train on")
        self.orders = {
            s: RowOrder(sizes[s], seed * 2**32 + _STREAM_SEEDS[s]) for s in self.per_batch
        }

    def _row(self, table: TextTable, i: int) -> np.ndarray:
        start = int(table.offsets[i])
        end = min(int(table.offsets[i + 1]), start + self.max_length - 2)
        return table.tokens[start:end]

    def batch(self, starts: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """`(ids, attention_mask)`, both (2B, T) int64: rows [a_1..a_B, b_1..b_B]."""
        a: list[np.ndarray] = []
        b: list[np.ndarray] = []
        if "pairs" in self.per_batch:
            assert self.texts is not None and self.pairs is not None
            for k in self.orders["pairs"].rows(starts["pairs"], self.per_batch["pairs"]):
                ex, definition = self.pairs[k]
                a.append(self._row(self.texts, int(ex)))
                b.append(self._row(self.texts, int(definition)))
        if "simcse" in self.per_batch:
            assert self.sentences is not None
            for k in self.orders["simcse"].rows(starts["simcse"], self.per_batch["simcse"]):
                row = self._row(self.sentences, int(k))
                a.append(row)
                b.append(row)  # the same tokens; dropout makes the two views differ
        rows = a + b
        T = max(len(r) for r in rows) + 2
        ids = np.full((len(rows), T), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), T), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, 0] = self.cls_id
            ids[i, 1 : len(r) + 1] = r
            ids[i, len(r) + 1] = self.sep_id
            mask[i, : len(r) + 2] = 1
        return ids, mask


def build_contrastive_data(
    cfg: TrainConfig,
    tokenizer: Any,
    *,
    corpus: Sequence[str | os.PathLike[str]],
    holdout: Sequence[str | os.PathLike[str]],
    train_corpora: Sequence[TokenizedCorpus],
) -> ContrastiveData:
    """The run's contrastive data: gloss pairs of `corpus` minus `holdout` text, and/or SimCSE
    sentences (the documents of `train_corpora`, the already tokenized MLM corpus)."""
    texts = pair_index = sentences = None
    if cfg.contrastive_data in ("pairs", "both"):
        sources = gloss_files(corpus)
        if not sources:
            raise DataError(
                f"train.contrastive_data={cfg.contrastive_data!r} needs WordNet-style gloss files "
                f"('lemmas: definition. Example.') among --corpus {[str(p) for p in corpus]}; "
                "none found (use contrastive_data 'simcse' for plain text)"
            )
        pairs = training_pairs(sources, holdout)
        if not pairs:
            raise DataError(f"no (example, definition) pairs in {sources} outside the holdout")
        unique: dict[str, int] = {}
        for ex, definition in pairs:
            unique.setdefault(ex, len(unique))
            unique.setdefault(definition, len(unique))
        pair_index = np.array([(unique[e], unique[d]) for e, d in pairs], dtype=np.int64)
        texts = tokenize_texts(list(unique), tokenizer, cfg.cache_dir or None)
        logger.info(
            "contrastive pairs: %d from %s (%d unique texts; holdout %s)",
            len(pairs),
            sources,
            len(unique),
            [str(p) for p in holdout],
        )
    if cfg.contrastive_data in ("simcse", "both"):
        # Documents without tokens never reach a TokenizedCorpus, so no row is empty.
        sentences = TextTable.from_corpora(train_corpora)
        logger.info("SimCSE sentences: %d documents of the train corpus", len(sentences))
    return ContrastiveData(
        mode=cfg.contrastive_data,
        batch_size=cfg.contrastive_batch_size,
        max_length=cfg.contrastive_max_length,
        seed=cfg.seed,
        cls_id=tokenizer.cls_token_id,
        sep_id=tokenizer.sep_token_id,
        pad_id=tokenizer.pad_token_id,
        texts=texts,
        pairs=pair_index,
        sentences=sentences,
    )
