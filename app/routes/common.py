"""Shared bits of the routers: the error responses documented in OpenAPI, and the headers that
say which model (version and precision) computed an answer."""

from __future__ import annotations

from typing import Any

from app.engine import Engine
from app.middleware import VERSION_HEADER
from app.schemas import ErrorResponse

# What the model computed in (fp32, bf16 or int8): scores then differ from an fp32 reference by
# that precision's rounding, and a client comparing numbers can tell why without asking /info.
PRECISION_HEADER = "X-Model-Precision"

_DESCRIPTIONS = {
    400: "The serving model cannot do this (error_type Unsupported): e.g. fill-mask without an "
    "MLM head, text classification without a classification head, reranking without a "
    "cross-encoder, more dimensions than its vectors have; /info says what it can do.",
    401: "Missing or wrong bearer token (the API key, where API keys are configured).",
    404: "Not found (the admin API answers 404 when no admin token is configured).",
    409: "Conflicts with the server's mode.",
    413: "Request body too large.",
    422: "Invalid input.",
    429: "Queue full; retry after Retry-After seconds.",
    503: "No model ready, or shutting down.",
    504: "Waited in the queue past the deadline, or the model stalled on the request's batch.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries in the one error shape for these status codes."""
    return {c: {"model": ErrorResponse, "description": _DESCRIPTIONS[c]} for c in codes}


INFERENCE_ERRORS = error_responses(401, 413, 422, 429, 503, 504)


def model_headers(engine: Engine) -> dict[str, str]:
    """The headers of an answer computed by ``engine``: its version and its precision."""
    return {VERSION_HEADER: engine.version, PRECISION_HEADER: engine.precision}
