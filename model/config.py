"""`BertConfig`: the architecture hyper-parameters, with HuggingFace field names.

The field names and defaults are those of `transformers.BertConfig`, so a HuggingFace
`config.json` means the same thing here (a key left out of such a file means the HF default),
plus two fields of ours: `norm_position` ("post" = BERT/HF, "pre" = pre-LN with a final LayerNorm)
and `pooling` (one of `POOLINGS`: how the checkpoint makes sentence embeddings, the default of
servers and evaluations; a HF config.json without it means "mean", and a sentence-transformers
directory's Pooling module sets it on load, see `model/layout.py`). transformers keeps
unknown keys as plain attributes, so both travel through `transformers.BertConfig` unharmed.
A sequence classifier's `labels` and `problem_type` are read from and written as transformers'
`id2label`/`label2id`/`num_labels`/`problem_type`: one label (a reranker's score) or more,
single-label classification or regression.
All validation lives in `__post_init__` and `from_dict`; both raise `ConfigError` naming the field.

Deliberately not handled: HF options that change the architecture (relative position embeddings,
decoders and cross-attention, untied output embeddings, pruned heads, ALBERT-style factorised
embeddings) and multi-label classification heads (`problem_type` "multi_label_classification").
`from_dict` refuses them with a `ConfigError` rather than silently running a different model.
Keys that are pure metadata (versions, dtypes, labels, generation defaults) are accepted and
dropped; any other unknown key is an error, so a typo never goes unnoticed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.errors import ConfigError

# Activations we implement, with the HF names that select them. "gelu" is the exact (erf) GELU of
# BERT; "gelu_new" and "gelu_pytorch_tanh" are the tanh approximation under two HF names.
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")
NORM_POSITIONS = ("post", "pre")
# "absolute": BERT's learned position table added to the embeddings; "rotary": RoPE (RoFormer's
# layout: interleaved pairs, base 10000) applied to queries and keys, no position table.
POSITION_EMBEDDING_TYPES = ("absolute", "rotary")
# Sentence-embedding poolings (see model.bert.pool): the mean of the tokens, the [CLS] token, the
# per-channel maximum, and the sum over sqrt(length) (sentence-transformers' mean_sqrt_len_tokens).
POOLINGS = ("mean", "cls", "max", "mean_sqrt_len")
# transformers' problem_type values we train and serve: softmax over the labels (cross-entropy),
# or one real-valued score per label (mean squared error), such as a reranker's relevance.
PROBLEM_TYPES = ("single_label_classification", "regression")
# SPLADE sparse vectors from MLM logits (model.heads.splade; sentence-transformers' SpladePooling):
# how token weights are pooled over the text, and the activation before it ("relu":
# log(1 + relu(x)); "log1p_relu": log(1 + log(1 + relu(x))), OpenSearch's models).
SPLADE_POOLINGS = ("max", "sum")
SPLADE_ACTIVATIONS = ("relu", "log1p_relu")
# What turns a classifier's logits into the scores sentence-transformers' CrossEncoder.predict
# returns (model.heads.SCORE_FUNCTIONS, activate_scores; "identity": the logits themselves).
SCORE_ACTIVATIONS = ("identity", "sigmoid", "softmax", "tanh")

# HF config keys that do not change the computation of a BERT encoder with an MLM head: metadata,
# training-time settings, classification-head settings and generation defaults written by
# `PretrainedConfig`. They are accepted and dropped.
HARMLESS_HF_KEYS = frozenset(
    {
        "_name_or_path",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "_commit_hash",
        "architectures",
        "model_type",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "use_cache",
        "classifier_dropout",
        "gradient_checkpointing",
        "output_past",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "use_return_dict",
        "torchscript",
        "use_bfloat16",
        "tf_legacy_loss",
        "chunk_size_feed_forward",  # a memory-saving loop in HF; same numbers
        "id2label",
        "label2id",
        "num_labels",
        "problem_type",
        "finetuning_task",
        "task_specific_params",
        "tokenizer_class",
        "prefix",
        "bos_token_id",
        "eos_token_id",
        "sep_token_id",
        "cls_token_id",
        "unk_token_id",
        "mask_token_id",
        "decoder_start_token_id",
        "directionality",  # bert-base-chinese metadata
        "pooler_fc_size",  # the pooler is not used by the MLM model
        "pooler_num_attention_heads",
        "pooler_num_fc_layers",
        "pooler_size_per_head",
        "pooler_type",
        "cross_attention_hidden_size",
        "tie_encoder_decoder",
        # Generation defaults that transformers 4.x wrote into every config.
        "max_length",
        "min_length",
        "do_sample",
        "early_stopping",
        "num_beams",
        "num_beam_groups",
        "diversity_penalty",
        "temperature",
        "top_k",
        "top_p",
        "typical_p",
        "repetition_penalty",
        "length_penalty",
        "no_repeat_ngram_size",
        "encoder_no_repeat_ngram_size",
        "bad_words_ids",
        "num_return_sequences",
        "output_scores",
        "return_dict_in_generate",
        "forced_bos_token_id",
        "forced_eos_token_id",
        "remove_invalid_values",
        "exponential_decay_length_penalty",
        "suppress_tokens",
        "begin_suppress_tokens",
        # sentence-transformers' CrossEncoder settings (>= 4: {"activation_fn", "version"}; older:
        # the activation's dotted name), read by model/layout.py; the encoder is unchanged.
        "sentence_transformers",
        "sbert_ce_default_activation_function",
    }
)

# HF keys that change the architecture, with the only value we can run (a key may be absent).
ARCHITECTURE_HF_KEYS: dict[str, Any] = {
    "is_decoder": False,
    "add_cross_attention": False,
    "is_encoder_decoder": False,
    "tie_word_embeddings": True,
    "pruned_heads": {},
}
# A config.json for another family (roberta, distilbert, ...) has other weights and semantics.
# "roformer" is BERT with rotary positions (RoFormerForMaskedLM): how rotary checkpoints are
# written, so that transformers opens them as the model they are.
SUPPORTED_MODEL_TYPES = ("bert", "roformer")
# RoFormer keys with the only value we run (an embedding size other than hidden_size adds a
# projection; rotary_value also rotates the values).
ROFORMER_KEYS: dict[str, Any] = {"rotary_value": False}
# transformers' class-name suffix of a text classifier (BertForSequenceClassification, ...).
CLASSIFIER_SUFFIX = "ForSequenceClassification"


@dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT encoder; defaults are HF's (BERT-base, uncased vocab).

    >>> BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64).head_size
    8
    """

    vocab_size: int = 30522  # HF default (bert-base-uncased); our tokenizer uses 16000
    hidden_size: int = 768  # H, the width of the residual stream
    num_hidden_layers: int = 12  # L
    num_attention_heads: int = 12  # A; must divide hidden_size
    intermediate_size: int = 3072  # FFN width, 4*H as in BERT
    hidden_act: str = "gelu"  # exact (erf) GELU, as in the original BERT
    hidden_dropout_prob: float = 0.1  # BERT's pretraining value
    attention_probs_dropout_prob: float = 0.1  # BERT's pretraining value
    max_position_embeddings: int = 512  # learned absolute positions: the longest sequence
    type_vocab_size: int = 2  # segments A and B (sentence pairs)
    layer_norm_eps: float = 1e-12  # BERT's value; HF checkpoints were trained with it
    pad_token_id: int | None = 0  # its embedding row gets no gradient (nn.Embedding padding_idx)
    initializer_range: float = 0.02  # std of the normal init of weights and embeddings
    norm_position: str = "post"  # "post": BERT/HF; "pre": LN before each sublayer, final LN
    position_embedding_type: str = "absolute"  # or "rotary" (RoPE on queries and keys)
    pooling: str = "mean"  # sentence-embedding pooling it was trained for; weights unaffected
    # A text classifier's labels in id order (transformers' id2label); () = no classifier.
    labels: tuple[str, ...] = ()
    # transformers' problem_type of a classifier; None (always, without labels) means its
    # default for the label count: regression for one label, single-label classification else.
    problem_type: str | None = None

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"BertConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ConfigError(
                f"BertConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(
                f"BertConfig.hidden_act {self.hidden_act!r} is not supported; "
                f"use one of {', '.join(SUPPORTED_ACTIVATIONS)}"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value < 1.0:
                raise ConfigError(f"BertConfig.{name} must be a number in [0, 1), got {value!r}")
        if not _is_number(self.layer_norm_eps) or not self.layer_norm_eps > 0:
            raise ConfigError(
                f"BertConfig.layer_norm_eps must be a positive number, got {self.layer_norm_eps!r}"
            )
        if self.pad_token_id is not None and (
            not _is_int(self.pad_token_id) or not 0 <= self.pad_token_id < self.vocab_size
        ):
            raise ConfigError(
                f"BertConfig.pad_token_id must be None or an id in [0, vocab_size="
                f"{self.vocab_size}), got {self.pad_token_id!r}"
            )
        if not _is_number(self.initializer_range) or not self.initializer_range > 0:
            raise ConfigError(
                "BertConfig.initializer_range must be a positive number, "
                f"got {self.initializer_range!r}"
            )
        if self.norm_position not in NORM_POSITIONS:
            raise ConfigError(
                f"BertConfig.norm_position must be 'post' or 'pre', got {self.norm_position!r}"
            )
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ConfigError(
                f"BertConfig.position_embedding_type {self.position_embedding_type!r} is not "
                f"supported; use one of {', '.join(POSITION_EMBEDDING_TYPES)}"
            )
        if self.position_embedding_type == "rotary" and self.head_size % 2:
            raise ConfigError(
                f"rotary position embeddings need an even head size, got {self.head_size}"
            )
        if self.pooling not in POOLINGS:
            raise ConfigError(
                f"BertConfig.pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}"
            )
        labels = self.labels
        if (
            not isinstance(labels, tuple)
            or not all(isinstance(x, str) and x for x in labels)
            or len(set(labels)) != len(labels)
        ):
            raise ConfigError(
                "BertConfig.labels must be a tuple of distinct non-empty label names (or empty: "
                f"no classifier), got {labels!r}"
            )
        if self.problem_type is not None:
            if self.problem_type not in PROBLEM_TYPES:
                raise ConfigError(
                    f"BertConfig.problem_type {self.problem_type!r} is not supported; use one of "
                    f"{', '.join(PROBLEM_TYPES)} (or None: the default for the label count)"
                )
            if not labels:
                raise ConfigError(
                    f"BertConfig.problem_type {self.problem_type!r} needs a classifier (labels)"
                )
            if self.problem_type == "single_label_classification" and len(labels) == 1:
                # A softmax over one class is constant; transformers refuses such a config.
                raise ConfigError(
                    "BertConfig.problem_type 'single_label_classification' needs at least two "
                    "labels; one label is a regression head (a reranker's score)"
                )
            if self.problem_type == _default_problem_type(len(labels)):
                # One spelling per meaning, so that equal heads compare equal and a replace()
                # of the labels (fine-tuning another task) gets the new count's default.
                object.__setattr__(self, "problem_type", None)

    @property
    def classifier_problem(self) -> str | None:
        """The classifier's problem type, defaults resolved; None without a classifier."""
        if not self.labels:
            return None
        return self.problem_type or _default_problem_type(len(self.labels))

    @property
    def head_size(self) -> int:
        """Width of one attention head (hidden_size / num_attention_heads)."""
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BertConfig:
        """Build a config from our to_dict() output or a HuggingFace BERT config.json as is.

        Harmless HF metadata is dropped; architecture-changing HF keys must have the one value we
        support; anything else unknown is a `ConfigError` naming the keys.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
        model_type = data.get("model_type", "bert")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"config model_type {model_type!r} is not supported; only 'bert' and 'roformer' "
                "checkpoints load"
            )
        data = dict(data)
        if model_type == "roformer":
            for key, supported in ROFORMER_KEYS.items():
                if data.get(key, supported) != supported:
                    raise ConfigError(f"config {key}={data[key]!r} is not supported")
                data.pop(key, None)
            embedding_size = data.pop("embedding_size", None)
            if embedding_size is not None and embedding_size != data.get("hidden_size", 768):
                raise ConfigError(
                    f"config embedding_size={embedding_size!r} differs from hidden_size: the "
                    "embedding projection of such RoFormer models is not supported"
                )
            if data.get("position_embedding_type", "rotary") != "rotary":
                raise ConfigError("a roformer config must have rotary position embeddings")
            data["position_embedding_type"] = "rotary"
        elif data.get("position_embedding_type") is None:
            data["position_embedding_type"] = "absolute"
        elif data["position_embedding_type"] == "rotary":
            raise ConfigError(
                "config model_type 'bert' with position_embedding_type 'rotary': transformers "
                "would run it with absolute positions; rotary checkpoints are 'roformer'"
            )
        for key, supported in ARCHITECTURE_HF_KEYS.items():
            if key in data and data[key] != supported and data[key] is not None:
                raise ConfigError(
                    f"config {key}={data[key]!r} is not supported (only {supported!r}): "
                    "it changes the architecture in a way this model does not implement"
                )
        data["labels"] = _classifier_labels(data)
        # A problem_type means something only for a classifier (transformers writes it into
        # every config); the default for the label count is None, see __post_init__.
        data["problem_type"] = _classifier_problem_type(data) if data["labels"] else None
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields - HARMLESS_HF_KEYS - set(ARCHITECTURE_HF_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {', '.join(map(repr, unknown))}; "
                f"known fields are {', '.join(sorted(fields))}"
            )
        return cls(**{k: v for k, v in data.items() if k in fields})

    def to_dict(self) -> dict[str, Any]:
        """The config as written to config.json: our fields plus the HF keys transformers needs."""
        out: dict[str, Any] = dataclasses.asdict(self)
        labels = out.pop("labels")
        out.pop("problem_type")
        family, head = "Bert", "ForMaskedLM"
        if self.position_embedding_type == "rotary":  # transformers' RoFormerForMaskedLM
            family = "RoFormer"
            out.update(model_type="roformer", embedding_size=self.hidden_size, rotary_value=False)
        else:
            out.update(model_type="bert")
        if labels:  # transformers' ...ForSequenceClassification reads these
            head = CLASSIFIER_SUFFIX
            out.update(
                id2label={str(i): name for i, name in enumerate(labels)},
                label2id={name: i for i, name in enumerate(labels)},
                num_labels=len(labels),
                # Written resolved: transformers would infer the same, but only at training.
                problem_type=self.classifier_problem,
            )
        out["architectures"] = [family + head]
        out.update(
            # Written explicitly so readers that default otherwise (or older transformers)
            # cannot mistake the architecture.
            tie_word_embeddings=True,
            is_decoder=False,
            add_cross_attention=False,
        )
        return out

    @classmethod
    def from_json_file(cls, path: str | Path) -> BertConfig:
        """Read a config.json (ours or HuggingFace's); errors name the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ConfigError(f"{path}: config file not found") from e
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config ({e})") from e
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e


def _classifier_labels(data: dict[str, Any]) -> tuple[str, ...]:
    """The labels of a sequence classifier's config (id2label in id order); () for other models.

    transformers writes id2label into most configs (LABEL_0, LABEL_1 by default); only a config
    whose `architectures` names a ...ForSequenceClassification means them. transformers 5 leaves
    id2label out for its default of two labels: without it, `num_labels` (default 2) gives
    LABEL_0, LABEL_1, ... as transformers reads it.
    """
    if "labels" in data:  # ours, built in code or from to_dict() of a test
        return tuple(data["labels"]) if isinstance(data["labels"], list) else data["labels"]
    if not any(str(a).endswith(CLASSIFIER_SUFFIX) for a in data.get("architectures") or ()):
        return ()
    raw = data.get("id2label")
    if raw is None:
        num = data.get("num_labels", 2)
        if not _is_int(num) or num < 1:
            raise ConfigError(f"config num_labels must be a positive integer, got {num!r}")
        return tuple(f"LABEL_{i}" for i in range(num))
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("a sequence classifier's config needs id2label (label names by id)")
    try:
        by_id = {int(k): v for k, v in raw.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"config id2label keys must be integer ids, got {sorted(raw)}") from None
    if sorted(by_id) != list(range(len(by_id))):
        raise ConfigError(f"config id2label ids must be 0..{len(by_id) - 1}, got {sorted(by_id)}")
    num = data.get("num_labels", len(by_id))
    if num != len(by_id):
        raise ConfigError(f"config num_labels={num!r} but id2label has {len(by_id)} labels")
    return tuple(by_id[i] for i in range(len(by_id)))


def _classifier_problem_type(data: dict[str, Any]) -> str | None:
    """A classifier config's problem_type (None: the default); refuses multi-label heads."""
    problem = data.get("problem_type")
    if problem is not None and problem not in PROBLEM_TYPES:
        raise ConfigError(
            f"config problem_type {problem!r} is not supported; single-label classification and "
            "regression heads load"
        )
    return problem


def _default_problem_type(num_labels: int) -> str:
    """transformers' choice when problem_type is unset: regression for one label."""
    return "regression" if num_labels == 1 else "single_label_classification"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
