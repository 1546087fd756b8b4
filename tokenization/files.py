"""Tokenizer directories as transformers writes them, read into one `TokenizerSettings`.

A BERT tokenizer directory holds some of: ``vocab.txt``, ``tokenizer.json`` (the Rust tokenizer's
single file; transformers 5 writes only this one), ``tokenizer_config.json`` and
``special_tokens_map.json``. What each contributes follows what ``transformers.AutoTokenizer``
(version 5, Rust-backed ``BertTokenizer``) does with the same files, so that our ids equal theirs:

- the vocabulary: ``tokenizer.json``'s WordPiece vocabulary when the file exists (transformers
  prefers it), else ``vocab.txt``;
- the settings: ``tokenizer_config.json`` (``do_lower_case``, ``strip_accents``,
  ``tokenize_chinese_chars``, ``model_max_length``), with ``BertTokenizer``'s defaults for a missing
  key, even where ``tokenizer.json``'s normaliser says otherwise (transformers rebuilds the
  normaliser from these settings); only a generic ``PreTrainedTokenizerFast`` takes them from the
  ``tokenizer.json`` normaliser;
- the special tokens: ``special_tokens_map.json`` over ``tokenizer_config.json`` over BERT's
  names, at whatever ids the vocabulary gives them; further special tokens
  (``additional_special_tokens``, special ``added_tokens``) are matched whole in the text and
  skipped when decoding, like the five;
- ``never_split`` is checked (a list of strings) and then ignored, as transformers' ``BertTokenizer``
  ignores it (only the legacy pure-Python class applied it): applying it would give ids that
  transformers, sentence-transformers and text-embeddings-inference do not.

Deliberately not handled, each refused with a ``VocabError`` naming the file: other tokenizer
classes and models (BPE, Unigram, SentencePiece), added tokens that are not special (transformers
matches those after normalisation), and WordPiece variants (another subword prefix or word-length
limit than BERT's).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .vocab import (
    CONFIG_FILE,
    DEFAULT_SPECIALS,
    FORMAT_VERSION,
    MAX_WORD_CHARS,
    SPECIAL_ROLES,
    VOCAB_FILE,
    VocabError,
    read_vocab,
)

TOKENIZER_JSON = "tokenizer.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
# Every file a tokenizer directory may hold (what a checkpoint copies along with its weights).
TOKENIZER_FILES = (VOCAB_FILE, TOKENIZER_JSON, CONFIG_FILE, SPECIAL_TOKENS_MAP)
# transformers classes that are BERT's WordPiece with settings from tokenizer_config.json.
BERT_TOKENIZER_CLASSES = frozenset(
    {"BertTokenizer", "BertTokenizerFast", "DistilBertTokenizer", "DistilBertTokenizerFast"}
)
# Classes that run tokenizer.json exactly as stored, normaliser included.
GENERIC_TOKENIZER_CLASSES = frozenset({"PreTrainedTokenizerFast", "TokenizersBackend"})
# model_max_length above this is transformers' "unset" sentinel (int(1e30)).
_UNSET_MAX_LENGTH = 1_000_000
DEFAULT_MAX_LENGTH = 512


@dataclass(frozen=True)
class TokenizerSettings:
    """Everything a `WordPieceTokenizer` is built from."""

    tokens: tuple[str, ...]  # id -> token
    lowercase: bool = True
    strip_accents: bool | None = None  # None: follow `lowercase` (BERT's rule)
    tokenize_chinese_chars: bool = True
    special_tokens: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SPECIALS))
    extra_special_tokens: tuple[str, ...] = ()  # special tokens beyond the five roles
    model_max_length: int = DEFAULT_MAX_LENGTH

    def with_lowercased_input(self) -> TokenizerSettings:
        """The settings with the text lowercased first, as sentence-transformers' ``do_lower_case``
        does (it puts a Lowercase normaliser before BERT's): a cased tokenizer then lowercases but
        keeps its accents unless it strips them anyway."""
        if self.lowercase:
            return self
        strip = self.strip_accents if self.strip_accents is not None else False
        return replace(self, lowercase=True, strip_accents=strip)


def has_tokenizer(directory: str | os.PathLike) -> bool:
    """True if ``directory`` holds a vocabulary (``vocab.txt`` or ``tokenizer.json``)."""
    directory = Path(directory)
    return (directory / VOCAB_FILE).is_file() or (directory / TOKENIZER_JSON).is_file()


def read_tokenizer_dir(directory: str | os.PathLike) -> TokenizerSettings:
    """The settings of the tokenizer in ``directory``; VocabError says what is wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        raise VocabError(f"tokenizer directory not found: {directory}")
    cfg = _read_json_object(directory / CONFIG_FILE)
    version = cfg.get("bertserve_format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise VocabError(
            f"{directory / CONFIG_FILE}: unsupported bertserve_format_version {version!r}"
        )
    cls = cfg.get("tokenizer_class")
    if cls is not None and cls not in BERT_TOKENIZER_CLASSES | GENERIC_TOKENIZER_CLASSES:
        raise VocabError(
            f"{directory / CONFIG_FILE} names tokenizer_class {cls!r}; only BERT's WordPiece "
            f"tokenizer ({', '.join(sorted(BERT_TOKENIZER_CLASSES))}) is supported"
        )
    never_split = cfg.get("never_split")
    if never_split is not None and (
        not isinstance(never_split, list) or not all(isinstance(t, str) for t in never_split)
    ):
        raise VocabError(f"{directory / CONFIG_FILE}: never_split must be a list of strings")

    tokenizer_json = directory / TOKENIZER_JSON
    added: list[tuple[int, str]] = []
    normalizer: dict[str, Any] = {}
    if tokenizer_json.is_file():
        tokens, added, normalizer = _read_tokenizer_json(tokenizer_json)
    elif (directory / VOCAB_FILE).is_file():
        tokens = read_vocab(directory / VOCAB_FILE)
        added = _added_tokens_decoder(cfg, directory / CONFIG_FILE)
    else:
        raise VocabError(
            f"{directory}: no vocabulary (neither {VOCAB_FILE} nor {TOKENIZER_JSON} is there)"
        )
    tokens = _with_added(tokens, added, directory)

    # The normaliser: tokenizer_config.json for BERT's classes, tokenizer.json for generic ones.
    source = normalizer if cls in GENERIC_TOKENIZER_CLASSES else cfg
    if cls in GENERIC_TOKENIZER_CLASSES and (
        normalizer.get("type") != "BertNormalizer"
        or normalizer.get("pre_tokenizer") != "BertPreTokenizer"
    ):
        raise VocabError(
            f"{tokenizer_json}: a {cls} runs its own normaliser and pre-tokenizer "
            f"({normalizer.get('type')}, {normalizer.get('pre_tokenizer')}); only BERT's "
            "(BertNormalizer, BertPreTokenizer) are supported"
        )
    where = tokenizer_json if cls in GENERIC_TOKENIZER_CLASSES else directory / CONFIG_FILE
    lowercase = source.get("do_lower_case", source.get("lowercase", True))
    strip_accents = source.get("strip_accents")
    chinese = source.get("tokenize_chinese_chars", source.get("handle_chinese_chars", True))
    for name, value, allowed in (
        ("do_lower_case", lowercase, (True, False)),
        ("strip_accents", strip_accents, (True, False, None)),
        ("tokenize_chinese_chars", chinese, (True, False)),
    ):
        if not any(value is a for a in allowed):
            raise VocabError(f"{where}: {name} must be true or false, found {value!r}")

    specials = dict(DEFAULT_SPECIALS)
    extra: list[str] = []
    special_map = _read_json_object(directory / SPECIAL_TOKENS_MAP)
    sources = ((cfg, directory / CONFIG_FILE), (special_map, directory / SPECIAL_TOKENS_MAP))
    for source_cfg, path in sources:
        for role in SPECIAL_ROLES:
            if source_cfg.get(role) is not None:
                specials[role] = _token_text(source_cfg[role], f"{path}: {role}")
        for i, t in enumerate(source_cfg.get("additional_special_tokens") or []):
            extra.append(_token_text(t, f"{path}: additional_special_tokens[{i}]"))
    extra += [t for _, t in added]
    extra = [t for t in dict.fromkeys(extra) if t not in specials.values()]

    max_len = cfg.get("model_max_length", DEFAULT_MAX_LENGTH)
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len > _UNSET_MAX_LENGTH:
        max_len = DEFAULT_MAX_LENGTH
    return TokenizerSettings(
        tokens=tuple(tokens),
        lowercase=lowercase,
        strip_accents=strip_accents,
        tokenize_chinese_chars=chinese,
        special_tokens=specials,
        extra_special_tokens=tuple(extra),
        model_max_length=max_len,
    )


def _read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object file, or {} when the file is absent."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VocabError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise VocabError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def _token_text(value: Any, where: str) -> str:
    """A special token as transformers stores it: a string, or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str) or not value:
        raise VocabError(f"{where} must be a token string, found {value!r}")
    return value


def _read_tokenizer_json(path: Path) -> tuple[list[str], list[tuple[int, str]], dict[str, Any]]:
    """(vocabulary by id, special added tokens (id, text), normaliser settings) of tokenizer.json."""
    data = _read_json_object(path)
    model = data.get("model")
    if not isinstance(model, dict) or model.get("type") != "WordPiece":
        kind = model.get("type") if isinstance(model, dict) else None
        raise VocabError(
            f"{path} holds a {kind or 'missing'} model; only WordPiece (BERT) tokenizers are "
            "supported"
        )
    if model.get("continuing_subword_prefix", "##") != "##":
        raise VocabError(f"{path}: only the '##' continuing-subword prefix is supported")
    if model.get("max_input_chars_per_word", MAX_WORD_CHARS) != MAX_WORD_CHARS:
        raise VocabError(f"{path}: only max_input_chars_per_word={MAX_WORD_CHARS} is supported")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise VocabError(f"{path}: model.vocab must be a non-empty object of token ids")
    tokens: list[str | None] = [None] * len(vocab)
    for token, i in vocab.items():
        if not isinstance(i, int) or not 0 <= i < len(vocab) or tokens[i] is not None:
            raise VocabError(
                f"{path}: the vocabulary ids must be 0..{len(vocab) - 1}, each once "
                f"(token {token!r} has id {i!r})"
            )
        tokens[i] = token
    added = []
    for entry in data.get("added_tokens") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int):
            raise VocabError(f"{path}: malformed added_tokens entry {entry!r}")
        added.append(_special_added(entry, entry["id"], path))
    normalizer = data.get("normalizer") or {}
    pre_tokenizer = data.get("pre_tokenizer") or {}
    if not isinstance(normalizer, dict) or not isinstance(pre_tokenizer, dict):
        raise VocabError(f"{path}: normalizer and pre_tokenizer must be objects")
    normalizer = {**normalizer, "pre_tokenizer": pre_tokenizer.get("type")}
    return tokens, added, normalizer  # type: ignore[return-value]


def _added_tokens_decoder(cfg: dict[str, Any], path: Path) -> list[tuple[int, str]]:
    """Special added tokens listed in tokenizer_config.json (transformers 4.34 and later)."""
    table = cfg.get("added_tokens_decoder") or {}
    if not isinstance(table, dict):
        raise VocabError(f"{path}: added_tokens_decoder must be an object")
    out = []
    for key, entry in table.items():
        if not isinstance(entry, dict) or not str(key).isdigit():
            raise VocabError(f"{path}: malformed added_tokens_decoder entry {key!r}")
        out.append(_special_added(entry, int(key), path))
    return out


def _special_added(entry: dict[str, Any], token_id: int, path: Path) -> tuple[int, str]:
    content = entry.get("content")
    if not isinstance(content, str) or not content:
        raise VocabError(f"{path}: added token {token_id} has no content")
    if not entry.get("special", False):
        raise VocabError(
            f"{path}: added token {content!r} (id {token_id}) is not special; tokenizers with "
            "added non-special tokens are not supported"
        )
    if any(entry.get(flag) for flag in ("lstrip", "rstrip", "single_word")):
        raise VocabError(
            f"{path}: added token {content!r} strips spaces or matches single words only; "
            "that matching is not supported"
        )
    return token_id, content


def _with_added(tokens: list[str], added: list[tuple[int, str]], directory: Path) -> list[str]:
    """The vocabulary with special added tokens: each at its id, in it or appended after it."""
    out = list(tokens)
    for token_id, content in sorted(added):
        if token_id < len(out):
            if out[token_id] != content:
                raise VocabError(
                    f"{directory}: added token {content!r} has id {token_id}, which the "
                    f"vocabulary gives to {out[token_id]!r}"
                )
        elif token_id == len(out):
            out.append(content)
        else:
            raise VocabError(
                f"{directory}: added token {content!r} has id {token_id}, leaving a gap after "
                f"the vocabulary's {len(out)} tokens"
            )
    return out
