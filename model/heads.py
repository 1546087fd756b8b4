"""The heads on top of the encoder and sentence pooling: MLM, NSP, sequence classification.

Each head takes the encoder's final hidden states and matches one transformers module, so its
weights load and save under transformers' names (`model/weights.py`):
- `MLMHead`: `cls.predictions` (dense, activation, LayerNorm, decoder tied to the word embeddings);
- `NSPHead`: BERT's pooler (`bert.pooler.dense`, tanh on [CLS]) and `cls.seq_relationship`;
- `ClassificationHead`: BertForSequenceClassification's pooler + `classifier`, or, for rotary
  (RoFormer) models, RoFormerClassificationHead (`classifier.dense`, activation,
  `classifier.out_proj`); both read the [CLS] vector only, with dropout where transformers has it.
`pool` turns token vectors into sentence embeddings as sentence-transformers does; `splade` turns
MLM logits into SPLADE sparse vectors as its SparseEncoder does; `activate_scores` turns a
classifier's logits into the scores of its CrossEncoder.predict.

Deliberately not handled: multi-label heads, token classification, and poolers other than [CLS]
for classifiers (transformers could not open them).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import (
    POOLINGS,
    SCORE_ACTIVATIONS,
    SPLADE_ACTIVATIONS,
    SPLADE_POOLINGS,
    BertConfig,
)
from model.errors import ModelInputError

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,  # exact erf GELU, BERT's
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}
# The same functions writing into their input, for inference (no autograd): the FFN's (N, I)
# activation then needs no second buffer. At BERT-base 32 x 128 that buffer is 50 MB per layer,
# which glibc maps (and zeroes) afresh on every forward.
INPLACE_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": torch.ops.aten.gelu_,
    "gelu_new": partial(torch.ops.aten.gelu_, approximate="tanh"),
    "gelu_pytorch_tanh": partial(torch.ops.aten.gelu_, approximate="tanh"),
    "relu": torch.relu_,
    "silu": partial(F.silu, inplace=True),
    "swish": partial(F.silu, inplace=True),
}


class MLMHead(nn.Module):
    """dense + activation + LayerNorm, then the decoder tied to the word embeddings (+ own bias)."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACTIVATIONS[config.hidden_act]
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.decoder.weight = word_embeddings.weight  # tied: the same Parameter, not a copy
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, h: Tensor) -> Tensor:
        h = self.norm(self.act(self.dense(h)))  # (..., H)
        return F.linear(h, self.decoder.weight, self.bias)  # (..., V)


class NSPHead(nn.Module):
    """BERT's pooler (dense + tanh on [CLS]) and the next-sentence classifier (2 classes)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, 2)

    def forward(self, cls: Tensor) -> Tensor:
        pooled = torch.tanh(self.pooler(cls))  # (B, H)
        return self.classifier(pooled)  # (B, 2)


class ClassificationHead(nn.Module):
    """A text classifier on the [CLS] vector, laid out as transformers' head for the family.

    BERT (absolute positions): pooled = tanh(dense(cls)); logits = out(dropout(pooled)).
    RoFormer (rotary): logits = out(dropout(act(dense(dropout(cls))))).
    One logit per label (`config.labels`, in id order); one label is a reranker's score.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if not config.labels:
            raise ModelInputError("a classification head needs config.labels (at least one)")
        self.roformer = config.position_embedding_type == "rotary"
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.out = nn.Linear(config.hidden_size, len(config.labels))
        self.act = ACTIVATIONS[config.hidden_act] if self.roformer else torch.tanh
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, cls: Tensor) -> Tensor:
        # RoFormer drops out before its dense layer too; BERT's pooler does not.
        x = self.dropout(cls) if self.roformer else cls  # (B, H)
        return self.out(self.dropout(self.act(self.dense(x))))  # (B, num_labels)


def pool(
    hidden: Tensor,
    attention_mask: Tensor | None = None,
    pooling: str = "mean",
    normalize: bool = False,
) -> Tensor:
    """Sentence embeddings (B, H) from hidden states (B, T, H), as sentence-transformers pools.

    Over the non-padding tokens (all tokens if attention_mask is None): "mean" averages them,
    "mean_sqrt_len" sums them and divides by sqrt(their number), "max" takes each channel's
    maximum; "cls" takes the first token. A row without any real token gives zeros.
    normalize=True scales each row to unit L2 norm.
    Example: hidden [[[1, 1], [3, 3], [9, 9]]], mask [[1, 1, 0]] -> mean [[2, 2]], max [[3, 3]].
    """
    if pooling not in POOLINGS:
        raise ModelInputError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if pooling == "cls":
        out = hidden[:, 0]  # (B, H)
    else:
        if attention_mask is None:
            attention_mask = hidden.new_ones(hidden.shape[:2])  # (B, T)
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        count = m.sum(dim=1)  # (B, 1)
        if pooling == "max":
            # Padding must never win the maximum (hidden states there are zeros).
            masked = hidden.masked_fill(m == 0, float("-inf"))  # (B, T, H)
            out = masked.max(dim=1).values.masked_fill(count == 0, 0.0)  # (B, H)
        else:
            total = (hidden * m).sum(dim=1)  # (B, H)
            denominator = count if pooling == "mean" else count.sqrt()
            out = total / denominator.clamp(min=1.0)  # (B, H)
    return F.normalize(out, p=2.0, dim=-1) if normalize else out


