"""Fill-mask forward speed: our `BertForMaskedLM` vs `transformers.BertForMaskedLM`, same weights.

    python -m bench.bench_model [--quick] [--threads N] [--shapes mini,base] [--checkpoint DIR]

Workload: batches of 32 texts of 8-64 words taken from data/wordnet.valid.txt and
data/pydocs.valid.txt, one word of each replaced by [MASK]; single-text requests for latency.
Both systems get the very same padded tensors, in the same order, in the same process and thread
count (torch.set_num_threads), under torch.inference_mode, with timings interleaved so machine
noise hits both alike. transformers computes the full (B, T, V) logits as its fill-mask pipeline
does, then takes the [MASK] rows; ours projects only the [MASK] rows (prediction_mask) and runs
the last layer only there too (return_hidden=False: what a fill-mask server needs). Ours without
that last-layer pruning is timed as well and shown in brackets. All then apply softmax + top-5,
and the top-5 ids must be identical (asserted; a swap between two probabilities closer than 1e-5
is counted as a tie, not a failure).

Weights are random (BERT init) unless --checkpoint is given; speed does not depend on them. The
tokenizer is a 16k WordPiece vocab trained with `tokenizers` on data/*.train.txt into a temporary
directory (or the checkpoint's vocab.txt), loaded as a transformers BertTokenizerFast.
Results: a markdown table on stdout and bench/results/bench_model.json. Deliberately not measured:
GPU speed, tokenization time, batching delays (see the serving benchmarks).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
RESULTS = ROOT / "bench" / "results" / "bench_model.json"
VALID_FILES = ("wordnet.valid.txt", "pydocs.valid.txt")
TRAIN_FILES = ("wordnet.train.txt", "pydocs.train.txt")
SHAPES = {
    # name: (layers, hidden, heads, intermediate); vocab is the tokenizer's (16k)
    "mini": (4, 256, 4, 1024),
    "base": (12, 768, 12, 3072),
}
BATCH_SIZE = 32
MIN_WORDS, MAX_WORDS = 8, 64
TIE_TOLERANCE = 1e-5  # probabilities this close may swap order between two correct kernels


def build_tokenizer(checkpoint: Path | None, workdir: Path, vocab_size: int = 16000):
    """A transformers BertTokenizerFast: the checkpoint's, or a 16k vocab trained on data/."""
    from transformers import BertTokenizerFast

    if checkpoint is not None:
        tok = BertTokenizerFast.from_pretrained(checkpoint)
    else:
        from tokenizers import BertWordPieceTokenizer

        trainer = BertWordPieceTokenizer(lowercase=True)
        trainer.train(
            [str(DATA / f) for f in TRAIN_FILES],
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
            show_progress=False,
        )
        trainer.save_model(str(workdir))
        tok = BertTokenizerFast.from_pretrained(workdir)
        # transformers 5 ignores a vocab it cannot find without saying so: check we got ours.
        assert len(tok) == vocab_size, f"tokenizer has {len(tok)} tokens, expected {vocab_size}"
    assert tok.mask_token_id is not None
    return tok


def make_texts(n: int, seed: int) -> list[str]:
    """n texts of 8-64 consecutive words from the validation files, one word -> [MASK]."""
    rng = random.Random(seed)
    words_by_file = [(DATA / name).read_text(encoding="utf-8").split() for name in VALID_FILES]
    texts = []
    for i in range(n):
        words = words_by_file[i % len(words_by_file)]
        length = rng.randint(MIN_WORDS, MAX_WORDS)
        start = rng.randrange(len(words) - length)
        window = words[start : start + length]
        window[rng.randrange(length)] = "[MASK]"
        texts.append(" ".join(window))
    return texts


