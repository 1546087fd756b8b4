"""/fill-mask serving speed under wrk: our server vs a plain transformers server, batching on/off.

    python -m bench.bench_serve [--quick] [--checkpoint DIR] [--connections 1,8,32]
                                [--duration S] [--torch-threads N]

Three servers, one at a time, each a subprocess with uvicorn on 127.0.0.1 and a free port, all
loading the same checkpoint directory (default: checkpoints/default, the model we ship):
  hf        bench/hf_baseline_server.py: FastAPI + transformers ``pipeline("fill-mask")``
  ours-off  bert-serve --no-batching (one request per forward pass, no wait)
  ours      bert-serve with its default settings (dynamic batching, precision auto)
The load comes from ``wrk`` (bench/wrk.py): at each connection count (1, 8, 32), a warm-up, then
``--duration`` seconds of closed-loop /fill-mask requests (one validation gloss, its middle word
masked, top_k 5). httpx only checks each server's answer once. Every server gets the same torch
threads (default: cores - 1, the other core runs wrk).

Reported: req/s, p50 and p99 latency, errors, server CPU per request (from /proc), and the
ratios the targets are about, at 32 connections: ours >= 6x hf throughput, ours p99 <= 0.4x hf
p99, ours p99 <= 3x ours p50. For ours, the per-stage breakdown of the 32-connection run from
its own /metrics (``bert_request_stage_seconds``: parse, tokenize, queue, compute, respond) and
the event loop's lag: where the time of a slow request goes.

Results: markdown on stdout and bench/results/bench_serve.json. Caveats: wrk shares the
machine's cores with the server under test; on a shared machine the absolute numbers move, the
ratios inside one run are what counts. Deliberately not measured: multi-process deployments,
GPUs, embeddings (bench_embed does those against infinity-emb).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

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
from bench.wrk import fill_mask_bodies, require_wrk, stage_table, wrk_bodies

log = logging.getLogger(__name__)
STAGE_METRICS = ("bert_request_stage_seconds", "bert_event_loop_lag_seconds")
TARGETS = {
    "ours / hf throughput": (">=", 6.0),
    "ours / hf p99": ("<=", 0.4),
    "ours p99 / ours p50": ("<=", 3.0),
    "ours / ours-off throughput": (">=", 2.0),
}


def verify(url: str, text: str) -> None:
    """One request with httpx: the server answers fill-mask with 5 candidates."""
    import httpx

    r = httpx.post(f"{url}/fill-mask", json={"inputs": text, "top_k": 5}, timeout=60)
    r.raise_for_status()
    preds = r.json()["predictions"]
    first = preds[0] if isinstance(preds[0], dict) else preds[0][0]
    if isinstance(first, list):
        first = first[0]
    assert "token_str" in first and "score" in first, r.text[:200]


def run_server(name: str, argv: list[str], args: argparse.Namespace, bodies: list[dict]) -> list:
    """Every connection level against one server; ours also reports its stage breakdown."""
    import httpx

    levels = []
    with Server(name, argv, log=RESULTS / f"bench_serve_{name}.log") as server:
        verify(server.url, bodies[0]["inputs"])
        for connections in args.connections:
            wrk_bodies(server.url, "/fill-mask", bodies, connections, args.warmup)
            before = httpx.get(f"{server.url}/metrics").text if name != "hf" else ""
            cpu0, t0 = server.cpu_seconds(), time.perf_counter()
            level = {"connections": connections}
            level.update(wrk_bodies(server.url, "/fill-mask", bodies, connections, args.duration))
            cpu1 = server.cpu_seconds()
            if cpu0 is not None and cpu1 is not None and level["requests"]:
                level["server_cpu_ms_per_req"] = round((cpu1 - cpu0) * 1000 / level["requests"], 2)
                level["server_cores_busy"] = round((cpu1 - cpu0) / (time.perf_counter() - t0), 2)
            if name != "hf":
                after = httpx.get(f"{server.url}/metrics").text
                level["stages"] = stage_table(before, after, STAGE_METRICS)
            log.info("%-9s %s", name, json.dumps(level))
            levels.append(level)
    return levels


def ratios_at(results: dict[str, list[dict]], connections: int) -> dict[str, float]:
    """The ratios of TARGETS at one connection count, those whose servers ran."""

    def level(name: str) -> dict | None:
        rows = [r for r in results.get(name, []) if r["connections"] == connections]
        return rows[0] if rows else None

    ours, hf, off = level("ours"), level("hf"), level("ours-off")
    out = {}
    if ours and hf:
        out["ours / hf throughput"] = ours["rps"] / hf["rps"]
        out["ours / hf p99"] = ours["p99_ms"] / hf["p99_ms"]
    if ours:
        out["ours p99 / ours p50"] = ours["p99_ms"] / ours["p50_ms"]
    if ours and off:
        out["ours / ours-off throughput"] = ours["rps"] / off["rps"]
    return out


def markdown(results: dict[str, list[dict]], ratios: dict[str, float], top: int) -> str:
    """Servers side by side per connection count, the ratios against their targets, and our
    stage breakdown at ``top`` connections."""
    names = list(results)
    levels = [  # one row per connection count, each server's figures side by side
        [
            rows[0]["connections"],
            *(f"{r['rps']:,.0f} ({r['p50_ms']:g} / {r['p99_ms']:g})" for r in rows),
        ]
        for rows in zip(*(results[n] for n in names), strict=True)
    ]
    header = ["connections", *(f"{n} req/s (p50 / p99 ms)" for n in names)]
    lines = table_lines(header, levels, "r" + "l" * len(names))
    checks = []
    for k, v in ratios.items():
        op, goal = TARGETS[k]
        met = v >= goal if op == ">=" else v <= goal
        checks.append([k, f"{v:.2f}", f"{op} {goal:g} {'(met)' if met else '(NOT met)'}"])
    lines += ["", *table_lines([f"ratio at {top} connections", "value", "target"], checks, "lrr")]
    stages = next(
        (r.get("stages") for r in results.get("ours", []) if r["connections"] == top), None
    )
    if stages:
        header = [f"ours at {top} connections: stage", "mean ms"]
        header += ["p50 ms (at most)", "p99 ms (at most)"]
        rows = [
            [stage, row["mean_ms"], row["p50_ms_at_most"], row["p99_ms_at_most"]]
            for stage, row in stages.items()
        ]
        lines += ["", *table_lines(header, rows, "lrrr")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("bench_serve", __doc__, quick="5 s per level, 2 s warm-up")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--connections", default="1,8,32", help="comma-separated levels")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per level")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before each level")
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="for every server (default: cores - 1)"
    )
    parser.add_argument("--only", default="hf,ours-off,ours", help="comma-separated servers")
    args = parser.parse_args(argv)
    require_wrk(parser)
    setup_logging()
    args.connections = [int(c) for c in args.connections.split(",")]
    if args.quick:
        args.duration, args.warmup = 5.0, 2.0
    threads = args.torch_threads or max(1, (os.cpu_count() or 1) - 1)
    bodies = fill_mask_bodies()
    ours = ["app.cli", "--checkpoint", str(args.checkpoint), "--log-level", "warning"]
    ours += ["--torch-threads", str(threads)]
    hf = ["bench.hf_baseline_server", "--checkpoint", str(args.checkpoint)]
    servers = {
        "hf": [*hf, "--torch-threads", str(threads)],
        "ours-off": [*ours, "--no-batching"],
        "ours": ours,
    }
    results = {name: run_server(name, servers[name], args, bodies) for name in args.only.split(",")}
    top = max(args.connections)
    ratios = ratios_at(results, top)
    table = markdown(results, ratios, top)
    print(table)
    cpu = cpu_report()
    report = {
        "benchmark": "bench_serve",
        "load": "wrk",
        "quick": args.quick,
        "duration_s": args.duration,
        "checkpoint": str(args.checkpoint),
        "torch_threads": threads,
        "cpu_count": cpu.cpus,
        "cpu_flags": cpu.present,
        "platform": cpu.platform,
        "python": platform.python_version(),
        "results": results,
        "ratios": ratios,
        "table": table,
    }
    write_results(args.out, report)
    failed = sum(r["errors"] for levels in results.values() for r in levels)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
