"""What a checkpoint directory is, from its JSON files alone: where the model is, its config, and
the sentence-transformers modules around it.

Two layouts, told apart by the files themselves (never by a directory or model name):
- a model directory: config.json + weights (+ tokenizer files), ours or transformers' (which
  heads the weights hold is read from the tensor names by `model/checkpoint.py`);
- a sentence-transformers directory: modules.json lists, in order, a Transformer module (a model
  directory at its path; "" is the directory itself) and what follows it, one of
  - a Pooling module (its config.json: `pooling_mode`, or the older `pooling_mode_*_tokens`
    flags) and optionally a Normalize module: a SentenceTransformer (sentence embeddings), whose
    pooling becomes the model's (`BertConfig.pooling`);
  - nothing: a CrossEncoder (sentence-transformers >= 6; the model is a sequence classifier);
  - a SpladePooling module (after a Transformer or the older MLMTransformer): a SparseEncoder,
    SPLADE vectors from the MLM logits (`SpladeSettings`).
  sentence_bert_config.json (beside the Transformer's config.json) may set `max_seq_length` and
  `do_lower_case`; config_sentence_transformers.json (at the top) the named `prompts`, the
  `default_prompt_name`, a CrossEncoder's `activation_fn` and a SparseEncoder's
  `max_active_dims`. These become `SentenceSettings`, the defaults of the server's endpoints.

A sequence classifier's scores are what sentence-transformers' CrossEncoder.predict would give
(`CheckpointLayout.score_activation`): the activation its files name (>= 6:
config_sentence_transformers.json `activation_fn`; 4 and 5: config.json
`sentence_transformers.activation_fn`; older: config.json
`sbert_ce_default_activation_function`), else CrossEncoder's default: sigmoid for one label,
identity for more. Such a named activation also marks a plain model directory as a CrossEncoder's.

Deliberately not handled, each refused with one `CheckpointError` sentence naming the file: other
architectures (config.json `architectures` outside `SUPPORTED_ARCHITECTURES`), other
sentence-transformers modules (Dense, LayerNorm, Router, SparseStaticEmbedding, ...), the
weightedmean and lasttoken poolings or several concatenated, a Pooling module that leaves the
prompt out (`include_prompt: false`) of a model with a prompt, and CrossEncoder activations other
than `SCORE_ACTIVATIONS` (a non-torch activation is ignored, as CrossEncoder ignores it without
trust_remote_code).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.config import SPLADE_ACTIVATIONS, SPLADE_POOLINGS, BertConfig
from model.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
MODULES_NAME = "modules.json"
SENTENCE_CONFIG_NAME = "sentence_bert_config.json"
SENTENCE_MODEL_CONFIG_NAME = "config_sentence_transformers.json"
# What transformers calls the models we run: the encoder, with or without pretraining heads.
SUPPORTED_ARCHITECTURES = frozenset(
    {
        "BertModel",
        "BertForMaskedLM",
        "BertForPreTraining",
        "BertForSequenceClassification",
        "RoFormerModel",
        "RoFormerForMaskedLM",
        "RoFormerForSequenceClassification",
    }
)
# sentence-transformers' pooling modes -> ours (model.config.POOLINGS).
ST_POOLINGS = {
    "mean": "mean",
    "cls": "cls",
    "max": "max",
    "mean_sqrt_len_tokens": "mean_sqrt_len",
}
# The older Pooling config: one flag per mode.
_ST_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Module classes by the last part of their dotted type (the package moved them between versions:
# sentence_transformers.models.Pooling, sentence_transformers.sentence_transformer.modules...).
_TRANSFORMER_TYPES = ("Transformer", "BERT")
_MLM_TRANSFORMER = "MLMTransformer"  # SparseEncoder's Transformer before sentence-transformers 5.4
# sentence-transformers' model classes (config_sentence_transformers.json `model_type`).
SENTENCE_TRANSFORMER, CROSS_ENCODER, SPARSE_ENCODER = (
    "SentenceTransformer",
    "CrossEncoder",
    "SparseEncoder",
)
# The Transformer module's task (sentence_bert_config.json `transformer_task`, >= 6) each
# model class runs; absent in older files.
_TRANSFORMER_TASKS = {
    SENTENCE_TRANSFORMER: "feature-extraction",
    CROSS_ENCODER: "sequence-classification",
    SPARSE_ENCODER: "fill-mask",
}
# CrossEncoder activations -> ours (model.config.SCORE_ACTIVATIONS, applied by
# model.heads.activate_scores), by the torch.nn class sentence-transformers saves the dotted name
# of ("torch.nn.modules.activation.Sigmoid"; "torch.nn.Sigmoid" imports the same class).
ST_ACTIVATIONS = {
    "Identity": "identity",
    "Sigmoid": "sigmoid",
    "Softmax": "softmax",
    "Tanh": "tanh",
}


@dataclass(frozen=True)
class SentenceSettings:
    """What a sentence-transformers directory adds to the model inside it."""

    pooling: str | None  # one of model.config.POOLINGS; None: no Pooling module
    normalize: bool  # a Normalize module follows the pooling
    max_seq_length: int | None  # sentence_bert_config.json's; None: the tokenizer's limit
    do_lower_case: bool  # lowercase the text before tokenizing
    # sentence-transformers' class for the directory: SentenceTransformer (embeddings),
    # CrossEncoder (pair scores) or SparseEncoder (SPLADE vectors).
    model_type: str = SENTENCE_TRANSFORMER
    # Named prompts, each prepended as is to a text (to the first text of a pair), and the one
    # used when the caller names none (None: no prompt by default).
    prompts: dict[str, str] = field(default_factory=dict, hash=False)
    default_prompt_name: str | None = None


@dataclass(frozen=True)
class SpladeSettings:
    """How a SparseEncoder turns MLM logits into a sparse vector (model.heads.splade); the
    defaults are SPLADE's, used for any model with an MLM head."""

    pooling: str = "max"  # over the tokens (SPLADE_POOLINGS)
    activation: str = "relu"  # log(1 + relu(logit)) (SPLADE_ACTIVATIONS)
    max_active_dims: int | None = None  # keep only the k largest weights; None: all


