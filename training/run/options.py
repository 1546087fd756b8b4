"""Settings every training run shares: `RunConfig`, the coercion and checks of a setting, and
`TrainConfigError`.

A run kind's config (`pretrain.config.TrainConfig`, `finetune.config.FinetuneConfig`) is a
dataclass subclass of `RunConfig`: it adds its own fields and checks, and redeclares a shared
field only to give it another default (a fine-tuning recipe is not a pretraining one). Values from
YAML or a command line are coerced to each field's type once, in `__post_init__`
(`coerce_value`: YAML's `1e-3`, which PyYAML reads as a string, still becomes a float), then
checked there (`RunConfig.check` names the section, the key and what it must be); a key that is
not a field is an error naming it (`from_known_keys`).

Deliberately not here: reading a config from files and flags (each run kind's loader) and what a
setting does to a loop (run/loop.py and the run kinds).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self, TypeVar

__all__ = [
    "Precision",
    "RunConfig",
    "TrainConfigError",
    "coerce_value",
    "from_known_keys",
]

Precision = Literal["auto", "fp32", "bf16", "fp16"]


class TrainConfigError(ValueError):
    """A run setting is unknown, of the wrong type, or out of range."""


T = TypeVar("T")


@dataclass
class RunConfig:
    """The settings of every training run: optimisation, length, numerics, checkpoints, logging.

    Defaults are pretraining's; a run kind redeclares the fields whose default differs for it.
    """

    section: ClassVar[str] = "run"  # the YAML section of the run kind, named in messages

    # --- optimisation ---
    batch_size: int = 64  # sequences per (micro-)batch per process
    lr: float = 1e-3  # peak learning rate; small BERTs tolerate far more than base's 1e-4
    min_lr: float = 0.0  # floor of the decay
    warmup_fraction: float = 0.06  # of max_steps, or of the time budget
    lr_schedule: Literal["cosine", "triangular"] = "cosine"  # decay after the warmup
    weight_decay: float = 0.01  # not applied to biases and LayerNorm weights
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98  # RoBERTa's value: steadier with large LRs and short runs
    adam_eps: float = 1e-6
    max_grad_norm: float = 1.0  # 0 disables clipping
    max_steps: int = 10_000  # the schedule's length (and a cap in time-budget mode)
    time_budget_minutes: float | None = None  # lay the schedule over wall-clock time instead
    seed: int = 0
    # --- numerics / hardware ---
    precision: Precision = "auto"  # auto: bf16 on CUDA/CPUs with native bf16, fp32 elsewhere
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = 0  # torch intra-op threads; 0 = torch's default (1 per process under DDP)
    max_consecutive_nonfinite: int = 5  # abort after this many skipped steps in a row
    # --- evaluation, checkpoints, logging ---
    eval_every: int = 500  # steps; 0 = only at the end
    eval_batch_size: int = 64
    keep_last: int = 2  # periodic checkpoints kept (the best one is kept in addition)
    log_every: int = 10  # steps between metric records
    tensorboard: bool = True
    plot: bool = True  # write curves.png at the end
    progress_bar: bool = True

    def __post_init__(self) -> None:
        """Coerce every field to its type, then check the shared ones (a run kind extends this
        with its own checks after calling it)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce_value(f.name, getattr(self, f.name), hints[f.name]))
        for name in (
            "batch_size", "eval_batch_size", "log_every", "keep_last", "max_consecutive_nonfinite"
        ):  # fmt: skip
            self.check(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        if self.max_steps is not None:  # a run kind may leave the length to other settings
            self.check(self.max_steps >= 1, "max_steps", self.max_steps, ">= 1")
        for name in ("eval_every", "num_threads"):
            self.check(getattr(self, name) >= 0, name, getattr(self, name), ">= 0")
        self.check(self.lr > 0, "lr", self.lr, "> 0")
        self.check(0 <= self.min_lr <= self.lr, "min_lr", self.min_lr, f"in [0, lr={self.lr}]")
        self.check(0.0 <= self.warmup_fraction < 1.0, "warmup_fraction", self.warmup_fraction,
                   "in [0, 1)")  # fmt: skip
        self.check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        for name in ("adam_beta1", "adam_beta2"):
            self.check(0.0 <= getattr(self, name) < 1.0, name, getattr(self, name), "in [0, 1)")
        self.check(self.adam_eps > 0, "adam_eps", self.adam_eps, "> 0")
        self.check(self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm, ">= 0")
        if self.time_budget_minutes is not None:
            self.check(self.time_budget_minutes > 0, "time_budget_minutes",
                       self.time_budget_minutes, "> 0 (or null for a step schedule)")  # fmt: skip
        if self.precision == "fp16" and self.device == "cpu":
            raise TrainConfigError("precision='fp16' needs CUDA (GradScaler); use 'bf16' on CPU")

    def check(self, ok: bool, name: str, value: Any, want: str) -> None:
        """TrainConfigError `<section>.<name>=<value> is invalid: must be <want>` unless `ok`."""
        if not ok:
            raise TrainConfigError(f"{self.section}.{name}={value!r} is invalid: must be {want}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Build from a mapping; unknown keys are errors naming the key."""
        return from_known_keys(cls, d, cls.section)


def from_known_keys(cls: type[T], d: dict[str, Any], what: str) -> T:
    """``cls(**d)`` for a dataclass, refusing keys that are not its fields (naming them)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise TrainConfigError(f"unknown {what} setting(s) {unknown}; known: {sorted(names)}")
    return cls(**d)


def coerce_value(name: str, value: Any, hint: Any) -> Any:
    """Convert `value` (from YAML or a command line string) to the type `hint`.

    `coerce_value("lr", "1e-3", float) -> 0.001`; `coerce_value("packing", "false", bool) -> False`;
    `coerce_value("x", "none", float | None) -> None`. Raises TrainConfigError naming `name`.
    """
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if type(None) in args and (value is None or str(value).lower() in ("none", "null", "")):
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce_value(name, value, inner[0])
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise TrainConfigError(f"{name}={value!r} is invalid: must be one of {list(choices)}")
        return value
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError(value)
        if hint is int:
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError(value)
                return int(value)
            if isinstance(value, str):
                f = float(value.replace("_", ""))  # allows "1e4" and "10_000"
                if not f.is_integer():
                    raise ValueError(value)
                return int(f)
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if hint is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        tname = getattr(hint, "__name__", str(hint))
        raise TrainConfigError(f"{name}={value!r} is invalid: expected {tname}") from None
    return value
