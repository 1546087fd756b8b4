"""Atomic checkpoints: crash during save, `latest` pointer, rotation, best, non-finite weights."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from train_testing import cli_args

from model import BertForMaskedLM
from tokenization import WordPieceTokenizer
from training.run import checkpointing
from training.run.checkpointing import (
    CheckpointManager,
    NonFiniteWeightsError,
    assert_finite_weights,
)


def writer(text: str):
    def write(tmp: Path) -> None:
        (tmp / "payload.txt").write_text(text)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "more.txt").write_text(text * 2)

    return write


def test_save_publishes_a_complete_directory_and_moves_latest(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    assert mgr.latest() is None
    p = mgr.save(mgr.name_for(5), writer("five"), step=5)
    assert p == tmp_path / "checkpoint-000005"
    assert (p / "payload.txt").read_text() == "five"
    assert (p / "sub" / "more.txt").read_text() == "fivefive"
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-000005"
    assert mgr.latest() == p
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".latest*"))


def test_a_failure_while_writing_keeps_the_previous_checkpoint_latest(tmp_path):
    mgr = CheckpointManager(tmp_path)
    good = mgr.save(mgr.name_for(1), writer("one"), step=1)

    def crash(tmp: Path) -> None:
        (tmp / "payload.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        mgr.save(mgr.name_for(2), crash, step=2)
    assert mgr.latest() == good
    assert not (tmp_path / "checkpoint-000002").exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_leftovers_of_a_killed_writer_are_never_latest_and_get_cleaned(tmp_path):
    mgr = CheckpointManager(tmp_path)
    good = mgr.save(mgr.name_for(1), writer("one"), step=1)
    # What a process killed mid-save leaves: a temporary directory with part of the files.
    stale = tmp_path / ".tmp-checkpoint-000002-99999"
    stale.mkdir()
    (stale / "payload.txt").write_text("ha")
    pointer = tmp_path / ".latest.tmp-99999"  # killed between writing and renaming the pointer
    pointer.write_text("checkpoint-000002\n")
    assert mgr.latest() == good
    CheckpointManager(tmp_path)  # the next run opens the directory
    assert not stale.exists() and not pointer.exists()
    assert mgr.latest() == good


def test_rotation_keeps_the_last_m_and_the_best(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for step, loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0)]:
        mgr.save(mgr.name_for(step), writer(str(step)), step=step, valid_loss=loss)
    names = sorted(p.name for p in mgr.periodic())
    assert names == ["checkpoint-000002", "checkpoint-000004", "checkpoint-000005"]
    assert mgr.best() == {"name": "checkpoint-000002", "step": 2, "valid_loss": 1.0}
    assert mgr.latest().name == "checkpoint-000005"
    # "final" replaces itself atomically and is never rotated.
    mgr.save("final", writer("a"), step=6)
    mgr.save("final", writer("b"), step=6)
    assert (tmp_path / "final" / "payload.txt").read_text() == "b"
    assert mgr.latest().name == "final"


class _Killed(BaseException):
    """Stands in for kill -9: nothing after it runs (not even `except Exception` handlers)."""


@pytest.mark.parametrize("killed_at_write", [1, 2])
def test_a_kill_between_the_two_pointers_never_loses_the_best_checkpoint(
    tmp_path, monkeypatch, killed_at_write
):
    losses = {1: 3.0, 2: 1.0, 3: 2.0, 4: 4.0, 5: 5.0}  # checkpoint 2 is the best of the run
    mgr = CheckpointManager(tmp_path, keep_last=2)
    mgr.save(mgr.name_for(1), writer("1"), step=1, valid_loss=losses[1])
    real_write = checkpointing.atomic_write_text
    writes = {"n": 0}

    def dying_write(path: Path, text: str) -> None:
        writes["n"] += 1
        if writes["n"] == killed_at_write:  # the 1st or 2nd pointer update of save(2)
            raise _Killed
        real_write(path, text)

    monkeypatch.setattr(checkpointing, "atomic_write_text", dying_write)
    with pytest.raises(_Killed):
        mgr.save(mgr.name_for(2), writer("2"), step=2, valid_loss=losses[2])
    monkeypatch.setattr(checkpointing, "atomic_write_text", real_write)
    # What the trainer does next: resume from `latest` and save every later checkpoint again.
    mgr = CheckpointManager(tmp_path, keep_last=2)
    resumed = int(mgr.latest().name.split("-")[1])
    for step in range(resumed + 1, 6):
        mgr.save(mgr.name_for(step), writer(str(step)), step=step, valid_loss=losses[step])
    assert mgr.best() == {"name": "checkpoint-000002", "step": 2, "valid_loss": 1.0}
    assert (tmp_path / "checkpoint-000002" / "payload.txt").read_text() == "2"


def test_non_finite_weights_are_refused():
    model = torch.nn.Linear(2, 2)
    assert_finite_weights(model)
    with torch.no_grad():
        model.bias[0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="'bias'"):
        assert_finite_weights(model)


CRASHING_RUN = textwrap.dedent(
    """
    import os, sys, torch
    from training.pretrain import cli
    real_save = torch.save
    def save(obj, f, *a, **k):
        # Die (like kill -9) while the second checkpoint is being written: after the model
        # and tokenizer files, before training_state.pt.
        if isinstance(obj, dict) and obj.get("step") == 8:
            os._exit(17)
        return real_save(obj, f, *a, **k)
    torch.save = save
    sys.exit(cli.main(sys.argv[1:]))
    """
)


def test_a_process_killed_during_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    out = tmp_path / "run"
    args = cli_args(tmp_path, out, "--max-steps", "12", "--save-every", "4", valid=False)
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_RUN, *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 17, proc.stderr[-2000:]
    mgr = CheckpointManager(out, writer=False)
    latest = mgr.latest()
    assert latest is not None and latest.name == "checkpoint-000004"
    assert list(out.glob(".tmp-checkpoint-000008-*"))  # the half-written one is still there...
    model = BertForMaskedLM.from_pretrained(latest)  # ...but latest is complete and loads
    assert WordPieceTokenizer.from_pretrained(latest).vocab_size == model.config.vocab_size
    assert torch.load(latest / "training_state.pt", weights_only=False)["step"] == 4
    # Resuming picks checkpoint 4, cleans the leftover and finishes the run.
    from training.pretrain.cli import main

    assert main([*args, "--resume"]) == 0
    assert not list(out.glob(".tmp-*"))
    assert CheckpointManager(out).latest().name == "final"
