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
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.wrk import fill_mask_bodies, stage_table, wrk_bodies

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "default"
HOST = "127.0.0.1"  # loopback only
STAGE_METRICS = ("bert_request_stage_seconds", "bert_event_loop_lag_seconds")
TARGETS = {
    "ours / hf throughput": (">=", 6.0),
    "ours / hf p99": ("<=", 0.4),
    "ours p99 / ours p50": ("<=", 3.0),
    "ours / ours-off throughput": (">=", 2.0),
}


# --- servers --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess on a free loopback port; always terminated on exit.

    By default ``python -m <argv>`` with this interpreter; ``command`` runs another program
    (another venv's server) with ``argv`` as its arguments, ``env`` adds to its environment.
    Either way ``--port N`` is appended and ``/health`` must answer 200.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.argv = [*argv, "--port", str(self.port)]
        self.command = [sys.executable, "-m"] if command is None else command
        self.extra_env = env or {}
        self.url = f"http://{HOST}:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = log or RESULTS / f"bench_serve_{name}.log"

    def __enter__(self) -> Server:
        import httpx

        env = {k: v for k, v in os.environ.items() if not k.startswith("BERT_SERVE_")}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.update(self.extra_env)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen(
            [*self.command, *self.argv],
            cwd=ROOT,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early; see {self.log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not become healthy; see {self.log}")
            time.sleep(0.25)

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process so far (Linux /proc), else None."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, AttributeError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


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


def cpu_flags() -> list[str]:
    """The CPU features that decide which precision is fast here."""
    from model.hardware import cpu_flags as present

    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni", "avx_vnni")
    return [f for f in wanted if f in (present() or ())]


def run_server(name: str, argv: list[str], args: argparse.Namespace, bodies: list[dict]) -> list:
    """Every connection level against one server; ours also reports its stage breakdown."""
    import httpx

    levels = []
    with Server(name, argv) as server:
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
            print(f"{name:9s} {json.dumps(level)}", file=sys.stderr)
            levels.append(level)
    return levels


def ratios_at(results: dict[str, list[dict]], connections: int) -> dict[str, float]:
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
    names = list(results)
    lines = [
        "| connections | " + " | ".join(f"{n} req/s (p50 / p99 ms)" for n in names) + " |",
        "|---:|" + "---|" * len(names),
    ]
    for i, level in enumerate(results[names[0]]):
        cells = []
        for n in names:
            r = results[n][i]
            cells.append(f"{r['rps']:,.0f} ({r['p50_ms']:g} / {r['p99_ms']:g})")
        lines.append(f"| {level['connections']} | " + " | ".join(cells) + " |")
    lines += ["", f"| ratio at {top} connections | value | target |", "|---|---:|---:|"]
    for k, v in ratios.items():
        op, goal = TARGETS[k]
        met = v >= goal if op == ">=" else v <= goal
        lines.append(f"| {k} | {v:.2f} | {op} {goal:g} {'(met)' if met else '(NOT met)'} |")
    stages = next(
        (r.get("stages") for r in results.get("ours", []) if r["connections"] == top), None
    )
    if stages:
        lines += [
            "",
            f"| ours at {top} connections: stage | mean ms | p50 ms (at most) | p99 ms (at most) |",
        ]
        lines.append("|---|---:|---:|---:|")
        for stage, row in stages.items():
            lines.append(
                f"| {stage} | {row['mean_ms']} | {row['p50_ms_at_most']} | {row['p99_ms_at_most']} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serving benchmark (see module docstring).")
    parser.add_argument("--quick", action="store_true", help="5 s per level, 2 s warm-up")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--connections", default="1,8,32", help="comma-separated levels")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per level")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before each level")
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="for every server (default: cores - 1)"
    )
    parser.add_argument("--only", default="hf,ours-off,ours", help="comma-separated servers")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_serve.json")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.exit(2, "bench_serve: wrk is missing: sudo apt-get install -y wrk\n")
    args.connections = [int(c) for c in args.connections.split(",")]
    if args.quick:
        args.duration, args.warmup = 5.0, 2.0
    RESULTS.mkdir(parents=True, exist_ok=True)
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
    report = {
        "benchmark": "bench_serve",
        "load": "wrk",
        "quick": args.quick,
        "duration_s": args.duration,
        "checkpoint": str(args.checkpoint),
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "results": results,
        "ratios": ratios,
        "table": table,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    failed = sum(r["errors"] for levels in results.values() for r in levels)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
