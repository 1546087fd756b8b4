"""Request and response schemas of the HTTP API (Pydantic), which also document it at ``/docs``.

Static shape and hard caps live here (types, ``top_k >= 1``, list lengths); limits that depend on
the running configuration (inputs per request, tokens per input, ``max_top_k``) are checked in
``app.service`` against ``ServeConfig`` and raise ``InputValidationError`` (422) there. Unknown
fields are rejected (422), so a misspelt option never silently falls back to its default.

Shapes follow the references: ``/embed``, ``/embed_all``, ``/embed_sparse``, ``/similarity``,
``/rerank``, ``/decode`` and ``/predict`` are text-embeddings-inference's (``/embed`` plus
``pooling``; ``/predict`` plus the text-classification pipeline's ``top_k``, and a list of
strings is a list of texts, never a pair: see ``PredictRequest``), ``/v1/embeddings`` is OpenAI's
(plus ``prompt_name``), ``/v1/rerank`` is Cohere's and Jina's, ``/fill-mask`` candidates are
transformers' pipeline dicts, and ``POST /`` takes what ``huggingface_hub.InferenceClient``
sends (``PipelineRequest``) and answers in the shapes of transformers' pipelines.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.errors import InputValidationError

# Hard caps that hold whatever the config says; the body-size limit bounds the rest.
_MAX_LIST = 4096

Inputs = str | Annotated[list[str], Field(max_length=_MAX_LIST)]
# A sentence pair: exactly two texts.
Pair = Annotated[list[str], Field(min_length=2, max_length=2)]
PromptName = Annotated[str, Field(min_length=1, max_length=128)]
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
    prompt_name: PromptName | None = Field(
        default=None,
        description="One of the model's prompts (/info capabilities.prompts), put before every "
        "text as sentence-transformers' encode(prompt_name=...) does. Omitted: the server's "
        "default_prompt_name, else the model's default prompt, else none.",
    )
    dimensions: int | None = Field(
        default=None,
        ge=1,
        description="Keep the first this many values of each vector, then normalize "
        "(Matryoshka). At most the model's size (400 above). Omitted: all of them.",
    )
    pooling: Pooling | None = Field(
        default=None,
        description="How token vectors become one vector: 'mean' (over the input's tokens), "
        "'cls' (the [CLS] token), 'max' (each dimension's maximum over the tokens) or "
        "'mean_sqrt_len' (the sum over the square root of the token count). Omitted or null: the "
        "pooling the checkpoint was trained with (its config.json 'pooling', or a "
        "sentence-transformers directory's Pooling module; 'mean' when it records none).",
    )


class PredictRequest(_Request):
    """text-embeddings-inference's ``/predict`` request, plus the text-classification pipeline's
    ``top_k``.

    ``inputs``: a text -> its labels; a list of texts -> per text its labels; a list of pairs
    (``[["premise", "hypothesis"], ...]``, each a list of exactly two texts) -> per pair its
    labels. A list of strings is always texts (TEI would read a two-string list as one pair:
    send ``[["a", "b"]]`` for that); a list mixing strings and pairs is a 422.
    """

    inputs: str | Annotated[list[str | Pair], Field(max_length=_MAX_LIST)] = Field(
        description="A text, a list of texts, or a list of [first, second] sentence pairs."
    )
    raw_scores: bool = Field(
        default=False,
        description="Answer the logits instead of scores (softmax probabilities; for a "
        "one-label model its CrossEncoder score: the sigmoid of its logit unless the directory "
        "names another activation).",
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
    dimensions: int | None = Field(
        default=None,
        ge=1,
        description="Keep the first this many values, then normalize again (at most the "
        "model's size; 400 above).",
    )
    user: str | None = Field(default=None, max_length=256)
    prompt_name: PromptName | None = Field(
        default=None, description="Not OpenAI's: one of the model's prompts (see /embed)."
    )


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


class EmbedAllRequest(_Request):
    """text-embeddings-inference's ``/embed_all``: every token's vector, no pooling."""

    inputs: Inputs
    truncate: bool = False
    truncation_direction: TruncationDirection = "right"
    prompt_name: PromptName | None = None


class EmbedSparseRequest(_Request):
    """text-embeddings-inference's ``/embed_sparse``: SPLADE vectors from the MLM head."""

    inputs: Inputs
    truncate: bool = False
    truncation_direction: TruncationDirection = "right"
    prompt_name: PromptName | None = None


