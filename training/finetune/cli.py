"""`bert-finetune`: fine-tune a checkpoint as a text classifier on labelled files, or as a reranker
(a cross-encoder) on query -> text pairs.

    bert-finetune --checkpoint checkpoints/default \\
        --train data/wordnet-supersense.train.tsv --valid data/wordnet-supersense.valid.tsv \\
        --output-dir runs/supersense --config configs/finetune_supersense.yaml
    bert-finetune --task rerank --checkpoint checkpoints/default \\
        --train data/wordnet.train.txt --holdout data/wordnet.valid.txt \\
        --output-dir runs/reranker --config configs/finetune_reranker.yaml

A reranker trains on `query`/`text` files (TSV/CSV/JSONL) or WordNet gloss files (their
(example, definition) pairs); `--holdout` files are never trained on; without `--valid` its dev
set is held out of the training pairs (`dev_candidates`), and `--miner` names the embedding model
that mines its hard negatives (default: `--checkpoint`).

Every `FinetuneConfig` field can be set in the YAML recipe, with its own flag for the common ones
(`--lr`, `--epochs`, ...) or with `--set name=value` for the rest; flags win over the recipe.
Exit status 2 for bad settings or data (one message naming the problem), 3 when training
diverged (too many non-finite steps in a row), 0 otherwise (also when stopped by Ctrl-C or
SIGTERM: `--resume` continues the run). The trained model is `OUTPUT_DIR/best`. Deliberately not
here: the loops themselves (training/finetune/tuner.py, reranker.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from model import ModelError
from training.data.labelled import CLASS_WEIGHTINGS
from training.finetune.config import RERANK_LOSSES, TASKS, FinetuneConfig, load_finetune_config
from training.finetune.reranker import RerankTuner
from training.finetune.tuner import FineTuner, Tuner
from training.run.loop import NonFiniteLossError
from training.run.options import TrainConfigError

# flag -> FinetuneConfig field
_FLAGS = {
    "epochs": "epochs",
    "max_steps": "max_steps",
    "time_budget": "time_budget_minutes",
    "lr": "lr",
    "batch_size": "batch_size",
    "warmup": "warmup_fraction",
    "weight_decay": "weight_decay",
    "max_length": "max_length",
    "class_weighting": "class_weighting",
    "seed": "seed",
    "num_threads": "num_threads",
    "eval_every": "eval_every",
    "task": "task",
    "loss": "loss",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bert-finetune",
        description="Fine-tune a BERT checkpoint (ours, a transformers or sentence-transformers "
        "directory) as a text classifier on labelled files (TSV/CSV with 'label' and 'text' "
        "columns, or JSONL), or with --task rerank as a reranker on query/text pairs (files "
        "with 'query' and 'text' columns, or WordNet gloss files). Writes OUTPUT_DIR/best, an HF "
        "...ForSequenceClassification directory that bert-serve serves on /predict (a "
        "reranker: on /rerank).",
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="pretrained checkpoint dir")
    p.add_argument(
        "--task", choices=TASKS, default=None, help="default: the recipe's, else classify"
    )
    p.add_argument(
        "--train", required=True, type=Path, nargs="+", help="training file(s) (classify: one)"
    )
    p.add_argument(
        "--valid", type=Path, nargs="+", default=[],
        help="validation file(s) (classify: one, required; rerank: a dev set, default held out "
        "of the training pairs)",
    )  # fmt: skip
    p.add_argument(
        "--holdout", type=Path, nargs="+", default=[],
        help="rerank: files whose sentences are never trained on (the benchmark's valid split)",
    )  # fmt: skip
    p.add_argument(
        "--miner", type=Path, default=None,
        help="rerank: the embedding model that mines hard negatives (default: --checkpoint)",
    )  # fmt: skip
    p.add_argument("--loss", choices=RERANK_LOSSES, default=None, help="rerank: the loss")
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--config", type=Path, default=None, help="YAML recipe (a finetune: section)")
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--time-budget", type=float, default=None, help="minutes of wall clock")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--warmup", type=float, default=None, help="warmup fraction of the schedule")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--max-length", type=int, default=None, help="tokens per text")
    p.add_argument("--class-weighting", choices=CLASS_WEIGHTINGS, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None, help="steps (0: once per epoch)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other FinetuneConfig field (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="INFO")
    return p


def build_tuner(cfg: FinetuneConfig, args: argparse.Namespace) -> Tuner:
    """The task's tuner, its data read (errors for bad files are raised here)."""
    if cfg.task == "rerank":
        return RerankTuner(
            cfg,
            checkpoint=args.checkpoint,
            train_files=args.train,
            output_dir=args.output_dir,
            holdout=args.holdout,
            valid_files=args.valid,
            miner=args.miner,
        )
    return FineTuner(
        cfg,
        checkpoint=args.checkpoint,
        train_file=args.train[0],
        valid_file=args.valid[0],
        output_dir=args.output_dir,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    overrides = {field: getattr(args, flag) for flag, field in _FLAGS.items()}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected NAME=VALUE")
        overrides[name.strip().replace("-", "_")] = value
    try:
        cfg = load_finetune_config(args.config, overrides)
    except (TrainConfigError, OSError) as e:
        parser.error(str(e))

    if cfg.task == "classify" and (len(args.train) != 1 or len(args.valid) != 1):
        parser.error("a classifier takes one --train and one --valid file")
    try:
        result = build_tuner(cfg, args).train(resume=args.resume, stop_after=args.stop_after)
    except NonFiniteLossError as e:
        print(f"bert-finetune: training diverged: {e}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError, ModelError) as e:
        print(f"bert-finetune: error: {e}", file=sys.stderr)
        return 2
    summary = {
        "step": result.step,
        "finished": result.finished,
        "best_checkpoint": str(result.best_dir) if result.best_dir else None,
        "best_valid": result.best,
        "examples_per_s": round(result.examples_per_s, 1),
        "train_time_s": round(result.train_time_s, 1),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
