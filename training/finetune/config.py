"""Fine-tuning configuration: `FinetuneConfig` and its YAML + command-line loader.

A recipe is a YAML file with one `finetune:` section of `FinetuneConfig` fields
(`configs/finetune_supersense.yaml`); `bert-finetune` flags override it, and anything unknown is
a `TrainConfigError` naming the key. Values are coerced and checked as the pretraining config's
are (`training.pretrain.config.coerce_value`).

Deliberately not here: file paths (command-line arguments of a run) and the model shape (it is
the checkpoint's).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from training.data.labelled import CLASS_WEIGHTINGS
from training.pretrain.config import TrainConfigError, _check, coerce_value, from_known_keys

__all__ = ["FinetuneConfig", "load_finetune_config"]

SECTION = "finetune"


@dataclass
class FinetuneConfig:
    """Every knob of a fine-tuning run but the paths and the model."""

    # --- length of the run: the first limit reached ends it ---
    epochs: float | None = 3.0  # passes over the training file (the schedule's length)
    max_steps: int | None = None  # overrides epochs as the schedule's length
    time_budget_minutes: float | None = None  # lay the schedule over wall-clock time instead
    # --- optimisation (AdamW; HF Trainer's defaults unless noted) ---
    lr: float = 1e-4
    min_lr: float = 0.0
    lr_schedule: Literal["triangular", "cosine"] = "triangular"  # linear decay, as HF's default
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 disables clipping
    batch_size: int = 32
    # --- data ---
    max_length: int = 128  # tokens per text, [CLS] and [SEP] included
    class_weighting: str = (
        "none"  # none | balanced | sqrt (see training.data.labelled.class_weights)
    )
    # Dropout of the whole model while fine-tuning (encoder and head: hidden_dropout_prob in
    # config.json, which transformers' classifier heads use too); None: the checkpoint's.
    dropout: float | None = None
    seed: int = 0
    # --- evaluation, checkpoints, logging ---
    eval_every: int = 0  # steps; 0 = once per epoch (and always at the end)
    eval_batch_size: int = 128
    keep_last: int = 1  # periodic checkpoints kept for --resume (the best one is kept too)
    log_every: int = 20
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = 0  # 0 = torch's default
    tensorboard: bool = True
    plot: bool = True
    progress_bar: bool = True

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = coerce_value(f.name, getattr(self, f.name), hints[f.name])
            setattr(self, f.name, value)
        if self.epochs is None and self.max_steps is None and self.time_budget_minutes is None:
            raise TrainConfigError(
                "finetune needs a length: set epochs, max_steps or time_budget_minutes"
            )
        if self.epochs is not None:
            _check(math.isfinite(self.epochs) and self.epochs > 0, "epochs", self.epochs, "> 0")
        if self.max_steps is not None:
            _check(self.max_steps >= 1, "max_steps", self.max_steps, ">= 1")
        if self.time_budget_minutes is not None:
            _check(self.time_budget_minutes > 0, "time_budget_minutes",
                   self.time_budget_minutes, "> 0")  # fmt: skip
        _check(self.lr > 0, "lr", self.lr, "> 0")
        _check(0 <= self.min_lr <= self.lr, "min_lr", self.min_lr, f"in [0, lr={self.lr}]")
        _check(0 <= self.warmup_fraction < 1, "warmup_fraction", self.warmup_fraction, "in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        for name in ("adam_beta1", "adam_beta2"):
            _check(0.0 <= getattr(self, name) < 1.0, name, getattr(self, name), "in [0, 1)")
        _check(self.adam_eps > 0, "adam_eps", self.adam_eps, "> 0")
        _check(self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm, ">= 0")
        for name in ("batch_size", "eval_batch_size", "log_every", "keep_last"):
            _check(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        for name in ("eval_every", "num_threads"):
            _check(getattr(self, name) >= 0, name, getattr(self, name), ">= 0")
        _check(self.max_length >= 3, "max_length", self.max_length, ">= 3 ([CLS], a token, [SEP])")
        _check(self.class_weighting in CLASS_WEIGHTINGS, "class_weighting",
               self.class_weighting, f"one of {list(CLASS_WEIGHTINGS)}")  # fmt: skip
        if self.dropout is not None:
            _check(0 <= self.dropout < 1, "dropout", self.dropout, "in [0, 1) or null")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        return from_known_keys(cls, d, "finetune")


def load_finetune_config(
    path: str | Path | None, overrides: dict[str, Any] | None = None
) -> FinetuneConfig:
    """The recipe of `path` (a YAML file with a `finetune:` section; None: the defaults) with
    `overrides` (field -> value, e.g. from command-line flags) applied on top."""
    section: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise TrainConfigError(f"{path}: not valid YAML ({e})") from None
        # "run" is the provenance a finished run's finetune_config.yaml carries: ignored, so
        # that file can be passed back as --config.
        if not isinstance(data, dict) or set(data) - {SECTION, "run"}:
            raise TrainConfigError(f"{path}: expected one top-level section '{SECTION}:'")
        section = dict(data.get(SECTION) or {})
    section.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return FinetuneConfig.from_dict(section)
