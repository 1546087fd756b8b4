"""Greedy longest-match-first WordPiece: one normalised word -> vocabulary pieces.

``wordpiece("unaffable", vocab)`` -> ``[("un", 0, 2), ("##aff", 2, 5), ("##able", 5, 9)]`` with the
vocabulary of the BERT paper. A word that cannot be covered, or that is longer than 100 characters,
becomes a single ``[UNK]`` spanning the whole word, exactly as BERT does.

Deliberately not handled: normalisation and splitting (see `normalization`) and caching (the
tokenizer caches whole chunks, which is where the speed comes from).
"""

from __future__ import annotations

from .vocab import MAX_WORD_CHARS

PREFIX = "##"


def wordpiece(
    word: str, vocab: dict[str, int], max_piece_chars: int, unk: str = "[UNK]"
) -> list[tuple[str, int, int]]:
    """Split ``word`` into ``(piece, start, end)`` with character spans inside the word.

    ``max_piece_chars`` is the length of the longest vocabulary entry (without ``##``): no match
    can be longer, so the search starts there instead of at the end of a long word.
    """
    n = len(word)
    if n > MAX_WORD_CHARS:
        return [(unk, 0, n)]
    if word in vocab:
        return [(word, 0, n)]
    pieces: list[tuple[str, int, int]] = []
    start = 0
    while start < n:
        end = min(n, start + max_piece_chars)
        found = None
        while end > start:
            sub = word[start:end]
            if start:
                sub = PREFIX + sub
            if sub in vocab:
                found = sub
                break
            end -= 1
        if found is None:
            return [(unk, 0, n)]
        pieces.append((found, start, end))
        start = end
    return pieces
