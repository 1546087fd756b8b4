"""Dynamic batching: a bounded asyncio queue of pending requests and the worker that batches them.

Three parts, after Ray Serve's ``serve/batching.py`` and TEI's ``queue.rs``:

* ``Pending``: one request (its inputs' token lengths, an opaque payload, a future, enqueue time,
  deadline, and the ``group`` it must be computed with: the engine that tokenized it).
* ``BatchQueue``: ``submit`` never blocks (``OverloadedError`` when full); ``wait`` awaits the
  result while honouring the queue deadline and client disconnects; ``start``/``stop``.
* The worker loop: take the first waiting request, then keep adding requests until the batch
  has ``max_batch_size`` inputs, or its cost (``CostModel.work``, the engine's price list)
  would exceed ``max_batch_tokens``, or ``max_wait_s`` has passed since the first one was taken,
  or the queue is empty and no request is on its way (``arriving``: a lone client's request is
  not held back waiting for company that cannot come). A request that
  does not fit (or belongs to another group) goes back to the front. Cancelled and expired
  requests are skipped before compute. The batch is handed to ``run_batch`` (an async callable;
  the app's runs the model in its dedicated thread); its results are fanned out one per future,
  an exception is set on every future of the batch, and the worker logs and goes on.
* The stall watchdog: a batch still computing after ``compute_timeout_s`` means a hung model.
  Its requests get ``ComputeTimeoutError`` (504) at once, the stall is logged and counted, and
  ``stalled_for`` tells readiness; the worker waits for the forward pass to return (a thread
  cannot be interrupted), logs the recovery and takes the next batch.

The prices come from ``app.cost.CostModel`` (the same list ``app.engine`` splits batches by).

Deliberately not here: tokenization, torch, HTTP. A request is never split across batches, so
all its inputs are computed by the same model; the first request of a batch is always taken
whole even if it alone exceeds the token budget (the config guarantees one full-length input
fits, and ``max_client_batch <= max_batch_size``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.cost import CostModel
from app.errors import (
    ClientDisconnectedError,
    ComputeTimeoutError,
    OverloadedError,
    QueueTimeoutError,
    UnhealthyError,
)
from app.metrics import ServeMetrics

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Pending:
    """One request waiting for a batch: its inputs' token lengths, payload and future."""

    lengths: Sequence[int]  # tokens per input, specials included
    payload: Any  # what run_batch needs for this request (opaque to the queue)
    future: asyncio.Future[Any]
    group: Hashable = None  # requests of different groups never share a batch
    deadline: float | None = None  # time.monotonic() after which it may not start
    enqueued_at: float = field(default_factory=time.monotonic)
    started: bool = False  # set when its batch starts computing; then it is never dropped
    started_at: float | None = None  # time.monotonic() when its batch started computing
    finished_at: float | None = None  # ... and when that batch returned

    @property
    def n_inputs(self) -> int:
        return len(self.lengths)

    @property
    def max_len(self) -> int:
        return max(self.lengths, default=0)


def batch_work(batch: Sequence[Pending], cost: CostModel) -> float:
    """The work of a batch computed as one pass: what ``max_batch_tokens`` bounds."""
    lengths = [n for p in batch for n in p.lengths]
    return cost.work(len(lengths), max(lengths, default=0), sum(lengths))


RunBatch = Callable[[list[Pending]], Awaitable[Sequence[Any]]]


