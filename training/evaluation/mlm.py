"""Validation metrics for MLM (loss, masked-token accuracy, perplexity), of a model in a loop or
of a checkpoint directory (`bert-eval`'s default task).

Every row is masked with a generator seeded by `(seed, row index)`, so a given validation set
yields the same masks for every model, batch size and run: numbers are comparable across
checkpoints and across runs. Loss is the mean cross-entropy over all masked tokens of the set
(token-weighted, not a mean of batch means); perplexity is `exp(loss)`.

    bert-eval --checkpoint runs/mini/final --corpus data/wordnet.valid.txt
    {"loss": ..., "accuracy": ..., "perplexity": ..., "masked_tokens": ..., "rows": ..., ...}

Deliberately not here: the command line (cli.py), downstream (GLUE-style) evaluation, and masking
with a different policy than training's (the masking settings are read from the checkpoint's
training_config.yaml).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from model import BertForMaskedLM
from tokenization import WordPieceTokenizer
from training.data.corpus import LineDataset, PackedDataset, build_dataset, load_corpus
from training.data.masking import MaskingSpec, mask_batch

__all__ = [
    "eval_row_indices",
    "evaluate_checkpoint_mlm",
    "evaluate_mlm",
    "read_training_config",
]


def eval_row_indices(num_rows: int, max_rows: int) -> np.ndarray:
    """Rows to evaluate: all of them, or `max_rows` spread evenly over the set (so every source
    file of a multi-file validation set is represented). `eval_row_indices(10, 4) -> [0, 3, 6, 9]`.
    """
    if max_rows <= 0 or max_rows >= num_rows:
        return np.arange(num_rows)
    return np.unique(np.linspace(0, num_rows - 1, max_rows).round().astype(np.int64))


def _masked_row(
    dataset: PackedDataset | LineDataset, row: int, spec: MaskingSpec, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    ids, attn = dataset.rows(np.array([row]))
    inp, labels = mask_batch(ids, spec, np.random.default_rng([seed, row]), attn)
    return inp[0], labels[0], None if attn is None else attn[0]


@torch.no_grad()
def evaluate_mlm(
    model: torch.nn.Module,
    dataset: PackedDataset | LineDataset,
    spec: MaskingSpec,
    *,
    batch_size: int = 64,
    max_rows: int = 0,
    seed: int = 1234,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager[Any] | None = None,
) -> dict[str, float]:
    """MLM loss / accuracy / perplexity of `model` on `dataset` with fixed per-row masks.

    `model` follows the model package's interface (prediction_mask -> logits of shape (N, V)).
    The model is put in eval mode and its previous mode restored.
    """
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    rows = eval_row_indices(len(dataset), max_rows)
    try:
        for start in range(0, len(rows), batch_size):
            parts = [
                _masked_row(dataset, int(r), spec, seed) for r in rows[start : start + batch_size]
            ]
            T = max(len(p[0]) for p in parts)
            pad = getattr(dataset, "pad_id", 0)
            ids = np.full((len(parts), T), pad, dtype=np.int64)
            labels = np.full((len(parts), T), -100, dtype=np.int64)
            attn = np.zeros((len(parts), T), dtype=np.int64)
            for b, (i, lab, am) in enumerate(parts):
                ids[b, : len(i)] = i
                labels[b, : len(lab)] = lab
                attn[b, : len(i)] = 1 if am is None else am
            input_ids = torch.from_numpy(ids).to(device)
            label_t = torch.from_numpy(labels).to(device)
            pmask = label_t.ne(-100)
            attention = None if dataset.packed else torch.from_numpy(attn).to(device)
            with autocast if autocast is not None else contextlib.nullcontext():
                out = model(input_ids, attention_mask=attention, prediction_mask=pmask)
            logits = out.logits.float()  # (N, V), N = masked tokens of the batch
            target = label_t[pmask]  # (N,)
            total_loss += F.cross_entropy(logits, target, reduction="sum").item()
            correct += int((logits.argmax(-1) == target).sum())
            count += int(target.numel())
    finally:
        model.train(was_training)
    loss = total_loss / max(count, 1)
    return {
        "loss": loss,
        "accuracy": correct / max(count, 1),
        "perplexity": math.exp(min(loss, 50.0)),  # capped: exp of a diverged loss is just inf
        "masked_tokens": count,
        "rows": len(rows),
    }


def read_training_config(checkpoint: Path) -> dict[str, Any]:
    """The `train:` section of the checkpoint's training_config.yaml, or {} without one."""
    for name in ("training_config.yaml", "training_config.json"):
        p = checkpoint / name
        if p.is_file():
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
            return data.get("train", {}) if isinstance(data, dict) else {}
    return {}


def evaluate_checkpoint_mlm(
    checkpoint: Path,
    corpus: Sequence[str],
    *,
    batch_size: int = 64,
    max_rows: int = 0,
    seed: int | None = None,
    max_seq_length: int | None = None,
    line_by_line: bool = False,
    cache_dir: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """What `bert-eval --task mlm` prints: `evaluate_mlm` of a checkpoint directory on files.

    Settings left at None come from the checkpoint's training_config.yaml (sequence length,
    packing, masking policy and seed, token cache), so a run and its later evaluations use the
    same rows and masks. Raises ValueError / OSError for an unreadable checkpoint or corpus.
    """
    model = BertForMaskedLM.from_pretrained(checkpoint, map_location=device)
    tokenizer = WordPieceTokenizer.from_pretrained(checkpoint)
    train_cfg = read_training_config(checkpoint)
    seq_len = max_seq_length or int(train_cfg.get("max_seq_length", 128))
    packing = bool(train_cfg.get("packing", True)) and not line_by_line
    seed = seed if seed is not None else int(train_cfg.get("eval_seed", 1234))
    cache_dir = cache_dir or train_cfg.get("cache_dir")
    spec = MaskingSpec.from_vocab(
        tokenizer.vocab,
        tokenizer.special_ids,
        tokenizer.mask_token_id,
        mlm_probability=float(train_cfg.get("mlm_probability", 0.15)),
        mask_token_prob=float(train_cfg.get("mask_token_prob", 0.8)),
        random_token_prob=float(train_cfg.get("random_token_prob", 0.1)),
        whole_word=bool(train_cfg.get("whole_word_masking", False)),
    )
    corpora = load_corpus(list(corpus), tokenizer, cache_dir)
    dataset = build_dataset(corpora, tokenizer, seq_len=seq_len, packing=packing)
    model.to(device)
    metrics: dict[str, Any] = evaluate_mlm(
        model, dataset, spec, batch_size=batch_size, max_rows=max_rows, seed=seed, device=device
    )
    metrics.update(checkpoint=str(checkpoint), seed=seed, max_seq_length=seq_len)
    return metrics
