"""Fill-mask forward speed against transformers, and encoder efficiency against the matmul peak.

    python -m bench.bench_model [--quick] [--threads N] [--shapes tiny,mini,base]
                                [--checkpoint DIR] [--efficiency-only] [--precisions fp32,bf16]
                                [--serve-precisions int8,bf16|none]

Part 1 (bench/hf_compare.py; skipped with --efficiency-only): our `BertForMaskedLM` vs
`transformers.BertForMaskedLM`, same weights, same padded batches of [MASK]ed validation texts,
timings interleaved; the top-5 ids must be identical (near-ties counted apart). Reduced
precisions (--serve-precisions, default int8 plus bf16 where the CPU has it natively) are loaded
as the server loads them, gated against fp32, and timed beside the others against HF fp32.

Part 2 (bench/efficiency.py): our encoder forward's GFLOP/s at 32 x 128 tokens as a share of the
measured `torch.mm` peak of the same precision (--precisions, default fp32 plus bf16 where the CPU
has native bf16: avx512_bf16 or amx_bf16; the CPU flags are reported). On an AVX2-only CPU bf16
runs emulated, several times slower than fp32. Target: BERT-base fp32 at >= 60% of the peak.

Weights are random (BERT init) unless --checkpoint is given; speed does not depend on them.
--shapes and --checkpoint choose the models of both parts; this script builds them, one at a
time, and leaves the measuring to the two modules.

Results: markdown tables on stdout and bench/results/bench_model.json ("results" for part 1,
"efficiency" for part 2; --efficiency-only rewrites only "efficiency" and keeps the rest).
Deliberately not measured: GPU speed, tokenization time, batching delays (see the serving
benchmarks), the theoretical (datasheet) peak: a measured GEMM is what the model can hope for.
Timings on a busy machine are noisy; take figures for the record from one quiet run.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from bench.common import bench_parser, cpu_report, setup_logging, write_results
from bench.efficiency import PRECISIONS, efficiency_markdown, measure_efficiency
from bench.hf_compare import build_tokenizer, compare_shape, comparison_markdown, timed

log = logging.getLogger(__name__)
SHAPES = {
    # name: (layers, hidden, heads, intermediate); vocab is the tokenizer's (16k)
    "tiny": (2, 128, 2, 512),
    "mini": (4, 256, 4, 1024),
    "base": (12, 768, 12, 3072),
}
EFFICIENCY_VOCAB = 16000  # only sizes the embedding table, which costs no FLOPs
SERVE_PRECISIONS = ("bf16", "int8")


def random_model(name: str, vocab_size: int, seed: int, mlm_head: bool = True) -> torch.nn.Module:
    """A seeded BERT of shape SHAPES[name] with BERT's random initialisation, in eval mode."""
    from model import BertConfig, BertForMaskedLM

    layers, hidden, heads, inter = SHAPES[name]
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
    )
    return BertForMaskedLM(config, mlm_head=mlm_head).eval()


def efficiency_models(args) -> Iterator[tuple[str, torch.nn.Module]]:
    """(shape name, fp32 model in eval mode) for --shapes, or the --checkpoint's model; one at a
    time, so that only one model is in memory."""
    from model import BertForMaskedLM

    if args.checkpoint is not None:
        yield "checkpoint", BertForMaskedLM.from_pretrained(args.checkpoint)
        return
    for name in args.shapes.split(","):
        # The encoder alone: the MLM head is not timed, so it need not exist.
        yield name, random_model(name, EFFICIENCY_VOCAB, args.seed, mlm_head=False)


def fill_mask_model(name: str, tok, args, workdir: Path) -> tuple[torch.nn.Module, Path]:
    """(ours, its checkpoint directory): the --checkpoint's, or a random ``name`` model saved with
    the tokenizer into ``workdir`` (transformers and the engine load the same weights from it)."""
    from model import BertForMaskedLM

    if args.checkpoint is not None:
        return BertForMaskedLM.from_pretrained(args.checkpoint), args.checkpoint
    ours = random_model(name, len(tok), args.seed)
    ckpt = workdir / name
    ours.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)  # the engine reads vocab.txt beside the weights
    return ours, ckpt


