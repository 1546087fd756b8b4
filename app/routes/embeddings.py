"""Embedding routes: /embed, /embed_all, /embed_sparse and /similarity (text-embeddings-inference's
shapes) and /v1/embeddings (OpenAI's).

Every one of them takes the model's prompts (``prompt_name``) and the checkpoint's pooling and
normalization by default; ``/embed`` and ``/v1/embeddings`` cut vectors to ``dimensions``
(Matryoshka) before normalizing. Handlers validate, delegate to ``ServeState`` and answer with the
computing model's version and precision headers.
"""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from app.routes.common import INFERENCE_ERRORS, error_responses, model_headers
from app.routes.deps import get_state, wait_for_disconnect
from app.schemas import (
    EmbedAllRequest,
    EmbedRequest,
    EmbedSparseRequest,
    OpenAIEmbeddingsRequest,
    OpenAIEmbeddingsResponse,
    SimilarityRequest,
    SparseValue,
    as_list,
)
from app.service import ServeState

router = APIRouter(tags=["embeddings"])


@router.post(
    "/embed",
    response_model=list[list[float]],
    responses={**INFERENCE_ERRORS, **error_responses(400)},
)
async def embed(
    body: EmbedRequest, request: Request, state: ServeState = Depends(get_state)
) -> JSONResponse:
    """Sentence embeddings, text-embeddings-inference style; pooling and normalisation default to
    the checkpoint's (its config.json, or a sentence-transformers directory's modules)."""
    texts, _ = as_list(body.inputs)
    engine, vectors, _ = await state.embed(
        texts,
        pooling=body.pooling,
        normalize=body.normalize,
        truncate=body.truncate,
        direction=body.truncation_direction.lower(),
        dimensions=body.dimensions,
        prompt_name=body.prompt_name,
        disconnected=lambda: wait_for_disconnect(request),
    )
    return JSONResponse(vectors, headers=model_headers(engine))


@router.post(
    "/v1/embeddings",
    response_model=OpenAIEmbeddingsResponse,
    responses={**INFERENCE_ERRORS, **error_responses(400)},
)
async def openai_embeddings(
    body: OpenAIEmbeddingsRequest, request: Request, state: ServeState = Depends(get_state)
) -> JSONResponse:
    """Sentence embeddings in OpenAI's format, with the checkpoint's pooling and normalisation
    (unit length, unless a sentence-transformers directory has no Normalize module); with
    ``dimensions``, cut to that many values and normalized again."""
    texts, _ = as_list(body.input)
    engine, vectors, n_tokens = await state.embed(
        texts,
        pooling=None,  # the checkpoint's
        normalize=None,  # the checkpoint's
        truncate=False,
        dimensions=body.dimensions,
        prompt_name=body.prompt_name,
        disconnected=lambda: wait_for_disconnect(request),
    )
    data = []
    for i, vec in enumerate(vectors):
        if body.encoding_format == "base64":
            embedding: list[float] | str = base64.b64encode(
                np.asarray(vec, dtype="<f4").tobytes()
            ).decode("ascii")
        else:
            embedding = vec
        data.append({"object": "embedding", "embedding": embedding, "index": i})
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": engine.version,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        },
        headers=model_headers(engine),
    )


@router.post("/embed_all", response_model=list[list[list[float]]], responses=INFERENCE_ERRORS)
async def embed_all(
    body: EmbedAllRequest, request: Request, state: ServeState = Depends(get_state)
) -> JSONResponse:
    """Every token's final vector, [CLS] and [SEP] included, no pooling: per input a list of
    vectors (text-embeddings-inference's /embed_all)."""
    texts, _ = as_list(body.inputs)
    engine, vectors = await state.token_embeddings(
        texts,
        truncate=body.truncate,
        direction=body.truncation_direction.lower(),
        prompt_name=body.prompt_name,
        disconnected=lambda: wait_for_disconnect(request),
    )
    return JSONResponse(vectors, headers=model_headers(engine))


@router.post(
    "/embed_sparse",
    response_model=list[list[SparseValue]],
    responses={**INFERENCE_ERRORS, **error_responses(400)},
)
async def embed_sparse(
    body: EmbedSparseRequest, request: Request, state: ServeState = Depends(get_state)
) -> JSONResponse:
    """SPLADE sparse vectors from the masked-language-model head: per input its non-zero
    vocabulary weights {index, value}, by index (400 Unsupported without an MLM head)."""
    texts, _ = as_list(body.inputs)
    engine, vectors = await state.sparse(
        texts,
        truncate=body.truncate,
        direction=body.truncation_direction.lower(),
        prompt_name=body.prompt_name,
        disconnected=lambda: wait_for_disconnect(request),
    )
    out = [[{"index": i, "value": v} for i, v in vec] for vec in vectors]
    return JSONResponse(out, headers=model_headers(engine))


@router.post("/similarity", response_model=list[float], responses=INFERENCE_ERRORS)
async def similarity(
    body: SimilarityRequest, request: Request, state: ServeState = Depends(get_state)
) -> JSONResponse:
    """Cosine similarity of the source sentence with each sentence, from the model's (unit)
    embeddings; the same computation as POST / with sentence-similarity inputs."""
    engine, scores = await state.similarity(
        body.inputs.source_sentence,
        body.inputs.sentences,
        truncate=body.truncate,
        direction=body.truncation_direction.lower(),
        prompt_name=body.prompt_name,
        disconnected=lambda: wait_for_disconnect(request),
    )
    return JSONResponse(scores, headers=model_headers(engine))
