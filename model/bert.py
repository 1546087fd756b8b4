"""BERT in one file: embeddings, attention, layer, and the model with its optional heads.

Read top to bottom: `_Layout` (how padding is handled), `Embeddings`, `SelfAttention`,
`FeedForward`, `Layer`, `BertForMaskedLM` (the encoder with an MLM, NSP and/or classification
head; the heads and `pool` are in `model/heads.py`). Every module is built from a `BertConfig`
alone. Loading and saving HF-compatible checkpoints lives in
`model/checkpoint.py`; this file only calls it.

Design choices that make it faster than `transformers.BertForMaskedLM` while computing the same
numbers (parity is tested against transformers to 1e-5):
- Padding is removed before the token-wise work: embeddings, projections, FFN and LayerNorms
  run on the N real tokens of the batch, not on B*T. Attention goes through
  `scaled_dot_product_attention`, per sequence without a mask on CPU, or on the padded
  (B, nh, T, hs) layout with a boolean key mask elsewhere (see `_Layout`). Without padding no
  mask is built at all. Hidden states at padding positions come back as zeros.
- q, k and v come from one fused Linear (H -> 3H); the checkpoint keeps HF's separate
  query/key/value tensors (split and concatenated in model/weights.py).
- `prediction_mask` projects only the selected positions to the vocabulary; for a small BERT
  the (T, H) x (H, V) projection costs more than the whole encoder. With
  `return_hidden=False` the last layer, too, runs only at those positions (its keys and values
  still cover every token), which saves most of one layer. `classify` uses the same trick:
  its last layer runs at the [CLS] rows only, and `splade` (SPLADE vectors) projects only the
  tokens it pools.

Deliberately not handled: relative position embeddings, decoders / cross-attention / KV caches,
untied output embeddings, attention-probability outputs, gradient checkpointing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import POOLINGS, SPLADE_ACTIVATIONS, SPLADE_POOLINGS, BertConfig
from model.errors import ModelInputError
from model.heads import (
    ACTIVATIONS,
    INPLACE_ACTIVATIONS,
    ClassificationHead,
    MLMHead,
    NSPHead,
    pool,
    splade_weights,
    top_k_dims,
)
from model.rotary import apply_rotary

IGNORE_INDEX = -100  # label value ignored by the loss, as in transformers
# Devices where padded batches run attention one sequence at a time (see _Layout).
PER_SEQUENCE_ATTENTION_DEVICES = ("cpu",)


@dataclass
class MaskedLMOutput:
    """What `BertForMaskedLM.forward` returns (attribute names as in transformers)."""

    logits: Tensor  # (B, T, V), or (N, V) for the N positions selected by prediction_mask
    last_hidden_state: Tensor | None  # (B, T, H), zeros at padding; None if return_hidden=False
    loss: Tensor | None = None  # scalar, when labels are given
    nsp_logits: Tensor | None = None  # (B, 2), when the model has an NSP head


@dataclass
class ClassifierOutput:
    """What `BertForMaskedLM.classify` returns."""

    logits: Tensor  # (B, num_labels)
    loss: Tensor | None = None  # scalar, when labels are given


# ----------------------------------------------------------------------------------------------
# Padding layout


@dataclass
class _Layout:
    """Where the real tokens of a (B, T) batch are, so token-wise work can skip the padding.

    Tensors inside the encoder are "packed": (N, C) rows for the N real tokens in row-major
    order. Without padding N == B*T and nothing is gathered and no mask is built. With padding,
    attention runs one of two ways:
    - `lengths` (CPU): one SDPA call per sequence on its own packed rows, without a mask. On a
      CPU the loop costs microseconds per sequence and saves the padded attention and the
      copies to and from the padded layout.
    - `key_mask` (other devices): one SDPA call on the padded (B, nh, T, hs) layout with a key
      mask, since a per-sequence loop of kernel launches would be slow on a GPU.
    """

    batch: int
    length: int
    indices: Tensor | None = None  # (N,) flat positions in B*T of the real tokens
    key_mask: Tensor | None = None  # (B, 1, 1, T) bool, True = may be attended to
    lengths: list[int] | None = None  # real tokens per sequence, in packed order

    @classmethod
    def build(cls, attention_mask: Tensor | None, batch: int, length: int) -> _Layout:
        if attention_mask is None:
            return cls(batch, length)
        keep = attention_mask.bool()  # (B, T)
        if bool(keep.all()):
            return cls(batch, length)
        indices = keep.flatten().nonzero().squeeze(1)  # (N,)
        if keep.device.type in PER_SEQUENCE_ATTENTION_DEVICES:
            return cls(batch, length, indices, lengths=keep.sum(dim=1).tolist())
        # A row without any real token would softmax over nothing (NaN). Let it attend to
        # everything instead, as transformers' additive mask effectively does; its outputs are
        # padding and are dropped anyway.
        key_mask = keep | ~keep.any(dim=1, keepdim=True)  # (B, T)
        return cls(batch, length, indices, key_mask=key_mask[:, None, None, :])  # (B, 1, 1, T)

    def pack(self, x: Tensor) -> Tensor:
        """(B*T, ...) -> (N, ...): keep the real tokens."""
        return x if self.indices is None else x.index_select(0, self.indices)

    def unpack(self, x: Tensor) -> Tensor:
        """(N, C) -> (B*T, C): put the real tokens back in place, zeros at padding."""
        if self.indices is None:
            return x
        out = x.new_zeros((self.batch * self.length, x.shape[-1]))  # (B*T, C)
        return out.index_copy_(0, self.indices, x)


# ----------------------------------------------------------------------------------------------
# Encoder


class Embeddings(nn.Module):
    """Token + segment (+ learned absolute position) embeddings, then LayerNorm and dropout.

    With rotary positions there is no position table: attention rotates queries and keys.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        H = config.hidden_size
        self.word = nn.Embedding(config.vocab_size, H, padding_idx=config.pad_token_id)
        self.position = (
            nn.Embedding(config.max_position_embeddings, H)
            if config.position_embedding_type == "absolute"
            else None
        )
        self.token_type = nn.Embedding(config.type_vocab_size, H)
        self.norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None, layout: _Layout) -> Tensor:
        B, T = input_ids.shape
        ids = layout.pack(input_ids.reshape(B * T))  # (N,)
        x = self.word(ids)  # (N, H)
        if self.position is not None:
            # Positions count from 0 in every row whatever the padding, as in transformers.
            positions = layout.pack(torch.arange(T, device=input_ids.device).repeat(B))  # (N,)
            x = x + self.position(positions)  # (N, H)
        if token_type_ids is None:
            x = x + self.token_type.weight[0]  # (N, H): every token in segment 0
        else:
            types = layout.pack(token_type_ids.reshape(B * T))  # (N,)
            x = x + self.token_type(types)  # (N, H)
        return self.dropout(self.norm(x))  # (N, H)


