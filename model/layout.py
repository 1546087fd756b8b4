"""What a checkpoint directory is, from its JSON files alone: where the model is, its config, and
the sentence-transformers modules around it.

Two layouts, told apart by the files themselves (never by a directory or model name):
- a model directory: config.json + weights (+ tokenizer files), ours or transformers' (which
  heads the weights hold is read from the tensor names by `model/checkpoint.py`);
- a sentence-transformers directory: modules.json lists, in order, a Transformer module (a model
  directory at its path; "" is the directory itself), a Pooling module (its config.json:
  `pooling_mode`, or the older `pooling_mode_*_tokens` flags) and optionally a Normalize module.
  sentence_bert_config.json (beside the Transformer's config.json) may set `max_seq_length` and
  `do_lower_case`. These become the model's pooling (`BertConfig.pooling`) and
  `SentenceSettings`, the defaults of the server's embedding endpoints.

Deliberately not handled, each refused with one `CheckpointError` sentence naming the file: other
architectures (config.json `architectures` outside `SUPPORTED_ARCHITECTURES`), other
sentence-transformers modules (Dense, LayerNorm, Router, ...), the weightedmean and lasttoken
poolings or several concatenated, and a default prompt (`default_prompt_name`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.config import BertConfig
from model.errors import CheckpointError, ConfigError

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


@dataclass(frozen=True)
class SentenceSettings:
    """How a sentence-transformers directory turns token vectors into a sentence embedding."""

    pooling: str  # one of model.config.POOLINGS
    normalize: bool  # a Normalize module follows the pooling
    max_seq_length: int | None  # sentence_bert_config.json's; None: the tokenizer's limit
    do_lower_case: bool  # lowercase the text before tokenizing


@dataclass(frozen=True)
class CheckpointLayout:
    """Where a checkpoint's parts are and what its JSON files say."""

    directory: Path  # the directory given
    model_dir: Path  # config.json, weights and tokenizer files
    config: BertConfig  # config.json's, with the sentence-transformers pooling when there is one
    architectures: tuple[str, ...]  # config.json's `architectures` (may be empty)
    sentence: SentenceSettings | None  # None unless a sentence-transformers directory


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
    model_dir = directory
    if (directory / MODULES_NAME).is_file():
        model_dir, sentence = _read_sentence_transformers(directory)
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
    if sentence is not None:
        config = dataclasses.replace(config, pooling=sentence.pooling)
    return CheckpointLayout(directory, model_dir, config, architectures, sentence)


def _read_sentence_transformers(directory: Path) -> tuple[Path, SentenceSettings]:
    """(the Transformer module's directory, the pooling settings) from modules.json."""
    path = directory / MODULES_NAME
    modules = read_json(path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise CheckpointError(f"{path} must be a list of module objects")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    names = ", ".join(kinds) or "nothing"
    if not (
        len(kinds) in (2, 3)
        and kinds[0] in _TRANSFORMER_TYPES
        and kinds[1] == "Pooling"
        and kinds[2:] in ([], ["Normalize"])
    ):
        raise CheckpointError(
            f"{path} lists {names}; only Transformer, Pooling and an optional Normalize module, "
            "in that order, are supported"
        )
    # Only these two modules have files; a Normalize module's folder may be absent (git cannot
    # store the empty folder, so hub snapshots lack it).
    model_dir = _module_dir(directory, modules[0], path)
    pooling_dir = _module_dir(directory, modules[1], path)
    pooling = _st_pooling(read_json(pooling_dir / CONFIG_NAME), pooling_dir / CONFIG_NAME)
    st_config: dict[str, Any] = {}
    if (model_dir / SENTENCE_CONFIG_NAME).is_file():
        st_config = read_json(model_dir / SENTENCE_CONFIG_NAME)
        if not isinstance(st_config, dict):
            raise CheckpointError(f"{model_dir / SENTENCE_CONFIG_NAME} must hold a JSON object")
    max_len = st_config.get("max_seq_length")
    lower = st_config.get("do_lower_case", False)
    if max_len is not None and (
        not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 2
    ):
        raise CheckpointError(
            f"{model_dir / SENTENCE_CONFIG_NAME}: max_seq_length must be an integer >= 2"
        )
    if not isinstance(lower, bool):
        raise CheckpointError(
            f"{model_dir / SENTENCE_CONFIG_NAME}: do_lower_case must be true or false"
        )
    if (directory / SENTENCE_MODEL_CONFIG_NAME).is_file():
        settings = read_json(directory / SENTENCE_MODEL_CONFIG_NAME)
        prompt = settings.get("default_prompt_name") if isinstance(settings, dict) else None
        if prompt:
            raise CheckpointError(
                f"{directory / SENTENCE_MODEL_CONFIG_NAME} sets default_prompt_name {prompt!r}; "
                "models that prepend a prompt are not supported"
            )
    return model_dir, SentenceSettings(pooling, len(kinds) == 3, max_len, lower)


def _module_dir(directory: Path, module: dict[str, Any], where: Path) -> Path:
    rel = module.get("path", "")
    if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise CheckpointError(f"{where}: module path {rel!r} must lie inside the directory")
    path = directory / rel
    if not path.is_dir():
        raise CheckpointError(f"{where}: module directory {rel!r} is missing")
    return path


def _st_pooling(cfg: Any, path: Path) -> str:
    """Our pooling name for a sentence-transformers Pooling config (new or old format)."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
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