@dataclass(frozen=True)
class CheckpointLayout:
    """Where a checkpoint's parts are and what its JSON files say."""

    directory: Path  # the directory given
    model_dir: Path  # config.json, weights and tokenizer files
    config: BertConfig  # config.json's, with the sentence-transformers pooling when there is one
    architectures: tuple[str, ...]  # config.json's `architectures` (may be empty)
    sentence: SentenceSettings | None  # None unless a sentence-transformers directory
    # A classifier's CrossEncoder.predict activation (SCORE_ACTIVATIONS); None without labels.
    score_activation: str | None = None
    cross_encoder: bool = False  # saved by sentence-transformers' CrossEncoder
    splade: SpladeSettings | None = None  # a SparseEncoder directory's SpladePooling


def read_json(path: Path) -> Any:
    """A JSON file's content; CheckpointError naming the file when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: file not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read it as JSON ({e})") from e


def read_layout(directory: str | Path) -> CheckpointLayout:
    """The layout of a checkpoint directory; CheckpointError (or ConfigError) says what is wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    sentence = None
    splade = None
    st_activation: str | None = None
    model_dir = directory
    if (directory / MODULES_NAME).is_file():
        model_dir, sentence, splade, st_activation = _read_sentence_transformers(directory)
    config_path = model_dir / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{model_dir}: no {CONFIG_NAME}; this is not a model directory")
    raw = read_json(config_path)
    architectures = tuple(raw.get("architectures") or ()) if isinstance(raw, dict) else ()
    unsupported = [a for a in architectures if a not in SUPPORTED_ARCHITECTURES]
    if unsupported:
        raise CheckpointError(
            f"{config_path}: architecture {', '.join(unsupported)} is not supported; only BERT "
            f"encoders load ({', '.join(sorted(SUPPORTED_ARCHITECTURES))})"
        )
    try:
        config = BertConfig.from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{config_path}: {e}") from None
    if sentence is not None and sentence.pooling is not None:
        config = dataclasses.replace(config, pooling=sentence.pooling)
    marked, config_activation = _config_cross_encoder(raw, config_path)
    cross_encoder = marked or (sentence is not None and sentence.model_type == CROSS_ENCODER)
    if cross_encoder and not config.labels:
        raise CheckpointError(
            f"{config_path}: a sentence-transformers CrossEncoder's model must be a sequence "
            "classifier (architectures ...ForSequenceClassification with id2label)"
        )
    score_activation = None
    if config.labels:
        # CrossEncoder's order: config_sentence_transformers.json, then config.json, then the
        # default for the label count.
        score_activation = st_activation or config_activation
        score_activation = score_activation or (
            "sigmoid" if len(config.labels) == 1 else "identity"
        )
    return CheckpointLayout(
        directory,
        model_dir,
        config,
        architectures,
        sentence,
        score_activation=score_activation,
        cross_encoder=cross_encoder,
        splade=splade,
    )


