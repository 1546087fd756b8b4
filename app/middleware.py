"""Pure ASGI middleware: the in-flight count, the request-body limit, and per-request metrics +
X-Model-Version.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, which would wrap ``receive`` and break the
handlers' client-disconnect detection.

* ``BodyLimitMiddleware`` answers 413 when Content-Length exceeds ``max_bytes``, and otherwise
  reads the body itself, counting streamed bytes (chunked bodies have no Content-Length) and
  answering 413 as soon as the count would pass the limit; it never holds more than the limit.
  The body is then replayed to the app in one message; later ``receive`` calls pass through,
  so handlers still see ``http.disconnect``.
* ``ObservabilityMiddleware`` counts requests by route template and status, times them (and
  starts the request's stage clock, ``app.metrics.RequestTimer``, whose last stage, respond,
  ends when the response starts), and adds
  ``X-Model-Version`` (the serving version) to every response that does not carry one already
  (inference responses carry the version of the model that computed them).
* ``InFlightMiddleware`` counts every request but the probes (``PROBE_PATHS``) in an
  ``InFlight`` counter, which the graceful shutdown in ``app.cli`` waits on.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response
from app.metrics import ServeMetrics, start_timer

VERSION_HEADER = "X-Model-Version"
# Requests the shutdown drain does not wait for: they answer at once, and load balancers keep
# sending them while the server drains.
PROBE_PATHS = frozenset({"/health", "/live", "/metrics"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        too_large = error_response(
            413,
            f"the request body exceeds the limit of {self.max_bytes} bytes",
            "PayloadTooLarge",
            headers={"Connection": "close"},
        )
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.isdigit():
                await error_response(400, "invalid Content-Length", "BadRequest")(
                    scope, receive, send
                )
                return
            if int(length) > self.max_bytes:
                await too_large(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left mid-body: nothing to answer
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await too_large(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class ObservabilityMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: ServeMetrics, version: Callable[[], str | None]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.version = version

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before answering, ServerErrorMiddleware sends a 500
        timer = start_timer(self.metrics)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                if timer.stage == "compute":  # an inference request: its last stage ends here
                    timer.mark("respond")
                status = message["status"]
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-model-version" for k, _ in headers):
                    version = self.version()
                    if version is not None:
                        headers.append((b"x-model-version", version.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            timer.arrived()
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            self.metrics.request_duration.labels(endpoint=endpoint).observe(
                time.perf_counter() - start
            )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


class InFlight:
    """How many requests (probes excluded) the app is handling now; mirrored in a gauge."""

    def __init__(self, metrics: ServeMetrics) -> None:
        self.count = 0
        self._gauge = metrics.in_flight

    def enter(self) -> None:
        self.count += 1
        self._gauge.inc()

    def leave(self) -> None:
        self.count -= 1
        self._gauge.dec()


class InFlightMiddleware:
    """Counts every HTTP request but the probes from its first byte to its last (pure ASGI, so
    that handlers still see client disconnects)."""

    def __init__(self, app: ASGIApp, counter: InFlight) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        self.counter.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.counter.leave()
