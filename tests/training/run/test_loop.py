"""RunLoop is the one loop: pretraining and fine-tuning supply their steps and policies, not
loops of their own (the behaviours are tested end to end in pretrain/ and finetune/)."""

from __future__ import annotations

import pytest

from training.finetune.tuner import FineTuner
from training.pretrain.trainer import Trainer
from training.run.loop import RunLoop

SHARED = ("train", "start", "done", "end_step", "abort_if_diverged", "train_step", "agree")
SHARED += ("update", "training_state", "load", "open_log", "progress_bar")


@pytest.mark.parametrize("kind", [Trainer, FineTuner])
def test_run_kinds_extend_the_loop_and_do_not_copy_it(kind):
    assert issubclass(kind, RunLoop)
    copied = [name for name in SHARED if getattr(kind, name) is not getattr(RunLoop, name)]
    assert copied == []
    for hook in ("forward_backward", "after_step", "finish", "selection_loss", "run_config"):
        assert getattr(kind, hook) is not getattr(RunLoop, hook), hook
    assert (Trainer.kind, Trainer.config_file) == ("train", "training_config.yaml")
    assert (FineTuner.kind, FineTuner.config_file) == ("finetune", "finetune_config.yaml")
