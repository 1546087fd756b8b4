"""The pretraining recipe sweep: one lever at a time, equal wall-clock, on this machine.

    python -m bench.bench_recipes [--budget MIN] [--parallel N] [--only NAME ...] [--runs DIR]
    python -m bench.bench_recipes --collect-only --runs DIR    # table from finished runs

Every lever is a `bert-train` run of `configs/bert_tiny.yaml` with the default checkpoint's
vocabulary (unless the lever is the vocabulary), `--time-budget MIN` minutes of training on one
torch thread per run (`--parallel` runs side by side, one per core, so every run gets the same
share of the machine), differing from its reference in the listed overrides only. Round 1
compares position encodings on the old recipe (learned absolute positions, post-LN, lr 2e-3,
cosine, batch 32, 15% masking 80/10/10); round 2 varies one lever at a time around the round-1
winner (rotary positions); round 3 puts the round-2 winners together.

For each finished run the table gives: steps, training tokens/s, the valid MLM loss and
masked-token accuracy the run measured at its end (512 valid rows, fixed masks), and the
whole-word cloze top-1/top-5 of `bert-eval --task cloze` on both valid files (items chosen with
the run's own vocabulary; for the vocabulary levers that is a different item set, said so in
the table). Results: bench/results/recipes.json and bench/results/recipes.md.

Deliberately not here: longer confirmation runs and the shipped run (their commands are in the
default checkpoint's card), bf16 on CPUs without native bf16 (measured ~10x slower than fp32,
so excluded on such machines; the CPU flags are recorded).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atomicio import atomic_write_text
from bench.common import (
    DEFAULT_CHECKPOINT,
    RESULTS,
    ROOT,
    TRAIN_FILES,
    VALID_FILES,
    bench_parser,
    cpu_report,
    setup_logging,
    table_lines,
    write_results,
)

log = logging.getLogger(__name__)
CONFIG = ROOT / "configs" / "bert_tiny.yaml"
VOCAB = DEFAULT_CHECKPOINT  # every lever but the vocabulary ones reads the default's vocab.txt
ROPE = ["--model.position_embedding_type", "rotary"]
OLD = ["--model.position_embedding_type", "absolute", "--model.norm_position", "post"]
# The recipe of the default checkpoint before issue 12, for round 1: absolute positions, post-LN,
# lr 2e-3, cosine, Adam beta2 0.98, 15% masking 80/10/10, batch 32 (spelled out: the config's
# own values are now the winning recipe's).
OLD_RECIPE = [
    *OLD,
    "--batch_size",
    "32",
    "--adam_beta2",
    "0.98",
    "--lr",
    "2e-3",
    "--lr_schedule",
    "cosine",
    "--warmup_fraction",
    "0.06",
    "--mlm_probability",
    "0.15",
    "--mask_token_prob",
    "0.8",
    "--random_token_prob",
    "0.1",
]


# Round 3: the levers that won round 2, together.
COMBO = [
    "--lr",
    "4e-3",
    "--adam_beta2",
    "0.999",
    "--lr_schedule",
    "triangular",
    "--warmup_fraction",
    "0.5",
]


@dataclass(frozen=True)
class Lever:
    name: str
    round: int
    what: str
    overrides: tuple[str, ...]
    vocab: str | None = None  # a tokenizer directory other than the default's (vocab levers)


def _r2(name: str, what: str, *extra: str, vocab: str | None = None) -> Lever:
    return Lever(name, 2, what, (*OLD_RECIPE, *ROPE, *extra), vocab)


LEVERS = [
    Lever("s_base", 1, "old recipe: absolute positions, post-LN", tuple(OLD_RECIPE)),
    Lever("s_rope", 1, "rotary positions (RoPE), post-LN", (*OLD_RECIPE, *ROPE)),
    _r2("r_preln", "rotary + pre-LN", "--model.norm_position", "pre"),
    _r2("r_lr1e3", "rotary, peak lr 1e-3", "--lr", "1e-3"),
    _r2("r_lr4e3", "rotary, peak lr 4e-3", "--lr", "4e-3"),
    _r2(
        "r_tri",
        "rotary, one-cycle triangle (peak at 50%)",
        "--lr_schedule",
        "triangular",
        "--warmup_fraction",
        "0.5",
    ),
    _r2("r_bs64", "rotary, batch 64", "--batch_size", "64"),
    _r2("r_bs16", "rotary, batch 16", "--batch_size", "16"),
    _r2("r_mlm25", "rotary, 25% masking", "--mlm_probability", "0.25"),
    _r2("r_mlm40", "rotary, 40% masking", "--mlm_probability", "0.4"),
    _r2(
        "r_allmask",
        "rotary, always [MASK] (no 10/10)",
        "--mask_token_prob",
        "1.0",
        "--random_token_prob",
        "0.0",
    ),
    _r2("r_wwm", "rotary, whole-word masking", "--whole_word_masking", "true"),
    _r2("r_beta999", "rotary, Adam beta2 0.999", "--adam_beta2", "0.999"),
    _r2("r_deep", "rotary, narrow-deep L4 H128", "--model.num_hidden_layers", "4"),
    _r2(
        "r_mini",
        "rotary, BERT-mini L4 H256",
        "--model.num_hidden_layers",
        "4",
        "--model.hidden_size",
        "256",
        "--model.num_attention_heads",
        "4",
        "--model.intermediate_size",
        "1024",
    ),
    _r2("r_vocab4k", "rotary, 4k vocabulary", vocab="vocab4k"),
    _r2("r_vocab16k", "rotary, 16k vocabulary", vocab="vocab16k"),
    _r2("r_lr8e3", "rotary, peak lr 8e-3", "--lr", "8e-3"),
    Lever(
        "c_bs16",
        3,
        "rotary + lr 4e-3 + beta2 0.999 + triangle + batch 16 (the winners together)",
        (*OLD_RECIPE, *ROPE, *COMBO, "--batch_size", "16"),
    ),
    Lever(
        "c_bs32",
        3,
        "rotary + lr 4e-3 + beta2 0.999 + triangle, batch 32",
        (*OLD_RECIPE, *ROPE, *COMBO, "--batch_size", "32"),
    ),
]
VOCAB_SIZES = {"vocab4k": 4096, "vocab16k": 16384}


def ensure_vocab(runs: Path, name: str) -> Path:
    out = runs / name
    if not (out / "vocab.txt").is_file():
        cmd = [sys.executable, "-m", "tokenization.cli", "train", "--corpus"]
        cmd += map(str, TRAIN_FILES)
        cmd += ["--vocab-size", str(VOCAB_SIZES[name]), "--out", str(out)]
        subprocess.run(cmd, check=True, cwd=ROOT)
    return out


def run_lever(lever: Lever, runs: Path, budget: float) -> None:
    vocab = ensure_vocab(runs, lever.vocab) if lever.vocab else VOCAB
    out = runs / lever.name
    cmd = [sys.executable, "-m", "training.pretrain.cli", "--config", str(CONFIG)]
    cmd += ["--corpus", *map(str, TRAIN_FILES), "--valid", *map(str, VALID_FILES)]
    cmd += ["--vocab", str(vocab), "--output-dir", str(out), "--time-budget", str(budget)]
    cmd += ["--max-steps", "1000000", "--progress_bar", "false", "--eval_every", "250"]
    cmd += ["--save_every", "100000", "--plot", "false", "--tensorboard", "false"]
    cmd += ["--num_threads", "1", *lever.overrides]
    log.info("%s: %s", lever.name, " ".join(lever.overrides))
    with (runs / f"{lever.name}.log").open("w") as f:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)


def collect(lever: Lever, runs: Path) -> dict[str, Any] | None:
    out = runs / lever.name
    metrics = out / "metrics.jsonl"
    if not (out / "final" / "config.json").is_file() or not metrics.is_file():
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "tokens_per_s" in r]
    valid = [r for r in rows if "valid_loss" in r]
    cloze_file = runs / f"{lever.name}.cloze.json"
    if not cloze_file.is_file():
        cmd = [sys.executable, "-m", "training.evaluation.cli", "--task", "cloze"]
        cmd += ["--checkpoint", str(out / "final"), "--corpus", *map(str, VALID_FILES)]
        done = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)
        cloze_file.write_text(done.stdout)
    cloze = json.loads(cloze_file.read_text())
    return {
        "name": lever.name,
        "round": lever.round,
        "lever": lever.what,
        "overrides": list(lever.overrides),
        "steps": train[-1]["step"],
        "minutes": round(train[-1]["elapsed_s"] / 60, 1),
        "tokens_per_s": sum(r["tokens_per_s"] for r in train) / len(train),
        "valid_loss": valid[-1]["valid_loss"],
        "valid_accuracy": valid[-1]["valid_accuracy"],
        "cloze_top1": cloze["top1"],
        "cloze_top5": cloze["top5"],
        "cloze_items": cloze["items"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser("bench_recipes", __doc__, quick=None, out=False)
    ap.add_argument("--budget", type=float, default=10.0, help="minutes of training per run")
    ap.add_argument("--parallel", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--only", nargs="+", default=None, help="lever names")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "recipes")
    ap.add_argument("--collect-only", action="store_true", help="tabulate finished runs only")
    args = ap.parse_args(argv)
    setup_logging()
    levers = [lv for lv in LEVERS if args.only is None or lv.name in args.only]
    args.runs.mkdir(parents=True, exist_ok=True)
    if not args.collect_only:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            list(pool.map(lambda lv: run_lever(lv, args.runs, args.budget), levers))
        log.info("%d runs in %.1f min", len(levers), (time.perf_counter() - t0) / 60)
    table = [r for lv in levers if (r := collect(lv, args.runs)) is not None]
    text = markdown(table)
    print(text)
    meta = {"cpu_flags": cpu_report().summary, "budget_minutes": args.budget, "threads_per_run": 1}
    write_results(RESULTS / "recipes.json", {**meta, "runs": table})
    atomic_write_text(
        RESULTS / "recipes.md",
        f"CPU flags: {meta['cpu_flags']}; {args.budget:g} min per run, 1 torch thread each, "
        f"{args.parallel} side by side.\n\n{text}\n",
    )
    return 0


def markdown(table: list[dict[str, Any]]) -> str:
    """One row per finished run: its speed, its valid MLM figures and its cloze scores."""
    rows = [
        [
            r["name"],
            r["lever"],
            f"{r['steps']:,}",
            f"{r['tokens_per_s']:,.0f}",
            f"{r['valid_loss']:.3f}",
            f"{r['valid_accuracy']:.1%}",
            f"{r['cloze_top1']:.1%}" + (" (own items)" if "vocab" in r["name"] else ""),
            f"{r['cloze_top5']:.1%}",
        ]
        for r in table
    ]
    header = ["run", "lever", "steps", "tokens/s", "valid loss", "MLM acc", "cloze top-1"]
    return "\n".join(table_lines([*header, "cloze top-5"], rows))


if __name__ == "__main__":
    sys.exit(main())