class SparseValue(BaseModel):
    index: int = Field(description="Vocabulary id (GET /tokenize-able as a token).")
    value: float = Field(description="Weight: pooled log(1 + relu(logit)); never zero here.")


class SimilarityRequest(_Request):
    """text-embeddings-inference's ``/similarity``: cosine of a source with each sentence."""

    inputs: SimilarityInputs
    truncate: bool = False
    truncation_direction: TruncationDirection = "right"
    prompt_name: PromptName | None = None


class RerankRequest(_Request):
    """text-embeddings-inference's ``/rerank`` (needs a cross-encoder)."""

    query: str = Field(min_length=1)
    texts: Annotated[list[str], Field(min_length=1, max_length=_MAX_LIST)]
    raw_scores: bool = Field(default=False, description="Logits instead of activated scores.")
    return_text: bool = Field(default=False, description="Echo each text in its result.")
    truncate: bool = Field(
        default=True,
        description="Cut a (query, text) pair over the token limit on the text's side; false: "
        "refuse it (422).",
    )
    truncation_direction: Literal["right", "Right"] = Field(
        default="right", description="Pairs are cut at the end of the text only."
    )


class RerankResult(BaseModel):
    index: int = Field(description="Position of the text in the request.")
    score: float = Field(description="CrossEncoder.predict's score (the logit: raw_scores).")
    text: str | None = Field(default=None, description="The text (return_text).")


class DocumentText(_Request):
    text: str


class CohereRerankRequest(_Request):
    """Cohere's and Jina's rerank request (``POST /v1/rerank``)."""

    query: str = Field(min_length=1)
    documents: Annotated[list[str | DocumentText], Field(min_length=1, max_length=_MAX_LIST)]
    top_n: int | None = Field(default=None, ge=1, description="Only the n best (default: all).")
    return_documents: bool = Field(default=False, description="Echo each document.")
    model: str | None = Field(default=None, max_length=256, description="Accepted and ignored.")
    max_chunks_per_doc: int | None = Field(
        default=None, ge=1, description="Accepted and ignored: a document is one pair."
    )


class CohereV2RerankRequest(_Request):
    """Cohere's v2 rerank request (``POST /v2/rerank``, what ``cohere.ClientV2`` sends)."""

    model: str | None = Field(default=None, max_length=256, description="Accepted and ignored.")
    query: str = Field(min_length=1)
    documents: Annotated[list[str | DocumentText], Field(min_length=1, max_length=_MAX_LIST)]
    top_n: int | None = Field(default=None, ge=1, description="Only the n best (default: all).")
    max_tokens_per_doc: int | None = Field(
        default=None, ge=1, description="Cut each document to this many tokens first."
    )
    priority: int | None = Field(default=None, description="Accepted and ignored.")


class CohereRerankResult(BaseModel):
    index: int
    relevance_score: float
    document: DocumentText | None = None


class CohereRerankResponse(BaseModel):
    id: str
    model: str
    results: list[CohereRerankResult]
    meta: dict
    usage: dict


class DecodeRequest(_Request):
    """text-embeddings-inference's ``/decode``: token ids back to text."""

    ids: (
        Annotated[list[int], Field(max_length=_MAX_LIST)]
        | Annotated[
            list[Annotated[list[int], Field(max_length=_MAX_LIST)]], Field(max_length=_MAX_LIST)
        ]
    )
    skip_special_tokens: bool = True


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
    prompt_name: PromptName | None = Field(
        default=None, description="Feature extraction and sentence similarity: a model prompt."
    )


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


def texts_or_pairs(
    inputs: str | list[str | list[str]],
) -> tuple[list[str] | list[tuple[str, str]], bool]:
    """``PredictRequest.inputs`` as texts or as pairs, and whether one text was sent; a list
    mixing texts and pairs is ambiguous (422)."""
    if isinstance(inputs, str):
        return [inputs], True
    pairs = [tuple(p) for p in inputs if isinstance(p, list)]
    if not pairs:
        return list(inputs), False  # type: ignore[arg-type]
    if len(pairs) != len(inputs):
        raise InputValidationError(
            "inputs mixes texts and sentence pairs; send texts, or pairs as [[first, second], ...]"
        )
    return pairs, False  # type: ignore[return-value]


def as_list(inputs: Inputs) -> tuple[list[str], bool]:
    """``inputs`` as a list, and whether the client sent a single string."""
    if isinstance(inputs, str):
        return [inputs], True
    return list(inputs), False
