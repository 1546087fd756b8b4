"""Fill-mask forward speed against transformers, and encoder efficiency against the matmul peak.

    python -m bench.bench_model [--quick] [--threads N] [--shapes tiny,mini,base]
                                [--checkpoint DIR] [--efficiency-only] [--precisions fp32,bf16]
                                [--serve-precisions int8,bf16|none]

Part 1, our `BertForMaskedLM` vs `transformers.BertForMaskedLM`, same weights (skipped with
--efficiency-only). Workload: batches of 32 texts of 8-64 words taken from data/wordnet.valid.txt
and data/pydocs.valid.txt, one word of each replaced by [MASK]; single-text requests for latency.
Both systems get the very same padded tensors, in the same order, in the same process and thread
count (torch.set_num_threads), under torch.inference_mode, with timings interleaved so machine
noise hits both alike. transformers computes the full (B, T, V) logits as its fill-mask pipeline
does, then takes the [MASK] rows; ours projects only the [MASK] rows (prediction_mask) and runs
the last layer only there too (return_hidden=False: what a fill-mask server needs). Ours without
that last-layer pruning is timed as well and shown in brackets. All then apply softmax + top-5,
and the top-5 ids must be identical (asserted; a row whose ranked top-5 probabilities all match
within 1e-5 but whose ids differ, two near-equal candidates trading places, is counted as a tie,
not a failure). Reduced precisions (--serve-precisions, default int8 plus
bf16 where the CPU has it natively) are loaded as the server loads them, through
`app.engine.load_engine(precision=...)`: converted, then kept only if they pass the accuracy gate
against fp32 (`app.precision`); each one that passes is timed beside the others against HF fp32,
and the gate's figures are reported either way.

Weights are random (BERT init) unless --checkpoint is given; speed does not depend on them. The
tokenizer is a 16k WordPiece vocab trained with `tokenizers` on data/*.train.txt into a temporary
directory (or the checkpoint's vocab.txt), loaded as a transformers BertTokenizerFast.

Part 2, efficiency: how close our encoder forward gets to what this CPU can do.
- Peak: `torch.mm` timed on a 2048^3 square product and on the four projection GEMMs of the
  BERT-base forward at 32 x 128 = 4096 tokens (QKV 768->2304, output 768->768, FFN 768->3072
  and 3072->768), per precision (fp32; bf16 = both operands torch.bfloat16), same thread count.
  Each: one warm-up call, then the median of several; this once before and once after the
  forwards, and "peak" is the best median of all (noise only slows things down). The
  second operand is a transposed (N, K) weight, the layout nn.Linear hands to the GEMM: for fp32
  a row-major (K, N) one is as fast within noise, and for bf16 on a CPU without native bf16 the
  row-major one falls to a path ~20x slower than this, so this is the honest peak for both.
- Achieved: `model.encode` (embeddings + all layers, returning the last hidden state; no MLM
  head, no vocabulary projection) under torch.inference_mode on a batch of 32 x 128 random ids,
  every token real (an all-ones attention mask, so no padding is removed and the FLOP count is
  exact). FLOPs are counted analytically from the matrix products only (see `encoder_flops`):
  embeddings, LayerNorm, GELU, softmax, biases and residual adds are free in that count, as in
  the usual "model FLOPs" convention, so % of peak is "model FLOPs utilisation". Minor page
  faults per forward are reported beside it (see `minor_faults`). --shapes and --checkpoint
  choose the models of both parts.
- Precisions: --precisions, default fp32 plus bf16 where the CPU has native bf16 (avx512_bf16 or
  amx_bf16 in /proc/cpuinfo; the flags are reported). On an AVX2-only CPU bf16 matmuls are
  emulated and several times slower than fp32: expected, and reported as such when asked for.
Target: the BERT-base fp32 forward at >= 60% of the fp32 peak.

Results: markdown tables on stdout and bench/results/bench_model.json ("results" for part 1,
"efficiency" for part 2; --efficiency-only rewrites only "efficiency" and keeps the rest).
Deliberately not measured: GPU speed, tokenization time, batching delays (see the serving
benchmarks), the theoretical (datasheet) peak: a measured GEMM is what the model can hope for.
Timings on a busy machine are noisy; take figures for the record from one quiet run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from model.hardware import cpu_flags

try:
    import resource  # Unix only: page-fault counts
except ImportError:
    resource = None

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
RESULTS = ROOT / "bench" / "results" / "bench_model.json"
VALID_FILES = ("wordnet.valid.txt", "pydocs.valid.txt")
TRAIN_FILES = ("wordnet.train.txt", "pydocs.train.txt")
SHAPES = {
    # name: (layers, hidden, heads, intermediate); vocab is the tokenizer's (16k)
    "tiny": (2, 128, 2, 512),
    "mini": (4, 256, 4, 1024),
    "base": (12, 768, 12, 3072),
}
BATCH_SIZE = 32
MIN_WORDS, MAX_WORDS = 8, 64
TIE_TOLERANCE = 1e-5  # probabilities this close may swap order between two correct kernels

# Efficiency part (see the module docstring).
EFFICIENCY_BATCH, EFFICIENCY_SEQ_LEN = 32, 128
EFFICIENCY_VOCAB = 16000  # only sizes the embedding table, which costs no FLOPs
EFFICIENCY_TARGET = 0.60  # of the fp32 matmul peak, at BERT-base shape
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
CPU_FLAGS = ("avx512_bf16", "amx_bf16", "avx512f", "avx2")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
ENV_KNOBS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "GLIBC_TUNABLES", "LD_PRELOAD", "MALLOC_CONF")
# (M, K, N) products timed for the peak: a square one, then the projections of BERT-base at
# 32 x 128 tokens (the forward's own GEMMs, so the peak is one these shapes can reach).
PEAK_GEMMS = (
    (2048, 2048, 2048),
    (4096, 768, 2304),
    (4096, 768, 768),
    (4096, 768, 3072),
    (4096, 3072, 768),
)


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
        # The k-th best probability is the same within the tolerance at every rank: whichever
        # ids hold those ranks (a swap inside the top 5, or a 5th and 6th trading places) is a
        # tie that float rounding may break either way.
        gap = (ours.values[i] - ref.values[i]).abs().max().item()
        if gap < TIE_TOLERANCE:
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
    # Each reduced precision as the server would run it: load_engine converts the model and
    # keeps it only if it passes the accuracy gate against fp32 (app.precision).
    gated, gates = {}, {}
    if args.serve_precisions:
        from app.loading import load_engine

        if args.checkpoint is None:
            tok.save_pretrained(ckpt)  # the engine reads vocab.txt beside the weights
        for p in args.serve_precisions:
            engine = load_engine(ckpt, precision=p)
            gates[p] = engine.precision_report.get("gate")
            if engine.precision == p:
                gated[p] = engine.model
            print(f"[{name}] {p}: gate {gates[p]}", file=sys.stderr)
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
    print(
        f"[{name}] throughput x{result['throughput_ratio']:.2f}, "
        f"latency x{result['latency_ratio']:.2f}, top-5 {agree}/{rows} identical",
        file=sys.stderr,
    )
    return result


# ----------------------------------------------------------------------------------------------
# Efficiency: achieved GFLOP/s of the encoder forward against the measured matmul peak


def cpu_info() -> dict:
    """CPU model, the SIMD flags that decide GEMM speed (from /proc/cpuinfo; None where there is
    none, e.g. macOS) and the kernel level torch dispatches to."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    model_line = re.search(r"^model name\s*:(.*)$", text, re.MULTILINE)
    present = cpu_flags()
    return {
        "model": model_line.group(1).strip() if model_line else platform.processor(),
        "flags": {f: (None if present is None else f in present) for f in CPU_FLAGS},
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
    }


