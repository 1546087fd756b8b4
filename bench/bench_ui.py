"""The browser page's cost to the API: /fill-mask throughput with the UI on and off, side by side.

    python -m bench.bench_ui [--quick] [--checkpoint DIR] [--rounds N] [--duration S]
                             [--connections 32]

The same checkpoint is served twice per round, once with the page at / (``BERT_SERVE_UI=true``)
and once without (``false``), alternating which goes first; each server is warmed up, then
loaded by ``wrk`` with /fill-mask bodies (one validation-set gloss per request, one word replaced
by ``[MASK]``). Reported per setting: requests/s and p99 of every round; the ratio on / off of
the mean throughput, and the noise: the largest relative gap between two rounds of the same
setting. "No measurable cost" means the on/off gap is inside that noise. Results: a table on
stdout and bench/results/bench_ui.json. ``--quick``: 2 rounds of 5 s.

Deliberately not measured: the page's own load time (it is static files with ETags) and browser
rendering. Needs wrk (``sudo apt-get install -y wrk``).
"""

from __future__ import annotations

import argparse
import logging
import statistics

from bench.common import (
    DEFAULT_CHECKPOINT,
    RESULTS,
    bench_parser,
    cpu_report,
    setup_logging,
    table_lines,
    write_results,
)
from bench.server import Server
from bench.wrk import fill_mask_bodies, require_wrk, wrk_bodies

log = logging.getLogger(__name__)


def measure(checkpoint: str, ui: bool, args: argparse.Namespace, load: list[dict]) -> dict:
    """One server, the page on or off: warm-up, then the measured wrk run."""
    name = "ui_on" if ui else "ui_off"
    env = {"BERT_SERVE_UI": "true" if ui else "false"}
    argv = ["app.cli", "--checkpoint", checkpoint]
    with Server(name, argv, env=env, log=RESULTS / f"bench_ui_{name}.log") as server:
        wrk_bodies(server.url, "/fill-mask", load, args.connections, args.warmup)
        return wrk_bodies(server.url, "/fill-mask", load, args.connections, args.duration)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("bench_ui", __doc__, quick="2 rounds of 5 s")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 2, 5.0
    require_wrk(parser)
    setup_logging()
    load = fill_mask_bodies()
    runs: dict[str, list[dict]] = {"ui_on": [], "ui_off": []}
    for r in range(args.rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        for ui in order:
            result = measure(args.checkpoint, ui, args, load)
            runs["ui_on" if ui else "ui_off"].append(result)
            log.info("round %d ui %s: %s", r + 1, "on " if ui else "off", result)

    def noise(rows: list[dict]) -> float:
        rps = [row["rps"] for row in rows]
        return (max(rps) - min(rps)) / statistics.mean(rps) if len(rps) > 1 else 0.0

    mean_on = statistics.mean(row["rps"] for row in runs["ui_on"])
    mean_off = statistics.mean(row["rps"] for row in runs["ui_off"])
    summary = {
        "rps_on": round(mean_on, 1),
        "rps_off": round(mean_off, 1),
        "ratio_on_off": round(mean_on / mean_off, 3),
        "noise": round(max(noise(runs["ui_on"]), noise(runs["ui_off"])), 3),
        "errors": sum(row["errors"] for rows in runs.values() for row in rows),
    }
    cpu = cpu_report()
    out = {
        "machine": {"cpus": cpu.cpus, "platform": cpu.platform},
        "settings": {
            "checkpoint": args.checkpoint,
            "rounds": args.rounds,
            "duration_s": args.duration,
            "connections": args.connections,
        },
        "runs": runs,
        "summary": summary,
    }
    write_results(args.out, out)
    table = []
    for key, label in (("ui_on", "on"), ("ui_off", "off")):
        rows = runs[key]
        rps = ", ".join(f"{row['rps']:.1f}" for row in rows)
        p99 = ", ".join(f"{row['p99_ms']:.0f}" for row in rows)
        table.append([label, rps, p99, f"{statistics.mean(row['rps'] for row in rows):.1f}"])
    header = ["UI", "requests/s per round", "p99 ms per round", "mean requests/s"]
    print("\n".join(table_lines(header, table)))
    print(
        f"\non / off: {summary['ratio_on_off']:.3f}x; noise (largest gap between rounds of one "
        f"setting): {summary['noise'] * 100:.1f}%; errors: {summary['errors']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
