"""Shared bits of the routers: the error responses documented in OpenAPI."""

from __future__ import annotations

from typing import Any

from app.schemas import ErrorResponse

_DESCRIPTIONS = {
    400: "The serving model cannot do this (error_type Unsupported): e.g. fill-mask without an "
    "MLM head, text classification without a classification head; /info says what it can do.",
    401: "Missing or wrong bearer token.",
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


INFERENCE_ERRORS = error_responses(413, 422, 429, 503, 504)
