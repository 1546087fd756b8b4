"""The routes' FastAPI dependencies, in one place: the app's ``ServeState`` and ``ServeConfig``,
the awaitable that completes when the client goes away, and the two bearer checks.

* ``require_api_key``: when API keys are configured, every inference route needs
  ``Authorization: Bearer <key>`` (401 otherwise); without keys it lets everything through.
* ``require_admin``: 404 when the admin API is off; 401 unless the bearer token is the admin
  token. The admin token and the API keys are separate credentials.

Both compare in constant time (``app.auth.matches``) and run before the body is parsed, so an
unauthenticated client learns nothing from validation errors. Refusals are logged (method,
path, client, why) for an audit trail, but never the credentials: neither the configured
secret nor what the client sent (a near-miss would give most of it away).

Deliberately not here: the operations themselves (``app.service``), error mapping
(``app.errors``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import Depends, Request

from app.auth import digest, matches
from app.config import ServeConfig
from app.errors import NotFoundError, UnauthorizedError
from app.service import ServeState

logger = logging.getLogger(__name__)


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client has gone away (after the body was read, ``receive`` yields
    ``http.disconnect`` only when the connection closes or the response is complete)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def get_state(request: Request) -> ServeState:
    """FastAPI dependency: the app's ServeState (override it in tests if needed).

    ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a thread
    hop per request for a dictionary lookup.
    """
    return request.app.state.serve


async def get_config(request: Request) -> ServeConfig:
    """FastAPI dependency: the app's ServeConfig."""
    return request.app.state.serve.config


def _check_bearer(request: Request, accepted: Callable[[str], bool]) -> str:
    """Why the request's bearer credential is refused ("" if ``accepted``). The comparison runs
    whatever the header looks like, so a refusal's timing says nothing about why."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    ok = accepted(credentials.strip())
    if not scheme:
        return "no Authorization header"
    if scheme.lower() != "bearer":
        return "not a Bearer credential"
    return "" if ok else "wrong credential"


def _refuse(request: Request, what: str, why: str) -> UnauthorizedError:
    client = request.client.host if request.client else "unknown"
    logger.warning(
        "%s: refused %s %s from %s: %s", what, request.method, request.url.path, client, why
    )
    return UnauthorizedError()


async def require_api_key(request: Request, state: ServeState = Depends(get_state)) -> None:
    """401 unless the request carries an accepted API key (nothing to do without keys)."""
    keys = state.api_keys
    if keys is None:
        return
    why = _check_bearer(request, keys.check)
    if why:
        raise _refuse(request, "api", "wrong API key" if why == "wrong credential" else why)


async def require_admin(request: Request, state: ServeState = Depends(get_state)) -> None:
    """404 when the admin API is off; 401 unless the bearer token matches."""
    expected = state.admin_token
    if expected is None:
        raise NotFoundError("Not Found")
    why = _check_bearer(request, lambda given: matches(given, [digest(expected)]))
    if why:
        raise _refuse(request, "admin", "wrong token" if why == "wrong credential" else why)