# CrossEncoder.predict's activations (sentence-transformers applies the torch module of the same
# name; softmax over the labels, as nn.Softmax() does on (B, C)).
SCORE_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda logits: logits,
    "sigmoid": torch.sigmoid,
    "softmax": lambda logits: logits.softmax(dim=-1),
    "tanh": torch.tanh,
}


def activate_scores(logits: Tensor, activation: str, apply_softmax: bool = False) -> Tensor:
    """CrossEncoder.predict's scores from a classifier's logits (B, C): the activation
    (`Capabilities.score_activation`), then a softmax over the labels if apply_softmax and C > 1;
    one label gives (B,), as predict does.

    Example: logits [[0.0], [2.0]] with "sigmoid" -> [0.5, 0.8808]; with "identity" -> [0.0, 2.0].
    """
    if activation not in SCORE_FUNCTIONS:
        raise ModelInputError(
            f"activation must be one of {', '.join(SCORE_ACTIVATIONS)}, got {activation!r}"
        )
    scores = SCORE_FUNCTIONS[activation](logits.float())  # (B, C)
    if scores.shape[-1] == 1:
        return scores.squeeze(-1)  # (B,)
    return scores.softmax(dim=-1) if apply_softmax else scores  # (B, C)


def splade_weights(logits: Tensor, activation: str = "relu") -> Tensor:
    """Per-token vocabulary weights (..., V): log(1 + relu(logits)), and once more log(1 + w)
    for "log1p_relu" (OpenSearch's SPLADE models). Never negative.

    Example: logits [1.0, -2.0, e - 1] -> [0.6931, 0.0, 1.0].
    """
    if activation not in SPLADE_ACTIVATIONS:
        raise ModelInputError(
            f"SPLADE activation must be one of {', '.join(SPLADE_ACTIVATIONS)}, got {activation!r}"
        )
    w = torch.relu(logits)  # (..., V)
    if torch.is_grad_enabled() and logits.requires_grad:  # relu's backward reads its output
        w = w.log1p()
        return w.log1p() if activation == "log1p_relu" else w
    w = w.log1p_()  # inference: no second (..., V) buffer
    return w.log1p_() if activation == "log1p_relu" else w


def top_k_dims(vectors: Tensor, k: int | None) -> Tensor:
    """Each row (B, V) with only its k largest-magnitude entries kept, the rest zero (None: all);
    sentence-transformers' max_active_dims. Example: [[0.1, 3.0, 0.5]], k=2 -> [[0.0, 3.0, 0.5]]."""
    if k is None:
        return vectors
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ModelInputError(f"max_active_dims must be a positive integer or None, got {k!r}")
    top = vectors.abs().topk(min(k, vectors.shape[-1]), dim=-1).indices  # (B, k)
    return torch.zeros_like(vectors).scatter_(-1, top, vectors.gather(-1, top))  # (B, V)


def splade(
    logits: Tensor,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    *,
    pooling: str = "max",
    activation: str = "relu",
    max_active_dims: int | None = None,
) -> Tensor:
    """SPLADE sparse vectors (B, V) from MLM logits (B, T, V).

    Each vocabulary entry's weight `splade_weights` (log(1 + relu(logit))) is pooled over the
    tokens that count: not padding (attention_mask 0) and, if special_tokens_mask (B, T) is
    given, not special ([CLS], [SEP]). "max" takes the largest weight, "sum" adds them; a row with
    no such token is zeros. max_active_dims keeps each row's k largest weights (`top_k_dims`).

    sentence-transformers' SparseEncoder (SpladePooling) pools every non-padding token, [CLS]
    and [SEP] included, as the SPLADE papers' code does: leave special_tokens_mask None to
    reproduce its vectors.

    Example (V = 2): logits [[[1.0, -2.0], [e - 1, 0.5], [9.0, 9.0]]], attention_mask [[1, 1, 0]]
    -> max [[1.0, 0.4055]] (the padding's 9.0 is ignored); with special_tokens_mask [[0, 1, 0]]
    -> [[0.6931, 0.0]].
    """
    if logits.dim() != 3:
        raise ModelInputError(f"logits must be (batch, length, vocab), got {tuple(logits.shape)}")
    if pooling not in SPLADE_POOLINGS:
        raise ModelInputError(
            f"SPLADE pooling must be one of {', '.join(SPLADE_POOLINGS)}, got {pooling!r}"
        )
    B, T, V = logits.shape
    keep = logits.new_ones((B, T), dtype=torch.bool)  # (B, T)
    for name, mask, drop in (
        ("attention_mask", attention_mask, False),
        ("special_tokens_mask", special_tokens_mask, True),
    ):
        if mask is None:
            continue
        if tuple(mask.shape) != (B, T):
            raise ModelInputError(f"{name} must be {(B, T)}, got {tuple(mask.shape)}")
        keep &= ~mask.bool() if drop else mask.bool()
    # Dropped tokens weigh 0, which neither the max (weights are >= 0) nor the sum notices.
    w = splade_weights(logits, activation) * keep.unsqueeze(-1).to(logits.dtype)  # (B, T, V)
    if T == 0:
        return logits.new_zeros((B, V))
    out = w.amax(dim=1) if pooling == "max" else w.sum(dim=1)  # (B, V)
    return top_k_dims(out, max_active_dims)