def has_native_bf16(info: dict) -> bool:
    return any(info["flags"].get(f) for f in NATIVE_BF16_FLAGS)


def encoder_flops(layers: int, hidden: int, intermediate: int, batch: int, seq_len: int) -> int:
    """Matrix-product FLOPs (2 per multiply-add) of one encoder forward, no padding.

    Per layer, with N = batch * seq_len tokens: QKV 2*N*H*3H, output projection 2*N*H*H, FFN
    2*2*N*H*I, and per sequence attention scores 2*T*T*H plus the weighted sum of values 2*T*T*H
    (heads split H, they do not multiply it). Not counted: embeddings (gathers), LayerNorm, GELU,
    softmax, biases, residual adds (O(N*H) each), and no MLM head / vocabulary projection.
    """
    tokens = batch * seq_len
    projections = 2 * tokens * hidden * (3 * hidden + hidden + 2 * intermediate)
    attention = 2 * 2 * batch * seq_len * seq_len * hidden
    return layers * (projections + attention)


@dataclass
class Timing:
    seconds: float  # median wall-clock seconds of one call
    repeats: int  # calls timed (after one untimed warm-up)
    page_faults: float | None  # minor page faults per timed call; None without `resource`


def minor_faults() -> int | None:
    """Minor page faults of this process so far. Worth watching: glibc serves allocations above
    its mmap threshold (at most 32 MB by default) with fresh mappings and unmaps them on free, so
    every forward that allocates such tensors pays again for faulting in and zeroing pages."""
    if resource is None:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_calls(fn: Callable[[], object], target_s: float, min_repeats: int) -> Timing:
    """One untimed warm-up call (allocator, oneDNN primitive caches, thread pool), then as many
    calls as fit in target_s, at least min_repeats and at most 50. The median, not the mean, so
    that a burst of machine noise counts once."""
    start = time.perf_counter()
    fn()
    warm = time.perf_counter() - start
    repeats = max(min_repeats, min(50, int(target_s / max(warm, 1e-6))))
    times = []
    faults_before = minor_faults()
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    faults_after = minor_faults()
    faults = None if faults_before is None else (faults_after - faults_before) / repeats
    return Timing(statistics.median(times), repeats, faults)


