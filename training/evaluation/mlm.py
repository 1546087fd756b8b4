"""Validation metrics for MLM (loss, masked-token accuracy, perplexity) and the `bert-eval` CLI.

Every row is masked with a generator seeded by `(seed, row index)`, so a given validation set
yields the same masks for every model, batch size and run: numbers are comparable across
checkpoints and across runs. Loss is the mean cross-entropy over all masked tokens of the set
(token-weighted, not a mean of batch means); perplexity is `exp(loss)`.

    bert-eval --checkpoint runs/mini/final --corpus data/wordnet.valid.txt
    {"loss": ..., "accuracy": ..., "perplexity": ..., "masked_tokens": ..., "rows": ..., ...}

`--task cloze` measures what `/fill-mask` users see: one whole word of each held-out line
masked, top-1 / top-5 of the model's predictions, overall and per file
(`training/evaluation/cloze.py`).

    bert-eval --task cloze --checkpoint checkpoints/default --corpus data/wordnet.valid.txt
    {"task": "cloze", "items": 2000, "top1": ..., "top5": ..., "by_corpus": {...}, ...}

`--task retrieval` scores sentence embeddings instead (see `training/evaluation/retrieval.py`):
every usage example of a WordNet-style file must find its own definition; recall@1, recall@10
and MRR are printed beside a TF-IDF baseline computed on the same pairs, with the ratio
ours / TF-IDF.

    bert-eval --task retrieval --checkpoint checkpoints/default --corpus data/wordnet.valid.txt
    {"task": "retrieval", "pooling": "mean", "ours": {"recall@1": ...}, "tfidf": {...}, ...}

Deliberately not here: downstream (GLUE-style) evaluation, and masking with a different policy
than training's (the masking settings are read from the checkpoint's training_config.yaml).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.data.corpus import LineDataset, PackedDataset, build_dataset, load_corpus
from training.data.masking import MaskingSpec, mask_batch

__all__ = [
    "checkpoint_pooling",
    "eval_row_indices",
    "evaluate_checkpoint_cloze",
    "evaluate_checkpoint_mlm",
    "evaluate_checkpoint_retrieval",
    "evaluate_mlm",
    "main",
]

logger = logging.getLogger(__name__)


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


def _read_training_config(checkpoint: Path) -> dict[str, Any]:
    for name in ("training_config.yaml", "training_config.json"):
        p = checkpoint / name
        if p.is_file():
            import yaml

            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
            return data.get("train", {}) if isinstance(data, dict) else {}
    return {}


def checkpoint_pooling(checkpoint: Path) -> str:
    """The pooling a checkpoint was trained with (`pooling` in its config.json), else "mean"."""
    try:
        config = json.loads((Path(checkpoint) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "mean"  # loading the model reports a missing or broken config properly
    pooling = config.get("pooling", "mean") if isinstance(config, dict) else "mean"
    if pooling not in ("mean", "cls"):
        raise ValueError(
            f"{checkpoint}/config.json: pooling must be 'mean' or 'cls', got {pooling!r}"
        )
    return pooling


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
    from model import BertForMaskedLM
    from tokenization import WordPieceTokenizer

    model = BertForMaskedLM.from_pretrained(checkpoint, map_location=device)
    tokenizer = WordPieceTokenizer.from_pretrained(checkpoint)
    train_cfg = _read_training_config(checkpoint)
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

    pooling=None uses the checkpoint's own (`checkpoint_pooling`). Raises ValueError when the
    files hold no gloss with a usage example.
    """
    from model import BertForMaskedLM
    from tokenization import WordPieceTokenizer
    from training.data.pairs import retrieval_set
    from training.evaluation.retrieval import evaluate_retrieval, tfidf_retrieval

    rset = retrieval_set(corpus)
    if not rset.queries:
        raise ValueError(
            f"no example/definition pairs in {', '.join(map(str, corpus))}: retrieval needs "
            "WordNet-style gloss lines ('lemma, lemma: definition. Usage example.')"
        )
    pooling = pooling or checkpoint_pooling(checkpoint)
    model = BertForMaskedLM.from_pretrained(checkpoint, map_location=device)
    tokenizer = WordPieceTokenizer.from_pretrained(checkpoint)
    seq_len = max_seq_length or int(_read_training_config(checkpoint).get("max_seq_length", 128))
    ours = evaluate_retrieval(
        model,
        tokenizer,
        rset,
        pooling=pooling,
        batch_size=batch_size,
        max_length=seq_len,
        device=device,
    )
    tfidf = tfidf_retrieval(rset)
    metric_names = [k for k in tfidf if k.startswith("recall@") or k == "mrr"]
    return {
        "task": "retrieval",
        "checkpoint": str(checkpoint),
        "corpus": [str(c) for c in corpus],
        "pooling": pooling,
        "max_seq_length": seq_len,
        "queries": len(rset.queries),
        "candidates": len(rset.candidates),
        "ours": {k: ours[k] for k in metric_names},
        "tfidf": {k: tfidf[k] for k in metric_names},
        # None, not inf, when TF-IDF scores 0: JSON has no infinity.
        "ratio_to_tfidf": {k: ours[k] / tfidf[k] if tfidf[k] else None for k in metric_names},
    }


