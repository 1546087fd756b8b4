"""Run metrics: a JSONL file, TensorBoard events and the end-of-run `curves.png`.

`MetricsLogger.log(step, {...})` appends one JSON object per record to `metrics.jsonl` (kept across
resumes, so the file and the plot cover the whole run) and mirrors scalars to TensorBoard under
`tensorboard/`. `plot_curves` reads the JSONL back and draws train/valid loss and accuracy with
matplotlib's Agg backend (no display needed). matplotlib and tensorboard are the `train` extra
(`pip install 'bertserve[train]'`), imported only when used: without them a run logs a warning,
keeps its JSONL and checkpoints, and draws no curves.

`RunLog` is what the training loop talks to: it averages step statistics over each logging
window, writes their records (rank 0 only), drives the progress bar and keeps the session's
totals. Deliberately not here: any remote experiment tracker.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.data.jsonl import read_jsonl

__all__ = [
    "MetricsLogger",
    "RunLog",
    "StepStats",
    "plot_curves",
    "plot_finetune_curves",
    "plot_rerank_curves",
    "pyplot",
    "read_metrics",
]

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
            except ImportError as e:  # the `train` extra is not installed; degrade, don't die
                logger.warning("TensorBoard disabled (pip install 'bertserve[train]'): %s", e)

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


@dataclass
class StepStats:
    """What one optimizer step reports (identical on every rank)."""

    loss: float  # mean micro-batch loss over ranks; nan/inf when the step was skipped
    finite: bool
    tokens: int  # tokens processed by all ranks
    seconds: float
    lr: float
    train_accuracy: float | None  # masked-token accuracy of the last micro-batch, if asked
    stop_requested: bool  # some rank got SIGINT/SIGTERM
    elapsed: float  # agreed session seconds after the step
    mlm_loss: float | None = None  # unweighted parts of `loss` (None: that objective is off)
    contrastive_loss: float | None = None


_LOSS_PARTS = {"mlm": "train_mlm_loss", "nce": "train_contrastive_loss"}  # bar label -> key


class RunLog:
    """Window averages of `StepStats` -> metrics records and the progress bar; session totals.

    `metrics` and `bar` are None on ranks other than 0 (and without a bar when it is off); the
    totals are kept everywhere, since every rank returns them.
    """

    def __init__(self, metrics: MetricsLogger | None, bar: Any | None, *, time_mode: bool) -> None:
        self.metrics, self.bar, self.time_mode = metrics, bar, time_mode
        self.first_loss: float | None = None
        self.last_loss: float | None = None
        self.session_tokens, self.session_time, self.steps = 0, 0.0, 0
        self._reset()

    def _reset(self) -> None:
        self._loss, self._n, self._tokens, self._time = 0.0, 0, 0, 0.0
        self._mlm, self._nce = 0.0, 0.0

    def add(self, st: StepStats) -> None:
        self.steps += 1
        self.session_tokens += st.tokens
        self.session_time += st.seconds
        self._tokens += st.tokens
        self._time += st.seconds
        if st.finite:
            self._loss += st.loss
            self._n += 1
            self._mlm += st.mlm_loss or 0.0
            self._nce += st.contrastive_loss or 0.0

    def record(self, step: int, st: StepStats, *, elapsed: float, skipped: int) -> None:
        """Close the window: one metrics record, the bar's figures."""
        n = self._n
        record: dict[str, Any] = {
            "train_loss": self._loss / n if n else float("nan"),
            "lr": st.lr,
            "tokens_per_s": self._tokens / max(self._time, 1e-9),
            "elapsed_s": elapsed,
            "skipped_steps": skipped,
        }
        if st.train_accuracy is not None:
            record["train_accuracy"] = st.train_accuracy
        if n and st.contrastive_loss is not None:  # the loss's two parts
            if st.mlm_loss is not None:
                record["train_mlm_loss"] = self._mlm / n
            record["train_contrastive_loss"] = self._nce / n
        if n:
            self.last_loss = record["train_loss"]
            if self.first_loss is None:
                self.first_loss = self.last_loss
        if self.metrics is not None:
            self.metrics.log(step, record)
        if self.bar is not None:
            shown = {"loss": f"{record['train_loss']:.3f}"}
            shown.update({k: f"{record[v]:.3f}" for k, v in _LOSS_PARTS.items() if v in record})
            self.bar.set_postfix(**shown, lr=f"{st.lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
        self._reset()

    def advance(self, elapsed: float) -> None:
        """Move the bar: to the elapsed seconds (time budget) or by one step."""
        if self.bar is not None:
            self.bar.update(max(0, int(elapsed) - self.bar.n) if self.time_mode else 1)

    def valid(self, step: int, valid: dict[str, float] | None) -> None:
        if valid is not None and self.metrics is not None:
            self.metrics.log(step, {f"valid_{k}": v for k, v in valid.items()})

    @property
    def tokens_per_s(self) -> float:
        return self.session_tokens / max(self.session_time, 1e-9)

    def close(
        self, plot_to: Path | None = None, plot: Callable[[Path, Path], Any] | None = None
    ) -> None:
        """Close the bar and the metrics; draw them into `plot_to` with `plot` (default
        `plot_curves`, pretraining's panels) unless that is None."""
        if self.bar is not None:
            self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
            if plot_to is not None:
                try:
                    (plot or plot_curves)(self.metrics.path, plot_to)
                except ImportError as e:  # hours of training must not end in a traceback
                    logger.warning("%s not drawn: %s", plot_to, e)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl ([] before the first); a line torn by a crash mid-write is
    skipped."""
    if not Path(path).is_file():
        return []
    return [record for _, record in read_jsonl(path, skip_invalid=True)]


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    # A resumed run re-logs steps after its checkpoint: keep the last value logged for a step.
    by_step: dict[int, float] = {}
    for r in records:
        v = r.get(key)
        if isinstance(v, int | float) and math.isfinite(v):
            by_step[int(r["step"])] = float(v)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def pyplot() -> Any:
    """`matplotlib.pyplot` on the Agg backend (no display), or an ImportError naming the extra.

    matplotlib is not a dependency of serving, so the API image and `pip install bertserve`
    leave it out; training installs it with `pip install 'bertserve[train]'`.
    """
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            "plotting needs matplotlib, which is in the training extra: "
            "pip install 'bertserve[train]' (or set plot to false)"
        ) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(metrics_path: str | Path, out_path: str | Path) -> Path:
    """Draw MLM loss (left) and masked-token accuracy (middle) into `out_path`; runs with a
    contrastive objective get a third panel (InfoNCE loss and valid retrieval recall@1/MRR).

    The train MLM curve is `train_mlm_loss` when logged (joint runs, whose `train_loss` is the
    weighted sum of both objectives), else `train_loss`.
    """
    plt = pyplot()
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
    return _save(fig, (ax_loss, ax_acc), out_path)


def plot_finetune_curves(metrics_path: str | Path, out_path: str | Path) -> Path:
    """A fine-tuning run's curves: train/valid loss (left), train/valid accuracy and valid
    macro-F1 (right)."""
    return _two_panels(
        metrics_path,
        out_path,
        [("train_loss", "train"), ("valid_loss", "valid")],
        [
            ("train_accuracy", "train accuracy"),
            ("valid_accuracy", "valid accuracy"),
            ("valid_macro_f1", "valid macro-F1"),
        ],
        titles=(("classification loss", "cross-entropy"), ("accuracy and macro-F1", "score")),
    )


def plot_rerank_curves(metrics_path: str | Path, out_path: str | Path) -> Path:
    """A reranker's curves: its training loss (left); the share of training groups it orders
    right, and dev recall@1 and MRR beside the embedding model's alone (right)."""
    return _two_panels(
        metrics_path,
        out_path,
        [("train_loss", "train")],
        [
            ("train_accuracy", "train: positive first in its group"),
            ("valid_recall@1", "dev recall@1, reranked"),
            ("valid_mrr", "dev MRR, reranked"),
            ("valid_first_stage_recall@1", "dev recall@1, embeddings alone"),
            ("valid_first_stage_mrr", "dev MRR, embeddings alone"),
        ],
        titles=(("reranking loss", "loss"), ("ranking", "score")),
    )


def _two_panels(
    metrics_path: str | Path,
    out_path: str | Path,
    left: list[tuple[str, str]],
    right: list[tuple[str, str]],
    *,
    titles: tuple[tuple[str, str], tuple[str, str]],
) -> Path:
    """Two panels of (metrics key, legend label) series against the step."""
    plt = pyplot()
    records = read_metrics(metrics_path)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, series, (title, ylabel) in zip(axes, (left, right), titles, strict=True):
        for colour, (key, label) in enumerate(series):
            steps, values = _series(records, key)
            if steps:
                marker = "o" if len(steps) < 30 else None
                ax.plot(steps, values, label=label, color=f"C{colour}", marker=marker)
        ax.set(title=title, xlabel="step", ylabel=ylabel)
    return _save(fig, tuple(axes), out_path)


def _save(fig: Any, axes: tuple[Any, ...], out_path: str | Path) -> Path:
    """Grid and legend on `axes`, then write the figure and free it."""
    plt = pyplot()
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    out = Path(out_path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