def compare_with_transformers(args, shapes: list[str]) -> list[dict]:
    """Part 1, every shape, with one tokenizer."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tok, t = timed(lambda: build_tokenizer(args.checkpoint, workdir))
        log.info("tokenizer ready (%d tokens, %.1f s)", len(tok), t)
        for shape in shapes:
            ours, ckpt = fill_mask_model(shape, tok, args, workdir)
            row = compare_shape(
                shape,
                ours,
                ckpt,
                tok,
                serve_precisions=args.serve_precisions,
                quick=args.quick,
                seed=args.seed,
            )
            results.append(row)
    return results


def parse_args(argv: list[str] | None, native_bf16: bool):
    """The arguments, with --precisions and --serve-precisions resolved to lists."""
    parser = bench_parser(
        "bench_model",
        __doc__,
        quick="fewer iterations (a smoke run)",
        threads=torch.get_num_threads(),
    )
    parser.add_argument(
        "--shapes", default="tiny,mini,base", help=f"comma-separated, of {','.join(SHAPES)}"
    )
    parser.add_argument("--checkpoint", type=Path, help="bench this checkpoint dir instead")
    parser.add_argument("--seed", type=int, default=0)
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
    args.shape_list = ["checkpoint"] if args.checkpoint else args.shapes.split(",")
    if unknown := [s for s in args.shape_list if s not in SHAPES and s != "checkpoint"]:
        parser.error(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    if args.precisions is None:
        args.precisions = ["fp32", "bf16"] if native_bf16 else ["fp32"]
    else:
        args.precisions = args.precisions.split(",")
        if bad := [p for p in args.precisions if p not in PRECISIONS]:
            parser.error(f"unknown precision(s) {bad}; choose from {list(PRECISIONS)}")
    if args.serve_precisions is None:
        args.serve_precisions = ["int8", "bf16"] if native_bf16 else ["int8"]
    elif args.serve_precisions == "none":
        args.serve_precisions = []
    else:
        args.serve_precisions = args.serve_precisions.split(",")
        if bad := [p for p in args.serve_precisions if p not in SERVE_PRECISIONS]:
            parser.error(f"unknown served precision(s) {bad}; choose from bf16, int8")
    return args


def main(argv: list[str] | None = None) -> int:
    cpu = cpu_report()
    args = parse_args(argv, cpu.native_bf16)
    setup_logging()
    if "bf16" in args.precisions and not cpu.native_bf16:
        log.info(
            "note: no native bf16 on this CPU (no avx512_bf16/amx_bf16): bf16 runs emulated, "
            "several times slower than fp32 (minutes at base shape)"
        )
    torch.set_num_threads(args.threads)
    # The CPU as the efficiency figures record it (and its table caption shows it).
    info = {"model": cpu.model, "flags": dict(cpu.flags), "torch_capability": cpu.torch_capability}

    # Efficiency first: short, and the most sensitive to a heap fragmented by the comparison.
    efficiency = measure_efficiency(
        efficiency_models(args),
        args.precisions,
        quick=args.quick,
        seed=args.seed,
        threads=args.threads,
        cpu=info,
    )
    tables = [efficiency_markdown(efficiency)]
    results = []
    if not args.efficiency_only:
        import transformers

        results = compare_with_transformers(args, args.shape_list)
        tables.insert(0, comparison_markdown(results, args.threads))
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
            "machine": cpu.machine,
            "results": results,
        }
    report["efficiency"] = efficiency
    write_results(args.out, report)
    failures = [
        r["shape"] for r in results if r["top5_identical"] + r["top5_near_ties"] < r["top5_rows"]
    ]
    if failures:
        log.error("FAIL: top-5 predictions differ for %s", failures)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
