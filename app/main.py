"""``create_app(config) -> FastAPI``: the app factory.

The lifespan loads the model and starts the batch worker (``ServeState.start``) and stops them in
``finally``. Nothing heavy happens at import time or in ``create_app`` itself (it only reads the
admin token file, so a bad one fails before the server binds a port). The browser page at ``/``
(``app.routes.ui``) is mounted unless ``ui`` is off.

Middleware, outermost first: CORS (only with ``cors_allow_origins``), the in-flight count (``InFlight``, which the graceful shutdown in
``app.cli`` waits on), observability (request metrics, ``X-Model-Version`` on every response),
then the body-size limit.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.config import ServeConfig
from app.errors import install_error_handlers
from app.metrics import ServeMetrics
from app.middleware import (
    VERSION_HEADER,
    BodyLimitMiddleware,
    InFlight,
    InFlightMiddleware,
    ObservabilityMiddleware,
)
from app.registry import ModelRegistry
from app.routes import admin, embeddings, inference, ops, pipeline, rerank, ui
from app.routes.common import PRECISION_HEADER
from app.routes.deps import require_api_key
from app.service import ServeState

logger = logging.getLogger(__name__)

API_DESCRIPTION = """\
Fill-mask, sentence embeddings and text classification from a BERT checkpoint (ours, any
HuggingFace BERT directory, a sequence classifier or a sentence-transformers one), with dynamic
batching and hot-swap. `GET /info` says what the serving model can do; `POST /` takes what
`huggingface_hub.InferenceClient` sends.

Every error is `{"error": "<message>", "error_type": "<Kind>"}`; every response carries
`X-Model-Version` (and answers `X-Model-Precision`). With API keys configured, every route but
`/health`, `/live`, `/metrics` and the docs needs `Authorization: Bearer <key>`. The admin API
(`/admin/*`) answers 404 unless an admin token (a separate credential) is configured.
"""


def create_app(config: ServeConfig, *, registry: ModelRegistry | None = None) -> FastAPI:
    """Build the app; the model is loaded when the lifespan starts (``with TestClient(app)``)."""
    metrics = registry.metrics if registry is not None else ServeMetrics()
    state = ServeState(config, metrics, registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await state.start()
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="bertserve",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.serve = state
    app.state.in_flight = in_flight = InFlight(metrics)
    install_error_handlers(app)
    # With API keys configured every inference route needs one; without, require_api_key passes.
    protected = [Depends(require_api_key)]
    app.include_router(inference.router, dependencies=protected)
    app.include_router(embeddings.router, dependencies=protected)
    app.include_router(rerank.router, dependencies=protected)
    app.include_router(pipeline.router, dependencies=protected)
    app.include_router(ops.router)
    if state.admin_token is not None:
        # Without a token the routes are not mounted at all: every method on /admin/* is 404
        # and the OpenAPI schema does not list them. require_admin still refuses (404) on its
        # own, as a second guard.
        app.include_router(admin.router)
    if config.ui:
        # The browser page (app.routes.ui): static files outside the OpenAPI schema, so turning
        # it off leaves the API and its schema exactly as they are.
        app.include_router(ui.router)
    # add_middleware puts the last one added outermost.
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(
        ObservabilityMiddleware, metrics=metrics, version=lambda: state.registry.version
    )
    app.add_middleware(InFlightMiddleware, counter=in_flight)
    if config.cors_allow_origins:
        # Outermost: a browser's preflight (OPTIONS) is answered before authentication, limits
        # or routing, and every answer, errors included, carries the CORS headers.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_allow_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=[VERSION_HEADER, PRECISION_HEADER, "Retry-After"],
            max_age=600,
        )
    return app
