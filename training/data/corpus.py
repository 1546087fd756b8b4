"""Corpus loading, the on-disk token cache, sequence packing and the resumable row order.

Pipeline: corpus files -> documents -> token ids (cached) -> rows of `max_seq_length` -> batches.

* Documents: a `.txt` file holds one document per non-empty line; a `.jsonl` file one JSON object
  per line with a `text` field.
* Cache: each file is tokenized once (no special tokens) into a flat id array (uint16 when the
  vocabulary fits, else int32) plus document offsets, saved as `<key>.npz` in the cache directory.
  The key hashes the file's contents and size, the tokenizer's saved files (vocab + settings) and
  the tokenization settings, so editing either re-tokenizes and nothing stale is ever reused.
* Packing (default): all documents joined with [SEP] into one stream, cut into rows of
  `[CLS] + (max_seq_length - 1)` ids. Every row is full, so no compute goes to padding and the
  model needs no attention mask. The tail that does not fill a row is dropped.
* Line-by-line (option): one row per document, `[CLS] doc [SEP]`, long documents split into
  several rows; batches are padded to their longest row and carry an attention mask.
* Order: `RowOrder` maps a global position (how many rows the run has consumed) to a row, with a
  fresh seeded permutation per epoch, so the data position of a run is one integer and a resume
  or a change of process count sees the same rows.

Deliberately not here: sentence-pair (NSP) construction, streaming of corpora larger than memory,
and masking (see masking.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from atomicio import atomic_write_files
from training.data.jsonl import read_jsonl

__all__ = [
    "LineDataset",
    "PackedDataset",
    "RowOrder",
    "TokenizedCorpus",
    "build_dataset",
    "iter_documents",
    "load_corpus",
    "tokenize_file",
    "tokenizer_fingerprint",
]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cached arrays change meaning


class TokenizerLike(Protocol):
    """The part of tokenization.WordPieceTokenizer the data pipeline uses."""

    vocab_size: int
    cls_token_id: int
    sep_token_id: int
    pad_token_id: int

    def encode(self, text: str, pair: Any = None, *, add_special_tokens: bool = True) -> Any: ...

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Any: ...


class DataError(ValueError):
    """A corpus file is missing, empty or malformed."""


def iter_documents(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield the documents of a corpus file (stripped, empty ones skipped).

    `.jsonl`: each line a JSON object whose `text` field is the document. Anything else: plain
    text, one document per line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"corpus file {str(path)!r} does not exist")
    if path.suffix.lower() == ".jsonl":
        for lineno, obj in read_jsonl(path, error=DataError):
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise DataError(f"{path}:{lineno}: expected an object with a string 'text'")
            if text := obj["text"].strip():
                yield text
        return
    with path.open(encoding="utf-8") as f:
        for line in f:
            if text := line.strip():
                yield text


@dataclass
class TokenizedCorpus:
    """One file's documents as token ids: doc i is `tokens[offsets[i]:offsets[i + 1]]`."""

    tokens: np.ndarray  # (N,) uint16 or int32
    offsets: np.ndarray  # (D + 1,) int64
    source: str = ""
    cache_hit: bool = False

    @property
    def num_documents(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.size)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: TokenizerLike) -> str:
    """Hash of everything the tokenizer saves (vocab.txt + its settings file).

    Saving and hashing the files rather than picking attributes means any setting that changes
    tokenization (lowercasing, accents, ...) invalidates the cache without this module knowing it.
    """
    h = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for p in sorted(Path(tmp).iterdir()):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _cache_key(path: Path, tok_fp: str) -> str:
    meta = {
        "format": CACHE_FORMAT,
        "content_sha256": _sha256_file(path),
        "size": path.stat().st_size,
        "tokenizer": tok_fp,
        "kind": "jsonl" if path.suffix.lower() == ".jsonl" else "text",
        "special_tokens": False,
    }
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:32]