def matmul_peak(dtype: torch.dtype, target_s: float, min_repeats: int) -> list[dict]:
    """Median GFLOP/s of torch.mm for each of PEAK_GEMMS at this dtype."""
    gen = torch.Generator().manual_seed(0)
    shapes = []
    for m, k, n in PEAK_GEMMS:
        a = torch.randn(m, k, generator=gen).to(dtype)
        weight_t = torch.randn(n, k, generator=gen).to(dtype).t()  # (K, N) view, as nn.Linear
        out = torch.empty(m, n, dtype=dtype)  # no allocation inside the timed call
        timing = time_calls(
            lambda a=a, w=weight_t, o=out: torch.mm(a, w, out=o), target_s, min_repeats
        )
        gflops = 2 * m * k * n / timing.seconds / 1e9
        shapes.append({"m": m, "k": k, "n": n, "gflops": gflops, "repeats": timing.repeats})
    return shapes


def best_of(passes: list[list[dict]]) -> dict:
    """The peak from several matmul_peak passes: per shape the best pass, then the best shape.

    Noise only ever slows a run down, so the best figure is the estimate of what the machine
    can do; two passes, before and after the forwards, keep a noisy moment during one of them
    from lowering the peak and inflating the percentages.
    """
    shapes = [max(same, key=lambda s: s["gflops"]) for same in zip(*passes, strict=True)]
    best = max(shapes, key=lambda s: s["gflops"])
    return {
        "gflops": best["gflops"],
        "best_gemm": [best["m"], best["k"], best["n"]],
        "passes": len(passes),
        "gemms": shapes,
    }


def efficiency_models(args) -> Iterator[tuple[str, torch.nn.Module]]:
    """(shape name, fp32 model in eval mode) for --shapes, or the --checkpoint's model; one at a
    time, so that only one model is in memory."""
    from model import BertConfig, BertForMaskedLM

    if args.checkpoint is not None:
        yield "checkpoint", BertForMaskedLM.from_pretrained(args.checkpoint)
        return
    for name in args.shapes.split(","):
        layers, hidden, heads, inter = SHAPES[name]
        torch.manual_seed(args.seed)
        config = BertConfig(
            vocab_size=EFFICIENCY_VOCAB,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=inter,
        )
        # The encoder alone: the MLM head is not timed, so it need not exist.
        yield name, BertForMaskedLM(config, mlm_head=False).eval()


