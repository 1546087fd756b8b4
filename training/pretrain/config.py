"""Training configuration: the `TrainConfig` dataclass and the YAML + command-line loader.

A run is described by one YAML file with two sections::

    model:   # BertConfig fields (vocab_size is the target size when a vocabulary is trained)
      hidden_size: 128
    train:   # TrainConfig fields
      lr: 1.0e-3

and every field can be overridden on the command line, dotted (`--train.lr 1e-3`,
`--model.hidden_size 64`) or flat when the name belongs to one section only (`--lr 1e-3`).
Unknown keys are errors that name the key; values are coerced to the field's type (so YAML's
`1e-3`, which PyYAML reads as a string, still becomes a float) and checked in
`TrainConfig.__post_init__`, which extends the shared settings' `training.run.options.RunConfig`.

Deliberately not here: paths of the corpus, validation set and output directory (they are
command-line arguments of a run, not properties of a recipe) and any model validation beyond the
key names (BertConfig validates its own values).
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from model import POOLINGS, BertConfig
from training.run.options import RunConfig, TrainConfigError

__all__ = [
    "TrainConfig",
    "apply_overrides",
    "load_run_config",
    "model_field_names",
]


@dataclass
class TrainConfig(RunConfig):
    """Every knob of a pretraining run except the model shape and the file paths (the shared
    ones, optimisation to logging, are `RunConfig`'s, with pretraining's defaults)."""

    section: ClassVar[str] = "train"

    # --- data ---
    max_seq_length: int = 128  # cramming/budget-BERT length: 4x cheaper attention than 512
    packing: bool = True  # pack documents joined by [SEP] into full rows (no padding waste)
    cache_dir: str = ".cache/bertserve"  # tokenized corpora, keyed by content + vocab + settings
    vocab_min_frequency: int = 2  # only used when a vocabulary is trained from the corpus
    lowercase: bool = True  # only used when a vocabulary is trained from the corpus
    # --- masking ---
    mlm_probability: float = 0.15  # BERT's rate
    mask_token_prob: float = 0.8  # of the chosen tokens: 80% [MASK]
    random_token_prob: float = 0.1  # 10% a random token, the remaining 10% left unchanged
    whole_word_masking: bool = False  # mask all `##` pieces of a word together
    # --- objectives: step loss = mlm_weight * MLM + sop_weight * SOP + contrastive_weight * NCE ---
    mlm_weight: float = 1.0  # 0 = a contrastive-only stage (fill-mask is then left to drift)
    contrastive_weight: float = 0.0  # 0 = off: plain MLM, bit for bit as without these keys
    contrastive_data: Literal["pairs", "simcse", "both"] = "pairs"  # see contrastive.py
    contrastive_batch_size: int = 64  # positive pairs per InfoNCE batch (the rest are negatives)
    contrastive_max_length: int = 64  # tokens per sentence, [CLS] and [SEP] included
    contrastive_symmetric: bool = True  # also match b -> a (CLIP-style); False = a -> b only
    temperature: float = 0.05  # SimCSE's value
    pooling: str = "mean"  # one of model.POOLINGS; recorded in config.json for servers and evals
    # Sentence pairs through BERT's NSP head (sentence_order.py): 0 = off.
    sop_weight: float = 0.0  # step loss += sop_weight * sentence-pair cross-entropy
    sentence_objective: Literal["sop", "nsp"] = "sop"  # ALBERT's order, or BERT's random next
    init_from: str | None = None  # checkpoint dir: its weights and tokenizer, a fresh optimizer
    # --- optimisation, numerics, evaluation beyond RunConfig's ---
    grad_accum_steps: int = 1  # micro-batches per optimizer step (larger effective batch)
    compile: bool = False  # torch.compile the model (costs a compile up front)
    eval_max_sequences: int = 1024  # cap of validation rows per evaluation (0 = all)
    eval_seed: int = 1234  # fixed masking seed so validation numbers compare across runs
    save_every: int = 1000  # steps; 0 = only at the end

    def __post_init__(self) -> None:
        super().__post_init__()
        check = self.check
        check(self.max_seq_length >= 8, "max_seq_length", self.max_seq_length, ">= 8")
        check(0.0 < self.mlm_probability < 1.0, "mlm_probability", self.mlm_probability,
              "in (0, 1)")  # fmt: skip
        for name in ("mask_token_prob", "random_token_prob"):
            check(0.0 <= getattr(self, name) <= 1.0, name, getattr(self, name), "in [0, 1]")
        check(
            self.mask_token_prob + self.random_token_prob <= 1.0 + 1e-9,
            "mask_token_prob + random_token_prob",
            self.mask_token_prob + self.random_token_prob,
            "<= 1",
        )
        check(self.grad_accum_steps >= 1, "grad_accum_steps", self.grad_accum_steps, ">= 1")
        for name in ("save_every", "eval_max_sequences"):
            check(getattr(self, name) >= 0, name, getattr(self, name), ">= 0")
        check(self.vocab_min_frequency >= 1, "vocab_min_frequency", self.vocab_min_frequency,
              ">= 1")  # fmt: skip
        for name in ("mlm_weight", "contrastive_weight", "sop_weight"):
            value = getattr(self, name)
            check(math.isfinite(value) and value >= 0, name, value, "a finite number >= 0")
        if self.sop_weight > 0 and (not self.packing or self.mlm_weight == 0):
            raise TrainConfigError(
                "train.sop_weight > 0 needs packed rows (packing: true) and the MLM objective "
                "(mlm_weight > 0): sentence pairs are cut from the packed MLM rows"
            )
        if self.mlm_weight == 0 and self.contrastive_weight == 0:
            raise TrainConfigError(
                "train.mlm_weight=0 and train.contrastive_weight=0 leave nothing to train: "
                "set at least one of them > 0"
            )
        check(self.contrastive_batch_size >= 2, "contrastive_batch_size",
              self.contrastive_batch_size, ">= 2 (in-batch negatives need a second pair)")  # fmt: skip
        check(self.contrastive_max_length >= 3, "contrastive_max_length",
              self.contrastive_max_length, ">= 3 ([CLS], a token, [SEP])")  # fmt: skip
        check(self.pooling in POOLINGS, "pooling", self.pooling, f"one of {list(POOLINGS)}")
        check(math.isfinite(self.temperature) and self.temperature > 0, "temperature",
              self.temperature, "a finite number > 0")  # fmt: skip
        if self.init_from is not None:
            check(self.init_from.strip() != "", "init_from", self.init_from,
                  "a checkpoint directory or null")  # fmt: skip

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step for one process (packed rows are always full)."""
        return self.batch_size * self.grad_accum_steps * self.max_seq_length


