"""Encoder efficiency: how close our encoder forward gets to what this CPU can do.

    eff = measure_efficiency([("base", model)], ["fp32"], quick=False, seed=0, threads=2, cpu=...)
    print(efficiency_markdown(eff))

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
  faults per forward are reported beside it (see `minor_faults`).
- Precisions: on an AVX2-only CPU bf16 matmuls are emulated and several times slower than fp32:
  expected, and reported as such when asked for.
Target: the BERT-base fp32 forward at >= 60% of the fp32 peak.

Part 2 of bench_model, which chooses the models and precisions. Deliberately not here: GPU
speed, the theoretical (datasheet) peak (a measured GEMM is what the model can hope for), and
building models (the caller hands them in, one at a time, so only one is in memory).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from bench.common import table_lines

try:
    import resource  # Unix only: page-fault counts
except ImportError:
    resource = None

log = logging.getLogger(__name__)
EFFICIENCY_BATCH, EFFICIENCY_SEQ_LEN = 32, 128
EFFICIENCY_TARGET = 0.60  # of the fp32 matmul peak, at BERT-base shape
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
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


def measure_efficiency(
    models: Iterable[tuple[str, torch.nn.Module]],
    precisions: list[str],
    *,
    quick: bool,
    seed: int,
    threads: int,
    cpu: dict,
) -> dict:
    """Each model's encoder forward per precision, between two passes of the matmul peak.

    ``models``: (shape name, fp32 BertForMaskedLM in eval mode), consumed one at a time; ``cpu``
    is recorded as given (bench_model's CPU record); ``threads`` too (torch's are already set).
    """
    target_s, min_repeats = (1.0, 1) if quick else (5.0, 3)
    first_pass = {p: matmul_peak(PRECISIONS[p], target_s, min_repeats) for p in precisions}
    B, T = EFFICIENCY_BATCH, EFFICIENCY_SEQ_LEN
    forwards = []
    for name, model in models:
        cfg = model.config
        flops = encoder_flops(cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, B, T)
        gen = torch.Generator().manual_seed(seed)
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
            log.info("[%s %s] %.1f GFLOP/s", name, p, forwards[-1]["gflops"])
    peaks = {
        p: best_of([first_pass[p], matmul_peak(PRECISIONS[p], target_s, min_repeats)])
        for p in precisions
    }
    for r in forwards:
        r["fraction_of_peak"] = r["gflops"] / peaks[r["precision"]]["gflops"]
        if r["fraction_of_peak"] > 1:
            log.warning(
                "[%s %s] above 100%% of the peak: the machine was busier while the peak was "
                "measured; rerun on a quiet machine",
                r["shape"],
                r["precision"],
            )
    return {
        "threads": threads,
        "quick": quick,
        "torch": torch.__version__,
        "cpu": cpu,
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
    """The measured peak per precision, then each forward's GFLOP/s as a share of it."""
    flags = eff["cpu"]["flags"]
    flag_text = ", ".join(
        f"{f} {'yes' if v else 'no' if v is not None else '?'}" for f, v in flags.items()
    )
    peaks = []
    for p, peak in eff["peak"].items():
        m, k, n = peak["best_gemm"]
        peaks.append([p, f"{peak['gflops']:.1f}", f"{m} x {k} x {n}"])
    forwards = [
        [
            r["shape"],
            f"{r['layers']}/{r['hidden']}/{r['heads']}/{r['intermediate']}",
            r["precision"],
            f"{r['gflop_per_forward']:.1f}",
            f"{r['ms_per_forward']:.1f}",
            f"{r['gflops']:.1f}",
            f"**{r['fraction_of_peak']:.0%}**",
            "-" if r["page_faults_per_forward"] is None else f"{r['page_faults_per_forward']:,.0f}",
        ]
        for r in eff["forward"]
    ]
    header = ["shape", "L/H/A/I", "precision", "GFLOP / forward", "ms / forward", "GFLOP/s"]
    header += ["% of peak", "page faults / forward"]
    lines = [
        f"Encoder forward efficiency, CPU {eff['cpu']['model']} ({flag_text}; torch kernels "
        f"{eff['cpu']['torch_capability']}), {eff['threads']} thread(s), batch {eff['batch']} x "
        f"{eff['seq_len']} tokens, no padding.",
        "",
        *table_lines(["precision", "measured matmul peak GFLOP/s", "best GEMM (M x K x N)"], peaks),
        "",
        *table_lines(header, forwards),
        "",
        "GFLOP counts the encoder's matrix products only (`model.encode`, no MLM head); % of "
        f"peak = GFLOP/s / measured peak of the same precision (target at base, fp32: >= "
        f"{eff['target_fraction_base_fp32']:.0%}). Page faults: minor faults per timed forward, "
        "i.e. freshly mapped memory (glibc unmaps blocks over its mmap threshold, <= 32 MB, on free)"
        + (f"; environment: {eff['env']}" if eff["env"] else "")
        + ".",
    ]
    return "\n".join(lines)