def bench_efficiency(args, precisions: list[str], info: dict) -> dict:
    """Each shape's encoder forward per precision, between two passes of the matmul peak."""
    target_s, min_repeats = (1.0, 1) if args.quick else (5.0, 3)
    first_pass = {p: matmul_peak(PRECISIONS[p], target_s, min_repeats) for p in precisions}
    B, T = EFFICIENCY_BATCH, EFFICIENCY_SEQ_LEN
    forwards = []
    for name, model in efficiency_models(args):
        cfg = model.config
        flops = encoder_flops(cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, B, T)
        gen = torch.Generator().manual_seed(args.seed)
        # Ids above the 5 special tokens; values do not change the cost.
        ids = torch.randint(5, cfg.vocab_size, (B, T), generator=gen)
        mask = torch.ones_like(ids)  # every token real: nothing is packed, no attention mask
        for p in precisions:
            model = model.to(PRECISIONS[p])
            with torch.inference_mode():
                timing = time_calls(
                    lambda m=model, i=ids, a=mask: m.encode(i, attention_mask=a),
                    target_s,
                    min_repeats,
                )
            forwards.append(
                {
                    "shape": name,
                    "layers": cfg.num_hidden_layers,
                    "hidden": cfg.hidden_size,
                    "heads": cfg.num_attention_heads,
                    "intermediate": cfg.intermediate_size,
                    "precision": p,
                    "gflop_per_forward": flops / 1e9,
                    "ms_per_forward": 1000 * timing.seconds,
                    "repeats": timing.repeats,
                    "page_faults_per_forward": timing.page_faults,
                    "gflops": flops / timing.seconds / 1e9,
                }
            )
            print(f"[{name} {p}] {forwards[-1]['gflops']:.1f} GFLOP/s", file=sys.stderr)
    peaks = {
        p: best_of([first_pass[p], matmul_peak(PRECISIONS[p], target_s, min_repeats)])
        for p in precisions
    }
    for r in forwards:
        r["fraction_of_peak"] = r["gflops"] / peaks[r["precision"]]["gflops"]
        if r["fraction_of_peak"] > 1:
            print(
                f"[{r['shape']} {r['precision']}] above 100% of the peak: the machine was busier "
                "while the peak was measured; rerun on a quiet machine",
                file=sys.stderr,
            )
    return {
        "threads": args.threads,
        "quick": args.quick,
        "torch": torch.__version__,
        "cpu": info,
        # Allocator and threading settings change these figures (see minor_faults).
        "env": {k: os.environ.get(k) for k in ENV_KNOBS if k in os.environ},
        "batch": B,
        "seq_len": T,
        "flops_counted": "encoder matrix products only (QKV, attention scores and weighted sum, "
        "output projection, FFN); no embeddings, norms, activations or MLM head",
        "target_fraction_base_fp32": EFFICIENCY_TARGET,
        "peak": peaks,
        "forward": forwards,
    }


