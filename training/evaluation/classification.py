"""Evaluating a text classifier: predictions, accuracy, macro-F1, a per-class table, a confusion
matrix picture; and `bert-eval --task classify` on a checkpoint directory.

Macro-F1 is the mean over the classes that occur in the gold labels or the predictions of each
class's F1 (scikit-learn's `f1_score(average="macro")` with its default label set), so a rare class
counts as much as a common one: the figure that shows whether a model does more than guess the
big classes. Deliberately not here: thresholds, calibration, multi-label metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model import BertForMaskedLM, load_checkpoint
from tokenization import WordPieceTokenizer
from training.data.labelled import (
    LabelledDataError,
    TokenizedExamples,
    encode_examples,
    read_labelled,
)
from training.run.metrics import pyplot

__all__ = [
    "classification_metrics",
    "evaluate_checkpoint_classify",
    "format_report",
    "plot_confusion",
    "predict",
]

logger = logging.getLogger(__name__)


@torch.no_grad()
def predict(
    model: Any, data: TokenizedExamples, *, pad_id: int, batch_size: int = 128
) -> tuple[np.ndarray, float]:
    """(logits (N, C) float32, mean cross-entropy) of `model.classify` over `data`, in order.

    Batches hold rows of similar length (sorted), so little padding is built.
    """
    was_training = model.training
    model.eval()
    device = model.device
    order = np.argsort(data.lengths, kind="stable")
    logits = np.zeros((len(data), len(model.config.labels)), dtype=np.float32)
    total = 0.0
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids, mask, labels = (t.to(device) for t in data.batch(rows, pad_id))
        out = model.classify(ids, mask, labels=labels)
        logits[rows] = out.logits.float().cpu().numpy()
        total += float(out.loss) * len(rows)
    model.train(was_training)
    return logits, total / max(len(data), 1)


def classification_metrics(
    gold: np.ndarray, pred: np.ndarray, names: Sequence[str]
) -> dict[str, Any]:
    """accuracy, macro_f1 and per-class precision / recall / F1 / support."""
    C = len(names)
    conf = confusion(gold, pred, C)
    tp = np.diag(conf).astype(np.float64)
    support = conf.sum(axis=1)
    predicted = conf.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(C), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(C), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(C), where=denom > 0)
    present = (support > 0) | (predicted > 0)
    per_class = [
        {
            "label": names[c],
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
        }
        for c in range(C)
        if present[c]
    ]
    return {
        "accuracy": float(tp.sum() / max(len(gold), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "examples": len(gold),
        "per_class": per_class,
    }


def confusion(gold: np.ndarray, pred: np.ndarray, num_labels: int) -> np.ndarray:
    """(C, C) counts: row = gold label, column = predicted label."""
    out = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(out, (gold, pred), 1)
    return out


def format_report(metrics: dict[str, Any]) -> str:
    """The per-class table and the totals as text, rows sorted by support."""
    rows = sorted(metrics["per_class"], key=lambda r: -r["support"])
    width = max([len(r["label"]) for r in rows] + [5])
    lines = [f"{'label':<{width}}  precision  recall     f1  support"]
    for r in rows:
        lines.append(
            f"{r['label']:<{width}}  {r['precision']:9.3f}  {r['recall']:6.3f}  "
            f"{r['f1']:5.3f}  {r['support']:7d}"
        )
    lines.append(
        f"accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
        f"({metrics['examples']} examples)"
    )
    return "\n".join(lines)


def plot_confusion(
    gold: np.ndarray, pred: np.ndarray, names: Sequence[str], out_path: str | Path
) -> Path:
    """Draw the row-normalised confusion matrix (recall per gold label) with matplotlib (the
    `train` extra; an ImportError that says so without it)."""
    plt = pyplot()
    conf = confusion(gold, pred, len(names)).astype(np.float64)
    rows = conf.sum(axis=1, keepdims=True)
    norm = np.divide(conf, rows, out=np.zeros_like(conf), where=rows > 0)
    size = max(6.0, 0.28 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set(xlabel="predicted", ylabel="gold", title="confusion matrix (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    out = Path(out_path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def evaluate_checkpoint_classify(
    checkpoint: str | Path,
    files: Sequence[str | Path],
    *,
    batch_size: int = 128,
    max_length: int | None = None,
    device: str = "cpu",
    confusion_png: str | Path | None = None,
) -> dict[str, Any]:
    """Accuracy, macro-F1 and the per-class table of a classifier checkpoint on labelled files."""
    loaded = load_checkpoint(
        checkpoint,
        BertForMaskedLM,
        tokenizer_factory=WordPieceTokenizer.from_pretrained,
        map_location=device,
        allow_pickle=False,
    )
    model, tok = loaded.model, loaded.tokenizer
    names = model.config.labels
    if not names:
        raise LabelledDataError(f"{checkpoint}: not a classifier (no labels in config.json)")
    examples = [e for f in files for e in read_labelled(f)]
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({e.label for e in examples} - set(index))
    if unknown:
        raise LabelledDataError(f"label(s) {unknown[:8]} are not among the checkpoint's labels")
    gold = np.array([index[e.label] for e in examples], dtype=np.int64)
    data = encode_examples(examples, gold, tok, max_length or loaded.capabilities.max_tokens)
    logits, loss = predict(model, data, pad_id=tok.pad_token_id, batch_size=batch_size)
    pred = logits.argmax(axis=1)
    metrics = classification_metrics(gold, pred, names)
    metrics["loss"] = loss
    if confusion_png is not None:
        metrics["confusion_png"] = str(plot_confusion(gold, pred, names, confusion_png))
    return metrics
