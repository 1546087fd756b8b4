"""Tokenizer benchmark: parity with `transformers`, encode throughput and training time vs Rust.

    python -m bench.bench_tokenizer [--lines 50000] [--vocab-size 16000]

One run, side by side: our `WordPieceTokenizer` against `tokenizers.BertWordPieceTokenizer` (Rust)
and `transformers.BertTokenizer` (Rust-backed in transformers 5; the legacy pure-Python class is
used for the parity check only). Prints a markdown table with ratios and writes
`bench/results/bench_tokenizer.json`.

Deliberately not measured: batch encoding with Rust's thread pool (the serving path encodes one
request's texts at a time, off the event loop).
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from bench.common import (
    ROOT,
    TRAIN_FILES,
    VALID_FILES,
    bench_parser,
    ratio,
    setup_logging,
    table_lines,
    write_results,
)


def _lines(files: Iterable[Path], limit: int | None = None) -> list[str]:
    out: list[str] = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            out += [line.rstrip("\n") for line in fh]
    return out[:limit] if limit else out


def _rate(fn, texts: list[str]) -> float:
    t0 = time.perf_counter()
    for t in texts:
        fn(t)
    return len(texts) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    # The hostile strings live with the parity test (tests/ mirrors the packages).
    sys.path.insert(0, str(ROOT / "tests" / "tokenization"))
    from test_tokenizer_parity import HOSTILE
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    from tokenization import WordPieceTokenizer

    ap = bench_parser("bench_tokenizer", __doc__, quick=None)
    ap.add_argument("--lines", type=int, default=50_000, help="corpus lines for the speed test")
    ap.add_argument("--vocab-size", type=int, default=16_000)
    args = ap.parse_args(argv)
    setup_logging()
    work = Path(tempfile.mkdtemp(prefix="bench_tok_"))
    results: dict = {"vocab_size": args.vocab_size, "lines": args.lines}

    # --- vocabulary training, full corpus ---------------------------------------------------
    t0 = time.perf_counter()
    ours = WordPieceTokenizer.train(list(TRAIN_FILES), vocab_size=args.vocab_size, min_frequency=2)
    ours_train = time.perf_counter() - t0
    ours.save_pretrained(work / "ours")
    t0 = time.perf_counter()
    rust_trainer = BertWordPieceTokenizer(lowercase=True)
    rust_trainer.train(
        [str(f) for f in TRAIN_FILES],
        vocab_size=args.vocab_size,
        min_frequency=2,
        limit_alphabet=1_000_000,
    )
    rust_train = time.perf_counter() - t0
    overlap = len(set(ours.vocab) & set(rust_trainer.get_vocab())) / args.vocab_size
    results["train"] = {
        "ours_s": ours_train,
        "rust_s": rust_train,
        "ours_over_rust": ours_train / rust_train,
        "vocab_overlap": overlap,
    }

    # --- parity on the whole valid splits and hostile strings -------------------------------
    fast = BertTokenizerFast.from_pretrained(work / "ours")
    slow = BertTokenizerLegacy.from_pretrained(work / "ours")
    assert len(fast) == len(slow) == ours.vocab_size, "transformers did not read vocab.txt"
    valid = _lines(VALID_FILES)
    fast_bad = slow_bad = 0
    for text in itertools.chain(valid, HOSTILE):
        enc = ours.encode(text)
        ref = fast(text, return_offsets_mapping=True)
        if enc.ids != ref["input_ids"] or enc.offsets != [tuple(o) for o in ref["offset_mapping"]]:
            fast_bad += 1
        if enc.ids != slow(text)["input_ids"]:
            slow_bad += 1
    n_parity = len(valid) + len(HOSTILE)
    results["parity"] = {
        "texts": n_parity,
        "fast_mismatches": fast_bad,
        "legacy_slow_mismatches": slow_bad,
    }

    # --- single-text encode throughput ------------------------------------------------------
    texts = _lines(TRAIN_FILES, args.lines)
    rust = BertWordPieceTokenizer(str(work / "ours" / "vocab.txt"), lowercase=True)
    fresh = WordPieceTokenizer.from_pretrained(work / "ours")
    speed = {
        "ours_cold_cache": _rate(fresh.encode, texts),
        "ours_warm": _rate(fresh.encode, texts),
        "rust_tokenizers": _rate(rust.encode, texts),
        "transformers_BertTokenizer": _rate(fast, texts[: max(1, len(texts) // 5)]),
        "ours_warm_with_offsets": _rate(lambda t: fresh.encode(t).offsets, texts),
        "rust_with_offsets": _rate(lambda t: rust.encode(t).offsets, texts),
    }
    results["encode_per_s"] = speed
    results["ratios"] = {
        "ours_cold_vs_rust": speed["ours_cold_cache"] / speed["rust_tokenizers"],
        "ours_warm_vs_rust": speed["ours_warm"] / speed["rust_tokenizers"],
        "ours_warm_vs_transformers": speed["ours_warm"] / speed["transformers_BertTokenizer"],
        "ours_offsets_vs_rust_offsets": speed["ours_warm_with_offsets"]
        / speed["rust_with_offsets"],
        "train_time_ours_over_rust": ours_train / rust_train,
    }

    rows = [
        [
            f"parity, {n_parity} texts (valid splits + hostile)",
            f"{fast_bad} mismatches vs BertTokenizer(Fast)",
            f"{slow_bad} vs legacy Python BertTokenizer",
            "-",
        ]
    ]
    for label, mine, ref, name in (
        ("encode/s, cold cache", "ours_cold_cache", "rust_tokenizers", "Rust"),
        ("encode/s, warm cache", "ours_warm", "rust_tokenizers", "Rust"),
        ("encode/s, warm", "ours_warm", "transformers_BertTokenizer", "transformers"),
        ("encode + offsets/s", "ours_warm_with_offsets", "rust_with_offsets", "Rust"),
    ):
        rows.append(
            [
                label,
                f"{speed[mine]:,.0f}",
                f"{speed[ref]:,.0f} ({name})",
                ratio(speed[mine] / speed[ref]),
            ]
        )
    rows.append(
        [
            "vocab training, full corpus",
            f"{ours_train:.1f}s",
            f"{rust_train:.1f}s (Rust trainer)",
            f"{ratio(ours_train / rust_train)} time (vocab overlap {overlap:.1%})",
        ]
    )
    print(f"\n## Tokenizer benchmark ({args.lines} corpus lines, vocab {args.vocab_size})\n")
    print("\n".join(table_lines(["measure", "ours", "reference", "ratio"], rows)))
    write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
