"""`bert-eval`: metrics of a checkpoint directory on files, printed as JSON, one task per call.

    bert-eval --checkpoint runs/mini/final --corpus data/wordnet.valid.txt        # --task mlm
    {"loss": ..., "accuracy": ..., "perplexity": ..., "masked_tokens": ..., "rows": ..., ...}
    bert-eval --task cloze --checkpoint checkpoints/default --corpus data/wordnet.valid.txt
    {"task": "cloze", "items": 2000, "top1": ..., "top5": ..., "by_corpus": {...}, ...}
    bert-eval --task retrieval --checkpoint checkpoints/default --corpus data/wordnet.valid.txt
    {"task": "retrieval", "pooling": "mean", "ours": {"recall@1": ...}, "tfidf": {...}, ...}
    bert-eval --task retrieval --sparse --checkpoint checkpoints/default --corpus ...
    {"task": "retrieval", "system": "splade", "active_dims": {...}, "ours": {...}, ...}
    bert-eval --task rerank --checkpoint checkpoints/reranker --retriever checkpoints/default \\
        --corpus data/wordnet.valid.txt
    {"task": "rerank", "tfidf": {...}, "retriever": {...}, "reranked": {...}, ...}
    bert-eval --task classify --checkpoint runs/supersense/best --corpus valid.tsv

Each task is one row of `TASKS`: a runner from the parsed arguments to the JSON object printed,
calling the `evaluate_checkpoint_*` function of the module that owns the metric (mlm.py,
cloze.py, retrieval.py, sparse.py, rerank.py, classification.py; their docstrings say what the
figures mean). Exit
status 2 with one message for an unreadable checkpoint or corpus, 0 otherwise.

Deliberately not here: any metric; settings the checkpoint already records (sequence length,
masking, pooling) beyond the flags that override them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from model import POOLINGS
from training.evaluation.classification import evaluate_checkpoint_classify, format_report
from training.evaluation.cloze import evaluate_checkpoint_cloze
from training.evaluation.mlm import evaluate_checkpoint_mlm
from training.evaluation.rerank import evaluate_checkpoint_rerank
from training.evaluation.retrieval import evaluate_checkpoint_retrieval
from training.evaluation.sparse import evaluate_checkpoint_sparse_retrieval

__all__ = ["TASKS", "Task", "build_parser", "main"]


def run_mlm(args: argparse.Namespace) -> dict[str, Any]:
    return evaluate_checkpoint_mlm(
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


def run_cloze(args: argparse.Namespace) -> dict[str, Any]:
    return evaluate_checkpoint_cloze(
        args.checkpoint,
        args.corpus,
        seed=0 if args.seed is None else args.seed,
        max_items=args.max_items,
        batch_size=args.batch_size,
        device=args.device,
    )


def run_retrieval(args: argparse.Namespace) -> dict[str, Any]:
    if args.sparse:
        return evaluate_checkpoint_sparse_retrieval(
            args.checkpoint,
            args.corpus,
            batch_size=args.batch_size,
            max_seq_length=args.max_seq_length,
            device=args.device,
        )
    return evaluate_checkpoint_retrieval(
        args.checkpoint,
        args.corpus,
        pooling=args.pooling,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        device=args.device,
    )


def run_rerank(args: argparse.Namespace) -> dict[str, Any]:
    if args.retriever is None:
        raise ValueError("--task rerank needs --retriever (the embedding model's checkpoint)")
    return evaluate_checkpoint_rerank(
        args.checkpoint,
        args.corpus,
        retriever=args.retriever,
        top_k=args.top_k,
        batch_size=args.batch_size,
        device=args.device,
    )


def run_classify(args: argparse.Namespace) -> dict[str, Any]:
    metrics = evaluate_checkpoint_classify(
        args.checkpoint,
        args.corpus,
        batch_size=args.batch_size,
        max_length=args.max_seq_length,
        device=args.device,
        confusion_png=args.confusion,
    )
    print(format_report(metrics), file=sys.stderr)  # the table for people; JSON on stdout
    return metrics


class Task(NamedTuple):
    run: Callable[[argparse.Namespace], dict[str, Any]]
    about: str  # one line for --help


TASKS: dict[str, Task] = {
    "mlm": Task(
        run_mlm,
        "MLM loss, masked-token accuracy and perplexity on the corpus, with fixed per-row masks "
        "(comparable across checkpoints and runs)",
    ),
    "retrieval": Task(
        run_retrieval,
        "example->definition retrieval (recall@1/10, MRR) of the sentence embeddings (with "
        "--sparse: of the MLM head's SPLADE vectors) beside a TF-IDF baseline on the same pairs",
    ),
    "rerank": Task(
        run_rerank,
        "the same retrieval by --retriever's embeddings, its --top-k reranked by the checkpoint "
        "(a cross-encoder), beside the retriever alone and TF-IDF",
    ),
    "cloze": Task(run_cloze, "whole-word fill-in-the-blank top-1/top-5 on the corpus's lines"),
    "classify": Task(
        run_classify,
        "accuracy, macro-F1 and a per-class table of a fine-tuned classifier on labelled "
        "TSV/CSV/JSONL files",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    tasks = "; ".join(f"{name}: {task.about}" for name, task in TASKS.items())
    parser = argparse.ArgumentParser(
        prog="bert-eval",
        description=f"Metrics of a checkpoint directory on files, printed as JSON. {tasks}.",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory")
    parser.add_argument("--corpus", required=True, nargs="+", help=".txt or .jsonl files")
    parser.add_argument("--task", choices=tuple(TASKS), default="mlm")
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
        choices=POOLINGS,
        default=None,
        help="retrieval: sentence pooling (default: the checkpoint's, else mean)",
    )
    parser.add_argument(
        "--sparse",
        action="store_true",
        help="retrieval: SPLADE vectors from the MLM head (as /embed_sparse), dot product",
    )
    parser.add_argument(
        "--retriever", type=Path, default=None, help="rerank: the embedding model's checkpoint"
    )
    parser.add_argument("--top-k", type=int, default=20, help="rerank: candidates reranked")
    parser.add_argument(
        "--confusion",
        type=Path,
        default=None,
        metavar="OUT.png",
        help="classify: draw the confusion matrix into this file",
    )
    parser.add_argument("--device", default="cpu")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`bert-eval`: run the task's row of `TASKS` and print its metrics as JSON."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        metrics = TASKS[args.task].run(args)
    except (ValueError, OSError) as e:
        print(f"bert-eval: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
