"""The routes' FastAPI dependencies, in one place: the app's ``ServeState`` and ``ServeConfig``,
and the awaitable that completes when the client goes away.

Deliberately not here: the operations themselves (``app.service``), error mapping
(``app.errors``).
"""

from __future__ import annotations

from fastapi import Request

from app.config import ServeConfig
from app.service import ServeState


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