class SelfAttention(nn.Module):
    """Multi-head self-attention: fused qkv projection, (RoPE,) SDPA, output projection."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.n_head = config.num_attention_heads
        self.head_size = config.head_size
        self.rotary = config.position_embedding_type == "rotary"
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)  # rows: q, then k, then v
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.attn_dropout = config.attention_probs_dropout_prob

    def forward(self, x: Tensor, layout: _Layout, rows: Tensor | None = None) -> Tensor:
        """(N, H) -> (N, H); with `rows` (M,), only those packed rows are returned: (M, H).

        Keys and values always cover every token; `rows` saves the output projection (and,
        in Layer, the FFN) for positions nobody will read.
        """
        qkv = self.qkv(x)  # (N, 3H)
        if layout.lengths is not None:  # CPU: one call per sequence, no padding, no mask
            parts = qkv.split(layout.lengths)  # B x (n_b, 3H)
            ys = [self._attend(p, 1, p.shape[0]) for p in parts if p.shape[0]]  # B x (n_b, H)
            y = torch.cat(ys) if ys else qkv[:, : self.n_head * self.head_size]  # (N, H)
        else:
            y = self._attend(layout.unpack(qkv), layout.batch, layout.length, layout.key_mask)
            y = layout.pack(y)  # (N, H)
        if rows is not None:
            y = y.index_select(0, rows)  # (M, H)
        return self.out(y)  # (N or M, H)

    def _attend(self, qkv: Tensor, B: int, T: int, key_mask: Tensor | None = None) -> Tensor:
        """Attention over B padded sequences of length T: (B*T, 3H) -> (B*T, H)."""
        nh, hs = self.n_head, self.head_size
        q, k, v = qkv.view(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hs)
        if self.rotary:  # positions 0..T-1: sequences start at 0 and padding sits at the end
            q, k = apply_rotary(q), apply_rotary(k)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=key_mask,  # (B, 1, 1, T) or None
            dropout_p=self.attn_dropout if self.training else 0.0,
        )  # (B, nh, T, hs)
        return y.transpose(1, 2).reshape(B * T, nh * hs)  # (B*T, H)


class FeedForward(nn.Module):
    """Position-wise FFN: Linear(H -> I), activation, Linear(I -> H)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = ACTIVATIONS[config.hidden_act]
        self.act_ = INPLACE_ACTIVATIONS[config.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)  # (N, I)
        # Without autograd nothing needs the pre-activation: overwrite it (no second buffer).
        h = self.act(h) if torch.is_grad_enabled() else self.act_(h)
        return self.down(h)  # (N, H)


