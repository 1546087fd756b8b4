"""Graceful shutdown of a real ``bert-serve`` process: SIGTERM with requests in flight.

The server runs as a subprocess (``python -m app.cli``, the ``bert-serve`` entry point) on a
tiny checkpoint. Its batcher waits ``max_wait_ms`` (1.5 s) for a batch to fill while a request is
still on its way, which holds the requests in flight without any test hook: one request sends
its headers and not its body (it keeps a batch waiting for company), 16 requests (fill-mask and
embeddings) are sent, the test waits until ``bert_requests_in_flight`` shows all of them inside
the server, then sends SIGTERM and lets the unfinished one go.
Asserted: readiness (``/health``) answers 503 before any of the 16 completes, and so does a new
inference request; all 16 complete with 200 and the answers the checkpoint gives when computed
in-process; the process exits 0 within ``graceful_shutdown_s`` of the signal, without a traceback.

Deliberately not here: the drain flag's effect on ``/health`` in-process (tests/app/test_app.py) and
the batcher's own drain on stop (tests/app/test_batcher.py).
"""

from __future__ import annotations

import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from app_testing import build_checkpoint
from helpers import ServeProcess, metric_value

from app.jobs import EmbedJob, FillMaskJob
from app.loading import load_engine

N_REQUESTS = 16
GRACE_S = 10
BATCH_WAIT_MS = 1500
TEXTS = [
    "an entity that has [MASK] existence .",
    "the [MASK] of moving .",
    "a [MASK] concept",
    "something that is [MASK] .",
]


def _request(i: int) -> tuple[str, dict]:
    text = TEXTS[i % len(TEXTS)]
    if i % 2 == 0:
        return "/fill-mask", {"inputs": text, "top_k": 3}
    return "/embed", {"inputs": text.replace("[MASK]", "thing"), "normalize": True}


def _expected(checkpoint) -> list:
    """The answer to each request, computed in-process from the same checkpoint."""
    engine = load_engine(checkpoint, max_input_tokens=64, precision="fp32")
    out = []
    for i in range(N_REQUESTS):
        path, body = _request(i)
        if path == "/fill-mask":
            job = FillMaskJob(
                inputs=engine.encode_fill_mask([body["inputs"]], truncate=False), top_k=3
            )
            out.append(engine.run_batch([job])[0][0][0])  # [(token id, score)] of the one mask
        else:
            job = EmbedJob(inputs=engine.encode_many([body["inputs"]], truncate=False))
            out.append(engine.run_batch([job])[0][0])
    return out


def _in_flight(url: str) -> float:
    return metric_value(httpx.get(f"{url}/metrics", timeout=5).text, "bert_requests_in_flight")


def test_sigterm_drains_in_flight_requests_then_exits_0(tmp_path, figures, one_torch_thread):
    checkpoint = build_checkpoint(tmp_path / "tiny", seed=4)
    expected = _expected(checkpoint)
    server = ServeProcess(
        tmp_path / "serve.log",
        "--checkpoint",
        str(checkpoint),
        max_wait_ms=BATCH_WAIT_MS,
        max_batch_size=64,
        graceful_shutdown_s=GRACE_S,
        precision="fp32",  # the expected answers are computed in process in fp32
    )
    limits = httpx.Limits(max_connections=2 * N_REQUESTS)
    with server, ThreadPoolExecutor(N_REQUESTS) as pool, httpx.Client(limits=limits) as client:
        server.wait_ready()
        url = server.url

        def send(i: int) -> tuple[httpx.Response | None, float]:
            path, body = _request(i)
            try:
                r = client.post(url + path, json=body, timeout=30)
            except httpx.TransportError:
                r = None  # no response at all: lost
            return r, time.monotonic()

        # A request whose body never comes: on its way to the queue, so batches wait for it.
        host, port = url.removeprefix("http://").split(":")
        unfinished = socket.create_connection((host, int(port)))
        unfinished.sendall(
            b"POST /embed HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n"
        )
        t_sent = time.monotonic()
        futures = [pool.submit(send, i) for i in range(N_REQUESTS)]
        deadline = time.monotonic() + BATCH_WAIT_MS / 1000 / 2
        while _in_flight(url) < N_REQUESTS + 1:
            assert time.monotonic() < deadline, "the requests did not all reach the server"
            time.sleep(0.02)
        assert not any(f.done() for f in futures)

        t_signal = time.monotonic()
        all_in_flight_s = t_signal - t_sent
        server.proc.send_signal(signal.SIGTERM)
        while True:
            health = httpx.get(f"{url}/health", timeout=5)
            if health.status_code == 503:
                break
            assert time.monotonic() - t_signal < 2, "readiness never went 503"
        t_not_ready = time.monotonic()
        assert "shutting down" in health.json()["error"]
        late = httpx.post(f"{url}/fill-mask", json={"inputs": TEXTS[0]}, timeout=5)
        assert late.status_code == 503 and late.json()["error_type"] == "Unhealthy"
        assert not any(f.done() for f in futures), "a request completed before readiness went 503"
        unfinished.close()  # its client gives up: the drain need not wait for it

        results = [f.result(timeout=GRACE_S + 5) for f in futures]
        rc = server.proc.wait(timeout=GRACE_S + 5)
        t_exit = time.monotonic()

    lost = sum(r is None for r, _ in results)
    failed = 0
    for i, ((r, _), want) in enumerate(zip(results, expected, strict=True)):
        if r is None or r.status_code != 200:
            failed += 1
            continue
        assert r.headers["x-model-version"].startswith("tiny-")
        if i % 2 == 0:
            got = r.json()["predictions"][0][0]
            assert [c["token"] for c in got] == [tid for tid, _ in want]
            assert [c["score"] for c in got] == pytest.approx([s for _, s in want], rel=1e-5)
        else:
            assert r.json()[0] == pytest.approx(want, abs=1e-5)
    completed = [t for _, t in results]
    figures.record(
        sent=N_REQUESTS,
        all_in_flight_after_s=round(all_in_flight_s, 3),
        completed=N_REQUESTS - failed,
        failed=failed,
        lost=lost,
        not_ready_after_s=round(t_not_ready - t_signal, 3),
        last_completed_after_s=round(max(completed) - t_signal, 3),
        exit_after_s=round(t_exit - t_signal, 3),
        grace_s=GRACE_S,
        exit_code=rc,
        late_request_status=late.status_code,
    )
    assert failed == 0, [r.text if r is not None else "lost" for r, _ in results]
    assert min(completed) > t_not_ready
    assert rc == 0, server.output()
    assert t_exit - t_signal < GRACE_S
    assert "Traceback" not in server.output(), server.output()


def test_a_restarted_lifespan_is_ready_again(tmp_path, figures):
    """The same app, stopped and started again (a test client, an ASGI host restarting the
    lifespan), must not stay in the previous shutdown's draining state: /health and inference
    are answered normally by the new lifespan."""
    from app_testing import serve_config
    from fastapi.testclient import TestClient

    from app.main import create_app

    app = create_app(serve_config(build_checkpoint(tmp_path / "ckpt")))
    statuses = []
    for _ in range(2):
        with TestClient(app) as client:
            statuses.append(client.get("/health").status_code)
            r = client.post("/embed", json={"inputs": "a restarted server"})
            statuses.append(r.status_code)
    assert statuses == [200, 200, 200, 200]
    figures.record(lifespans=2, sent=len(statuses), failed=statuses.count(503))
