"""BERT basic tokenization: text cleanup, lowercasing, accent stripping and splitting, with offsets.

This module turns raw text into "words" (the units WordPiece then splits), each carrying its
character span in the original text. It follows the reference implementation that `transformers`
uses today (the Rust `BertNormalizer` + `BertPreTokenizer` of `tokenizers`):

- characters U+0000, U+FFFD and "other" characters (categories Cc, Cf, Co, Cs; tab, newline and
  carriage return excepted) are removed, so ``"a\\u200bb"`` is one word ``"ab"``;
- Unicode whitespace (``\\t \\n \\r``, Zs, U+2028/U+2029) separates words;
- every CJK ideograph becomes a word of its own (unless ``split_cjk`` is off:
  ``tokenize_chinese_chars: false``);
- accents are stripped (NFD, then non-spacing marks dropped) when ``strip_accents`` is true, or
  when it is None and lowercasing (BERT's rule); when lowercasing, every character is lowercased
  on its own (so ``"ΟΔΟΣ"`` gives ``"οδοσ"``: no Greek final-sigma rule);
- punctuation (Unicode P* plus the ASCII symbol ranges) is split off as single-character words.

Example: ``split_words("Héllo, wörld!")`` -> ``[("hello", 0, 5), (",", 5, 6), ("world", 7, 12),
("!", 12, 13)]``.

Deliberately not handled: the legacy pure-Python `BertTokenizer` differs from the Rust one on a few
exotic characters (private-use characters and U+2028/U+2029 are kept by it, and it applies the Greek
final-sigma rule); we follow the Rust tokenizer, which is what `BertTokenizer` is in transformers 5.
The Unicode tables are the running Python's `unicodedata`, not Rust's.
"""

from __future__ import annotations

import re
import unicodedata

# Whitespace as the Rust normalizer sees it: Unicode White_Space minus the control characters
# (VT, FF, NEL are category Cc, so the cleanup step deletes them before they can separate words).
WHITESPACE = "\t\n\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_WS_CLASS = "".join(f"\\u{ord(c):04x}" for c in WHITESPACE)
# A "chunk" is a maximal run of non-whitespace characters; normalisation never crosses chunks,
# which is what makes a per-chunk cache exact.
CHUNK_RE = re.compile(f"[^{_WS_CLASS}]+")

# ASCII fast path: printable ASCII splits into alphanumeric runs and single punctuation marks.
_ASCII_WORD_RE = re.compile(r"[A-Za-z0-9]+|[!-/:-@\[-`{-~]")
# ASCII characters the cleanup deletes (controls other than tab/newline/CR, and DEL).
ASCII_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

_REMOVED_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs"})


def is_whitespace(char: str) -> bool:
    """True for characters that separate words (``" "``, ``"\\t"``, ``"\\u3000"``)."""
    return char in WHITESPACE


def is_removed(char: str) -> bool:
    """True for characters the cleanup deletes: NUL, U+FFFD and Cc/Cf/Co/Cs (tab/newline/CR kept)."""
    cp = ord(char)
    if cp == 0 or cp == 0xFFFD:
        return True
    if char in "\t\n\r":
        return False
    return unicodedata.category(char) in _REMOVED_CATEGORIES


def is_punctuation(char: str) -> bool:
    """BERT's punctuation: ASCII symbol ranges (``"$"``, ``"^"``, ``"`"``) and Unicode P* categories."""
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def is_cjk(char: str) -> bool:
    """True for CJK Unified Ideographs (and extensions/compatibility blocks), as BERT defines them."""
    cp = ord(char)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def normalize_char(char: str, lowercase: bool, strip_accents: bool | None = None) -> str:
    """One original character -> its normalised form (possibly empty or several characters).

    ``"É"`` -> ``"e"`` when lowercasing, ``"\\u200b"`` -> ``""``. ``strip_accents`` None follows
    ``lowercase``, as in BERT (and transformers' ``BertNormalizer``).
    """
    if is_removed(char):
        return ""
    if strip_accents is None:
        strip_accents = lowercase
    if strip_accents:
        decomposed = unicodedata.normalize("NFD", char)
        char = "".join(c for c in decomposed if unicodedata.category(c) != "Mn")
    if lowercase:
        return "".join(c.lower() for c in char)
    return char


def split_chunk(
    chunk: str, lowercase: bool = True, strip_accents: bool | None = None, split_cjk: bool = True
) -> list[tuple[str, int, int]]:
    """Split one whitespace-free chunk into normalised words with spans relative to the chunk.

    ``split_chunk("Don't")`` -> ``[("don", 0, 3), ("'", 3, 4), ("t", 4, 5)]``.
    """
    if chunk.isascii() and ASCII_CONTROL_RE.search(chunk) is None:
        # Accents and CJK characters are not ASCII: only the case matters here.
        text = chunk.lower() if lowercase else chunk
        return [(m.group(), m.start(), m.end()) for m in _ASCII_WORD_RE.finditer(text)]

    words: list[tuple[str, int, int]] = []
    current: list[str] = []
    start = end = 0

    def flush() -> None:
        if current:
            words.append(("".join(current), start, end))
            current.clear()

    for i, char in enumerate(chunk):
        normalized = normalize_char(char, lowercase, strip_accents)
        for c in normalized:
            if is_whitespace(c):  # lowercasing never yields whitespace, but be safe
                flush()
            elif (split_cjk and is_cjk(c)) or is_punctuation(c):
                flush()
                words.append((c, i, i + 1))
            else:
                if not current:
                    start = i
                current.append(c)
                end = i + 1
    flush()
    return words


def split_words(
    text: str, lowercase: bool = True, strip_accents: bool | None = None, split_cjk: bool = True
) -> list[tuple[str, int, int]]:
    """Basic-tokenize a whole text into ``(word, start, end)`` with spans in the original text.

    ``split_words("Héllo, wörld!")`` -> ``[("hello", 0, 5), (",", 5, 6), ("world", 7, 12), ("!", 12, 13)]``.
    """
    out: list[tuple[str, int, int]] = []
    for m in CHUNK_RE.finditer(text):
        base = m.start()
        words = split_chunk(m.group(), lowercase, strip_accents, split_cjk)
        out.extend((w, base + s, base + e) for w, s, e in words)
    return out


def basic_tokenize(
    text: str, lowercase: bool = True, strip_accents: bool | None = None, split_cjk: bool = True
) -> list[str]:
    """The normalised words of ``text``: ``"Héllo, wörld!"`` -> ``["hello", ",", "world", "!"]``."""
    return [w for w, _, _ in split_words(text, lowercase, strip_accents, split_cjk)]


def normalized_text(
    text: str, lowercase: bool = True, strip_accents: bool | None = None, split_cjk: bool = True
) -> str:
    """BERT's normalised text, words joined by single spaces: ``"Héllo,wörld"`` -> ``"hello , world"``."""
    return " ".join(basic_tokenize(text, lowercase, strip_accents, split_cjk))
