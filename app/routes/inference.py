"""Inference routes: /fill-mask, /embed and /predict (TEI), /v1/embeddings (OpenAI), /tokenize.

Each handler validates the body (Pydantic), delegates to ``ServeState`` and answers with the
version of the model that computed the result in ``X-Model-Version``.
"""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from app.errors import InputValidationError
from app.routes.common import INFERENCE_ERRORS, error_responses, model_headers
from app.routes.deps import get_state, wait_for_disconnect
from app.schemas import (
    EmbedRequest,
    FillMaskRequest,
    FillMaskResponse,
    OpenAIEmbeddingsRequest,
    OpenAIEmbeddingsResponse,
    PredictRequest,
    PredictResponse,
    TokenInfo,
    TokenizeRequest,
    as_list,
    ranked_predictions,
)
from app.service import ServeState

router = APIRouter(tags=["inference"])


@router.post(
    "/fill-mask",
    response_model=FillMaskResponse,
    responses={**INFERENCE_ERRORS, **error_responses(400)},
)
async def fill_mask(
    body: FillMaskRequest, request: Request, state: ServeState = Depends(get_state)
) -> JSONResponse:
    """Predict the top_k tokens for every [MASK] of every input (400 Unsupported when the model
    has no masked-language-model head)."""
    texts, _ = as_list(body.inputs)
    targets = [body.targets] if isinstance(body.targets, str) else body.targets
    engine, predictions = await state.fill_mask(
        texts,
        top_k=body.top_k,
        targets=targets,
        truncate=body.truncate,
        disconnected=lambda: wait_for_disconnect(request),
    )
    return JSONResponse(
        {"model": engine.version, "predictions": predictions},
        headers=model_headers(engine),
    )


@router.post("/embed", response_model=list[list[float]], responses=INFERENCE_ERRORS)
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
        disconnected=lambda: wait_for_disconnect(request),
    )
    return JSONResponse(vectors, headers=model_headers(engine))


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses={**INFERENCE_ERRORS, **error_responses(400)},
)
async def predict(
    body: PredictRequest,
    request: Request,
    response: Response,
    state: ServeState = Depends(get_state),
) -> PredictResponse:
    """Text classification, text-embeddings-inference style: each text's labels with softmax
    probabilities (logits with raw_scores), best first (400 Unsupported when the model has no
    classification head)."""
    texts, single = as_list(body.inputs)
    engine, ranked = await state.classify(
        texts,
        function="none" if body.raw_scores else "softmax",
        top_k=body.top_k,
        truncate=body.truncate,
        direction=body.truncation_direction.lower(),
        disconnected=lambda: wait_for_disconnect(request),
    )
    response.headers.update(model_headers(engine))
    predictions = ranked_predictions(ranked)
    return predictions[0] if single else predictions


@router.post("/v1/embeddings", response_model=OpenAIEmbeddingsResponse, responses=INFERENCE_ERRORS)
async def openai_embeddings(
    body: OpenAIEmbeddingsRequest, request: Request, state: ServeState = Depends(get_state)
) -> JSONResponse:
    """Sentence embeddings in OpenAI's format, with the checkpoint's pooling and normalisation
    (unit length, unless a sentence-transformers directory has no Normalize module)."""
    texts, _ = as_list(body.input)
    hidden = state.engine().config.hidden_size
    if body.dimensions is not None and body.dimensions != hidden:
        raise InputValidationError(f"dimensions must be {hidden} (the model's size) or omitted")
    engine, vectors, n_tokens = await state.embed(
        texts,
        pooling=None,  # the checkpoint's
        normalize=None,  # the checkpoint's
        truncate=False,
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


@router.post(
    "/tokenize", response_model=list[list[TokenInfo]], responses=error_responses(413, 422, 503)
)
async def tokenize(body: TokenizeRequest, state: ServeState = Depends(get_state)) -> JSONResponse:
    """Tokens of each input with ids and character offsets (start, stop) into the input."""
    texts, _ = as_list(body.inputs)
    engine, tokens = await state.tokenize(texts, add_special_tokens=body.add_special_tokens)
    return JSONResponse(tokens, headers=model_headers(engine))
