"""Learning-rate schedule: linear warmup then cosine or linear decay, over steps or wall-clock time.

`lr_at` is a pure function of *progress*: a step count over `max_steps`, or, in time-budget mode
(as in the budget-BERT "cramming" recipe), elapsed seconds over the budget. The same curve is laid
over either axis, so a 45-minute run warms up for its first `warmup_fraction` of the 45 minutes and
ends at `min_lr` when the budget runs out whatever the step rate turns out to be.

Two decay shapes: "cosine" (half a cosine after the warmup) and "triangular" (a straight line
down: with `warmup_fraction` 0.5 it is the one-cycle triangle of the cramming recipe).

`LRSchedule` is the small stateful wrapper the trainer checkpoints (the time already spent, so a
resumed budget run continues where it left off). Deliberately not here: per-group multipliers,
restarts, or any other schedule shape.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["LRSchedule", "lr_at"]


SHAPES = ("cosine", "triangular")


def lr_at(
    progress: float,
    total: float,
    *,
    peak_lr: float,
    warmup: float,
    min_lr: float = 0.0,
    shape: str = "cosine",
) -> float:
    """Learning rate at `progress` units of a `total`-unit schedule (units: steps or seconds).

    Linear warmup from 0 to `peak_lr` over `[0, warmup]`, then half a cosine (shape "cosine") or
    a straight line ("triangular") from `peak_lr` down to `min_lr` over `[warmup, total]`, and
    `min_lr` beyond `total`.

    Worked example (peak 1e-3, warmup 10, total 110, min 0):
        lr_at(5, ...)   -> 5e-4   (half way up)
        lr_at(10, ...)  -> 1e-3   (the peak)
        lr_at(60, ...)  -> 5e-4   (half way down: 0.5 * (1 + cos(pi/2)))
        lr_at(110, ...) -> 0.0
        lr_at(60, ..., shape="triangular") -> 5e-4 as well; lr_at(85, ...) -> 2.5e-4
    """
    if shape not in SHAPES:
        raise ValueError(f"schedule shape {shape!r} must be one of {SHAPES}")
    if total <= 0:
        raise ValueError(f"schedule total={total!r} must be > 0")
    if not 0 <= warmup <= total:
        raise ValueError(f"schedule warmup={warmup!r} must be in [0, total={total!r}]")
    if progress < warmup:
        return peak_lr * max(progress, 0.0) / warmup
    if progress >= total:
        return min_lr
    ratio = (progress - warmup) / (total - warmup)
    if shape == "triangular":
        return min_lr + (1.0 - ratio) * (peak_lr - min_lr)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak_lr - min_lr)


class LRSchedule:
    """Step- or time-based schedule with checkpointable state.

    Step mode: `lr(step)` follows `lr_at(step, max_steps)`. Time mode (`budget_s` set): the
    caller reports elapsed training seconds and `lr` follows `lr_at(elapsed, budget_s)`;
    `elapsed_offset` carries the seconds spent before a resume.
    """

    def __init__(
        self,
        *,
        peak_lr: float,
        min_lr: float,
        warmup_fraction: float,
        max_steps: int,
        budget_s: float | None = None,
        shape: str = "cosine",
    ) -> None:
        if shape not in SHAPES:
            raise ValueError(f"schedule shape {shape!r} must be one of {SHAPES}")
        self.shape = shape
        self.peak_lr = peak_lr
        self.min_lr = min_lr
        self.warmup_fraction = warmup_fraction
        self.max_steps = max_steps
        self.budget_s = budget_s
        self.elapsed_offset = 0.0  # seconds of training done by earlier sessions (time mode)

    @classmethod
    def from_config(cls, cfg: Any, max_steps: int) -> LRSchedule:
        """The schedule a training config asks for (``lr``, ``min_lr``, ``warmup_fraction``,
        ``lr_schedule``, ``time_budget_minutes``: TrainConfig and FinetuneConfig alike)."""
        minutes = cfg.time_budget_minutes
        return cls(
            peak_lr=cfg.lr,
            min_lr=cfg.min_lr,
            warmup_fraction=cfg.warmup_fraction,
            max_steps=max_steps,
            budget_s=minutes * 60.0 if minutes is not None else None,
            shape=cfg.lr_schedule,
        )

    @property
    def time_based(self) -> bool:
        return self.budget_s is not None

    def lr(self, step: int, elapsed_s: float = 0.0) -> float:
        """LR for optimizer step `step` (0-based), `elapsed_s` seconds into this session.

        Step mode evaluates the curve at the end of the step (`step + 1`), so step 0 trains at
        peak/warmup rather than at 0 and the last step reaches `min_lr`.
        """
        if self.budget_s is not None:
            return lr_at(
                self.elapsed_offset + elapsed_s,
                self.budget_s,
                peak_lr=self.peak_lr,
                warmup=self.warmup_fraction * self.budget_s,
                min_lr=self.min_lr,
                shape=self.shape,
            )
        return lr_at(
            step + 1,
            self.max_steps,
            peak_lr=self.peak_lr,
            warmup=round(self.warmup_fraction * self.max_steps),
            min_lr=self.min_lr,
            shape=self.shape,
        )

    def progress(self, step: int, elapsed_s: float = 0.0) -> float:
        """Fraction of the schedule done (drives the stop condition in time mode)."""
        if self.budget_s is not None:
            return (self.elapsed_offset + elapsed_s) / self.budget_s
        return step / self.max_steps

    def state_dict(self) -> dict[str, Any]:
        return {
            "peak_lr": self.peak_lr,
            "min_lr": self.min_lr,
            "warmup_fraction": self.warmup_fraction,
            "max_steps": self.max_steps,
            "budget_s": self.budget_s,
            "shape": self.shape,
            "elapsed_offset": self.elapsed_offset,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Only the time already spent is carried over; the shape comes from the current config
        # (so a resumed run may, deliberately, extend max_steps).
        self.elapsed_offset = float(state.get("elapsed_offset", 0.0))