def encode(tok, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    enc = tok(
        texts,
        padding="longest",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def top5_hf(hf, batch: dict[str, torch.Tensor], mask_id: int) -> torch.Tensor:
    """What the transformers fill-mask pipeline computes: full logits, then the [MASK] rows."""
    logits = hf(**batch).logits  # (B, T, V)
    rows = logits[batch["input_ids"] == mask_id]  # (N, V)
    return rows.softmax(dim=-1).topk(5, dim=-1)


def top5_ours(model, batch: dict[str, torch.Tensor], mask_id: int, prune: bool = True):
    """Ours: only the [MASK] rows reach the vocabulary; prune=True also runs the last layer at
    those rows alone (return_hidden=False), as the server's fill-mask path can."""
    ids = batch["input_ids"]
    logits = model(
        ids,
        batch["attention_mask"],
        batch["token_type_ids"],
        prediction_mask=ids == mask_id,
        return_hidden=not prune,
    ).logits  # (N, V)
    return logits.softmax(dim=-1).topk(5, dim=-1)


def compare_top5(ours, ref) -> tuple[int, int, int]:
    """(rows, rows with identical top-5 ids, rows that differ only by near-ties)."""
    same = (ours.indices == ref.indices).all(dim=-1)
    ties = 0
    for i in torch.nonzero(~same).flatten().tolist():
        # Equal as sets and every swapped pair has near-equal probabilities: a tie.
        a, b = ours.indices[i].tolist(), ref.indices[i].tolist()
        gap = (ours.values[i] - ref.values[i]).abs().max().item()
        if sorted(a) == sorted(b) and gap < TIE_TOLERANCE:
            ties += 1
    return len(same), int(same.sum()), ties


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def bench_shape(name: str, tok, args, workdir: Path) -> dict:
    from transformers import BertForMaskedLM as HFBertForMaskedLM

    from model import BertConfig, BertForMaskedLM

    if args.checkpoint is not None:
        ours = BertForMaskedLM.from_pretrained(args.checkpoint)
        ckpt = args.checkpoint
    else:
        layers, hidden, heads, inter = SHAPES[name]
        torch.manual_seed(args.seed)
        config = BertConfig(
            vocab_size=len(tok),
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=inter,
        )
        ours = BertForMaskedLM(config).eval()
        ckpt = workdir / name
        ours.save_pretrained(ckpt)
    hf = HFBertForMaskedLM.from_pretrained(ckpt).eval()  # same weights, via our checkpoint
    mask_id = tok.mask_token_id
    max_len = ours.config.max_position_embeddings
    quick = args.quick
    n_batches = (2 if name == "base" else 4) if quick else (6 if name == "base" else 20)
    n_single = (8 if name == "base" else 20) if quick else (24 if name == "base" else 60)
    texts = make_texts((n_batches + 1) * BATCH_SIZE + n_single, seed=args.seed)
    batches = [
        encode(tok, texts[i * BATCH_SIZE : (i + 1) * BATCH_SIZE], max_len)
        for i in range(n_batches + 1)
    ]
    singles = [encode(tok, [t], max_len) for t in texts[(n_batches + 1) * BATCH_SIZE :]]

    systems = {
        "hf": lambda b: top5_hf(hf, b, mask_id),
        "ours": lambda b: top5_ours(ours, b, mask_id, prune=True),
        "ours_unpruned": lambda b: top5_ours(ours, b, mask_id, prune=False),
    }
    names = list(systems)
    batch_time = dict.fromkeys(names, 0.0)
    latency: dict[str, list[float]] = {n: [] for n in names}
    rows = agree = ties = 0
    real_tokens = padded_tokens = 0

    def run_all(i: int, batch) -> dict:
        """Run every system on one batch, first system rotating, and check top-5 agreement."""
        nonlocal rows, agree, ties
        order = names[i % len(names) :] + names[: i % len(names)]
        outs, times = {}, {}
        for n in order:
            outs[n], times[n] = timed(lambda f=systems[n]: f(batch))
        for n in names[1:]:
            r, a, tie = compare_top5(outs[n], outs["hf"])
            rows, agree, ties = rows + r, agree + a, ties + tie
        return times

    with torch.inference_mode():
        run_all(0, batches[0])  # warm-up (allocator, lazy init), not timed
        for i, batch in enumerate(batches[1:]):
            for n, t in run_all(i, batch).items():
                batch_time[n] += t
            real_tokens += int(batch["attention_mask"].sum())
            padded_tokens += batch["input_ids"].numel()
        for i, single in enumerate(singles):
            for n, t in run_all(i, single).items():
                latency[n].append(t)

    n_seq = n_batches * BATCH_SIZE
    median_ms = {n: 1000 * statistics.median(latency[n]) for n in names}
    result = {
        "shape": name,
        "layers": ours.config.num_hidden_layers,
        "hidden": ours.config.hidden_size,
        "heads": ours.config.num_attention_heads,
        "intermediate": ours.config.intermediate_size,
        "vocab": ours.config.vocab_size,
        "batches": n_batches,
        "batch_size": BATCH_SIZE,
        "padding_fraction": round(1 - real_tokens / padded_tokens, 3),
        "single_requests": len(singles),
        **{f"{n}_seq_per_s": n_seq / batch_time[n] for n in names},
        **{f"{n}_latency_ms_median": median_ms[n] for n in names},
        "throughput_ratio": batch_time["hf"] / batch_time["ours"],
        "throughput_ratio_unpruned": batch_time["hf"] / batch_time["ours_unpruned"],
        "latency_ratio": median_ms["ours"] / median_ms["hf"],
        "latency_ratio_unpruned": median_ms["ours_unpruned"] / median_ms["hf"],
        "top5_rows": rows,
        "top5_identical": agree,
        "top5_near_ties": ties,
    }
    print(
        f"[{name}] throughput x{result['throughput_ratio']:.2f}, "
        f"latency x{result['latency_ratio']:.2f}, top-5 {agree}/{rows} identical",
        file=sys.stderr,
    )
    return result


def markdown(results: list[dict], threads: int) -> str:
    lines = [
        f"Fill-mask forward, CPU, {threads} thread(s), batch {BATCH_SIZE} "
        f"({MIN_WORDS}-{MAX_WORDS} words, one [MASK] each) and single requests; "
        "ratios from the same run.",
        "",
        "| shape | L/H/A/I/V | padding | HF seq/s | ours seq/s | throughput ratio "
        "| HF latency ms | ours latency ms | latency ratio | top-5 identical |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['shape']} | {r['layers']}/{r['hidden']}/{r['heads']}/{r['intermediate']}/"
            f"{r['vocab']} | {r['padding_fraction']:.0%} | {r['hf_seq_per_s']:.1f} "
            f"| {r['ours_seq_per_s']:.1f} | **{r['throughput_ratio']:.2f}x** "
            f"({r['throughput_ratio_unpruned']:.2f}x) "
            f"| {r['hf_latency_ms_median']:.1f} | {r['ours_latency_ms_median']:.1f} "
            f"| **{r['latency_ratio']:.2f}x** ({r['latency_ratio_unpruned']:.2f}x) "
            f"| {r['top5_identical']}/{r['top5_rows']} (+{r['top5_near_ties']} ties) |"
        )
    lines += [
        "",
        "throughput ratio = ours seq/s / HF seq/s (target >= 2); latency ratio = ours / HF median "
        "single-request latency (target <= 0.6). In brackets: ours without last-layer pruning "
        "(return_hidden=True). Top-5 rows count both of our variants against HF.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_model", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--shapes", default="mini,base", help="comma-separated: mini,base")
    parser.add_argument("--checkpoint", type=Path, help="bench this checkpoint dir instead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    shapes = ["checkpoint"] if args.checkpoint else args.shapes.split(",")
    unknown = [s for s in shapes if s not in SHAPES and s != "checkpoint"]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    torch.set_num_threads(args.threads)

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tok, t = timed(lambda: build_tokenizer(args.checkpoint, workdir))
        print(f"tokenizer ready ({len(tok)} tokens, {t:.1f} s)", file=sys.stderr)
        for shape in shapes:
            results.append(bench_shape(shape, tok, args, workdir))

    table = markdown(results, args.threads)
    print(table)
    report = {
        "benchmark": "bench_model",
        "quick": args.quick,
        "threads": args.threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    failures = [
        r["shape"] for r in results if r["top5_identical"] + r["top5_near_ties"] < r["top5_rows"]
    ]
    if failures:
        print(f"FAIL: top-5 predictions differ for {failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
