"""Request and response schemas of the HTTP API (Pydantic), which also document it at ``/docs``.

Static shape and hard caps live here (types, ``top_k >= 1``, list lengths); limits that depend on
the running configuration (inputs per request, tokens per input, ``max_top_k``) are checked in
``app.service`` against ``ServeConfig`` and raise ``InputValidationError`` (422) there. Unknown
fields are rejected (422), so a misspelt option never silently falls back to its default.

Shapes follow the references: ``/embed`` is text-embeddings-inference's (plus ``pooling``;
``pooling`` and ``normalize`` default to the checkpoint's), ``/predict`` is TEI's (plus the
text-classification pipeline's ``top_k``; texts only, no sentence pairs), ``/v1/embeddings`` is
OpenAI's, ``/fill-mask`` candidates are transformers' pipeline dicts, and ``POST /`` takes what
``huggingface_hub.InferenceClient`` sends (``PipelineRequest``) and answers in the shapes of
transformers' pipelines.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# Hard caps that hold whatever the config says; the body-size limit bounds the rest.
_MAX_LIST = 4096

Inputs = str | Annotated[list[str], Field(max_length=_MAX_LIST)]
# model.POOLINGS, spelled out for the OpenAPI schema (a test checks they agree).
Pooling = Literal["mean", "cls", "max", "mean_sqrt_len"]
# TEI accepts both spellings.
TruncationDirection = Literal["right", "left", "Right", "Left"]


class _Request(BaseModel):
    # Strict: the JSON types the schema documents, no coercion ("normalize": 0.0 or "yes" is a
    # 422, not a silent False/True). Found by the schema fuzzer.
    model_config = ConfigDict(extra="forbid", strict=True)


class FillMaskRequest(_Request):
    """Fill every ``[MASK]`` of each input with its ``top_k`` most likely tokens."""

    inputs: Inputs = Field(description="A text or a list of texts, each with at least one [MASK].")
    top_k: int = Field(default=5, ge=1, description="Candidates per mask (at most max_top_k).")
    targets: str | list[str] | None = Field(
        default=None,
        description="Restrict candidates to these vocabulary tokens (scores stay probabilities "
        "over the whole vocabulary, as in transformers' pipeline).",
    )
    truncate: bool = Field(default=False, description="Cut inputs longer than the token limit.")


class FillMaskCandidate(BaseModel):
    score: float = Field(description="Softmax probability of the token at this mask.")
    token: int = Field(description="Token id.")
    token_str: str = Field(description="The token as text.")
    sequence: str = Field(description="The input with this mask replaced by the token.")


class FillMaskResponse(BaseModel):
    model: str = Field(description="Version of the model that computed the predictions.")
    predictions: list[list[list[FillMaskCandidate]]] = Field(
        description="Nested input -> mask (in text order) -> candidate (best first)."
    )


class EmbedRequest(_Request):
    """text-embeddings-inference's ``/embed`` request, plus ``pooling``."""

    inputs: Inputs
    normalize: bool | None = Field(
        default=None,
        description="Scale each vector to unit length. Omitted or null: the checkpoint's default "
        "(true, or for a sentence-transformers directory whether it has a Normalize module).",
    )
    truncate: bool = False
    truncation_direction: TruncationDirection = "right"
    prompt_name: None = Field(default=None, description="Not supported: no prompts are configured.")
    pooling: Pooling | None = Field(
        default=None,
        description="How token vectors become one vector: 'mean' (over the input's tokens), "
        "'cls' (the [CLS] token), 'max' (each dimension's maximum over the tokens) or "
        "'mean_sqrt_len' (the sum over the square root of the token count). Omitted or null: the "
        "pooling the checkpoint was trained with (its config.json 'pooling', or a "
        "sentence-transformers directory's Pooling module; 'mean' when it records none).",
    )


class PredictRequest(_Request):
    """text-embeddings-inference's ``/predict`` request (texts, not sentence pairs), plus the
    text-classification pipeline's ``top_k``."""

    inputs: Inputs = Field(description="A text or a list of texts, each classified on its own.")
    raw_scores: bool = Field(
        default=False,
        description="Answer the logits instead of softmax probabilities.",
    )
    truncate: bool = Field(default=False, description="Cut inputs longer than the token limit.")
    truncation_direction: TruncationDirection = "right"
    top_k: int | None = Field(
        default=None,
        ge=1,
        description="Only the k best labels. Omitted or null: every label (TEI's answer).",
    )


class Prediction(BaseModel):
    score: float = Field(description="Softmax probability of the label (its logit: raw_scores).")
    label: str


