"""Run metrics: a JSONL file, TensorBoard events and the end-of-run `curves.png`.

`MetricsLogger.log(step, {...})` appends one JSON object per record to `metrics.jsonl` (kept across
resumes, so the file and the plot cover the whole run) and mirrors scalars to TensorBoard under
`tensorboard/`. `plot_curves` reads the JSONL back and draws train/valid loss and accuracy with
matplotlib's Agg backend (no display needed).

Only rank 0 creates a logger. Deliberately not here: the progress bar (the trainer owns it) and
any remote experiment tracker.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger", "plot_curves", "read_metrics"]

logger = logging.getLogger(__name__)


class MetricsLogger:
    def __init__(self, directory: str | Path, *, tensorboard: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "metrics.jsonl"
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.directory / "tensorboard"))
            except ImportError as e:  # tensorboard is a declared dependency; degrade, don't die
                logger.warning("TensorBoard disabled: %s", e)

    def log(self, step: int, values: dict[str, Any]) -> None:
        record = {"step": step, **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self._tb.add_scalar(key.replace("_", "/", 1), value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl; a torn last line (crash mid-write) is skipped."""
    out = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    # A resumed run re-logs steps after its checkpoint: keep the last value logged for a step.
    by_step: dict[int, float] = {}
    for r in records:
        v = r.get(key)
        if isinstance(v, int | float) and math.isfinite(v):
            by_step[int(r["step"])] = float(v)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def plot_curves(metrics_path: str | Path, out_path: str | Path) -> Path:
    """Draw MLM loss (left) and masked-token accuracy (middle) into `out_path`; runs with a
    contrastive objective get a third panel (InfoNCE loss and valid retrieval recall@1/MRR).

    The train MLM curve is `train_mlm_loss` when logged (joint runs, whose `train_loss` is the
    weighted sum of both objectives), else `train_loss`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    contrastive = bool(_series(records, "train_contrastive_loss")[0])
    fig, axes = plt.subplots(1, 3 if contrastive else 2, figsize=(16 if contrastive else 11, 4))
    ax_loss, ax_acc = axes[0], axes[1]
    train_mlm = "train_mlm_loss" if _series(records, "train_mlm_loss")[0] else "train_loss"
    panels = [
        (train_mlm, "train", ax_loss),
        ("valid_loss", "valid", ax_loss),
        ("train_accuracy", "train", ax_acc),
        ("valid_accuracy", "valid", ax_acc),
    ]
    if contrastive:
        ax_nce = axes[2]
        ax_ret = ax_nce.twinx()
        panels += [
            ("train_contrastive_loss", "train InfoNCE (left)", ax_nce),
            ("valid_retrieval_recall_at_1", "valid recall@1 (right)", ax_ret),
            ("valid_retrieval_mrr", "valid MRR (right)", ax_ret),
        ]
    # Fixed colours: the contrastive panel's two y axes would otherwise restart the cycle.
    colours = {"train_contrastive_loss": "C2", "valid_retrieval_recall_at_1": "C3"}
    for key, label, ax in panels:
        steps, values = _series(records, key)
        if steps:
            ax.plot(
                steps,
                values,
                label=label,
                marker="o" if len(steps) < 30 else None,
                color=colours.get(key, "C0" if label == "train" else "C1"),
            )
    ax_loss.set(title="MLM loss", xlabel="step", ylabel="cross-entropy")
    ax_acc.set(title="masked-token accuracy", xlabel="step", ylabel="accuracy")
    if contrastive:
        ax_nce.set(title="contrastive stage", xlabel="step", ylabel="InfoNCE loss")
        ax_ret.set(ylabel="retrieval")
        ax_ret.plot([], [], color="C2", label="train InfoNCE (left)")  # one legend for both axes
        ax_ret.legend(loc="center right")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    out = Path(out_path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