class BatchQueue:
    """A bounded queue of ``Pending`` requests and one worker task that runs them in batches."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int = 32,
        max_batch_tokens: int = 16384,
        max_wait_s: float = 0.005,
        max_queue: int = 256,
        compute_timeout_s: float | None = None,
        metrics: ServeMetrics | None = None,
        cost_of: Callable[[Hashable], CostModel] | None = None,
        arriving: Callable[[], int] | None = None,
    ) -> None:
        if (
            max_batch_size < 1
            or max_batch_tokens < 1
            or max_queue < 1
            or max_wait_s < 0
            or (compute_timeout_s is not None and compute_timeout_s <= 0)
        ):
            raise ValueError(
                f"bad batching limits: max_batch_size={max_batch_size}, "
                f"max_batch_tokens={max_batch_tokens}, max_queue={max_queue}, "
                f"max_wait_s={max_wait_s}, compute_timeout_s={compute_timeout_s}"
            )
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.compute_timeout_s = compute_timeout_s
        self.metrics = metrics
        # The price list of the engine a group of requests runs on (the same as its planner's).
        self._cost_of = cost_of or (lambda group: CostModel())
        # How many requests are on their way to the queue (None: unknown, always wait).
        self._arriving = arriving
        self._queue: deque[Pending] = deque()
        self._not_empty = asyncio.Event()
        self._idle = asyncio.Event()  # no batch computing
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._computing_since: float | None = None  # start of the batch now computing
        self._stalled = False  # that batch overran compute_timeout_s and has not returned
        # The batch the worker is gathering (taken off the queue, not yet computing): stop()
        # must answer these too, or a request caught there would never get a response.
        self._gathering: list[Pending] = []
        self.batches_run = 0

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker task on the running event loop."""
        if self._task is not None:
            raise RuntimeError("BatchQueue already started")
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._worker(), name="bert-batcher")

    async def stop(self, drain_timeout_s: float = 0.0) -> None:
        """Refuse new requests, let queued ones finish for up to ``drain_timeout_s``, then stop.

        Requests still queued after that get ``UnhealthyError``.
        """
        self._closed = True
        if self._task is not None and drain_timeout_s > 0:
            # A batch waiting for company closes now (nothing else will come). Only when
            # draining: waking the worker right before cancelling it would race the cancel.
            self._not_empty.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), drain_timeout_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        unanswered = [*self._gathering, *self._queue]
        self._gathering = []
        self._queue.clear()
        for p in unanswered:
            if not p.future.done():
                p.future.set_exception(UnhealthyError("server is shutting down"))
        self._update_queue_gauge()

    async def _drained(self) -> None:
        while self._queue or self._gathering or not self._idle.is_set():
            await asyncio.sleep(0.005)

    @property
    def is_alive(self) -> bool:
        """True while the worker task runs and the queue accepts requests."""
        return self._task is not None and not self._task.done() and not self._closed

    @property
    def stalled_for(self) -> float | None:
        """Seconds the stalled batch has been computing; None unless the model is stalled."""
        if not self._stalled or self._computing_since is None:
            return None
        return time.monotonic() - self._computing_since

    def __len__(self) -> int:
        return len(self._queue)

    # --- client side ---------------------------------------------------------------------------
    def submit(
        self,
        lengths: Sequence[int],
        payload: Any = None,
        *,
        group: Hashable = None,
        timeout_s: float | None = None,
    ) -> Pending:
        """Enqueue a request without blocking; await its result with ``wait``."""
        if not self.is_alive:
            raise UnhealthyError("the batch worker is not running")
        if len(self._queue) >= self.max_queue:
            if self.metrics is not None:
                self.metrics.dropped.labels(reason="overloaded").inc()
            raise OverloadedError(f"the queue is full ({self.max_queue} requests waiting)")
        if not lengths:
            raise ValueError("a request needs at least one input")
        now = time.monotonic()
        pending = Pending(
            lengths=list(lengths),
            payload=payload,
            future=asyncio.get_running_loop().create_future(),
            group=group,
            deadline=None if timeout_s is None else now + timeout_s,
            enqueued_at=now,
        )
        self._queue.append(pending)
        self._not_empty.set()
        self._update_queue_gauge()
        return pending

    async def wait(self, pending: Pending, disconnected: Awaitable[Any] | None = None) -> Any:
        """The request's result; raise QueueTimeoutError past its deadline while still queued,
        ClientDisconnectedError if ``disconnected`` completes first (the request is dropped
        unless its batch already started). Cancelling the caller cancels a queued request."""
        watcher = asyncio.ensure_future(disconnected) if disconnected is not None else None
        try:
            while True:
                waiters: set[asyncio.Future[Any]] = {pending.future}
                if watcher is not None:
                    waiters.add(watcher)
                timeout = None
                if pending.deadline is not None and not pending.started:
                    timeout = max(0.0, pending.deadline - time.monotonic())
                done, _ = await asyncio.wait(
                    waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if pending.future in done:
                    return pending.future.result()
                if pending.started:
                    # Compute already runs for it: dropping would save nothing. Finish.
                    watcher = None
                    continue
                reason = "client_disconnected" if watcher in done else "deadline"
                self._drop(pending, reason)
                if reason == "deadline":
                    raise QueueTimeoutError("the request waited in the queue past its deadline")
                raise ClientDisconnectedError("the client went away")
        except asyncio.CancelledError:
            if not pending.started and not pending.future.done():
                self._drop(pending, "cancelled")
            raise
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()

    def _drop(self, pending: Pending, reason: str) -> None:
        """Cancel a queued request; the worker skips done futures without counting them again."""
        if not pending.future.done():
            pending.future.cancel()
        if self.metrics is not None:
            self.metrics.dropped.labels(reason=reason).inc()

    # --- worker --------------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            try:
                batch = await self._next_batch()
                if batch:
                    await self._execute(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # the worker never dies: log and take the next batch
                logger.exception("batch worker error")

    def _skip(self, p: Pending, now: float) -> bool:
        """True (and resolve the request) if it must not be computed: cancelled or expired."""
        if p.future.done():  # cancelled by its caller (already counted) or resolved elsewhere
            return True
        if p.deadline is not None and now > p.deadline:
            p.future.set_exception(
                QueueTimeoutError("the request waited in the queue past its deadline")
            )
            if self.metrics is not None:
                self.metrics.dropped.labels(reason="deadline").inc()
            return True
        return False

    async def _pop_first(self) -> Pending:
        while True:
            while not self._queue:
                self._not_empty.clear()
                await self._not_empty.wait()
            p = self._queue.popleft()
            self._update_queue_gauge()
            if not self._skip(p, time.monotonic()):
                return p

    async def _next_batch(self) -> list[Pending]:
        first = await self._pop_first()
        batch = self._gathering = [first]
        # Not cleared on cancellation: stop() answers whatever the cancelled gathering held.
        out = await self._gather(first, batch)
        self._gathering = []
        return out

    async def _gather(self, first: Pending, batch: list[Pending]) -> list[Pending]:
        n, max_len, real = first.n_inputs, first.max_len, sum(first.lengths)
        cost = self._cost_of(first.group)
        wait_until = time.monotonic() + self.max_wait_s
        while n < self.max_batch_size:
            if not self._queue:
                remaining = wait_until - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                if self._arriving is not None and self._arriving() <= 0:
                    # Let the loop read what the sockets already hold (a few turns: readiness,
                    # then the protocol, then the request's task); if nothing starts, no
                    # company can come and waiting would only add latency.
                    for _ in range(3):
                        await asyncio.sleep(0)
                    if not self._queue and self._arriving() <= 0:
                        break
                    continue
                self._not_empty.clear()
                try:
                    await asyncio.wait_for(self._not_empty.wait(), remaining)
                except TimeoutError:
                    break
                continue
            p = self._queue.popleft()
            if self._skip(p, time.monotonic()):
                self._update_queue_gauge()
                continue
            new_n, new_max, new_real = (
                n + p.n_inputs,
                max(max_len, p.max_len),
                real + sum(p.lengths),
            )
            if (
                p.group is not first.group
                or new_n > self.max_batch_size
                or cost.work(new_n, new_max, new_real) > self.max_batch_tokens
            ):
                self._queue.appendleft(p)  # does not fit: first in line for the next batch
                break
            self._update_queue_gauge()
            batch.append(p)
            n, max_len, real = new_n, new_max, new_real
        # Callers may have gone away while we waited for company.
        return [p for p in batch if not p.future.done()]

    async def _execute(self, batch: list[Pending]) -> None:
        start = time.monotonic()
        for p in batch:
            p.started, p.started_at = True, start
            if self.metrics is not None:
                self.metrics.queue_duration.observe(start - p.enqueued_at)
        self._idle.clear()
        self._computing_since = start
        compute = asyncio.ensure_future(self._run_batch(batch))
        try:
            results = await self._watch(compute, batch)
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)}")
        except asyncio.CancelledError:
            compute.cancel()  # the awaiting side only: a running forward pass cannot be stopped
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(UnhealthyError("server is shutting down"))
            raise
        except Exception as exc:
            logger.exception("batch of %d requests failed", len(batch))
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
        else:
            finished = time.monotonic()
            for p, result in zip(batch, results, strict=True):
                p.finished_at = finished
                if not p.future.done():
                    p.future.set_result(result)
        finally:
            self._idle.set()
            self._computing_since = None
            self.batches_run += 1
            if self.metrics is not None:
                self.metrics.inference_duration.observe(time.monotonic() - start)
                self.metrics.batch_size.observe(sum(p.n_inputs for p in batch))
                self.metrics.batch_tokens.observe(batch_work(batch, self._cost_of(batch[0].group)))

    async def _watch(self, compute: asyncio.Future[Sequence[Any]], batch: list[Pending]) -> Any:
        """The batch's results; past ``compute_timeout_s`` answer its requests 504 and report
        the stall, then keep waiting: the model thread is busy until the forward pass returns."""
        if self.compute_timeout_s is None:
            return await compute
        done, _ = await asyncio.wait({compute}, timeout=self.compute_timeout_s)
        if done:
            return compute.result()
        self._stalled = True
        n_inputs = sum(p.n_inputs for p in batch)
        logger.error(
            "model stalled: a batch of %d requests (%d inputs) is still computing after %.1fs "
            "(compute_timeout_s); its requests get 504 and readiness is 503 until it returns",
            len(batch),
            n_inputs,
            self.compute_timeout_s,
        )
        if self.metrics is not None:
            self.metrics.stalled_batches.inc()
        error = ComputeTimeoutError(
            f"the model did not finish this request's batch within {self.compute_timeout_s:g}s "
            "(it is stalled); retry later"
        )
        for p in batch:
            if not p.future.done():
                p.future.set_exception(error)
        try:
            return await compute
        finally:
            self._stalled = False
            if compute.done() and not compute.cancelled():  # returned or raised; not shutdown
                logger.warning(
                    "the stalled batch returned after %.1fs; serving resumes",
                    time.monotonic() - (self._computing_since or time.monotonic()),
                )

    def _update_queue_gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_size.set(len(self._queue))