# One text: its labels, best first; a list of texts: one such list per text (TEI's shape).
PredictResponse = list[Prediction] | list[list[Prediction]]


class OpenAIEmbeddingsRequest(_Request):
    """OpenAI's embeddings request (texts only; token-id arrays are not accepted)."""

    input: Inputs
    model: str | None = Field(default=None, max_length=256, description="Accepted and ignored.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, description="Must be the model's size.")
    user: str | None = Field(default=None, max_length=256)


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str = Field(description="Floats, or base64 of little-endian float32.")
    index: int


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class TokenizeRequest(_Request):
    inputs: Inputs
    add_special_tokens: bool = True


class TokenInfo(BaseModel):
    id: int
    token: str = Field(description="The vocabulary entry, e.g. '##ing'.")
    text: str | None = Field(description="The characters it covers in the input (None: special).")
    special: bool
    start: int | None = Field(description="Character offset of the first covered character.")
    stop: int | None = Field(description="Character offset just past the last covered one.")


class SimilarityInputs(_Request):
    """The sentence-similarity pipeline's inputs."""

    source_sentence: str
    sentences: Annotated[list[str], Field(min_length=1, max_length=_MAX_LIST)]


class PipelineParameters(_Request):
    """Pipeline parameters: fill-mask's ``top_k`` and ``targets``; text classification's
    ``top_k`` and ``function_to_apply``."""

    top_k: int | None = Field(
        default=None,
        ge=1,
        description="Fill-mask: candidates per mask (default 5). Text classification: the k "
        "best labels (default: every label).",
    )
    targets: str | list[str] | None = Field(default=None, description="Fill-mask targets.")
    function_to_apply: Literal["sigmoid", "softmax", "none"] | None = Field(
        default=None,
        description="Text classification (needs a model with a classification head): how "
        "logits become scores (default softmax; 'none': the logits).",
    )


class PipelineRequest(_Request):
    """``POST /``: what ``huggingface_hub.InferenceClient`` sends, dispatched by its shape and by
    what the model can do (as text-embeddings-inference's root route dispatches by model):

    - ``inputs`` = ``{"source_sentence", "sentences"}``: sentence similarity -> ``[float]``,
      the cosine of the source's embedding with each sentence's;
    - ``parameters`` present (even ``{}``): the model's pipeline. Text classification when
      ``function_to_apply`` is given, or when the model has a classification head, no MLM head
      and no text holds ``[MASK]`` (400 Unsupported without a classifier) -> per input, its
      labels best first (one list per input even for one text: the Inference API's shape, which
      ``InferenceClient`` reads). Otherwise fill-mask (needs an MLM head, else 400 Unsupported)
      -> the fill-mask pipeline's candidates (for one text with one mask a flat list);
    - otherwise feature extraction, with TEI's top-level ``normalize``, ``truncate`` and
      ``truncation_direction`` -> ``[[float]]``, one vector per input.
    """

    inputs: str | Annotated[list[str], Field(max_length=_MAX_LIST)] | SimilarityInputs
    parameters: PipelineParameters | None = None
    normalize: bool | None = Field(default=None, description="Feature extraction only.")
    truncate: bool | None = Field(default=None, description="Feature extraction only.")
    truncation_direction: TruncationDirection | None = Field(
        default=None, description="Feature extraction only."
    )
    prompt_name: None = Field(default=None, description="Not supported: no prompts are configured.")


# POST / answers: fill-mask candidates (flat for one text with one mask, nested per mask and per
# input otherwise), text-classification labels per input, sentence similarities, or embeddings.
PipelineResponse = (
    list[FillMaskCandidate]
    | list[list[FillMaskCandidate]]
    | list[list[list[FillMaskCandidate]]]
    | list[list[Prediction]]
    | list[float]
    | list[list[float]]
)


class ReloadRequest(_Request):
    checkpoint: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="A checkpoint directory name inside the models root.",
    )


class ReloadResponse(BaseModel):
    model: str
    previous: str | None
    sha256: str
    load_seconds: float
    precision: str  # what the new model computes in (its /info says why)


class ErrorResponse(BaseModel):
    error: str
    error_type: str


def ranked_predictions(ranked: list[list[tuple[str, float]]]) -> list[list[Prediction]]:
    """Per input, its (label, score) pairs as ``Prediction``s, in the order given."""
    return [[Prediction(label=label, score=score) for label, score in row] for row in ranked]


def as_list(inputs: Inputs) -> tuple[list[str], bool]:
    """``inputs`` as a list, and whether the client sent a single string."""
    if isinstance(inputs, str):
        return [inputs], True
    return list(inputs), False
