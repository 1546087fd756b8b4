"""RunConfig: the settings both run kinds share, declared and checked once, named by section."""

from __future__ import annotations

import dataclasses

import pytest

from training.finetune.config import FinetuneConfig, load_finetune_config
from training.pretrain.config import TrainConfig
from training.run.options import RunConfig, TrainConfigError


def test_both_run_kinds_share_runconfigs_fields_with_their_own_defaults():
    shared = {f.name for f in dataclasses.fields(RunConfig)}
    assert shared <= {f.name for f in dataclasses.fields(TrainConfig)}
    assert shared <= {f.name for f in dataclasses.fields(FinetuneConfig)}
    # Pretraining's defaults are RunConfig's; fine-tuning redeclares a few.
    assert TrainConfig().lr == RunConfig().lr == 1e-3
    assert (FinetuneConfig().lr, FinetuneConfig().adam_beta2, FinetuneConfig().batch_size) == (
        1e-4,
        0.999,
        32,
    )
    # Settings fine-tuning gained with the shared loop.
    assert FinetuneConfig(max_consecutive_nonfinite="3").max_consecutive_nonfinite == 3


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TrainConfig(lr=0), r"^train\.lr=0\.0 is invalid: must be > 0$"),
        (lambda: FinetuneConfig(lr=0), r"^finetune\.lr=0\.0 is invalid: must be > 0$"),
        (lambda: FinetuneConfig(keep_last=0), r"^finetune\.keep_last=0 is invalid"),
        (lambda: TrainConfig(max_consecutive_nonfinite=0), r"^train\.max_consecutive_nonfinite"),
        (lambda: FinetuneConfig(precision="fp16"), r"precision='fp16' is invalid: must be one"),
        (lambda: TrainConfig(warmup_fraction="1"), r"^train\.warmup_fraction=1\.0 is invalid"),
        (lambda: TrainConfig.from_dict({"nope": 1}), r"unknown train setting\(s\) \['nope'\]"),
        (lambda: load_finetune_config(None, {"nope": 1}), r"unknown finetune setting"),
    ],
)
def test_checks_name_the_section_and_the_key(make, message):
    with pytest.raises(TrainConfigError, match=message):
        make()
