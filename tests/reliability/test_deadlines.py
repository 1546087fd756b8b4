"""Deadlines: a request queued past its deadline gets 504 and is never computed; a hung forward
pass is reported (504 for its requests, an error log line, a metric, readiness 503) and the
server serves again once it returns.

The app runs in-process with the model gated (``ModelGate``), so "queued" and "hung" are exact
states, not timing guesses. The gate records the token ids of every input the model was asked to
compute, which is how "never computed" is proved.

Deliberately not here: interrupting a running forward pass (a thread cannot be killed; the
server answers for it and waits), and client disconnects (tests/app/test_app.py).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from app_testing import build_checkpoint, error_of, serve_config
from fastapi.testclient import TestClient
from gating import ModelGate, tally, wait_until
from helpers import metric_value

from app.main import create_app

BUSY = "the busy request holds the model ."
LATE = ["an entity that waits [MASK] .", "a concept that waits .", "the dog waits ."]
AFTER = "a general concept [MASK] ."


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("deadlines") / "tiny", seed=7)


def _ids(client: TestClient, text: str) -> tuple[int, ...]:
    engine = client.app.state.serve.registry.current
    return tuple(engine.encode(text, truncate=False).ids)


def test_request_queued_past_its_deadline_is_504_and_never_computed(checkpoint, figures):
    timeout_s = 0.25
    config = serve_config(checkpoint, request_timeout_s=timeout_s, max_wait_ms=0)
    with TestClient(create_app(config)) as client, ThreadPoolExecutor(len(LATE) + 1) as pool:
        state = client.app.state.serve
        with ModelGate(state.registry.current) as gate:
            busy = pool.submit(client.post, "/embed", json={"inputs": BUSY})
            assert gate.entered.wait(10)  # the model thread is busy; the queue is not served
            started = time.monotonic()
            late = [
                pool.submit(
                    client.post, "/fill-mask" if "[MASK]" in t else "/embed", json={"inputs": t}
                )
                for t in LATE
            ]
            responses = [f.result(timeout=10) for f in late]
            waited = time.monotonic() - started
            for r in responses:
                assert "queue" in error_of(r, 504, "Timeout")
            assert waited >= timeout_s
            # `busy` is past its deadline too, but its batch started before it: it completes.
            assert not busy.done()
            gate.release.set()
            busy_r = busy.result(timeout=10)
            assert busy_r.status_code == 200
            after = client.post("/fill-mask", json={"inputs": AFTER})
            assert after.status_code == 200
        late_ids = {_ids(client, t) for t in LATE}
        assert not late_ids & gate.inputs_seen  # no expired input ever reached the model
        assert gate.batches == [[_ids(client, BUSY)], [_ids(client, AFTER)]]
        metrics = client.get("/metrics").text
        assert metric_value(metrics, "bert_dropped_requests_total", reason="deadline") == len(LATE)
        n_504 = sum(
            metric_value(metrics, "bert_requests_total", endpoint=e, status="504")
            for e in ("/fill-mask", "/embed")
        )
        assert n_504 == len(LATE)
        assert metric_value(metrics, "bert_queue_size") == 0
    figures.record(
        **tally(len(LATE) + 2, [*responses, busy_r, after], rejected={504}),
        computed_after_deadline=len(late_ids & gate.inputs_seen),
        deadline_s=timeout_s,
        waited_s=round(waited, 3),
    )


def test_hung_forward_pass_is_reported_and_the_next_request_succeeds(checkpoint, figures, caplog):
    """Before the stall watchdog, a hung forward pass left its request waiting forever with
    nothing logged and /health 200; now its request gets 504 at compute_timeout_s."""
    compute_timeout_s = 0.3
    config = serve_config(
        checkpoint, compute_timeout_s=compute_timeout_s, request_timeout_s=20, max_wait_ms=0
    )
    caplog.set_level(logging.WARNING, logger="app.batcher")
    with TestClient(create_app(config)) as client, ThreadPoolExecutor(2) as pool:
        state = client.app.state.serve
        first = client.post("/fill-mask", json={"inputs": AFTER})
        reference = first.json()["predictions"]
        with ModelGate(state.registry.current) as gate:
            sent_at = time.monotonic()
            hung = pool.submit(client.post, "/fill-mask", json={"inputs": LATE[0]})
            assert gate.entered.wait(10)
            queued = pool.submit(client.post, "/embed", json={"inputs": LATE[1]})
            wait_until(lambda: len(state.batcher) == 1)

            r = hung.result(timeout=10)
            reported_after = time.monotonic() - sent_at
            assert "stalled" in error_of(r, 504, "Timeout")
            assert compute_timeout_s <= reported_after < compute_timeout_s + 5
            stalls = [rec for rec in caplog.records if "model stalled" in rec.getMessage()]
            assert len(stalls) == 1 and stalls[0].levelno == logging.ERROR
            assert metric_value(client.get("/metrics").text, "bert_stalled_batches_total") == 1
            # Readiness tells the truth while the model thread is stuck, and new work is turned
            # away at once rather than queued behind the stall.
            assert "stalled" in error_of(client.get("/health"), 503, "Unhealthy")
            turned_away = client.post("/embed", json={"inputs": AFTER})
            error_of(turned_away, 503, "Unhealthy")
            assert not queued.done()  # queued before the stall, within its deadline: it waits

            gate.release.set()  # the forward pass returns
            queued_r = queued.result(timeout=10)
            assert queued_r.status_code == 200
            assert client.get("/health").status_code == 200
            after = client.post("/fill-mask", json={"inputs": AFTER})
        assert after.status_code == 200
        assert after.json()["predictions"] == reference  # the model state was not disturbed
        assert any("serving resumes" in rec.getMessage() for rec in caplog.records)
        assert len(gate.batches) == 3  # the hung batch, the queued request, the next one
        metrics = client.get("/metrics").text
        assert metric_value(metrics, "bert_stalled_batches_total") == 1
        assert (
            metric_value(metrics, "bert_requests_total", endpoint="/fill-mask", status="504") == 1
        )
    # Refused by design: the hung request's 504 and the request turned away (503) while stalled.
    answers = [first, r, turned_away, queued_r, after]
    figures.record(
        **tally(5, answers, rejected={503, 504}),
        compute_timeout_s=compute_timeout_s,
        stall_reported_s=round(reported_after, 3),
    )