class Layer(nn.Module):
    """One transformer block; post-LN (BERT) or pre-LN, chosen by config.norm_position."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.attention = SelfAttention(config)
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, layout: _Layout, rows: Tensor | None = None) -> Tensor:
        """(N, H) -> (N, H), or (M, H) for the packed `rows` only (see SelfAttention)."""
        if self.pre_norm:
            a = self.attention(self.attn_norm(x), layout, rows)  # (N or M, H)
            x = x if rows is None else x.index_select(0, rows)
            x = x + self.dropout(a)
            return x + self.dropout(self.ffn(self.ffn_norm(x)))  # (N or M, H)
        a = self.attention(x, layout, rows)  # (N or M, H)
        x = x if rows is None else x.index_select(0, rows)
        x = self.attn_norm(x + self.dropout(a))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))  # (N or M, H)


# ----------------------------------------------------------------------------------------------
# The model


class BertForMaskedLM(nn.Module):
    """BERT encoder + MLM head (+ optional NSP head), HF-checkpoint compatible.

    `nsp_head=True` adds BERT's pooler and next-sentence classifier (`cls.seq_relationship` in
    HF checkpoints); without it those weights are ignored on load. `mlm_head=False` is the
    encoder alone (transformers' BertModel, e.g. a sentence-transformers checkpoint): `encode`
    and `embed` work, `forward` (MLM logits) raises ModelInputError. `classifier=True` adds a
    text classifier over `config.labels` (transformers' BertForSequenceClassification or
    RoFormerForSequenceClassification head, one label or more): `classify` gives its logits.
    """

    def __init__(
        self,
        config: BertConfig,
        *,
        nsp_head: bool = False,
        mlm_head: bool = True,
        classifier: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        # Pre-LN leaves the residual stream un-normalised; BERT-style heads expect a LayerNorm.
        self.final_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            if config.norm_position == "pre"
            else None
        )
        self.mlm_head = MLMHead(config, self.embeddings.word) if mlm_head else None
        self.nsp_head = NSPHead(config) if nsp_head else None
        if classifier and nsp_head and config.position_embedding_type == "absolute":
            raise ModelInputError(
                "a BERT classifier and the NSP head would share bert.pooler; build one of them"
            )
        self.classifier = ClassificationHead(config) if classifier else None
        self.apply(self._init_weights)

    # -- initialisation and optimisation ---------------------------------------------------------

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's init: normal(0, initializer_range) weights, zero biases, LayerNorm = identity."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if self.mlm_head is not None and module is self.mlm_head.decoder:
                return  # tied: initialised as the word embedding
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, MLMHead):
            nn.init.zeros_(module.bias)

    def optimizer_param_groups(self, weight_decay: float) -> list[dict]:
        """Two AdamW groups: decay for weight matrices and embeddings, none for biases and norms.

        Each parameter appears once (the tied decoder weight is the word embedding).
        """
        norm_params = {
            id(p) for m in self.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()
        }
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name.endswith("bias") or id(p) in norm_params:
                no_decay.append(p)
            else:
                decay.append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def tie_weights(self) -> None:
        """Make the MLM decoder weight the word-embedding Parameter again (after a weight swap)."""
        if self.mlm_head is not None:
            self.mlm_head.decoder.weight = self.embeddings.word.weight

    @property
    def device(self) -> torch.device:
        return self.embeddings.word.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embeddings.word.weight.dtype

    # -- forward passes --------------------------------------------------------------------------

    def _check_inputs(
        self, input_ids: Tensor, attention_mask: Tensor | None, token_type_ids: Tensor | None
    ) -> None:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            got = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids)
            raise ModelInputError(f"input_ids must be a (batch, length) tensor, got {got}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ModelInputError(f"input_ids must be integer ids, got dtype {input_ids.dtype}")
        B, T = input_ids.shape
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ModelInputError(
                f"sequence length {T} exceeds max_position_embeddings "
                f"({self.config.max_position_embeddings})"
            )
        if input_ids.numel():
            lo, hi = (int(v) for v in torch.aminmax(input_ids))
            if lo < 0 or hi >= self.config.vocab_size:
                raise ModelInputError(
                    f"input_ids must lie in [0, vocab_size={self.config.vocab_size}), "
                    f"got values in [{lo}, {hi}]"
                )
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and tuple(t.shape) != (B, T):
                raise ModelInputError(
                    f"{name} must have the shape of input_ids {(B, T)}, got {tuple(t.shape)}"
                )
        if token_type_ids is not None and token_type_ids.numel():
            top = int(token_type_ids.max())
            if top >= self.config.type_vocab_size or int(token_type_ids.min()) < 0:
                raise ModelInputError(
                    f"token_type_ids must lie in [0, type_vocab_size="
                    f"{self.config.type_vocab_size}), got max {top}"
                )

    def _encoder(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        token_type_ids: Tensor | None,
        prediction_mask: Tensor | None = None,
    ) -> tuple[Tensor, _Layout]:
        """Packed final hidden states (N, H) and their layout.

        With prediction_mask, the last layer is computed only at the selected positions and the
        result is (M, H) in row-major order of the mask.
        """
        self._check_inputs(input_ids, attention_mask, token_type_ids)
        B, T = input_ids.shape
        layout = _Layout.build(attention_mask, B, T)
        rows = None
        if prediction_mask is not None:
            selected = prediction_mask.reshape(B * T)  # (B*T,)
            if layout.indices is not None:
                if bool((prediction_mask & ~attention_mask.bool()).any()):
                    raise ModelInputError("prediction_mask selects padding positions")
                selected = selected.index_select(0, layout.indices)  # (N,)
            rows = selected.nonzero().squeeze(1)  # (M,) packed rows to predict
        x = self.embeddings(input_ids, token_type_ids, layout)  # (N, H)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, layout, rows if i == last else None)  # (N, H); (M, H) after the last
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, layout

    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """The encoder alone: last hidden states (B, T, H), zeros at padding positions."""
        x, layout = self._encoder(input_ids, attention_mask, token_type_ids)  # (N, H)
        return layout.unpack(x).view(layout.batch, layout.length, -1)  # (B, T, H)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
        prediction_mask: Tensor | None = None,
        next_sentence_label: Tensor | None = None,
        return_hidden: bool = True,
    ) -> MaskedLMOutput:
        """MLM logits (and loss given labels, ignore index -100, mean over labelled positions).

        prediction_mask (B, T) bool: only those positions are projected to the vocabulary and
        logits is (N, V) in row-major order of the mask. With labels, every labelled position
        must be selected (use prediction_mask=labels.ne(-100)): the loss is then the same as the
        dense one, computed sparsely. next_sentence_label (B,) adds the NSP loss (NSP head only).

        return_hidden=False (only with prediction_mask, no NSP head) skips what only
        last_hidden_state needs: the last layer runs at the selected positions alone, the
        logits and loss are unchanged and last_hidden_state is None. The fill-mask and
        training fast path.
        """
        if prediction_mask is not None and (
            prediction_mask.shape != input_ids.shape or prediction_mask.dtype != torch.bool
        ):
            raise ModelInputError(
                "prediction_mask must be a bool tensor shaped like input_ids "
                f"{tuple(input_ids.shape)}, got {prediction_mask.dtype} "
                f"{tuple(prediction_mask.shape)}"
            )
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ModelInputError(
                    f"labels must be shaped like input_ids {tuple(input_ids.shape)}, "
                    f"got {tuple(labels.shape)}"
                )
            if prediction_mask is not None and bool(
                (labels.ne(IGNORE_INDEX) & ~prediction_mask).any()
            ):
                raise ModelInputError(
                    "labels has labelled positions outside prediction_mask; "
                    "pass prediction_mask=labels.ne(-100)"
                )
        if self.mlm_head is None:
            raise ModelInputError(
                "this model has no masked-language-model head (an encoder-only checkpoint): "
                "use encode() or embed()"
            )
        if not return_hidden and (prediction_mask is None or self.nsp_head is not None):
            raise ModelInputError(
                "return_hidden=False needs a prediction_mask and a model without NSP head"
            )

        hidden = None
        if prediction_mask is None:
            hidden = self.encode(input_ids, attention_mask, token_type_ids)  # (B, T, H)
            logits = self.mlm_head(hidden)  # (B, T, V)
            flat_logits, flat_labels = logits.flatten(0, 1), labels
        else:
            if return_hidden:
                hidden = self.encode(input_ids, attention_mask, token_type_ids)  # (B, T, H)
                selected = hidden[prediction_mask]  # (N, H)
            else:
                selected, _ = self._encoder(
                    input_ids, attention_mask, token_type_ids, prediction_mask
                )  # (N, H)
            logits = self.mlm_head(selected)  # (N, V)
            flat_logits = logits
            flat_labels = None if labels is None else labels[prediction_mask]  # (N,)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                flat_logits.float(), flat_labels.reshape(-1), ignore_index=IGNORE_INDEX
            )
        nsp_logits = None
        if self.nsp_head is not None:
            nsp_logits = self.nsp_head(hidden[:, 0])  # (B, 2)
            if next_sentence_label is not None:
                nsp_loss = F.cross_entropy(nsp_logits.float(), next_sentence_label.reshape(-1))
                loss = nsp_loss if loss is None else loss + nsp_loss
        elif next_sentence_label is not None:
            raise ModelInputError("next_sentence_label given but the model has no NSP head")
        return MaskedLMOutput(
            logits=logits, last_hidden_state=hidden, loss=loss, nsp_logits=nsp_logits
        )

    def classify(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
        class_weights: Tensor | None = None,
    ) -> ClassifierOutput:
        """Class logits (B, num_labels) from the [CLS] vectors, with the loss given labels.

        Sentence pairs pass their token_type_ids (0 for ``[CLS] A [SEP]``, 1 for ``B [SEP]``).
        The loss follows `config.classifier_problem`, as transformers': single-label
        classification takes class ids (B,) and gives cross-entropy, weighted per class by
        class_weights (num_labels,) if given; regression takes targets (B,) for one label or
        (B, num_labels) and gives the mean squared error.

        The last layer runs at the [CLS] rows only (as the fill-mask fast path does).
        """
        if self.classifier is None:
            raise ModelInputError("this model has no classification head (config.labels)")
        cls_rows = torch.zeros_like(input_ids, dtype=torch.bool)  # (B, T)
        cls_rows[:, 0] = True
        cls, _ = self._encoder(input_ids, attention_mask, token_type_ids, cls_rows)  # (B, H)
        logits = self.classifier(cls)  # (B, C)
        loss = None if labels is None else self._classifier_loss(logits, labels, class_weights)
        return ClassifierOutput(logits=logits, loss=loss)

    def _classifier_loss(
        self, logits: Tensor, labels: Tensor, class_weights: Tensor | None
    ) -> Tensor:
        B, C = logits.shape
        if self.config.classifier_problem == "regression":
            if class_weights is not None:
                raise ModelInputError("class_weights apply to classification, not regression")
            shape = (B,) if C == 1 else (B, C)
            if tuple(labels.shape) != shape or not labels.is_floating_point():
                raise ModelInputError(
                    f"regression labels must be float targets shaped {shape}, got "
                    f"{labels.dtype} {tuple(labels.shape)}"
                )
            return F.mse_loss(logits.float().view(shape), labels.float())
        if labels.shape != (B,):
            raise ModelInputError(
                f"labels must be one class id per row {(B,)}, got {tuple(labels.shape)}"
            )
        return F.cross_entropy(logits.float(), labels, weight=class_weights)

    def embed(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        pooling: str = "mean",
        normalize: bool = False,
    ) -> Tensor:
        """Sentence embeddings (B, H): the encoder, then `pool` (see there)."""
        if pooling not in POOLINGS:
            raise ModelInputError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        hidden = self.encode(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        return pool(hidden, attention_mask, pooling, normalize)

    def splade(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        special_tokens_mask: Tensor | None = None,
        *,
        pooling: str = "max",
        activation: str = "relu",
        max_active_dims: int | None = None,
    ) -> Tensor:
        """SPLADE sparse vectors (B, V): `model.heads.splade` of this model's MLM logits, with
        the same arguments (the `Capabilities.splade_*` of a SparseEncoder directory).

        Only the pooled tokens (not padding, not special if special_tokens_mask is given) are
        projected to the vocabulary, through the fill-mask fast path: no (B, T, V) logits.
        """
        if self.mlm_head is None:
            raise ModelInputError(
                "this model has no masked-language-model head: SPLADE vectors need its logits"
            )
        if pooling not in SPLADE_POOLINGS or activation not in SPLADE_ACTIVATIONS:
            raise ModelInputError(
                f"SPLADE pooling must be one of {SPLADE_POOLINGS} and activation one of "
                f"{SPLADE_ACTIVATIONS}, got {pooling!r} and {activation!r}"
            )
        B, T = input_ids.shape
        keep = torch.ones((B, T), dtype=torch.bool, device=input_ids.device)  # (B, T)
        if attention_mask is not None:
            keep &= attention_mask.bool()
        if special_tokens_mask is not None:
            if tuple(special_tokens_mask.shape) != (B, T):
                raise ModelInputError(
                    f"special_tokens_mask must be {(B, T)}, got {tuple(special_tokens_mask.shape)}"
                )
            keep &= ~special_tokens_mask.bool()
        logits = self.forward(
            input_ids,
            attention_mask,
            token_type_ids,
            prediction_mask=keep,
            return_hidden=self.nsp_head is not None,
        ).logits  # (N, V), rows in row-major order of keep
        w = splade_weights(logits, activation)  # (N, V)
        rows = keep.nonzero()[:, :1].expand_as(w)  # (N, V): the batch row of each logit row
        out = w.new_zeros((B, w.shape[-1]))  # (B, V); 0 is below every weight
        out.scatter_reduce_(0, rows, w, reduce="amax" if pooling == "max" else "sum")
        return top_k_dims(out, max_active_dims)  # (B, V)

    # -- checkpoints -----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        map_location: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        *,
        nsp_head: bool = False,
    ) -> BertForMaskedLM:
        """The model of a checkpoint directory (ours, a HuggingFace BERT directory or a
        sentence-transformers one), through the one loader, `model.checkpoint.load_checkpoint`.

        dtype=None gives float32, whatever the file stores. The model is returned in eval mode;
        an encoder-only checkpoint gives a model without MLM head.
        """
        return load_checkpoint(
            directory, cls, map_location=map_location, dtype=dtype, nsp_head=nsp_head
        ).model

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json + model.safetensors (transformers' names), atomically."""
        save_checkpoint(self, directory)

    def num_parameters(self) -> int:
        """Number of distinct parameters (the tied decoder weight counted once)."""
        return sum(p.numel() for p in self.parameters())