def efficiency_markdown(eff: dict) -> str:
    flags = eff["cpu"]["flags"]
    flag_text = ", ".join(
        f"{f} {'yes' if v else 'no' if v is not None else '?'}" for f, v in flags.items()
    )
    lines = [
        f"Encoder forward efficiency, CPU {eff['cpu']['model']} ({flag_text}; torch kernels "
        f"{eff['cpu']['torch_capability']}), {eff['threads']} thread(s), batch {eff['batch']} x "
        f"{eff['seq_len']} tokens, no padding.",
        "",
        "| precision | measured matmul peak GFLOP/s | best GEMM (M x K x N) |",
        "|---|---|---|",
    ]
    for p, peak in eff["peak"].items():
        m, k, n = peak["best_gemm"]
        lines.append(f"| {p} | {peak['gflops']:.1f} | {m} x {k} x {n} |")
    lines += [
        "",
        "| shape | L/H/A/I | precision | GFLOP / forward | ms / forward | GFLOP/s | % of peak "
        "| page faults / forward |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in eff["forward"]:
        faults = (
            "-" if r["page_faults_per_forward"] is None else f"{r['page_faults_per_forward']:,.0f}"
        )
        lines.append(
            f"| {r['shape']} | {r['layers']}/{r['hidden']}/{r['heads']}/{r['intermediate']} "
            f"| {r['precision']} | {r['gflop_per_forward']:.1f} | {r['ms_per_forward']:.1f} "
            f"| {r['gflops']:.1f} | **{r['fraction_of_peak']:.0%}** | {faults} |"
        )
    lines += [
        "",
        "GFLOP counts the encoder's matrix products only (`model.encode`, no MLM head); % of "
        f"peak = GFLOP/s / measured peak of the same precision (target at base, fp32: >= "
        f"{eff['target_fraction_base_fp32']:.0%}). Page faults: minor faults per timed forward, "
        "i.e. freshly mapped memory (glibc unmaps blocks over its mmap threshold, <= 32 MB, on free)"
        + (f"; environment: {eff['env']}" if eff["env"] else "")
        + ".",
    ]
    return "\n".join(lines)


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
    if any(r["precisions"] for r in results):
        lines += [
            "",
            "| shape | precision | accuracy gate vs fp32 (min cosine / top-5 overlap) | ours seq/s "
            "| throughput vs HF fp32 | ours latency ms | latency vs HF fp32 |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in results:
            lines.append(
                f"| {r['shape']} | fp32 | - | {r['ours_seq_per_s']:.1f} "
                f"| {r['throughput_ratio']:.2f}x | {r['ours_latency_ms_median']:.1f} "
                f"| {r['latency_ratio']:.2f}x |"
            )
            for p, row in r["precisions"].items():
                gate = row["gate"] or {}
                verdict = "passed" if row["served"] else "FAILED (serves fp32)"
                figures = f"{gate.get('min_cosine', float('nan')):.4f} / {gate.get('top5_overlap')}"
                if row["served"]:
                    lines.append(
                        f"| {r['shape']} | {p} | {figures}: {verdict} | {row['seq_per_s']:.1f} "
                        f"| **{row['throughput_ratio']:.2f}x** | {row['latency_ms_median']:.1f} "
                        f"| **{row['latency_ratio']:.2f}x** |"
                    )
                else:
                    lines.append(f"| {r['shape']} | {p} | {figures}: {verdict} | - | - | - | - |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--shapes", default="tiny,mini,base", help=f"comma-separated, of {','.join(SHAPES)}"
    )
    parser.add_argument("--checkpoint", type=Path, help="bench this checkpoint dir instead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--efficiency-only",
        action="store_true",
        help="only the matmul peak and encoder GFLOP/s (no transformers comparison)",
    )
    parser.add_argument(
        "--precisions",
        help="efficiency precisions, comma-separated of fp32,bf16 (default: fp32, plus bf16 "
        "where the CPU has native bf16)",
    )
    parser.add_argument(
        "--serve-precisions",
        default=None,
        help="reduced precisions served as the server would (gated against fp32), comma-separated "
        "of bf16,int8 (default: int8, plus bf16 where the CPU has native bf16); 'none' for none",
    )
    args = parser.parse_args(argv)
    shapes = ["checkpoint"] if args.checkpoint else args.shapes.split(",")
    unknown = [s for s in shapes if s not in SHAPES and s != "checkpoint"]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    info = cpu_info()
    if args.precisions is None:
        precisions = ["fp32", "bf16"] if has_native_bf16(info) else ["fp32"]
    else:
        precisions = args.precisions.split(",")
        if bad := [p for p in precisions if p not in PRECISIONS]:
            parser.error(f"unknown precision(s) {bad}; choose from {list(PRECISIONS)}")
        if "bf16" in precisions and not has_native_bf16(info):
            print(
                "note: no native bf16 on this CPU (no avx512_bf16/amx_bf16): bf16 runs emulated, "
                "several times slower than fp32 (minutes at base shape)",
                file=sys.stderr,
            )
    if args.serve_precisions is None:
        args.serve_precisions = ["int8", "bf16"] if has_native_bf16(info) else ["int8"]
    elif args.serve_precisions == "none":
        args.serve_precisions = []
    else:
        args.serve_precisions = args.serve_precisions.split(",")
        if bad := [p for p in args.serve_precisions if p not in ("bf16", "int8")]:
            parser.error(f"unknown served precision(s) {bad}; choose from bf16, int8")
    torch.set_num_threads(args.threads)

    # Efficiency first: short, and the most sensitive to a heap fragmented by the comparison.
    efficiency = bench_efficiency(args, precisions, info)
    tables = [efficiency_markdown(efficiency)]
    results = []
    if not args.efficiency_only:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            tok, t = timed(lambda: build_tokenizer(args.checkpoint, workdir))
            print(f"tokenizer ready ({len(tok)} tokens, {t:.1f} s)", file=sys.stderr)
            for shape in shapes:
                results.append(bench_shape(shape, tok, args, workdir))
        tables.insert(0, markdown(results, args.threads))
    print("\n\n".join(tables))

    if args.efficiency_only:
        # Keep the comparison of an earlier full run; replace only the efficiency figures.
        try:
            report = json.loads(args.out.read_text())
        except (OSError, ValueError):
            report = {"benchmark": "bench_model"}
    else:
        report = {
            "benchmark": "bench_model",
            "quick": args.quick,
            "threads": args.threads,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "machine": platform.processor() or platform.machine(),
            "results": results,
        }
    report["efficiency"] = efficiency
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
