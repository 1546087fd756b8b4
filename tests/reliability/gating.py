"""In-process helpers for the reliability suite: a gate on the model and request tallies (the
error-shape check, ``error_of``, is in tests/app_testing.py, shared with tests/app/).

``ModelGate`` replaces one ``Engine``'s ``run_batch`` (the function the model thread runs) with
one that records what the model was asked to compute and blocks until the test opens the gate,
so a test can fill the queue, expire deadlines or simulate a hung forward pass deterministically.

Not a test module; no servers or subprocesses here (``helpers.py`` has those).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from app.engine import Engine


class ModelGate:
    """Blocks the model thread at the start of every batch until ``release`` is set.

    ``batches`` holds, per batch the model was asked to compute, the token ids of every input
    (so a test can prove an input was never computed); ``entered`` is set when the first batch
    reaches the model. Leaving the ``with`` block opens the gate and restores the engine.
    """

    def __init__(self, engine: Engine, *, timeout_s: float = 20.0) -> None:
        self.engine = engine
        self.timeout_s = timeout_s
        self.release = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[tuple[int, ...]]] = []
        self._original = engine.run_batch

    def __enter__(self) -> ModelGate:
        def gated(jobs: list[Any]) -> list[Any]:
            self.batches.append([tuple(enc.ids) for job in jobs for enc in job.inputs])
            self.entered.set()
            # Bounded, so that a failing test cannot leave the model thread blocked forever.
            if not self.release.wait(self.timeout_s):
                raise RuntimeError("ModelGate was never released")
            return self._original(jobs)

        self.engine.run_batch = gated  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.engine.run_batch = self._original  # type: ignore[method-assign]

    @property
    def inputs_seen(self) -> set[tuple[int, ...]]:
        return {ids for batch in self.batches for ids in batch}


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``condition`` (from a thread other than the event loop's) until it holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


def tally(sent: int, responses: list[Any], rejected: set[int]) -> dict[str, int]:
    """The standard figures from the answers (responses or bare status codes): requests
    ``sent``; answers with an expected refusal status (``rejected``); ``failed``: any other 5xx;
    ``lost``: requests that got no answer at all."""
    statuses = [getattr(r, "status_code", r) for r in responses]
    return {
        "sent": sent,
        "rejected": sum(s in rejected for s in statuses),
        "failed": sum(s >= 500 and s not in rejected for s in statuses),
        "lost": sent - len(statuses),
    }


class Recorder:
    """Wraps a client's ``post`` and keeps every answer, for ``tally``."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.sent = 0
        self.answers: list[Any] = []

    def post(self, *args: Any, **kwargs: Any) -> Any:
        self.sent += 1
        response = self.client.post(*args, **kwargs)
        self.answers.append(response)
        return response

    def tally(self, rejected: set[int]) -> dict[str, int]:
        return tally(self.sent, self.answers, rejected)