def _encode_documents(path: Path, tokenizer: TokenizerLike) -> TokenizedCorpus:
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    chunks: list[np.ndarray] = []
    lengths: list[int] = []
    for doc in iter_documents(path):
        ids = tokenizer.encode(doc, add_special_tokens=False).ids
        if ids:
            chunks.append(np.asarray(ids, dtype=dtype))
            lengths.append(len(ids))
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return TokenizedCorpus(tokens=tokens, offsets=offsets, source=str(path))


def read_token_arrays(target: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(tokens, offsets) from a token cache file, or None when it is absent or damaged (a
    damaged file is logged and rebuilt by the caller, never trusted)."""
    if not target.is_file():
        return None
    try:
        with np.load(target) as z:
            return z["tokens"], z["offsets"]
    except (OSError, ValueError, KeyError) as e:
        logger.warning("ignoring unreadable token cache %s: %s", target, e)
        return None


def write_token_arrays(target: Path, tokens: np.ndarray, offsets: np.ndarray) -> None:
    """Write a token cache file under a temporary name and rename it into place: a concurrent
    reader or a crash never sees a half-written array."""
    target.parent.mkdir(parents=True, exist_ok=True)

    def write(path: Path) -> None:
        with path.open("wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez(f, tokens=tokens, offsets=offsets)

    atomic_write_files({target: write})


def tokenize_file(
    path: str | os.PathLike[str], tokenizer: TokenizerLike, cache_dir: str | os.PathLike[str] | None
) -> TokenizedCorpus:
    """Token ids of one corpus file, from the cache when corpus and tokenizer are unchanged."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"corpus file {str(path)!r} does not exist")
    if cache_dir is None:
        return _encode_documents(path, tokenizer)
    cache = Path(cache_dir)
    key = _cache_key(path, tokenizer_fingerprint(tokenizer))
    target = cache / f"{key}.npz"
    cached = read_token_arrays(target)
    if cached is not None:
        logger.info("token cache hit for %s (%s)", path, target.name)
        return TokenizedCorpus(cached[0], cached[1], str(path), cache_hit=True)
    corpus = _encode_documents(path, tokenizer)
    write_token_arrays(target, corpus.tokens, corpus.offsets)
    info = {"source": str(path), "tokens": corpus.num_tokens, "documents": corpus.num_documents}
    (cache / f"{key}.json").write_text(json.dumps(info) + "\n", encoding="utf-8")
    logger.info("tokenized %s: %d documents, %d tokens", path, info["documents"], info["tokens"])
    return corpus


def load_corpus(
    paths: Sequence[str | os.PathLike[str]],
    tokenizer: TokenizerLike,
    cache_dir: str | os.PathLike[str] | None,
) -> list[TokenizedCorpus]:
    """Tokenize (or load from cache) every file; an all-empty corpus is an error."""
    if not paths:
        raise DataError("no corpus files given")
    corpora = [tokenize_file(p, tokenizer, cache_dir) for p in paths]
    if sum(c.num_tokens for c in corpora) == 0:
        raise DataError(f"corpus {[str(p) for p in paths]} contains no tokens")
    return corpora


class PackedDataset:
    """Documents joined with [SEP] into one stream, served as full `[CLS] + ...` rows."""

    packed = True

    def __init__(
        self, corpora: Sequence[TokenizedCorpus], *, seq_len: int, cls_id: int, sep_id: int
    ) -> None:
        self.seq_len = seq_len
        self.cls_id = cls_id
        parts = []
        for c in corpora:
            if c.num_documents:
                # np.insert before each document end == a [SEP] after every document.
                parts.append(np.insert(c.tokens.astype(np.int32), c.offsets[1:], sep_id))
        self.stream = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        self.span = seq_len - 1  # the [CLS] takes one position
        self.num_rows = len(self.stream) // self.span
        if self.num_rows == 0:
            raise DataError(
                f"corpus has {len(self.stream)} tokens, fewer than one row of {seq_len}"
            )

    def __len__(self) -> int:
        return self.num_rows

    def rows(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """`(ids (B, seq_len) int64, None)`: packed rows need no attention mask."""
        index = np.asarray(index, dtype=np.int64)
        starts = index * self.span  # (B,)
        body = self.stream[starts[:, None] + np.arange(self.span)[None, :]]  # (B, span)
        ids = np.empty((len(index), self.seq_len), dtype=np.int64)
        ids[:, 0] = self.cls_id
        ids[:, 1:] = body
        return ids, None


class LineDataset:
    """One row per document (`[CLS] doc [SEP]`), long documents split; padded per batch."""

    packed = False

    def __init__(
        self,
        corpora: Sequence[TokenizedCorpus],
        *,
        seq_len: int,
        cls_id: int,
        sep_id: int,
        pad_id: int,
    ) -> None:
        self.seq_len, self.cls_id, self.sep_id, self.pad_id = seq_len, cls_id, sep_id, pad_id
        body = seq_len - 2
        self.stream = np.concatenate([c.tokens.astype(np.int32) for c in corpora])
        starts, lengths = [], []
        base = 0
        for c in corpora:
            doc_start = c.offsets[:-1] + base
            doc_len = np.diff(c.offsets)
            n_pieces = -(-doc_len // body)  # ceil
            piece_doc = np.repeat(np.arange(len(doc_len)), n_pieces)
            first = np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)
            k = np.arange(piece_doc.size) - first  # piece number within its document
            starts.append(doc_start[piece_doc] + k * body)
            lengths.append(np.minimum(doc_len[piece_doc] - k * body, body))
            base += c.num_tokens
        self.row_start = np.concatenate(starts).astype(np.int64)
        self.row_len = np.concatenate(lengths).astype(np.int64)
        self.num_rows = len(self.row_start)
        if self.num_rows == 0:
            raise DataError("corpus has no documents")

    def __len__(self) -> int:
        return self.num_rows

    def rows(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(ids (B, T), attention_mask (B, T))` padded to the longest row of the batch."""
        index = np.asarray(index, dtype=np.int64)
        lens = self.row_len[index]
        T = int(lens.max()) + 2
        ids = np.full((len(index), T), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(index), T), dtype=np.int64)
        for b, (s, n) in enumerate(zip(self.row_start[index], lens, strict=True)):
            ids[b, 0] = self.cls_id
            ids[b, 1 : n + 1] = self.stream[s : s + n]
            ids[b, n + 1] = self.sep_id
            mask[b, : n + 2] = 1
        return ids, mask


def build_dataset(
    corpora: Sequence[TokenizedCorpus], tokenizer: TokenizerLike, *, seq_len: int, packing: bool
) -> PackedDataset | LineDataset:
    if packing:
        return PackedDataset(
            corpora, seq_len=seq_len, cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id
        )
    return LineDataset(
        corpora,
        seq_len=seq_len,
        cls_id=tokenizer.cls_token_id,
        sep_id=tokenizer.sep_token_id,
        pad_id=tokenizer.pad_token_id,
    )


class RowOrder:
    """Global position -> row index: epoch e is a permutation seeded by `(seed, e)`.

    Position p lies in epoch `p // num_rows`; so the state of a run's data stream is one integer
    (rows consumed), and any split of positions among processes sees the same rows.
    """

    def __init__(self, num_rows: int, seed: int, shuffle: bool = True) -> None:
        if num_rows <= 0:
            raise DataError(f"num_rows={num_rows} must be > 0")
        self.num_rows, self.seed, self.shuffle = num_rows, seed, shuffle
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = (
                np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
                if self.shuffle
                else np.arange(self.num_rows)
            )
        return self._perms[epoch]

    def rows(self, start: int, count: int) -> np.ndarray:
        """Row indices at global positions `start .. start + count - 1`."""
        pos = np.arange(start, start + count, dtype=np.int64)
        epochs, within = np.divmod(pos, self.num_rows)
        out = np.empty(count, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._perm(int(e))[within[sel]]
        return out
