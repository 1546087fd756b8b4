"""Whole-word cloze: our checkpoints against count-based baselines, on the same items.

    python -m bench.bench_cloze [--quick] [--checkpoint NAME=DIR ...] [--max-items N] [--seed S]

Items (`training.cloze.cloze_items`): lines of data/wordnet.valid.txt and data/pydocs.valid.txt
of 6-30 words and at most 200 characters, one word of 3+ letters masked per line, the word a
single token of *every* compared checkpoint's vocabulary, so each system answers the very same
items. Systems:

* unigram: the most frequent candidate words of the training files, whatever the context;
* n-gram: an interpolated absolute-discounting trigram model of the training files scoring each
  candidate by the three trigrams around the gap (context on both sides; `training/ngram.py`);
* each checkpoint: its top predictions at the `[MASK]`, over its whole vocabulary, exactly what
  `/fill-mask` answers. Also its masked-token accuracy on the same valid files, as `bert-eval`
  computes it.

Baselines choose among the candidate words (vocabulary words of 3+ letters), which already tells
them what kind of token the answer is; the models get no such hint. So each checkpoint also gets a
row "<name>, candidates only": its ranking of those same candidate words alone (what `/fill-mask`
answers with them as `targets`), the like-for-like comparison. Ratios are top-1 and top-5 over
the n-gram baseline's on the same items. The acceptance line is issue 12's: the default
checkpoint's top-1 >= 1.0x the n-gram's (goal 1.3x) and its top-5 above the n-gram's.

Results: a markdown table on stdout and bench/results/bench_cloze.json. Deliberately not
measured: speed (bench_serve and bench_model do that), multi-token words.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from model import hardware

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
RESULTS = ROOT / "bench" / "results" / "bench_cloze.json"
VALID_FILES = ("wordnet.valid.txt", "pydocs.valid.txt")
TRAIN_FILES = ("wordnet.train.txt", "pydocs.train.txt")
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "default"
TARGET_RATIO, GOAL_RATIO = 1.0, 1.3
_ANSWER_RE = re.compile(r"[A-Za-z]{3,}")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_flags() -> str:
    """The CPU features that decide fp32/bf16 speed, for the record."""
    flags = hardware.cpu_flags()
    if flags is None:
        return platform.processor() or "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512/amx"


def save_results(path: Path, results: dict[str, Any]) -> None:
    """Write a benchmark's results as indented JSON and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {path}")


def parse_checkpoints(values: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--checkpoint wants NAME=DIR, got {v!r}")
        out[name] = Path(path)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a checkpoint to compare (repeatable); the first is the one the acceptance line "
        "judges (default: default=checkpoints/default)",
    )
    ap.add_argument("--max-items", type=int, default=2000, help="items per valid file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="300 items per file, no MLM accuracy")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    max_items = 300 if args.quick else args.max_items

    from model import BertForMaskedLM
    from tokenization import WordPieceTokenizer
    from training.evaluation.cloze import (
        cloze_items,
        model_predictor,
        score_cloze,
        vocab_word_filter,
    )
    from training.evaluation.mlm import evaluate_checkpoint_mlm
    from training.evaluation.ngram import NGramModel, unigram_predictor

    checkpoints = parse_checkpoints(args.checkpoint) or {"default": DEFAULT_CHECKPOINT}
    tokenizers = {n: WordPieceTokenizer.from_pretrained(d) for n, d in checkpoints.items()}
    accept = vocab_word_filter(tokenizers.values())
    valid = [DATA / f for f in VALID_FILES]
    items = cloze_items(valid, accept, seed=args.seed, max_items=max_items)
    log(f"{len(items)} items from {', '.join(VALID_FILES)} (seed {args.seed})")

    first = next(iter(tokenizers.values()))
    candidates = sorted(
        {
            form
            for tok in first.vocab
            if _ANSWER_RE.fullmatch(tok) and (form := accept(tok)) is not None
        }
    )
    t0 = time.perf_counter()
    ngram = NGramModel.fit([DATA / f for f in TRAIN_FILES], lowercase=first.lowercase)
    log(f"n-gram counts of {', '.join(TRAIN_FILES)} in {time.perf_counter() - t0:.1f}s")

    rows: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    rows["unigram"] = score_cloze(items, unigram_predictor(ngram, candidates)(items)).to_dict()
    rows["n-gram (trigram, both sides)"] = score_cloze(
        items, ngram.predictor(candidates)(items)
    ).to_dict()
    log(f"baselines scored in {time.perf_counter() - t0:.1f}s ({len(candidates)} candidates)")
    for name, directory in checkpoints.items():
        t0 = time.perf_counter()
        tok = tokenizers[name]
        model = BertForMaskedLM.from_pretrained(directory)
        predictions = model_predictor(model, tok)([it.masked(tok.mask_token) for it in items])
        row = score_cloze(items, predictions).to_dict()
        row["checkpoint"] = str(directory)
        if not args.quick:
            mlm = evaluate_checkpoint_mlm(directory, [str(p) for p in valid])
            row["mlm_accuracy"], row["mlm_loss"] = mlm["accuracy"], mlm["loss"]
        rows[name] = row
        # The same question the baselines answer: rank only the candidate words.
        restricted = model_predictor(model, tok, candidates=candidates)
        row = score_cloze(items, restricted([it.masked(tok.mask_token) for it in items])).to_dict()
        row["checkpoint"] = str(directory)
        rows[f"{name}, candidates only"] = row
        log(f"{name}: scored in {time.perf_counter() - t0:.1f}s")

    ref = rows["n-gram (trigram, both sides)"]
    corpora = list(ref["by_corpus"])
    head = "| system | top-1 | top-5 | top-1 / n-gram | top-5 / n-gram | "
    head += " | ".join(f"top-1 {c}" for c in corpora) + " | MLM accuracy |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, r in rows.items():
        r["top1_ratio"] = r["top1"] / ref["top1"] if ref["top1"] else None
        r["top5_ratio"] = r["top5"] / ref["top5"] if ref["top5"] else None
        per = " | ".join(f"{r['by_corpus'][c]['top1']:.3f}" for c in corpora)
        acc = f"{r['mlm_accuracy']:.2%}" if "mlm_accuracy" in r else "-"
        print(
            f"| {name} | {r['top1']:.3f} | {r['top5']:.3f} | {r['top1_ratio']:.2f}x | "
            f"{r['top5_ratio']:.2f}x | {per} | {acc} |"
        )
    judged = next(iter(checkpoints))
    j = rows[judged]
    passed = j["top1_ratio"] >= TARGET_RATIO and j["top5"] > ref["top5"]
    print(
        f"\nacceptance ({judged}): top-1 {j['top1_ratio']:.2f}x the n-gram's (target "
        f">= {TARGET_RATIO}x, goal {GOAL_RATIO}x), top-5 {j['top5']:.3f} vs {ref['top5']:.3f}: "
        f"{'PASS' if passed else 'FAIL'}"
    )
    out = {
        "items": len(items),
        "max_items_per_file": max_items,
        "seed": args.seed,
        "candidates": len(candidates),
        "cpu_flags": cpu_flags(),
        "torch": torch.__version__,
        "systems": rows,
        "acceptance": {"checkpoint": judged, "passed": passed},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
