"""Serving throughput and latency: our server vs a plain transformers server, batching on/off.

    python -m bench.bench_serve [--quick] [--checkpoint DIR] [--torch-threads N]

Three servers, one at a time, each a subprocess with uvicorn on 127.0.0.1 and a free port, all
loading the same checkpoint directory:
  hf        bench/hf_baseline_server.py: FastAPI + transformers ``pipeline("fill-mask")``
  ours-off  bert-serve --no-batching (one request per forward pass, no wait)
  ours      bert-serve with dynamic batching (default settings)
A load generator (asyncio, in this process, bounded in request count and time) runs 1, 8
and 32 concurrent clients, each sending one /fill-mask request (one text, one [MASK], top_k 5)
after the previous answer, on its own keep-alive connection. The timed requests use a minimal
HTTP/1.1 client (``RawClient``): httpx's pool alone caps any server at ~150 req/s on 2 cores
at 32 connections (measured against /live); httpx checks health and verifies every server's
answers. Reported: req/s, p50 and p99 latency, errors, and the ratios the
targets are about (at 32 clients: ours >= 4x hf throughput and <= 0.5x its p99; ours >= 2x
ours-off throughput).

The model is a BERT-mini-shaped random model (L4 H256 A4 I1024, BERT init) with a 16k WordPiece
vocab trained by our tokenizer on a slice of data/*.train.txt, built once into
bench/results/bench_serve_model/ (or --checkpoint DIR). Speed does not depend on the weights.
Results: a markdown table on stdout and bench/results/bench_serve.json.

Also reported: the server process's CPU time per request (from /proc, warm-up included), which
other load on a shared machine disturbs far less than wall-clock throughput.

Caveats: the load generator shares the machine's cores with the server under test (on a small
machine it costs every system alike, but caps the absolute numbers); all three servers use the
same torch thread count. Deliberately not measured: multi-process deployments, GPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
RESULTS = ROOT / "bench" / "results"
MODEL_DIR = RESULTS / "bench_serve_model"
MINI = {
    "num_hidden_layers": 4,
    "hidden_size": 256,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
}
CONCURRENCY = (1, 8, 32)
HOST = "127.0.0.1"  # loopback only


# --- model and workload --------------------------------------------------------------------------


def build_model(directory: Path, vocab_lines: int = 30_000, vocab_size: int = 16_000) -> Path:
    """A BERT-mini random model + our WordPiece vocab trained on data/, cached in ``directory``."""
    import torch

    from model import BertConfig, BertForMaskedLM
    from tokenization import WordPieceTokenizer

    marker = directory / "bench_serve.json"
    spec = {"shape": MINI, "vocab_lines": vocab_lines, "vocab_size": vocab_size, "seed": 0}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    corpus = directory / "corpus.txt"
    lines: list[str] = []
    for name, share in (("wordnet.train.txt", 2), ("pydocs.train.txt", 1)):
        with (DATA / name).open(encoding="utf-8") as f:
            lines.extend(itertools.islice(f, vocab_lines * share // 3))
    corpus.write_text("".join(lines), encoding="utf-8")
    t0 = time.perf_counter()
    tok = WordPieceTokenizer.train([corpus], vocab_size=vocab_size, min_frequency=2)
    corpus.unlink()
    print(
        f"trained a {tok.vocab_size}-token vocab in {time.perf_counter() - t0:.1f}s",
        file=sys.stderr,
    )
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=tok.vocab_size, **MINI)).eval()
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    marker.write_text(json.dumps(spec))
    return directory


def make_texts(n: int, seed: int = 0) -> list[str]:
    """n texts of 8-32 consecutive words from the validation files, one word -> [MASK]."""
    rng = random.Random(seed)
    words = []
    for name in ("wordnet.valid.txt", "pydocs.valid.txt"):
        words.append((DATA / name).read_text(encoding="utf-8").split())
    texts = []
    for _ in range(n):
        source = rng.choice(words)
        length = rng.randint(8, 32)
        start = rng.randrange(0, len(source) - length)
        chunk = source[start : start + length]
        chunk[rng.randrange(length)] = "[MASK]"
        texts.append(" ".join(chunk))
    return texts


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


# --- load generator -------------------------------------------------------------------------------


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on one connection (asyncio streams).

    httpx's connection pool costs several ms of CPU per request at 32 connections, which on a
    2-core machine caps *any* server at ~150 req/s and would make the comparison meaningless;
    this client costs ~0.1 ms. httpx checks every server's health and answers (``verify``).
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


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


async def run_level(
    port: int, texts: list[str], concurrency: int, max_requests: int, max_seconds: float
) -> dict:
    """``concurrency`` closed-loop clients until ``max_requests`` or ``max_seconds``."""
    bodies = [json.dumps({"inputs": t, "top_k": 5}).encode() for t in texts]
    clients = [RawClient(port) for _ in range(concurrency)]
    latencies: list[float] = []
    errors = 0
    counter = itertools.count()
    for i, client in enumerate(clients):  # open connections, warm the model
        await client.post("/fill-mask", bodies[i % len(bodies)])
    start = time.perf_counter()
    stop_at = start + max_seconds

    async def client_loop(client: RawClient) -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            i = next(counter)
            if i >= max_requests:
                return
            t0 = time.perf_counter()
            try:
                ok = await client.post("/fill-mask", bodies[i % len(bodies)]) == 200
            except (OSError, asyncio.IncompleteReadError, ValueError):
                ok = False
                await client.close()
                client.writer = None
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    await asyncio.gather(*(client_loop(c) for c in clients))
    elapsed = time.perf_counter() - start
    for c in clients:
        await c.close()
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(pct(0.50), 1),
        "p99_ms": round(pct(0.99), 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1),
    }


def markdown(results: dict[str, list[dict]], ratios: dict[str, float]) -> str:
    names = list(results)
    lines = [
        "| clients | " + " | ".join(f"{n} req/s | {n} p50 ms | {n} p99 ms" for n in names) + " |",
        "|---:|" + "---:|" * (3 * len(names)),
    ]
    for i, c in enumerate(CONCURRENCY):
        cells = []
        for n in names:
            r = results[n][i]
            cells += [f"{r['rps']}", f"{r['p50_ms']}", f"{r['p99_ms']}"]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| clients | " + " | ".join(f"{n} server CPU ms/req" for n in names) + " |")
    lines.append("|---:|" + "---:|" * len(names))
    for i, c in enumerate(CONCURRENCY):
        cells = [str(results[n][i].get("server_cpu_ms_per_req", "n/a")) for n in names]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| ratio at 32 clients | value | target |")
    lines.append("|---|---:|---:|")
    targets = {
        "ours / hf throughput": ">= 4",
        "ours / hf p99": "<= 0.5",
        "ours / ours-off throughput": ">= 2",
    }
    for k, v in ratios.items():
        lines.append(f"| {k} | {v:.2f} | {targets.get(k, '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serving benchmark (see module docstring).")
    parser.add_argument("--quick", action="store_true", help="short runs (~4 s per level)")
    parser.add_argument("--checkpoint", type=Path, help="serve this checkpoint directory")
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="for every server (default: ours')"
    )
    parser.add_argument("--only", default="hf,ours-off,ours", help="comma-separated servers")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_serve.json")
    args = parser.parse_args(argv)
    max_seconds, max_requests = (4.0, 2000) if args.quick else (15.0, 20_000)
    RESULTS.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or build_model(MODEL_DIR)
    threads = args.torch_threads or max(1, (os.cpu_count() or 1) - 1)
    texts = make_texts(512)
    ours = ["app.cli", "--checkpoint", str(checkpoint), "--log-level", "warning"]
    ours += ["--torch-threads", str(threads)]
    servers = {
        "hf": [
            "bench.hf_baseline_server",
            "--checkpoint",
            str(checkpoint),
            "--torch-threads",
            str(threads),
        ],
        "ours-off": [*ours, "--no-batching"],
        "ours": ours,
    }
    results: dict[str, list[dict]] = {}
    for name in args.only.split(","):
        with Server(name, servers[name]) as server:
            verify(server.url, texts[0])
            results[name] = []
            for c in CONCURRENCY:
                cpu0 = server.cpu_seconds()
                level = asyncio.run(run_level(server.port, texts, c, max_requests, max_seconds))
                cpu1 = server.cpu_seconds()
                if cpu0 is not None and cpu1 is not None and level["requests"]:
                    # CPU per request is robust to other load on the machine; wall time is not.
                    level["server_cpu_ms_per_req"] = round(
                        (cpu1 - cpu0) * 1000 / (level["requests"] + c), 2
                    )
                print(f"{name:9s} {json.dumps(level)}", file=sys.stderr)
                results[name].append(level)
    ratios = {}
    last = len(CONCURRENCY) - 1
    if "ours" in results and "hf" in results:
        ratios["ours / hf throughput"] = results["ours"][last]["rps"] / results["hf"][last]["rps"]
        ratios["ours / hf p99"] = results["ours"][last]["p99_ms"] / results["hf"][last]["p99_ms"]
    if "ours" in results and "ours-off" in results:
        ratios["ours / ours-off throughput"] = (
            results["ours"][last]["rps"] / results["ours-off"][last]["rps"]
        )
    table = markdown(results, ratios)
    print(table)
    report = {
        "benchmark": "bench_serve",
        "quick": args.quick,
        "checkpoint": str(checkpoint),
        "shape": MINI if args.checkpoint is None else None,
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
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
