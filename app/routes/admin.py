"""Admin routes: ``POST /admin/reload`` (hot-swap a checkpoint by name).

Off unless an admin token is configured: then ``create_app`` does not mount these routes, so
every ``/admin`` path answers 404 to every method and the OpenAPI schema does not list them. With a token, a
missing or wrong ``Authorization: Bearer`` header is 401; the comparison is constant-time
(``hmac.compare_digest`` on SHA-256 digests, so not even the length leaks). Authentication runs
before the body is parsed, so an unauthenticated client learns nothing from validation errors.
Refusals are logged (method, path, client, why) for an audit trail, but never the credentials:
neither the configured token nor what the client sent (a near-miss would give most of it away).
In watch mode the ``current`` pointer decides which checkpoint serves, so a manual reload is
refused (409) rather than silently undone at the next poll.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from app.errors import ConflictError, InputValidationError
from app.routes.common import error_responses, model_headers
from app.routes.deps import get_state, require_admin
from app.schemas import ReloadRequest, ReloadResponse
from app.service import ServeState

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post(
    "/reload",
    response_model=ReloadResponse,
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 404, 409, 413, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ReloadRequest.model_json_schema()}},
        }
    },
)
async def reload(request: Request, state: ServeState = Depends(get_state)) -> JSONResponse:
    """Load a checkpoint from the models root beside the serving one, then swap to it."""
    try:
        body = ReloadRequest.model_validate_json(await request.body())
    except ValidationError as e:
        # A refused request is a failed reload too: a `../` name must show on the same counter
        # that an operator alerts on, not only as one more 422 among the inference requests.
        state.metrics.reloads.labels(result="failure").inc()
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "body"
        raise InputValidationError(f"{where}: {first.get('msg', 'invalid')}") from None
    if state.config.watch:
        raise ConflictError(
            "the server follows the `current` pointer (watch mode); write the checkpoint name "
            "there instead"
        )
    engine, previous = await state.registry.reload(body.checkpoint)
    return JSONResponse(
        {
            "model": engine.version,
            "previous": previous.version if previous else None,
            "sha256": engine.sha256,
            "load_seconds": round(engine.load_seconds, 3),
            "precision": engine.precision,
        },
        headers=model_headers(engine),
    )