def _config_cross_encoder(raw: Any, path: Path) -> tuple[bool, str | None]:
    """(config.json marks a CrossEncoder, the activation it names or None) from the keys
    sentence-transformers 4 and 5 (`sentence_transformers`) and older versions wrote."""
    if not isinstance(raw, dict):
        return False, None
    settings = raw.get("sentence_transformers")
    if settings is not None:
        if not isinstance(settings, dict):
            raise CheckpointError(f"{path}: sentence_transformers must be a JSON object")
        if "activation_fn" in settings:  # then the older key is not read, as CrossEncoder does
            name = "sentence_transformers.activation_fn"
            return True, _score_activation(settings["activation_fn"], path, name)
    legacy = raw.get("sbert_ce_default_activation_function")
    if legacy is not None:
        name = "sbert_ce_default_activation_function"
        return True, _score_activation(legacy, path, name)
    return settings is not None, None


def _score_activation(value: Any, path: Path, key: str) -> str | None:
    """Our name for a CrossEncoder activation saved as a dotted class name; None for none or
    one CrossEncoder would not import (outside torch, without trust_remote_code)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise CheckpointError(f"{path}: {key} must be a dotted class name, got {value!r}")
    module, _, name = value.rpartition(".")
    if module.startswith("torch.nn") and name in ST_ACTIVATIONS:
        return ST_ACTIVATIONS[name]
    if not value.startswith("torch."):
        logger.warning(
            "%s: %s %r is not a torch class; CrossEncoder ignores it without "
            "trust_remote_code, and so do we (the default activation applies)",
            path,
            key,
            value,
        )
        return None
    known = ", ".join(f"torch.nn.{k}" for k in ST_ACTIVATIONS)
    raise CheckpointError(
        f"{path}: {key} {value!r} is not supported; the CrossEncoder activations we reproduce "
        f"are {known}"
    )


def _read_sentence_transformers(
    directory: Path,
) -> tuple[Path, SentenceSettings, SpladeSettings | None, str | None]:
    """(the Transformer module's directory, its settings, a SparseEncoder's SPLADE settings, a
    CrossEncoder's activation named in config_sentence_transformers.json) from modules.json."""
    path = directory / MODULES_NAME
    modules = read_json(path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise CheckpointError(f"{path} must be a list of module objects")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    model_type = _model_type(kinds, path)
    # Only these modules have files; a Normalize module's folder may be absent (git cannot
    # store the empty folder, so hub snapshots lack it).
    model_dir = _module_dir(directory, modules[0], path)
    pooling = None
    pooling_config: dict[str, Any] = {}
    splade = None
    if model_type == SENTENCE_TRANSFORMER:
        pooling_path = _module_dir(directory, modules[1], path) / CONFIG_NAME
        pooling_config = _json_object(pooling_path)
        pooling = _st_pooling(pooling_config, pooling_path)
    elif model_type == SPARSE_ENCODER:
        splade_path = _module_dir(directory, modules[1], path) / CONFIG_NAME
        splade = _splade_settings(_json_object(splade_path), splade_path)

    st_path = model_dir / SENTENCE_CONFIG_NAME
    st_config = _json_object(st_path) if st_path.is_file() else {}
    max_len = st_config.get("max_seq_length")
    lower = st_config.get("do_lower_case", False)
    if max_len is not None and (
        not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 2
    ):
        raise CheckpointError(f"{st_path}: max_seq_length must be an integer >= 2")
    if not isinstance(lower, bool):
        raise CheckpointError(f"{st_path}: do_lower_case must be true or false")
    task = st_config.get("transformer_task")
    if task is not None and task != _TRANSFORMER_TASKS[model_type]:
        raise CheckpointError(
            f"{st_path}: transformer_task {task!r} does not fit a {model_type} (modules "
            f"{', '.join(kinds)}), which runs {_TRANSFORMER_TASKS[model_type]!r}"
        )

    model_config_path = directory / SENTENCE_MODEL_CONFIG_NAME
    model_config = _json_object(model_config_path) if model_config_path.is_file() else {}
    declared = model_config.get("model_type")
    if declared is not None and declared != model_type:
        raise CheckpointError(
            f"{model_config_path}: model_type {declared!r} does not fit the modules in "
            f"{MODULES_NAME} ({', '.join(kinds)}: a {model_type})"
        )
    prompts, default_prompt = _prompts(model_config, model_config_path)
    if pooling_config.get("include_prompt", True) is False and any(prompts.values()):
        raise CheckpointError(
            f"{_module_dir(directory, modules[1], path) / CONFIG_NAME}: include_prompt false "
            "(pooling without the prompt's tokens) is not supported"
        )
    activation = None
    if model_type == CROSS_ENCODER:
        activation = _score_activation(
            model_config.get("activation_fn"), model_config_path, "activation_fn"
        )
    if model_type == SPARSE_ENCODER:
        dims = model_config.get("max_active_dims")
        if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or dims < 1):
            raise CheckpointError(
                f"{model_config_path}: max_active_dims must be a positive integer or null, "
                f"got {dims!r}"
            )
        splade = dataclasses.replace(splade, max_active_dims=dims)
    settings = SentenceSettings(
        pooling,
        kinds[2:] == ["Normalize"],
        max_len,
        lower,
        model_type=model_type,
        prompts=prompts,
        default_prompt_name=default_prompt,
    )
    return model_dir, settings, splade, activation


def _model_type(kinds: list[str], path: Path) -> str:
    """The sentence-transformers class whose modules these are, or CheckpointError."""
    first, rest = (kinds[0], kinds[1:]) if kinds else ("", [])
    if first in _TRANSFORMER_TYPES and rest in (["Pooling"], ["Pooling", "Normalize"]):
        return SENTENCE_TRANSFORMER
    if first in _TRANSFORMER_TYPES and not rest:
        return CROSS_ENCODER
    if first in (*_TRANSFORMER_TYPES, _MLM_TRANSFORMER) and rest == ["SpladePooling"]:
        return SPARSE_ENCODER
    raise CheckpointError(
        f"{path} lists {', '.join(kinds) or 'nothing'}; only Transformer, Pooling and an "
        "optional Normalize (embeddings), a Transformer alone (a CrossEncoder), or a "
        "Transformer or MLMTransformer and SpladePooling (a SparseEncoder), in that order, "
        "are supported"
    )


def _json_object(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def _prompts(model_config: dict[str, Any], path: Path) -> tuple[dict[str, str], str | None]:
    """(prompts by name, the default prompt's name) of config_sentence_transformers.json.

    A null prompt reads as "", as sentence-transformers reads it.
    """
    raw = model_config.get("prompts", {})
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in raw.items()
    ):
        raise CheckpointError(
            f"{path}: prompts must be an object of prompt names to prompt strings, got {raw!r}"
        )
    prompts = {name: text or "" for name, text in raw.items()}
    default = model_config.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise CheckpointError(
            f"{path}: default_prompt_name {default!r} is not one of the prompts "
            f"({', '.join(map(repr, prompts)) or 'none'})"
        )
    return prompts, default


def _splade_settings(cfg: dict[str, Any], path: Path) -> SpladeSettings:
    """A SpladePooling config.json (`word_embedding_dimension` / `embedding_dimension` are
    informative: the vocabulary size)."""
    pooling = cfg.get("pooling_strategy", "max")
    activation = cfg.get("activation_function", "relu")
    if pooling not in SPLADE_POOLINGS:
        raise CheckpointError(
            f"{path}: pooling_strategy {pooling!r} is not supported; use one of "
            f"{', '.join(SPLADE_POOLINGS)}"
        )
    if activation not in SPLADE_ACTIVATIONS:
        raise CheckpointError(
            f"{path}: activation_function {activation!r} is not supported; use one of "
            f"{', '.join(SPLADE_ACTIVATIONS)}"
        )
    return SpladeSettings(pooling, activation)


def _module_dir(directory: Path, module: dict[str, Any], where: Path) -> Path:
    rel = module.get("path", "")
    if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise CheckpointError(f"{where}: module path {rel!r} must lie inside the directory")
    path = directory / rel
    if not path.is_dir():
        raise CheckpointError(f"{where}: module directory {rel!r} is missing")
    return path


def _st_pooling(cfg: dict[str, Any], path: Path) -> str:
    """Our pooling name for a sentence-transformers Pooling config (new or old format)."""
    mode = cfg.get("pooling_mode")
    if mode is None:
        modes = [m for flag, m in _ST_POOLING_FLAGS.items() if cfg.get(flag)]
        mode = modes[0] if len(modes) == 1 else (modes or "mean")
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if isinstance(mode, list):
        raise CheckpointError(
            f"{path} concatenates several poolings ({', '.join(map(str, mode))}); only one "
            "pooling is supported"
        )
    if mode not in ST_POOLINGS:
        raise CheckpointError(
            f"{path}: pooling {mode!r} is not supported; use one of {', '.join(ST_POOLINGS)}"
        )
    return ST_POOLINGS[mode]
