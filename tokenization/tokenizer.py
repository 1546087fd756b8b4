"""`WordPieceTokenizer`: BERT's tokenizer in pure Python, trained, saved, loaded and applied here.

    tok = WordPieceTokenizer.train(["data/wordnet.train.txt"], vocab_size=16000)
    enc = tok.encode("Hello, world!")          # enc.ids == [2, ..., 3], enc.offsets, enc.tokens
    tok.decode(enc.ids, skip_special_tokens=True)  # "hello, world!" -> "hello , world !"
    pair = tok.encode("a query", "a document", truncation="only_second", max_length=128)
    pair.type_ids, pair.sequence_ids  # [0, 0, 0, 0, 1, 1, 1], [None, 0, 0, None, 1, 1, None]

Speed comes from caching whole whitespace-separated chunks: normalisation and WordPiece depend
only on the chunk, so a repeated chunk costs one dict lookup. Offsets and token strings are
computed on first access, like the Rust tokenizer's Python bindings do.

Settings (see `tokenization/files.py` for how a directory's files give them): lowercasing,
accent stripping, CJK splitting, and the special tokens at any ids (a `[PAD]` need not be id 0),
plus further special tokens, all matched whole in the text before normalisation as transformers
does.

Sentence pairs are laid out ``[CLS] A [SEP] B [SEP]`` with type ids 0 for ``[CLS] A [SEP]`` and 1
for ``B [SEP]``, and truncated with transformers' strategies (`truncation_lengths`): the ids,
type ids and offsets equal `BertTokenizerFast`'s, errors included (a strategy that cannot reach
``max_length`` raises ``ValueError`` where the Rust tokenizer raises its truncation error).

Deliberately not handled: tensors (this package is standard library only; callers build them),
added tokens that are not special, stride/overflow windows for long texts, left truncation, and
two transformers quirks: a ``max_length`` below the special tokens' count is a ``ValueError``
(transformers logs an error and does not truncate), and an empty second text is still a pair
(transformers' single-pair call drops ``text_pair=""``; its batch call and the Rust tokenizer
keep it, as we do).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from atomicio import atomic_write_files

from .files import DEFAULT_MAX_LENGTH, TokenizerSettings, read_tokenizer_dir
from .normalization import CHUNK_RE, normalized_text, split_chunk
from .vocab import (
    CONFIG_FILE,
    DEFAULT_SPECIALS,
    SPECIAL_ROLES,
    SPECIAL_TOKENS,
    VOCAB_FILE,
    VocabError,
    tokenizer_config,
    validate_vocab,
    vocab_text,
)
from .wordpiece import PREFIX, wordpiece

_CACHE_LIMIT = 200_000
# transformers' names for how a pair is cut to max_length (`truncation_lengths`); `truncation=True`
# means "longest_first", as in transformers.
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")

# A cached chunk: its piece ids and, per piece, the span relative to the chunk start.
_Chunk = tuple[tuple[int, ...], tuple[tuple[int, int], ...]]


class Encoding:
    """One encoded text (or pair): ids, type ids, attention mask, tokens and character offsets.

    ``offsets`` index the original text(s); special and padding tokens get ``(0, 0)``. For a pair,
    offsets of the second segment index the second text, as in `transformers`; ``sequence_ids``
    says which text each token (and so each offset) comes from.
    """

    __slots__ = (
        "_offsets",
        "_segments",
        "_spans",
        "_tokenizer",
        "_tokens",
        "attention_mask",
        "ids",
        "truncated",
        "type_ids",
    )

    def __init__(
        self,
        tokenizer: WordPieceTokenizer,
        ids: list[int],
        type_ids: list[int],
        attention_mask: list[int],
        spans: list[tuple[int, _Chunk | None]],
        segments: tuple[int, int | None, bool],
        truncated: bool = False,
    ) -> None:
        self._tokenizer = tokenizer
        self.ids = ids
        self.type_ids = type_ids
        self.attention_mask = attention_mask
        self.truncated = truncated  # tokens of the text(s) were cut to fit max_length
        self._spans = spans
        # (tokens of the first text, of the second or None, [CLS]/[SEP] added) as encoded,
        # before any padding: enough to say which text each position belongs to.
        self._segments = segments
        self._offsets: list[tuple[int, int]] | None = None
        self._tokens: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Encoding(ids={self.ids!r})"

    @property
    def tokens(self) -> list[str]:
        """Token strings, ``["[CLS]", "hello", ",", "[SEP]"]``."""
        if self._tokens is None:
            itos = self._tokenizer._itos
            self._tokens = [itos[i] for i in self.ids]
        return self._tokens

    @property
    def offsets(self) -> list[tuple[int, int]]:
        """Character ``(start, end)`` of each token in its text."""
        if self._offsets is None:
            out: list[tuple[int, int]] = []
            for base, chunk in self._spans:
                if chunk is None:  # [CLS] / [SEP] added around the text
                    out.append((0, 0))
                else:
                    out.extend((base + s, base + e) for s, e in chunk[1])
            self._offsets = out
        return self._offsets

    @property
    def sequence_ids(self) -> list[int | None]:
        """Which text each token comes from: 0 the first, 1 the second (a pair's), None for the
        added ``[CLS]``/``[SEP]`` and padding; transformers' ``BatchEncoding.sequence_ids()``.

        ``encode("hello world", "the cat")`` -> ``[None, 0, 0, None, 1, 1, None]``. A special
        token written in a text (a literal ``[MASK]``) belongs to that text.
        """
        n_first, n_second, specials = self._segments
        out: list[int | None] = [0] * n_first
        if specials:
            out = [None, *out, None]
        if n_second is not None:
            out += [1] * n_second + ([None] if specials else [])
        return out + [None] * (len(self.ids) - len(out))

    @property
    def special_tokens_mask(self) -> list[int]:
        """1 where the token is one of the special tokens, else 0."""
        special = self._tokenizer.special_ids
        return [1 if i in special else 0 for i in self.ids]


class WordPieceTokenizer:
    """BERT WordPiece tokenizer: lowercasing (default) or cased, ``[CLS] A [SEP] B [SEP]`` layout."""

    def __init__(
        self,
        vocab: Sequence[str],
        lowercase: bool = True,
        model_max_length: int = DEFAULT_MAX_LENGTH,
        *,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        special_tokens: Mapping[str, str] | None = None,
        extra_special_tokens: Sequence[str] = (),
    ):
        for name, value in (
            ("lowercase", lowercase),
            ("tokenize_chinese_chars", tokenize_chinese_chars),
        ):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        if strip_accents is not None and not isinstance(strip_accents, bool):
            raise TypeError(
                f"strip_accents must be a bool or None, got {type(strip_accents).__name__}"
            )
        if isinstance(vocab, (str, bytes)) or not all(isinstance(t, str) for t in vocab):
            raise TypeError("vocab must be a sequence of token strings")
        if not isinstance(model_max_length, int) or model_max_length < 2:
            raise ValueError(f"model_max_length must be an int >= 2, got {model_max_length!r}")
        specials = {**DEFAULT_SPECIALS, **(special_tokens or {})}
        unknown = sorted(set(specials) - set(SPECIAL_ROLES))
        if unknown:
            raise ValueError(f"unknown special token role(s) {unknown}; roles are {SPECIAL_ROLES}")
        self._itos: list[str] = list(vocab)
        self.vocab: dict[str, int] = validate_vocab(
            self._itos, specials=[*specials.values(), *extra_special_tokens]
        )
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.model_max_length = model_max_length
        self.special_tokens = dict(specials)  # role -> token, e.g. "pad_token" -> "[PAD]"
        self.extra_special_tokens = tuple(extra_special_tokens)
        self.pad_token = specials["pad_token"]
        self.unk_token = specials["unk_token"]
        self.cls_token = specials["cls_token"]
        self.sep_token = specials["sep_token"]
        self.mask_token = specials["mask_token"]
        self.pad_token_id = self.vocab[self.pad_token]
        self.unk_token_id = self.vocab[self.unk_token]
        self.cls_token_id = self.vocab[self.cls_token]
        self.sep_token_id = self.vocab[self.sep_token]
        self.mask_token_id = self.vocab[self.mask_token]
        matched = [*specials.values(), *self.extra_special_tokens]
        self.special_ids = frozenset(self.vocab[t] for t in matched)
        # Special tokens are found in the raw text before normalisation, longest first (so that
        # a token containing another wins), as transformers' added-token matching does.
        ordered = sorted(set(matched), key=len, reverse=True)
        self._special_re = re.compile("|".join(re.escape(t) for t in ordered))
        self._special_chars = frozenset(t[0] for t in ordered)
        self._max_piece = max(
            len(t[len(PREFIX) :] if t.startswith(PREFIX) else t) for t in self._itos
        )
        self._cache: dict[str, _Chunk] = {}

    @classmethod
    def from_settings(cls, settings: TokenizerSettings) -> WordPieceTokenizer:
        """A tokenizer from a directory's settings (`tokenization.files.read_tokenizer_dir`)."""
        return cls(
            settings.tokens,
            lowercase=settings.lowercase,
            model_max_length=settings.model_max_length,
            strip_accents=settings.strip_accents,
            tokenize_chinese_chars=settings.tokenize_chinese_chars,
            special_tokens=settings.special_tokens,
            extra_special_tokens=settings.extra_special_tokens,
        )

    # ------------------------------------------------------------------ construction and files
    @classmethod
    def train(
        cls,
        files: Iterable[str | os.PathLike],
        vocab_size: int = 16000,
        min_frequency: int = 2,
        lowercase: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> WordPieceTokenizer:
        """Learn a vocabulary from corpus files (one document per line, or ``.jsonl`` with ``text``).

        ``progress(n)`` is called as the vocabulary grows to ``n`` tokens (a CLI's progress bar).
        """
        from .trainer import count_words, learn_vocab, read_lines

        if isinstance(files, (str, os.PathLike)):
            files = [files]
        files = list(files)
        if not files:
            raise ValueError("train() needs at least one corpus file")
        if not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(
                f"vocab_size must be an int > {len(SPECIAL_TOKENS)}, got {vocab_size!r}"
            )
        for f in files:
            if not Path(f).is_file():
                raise ValueError(f"corpus file not found: {f}")
        counts = count_words(read_lines(files), lowercase=lowercase)
        if not counts:
            raise ValueError(f"the corpus {[os.fspath(f) for f in files]} contains no words")
        tokens = learn_vocab(counts, vocab_size, min_frequency, progress=progress)
        if progress is not None:
            progress(len(tokens))
        return cls(tokens, lowercase=lowercase)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, lowercase_input: bool = False
    ) -> WordPieceTokenizer:
        """Load a tokenizer directory (``vocab.txt`` or ``tokenizer.json``, with
        ``tokenizer_config.json`` and ``special_tokens_map.json`` when present).

        ``lowercase_input`` lowercases the text before BERT's normalisation, as
        sentence-transformers' ``do_lower_case`` does.
        """
        settings = read_tokenizer_dir(directory)
        if lowercase_input:
            settings = settings.with_lowercased_input()
        try:
            return cls.from_settings(settings)
        except VocabError as e:
            raise VocabError(f"{directory}: {e}") from None

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``vocab.txt`` and ``tokenizer_config.json`` (readable by `transformers`), both or
        neither."""
        import json

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = tokenizer_config(
            self.lowercase,
            self.model_max_length,
            strip_accents=self.strip_accents,
            tokenize_chinese_chars=self.tokenize_chinese_chars,
            special_tokens=self.special_tokens,
            extra_special_tokens=self.extra_special_tokens,
        )
        vocab, config = vocab_text(self._itos), json.dumps(cfg, indent=2) + "\n"
        atomic_write_files(
            {
                directory / VOCAB_FILE: lambda p: p.write_text(
                    vocab, encoding="utf-8", newline="\n"
                ),
                directory / CONFIG_FILE: lambda p: p.write_text(config, encoding="utf-8"),
            }
        )

    # ------------------------------------------------------------------ vocabulary access
    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    def __len__(self) -> int:
        return len(self._itos)

    def id_to_token(self, index: int) -> str:
        if not isinstance(index, int) or not 0 <= index < len(self._itos):
            raise ValueError(
                f"token id {index!r} is outside the vocabulary (size {len(self._itos)})"
            )
        return self._itos[index]

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    # ------------------------------------------------------------------ encoding
    def _chunk(self, chunk: str) -> _Chunk:
        """WordPiece ids and spans of one whitespace-free chunk, cached."""
        hit = self._cache.get(chunk)
        if hit is not None:
            return hit
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        vocab = self.vocab
        for word, ws, we in split_chunk(
            chunk, self.lowercase, self.strip_accents, self.tokenize_chinese_chars
        ):
            pieces = wordpiece(word, vocab, self._max_piece, self.unk_token)
            if len(pieces) == 1 and pieces[0][0] == self.unk_token:
                ids.append(self.unk_token_id)
                spans.append((ws, we))
                continue
            if we - ws == len(word):  # the usual case: word and text align one to one
                for piece, s, e in pieces:
                    ids.append(vocab[piece])
                    spans.append((ws + s, ws + e))
            else:
                # Normalisation changed the length (removed or expanded characters): map piece
                # boundaries back through a per-character alignment of this word.
                align = _align_word(chunk[ws:we], self.lowercase, self.strip_accents)
                for piece, s, e in pieces:
                    ids.append(vocab[piece])
                    spans.append((ws + align[s], ws + align[e - 1] + 1))
        entry = (tuple(ids), tuple(spans))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[chunk] = entry
        return entry

    def _encode_text(self, text: str) -> tuple[list[int], list[tuple[int, _Chunk | None]]]:
        """Ids (no specials) and lazy offset spans for one text."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids: list[int] = []
        spans: list[tuple[int, _Chunk | None]] = []
        if not self._special_chars.isdisjoint(text) and self._special_re.search(text):
            pos = 0
            for m in self._special_re.finditer(text):
                self._encode_span(text, pos, m.start(), ids, spans)
                ids.append(self.vocab[m.group()])
                spans.append((0, ((0,), ((m.start(), m.end()),))))
                pos = m.end()
            self._encode_span(text, pos, len(text), ids, spans)
        else:
            chunk_of = self._chunk
            for m in CHUNK_RE.finditer(text):
                entry = chunk_of(m.group())
                ids.extend(entry[0])
                spans.append((m.start(), entry))
        return ids, spans

    def _encode_span(self, text: str, start: int, end: int, ids: list[int], spans: list) -> None:
        for m in CHUNK_RE.finditer(text, start, end):
            entry = self._chunk(m.group())
            ids.extend(entry[0])
            spans.append((m.start(), entry))

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of ``text`` without special tokens: ``"Unhappily"`` -> ``["un", "##happ", "##ily"]``."""
        ids, _ = self._encode_text(text)
        return [self._itos[i] for i in ids]

    def encode(
        self,
        text: str,
        pair: str | None = None,
        *,
        add_special_tokens: bool = True,
        max_length: int | None = None,
        truncation: bool | str = False,
    ) -> Encoding:
        """Encode a text, or a pair of texts, into ids, type ids, mask, tokens and offsets.

        ``truncation``: False (or ``"do_not_truncate"``) keeps every token; True is
        ``"longest_first"``; ``"only_first"`` / ``"only_second"`` cut one text of a pair only
        (see `truncation_lengths`). The limit is ``max_length`` (default ``model_max_length``),
        special tokens included. ``ValueError`` when the strategy cannot reach it.
        """
        strategy = _truncation_strategy(truncation)
        ids, spans = self._encode_text(text)
        if pair is None and strategy is None and add_special_tokens:  # the hot path
            n = len(ids) + 2
            return Encoding(
                self,
                [self.cls_token_id, *ids, self.sep_token_id],
                [0] * n,
                [1] * n,
                [(0, None), *spans, (0, None)],
                (len(ids), None, True),
            )
        pair_ids: list[int] | None = None
        pair_spans: list = []
        if pair is not None:
            pair_ids, pair_spans = self._encode_text(pair)
        truncated = False
        if strategy is not None:
            limit = self.model_max_length if max_length is None else max_length
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValueError(f"max_length must be a positive int, got {max_length!r}")
            specials = (3 if pair_ids is not None else 2) if add_special_tokens else 0
            room = limit - specials
            if room < 0:
                raise ValueError(
                    f"max_length {limit} leaves no room for the {specials} special tokens"
                )
            n1, n2 = truncation_lengths(
                len(ids), None if pair_ids is None else len(pair_ids), room, strategy
            )
            truncated = n1 < len(ids) or (pair_ids is not None and n2 < len(pair_ids))
            ids = ids[:n1]
            pair_ids = None if pair_ids is None else pair_ids[:n2]
        return self._assemble(ids, spans, pair_ids, pair_spans, add_special_tokens, truncated)

    def _assemble(
        self, ids, spans, pair_ids, pair_spans, add_special_tokens: bool, truncated: bool
    ) -> Encoding:
        # Offsets are resolved from all the spans, then cut to the (possibly truncated) ids.
        first_offsets = _resolve(spans)[: len(ids)]
        if add_special_tokens:
            out_ids = [self.cls_token_id, *ids, self.sep_token_id]
            offsets = [(0, 0), *first_offsets, (0, 0)]
        else:
            out_ids = list(ids)
            offsets = list(first_offsets)
        type_ids = [0] * len(out_ids)
        if pair_ids is not None:
            second = _resolve(pair_spans)[: len(pair_ids)]
            tail_ids = [*pair_ids, self.sep_token_id] if add_special_tokens else list(pair_ids)
            tail_offsets = [*second, (0, 0)] if add_special_tokens else second
            out_ids += tail_ids
            offsets += tail_offsets
            type_ids += [1] * len(tail_ids)
        segments = (len(ids), None if pair_ids is None else len(pair_ids), add_special_tokens)
        enc = Encoding(self, out_ids, type_ids, [1] * len(out_ids), [], segments, truncated)
        enc._offsets = offsets
        return enc

    def encode_batch(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        max_length: int | None = None,
        truncation: bool | str = False,
        padding: str | bool = "longest",
    ) -> list[Encoding]:
        """Encode many texts, or many pairs (``texts[i]`` with ``pairs[i]``), as `encode` does;
        ``padding`` is ``"longest"``, ``"max_length"`` or ``False``.

        Padding tokens get type id 0, attention 0, offset ``(0, 0)`` and sequence id None.
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError("texts must be a list of str (use encode() for a single text)")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(pairs)} pairs")
        if padding not in ("longest", "max_length", False, True):
            raise ValueError(f"padding must be 'longest', 'max_length' or False, got {padding!r}")
        encs = [
            self.encode(
                t,
                None if pairs is None else pairs[i],
                add_special_tokens=add_special_tokens,
                max_length=max_length,
                truncation=truncation,
            )
            for i, t in enumerate(texts)
        ]
        if padding is False or not encs:
            return encs
        if padding == "max_length":
            target = self.model_max_length if max_length is None else max_length
        else:
            target = max(len(e) for e in encs)
        for e in encs:
            missing = target - len(e)
            if missing > 0:
                offsets = e.offsets  # resolve before the ids grow
                e.ids = e.ids + [self.pad_token_id] * missing
                e.type_ids = e.type_ids + [0] * missing
                e.attention_mask = e.attention_mask + [0] * missing
                e._offsets = offsets + [(0, 0)] * missing
                e._tokens = None
        return encs

    # ------------------------------------------------------------------ decoding
    def decode(
        self,
        ids: Iterable[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool = False,
        wordpiece_cleanup: bool = False,
    ) -> str:
        """Ids back to text: pieces joined by spaces, ``##`` continuations glued to their word.

        ``decode(encode("Héllo, World!").ids, skip_special_tokens=True)`` -> ``"hello , world !"``.
        ``wordpiece_cleanup`` is what the Rust tokenizers' WordPiece decoder does (transformers'
        fast tokenizers, text-embeddings-inference): each token's leading space plus one of its
        patterns (``" ."``, ``" ,"``, ...) is cleaned token by token -> ``"hello, world!"``.
        ``clean_up_tokenization_spaces`` is transformers' Python clean-up of the joined text.
        """
        itos = self._itos
        tokens = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"token ids must be ints, got {type(i).__name__}")
            if not 0 <= i < len(itos):
                raise ValueError(f"token id {i} is outside the vocabulary (size {len(itos)})")
            if skip_special_tokens and i in self.special_ids:
                continue
            tokens.append(itos[i])
        if wordpiece_cleanup:
            # The first token keeps a "##" it starts with, as the Rust decoder does.
            pieces = [
                t if n == 0 else t[2:] if t.startswith("##") else " " + t
                for n, t in enumerate(tokens)
            ]
            return "".join(_wordpiece_cleanup(p) for p in pieces)
        text = " ".join(tokens).replace(" ##", "")
        if text.startswith(PREFIX):
            text = text[len(PREFIX) :]
        if clean_up_tokenization_spaces:
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'")):
                text = text.replace(a, b)
            for a, b in (
                (" n't", "n't"),
                (" 'm", "'m"),
                (" 's", "'s"),
                (" 've", "'ve"),
                (" 're", "'re"),
            ):
                text = text.replace(a, b)
        return text

    def normalize(self, text: str) -> str:
        """BERT's normalised text (what decoding an ``[UNK]``-free encoding gives back)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return normalized_text(
            text, self.lowercase, self.strip_accents, self.tokenize_chinese_chars
        )


# The Rust WordPiece decoder's clean-up, applied to each token with its leading space.
_WORDPIECE_CLEANUP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" do not", " don't"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def _wordpiece_cleanup(piece: str) -> str:
    """One decoded token (``" ."``) as the Rust WordPiece decoder cleans it (``"."``)."""
    for dirty, clean in _WORDPIECE_CLEANUP:
        piece = piece.replace(dirty, clean)
    return piece


def _resolve(spans: list[tuple[int, _Chunk | None]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for base, chunk in spans:
        if chunk is not None:
            out.extend((base + s, base + e) for s, e in chunk[1])
    return out


def _truncation_strategy(truncation: bool | str) -> str | None:
    """The strategy named by an ``encode(truncation=...)`` argument; None: do not truncate."""
    if truncation is True:
        return "longest_first"
    if truncation is False or truncation == "do_not_truncate":
        return None
    if truncation not in TRUNCATION_STRATEGIES:
        raise ValueError(
            f"truncation must be True, False, 'do_not_truncate' or one of "
            f"{', '.join(TRUNCATION_STRATEGIES)}; got {truncation!r}"
        )
    return truncation


def truncation_lengths(
    n_first: int, n_second: int | None, room: int, strategy: str = "longest_first"
) -> tuple[int, int | None]:
    """How many tokens of each text to keep so that they fit in ``room`` (max_length minus the
    special tokens), as the Rust tokenizer behind transformers' fast tokenizers cuts them.

    ``n_second`` is None for a single text. Strategies:
    - ``"longest_first"``: keep the shorter text whole if the longer one still gets at least as
      much, else split the room evenly (the odd token to the longer text):
      ``(10, 4, 8) -> (4, 4)``, ``(10, 2, 8) -> (6, 2)``, ``(9, 9, 5) -> (2, 3)``;
    - ``"only_first"`` / ``"only_second"``: cut that text alone, which must keep at least one
      token: ``(10, 4, 8, "only_first") -> (4, 4)``; ``(10, 4, 8, "only_second")`` is a
      ``ValueError`` (the second text would need -2 tokens), and so is ``"only_second"`` for a
      single text that needs cutting.
    A room of 0 empties both texts whatever the strategy, as the Rust tokenizer does.
    """
    if room < 0:
        raise ValueError(f"no room left for the texts ({room} tokens)")
    if room == 0:
        return 0, None if n_second is None else 0
    total = n_first + (n_second or 0)
    if total <= room:
        return n_first, n_second
    to_remove = total - room
    if strategy == "longest_first":
        if n_second is None:
            return room, None
        n1, n2 = n_first, n_second
        swap = n1 > n2
        if swap:
            n1, n2 = n2, n1
        n2 = n1 if n1 > room else max(n1, room - n1)
        if n1 + n2 > room:
            n1 = room // 2
            n2 = n1 + room % 2
        return (n2, n1) if swap else (n1, n2)
    if strategy == "only_first":
        if n_first <= to_remove:
            raise ValueError(
                f"truncation 'only_first' cannot fit the pair in {room} tokens: the second text "
                f"alone has {n_second} (use 'longest_first' or a larger max_length)"
            )
        return n_first - to_remove, n_second
    if strategy == "only_second":
        if n_second is None:
            raise ValueError("truncation 'only_second' needs a pair of texts, got one text")
        if n_second <= to_remove:
            raise ValueError(
                f"truncation 'only_second' cannot fit the pair in {room} tokens: the first text "
                f"alone has {n_first} (use 'longest_first' or a larger max_length)"
            )
        return n_first, n_second - to_remove
    raise ValueError(
        f"unknown truncation strategy {strategy!r}; use one of {TRUNCATION_STRATEGIES}"
    )


def _align_word(original: str, lowercase: bool, strip_accents: bool | None) -> list[int]:
    """For each normalised character of a word, the index of the original character it came from."""
    from .normalization import normalize_char

    align: list[int] = []
    for i, ch in enumerate(original):
        align.extend([i] * len(normalize_char(ch, lowercase, strip_accents)))
    return align
