"""Sentence pairs from WordNet-style gloss files: (example sentence, definition of the same gloss).

The bundled WordNet text has one gloss per line, ``lemmas: definition. Example. Example.``; the
definition ends at the first sentence boundary, and every following sentence is a usage example.
An example and its own definition are a positive pair: the supervised signal of the contrastive
stage (train split) and the retrieval benchmark (valid split, where each example must find its
definition among all definitions that have examples).

Only the text after ``lemmas:`` is used, and the lemmas are dropped from the definition on purpose:
an example usually contains its headword, so keeping it would turn retrieval into string matching
(a TF-IDF baseline reaches recall@1 0.53 with headwords and about 0.1 without).

A line is a gloss only when the text before the first ``": "`` reads as a lemma list (comma-separated
names of one to nine words, as every line of the bundled WordNet files does); other lines, and
glosses without an example, yield nothing. A Python-docs file passed by mistake therefore gives
few pairs, not none: a docs line such as ``Broken pipe: write to pipe with no readers.`` is
indistinguishable from a gloss. This module does not read more than the files it is given:
callers decide which split a pair may come from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# A sentence ends at . ! or ? followed by whitespace and something that starts a sentence.
_BOUNDARY = re.compile(r"[.!?]\s+(?=[A-Z0-9\"'(])")
# ...unless the period closes an abbreviation or an initial ("U.S. Army", "St. Louis", "J. Smith").
_ABBREVIATION = re.compile(
    r"(?:\b(?:[A-Z]|St|Mr|Mrs|Ms|Dr|Jr|Sr|vs|etc|e\.g|i\.e|U\.S|U\.K|No|Co|Inc|Ltd|Mt|Ft|Gen|Col"
    r"|Lt|Capt|Rev|Prof|Sen|Gov)\.)$"
)
# "lemma, lemma two, ...": WordNet lemmas are 1-9 words ("rock 'n' roll", ".22 caliber", "'hood").
_WORD = r"[\w.'][\w.'/-]*"
_LEMMA = rf"{_WORD}(?: {_WORD}){{0,8}}"
_LEMMAS = re.compile(rf"{_LEMMA}(?:, {_LEMMA})*")


_GLOSS_FILE_SAMPLE = 2000  # lines read to decide whether a file is a gloss file
_GLOSS_FILE_FRACTION = 0.5


@dataclass(frozen=True)
class Gloss:
    """One parsed gloss line: its lemmas, its definition and its usage examples."""

    lemmas: str
    definition: str
    examples: tuple[str, ...]


def split_sentences(text: str) -> list[str]:
    """Split gloss text at sentence boundaries, keeping abbreviations and initials together."""
    parts: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        end = match.start() + 1
        if _ABBREVIATION.search(text[start:end]):
            continue
        parts.append(text[start:end].strip())
        start = match.end()
    tail = text[start:].strip()
    if tail:
        parts.append(tail)
    return parts


def parse_gloss(line: str) -> Gloss | None:
    """Parse ``lemmas: definition. Example. ...``; None for a line that is not a gloss."""
    lemmas, sep, body = line.strip().partition(": ")
    if not sep or not body or not _LEMMAS.fullmatch(lemmas):
        return None
    sentences = split_sentences(body)
    if not sentences:
        return None
    return Gloss(lemmas=lemmas, definition=sentences[0], examples=tuple(sentences[1:]))


def iter_glosses(paths: Iterable[str | Path]) -> Iterator[Gloss]:
    """Every parsable gloss of the given files, in file order."""
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                gloss = parse_gloss(line)
                if gloss is not None:
                    yield gloss


def example_definition_pairs(paths: Iterable[str | Path]) -> list[tuple[str, str]]:
    """All (example, definition) pairs of the files: one pair per usage example."""
    return [(ex, g.definition) for g in iter_glosses(paths) for ex in g.examples]


@dataclass(frozen=True)
class RetrievalSet:
    """Queries (examples), candidates (definitions) and, per query, its candidate's index."""

    queries: list[str]
    candidates: list[str]
    targets: list[int]


def retrieval_set(paths: Iterable[str | Path]) -> RetrievalSet:
    """Every example as a query; the candidates are the definitions of glosses with examples.

    A definition shared by two glosses appears once, so a query is never marked wrong for
    finding an identical text under another gloss.
    """
    return retrieval_set_of(example_definition_pairs(paths))


def retrieval_set_of(pairs: Iterable[tuple[str, str]]) -> RetrievalSet:
    """(query, relevant text) pairs as a `RetrievalSet`: one query per pair, the texts as
    candidates, each distinct text once (in order of first appearance).

    Example: [("q1", "a"), ("q2", "b"), ("q3", "a")] -> queries [q1, q2, q3], candidates
    [a, b], targets [0, 1, 0].
    """
    queries: list[str] = []
    candidates: list[str] = []
    targets: list[int] = []
    index: dict[str, int] = {}
    for query, text in pairs:
        target = index.setdefault(text, len(candidates))
        if target == len(candidates):
            candidates.append(text)
        queries.append(query)
        targets.append(target)
    return RetrievalSet(queries=queries, candidates=candidates, targets=targets)


def text_key(text: str) -> str:
    """What makes two sentences the same for the holdout: case and white space aside.

    Example: "The  Cat sat." -> "the cat sat."
    """
    return " ".join(text.lower().split())


def holdout_keys(paths: Iterable[str | Path]) -> set[str]:
    """`text_key` of every definition and example of the gloss files `paths`."""
    held: set[str] = set()
    for gloss in iter_glosses(paths):
        held.add(text_key(gloss.definition))
        held.update(text_key(e) for e in gloss.examples)
    return held


def training_pairs(
    train_paths: Iterable[str | Path], holdout_paths: Iterable[str | Path] = ()
) -> list[tuple[str, str]]:
    """(example, definition) pairs of the training files that share no text with the holdout files.

    The corpus splits are disjoint by gloss, but the same sentence can occur in two glosses (a
    shared definition, a reused example). A pair is dropped when its example or its definition
    equals (case- and whitespace-insensitively) any sentence of a holdout gloss, so nothing the
    retrieval benchmark asks about is ever trained on.
    """
    held = holdout_keys(holdout_paths)
    return [
        (ex, d)
        for ex, d in example_definition_pairs(train_paths)
        if text_key(ex) not in held and text_key(d) not in held
    ]


def gloss_files(paths: Iterable[str | Path]) -> list[str]:
    """The files among `paths` that are WordNet-style gloss files.

    A file counts when at least half of its first lines parse as ``lemmas: definition...``.
    Python-docs prose has an occasional ``Note: ...`` line that would otherwise give a few
    hundred nonsense "pairs" (WordNet: 100% of lines parse, the bundled Python docs: 3%).
    """
    out = []
    for path in paths:
        if str(path).lower().endswith(".jsonl"):
            continue
        lines = glosses = 0
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                lines += 1
                glosses += parse_gloss(line) is not None
                if lines >= _GLOSS_FILE_SAMPLE:
                    break
        if lines and glosses >= _GLOSS_FILE_FRACTION * lines:
            out.append(str(path))
    return out
