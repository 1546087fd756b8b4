"""Inference routes: /fill-mask, /predict (TEI: texts or sentence pairs), /tokenize, /decode.

Each handler validates the body (Pydantic), delegates to ``ServeState`` and answers with the
version and precision of the model that computed the result (``X-Model-Version``,
``X-Model-Precision``). Embeddings are in ``app.routes.embeddings``, reranking in
``app.routes.rerank``.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from app.routes.common import INFERENCE_ERRORS, error_responses, model_headers
from app.routes.deps import get_state, wait_for_disconnect
from app.schemas import (
    DecodeRequest,
    FillMaskRequest,
    FillMaskResponse,
    PredictRequest,
    PredictResponse,
    TokenInfo,
    TokenizeRequest,
    as_list,
    ranked_predictions,
    texts_or_pairs,
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
    """Text (or sentence-pair) classification, text-embeddings-inference style: each input's
    labels with softmax probabilities (a one-label model: the sigmoid of its logit; logits with
    raw_scores), best first (400 Unsupported when the model has no classification head)."""
    inputs, single = texts_or_pairs(body.inputs)
    engine, ranked = await state.classify(
        inputs,
        function="none" if body.raw_scores else None,
        top_k=body.top_k,
        truncate=body.truncate,
        direction=body.truncation_direction.lower(),
        disconnected=lambda: wait_for_disconnect(request),
    )
    response.headers.update(model_headers(engine))
    predictions = ranked_predictions(ranked)
    return predictions[0] if single else predictions


@router.post(
    "/tokenize", response_model=list[list[TokenInfo]], responses=error_responses(413, 422, 503)
)
async def tokenize(body: TokenizeRequest, state: ServeState = Depends(get_state)) -> JSONResponse:
    """Tokens of each input with ids and character offsets (start, stop) into the input."""
    texts, _ = as_list(body.inputs)
    engine, tokens = await state.tokenize(texts, add_special_tokens=body.add_special_tokens)
    return JSONResponse(tokens, headers=model_headers(engine))


@router.post("/decode", response_model=list[str], responses=error_responses(401, 413, 422, 503))
async def decode(body: DecodeRequest, state: ServeState = Depends(get_state)) -> JSONResponse:
    """Token ids back to text, one string per id list (a flat list is one sequence)."""
    ids = body.ids
    sequences = [ids] if not ids or isinstance(ids[0], int) else ids
    engine, texts = state.decode(sequences, skip_special_tokens=body.skip_special_tokens)
    return JSONResponse(texts, headers=model_headers(engine))
