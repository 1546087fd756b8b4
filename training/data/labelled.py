"""Labelled texts for fine-tuning: reading `label`/`text` files and turning them into token ids.

Three formats, told apart by the file's suffix:
- `.tsv` / `.csv`: a header line naming a `label` and a `text` column (any order, other columns
  ignored), then one example per line; fields may be quoted as the csv module writes them;
- `.jsonl`: one JSON object per line with `label` and `text` keys (labels may be numbers: they
  are used by their string form).
`read_columns` reads any named columns the same way (a reranker's `query` and `text` pairs).
Every problem (a missing column, an empty text, an undecodable line) is a `LabelledDataError`
naming the file and line, so a bad file fails before any training starts.

`LabelSet` fixes the label order (sorted by name, so the same training file gives the same ids
on every run) and `encode_examples` tokenizes texts into `TokenizedExamples`: a flat id array
with per-example offsets, as compact as the pretraining cache. Deliberately not here: text pairs
as classifier inputs (a reranker's pairs: data/rerank.py) and multi-label rows (one text, one
label per example).
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data.jsonl import read_jsonl

__all__ = [
    "LabelSet",
    "LabelledDataError",
    "TokenizedExamples",
    "class_weights",
    "encode_examples",
    "read_columns",
    "read_labelled",
]

FORMATS = (".tsv", ".csv", ".jsonl")
CLASS_WEIGHTINGS = ("none", "balanced", "sqrt")


class LabelledDataError(ValueError):
    """A labelled data file cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    label: str
    text: str


def read_labelled(path: str | Path) -> list[Example]:
    """The examples of a `.tsv`, `.csv` or `.jsonl` file (see the module docstring)."""
    return [Example(label, text) for label, text in read_columns(path, ("label", "text"))]


