"""The heads on top of the encoder and sentence pooling: MLM, NSP, sequence classification.

Each head takes the encoder's final hidden states and matches one transformers module, so its
weights load and save under transformers' names (`model/weights.py`):
- `MLMHead`: `cls.predictions` (dense, activation, LayerNorm, decoder tied to the word embeddings);
- `NSPHead`: BERT's pooler (`bert.pooler.dense`, tanh on [CLS]) and `cls.seq_relationship`;
- `ClassificationHead`: BertForSequenceClassification's pooler + `classifier`, or, for rotary
  (RoFormer) models, RoFormerClassificationHead (`classifier.dense`, activation,
  `classifier.out_proj`); both read the [CLS] vector only, with dropout where transformers has it.
`pool` turns token vectors into sentence embeddings as sentence-transformers does.

Deliberately not handled: multi-label heads, token classification, and poolers other than [CLS]
for classifiers (transformers could not open them).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import POOLINGS, BertConfig
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
