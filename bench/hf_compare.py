"""Fill-mask forward speed: our `BertForMaskedLM` against `transformers.BertForMaskedLM`, same
weights, same padded batches.

    tok = build_tokenizer(None, workdir)
    row = compare_shape("base", ours, checkpoint_dir, tok, serve_precisions=["int8"], quick=False,
                        seed=0)
    print(comparison_markdown([row], threads=2))

Workload: batches of 32 texts of 8-64 words taken from data/wordnet.valid.txt and
data/pydocs.valid.txt, one word of each replaced by [MASK]; single-text requests for latency.
Both systems get the very same padded tensors, in the same order, in the same process and thread
count (torch.set_num_threads), under torch.inference_mode, with timings interleaved so machine
noise hits both alike. transformers computes the full (B, T, V) logits as its fill-mask pipeline
does, then takes the [MASK] rows; ours projects only the [MASK] rows (prediction_mask) and runs
the last layer only there too (return_hidden=False: what a fill-mask server needs). Ours without
that last-layer pruning is timed as well and shown in brackets. All then apply softmax + top-5,
and the top-5 ids must be identical (a row whose ranked top-5 probabilities all match within
1e-5 but whose ids differ, two near-equal candidates trading places, is counted as a tie, not a
failure). Reduced precisions (``serve_precisions``) are loaded as the server loads them, through
`app.loading.load_engine(precision=...)`: converted, then kept only if they pass the accuracy gate
against fp32 (`app.precision`); each one that passes is timed beside the others against HF fp32,
and the gate's figures are reported either way.

The tokenizer is a 16k WordPiece vocab trained with `tokenizers` on data/*.train.txt into a
temporary directory (or the checkpoint's vocab.txt), loaded as a transformers BertTokenizerFast.

Part 1 of bench_model, which chooses the models. Deliberately not here: tokenization time and
batching delays (the serving benchmarks measure those), building models (the caller hands in ours
with the checkpoint directory transformers loads the same weights from).
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from pathlib import Path

import torch

from bench.common import TRAIN_FILES, VALID_FILES, ratio, table_lines

log = logging.getLogger(__name__)
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
            [str(f) for f in TRAIN_FILES],
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
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
    words_by_file = [path.read_text(encoding="utf-8").split() for path in VALID_FILES]
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
    """The padded tensors both systems get, from the transformers tokenizer."""
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
        # The k-th best probability is the same within the tolerance at every rank: whichever
        # ids hold those ranks (a swap inside the top 5, or a 5th and 6th trading places) is a
        # tie that float rounding may break either way.
        gap = (ours.values[i] - ref.values[i]).abs().max().item()
        if gap < TIE_TOLERANCE:
            ties += 1
    return len(same), int(same.sum()), ties


def timed(fn):
    """(fn's result, seconds it took)."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def compare_shape(
    name: str,
    ours: torch.nn.Module,
    ckpt: Path,
    tok,
    *,
    serve_precisions: list[str],
    quick: bool,
    seed: int,
) -> dict:
    """Time ``ours`` (fp32, in eval mode) and transformers' model of the same checkpoint directory
    ``ckpt`` (with vocab.txt beside the weights, which the engine reads), and each reduced
    precision that passes its gate, on the same batches; check top-5 agreement. One result row."""
    from transformers import BertForMaskedLM as HFBertForMaskedLM

    hf = HFBertForMaskedLM.from_pretrained(ckpt).eval()  # same weights, via our checkpoint
    mask_id = tok.mask_token_id
    # Each reduced precision as the server would run it: load_engine converts the model and
    # keeps it only if it passes the accuracy gate against fp32 (app.precision).
    gated, gates = {}, {}
    if serve_precisions:
        from app.loading import load_engine

        for p in serve_precisions:
            engine = load_engine(ckpt, precision=p)
            gates[p] = engine.precision_report.get("gate")
            if engine.precision == p:
                gated[p] = engine.model
            log.info("[%s] %s: gate %s", name, p, gates[p])
    max_len = ours.config.max_position_embeddings
    n_batches = (2 if name == "base" else 4) if quick else (6 if name == "base" else 20)
    n_single = (8 if name == "base" else 20) if quick else (24 if name == "base" else 60)
    texts = make_texts((n_batches + 1) * BATCH_SIZE + n_single, seed=seed)
    batches = [
        encode(tok, texts[i * BATCH_SIZE : (i + 1) * BATCH_SIZE], max_len)
        for i in range(n_batches + 1)
    ]
    singles = [encode(tok, [t], max_len) for t in texts[(n_batches + 1) * BATCH_SIZE :]]

    systems = {
        "hf": lambda b: top5_hf(hf, b, mask_id),
        "ours": lambda b: top5_ours(ours, b, mask_id, prune=True),
        "ours_unpruned": lambda b: top5_ours(ours, b, mask_id, prune=False),
        **{
            f"ours_{p}": lambda b, m=m: top5_ours(m, b, mask_id, prune=True)
            for p, m in gated.items()
        },
    }
    names = list(systems)
    exact = ("ours", "ours_unpruned")  # fp32: top-5 must equal HF's; the others are gated
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
        for n in exact:
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
        "precisions": {
            p: {
                "gate": gates[p],
                "served": p in gated,
                **(
                    {
                        "seq_per_s": n_seq / batch_time[f"ours_{p}"],
                        "latency_ms_median": median_ms[f"ours_{p}"],
                        "throughput_ratio": batch_time["hf"] / batch_time[f"ours_{p}"],
                        "latency_ratio": median_ms[f"ours_{p}"] / median_ms["hf"],
                    }
                    if p in gated
                    else {}
                ),
            }
            for p in gates
        },
        "top5_rows": rows,
        "top5_identical": agree,
        "top5_near_ties": ties,
    }
    log.info(
        "[%s] throughput x%.2f, latency x%.2f, top-5 %d/%d identical",
        name,
        result["throughput_ratio"],
        result["latency_ratio"],
        agree,
        rows,
    )
    return result


