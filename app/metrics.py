"""Prometheus metrics of one app instance, on its own CollectorRegistry.

A per-app registry (not prometheus_client's global one) lets tests build many apps in one process
and keeps two apps from double-registering. Names follow Prometheus conventions: counters end in
``_total``, durations are histograms in ``_seconds``. The batcher updates the queue and batch
metrics itself; the HTTP middleware counts requests; the registry counts reloads.

Tail latency: ``RequestTimer`` (started per request by the middleware, reached through a context
variable) splits each inference request into ``STAGES`` whose durations add up to the
request's, and ``watch_event_loop`` samples how late the loop runs, so a slow request's wait
can be placed: queue, tokenizer, model, or a stalled loop.

Deliberately not here: per-input or per-client labels (unbounded cardinality); the request path
label is the route template, and unmatched paths are all ``other``.
"""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Request latencies on a CPU server span ~1 ms (health) to seconds (a full batch under load).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)
# Finer at the low end: a stage or an event-loop stall of a few ms is what tail latency is made of.
_STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
# The stages of an inference request, in order; their durations add up to the request's.
STAGES = ("parse", "tokenize", "queue", "compute", "respond")


class ServeMetrics:
    """The server's metrics; every attribute is a prometheus_client metric on ``self.registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "bert_requests",
            "HTTP requests by endpoint and status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "bert_request_duration_seconds",
            "HTTP request duration, from first byte to response start.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "bert_queue_duration_seconds",
            "Time a request waited in the batch queue before its batch started.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "bert_inference_duration_seconds",
            "Time to compute one batch in the model thread.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "bert_request_stage_seconds",
            "Where an inference request's time goes, by stage: parse (first byte to tokenizer: "
            "body, routing, validation), tokenize (tokenizer thread, its wait included), queue "
            "(batch queue), compute (its batch's forward pass), respond (result to response "
            "start: event-loop wake-up, post-processing, JSON).",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.event_loop_lag = Histogram(
            "bert_event_loop_lag_seconds",
            "How late the event loop woke a timer (sampled every 50 ms): time no request could "
            "be read, queued or answered.",
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.queue_size = Gauge(
            "bert_queue_size", "Requests waiting in the batch queue.", registry=r
        )
        self.in_flight = Gauge(
            "bert_requests_in_flight",
            "HTTP requests being handled, probes (/health, /live, /metrics) excluded.",
            registry=r,
        )
        self.batch_size = Histogram(
            "bert_batch_size", "Inputs per computed batch.", buckets=_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "bert_batch_tokens",
            "Work per batch in token-equivalents (the engine's cost model), which "
            "max_batch_tokens bounds.",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.dropped = Counter(
            "bert_dropped_requests",
            "Requests dropped before compute, by reason.",
            ["reason"],
            registry=r,
        )
        self.stalled_batches = Counter(
            "bert_stalled_batches",
            "Batches still computing after compute_timeout_s (their requests got 504).",
            registry=r,
        )
        self.reloads = Counter(
            "bert_model_reloads", "Model reload attempts by result.", ["result"], registry=r
        )
        self.model_info = Gauge(
            "bert_model_info",
            "The model being served (value 1): version, weights, architecture (kind), how "
            "many labels its classifier has (0: none) and the precision it computes in.",
            # The label names themselves are in /info: a classifier may have thousands, too
            # many for one label value.
            ["version", "sha256", "kind", "num_labels", "precision"],
            registry=r,
        )
        # The labelled children, looked up once: labels() takes a lock and hashes its arguments,
        # and every inference request observes five stages.
        self.stages = {stage: self.stage_duration.labels(stage=stage) for stage in STAGES}
        self.arrivals = Arrivals()  # not exported: the batcher's cue that no company is coming
        for reason in ("cancelled", "client_disconnected", "deadline", "overloaded"):
            self.dropped.labels(reason=reason)
        for result in ("success", "failure"):
            self.reloads.labels(result=result)

    def set_model(
        self, version: str, sha256: str, kind: str, num_labels: int = 0, precision: str = "fp32"
    ) -> None:
        """Make ``bert_model_info`` show exactly one model: the one now serving."""
        self.model_info.clear()
        self.model_info.labels(
            version=version,
            sha256=sha256,
            kind=kind,
            num_labels=str(num_labels),
            precision=precision,
        ).set(1)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Arrivals:
    """Requests that have started (their headers are in) but not reached the batch queue yet:
    the company a batch being gathered can still expect. Only touched on the event loop."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class RequestTimer:
    """One request's stage clock: ``mark(stage)`` observes the time since the previous mark.

    The observability middleware starts one per request (``current_timer``); the service marks
    the stages it runs, so the stages of a request add up to its duration. The timer also counts
    its request in ``Arrivals`` until ``arrived()`` (it is queued, or it has ended).
    """

    __slots__ = ("_arrivals", "_stages", "last", "stage")

    def __init__(self, stages: dict[str, Histogram], start: float, arrivals: Arrivals) -> None:
        self._stages = stages
        self.last = start  # time.monotonic() of the previous mark
        self.stage: str | None = None  # the last stage marked
        self._arrivals: Arrivals | None = arrivals
        arrivals.count += 1

    def arrived(self) -> None:
        """The request is in the batch queue, or done without it: no longer on its way."""
        if self._arrivals is not None:
            self._arrivals.count -= 1
            self._arrivals = None

    def mark(self, stage: str, at: float | None = None) -> None:
        at = time.monotonic() if at is None else at
        self._stages[stage].observe(max(0.0, at - self.last))
        self.last, self.stage = at, stage


_current_timer: ContextVar[RequestTimer | None] = ContextVar("bert_request_timer", default=None)


def start_timer(metrics: ServeMetrics) -> RequestTimer:
    """Start the stage clock of the request handled in this context."""
    timer = RequestTimer(metrics.stages, time.monotonic(), metrics.arrivals)
    _current_timer.set(timer)
    return timer


def current_timer() -> RequestTimer | None:
    """The stage clock of the request handled in this context (None outside a request)."""
    return _current_timer.get()


async def watch_event_loop(metrics: ServeMetrics, period_s: float = 0.05) -> None:
    """Observe how late the loop wakes a ``period_s`` sleep, forever (run it as a task)."""
    while True:
        t = time.monotonic()
        await asyncio.sleep(period_s)
        metrics.event_loop_lag.observe(max(0.0, time.monotonic() - t - period_s))
