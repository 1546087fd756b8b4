"""Fine-tuning configuration: `FinetuneConfig` and its YAML + command-line loader.

A recipe is a YAML file with one `finetune:` section of `FinetuneConfig` fields
(`configs/finetune_supersense.yaml`, `configs/finetune_reranker.yaml`); `bert-finetune` flags
override it, and anything unknown is a `TrainConfigError` naming the key. `task` says what is
trained: a text classifier (`classify`) or a reranker (`rerank`: a cross-encoder, with the
settings of its negatives and its loss). Values are coerced and checked as every run's are
(`training.run.options.RunConfig`, which holds the settings fine-tuning shares with
pretraining).

Deliberately not here: file paths (command-line arguments of a run) and the model shape (it is
the checkpoint's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from training.data.labelled import CLASS_WEIGHTINGS
from training.run.options import RunConfig, TrainConfigError

__all__ = ["RERANK_LOSSES", "TASKS", "FinetuneConfig", "load_finetune_config"]

TASKS = ("classify", "rerank")
# listwise: softmax cross-entropy over (positive, negatives) per query; bce: each pair alone.
RERANK_LOSSES = ("listwise", "bce")


@dataclass
class FinetuneConfig(RunConfig):
    """Every knob of a fine-tuning run but the paths and the model: RunConfig's shared settings,
    some with fine-tuning's defaults (AdamW as HF Trainer sets it up unless noted), and its own."""

    section: ClassVar[str] = "finetune"

    task: str = "classify"  # classify | rerank (a one-label cross-encoder over query/text pairs)
    # --- length of the run: the first limit reached ends it ---
    epochs: float | None = 3.0  # passes over the training file (the schedule's length)
    max_steps: int | None = None  # overrides epochs as the schedule's length
    # --- optimisation: RunConfig's fields with fine-tuning's defaults ---
    lr: float = 1e-4
    lr_schedule: Literal["cosine", "triangular"] = "triangular"  # linear decay, as HF's default
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    batch_size: int = 32
    # --- data ---
    max_length: int = 128  # tokens per text, [CLS] and [SEP] included
    class_weighting: str = "none"  # none | balanced | sqrt (see data.labelled.class_weights)
    # Dropout of the whole model while fine-tuning (encoder and head: hidden_dropout_prob in
    # config.json, which transformers' classifier heads use too); None: the checkpoint's.
    dropout: float | None = None
    # --- rerank: batch_size is queries per step, each with its positive and its negatives ---
    loss: str = "listwise"  # listwise | bce (see training/finetune/reranker.py)
    hard_negatives: int = 7  # per query and step, drawn from its mined candidates
    mine_top_k: int = 30  # mined candidates per query: the embedding model's best non-positives
    in_batch_negatives: int = 1  # other queries' positives of the batch, per query and step
    # Weight of a second listwise term whose targets are the embedding model's softmax over each
    # group (cosines / distill_temperature): every negative's rank is taught, not only the
    # positive's. 0: labels alone.
    distill_weight: float = 0.0
    distill_temperature: float = 0.05  # the default checkpoint's contrastive temperature
    dev_candidates: int = 800  # training candidates held out (with their queries) as a dev set
    rerank_top_k: int = 20  # dev evaluation: the embedding model's top candidates reranked
    # --- evaluation, checkpoints, numerics: RunConfig's fields with fine-tuning's defaults ---
    eval_every: int = 0  # steps; 0 = once per epoch (and always at the end)
    eval_batch_size: int = 128
    keep_last: int = 1  # periodic checkpoints kept for --resume (the best one is kept too)
    log_every: int = 20
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # no fp16: no loss scaling here

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs is None and self.max_steps is None and self.time_budget_minutes is None:
            raise TrainConfigError(
                "finetune needs a length: set epochs, max_steps or time_budget_minutes"
            )
        if self.epochs is not None:
            self.check(math.isfinite(self.epochs) and self.epochs > 0, "epochs", self.epochs,
                       "> 0")  # fmt: skip
        self.check(self.max_length >= 3, "max_length", self.max_length,
                   ">= 3 ([CLS], a token, [SEP])")  # fmt: skip
        self.check(self.class_weighting in CLASS_WEIGHTINGS, "class_weighting",
                   self.class_weighting, f"one of {list(CLASS_WEIGHTINGS)}")  # fmt: skip
        if self.dropout is not None:
            self.check(0 <= self.dropout < 1, "dropout", self.dropout, "in [0, 1) or null")
        self.check(self.task in TASKS, "task", self.task, f"one of {list(TASKS)}")
        self.check(self.loss in RERANK_LOSSES, "loss", self.loss, f"one of {list(RERANK_LOSSES)}")
        for name in ("hard_negatives", "in_batch_negatives", "dev_candidates"):
            self.check(getattr(self, name) >= 0, name, getattr(self, name), ">= 0")
        self.check(self.distill_weight >= 0, "distill_weight", self.distill_weight, ">= 0")
        self.check(self.distill_temperature > 0, "distill_temperature", self.distill_temperature,
                   "> 0")  # fmt: skip
        for name in ("mine_top_k", "rerank_top_k"):
            self.check(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        if self.task == "rerank":
            self.check(self.hard_negatives + self.in_batch_negatives >= 1, "hard_negatives",
                       self.hard_negatives, "> 0 or in_batch_negatives > 0 (a query needs a "
                       "negative)")  # fmt: skip
            self.check(self.class_weighting == "none", "class_weighting", self.class_weighting,
                       "'none' for a reranker (one label)")  # fmt: skip


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
        if not isinstance(data, dict) or set(data) - {FinetuneConfig.section, "run"}:
            raise TrainConfigError(
                f"{path}: expected one top-level section '{FinetuneConfig.section}:'"
            )
        section = dict(data.get(FinetuneConfig.section) or {})
    section.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return FinetuneConfig.from_dict(section)
