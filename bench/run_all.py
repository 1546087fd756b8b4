"""Run every benchmark in turn: `python -m bench.run_all [--quick]` (what `make bench` calls).

Each benchmark runs in its own process, so one's threads, caches and imports cannot colour the
next one's figures. Results land in bench/results/*.json; tables are printed as they finish.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

BENCHES = (
    "bench_tokenizer",
    "bench_model",
    "bench_precision",
    "bench_train",
    "bench_serve",
    "bench_retrieval",
    "bench_rerank",
    "bench_cloze",
    "bench_embed",
    "bench_ui",
    "bench_finetune",
    "bench_sop",
)
# Every benchmark but the tokenizer's has a short variant.
QUICK_CAPABLE = set(BENCHES) - {"bench_tokenizer"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short variants where they exist")
    ap.add_argument("--only", nargs="+", choices=BENCHES, default=list(BENCHES))
    args = ap.parse_args(argv)
    failed = []
    for name in args.only:
        cmd = [sys.executable, "-m", f"bench.{name}"]
        if args.quick and name in QUICK_CAPABLE:
            cmd.append("--quick")
        print(f"\n=== {' '.join(cmd[1:])}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
