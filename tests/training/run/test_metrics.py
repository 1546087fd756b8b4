"""training.run.metrics without the `train` extra: plotting names the extra, a run only warns."""

from __future__ import annotations

import logging
import sys

import pytest

from training.run import metrics
from training.run.metrics import MetricsLogger, RunLog


def test_plotting_without_matplotlib_names_the_extra_and_a_run_only_warns(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    with pytest.raises(ImportError, match=r"pip install 'bertserve\[train\]'"):
        metrics.pyplot()
    log = RunLog(MetricsLogger(tmp_path, tensorboard=False), None, time_mode=False)
    log.metrics.log(1, {"train_loss": 1.0})
    with caplog.at_level(logging.WARNING, logger="training.run.metrics"):
        log.close(tmp_path / "curves.png")  # the checkpoint is saved by then: no traceback
    assert not (tmp_path / "curves.png").exists()
    assert "curves.png not drawn" in caplog.text and "bertserve[train]" in caplog.text
    assert metrics.read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "train_loss": 1.0}]
