"""The work items the engine computes: tokenized inputs (``Encoded``, one text or a pair) and the
kinds of job (fill-mask, sentence embedding, token embeddings, SPLADE sparse vectors,
classification / reranking), with the shape of each job's result.

These are plain data shared by the layers that make jobs (``app.service``, ``app.precision``'s
probes) and the one that computes them (``app.engine``); keeping them here lets both import them
without importing each other. ``SCORE_FUNCTIONS`` names the ways class logits become scores, as
transformers' text-classification pipeline calls them (``function_to_apply``).

Deliberately not here: tokenization (``Engine.encode*``), tensors beyond the score functions,
queues (``app.batcher``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(eq=False, slots=True)
class Encoded:
    """One tokenized input: ids with [CLS]/[SEP], character offsets, and where its masks are.

    A sentence pair ``[CLS] a [SEP] b [SEP]`` carries ``type_ids`` (0 for the first segment and
    its specials, 1 for the second); a single text leaves them None (all 0).
    """

    ids: list[int]
    offsets: list[tuple[int, int]]  # (0, 0) for [CLS]/[SEP]; a literal "[MASK]" keeps its span
    mask_positions: list[int] = field(default_factory=list)
    truncated: bool = False
    type_ids: list[int] | None = None

    @property
    def special_positions(self) -> list[int]:
        """Positions of the [CLS]/[SEP] tokens the tokenizer added (they cover no characters)."""
        return [p for p, (start, stop) in enumerate(self.offsets) if start == stop]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(eq=False, slots=True)
class FillMaskJob:
    """A fill-mask request: for each input, ``top_k`` candidates per [MASK] position."""

    inputs: list[Encoded]
    top_k: int
    target_ids: list[int] | None = None  # restrict candidates to these ids (deduplicated)


@dataclass(eq=False, slots=True)
class EmbedJob:
    """An embedding request: one pooled vector per input, cut to its first ``dimensions``
    (Matryoshka; None: all) before it is normalized."""

    inputs: list[Encoded]
    pooling: str = "mean"  # one of model.POOLINGS
    normalize: bool = True
    dimensions: int | None = None


@dataclass(eq=False, slots=True)
class TokenEmbedJob:
    """Token-level vectors: every token's final hidden state, specials included (TEI's
    ``/embed_all``)."""

    inputs: list[Encoded]


@dataclass(eq=False, slots=True)
class SparseJob:
    """SPLADE vectors: per input the non-zero (vocabulary id, weight) pairs.

    ``skip_special``: [CLS]/[SEP] do not count (the SPLADE formula on any MLM); a
    sentence-transformers SparseEncoder directory counts them, as its own code does.
    """

    inputs: list[Encoded]
    pooling: str = "max"  # model.SPLADE_POOLINGS
    activation: str = "relu"  # model.SPLADE_ACTIVATIONS
    max_active_dims: int | None = None
    skip_special: bool = True


@dataclass(eq=False, slots=True)
class ClassifyJob:
    """A classification (or reranking, inputs being pairs) request: one score per label (in
    label id order) per input."""

    inputs: list[Encoded]
    function: str = "softmax"  # a key of SCORE_FUNCTIONS (the pipeline's function_to_apply)


Job = FillMaskJob | EmbedJob | TokenEmbedJob | SparseJob | ClassifyJob
# Per input: per mask, candidates (token id, probability) best first.
FillMaskResult = list[list[list[tuple[int, float]]]]
EmbedResult = list[list[float]]
TokenEmbedResult = list[list[list[float]]]  # per input, per token, its vector
SparseResult = list[list[tuple[int, float]]]  # per input, (vocabulary id, weight) by id
ClassifyResult = list[list[float]]

# How class logits become scores, by the name transformers' text-classification pipeline gives
# it (function_to_apply): "none" answers the logits themselves. "tanh" is a CrossEncoder
# activation; a CrossEncoder's "identity" is "none" here (``score_function``).
SCORE_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": lambda logits: logits.softmax(dim=-1),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "none": lambda logits: logits,
}


def score_function(activation: str) -> str:
    """The SCORE_FUNCTIONS key of a CrossEncoder activation (model.SCORE_ACTIVATIONS)."""
    return "none" if activation == "identity" else activation
