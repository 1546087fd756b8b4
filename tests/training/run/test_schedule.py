"""LR schedule: warmup + cosine values computed by hand, step and wall-clock modes."""

from __future__ import annotations

import itertools
import math

import pytest

from training.run.schedule import LRSchedule, lr_at


@pytest.mark.parametrize(
    ("progress", "expected"),
    [
        (0, 0.0),
        (5, 5e-4),  # half way up the warmup
        (10, 1e-3),  # the peak
        (35, 1e-3 * 0.5 * (1 + math.cos(math.pi * 0.25))),  # a quarter of the decay: ~8.54e-4
        (60, 5e-4),  # half way down
        (110, 0.0),
        (500, 0.0),  # past the end: min_lr
    ],
)
def test_lr_at_known_values(progress, expected):
    got = lr_at(progress, 110, peak_lr=1e-3, warmup=10, min_lr=0.0)
    assert got == pytest.approx(expected, abs=1e-12)


def test_lr_at_min_lr_floor_and_no_warmup():
    assert lr_at(0, 100, peak_lr=1.0, warmup=0, min_lr=0.1) == pytest.approx(1.0)
    assert lr_at(50, 100, peak_lr=1.0, warmup=0, min_lr=0.1) == pytest.approx(0.55)
    assert lr_at(100, 100, peak_lr=1.0, warmup=0, min_lr=0.1) == pytest.approx(0.1)


def test_lr_at_is_monotone_up_then_down():
    values = [lr_at(p, 200, peak_lr=1.0, warmup=20) for p in range(201)]
    peak = values.index(max(values))
    assert peak == 20
    assert all(a <= b for a, b in itertools.pairwise(values[: peak + 1]))
    assert all(a >= b for a, b in itertools.pairwise(values[peak:]))


@pytest.mark.parametrize("bad", [{"total": 0}, {"total": 10, "warmup": 11}])
def test_lr_at_rejects_bad_shapes(bad):
    kwargs = {"total": 10, "warmup": 1} | bad
    with pytest.raises(ValueError, match="must be"):
        lr_at(1, kwargs["total"], peak_lr=1.0, warmup=kwargs["warmup"])


def test_step_schedule_evaluates_the_end_of_each_step():
    s = LRSchedule(peak_lr=1e-3, min_lr=0.0, warmup_fraction=0.1, max_steps=100)
    assert s.lr(0) == pytest.approx(1e-4)  # step 0 trains at peak/warmup, not at 0
    assert s.lr(9) == pytest.approx(1e-3)
    assert s.lr(54) == pytest.approx(5e-4)  # (55 - 10) / 90 = half of the decay
    assert s.lr(99) == 0.0
    assert s.progress(25) == 0.25


def test_time_schedule_follows_elapsed_seconds_and_survives_resume():
    s = LRSchedule(peak_lr=1.0, min_lr=0.0, warmup_fraction=0.1, max_steps=10, budget_s=100.0)
    assert s.time_based
    # The step number is irrelevant in time mode: only seconds count.
    assert s.lr(step=999, elapsed_s=5.0) == pytest.approx(0.5)
    assert s.lr(step=0, elapsed_s=55.0) == pytest.approx(0.5)
    assert s.progress(0, 50.0) == 0.5
    # A resumed session adds its own seconds to those already spent.
    resumed = LRSchedule(peak_lr=1.0, min_lr=0.0, warmup_fraction=0.1, max_steps=10, budget_s=100.0)
    resumed.load_state_dict({**s.state_dict(), "elapsed_offset": 40.0})
    assert resumed.lr(0, elapsed_s=15.0) == pytest.approx(s.lr(0, elapsed_s=55.0))
    assert resumed.progress(0, 60.0) == 1.0
