"""``POST /``: the root route that ``huggingface_hub.InferenceClient(base_url=...)`` calls.

The client sends one body shape per task and expects the shape of transformers' pipeline back;
the task is read from the body and checked against what the serving model can do, as
text-embeddings-inference's root route dispatches by model (see ``PipelineRequest``):
sentence similarity (``inputs`` is ``{"source_sentence", "sentences"}``), the model's pipeline
when ``parameters`` is present (text classification when ``function_to_apply`` asks for it or the
model is a classifier without MLM head, fill-mask otherwise; each answers 400 Unsupported on a
model without the head it needs), and feature extraction otherwise (TEI's ``/embed`` body).
``GET /`` stays the browser page (``app.routes.ui``).

Deliberately not here: any computation (``ServeState`` does it, with the same limits and batching
as the other routes) and other pipelines (token classification, sentence pairs).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from app.errors import InputValidationError
from app.routes.common import INFERENCE_ERRORS, error_responses, model_headers
from app.routes.deps import get_state, wait_for_disconnect
from app.schemas import (
    PipelineParameters,
    PipelineRequest,
    PipelineResponse,
    SimilarityInputs,
    as_list,
    ranked_predictions,
)
from app.service import ServeState

router = APIRouter(tags=["inference"])

_EMBED_FIELDS = ("normalize", "truncate", "truncation_direction")


@router.post(
    "/",
    response_model=PipelineResponse,
    responses={**INFERENCE_ERRORS, **error_responses(400)},
    summary="HuggingFace Inference API / TEI root route",
)
async def pipeline(
    body: PipelineRequest, request: Request, state: ServeState = Depends(get_state)
) -> JSONResponse:
    """Fill-mask, text classification, feature extraction or sentence similarity, chosen by the
    body's shape and by what the serving model can do; answers in the shape of transformers'
    pipeline for that task."""

    def disconnected() -> Any:
        return wait_for_disconnect(request)

    given = [f for f in _EMBED_FIELDS if getattr(body, f) is not None]
    if isinstance(body.inputs, SimilarityInputs):
        # The client sends "parameters": {} with it; anything in there would be ignored.
        if given or (body.parameters is not None and body.parameters.model_fields_set):
            raise InputValidationError("sentence similarity takes no parameters")
        engine, scores = await state.similarity(
            body.inputs.source_sentence,
            body.inputs.sentences,
            prompt_name=body.prompt_name,
            disconnected=disconnected,
        )
        return JSONResponse(scores, headers=model_headers(engine))
    if body.parameters is not None:
        if body.prompt_name is not None:
            given.append("prompt_name")
        if given:
            raise InputValidationError(
                f"{', '.join(given)} apply to feature extraction, which takes no parameters"
            )
        params = body.parameters
        texts, single = as_list(body.inputs)
        if _asks_for_classification(params, texts, state):
            engine, ranked = await state.classify(
                texts,
                function=params.function_to_apply or "softmax",
                top_k=params.top_k,
                disconnected=disconnected,
            )
            # One list per input even for one text: the Inference API's shape, which
            # InferenceClient.text_classification indexes with [0].
            return JSONResponse(
                jsonable_encoder(ranked_predictions(ranked)),
                headers=model_headers(engine),
            )
        targets = [params.targets] if isinstance(params.targets, str) else params.targets
        engine, predictions = await state.fill_mask(
            texts,
            top_k=params.top_k or 5,
            targets=targets,
            truncate=False,
            disconnected=disconnected,
        )
        # The fill-mask pipeline's shape: per input, the candidates of its one mask, or a list per
        # mask; a single text (or a list of one) gives that input's result alone.
        per_input = [masks[0] if len(masks) == 1 else masks for masks in predictions]
        result = per_input[0] if single or len(per_input) == 1 else per_input
        return JSONResponse(result, headers=model_headers(engine))
    texts, _ = as_list(body.inputs)
    engine, vectors, _ = await state.embed(
        texts,
        pooling=None,
        normalize=body.normalize,
        truncate=bool(body.truncate),
        direction=(body.truncation_direction or "right").lower(),
        prompt_name=body.prompt_name,
        disconnected=disconnected,
    )
    return JSONResponse(vectors, headers=model_headers(engine))


def _asks_for_classification(
    params: PipelineParameters, texts: list[str], state: ServeState
) -> bool:
    """Text classification or fill-mask? ``function_to_apply`` is the classifier's parameter and
    ``targets`` fill-mask's. With neither, InferenceClient's fill_mask and text_classification
    send the same body, so the serving model decides: a classifier without MLM head classifies,
    unless a text holds the mask token, which only a fill-mask request has (it then gets
    fill-mask's 400, not labels in a shape its client would misread)."""
    if params.function_to_apply is not None:
        if params.targets is not None:
            raise InputValidationError(
                "targets (fill-mask) and function_to_apply (text classification) belong to "
                "different tasks; send one task's parameters"
            )
        return True
    if params.targets is not None:
        return False
    engine = state.engine()
    if engine.can_fill_mask or not engine.can_classify:
        return False
    mask = engine.tokenizer.mask_token
    return not any(mask in text for text in texts)
