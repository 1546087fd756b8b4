"""Whole-word cloze: our checkpoints against count-based baselines, on the same items.

    python -m bench.bench_cloze [--quick] [--checkpoint NAME=DIR ...] [--max-items N] [--seed S]

Items (`training.evaluation.cloze.cloze_items`): lines of data/wordnet.valid.txt and data/pydocs.valid.txt
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

import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    DEFAULT_CHECKPOINT,
    TRAIN_FILES,
    VALID_FILES,
    bench_parser,
    cpu_report,
    named_checkpoints,
    ratio,
    setup_logging,
    table_lines,
    write_results,
)

log = logging.getLogger(__name__)
TARGET_RATIO, GOAL_RATIO = 1.0, 1.3
_ANSWER_RE = re.compile(r"[A-Za-z]{3,}")


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser(
        "bench_cloze", __doc__, quick="300 items per file, no MLM accuracy", threads=0
    )
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
    args = ap.parse_args(argv)
    setup_logging()
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

    checkpoints = named_checkpoints(args.checkpoint, ap) or {"default": DEFAULT_CHECKPOINT}
    tokenizers = {n: WordPieceTokenizer.from_pretrained(d) for n, d in checkpoints.items()}
    accept = vocab_word_filter(tokenizers.values())
    valid = list(VALID_FILES)
    items = cloze_items(valid, accept, seed=args.seed, max_items=max_items)
    log.info("%d items from %s (seed %d)", len(items), _names(VALID_FILES), args.seed)

    first = next(iter(tokenizers.values()))
    candidates = sorted(
        {
            form
            for tok in first.vocab
            if _ANSWER_RE.fullmatch(tok) and (form := accept(tok)) is not None
        }
    )
    t0 = time.perf_counter()
    ngram = NGramModel.fit(list(TRAIN_FILES), lowercase=first.lowercase)
    log.info("n-gram counts of %s in %.1fs", _names(TRAIN_FILES), time.perf_counter() - t0)

    rows: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    rows["unigram"] = score_cloze(items, unigram_predictor(ngram, candidates)(items)).to_dict()
    rows["n-gram (trigram, both sides)"] = score_cloze(
        items, ngram.predictor(candidates)(items)
    ).to_dict()
    log.info("baselines scored in %.1fs (%d candidates)", time.perf_counter() - t0, len(candidates))
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
        log.info("%s: scored in %.1fs", name, time.perf_counter() - t0)

    ref = rows["n-gram (trigram, both sides)"]
    for r in rows.values():
        r["top1_ratio"] = r["top1"] / ref["top1"] if ref["top1"] else None
        r["top5_ratio"] = r["top5"] / ref["top5"] if ref["top5"] else None
    print(markdown(rows, list(ref["by_corpus"])))
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
        "cpu_flags": cpu_report().summary,
        "torch": torch.__version__,
        "systems": rows,
        "acceptance": {"checkpoint": judged, "passed": passed},
    }
    write_results(args.out, out)
    return 0


def markdown(rows: dict[str, dict[str, Any]], corpora: list[str]) -> str:
    """Every system's scores side by side, with its ratios to the n-gram baseline's."""
    header = ["system", "top-1", "top-5", "top-1 / n-gram", "top-5 / n-gram"]
    header += [*(f"top-1 {c}" for c in corpora), "MLM accuracy"]
    table = [
        [
            name,
            f"{r['top1']:.3f}",
            f"{r['top5']:.3f}",
            ratio(r["top1_ratio"]),
            ratio(r["top5_ratio"]),
            *(f"{r['by_corpus'][c]['top1']:.3f}" for c in corpora),
            f"{r['mlm_accuracy']:.2%}" if "mlm_accuracy" in r else "-",
        ]
        for name, r in rows.items()
    ]
    return "\n".join(table_lines(header, table))


def _names(paths: tuple[Path, ...]) -> str:
    return ", ".join(p.name for p in paths)


if __name__ == "__main__":
    sys.exit(main())
