"""Operational routes: /health (readiness), /live (liveness), /info, /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from app.errors import UnhealthyError
from app.routes.common import error_responses
from app.routes.deps import get_state, require_api_key
from app.service import ServeState

router = APIRouter(tags=["operations"])


@router.get("/health", responses=error_responses(503))
async def health(state: ServeState = Depends(get_state)) -> dict[str, Any]:
    """200 when a model is loaded and the batch worker is alive, else 503."""
    ok, reason = state.ready()
    if not ok:
        raise UnhealthyError(reason)
    return {"status": "ok", "model": state.registry.version}


@router.get("/live")
async def live() -> dict[str, str]:
    """200 while the process serves HTTP at all (liveness, not readiness)."""
    return {"status": "alive"}


@router.get("/info", dependencies=[Depends(require_api_key)], responses=error_responses(401))
async def info(state: ServeState = Depends(get_state)) -> dict[str, Any]:
    """The serving model (version, sha256, config), limits and batching settings."""
    cfg = state.config
    engine = state.registry.current
    ok, reason = state.ready()
    return {
        "model": engine.info() if engine is not None else None,
        "ready": ok,
        "status": reason,
        "limits": {
            "max_client_batch": cfg.max_client_batch,
            "max_input_tokens": engine.max_input_tokens if engine else cfg.max_input_tokens,
            "max_body_bytes": cfg.max_body_bytes,
            "max_top_k": cfg.max_top_k,
            "max_targets": cfg.max_targets,
            "request_timeout_s": cfg.request_timeout_s,
            "compute_timeout_s": cfg.compute_timeout_s,
        },
        "batching": cfg.batching_settings(),
        "admin_api": state.admin_token is not None,
        "api_keys": state.api_keys is not None,  # whether inference routes need a key
        "watch": cfg.watch,
    }


@router.get("/metrics", response_class=Response)
async def metrics(state: ServeState = Depends(get_state)) -> Response:
    """Prometheus metrics (text exposition format)."""
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)