def evaluate_checkpoint_cloze(
    checkpoint: Path,
    corpus: Sequence[str],
    *,
    seed: int = 0,
    max_items: int = 2000,
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, Any]:
    """What `bert-eval --task cloze` prints: whole-word cloze top-1/top-5 of a checkpoint on the
    lines of `corpus` (items chosen with its own vocabulary; see `training/evaluation/cloze.py`)."""
    from model import BertForMaskedLM
    from tokenization import WordPieceTokenizer
    from training.evaluation.cloze import (
        cloze_items,
        model_predictor,
        score_cloze,
        vocab_word_filter,
    )

    model = BertForMaskedLM.from_pretrained(checkpoint, map_location=device)
    tokenizer = WordPieceTokenizer.from_pretrained(checkpoint)
    items = cloze_items(corpus, vocab_word_filter([tokenizer]), seed=seed, max_items=max_items)
    if not items:
        raise ValueError(
            f"no cloze items in {', '.join(map(str, corpus))}: no line of 6-30 words holds a "
            "word of 3+ letters that is a single token of the vocabulary"
        )
    predict = model_predictor(model, tokenizer, batch_size=batch_size, device=device)
    score = score_cloze(items, predict([it.masked(tokenizer.mask_token) for it in items]))
    return {
        "task": "cloze",
        "checkpoint": str(checkpoint),
        "corpus": [str(c) for c in corpus],
        "seed": seed,
        "max_items_per_file": max_items,
        **score.to_dict(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """`bert-eval`: print validation metrics of a checkpoint directory as JSON.

    --task mlm (default): MLM loss / accuracy / perplexity; --task retrieval: example ->
    definition retrieval with our embeddings and a TF-IDF baseline; --task classify: accuracy,
    macro-F1 and a per-class table of a classifier on labelled files (`--corpus` takes them).
    """
    parser = argparse.ArgumentParser(
        prog="bert-eval",
        description="MLM loss, masked-token accuracy and perplexity of a checkpoint on a corpus, "
        "with fixed per-row masks (comparable across checkpoints and runs); with --task cloze, "
        "whole-word fill-in-the-blank top-1/top-5 on the corpus's lines; or, with --task "
        "retrieval, example->definition retrieval (recall@1/10, MRR) of its sentence embeddings "
        "beside a TF-IDF baseline on the same pairs; with --task classify, accuracy, macro-F1 "
        "and a per-class table of a fine-tuned classifier on labelled TSV/CSV/JSONL files. "
        "Prints JSON.",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory")
    parser.add_argument("--corpus", required=True, nargs="+", help=".txt or .jsonl files")
    parser.add_argument("--task", choices=("mlm", "retrieval", "cloze", "classify"), default="mlm")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-rows", type=int, default=0, help="evaluate at most N rows (0=all)")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="mlm: masking seed (default: the run's); cloze: item seed (default 0)",
    )
    parser.add_argument(
        "--max-items", type=int, default=2000, help="cloze: items per file (0 = every line)"
    )
    parser.add_argument("--max-seq-length", type=int, default=None, help="default: the run's")
    parser.add_argument(
        "--line-by-line", action="store_true", help="one row per document (default: as trained)"
    )
    parser.add_argument("--cache-dir", default=None, help="token cache (default: the run's)")
    parser.add_argument(
        "--pooling",
        choices=("mean", "cls"),
        default=None,
        help="retrieval: sentence pooling (default: the checkpoint's, else mean)",
    )
    parser.add_argument(
        "--confusion",
        type=Path,
        default=None,
        metavar="OUT.png",
        help="classify: draw the confusion matrix into this file",
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    try:
        if args.task == "classify":
            from training.evaluation.classification import (
                evaluate_checkpoint_classify,
                format_report,
            )

            metrics = evaluate_checkpoint_classify(
                args.checkpoint,
                args.corpus,
                batch_size=args.batch_size,
                max_length=args.max_seq_length,
                device=args.device,
                confusion_png=args.confusion,
            )
            print(format_report(metrics), file=sys.stderr)  # the table for people; JSON below
        elif args.task == "cloze":
            metrics = evaluate_checkpoint_cloze(
                args.checkpoint,
                args.corpus,
                seed=0 if args.seed is None else args.seed,
                max_items=args.max_items,
                batch_size=args.batch_size,
                device=args.device,
            )
        elif args.task == "retrieval":
            metrics = evaluate_checkpoint_retrieval(
                args.checkpoint,
                args.corpus,
                pooling=args.pooling,
                batch_size=args.batch_size,
                max_seq_length=args.max_seq_length,
                device=args.device,
            )
        else:
            metrics = evaluate_checkpoint_mlm(
                args.checkpoint,
                args.corpus,
                batch_size=args.batch_size,
                max_rows=args.max_rows,
                seed=args.seed,
                max_seq_length=args.max_seq_length,
                line_by_line=args.line_by_line,
                cache_dir=args.cache_dir,
                device=args.device,
            )
    except (ValueError, OSError) as e:
        print(f"bert-eval: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
