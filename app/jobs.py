"""The work items the engine computes: tokenized inputs (``Encoded``) and the three kinds of job
(fill-mask, embedding, classification), with the shape of each job's result.

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
    """One tokenized input: ids with [CLS]/[SEP], character offsets, and where its masks are."""

    ids: list[int]
    offsets: list[tuple[int, int]]  # (0, 0) for [CLS]/[SEP]; a literal "[MASK]" keeps its span
    mask_positions: list[int] = field(default_factory=list)
    truncated: bool = False

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
    """An embedding request: one pooled vector per input."""

    inputs: list[Encoded]
    pooling: str = "mean"  # one of model.POOLINGS
    normalize: bool = True


@dataclass(eq=False, slots=True)
class ClassifyJob:
    """A text-classification request: one score per label (in label id order) per input."""

    inputs: list[Encoded]
    function: str = "softmax"  # a key of SCORE_FUNCTIONS (the pipeline's function_to_apply)


Job = FillMaskJob | EmbedJob | ClassifyJob
# Per input: per mask, candidates (token id, probability) best first.
FillMaskResult = list[list[list[tuple[int, float]]]]
EmbedResult = list[list[float]]
ClassifyResult = list[list[float]]

# How class logits become scores, by the name transformers' text-classification pipeline gives
# it (function_to_apply); "none" answers the logits themselves.
SCORE_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": lambda logits: logits.softmax(dim=-1),
    "sigmoid": torch.sigmoid,
    "none": lambda logits: logits,
}
