"""Vocabulary files: reading and writing `vocab.txt` and `tokenizer_config.json` as BERT does.

`vocab.txt` holds one token per line, the line number being the id. `tokenizer_config.json` carries
the settings `transformers` needs to rebuild the same tokenizer (`BertTokenizer`, lowercasing,
special tokens), plus a format version of ours.

Deliberately not handled: `tokenizer.json` (the Rust tokenizer's single-file format); transformers
builds it from `vocab.txt` on its own.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
VOCAB_FILE = "vocab.txt"
CONFIG_FILE = "tokenizer_config.json"
FORMAT_VERSION = 1
MAX_WORD_CHARS = 100


class VocabError(ValueError):
    """A vocabulary or tokenizer directory that cannot be used, with the reason in the message."""


def validate_vocab(tokens: list[str], source: str = "vocabulary") -> dict[str, int]:
    """Check a token list and return ``{token: id}``.

    Every special token must be present; ``[PAD]`` must be id 0 (models rely on it for padding).
    """
    if not tokens:
        raise VocabError(f"{source} is empty")
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if tok == "":
            raise VocabError(f"{source}: line {i + 1} is an empty token")
        if tok in vocab:
            raise VocabError(
                f"{source}: token {tok!r} appears twice (lines {vocab[tok] + 1} and {i + 1})"
            )
        vocab[tok] = i
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise VocabError(f"{source} lacks the special token(s) {', '.join(missing)}")
    if vocab["[PAD]"] != 0:
        raise VocabError(f"{source}: [PAD] must have id 0, found id {vocab['[PAD]']}")
    return vocab


def read_vocab(path: str | os.PathLike) -> list[str]:
    """Read ``vocab.txt`` into a token list, raising `VocabError` with the reason if it is unusable."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise VocabError(f"vocabulary file not found: {path}") from None
    except OSError as exc:
        raise VocabError(f"cannot read vocabulary file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VocabError(f"vocabulary file {path} is not UTF-8 (byte {exc.start})") from None
    # BERT's loader strips trailing newlines only; tokens never contain whitespace.
    tokens = [line.rstrip("\r\n") for line in text.split("\n")]
    if tokens and tokens[-1] == "":
        tokens.pop()
    if not tokens:
        raise VocabError(f"vocabulary file {path} is empty")
    validate_vocab(tokens, source=str(path))
    return tokens


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # mkstemp creates 0600; a checkpoint must be readable by a server running as another user.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_vocab(directory: Path, tokens: list[str]) -> None:
    """Write ``vocab.txt`` (one token per line) atomically."""
    atomic_write_text(directory / VOCAB_FILE, "".join(f"{t}\n" for t in tokens))


def tokenizer_config(lowercase: bool, model_max_length: int) -> dict:
    """The `tokenizer_config.json` content that `transformers.AutoTokenizer` understands."""
    return {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": lowercase,
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "bertserve_format_version": FORMAT_VERSION,
    }


def read_tokenizer_config(directory: Path) -> dict:
    """Read ``tokenizer_config.json`` if present (HF directories may lack it); ``{}`` otherwise."""
    path = directory / CONFIG_FILE
    if not path.exists():
        return {}
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VocabError(f"cannot read {path}: {exc}") from None
    if not isinstance(cfg, dict):
        raise VocabError(f"{path} must hold a JSON object, found {type(cfg).__name__}")
    version = cfg.get("bertserve_format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise VocabError(f"{path}: unsupported bertserve_format_version {version!r}")
    if not isinstance(cfg.get("do_lower_case", True), bool):
        raise VocabError(
            f"{path}: do_lower_case must be true or false, found {cfg['do_lower_case']!r}"
        )
    return cfg
