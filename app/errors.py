"""Domain errors of the model server and the handlers that turn them into one JSON error shape.

Every error response is ``{"error": "<message>", "error_type": "<Kind>"}`` (the shape of
text-embeddings-inference), including FastAPI's own request validation errors and Starlette's
404/405, so clients parse exactly one shape. Only this module knows status codes; the batcher,
engine and registry raise the domain errors below.

Deliberately not done: echoing request text in messages or logs (inputs may be private), and
exposing the message of an unexpected exception (a 500 says only "internal error").
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class ServeError(Exception):
    """Base of the server's domain errors: a message for the client, a status and a kind."""

    status_code = 500
    error_type = "Internal"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InputValidationError(ServeError, ValueError):
    """The request is well-formed JSON but asks for something invalid (422)."""

    status_code = 422
    error_type = "Validation"


class UnsupportedError(ServeError):
    """The serving model cannot do what was asked (fill-mask without an MLM head, text
    classification without a classifier): a client error about this model, not a server fault
    (400)."""

    status_code = 400
    error_type = "Unsupported"


class PayloadTooLargeError(ServeError):
    """The request body is larger than ``max_body_bytes`` (413)."""

    status_code = 413
    error_type = "PayloadTooLarge"


class OverloadedError(ServeError):
    """The queue is full (429 with Retry-After): the client should back off and retry."""

    status_code = 429
    error_type = "Overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class UnhealthyError(ServeError):
    """No model is ready, or the server is shutting down (503)."""

    status_code = 503
    error_type = "Unhealthy"


class QueueTimeoutError(ServeError):
    """The request waited in the queue past its deadline and was never computed (504)."""

    status_code = 504
    error_type = "Timeout"


class ComputeTimeoutError(ServeError):
    """The request's batch did not finish computing within ``compute_timeout_s``: the model
    stalled. The client gets 504; the forward pass itself cannot be interrupted (504)."""

    status_code = 504
    error_type = "Timeout"


class NotFoundError(ServeError):
    """A named thing does not exist, or the admin API is off (404)."""

    status_code = 404
    error_type = "NotFound"


class UnauthorizedError(ServeError):
    """Missing or wrong admin token (401)."""

    status_code = 401
    error_type = "Unauthorized"

    def __init__(self, message: str = "missing or invalid bearer token") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ConflictError(ServeError):
    """The request conflicts with the server's mode (e.g. a manual reload in watch mode) (409)."""

    status_code = 409
    error_type = "Conflict"


class CheckpointLoadError(ServeError, ValueError):
    """A checkpoint failed to load or validate; whatever was serving keeps serving (422)."""

    status_code = 422
    error_type = "InvalidCheckpoint"


class ClientDisconnectedError(ServeError):
    """The client went away before its request was computed; nobody reads the response."""

    status_code = 499  # nginx's "client closed request"; only ever seen in metrics
    error_type = "ClientClosed"


_HTTP_ERROR_TYPES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "Validation",
    429: "Overloaded",
    503: "Unhealthy",
}


def error_response(
    status_code: int, message: str, error_type: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one error shape."""
    return JSONResponse(
        {"error": message, "error_type": error_type}, status_code=status_code, headers=headers
    )


def _format_validation_errors(exc: RequestValidationError) -> str:
    """'body.inputs: Field required; body.top_k: ...' without echoing the offending input."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg")))
    more = len(exc.errors()) - 5
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts) or "invalid request"


async def _serve_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServeError)
    return error_response(exc.status_code, exc.message, exc.error_type, exc.headers)


async def _request_validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, _format_validation_errors(exc), "Validation")


async def _http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        # JSON is UTF-8 (RFC 8259). FastAPI answers a body that is not with a bare 400 "error
        # parsing the body", while every other malformed body is a 422: one mistake, one status.
        return error_response(422, "the request body is not valid UTF-8 JSON", "Validation")
    error_type = _HTTP_ERROR_TYPES.get(exc.status_code, "HTTP")
    return error_response(exc.status_code, str(exc.detail), error_type, exc.headers)


async def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal error", "Internal")


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors, validation errors and Starlette HTTP errors to the error shape."""
    app.add_exception_handler(ServeError, _serve_error_handler)
    app.add_exception_handler(RequestValidationError, _request_validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(Exception, _unexpected_handler)
