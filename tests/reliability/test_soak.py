"""Soak: a real ``bert-serve`` process under steady load with a hot-swap every 30 s.

For ``BERT_SOAK_SECONDS`` (300) an open-loop generator on loopback sends ``BERT_SOAK_RATE`` (30)
requests per second, two thirds fill-mask and one third embeddings, each launched on schedule
whether or not the previous ones have answered. Every ``BERT_SOAK_SWAP_SECONDS`` (30) the admin
API swaps the served checkpoint between ``a`` and ``b``. Asserted: every request gets a 200 whose
``X-Model-Version`` names one of the two models and whose fill-mask answer is that model's
answer (computed in-process beforehand), every swap succeeds, the generator kept its rate, and
the server's RSS at the end is less than 10% above its RSS after warm-up (two swaps, so both
models have been loaded and dropped once).

Marked ``long`` (``make reliability``). ``BERT_SOAK_SECONDS=30 BERT_SOAK_SWAP_SECONDS=5`` gives a
quick run while developing. Deliberately not here: overload (tests/reliability/test_backpressure)
and refused swaps (test_hostile_checkpoints).
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import statistics
import time

import httpx
import pytest
from app_testing import build_checkpoint
from helpers import ServeProcess

from app.jobs import FillMaskJob
from app.loading import load_engine

pytestmark = pytest.mark.long

DURATION_S = float(os.environ.get("BERT_SOAK_SECONDS", "300"))
RATE = float(os.environ.get("BERT_SOAK_RATE", "30"))
SWAP_S = float(os.environ.get("BERT_SOAK_SWAP_SECONDS", "30"))
MAX_RSS_GROWTH = 0.10
TOKEN = "soak-admin-token-0123456789abcdef"
PROBE = "an entity that has [MASK] existence ."
MiB = 1024 * 1024


def _expected(models) -> dict[str, int]:
    """The top fill-mask token for PROBE, per model version."""
    out = {}
    for name in ("a", "b"):
        engine = load_engine(models / name, max_input_tokens=64)
        job = FillMaskJob(inputs=engine.encode_fill_mask([PROBE], truncate=False), top_k=1)
        out[engine.version] = engine.run_batch([job])[0][0][0][0][0]
    assert len(set(out.values())) == 2, "the two models must give different answers"
    return out


class Soak:
    """The load generator, the swapper and the RSS sampler, run together on one event loop."""

    def __init__(self, server: ServeProcess, expected: dict[str, int]) -> None:
        self.server = server
        self.expected = expected
        self.sent = 0
        self.ok = 0
        self.by_version: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self.lost = 0
        self.latencies: list[float] = []
        self.swaps = 0
        self.swap_attempts = 0
        self.swap_failures: list[str] = []
        self.rss: list[tuple[float, int]] = []  # (seconds since start, bytes)
        self.t0 = 0.0
        self.elapsed = 0.0
        self.max_lag = 0.0  # how late the generator launched a request, worst case

    async def request(self, client: httpx.AsyncClient, i: int) -> None:
        started = time.monotonic()
        try:
            if i % 3 == 2:
                r = await client.post("/embed", json={"inputs": ["a general concept", PROBE]})
            else:
                r = await client.post(
                    "/fill-mask", json={"inputs": [PROBE, "a [MASK] ."], "top_k": 1}
                )
        except httpx.TransportError as e:
            self.lost += 1
            self.failures.append(f"#{i}: no response ({type(e).__name__})")
            return
        self.latencies.append(time.monotonic() - started)
        problem = self.check(r)
        if problem:
            self.failures.append(f"#{i} {r.request.url.path}: {problem}")
        else:
            self.ok += 1

    def check(self, r: httpx.Response) -> str | None:
        if r.status_code != 200:
            return f"{r.status_code} {r.text[:200]}"
        version = r.headers.get("x-model-version")
        if version not in self.expected:
            return f"unknown model version {version!r}"
        self.by_version[version] += 1
        body = r.json()
        if r.request.url.path == "/embed":
            if len(body) != 2 or not all(math.isfinite(x) for v in body for x in v):
                return "malformed embeddings"
            return None
        if body["model"] != version:
            return f"header {version} but body {body['model']}"
        token = body["predictions"][0][0][0]["token"]
        if token != self.expected[version]:
            return f"{version} answered {token}, expected {self.expected[version]}"
        return None

    async def generate(self, client: httpx.AsyncClient) -> None:
        tasks = []
        n = int(DURATION_S * RATE)
        for i in range(n):
            # Open loop: request i leaves at t0 + i / RATE, however slow the earlier ones are.
            await asyncio.sleep(max(0.0, self.t0 + i / RATE - time.monotonic()))
            self.max_lag = max(self.max_lag, time.monotonic() - (self.t0 + i / RATE))
            tasks.append(asyncio.create_task(self.request(client, i)))
            self.sent += 1
        await asyncio.gather(*tasks)

    async def swap(self, client: httpx.AsyncClient) -> None:
        names = ["b", "a"]
        k = 1
        while time.monotonic() + SWAP_S < self.t0 + DURATION_S:
            await asyncio.sleep(max(0.0, self.t0 + k * SWAP_S - time.monotonic()))
            name = names[(k - 1) % 2]
            self.swap_attempts += 1
            r = await client.post(
                "/admin/reload",
                json={"checkpoint": name},
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=60,
            )
            if r.status_code == 200 and r.json()["model"].startswith(f"{name}-"):
                self.swaps += 1
            else:
                self.swap_failures.append(f"{name}: {r.status_code} {r.text[:200]}")
            k += 1

    async def sample_rss(self) -> None:
        while time.monotonic() < self.t0 + DURATION_S:
            self.rss.append((time.monotonic() - self.t0, await asyncio.to_thread(self.server.rss)))
            await asyncio.sleep(1.0)
        self.rss.append((time.monotonic() - self.t0, self.server.rss()))

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=self.server.url, timeout=30, limits=limits) as client:
            self.t0 = time.monotonic()
            await asyncio.gather(self.generate(client), self.swap(client), self.sample_rss())
        self.elapsed = time.monotonic() - self.t0


def test_soak_steady_load_with_hot_swaps(tmp_path, figures, one_torch_thread):
    models = tmp_path / "models"
    build_checkpoint(models / "a", seed=1, hidden=64, layers=2)
    build_checkpoint(models / "b", seed=2, hidden=64, layers=2)
    expected = _expected(models)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    server = ServeProcess(
        tmp_path / "serve.log",
        "--checkpoint",
        str(models / "a"),
        "--models-root",
        str(models),
        "--admin-token-file",
        str(token_file),
    )
    with server:
        server.wait_ready()
        soak = Soak(server, expected)
        asyncio.run(soak.run())
        assert server.proc.poll() is None, server.output()

    # Warm-up: until two swaps have loaded and dropped both models, capped at a third of the run.
    warmup_s = min(2 * SWAP_S + 5, DURATION_S / 3)
    baseline = statistics.median(b for t, b in soak.rss if warmup_s <= t < warmup_s + 5)
    final = statistics.median(b for t, b in soak.rss if t >= DURATION_S - 5)
    growth = (final - baseline) / baseline
    latencies = sorted(soak.latencies)
    figures.record(
        seconds=round(soak.elapsed, 1),
        rate=round(soak.sent / soak.elapsed, 1),
        max_launch_lag_ms=round(1000 * soak.max_lag, 1),
        sent=soak.sent,
        failed=len(soak.failures),
        lost=soak.lost,
        swaps=soak.swaps,
        swap_failures=len(soak.swap_failures),
        answered_by_a=sum(n for v, n in soak.by_version.items() if v.startswith("a-")),
        answered_by_b=sum(n for v, n in soak.by_version.items() if v.startswith("b-")),
        p99_ms=round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1) if latencies else None,
        rss_baseline_mb=round(baseline / MiB, 1),
        rss_final_mb=round(final / MiB, 1),
        rss_max_mb=round(max(b for _, b in soak.rss) / MiB, 1),
        rss_growth_pct=round(100 * growth, 2),
        warmup_s=warmup_s,
    )
    assert not soak.failures, soak.failures[:10]
    assert not soak.swap_failures, soak.swap_failures
    assert soak.sent == int(DURATION_S * RATE)
    assert soak.max_lag < 1.0  # the generator kept its schedule: the rate is what was asked
    assert set(soak.by_version) == set(expected)  # both models served
    assert soak.swaps == soak.swap_attempts >= DURATION_S // SWAP_S - 1
    assert growth < MAX_RSS_GROWTH, (baseline, final)
