"""Learning a WordPiece vocabulary from a corpus, the way BERT's `tokenizers` trainer does.

Words are counted after basic tokenization; every word starts as its characters, the first one
plain and the others with the ``##`` continuation prefix (``"hug"`` -> ``h ##u ##g``). Then the most
frequent adjacent pair is merged, again and again, until the vocabulary is full or the best pair is
rarer than ``min_frequency``; a merge of ``h`` and ``##u`` adds ``hu``. Ties go to the pair of
smaller symbol ids, so the result depends only on the corpus and the settings.

The vocabulary is: special tokens, the sorted alphabet, the sorted ``##`` alphabet, then the merged
tokens in the order they were learned.

Deliberately not handled: limiting the alphabet (every character seen is kept, like
`tokenizers` with ``limit_alphabet=None``) and the likelihood-based score of Google's original
WordPiece; pairs are scored by frequency, as `tokenizers` does.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable

from .normalization import ASCII_CONTROL_RE, CHUNK_RE, split_chunk
from .vocab import SPECIAL_TOKENS
from .wordpiece import PREFIX

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]


def count_words(lines: Iterable[str], lowercase: bool = True) -> Counter[str]:
    """Count normalised words over ``lines``: ``["A cat, a CAT."]`` -> ``{"a": 2, "cat": 2, ",": 1, ".": 1}``.

    Whole chunks are counted first (at C speed for clean ASCII), then each distinct chunk is
    normalised once: corpora repeat their chunks far more often than they have distinct ones.
    """
    chunks: Counter[str] = Counter()
    for line in lines:
        if line.isascii() and ASCII_CONTROL_RE.search(line) is None:
            chunks.update(line.split())
        else:
            chunks.update(CHUNK_RE.findall(line))
    words: Counter[str] = Counter()
    for chunk, n in chunks.items():
        for word, _, _ in split_chunk(chunk, lowercase):
            words[word] += n
    return words


def learn_vocab(
    word_counts: Counter[str] | dict[str, int],
    vocab_size: int,
    min_frequency: int = 2,
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS,
    progress: ProgressFn | None = None,
) -> list[str]:
    """Run the merges over counted words and return the vocabulary as a token list (id order)."""
    if vocab_size < len(special_tokens):
        raise ValueError(
            f"vocab_size {vocab_size} is smaller than the {len(special_tokens)} special tokens"
        )
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")

    # Sorting makes the outcome independent of the order the corpus was read in.
    items = sorted(word_counts.items())
    first_chars = sorted({w[0] for w, _ in items if w})
    cont_chars = sorted({c for w, _ in items for c in w[1:]})
    symbols: list[str] = list(special_tokens)
    index: dict[str, int] = {s: i for i, s in enumerate(symbols)}
    for s in first_chars + [PREFIX + c for c in cont_chars]:
        if s not in index:
            index[s] = len(symbols)
            symbols.append(s)

    words: list[list[int]] = []
    counts: list[int] = []
    for w, n in items:
        if not w:
            continue
        words.append([index[w[0]], *(index[PREFIX + c] for c in w[1:])])
        counts.append(n)

    pair_counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for wi, syms in enumerate(words):
        n = counts[wi]
        for pair in itertools.pairwise(syms):
            pair_counts[pair] = pair_counts.get(pair, 0) + n
            where.setdefault(pair, set()).add(wi)
    heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    changed: set[tuple[int, int]] = set()

    def bump(pair: tuple[int, int], d: int, wi: int) -> None:
        c = pair_counts.get(pair, 0) + d
        if c > 0:
            pair_counts[pair] = c
        else:
            pair_counts.pop(pair, None)
        if d > 0:
            where.setdefault(pair, set()).add(wi)
            changed.add(pair)

    start_size = len(symbols)
    while len(symbols) < vocab_size and heap:
        neg, a, b = heapq.heappop(heap)
        current = pair_counts.get((a, b), 0)
        if current != -neg:  # stale entry: counts changed since it was pushed
            if current > 0:
                heapq.heappush(heap, (-current, a, b))
            continue
        if current < min_frequency:
            break
        sa, sb = symbols[a], symbols[b]
        new_symbol = sa + sb[len(PREFIX) :]
        if new_symbol in index:
            # The same string can be reached by two merge paths; reuse its id so the
            # vocabulary never holds a token twice.
            new_id = index[new_symbol]
        else:
            new_id = len(symbols)
            index[new_symbol] = new_id
            symbols.append(new_symbol)
        changed.clear()
        for wi in where.pop((a, b), ()):
            syms = words[wi]
            length = len(syms)
            # Non-overlapping occurrences, left to right (so "a b a b" merges twice).
            occ: list[int] = []
            try:
                i = syms.index(a)
                while True:
                    if i + 1 < length and syms[i + 1] == b:
                        occ.append(i)
                        i += 2
                    else:
                        i += 1
                    i = syms.index(a, i)
            except ValueError:
                pass
            if not occ:  # the word lost this pair to an earlier merge
                continue
            n = counts[wi]
            # Only the pairs next to a merge change; fix their counts locally.
            prev_end = -1
            for i in occ:
                if i > 0:
                    if i - 1 == prev_end:  # "a b a b": the middle (b, a) becomes (new, new)
                        bump((b, a), -n, wi)
                        bump((new_id, new_id), n, wi)
                    else:
                        left = syms[i - 1]
                        bump((left, a), -n, wi)
                        bump((left, new_id), n, wi)
                j = i + 2
                if j < length and not (syms[j] == a and j + 1 < length and syms[j + 1] == b):
                    right = syms[j]
                    bump((b, right), -n, wi)
                    bump((new_id, right), n, wi)
                prev_end = i + 1
            merged: list[int] = []
            last = 0
            for i in occ:
                merged.extend(syms[last:i])
                merged.append(new_id)
                last = i + 2
            merged.extend(syms[last:])
            words[wi] = merged
        pair_counts.pop((a, b), None)
        for pair in changed:
            c = pair_counts.get(pair)
            if c:
                heapq.heappush(heap, (-c, pair[0], pair[1]))
        if progress is not None:
            progress(len(symbols) - start_size)
    logger.info("learned %d tokens (%d merges)", len(symbols), len(symbols) - start_size)
    return symbols


def read_lines(files: Iterable[str | os.PathLike]) -> Iterable[str]:
    """Yield the documents of plain-text files (one per line) or ``.jsonl`` files (``text`` field)."""
    import json

    for path in files:
        path = os.fspath(path)
        with open(path, encoding="utf-8") as fh:
            if path.endswith(".jsonl"):
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
                    text = record.get("text") if isinstance(record, dict) else None
                    if not isinstance(text, str):
                        raise ValueError(
                            f"{path}:{lineno}: expected an object with a string 'text' field"
                        )
                    yield text
            else:
                yield from fh
