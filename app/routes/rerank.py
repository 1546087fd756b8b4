"""Reranking routes for cross-encoders: ``POST /rerank`` (text-embeddings-inference's shape),
``POST /v1/rerank`` (Cohere's v1 and Jina's) and ``POST /v2/rerank`` (Cohere's v2).

Both score every (query, document) pair with the serving model, a one-label classifier (an HF
``...ForSequenceClassification`` with ``num_labels: 1`` or a sentence-transformers CrossEncoder
directory; 400 Unsupported otherwise), as ``CrossEncoder.predict`` does, and answer the documents
best first. A pair over the token limit is cut on the document's side (``truncate``, the default),
or refused. Deliberately not here: chunking long documents into several pairs
(``max_chunks_per_doc`` is accepted and ignored), rerank-by-embedding for bi-encoders.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from app.routes.common import INFERENCE_ERRORS, error_responses, model_headers
from app.routes.deps import get_state, wait_for_disconnect
from app.schemas import (
    CohereRerankRequest,
    CohereRerankResponse,
    CohereV2RerankRequest,
    DocumentText,
    RerankRequest,
    RerankResult,
)
from app.service import ServeState

router = APIRouter(tags=["rerank"])


@router.post(
    "/rerank",
    response_model=list[RerankResult],
    responses={**INFERENCE_ERRORS, **error_responses(400)},
)
async def rerank(
    body: RerankRequest, request: Request, state: ServeState = Depends(get_state)
) -> JSONResponse:
    """Score each text against the query with the cross-encoder; results best first, each with
    its index in ``texts`` (and the text with ``return_text``)."""
    engine, ranked = await state.rerank(
        body.query,
        body.texts,
        raw_scores=body.raw_scores,
        truncate=body.truncate,
        disconnected=lambda: wait_for_disconnect(request),
    )
    out = []
    for index, score in ranked:
        result = {"index": index, "score": score}
        if body.return_text:
            result["text"] = body.texts[index]
        out.append(result)
    return JSONResponse(out, headers=model_headers(engine))


@router.post(
    "/v1/rerank",
    response_model=CohereRerankResponse,
    responses={**INFERENCE_ERRORS, **error_responses(400)},
)
async def cohere_rerank(
    body: CohereRerankRequest, request: Request, state: ServeState = Depends(get_state)
) -> JSONResponse:
    """Cohere's (v1) / Jina's rerank: ``results`` best first with ``relevance_score`` (the
    cross-encoder's activated score), the ``top_n`` best, documents echoed on request."""
    return await _cohere(
        state, request, body.query, body.documents, body.top_n, None, body.return_documents, "1"
    )


@router.post(
    "/v2/rerank",
    response_model=CohereRerankResponse,
    responses={**INFERENCE_ERRORS, **error_responses(400)},
)
async def cohere_v2_rerank(
    body: CohereV2RerankRequest, request: Request, state: ServeState = Depends(get_state)
) -> JSONResponse:
    """Cohere's v2 rerank: as /v1/rerank, documents never echoed, each cut to
    ``max_tokens_per_doc`` tokens first."""
    return await _cohere(
        state, request, body.query, body.documents, body.top_n, body.max_tokens_per_doc, False, "2"
    )


async def _cohere(
    state: ServeState,
    request: Request,
    query: str,
    documents: list[str | DocumentText],
    top_n: int | None,
    max_tokens_per_doc: int | None,
    return_documents: bool,
    api_version: str,
) -> JSONResponse:
    texts = [d if isinstance(d, str) else d.text for d in documents]
    engine, ranked = await state.rerank(
        query,
        texts,
        max_document_tokens=max_tokens_per_doc,
        field="documents",
        disconnected=lambda: wait_for_disconnect(request),
    )
    results = []
    for index, score in ranked[:top_n]:
        result: dict = {"index": index, "relevance_score": score}
        if return_documents:
            result["document"] = {"text": texts[index]}
        results.append(result)
    return JSONResponse(
        {
            "id": str(uuid.uuid4()),
            "model": engine.version,
            "results": results,
            "meta": {"api_version": {"version": api_version}, "billed_units": {"search_units": 1}},
            "usage": {"search_units": 1},
        },
        headers=model_headers(engine),
    )
