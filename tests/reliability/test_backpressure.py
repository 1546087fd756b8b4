"""Backpressure: with the model gated, a burst of twice the server's capacity gets exactly the
429s its limits imply, each with Retry-After, no 5xx, /health 200 throughout, the overload
counter up by exactly that number, and every accepted request answered correctly.

Capacity is what the server holds at once: the batch in the model (``max_batch_size`` one-input
requests; a long ``max_wait_ms`` makes the first batch wait until it is full) plus the queue
(``max_queue``). With that batch blocked in the gated model, a burst of ``2 x capacity`` finds
``max_queue`` free places, so exactly ``2 x capacity - max_queue`` requests are refused. The burst
is sent "at once": every request is a task on the app's own event loop (httpx's ASGI transport),
so there is no client thread pool to serialise it.

Deliberately not here: overload of a real socket server (the soak test runs one); queue
deadlines (test_deadlines.py).
"""

from __future__ import annotations

import asyncio
import collections

import httpx
import numpy as np
from app_testing import build_checkpoint, error_of, serve_config
from fastapi.testclient import TestClient
from gating import ModelGate
from helpers import metric_value

from app.main import create_app

MAX_BATCH = 4
MAX_QUEUE = 8  # a multiple of MAX_BATCH: the queued requests drain as full batches, no waiting
CAPACITY = MAX_BATCH + MAX_QUEUE
BURST = 2 * CAPACITY
EXPECTED_429 = BURST - MAX_QUEUE

WORDS = ["entity", "concept", "the", "dog", "a", "general", "feature", "here"]


def _text(i: int) -> str:
    """A distinct short input per request, so each answer can be checked against its own."""
    return f"{WORDS[i % len(WORDS)]} {WORDS[(i // len(WORDS)) % len(WORDS)]} {i}"


async def _until(condition, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


def test_burst_of_twice_capacity_gets_exactly_the_implied_429s(tmp_path, figures):
    config = serve_config(
        build_checkpoint(tmp_path / "tiny", seed=3),
        max_batch_size=MAX_BATCH,
        max_client_batch=MAX_BATCH,
        max_queue=MAX_QUEUE,
        max_wait_ms=10_000,
    )
    with TestClient(create_app(config)) as client:
        state = client.app.state.serve
        overloaded = "bert_dropped_requests_total"
        before = metric_value(client.get("/metrics").text, overloaded, reason="overloaded")

        async def scenario():
            transport = httpx.ASGITransport(app=client.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:

                def post(i: int) -> asyncio.Task[httpx.Response]:
                    return asyncio.create_task(http.post("/embed", json={"inputs": _text(i)}))

                # One full batch reaches the model and blocks there.
                in_model = [post(i) for i in range(MAX_BATCH)]
                await _until(gate.entered.is_set)
                assert gate.batches and len(gate.batches[0]) == MAX_BATCH
                assert len(state.batcher) == 0
                # The burst: every request of it on the loop at once.
                burst = [post(MAX_BATCH + i) for i in range(BURST)]
                await _until(lambda: sum(t.done() for t in burst) == EXPECTED_429)
                assert len(state.batcher) == MAX_QUEUE
                # Overloaded, not unhealthy: readiness stays 200 and the gauge shows a full queue.
                health = await http.get("/health")
                metrics = (await http.get("/metrics")).text
                gate.release.set()
                responses = await asyncio.gather(*in_model, *burst)
                return health, metrics, responses

        with ModelGate(state.registry.current) as gate:
            health, metrics_during, responses = client.portal.call(scenario)

        assert health.status_code == 200
        assert metric_value(metrics_during, "bert_queue_size") == MAX_QUEUE
        statuses = collections.Counter(r.status_code for r in responses)
        assert statuses == {200: MAX_BATCH + MAX_QUEUE, 429: EXPECTED_429}, statuses
        for r in responses:
            if r.status_code == 429:
                error_of(r, 429, "Overloaded")
                assert int(r.headers["retry-after"]) >= 1
        # The accepted ones ran as full batches: the blocked one, then the queue drained.
        assert [len(b) for b in gate.batches] == [MAX_BATCH] * (1 + MAX_QUEUE // MAX_BATCH)

        # Every accepted request got its own correct answer, recomputed unloaded (in requests of
        # MAX_BATCH inputs: a full batch starts at once, without waiting max_wait_ms for company).
        accepted = [i for i, r in enumerate(responses) if r.status_code == 200]
        assert len(accepted) % MAX_BATCH == 0
        for k in range(0, len(accepted), MAX_BATCH):
            ids = accepted[k : k + MAX_BATCH]
            again = client.post("/embed", json={"inputs": [_text(i) for i in ids]}).json()
            for i, vector in zip(ids, again, strict=True):
                np.testing.assert_allclose(responses[i].json()[0], vector, atol=1e-5)

        metrics = client.get("/metrics").text
        after = metric_value(metrics, overloaded, reason="overloaded")
        assert after - before == EXPECTED_429
        assert metric_value(metrics, "bert_requests_total", endpoint="/embed", status="429") == (
            EXPECTED_429
        )
        assert client.get("/health").status_code == 200
    figures.record(
        sent=MAX_BATCH + BURST,
        capacity=CAPACITY,
        accepted=statuses[200],
        rejected=statuses[429],
        expected_rejected=EXPECTED_429,
        failed=sum(n for s, n in statuses.items() if s >= 500),
        lost=MAX_BATCH + BURST - sum(statuses.values()),
    )