# BertConfig fields that the train section sets: `pooling` is chosen with the objective
# (train.pooling) and only recorded in the model's config.json, so `--pooling` stays unambiguous.
TRAIN_OWNED_MODEL_FIELDS = frozenset({"pooling"})


def model_field_names() -> set[str]:
    """Names accepted in the `model:` section (the fields of model.BertConfig but pooling)."""
    names = {f.name for f in dataclasses.fields(BertConfig) if f.init}
    return names - TRAIN_OWNED_MODEL_FIELDS


def _parse_cli_value(text: str) -> Any:
    """A command-line string as YAML would read it (`true`, `12`, `null`, lists), else the string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(
    model_section: dict[str, Any], train_section: dict[str, Any], overrides: list[tuple[str, str]]
) -> None:
    """Apply `(key, value)` overrides in place; keys are `model.x`, `train.x` or a flat `x`.

    A flat key must name a field of exactly one section. Unknown keys raise TrainConfigError.
    """
    model_names = model_field_names()
    train_names = {f.name for f in dataclasses.fields(TrainConfig)}
    train_hints = typing.get_type_hints(TrainConfig)
    for raw_key, raw_value in overrides:
        key = raw_key.replace("-", "_")
        section, _, name = key.rpartition(".")
        if section == "":
            in_model, in_train = name in model_names, name in train_names
            if in_model and in_train:
                raise TrainConfigError(
                    f"--{raw_key} is ambiguous: use --model.{name} or --train.{name}"
                )
            if not (in_model or in_train):
                raise TrainConfigError(f"unknown setting --{raw_key}")
            section = "model" if in_model else "train"
        if section == "model":
            if name not in model_names:
                raise TrainConfigError(f"unknown model setting --{raw_key}")
            model_section[name] = _parse_cli_value(raw_value)
        elif section == "train":
            if name not in train_names:
                raise TrainConfigError(f"unknown train setting --{raw_key}")
            # Strings stay strings for str fields (e.g. a cache_dir named "123").
            hint = train_hints[name]
            train_section[name] = raw_value if hint is str else _parse_cli_value(raw_value)
        else:
            raise TrainConfigError(f"unknown setting --{raw_key}: section must be model or train")


def load_run_config(
    path: str | Path | None, overrides: list[tuple[str, str]] | None = None
) -> tuple[dict[str, Any], TrainConfig]:
    """Read a YAML (or JSON) run config and apply overrides.

    Returns the model section as a plain dict (BertConfig fields; vocab_size is completed from the
    tokenizer later) and a validated TrainConfig.
    """
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        loaded = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise TrainConfigError(f"{path}: top level must be a mapping with model/train sections")
        data = loaded
    # "run" is the provenance a checkpoint's training_config.yaml carries; it is ignored, so
    # that file can be passed back as --config.
    unknown = sorted(set(data) - {"model", "train", "run"})
    if unknown:
        raise TrainConfigError(
            f"{path}: unknown section(s) {unknown}; expected 'model' and 'train'"
        )
    model_section = dict(data.get("model") or {})
    train_section = dict(data.get("train") or {})
    model_names = model_field_names()
    bad = sorted(set(model_section) - model_names)
    if bad:
        raise TrainConfigError(f"{path}: unknown model setting(s) {bad}")
    apply_overrides(model_section, train_section, overrides or [])
    return model_section, TrainConfig.from_dict(train_section)