def read_columns(path: str | Path, columns: Sequence[str]) -> list[tuple[str, ...]]:
    """One tuple per example of a `.tsv`, `.csv` or `.jsonl` file: its values of `columns`, in
    that order, stripped and never empty.

    Tables need a header naming every column (any order, other columns ignored); JSONL objects
    need every key, with a string value, or an integer for any column but the last (a label
    may be a number; the text may not). `read_columns(p, ("label", "text"))` is
    `read_labelled`; a reranker's pairs are `("query", "text")`. Every problem is a
    `LabelledDataError` naming the file and line.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise LabelledDataError(f"{path}: unknown format {suffix!r}; use one of {FORMATS}")
    try:
        if suffix == ".jsonl":
            rows = _read_jsonl(path, tuple(columns))
        else:
            rows = _read_table(path, path.read_text(encoding="utf-8"), suffix, tuple(columns))
    except FileNotFoundError:
        raise LabelledDataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LabelledDataError(f"{path}: cannot read it as UTF-8 text ({e})") from None
    if not rows:
        raise LabelledDataError(f"{path}: no examples")
    return rows


def _read_table(
    path: Path, text: str, suffix: str, columns: tuple[str, ...]
) -> list[tuple[str, ...]]:
    # TSV: tabs separate and quotes are ordinary characters (glosses contain them); CSV quotes.
    quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
    reader = csv.reader(
        text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",", quoting=quoting
    )
    wanted = " and ".join(repr(c) for c in columns)
    try:
        header = next(reader)
    except StopIteration:
        raise LabelledDataError(
            f"{path}: empty file (expected a header with {wanted})"
        ) from None
    names = [h.strip().lower() for h in header]
    if any(c not in names for c in columns):
        raise LabelledDataError(
            f"{path}:1: the header must name a {' and a '.join(map(repr, columns))} column, "
            f"got {header}"
        )
    index = [names.index(c) for c in columns]
    out = []
    for lineno, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) <= max(index):
            raise LabelledDataError(
                f"{path}:{lineno}: {len(row)} field(s), but the header has {len(header)}"
            )
        out.append(_values(path, lineno, columns, [row[i] for i in index]))
    return out


def _read_jsonl(path: Path, columns: tuple[str, ...]) -> list[tuple[str, ...]]:
    out = []
    for lineno, obj in read_jsonl(path, error=LabelledDataError):
        if not isinstance(obj, dict) or any(c not in obj for c in columns):
            keys = " and ".join(repr(c) for c in columns)
            raise LabelledDataError(f"{path}:{lineno}: expected an object with {keys}")
        values = []
        for i, c in enumerate(columns):
            v = obj[c]
            last = i == len(columns) - 1
            if isinstance(v, bool) or not isinstance(v, str if last else str | int):
                kind = "a string" if last else "a string or an integer"
                raise LabelledDataError(f"{path}:{lineno}: {c} must be {kind}")
            values.append(str(v))
        out.append(_values(path, lineno, columns, values))
    return out


def _values(path: Path, lineno: int, columns: tuple[str, ...], values: list[str]) -> tuple[str, ...]:
    stripped = tuple(v.strip() for v in values)
    for c, v in zip(columns, stripped, strict=True):
        if not v:
            raise LabelledDataError(f"{path}:{lineno}: empty {c}")
    return stripped


@dataclass(frozen=True)
class LabelSet:
    """The labels of a task in id order."""

    names: tuple[str, ...]

    @classmethod
    def from_examples(cls, examples: Sequence[Example]) -> LabelSet:
        names = tuple(sorted({e.label for e in examples}))
        if len(names) < 2:
            raise LabelledDataError(f"a classifier needs at least two labels, got {list(names)}")
        return cls(names)

    def ids(self, examples: Sequence[Example], source: str) -> np.ndarray:
        """Label ids of `examples`; a label outside the set is an error naming it."""
        index = {n: i for i, n in enumerate(self.names)}
        unknown = sorted({e.label for e in examples} - set(index))
        if unknown:
            shown = ", ".join(map(repr, unknown[:8])) + (" ..." if len(unknown) > 8 else "")
            raise LabelledDataError(f"{source}: label(s) {shown} do not occur in the training file")
        return np.array([index[e.label] for e in examples], dtype=np.int64)


@dataclass
class TokenizedExamples:
    """Token ids of N examples, flat, with offsets; and their label ids."""

    ids: np.ndarray  # (total tokens,) int32, [CLS] ... [SEP] per example
    offsets: np.ndarray  # (N + 1,) int64: example i is ids[offsets[i]:offsets[i + 1]]
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(self, rows: np.ndarray, pad_id: int) -> tuple[Any, Any, Any]:
        """(input_ids (B, T), attention_mask (B, T), labels (B,)) torch tensors for `rows`."""
        import torch

        lengths = self.lengths[rows]
        T = int(lengths.max())
        ids = np.full((len(rows), T), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), T), dtype=np.int64)
        for j, r in enumerate(rows):
            a, b = self.offsets[r], self.offsets[r + 1]
            ids[j, : b - a] = self.ids[a:b]
            mask[j, : b - a] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(self.labels[rows])


def encode_examples(
    examples: Sequence[Example], labels: np.ndarray, tokenizer: Any, max_length: int
) -> TokenizedExamples:
    """Tokenize texts with [CLS]/[SEP], truncated to `max_length` tokens."""
    pieces = [
        tokenizer.encode(e.text, truncation=True, max_length=max_length).ids for e in examples
    ]
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in pieces])
    flat = np.fromiter((i for p in pieces for i in p), dtype=np.int32, count=int(offsets[-1]))
    return TokenizedExamples(flat, offsets, labels)


def class_weights(labels: np.ndarray, num_labels: int, scheme: str) -> np.ndarray | None:
    """Per-class loss weights: None ("none"), n / (C * count) ("balanced", scikit-learn's), or
    its square root ("sqrt", milder). Classes absent from training get weight 0 (never
    predicted by the loss anyway). Weights are scaled so their mean over examples is 1, keeping
    the loss (and so the learning rate) on the same scale as unweighted training."""
    if scheme not in CLASS_WEIGHTINGS:
        raise LabelledDataError(f"class weighting {scheme!r} must be one of {CLASS_WEIGHTINGS}")
    if scheme == "none":
        return None
    counts = Counter(labels.tolist())
    n = len(labels)
    w = np.zeros(num_labels, dtype=np.float64)
    for c, k in counts.items():
        w[c] = n / (num_labels * k)
        if scheme == "sqrt":
            w[c] = math.sqrt(w[c])
    w /= w[labels].mean()
    return w.astype(np.float32)