def comparison_markdown(results: list[dict], threads: int) -> str:
    """Ours and transformers side by side per shape, with the ratios; then each served precision
    beside fp32, both against transformers fp32."""
    rows = [
        [
            r["shape"],
            f"{r['layers']}/{r['hidden']}/{r['heads']}/{r['intermediate']}/{r['vocab']}",
            f"{r['padding_fraction']:.0%}",
            f"{r['hf_seq_per_s']:.1f}",
            f"{r['ours_seq_per_s']:.1f}",
            f"**{ratio(r['throughput_ratio'])}** ({ratio(r['throughput_ratio_unpruned'])})",
            f"{r['hf_latency_ms_median']:.1f}",
            f"{r['ours_latency_ms_median']:.1f}",
            f"**{ratio(r['latency_ratio'])}** ({ratio(r['latency_ratio_unpruned'])})",
            f"{r['top5_identical']}/{r['top5_rows']} (+{r['top5_near_ties']} ties)",
        ]
        for r in results
    ]
    header = ["shape", "L/H/A/I/V", "padding", "HF seq/s", "ours seq/s", "throughput ratio"]
    header += ["HF latency ms", "ours latency ms", "latency ratio", "top-5 identical"]
    lines = [
        f"Fill-mask forward, CPU, {threads} thread(s), batch {BATCH_SIZE} "
        f"({MIN_WORDS}-{MAX_WORDS} words, one [MASK] each) and single requests; "
        "ratios from the same run.",
        "",
        *table_lines(header, rows),
        "",
        "throughput ratio = ours seq/s / HF seq/s (target >= 2); latency ratio = ours / HF median "
        "single-request latency (target <= 0.6). In brackets: ours without last-layer pruning "
        "(return_hidden=True). Top-5 rows count both of our variants against HF.",
    ]
    if any(r["precisions"] for r in results):
        header = ["shape", "precision", "accuracy gate vs fp32 (min cosine / top-5 overlap)"]
        header += ["ours seq/s", "throughput vs HF fp32", "ours latency ms", "latency vs HF fp32"]
        lines += ["", *table_lines(header, _precision_rows(results))]
    return "\n".join(lines)


def _precision_rows(results: list[dict]) -> list[list[str]]:
    rows = []
    for r in results:
        rows.append(
            [
                r["shape"],
                "fp32",
                "-",
                f"{r['ours_seq_per_s']:.1f}",
                ratio(r["throughput_ratio"]),
                f"{r['ours_latency_ms_median']:.1f}",
                ratio(r["latency_ratio"]),
            ]
        )
        for p, row in r["precisions"].items():
            gate = row["gate"] or {}
            verdict = "passed" if row["served"] else "FAILED (serves fp32)"
            figures = f"{gate.get('min_cosine', float('nan')):.4f} / {gate.get('top5_overlap')}"
            if row["served"]:
                rows.append(
                    [
                        r["shape"],
                        p,
                        f"{figures}: {verdict}",
                        f"{row['seq_per_s']:.1f}",
                        f"**{ratio(row['throughput_ratio'])}**",
                        f"{row['latency_ms_median']:.1f}",
                        f"**{ratio(row['latency_ratio'])}**",
                    ]
                )
            else:
                rows.append([r["shape"], p, f"{figures}: {verdict}", "-", "-", "-", "-"])
    return rows
