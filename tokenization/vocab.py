"""Vocabulary files: reading and writing `vocab.txt` and our `tokenizer_config.json`.

`vocab.txt` holds one token per line, the line number being the id. `tokenizer_config.json` carries
the settings `transformers` needs to rebuild the same tokenizer (`BertTokenizer`, lowercasing,
accents, CJK handling, the special tokens), plus a format version of ours.

The special tokens may have any ids (transformers accepts a `[PAD]` at id 3); the vocabulary must
hold each of them once. Reading whole tokenizer directories written by other tools (tokenizer.json,
special_tokens_map.json) is `tokenization/files.py`'s job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# The special tokens of our vocabularies, in the order the vocabulary trainer gives them ids.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Their roles, as transformers names them (keys of tokenizer_config.json), in the same order.
SPECIAL_ROLES = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")
DEFAULT_SPECIALS: dict[str, str] = dict(zip(SPECIAL_ROLES, SPECIAL_TOKENS, strict=True))
VOCAB_FILE = "vocab.txt"
CONFIG_FILE = "tokenizer_config.json"
FORMAT_VERSION = 1
MAX_WORD_CHARS = 100


class VocabError(ValueError):
    """A vocabulary or tokenizer directory that cannot be used, with the reason in the message."""


def validate_vocab(
    tokens: Sequence[str], source: str = "vocabulary", specials: Sequence[str] = SPECIAL_TOKENS
) -> dict[str, int]:
    """Check a token list and return ``{token: id}``: no empty or repeated token, every special
    token present (at any id)."""
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
    missing = [t for t in dict.fromkeys(specials) if t not in vocab]
    if missing:
        raise VocabError(f"{source} lacks the special token(s) {', '.join(missing)}")
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
    validate_vocab(tokens, source=str(path), specials=())  # the specials are checked by the caller
    return tokens


def vocab_text(tokens: Sequence[str]) -> str:
    """The content of ``vocab.txt``: one token per line, the line number being the id."""
    return "".join(f"{t}\n" for t in tokens)


def tokenizer_config(
    lowercase: bool,
    model_max_length: int,
    *,
    strip_accents: bool | None = None,
    tokenize_chinese_chars: bool = True,
    special_tokens: Mapping[str, str] | None = None,
    extra_special_tokens: Sequence[str] = (),
) -> dict[str, Any]:
    """The `tokenizer_config.json` content that `transformers.AutoTokenizer` understands."""
    specials = {**DEFAULT_SPECIALS, **(special_tokens or {})}
    cfg: dict[str, Any] = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": lowercase,
        "strip_accents": strip_accents,
        "tokenize_chinese_chars": tokenize_chinese_chars,
        "unk_token": specials["unk_token"],
        "sep_token": specials["sep_token"],
        "pad_token": specials["pad_token"],
        "cls_token": specials["cls_token"],
        "mask_token": specials["mask_token"],
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "bertserve_format_version": FORMAT_VERSION,
    }
    if extra_special_tokens:
        cfg["additional_special_tokens"] = list(extra_special_tokens)
    return cfg
