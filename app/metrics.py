"""Prometheus metrics of one app instance, on its own CollectorRegistry.

A per-app registry (not prometheus_client's global one) lets tests build many apps in one process
and keeps two apps from double-registering. Names follow Prometheus conventions: counters end in
``_total``, durations are histograms in ``_seconds``. The batcher updates the queue and batch
metrics itself; the HTTP middleware counts requests; the registry counts reloads.

Deliberately not here: per-input or per-client labels (unbounded cardinality); the request path
label is the route template, and unmatched paths are all ``other``.
"""

from __future__ import annotations

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
            "Padded token cost per batch (longest input x inputs) that the token budget bounds.",
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
            "The model being served (value 1): version, weights, architecture (kind) and how "
            "many labels its classifier has (0: none).",
            # The label names themselves are in /info: a classifier may have thousands, too
            # many for one label value.
            ["version", "sha256", "kind", "num_labels"],
            registry=r,
        )
        for reason in ("cancelled", "client_disconnected", "deadline", "overloaded"):
            self.dropped.labels(reason=reason)
        for result in ("success", "failure"):
            self.reloads.labels(result=result)

    def set_model(self, version: str, sha256: str, kind: str, num_labels: int = 0) -> None:
        """Make ``bert_model_info`` show exactly one model: the one now serving."""
        self.model_info.clear()
        self.model_info.labels(
            version=version, sha256=sha256, kind=kind, num_labels=str(num_labels)
        ).set(1)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
