"""`bert-train`: MLM pretraining from the command line.

    bert-train --config configs/bert_mini.yaml \\
        --corpus data/wordnet.train.txt data/pydocs.train.txt \\
        --valid data/wordnet.valid.txt data/pydocs.valid.txt \\
        --output-dir runs/mini --time-budget 45

A second stage (MLM + InfoNCE on WordNet example/definition pairs, from a checkpoint's weights
and tokenizer): `bert-train --config configs/bert_tiny_embed.yaml --corpus ... --valid ...
--output-dir runs/embed` (see training/pretrain/contrastive.py).

Any setting of the config file can be overridden: `--train.lr 1e-3`, `--model.num_hidden_layers 2`,
or flat `--lr 1e-3` when the name belongs to one section only; `--key=value` works too. Under
`torchrun --nproc_per_node=N` the same command trains with DDP.

Deliberately thin: parsing and error reporting only; the work is `prepare.run_training`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence

from training.pretrain.config import TrainConfig, load_run_config
from training.pretrain.prepare import run_training
from training.run.loop import NonFiniteLossError
from training.run.options import TrainConfigError

__all__ = ["build_parser", "main", "split_overrides"]


def _settings_help() -> str:
    lines = ["train settings (--train.KEY VALUE or --KEY VALUE), with defaults:"]
    for f in dataclasses.fields(TrainConfig):
        lines.append(f"  {f.name} = {f.default!r}")
    lines.append(
        "model settings (--model.KEY VALUE): BertConfig fields, e.g. hidden_size, "
        "num_hidden_layers, num_attention_heads, intermediate_size, hidden_dropout_prob, "
        "max_position_embeddings, norm_position; vocab_size is the size of the vocabulary "
        "trained when --vocab is not given."
    )
    lines.append("Unknown keys are errors. Booleans: true/false.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bert-train",
        description="Pretrain a BERT with masked-language modelling; writes servable "
        "checkpoints (model + tokenizer) into --output-dir (the finished run in DIR/final/).",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--config", help="YAML with model: and train: sections (configs/*.yaml)")
    p.add_argument("--corpus", nargs="+", required=True, help="training files (.txt or .jsonl)")
    p.add_argument("--valid", nargs="+", default=None, help="validation files")
    p.add_argument("--output-dir", required=True, help="checkpoints, metrics, plots go here")
    p.add_argument("--vocab", default=None, help="reuse this tokenizer directory (else train one)")
    p.add_argument("--max-steps", type=int, default=None, help="= --train.max_steps")
    p.add_argument("--save-every", type=int, default=None, help="= --train.save_every")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="MINUTES",
        help="lay the LR schedule over this wall-clock budget and stop when it is spent "
        "(= --train.time_budget_minutes)",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop (and checkpoint) at this step as an interruption would; the schedule of "
        "--max-steps is unchanged, so --resume continues it",
    )
    p.add_argument("--resume", action="store_true", help="continue from DIR/latest")
    p.add_argument("--log-level", default="INFO")
    return p


def split_overrides(extra: Sequence[str]) -> list[tuple[str, str]]:
    """`["--lr", "1e-3", "--train.seed=3"] -> [("lr", "1e-3"), ("train.seed", "3")]`."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--") or len(tok) == 2:
            raise TrainConfigError(f"unexpected argument {tok!r} (settings are --key value)")
        key = tok[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(extra) or extra[i + 1].startswith("--"):
                raise TrainConfigError(f"--{key} needs a value")
            value = extra[i + 1]
            i += 2
        out.append((key, value))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        overrides = split_overrides(extra)
        for flag, key in (
            ("max_steps", "train.max_steps"),
            ("save_every", "train.save_every"),
            ("time_budget", "train.time_budget_minutes"),
        ):
            value = getattr(args, flag)
            if value is not None:
                overrides.append((key, str(value)))
        model_section, cfg = load_run_config(args.config, overrides)
    except (TrainConfigError, OSError) as e:
        parser.error(str(e))  # exits with status 2
    if args.stop_after is not None and args.stop_after < 1:
        parser.error(f"--stop-after={args.stop_after} must be >= 1")

    try:
        result = run_training(
            model_section,
            cfg,
            corpus=args.corpus,
            valid=args.valid,
            output_dir=args.output_dir,
            vocab=args.vocab,
            resume=args.resume,
            stop_after=args.stop_after,
        )
    except NonFiniteLossError as e:
        print(f"bert-train: training diverged: {e}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError) as e:
        print(f"bert-train: error: {e}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        where = result.final_dir if result.finished else result.last_checkpoint
        print(f"bert-train: step {result.step}, checkpoint {where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
