"""Count-based baselines for the whole-word cloze: a unigram ranking and a two-sided trigram model.

`NGramModel.fit(files)` counts words of the training files (lowercased, split like BERT's
pre-tokenizer: runs of word characters, and single punctuation marks), one line per sentence
with two boundary markers on each side. It is an interpolated absolute-discounting trigram
language model (discount 0.75, the usual choice; Kneser-Ney without the continuation counts):

    P(c | a b) = max(n(abc) - D, 0) / n(ab.) + D * N1+(ab.) / n(ab.) * P(c | b)

and likewise P(c | b) from bigrams down to an add-0.1 unigram. A cloze candidate `w` between the
left words `l2 l1` and the right words `r1 r2` scores by the probability of the sentence with `w`
in the gap, i.e. of the three trigrams that contain it:

    log P(w | l2 l1) + log P(r1 | l1 w) + log P(r2 | w r1)

so it uses context on both sides, as a masked language model does. Candidates are the whole-word
tokens of a vocabulary. Candidates seen next to neither `l1` nor `r1` all back off the same way,
so their scores are one vector operation; only the few hundred seen ones are scored one by one.

`unigram_predictor` ranks the candidates by training frequency alone (the same answer for every
gap): the floor any model must clear.

Deliberately not here: higher orders, modified Kneser-Ney, tuning the discount on held-out data
(the valid files are what the baseline is measured on).
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from training.evaluation.cloze import TOP_K, ClozeItem

__all__ = ["NGramModel", "NGramPredictor", "unigram_predictor", "words"]

DISCOUNT = 0.75
UNIGRAM_ADD = 0.1
BOS, EOS = "<s>", "</s>"
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def words(text: str, lowercase: bool = True) -> list[str]:
    """BERT-style pre-tokenization: `"Of, or (x)"` -> `["of", ",", "or", "(", "x", ")"]`."""
    return _TOKEN_RE.findall(text.lower() if lowercase else text)


class NGramModel:
    """Interpolated absolute-discounting trigram counts over word ids (see the module docstring)."""

    def __init__(self, lowercase: bool = True) -> None:
        self.lowercase = lowercase
        self.ids: dict[str, int] = {}
        self.uni: Counter[int] = Counter()
        self.bi: Counter[tuple[int, int]] = Counter()
        self.tri: Counter[tuple[int, int, int]] = Counter()
        self.ctx1: Counter[int] = Counter()  # n(b.): bigrams starting with b
        self.ctx2: Counter[tuple[int, int]] = Counter()  # n(ab.)
        self.nf1: Counter[int] = Counter()  # N1+(b.): distinct followers of b
        self.nf2: Counter[tuple[int, int]] = Counter()  # N1+(ab.)
        self.follow: dict[int, set[int]] = defaultdict(set)  # b -> {c : n(bc) > 0}
        self.precede: dict[int, set[int]] = defaultdict(set)  # c -> {b : n(bc) > 0}
        self.total = 0

    # -- counting ---------------------------------------------------------------------------------
    def _id(self, w: str) -> int:
        i = self.ids.get(w)
        if i is None:
            i = self.ids[w] = len(self.ids)
        return i

    @classmethod
    def fit(cls, files: Iterable[str | Path], lowercase: bool = True) -> NGramModel:
        m = cls(lowercase)
        bos, eos = m._id(BOS), m._id(EOS)
        for path in files:
            with Path(path).open(encoding="utf-8") as f:
                for line in f:
                    toks = words(line, lowercase)
                    if toks:
                        m.add([bos, bos, *map(m._id, toks), eos, eos])
        m._finish()
        return m

    def add(self, seq: Sequence[int]) -> None:
        for w in seq[2:-1]:  # real words and one </s>, once each
            self.uni[w] += 1
        self.bi.update(itertools.pairwise(seq[1:]))
        self.tri.update(zip(seq, seq[1:], seq[2:], strict=False))  # the shorter ends it

    def _finish(self) -> None:
        for (b, c), n in self.bi.items():
            self.ctx1[b] += n
            self.nf1[b] += 1
            self.follow[b].add(c)
            self.precede[c].add(b)
        for (a, b, _), n in self.tri.items():
            self.ctx2[(a, b)] += n
            self.nf2[(a, b)] += 1
        self.total = sum(self.uni.values())
        self.vocab_size = len(self.ids)

    # -- probabilities ----------------------------------------------------------------------------
    def p1(self, c: int) -> float:
        n = self.uni.get(c, 0) if c >= 0 else 0
        return (n + UNIGRAM_ADD) / (self.total + UNIGRAM_ADD * (self.vocab_size + 1))

    def p2(self, c: int, b: int) -> float:
        ctx = self.ctx1.get(b, 0)
        if not ctx:
            return self.p1(c)
        n = self.bi.get((b, c), 0)
        return max(n - DISCOUNT, 0.0) / ctx + DISCOUNT * self.nf1[b] / ctx * self.p1(c)

    def p3(self, c: int, a: int, b: int) -> float:
        ctx = self.ctx2.get((a, b), 0)
        if not ctx:
            return self.p2(c, b)
        n = self.tri.get((a, b, c), 0)
        return max(n - DISCOUNT, 0.0) / ctx + DISCOUNT * self.nf2[(a, b)] / ctx * self.p2(c, b)

    def _bow1(self, b: int) -> float:
        """Weight of P(c) inside P(c | b) for a c never seen after b."""
        ctx = self.ctx1.get(b, 0)
        return DISCOUNT * self.nf1[b] / ctx if ctx else 1.0

    def _bow2(self, a: int, b: int) -> float:
        ctx = self.ctx2.get((a, b), 0)
        return DISCOUNT * self.nf2[(a, b)] / ctx if ctx else 1.0

    def gap_score(self, w: int, l2: int, l1: int, r1: int, r2: int) -> float:
        """log P(w | l2 l1) + log P(r1 | l1 w) + log P(r2 | w r1)."""
        return (
            math.log(self.p3(w, l2, l1))
            + math.log(self.p3(r1, l1, w))
            + math.log(self.p3(r2, w, r1))
        )

    # -- cloze ------------------------------------------------------------------------------------
    def word_id(self, w: str) -> int:
        """Id of a word, -1 if never counted."""
        return self.ids.get(w, -1)

    def predictor(self, candidates: Sequence[str], k: int = TOP_K) -> NGramPredictor:
        """A cloze predictor: items -> top-k of `candidates` (vocabulary words) per gap."""
        return NGramPredictor(self, candidates, k)


class NGramPredictor:
    """Ranks a fixed candidate list for each gap by `NGramModel.gap_score`, fast."""

    def __init__(self, model: NGramModel, candidates: Sequence[str], k: int = TOP_K) -> None:
        self.model, self.k, self.names = model, k, list(candidates)
        cand = [model.word_id(w) for w in self.names]
        # Per candidate: log P(w) + log bow(w), the part of an unseen candidate's score that
        # depends on it (see scores()).
        self.base = np.log([model.p1(c) for c in cand]) + np.log(
            [model._bow1(c) if c >= 0 else 1.0 for c in cand]
        )
        self.index = {c: i for i, c in enumerate(cand) if c >= 0}
        self.bos, self.eos = model.ids[BOS], model.ids[EOS]

    def context(self, item: ClozeItem) -> tuple[int, int, int, int]:
        m = self.model
        left = [self.bos, self.bos, *(m.word_id(w) for w in words(item.left, m.lowercase))]
        right = [*(m.word_id(w) for w in words(item.right, m.lowercase)), self.eos, self.eos]
        return left[-2], left[-1], right[0], right[1]

    def scores(self, item: ClozeItem) -> np.ndarray:
        """`gap_score` of every candidate for this item's gap."""
        m = self.model
        l2, l1, r1, r2 = self.context(item)
        # Never seen after l1 nor before r1: every factor backs off, so the score is
        # log P(w) + log bow(w) + terms that do not depend on w.
        const = (
            math.log(m._bow2(l2, l1) * m._bow1(l1)) + math.log(m.p1(r1)) + math.log(m.p2(r2, r1))
        )
        scores = self.base + const
        for w in m.follow.get(l1, set()) | m.precede.get(r1, set()):
            i = self.index.get(w)
            if i is not None:
                scores[i] = m.gap_score(w, l2, l1, r1, r2)
        return scores

    def __call__(self, items: Sequence[ClozeItem]) -> list[list[str]]:
        out = []
        for item in items:
            scores = self.scores(item)
            k = min(self.k, len(scores))
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top], kind="stable")]
            out.append([self.names[i] for i in top])
        return out


def unigram_predictor(model: NGramModel, candidates: Sequence[str], k: int = TOP_K):
    """Items -> the k most frequent candidates, whatever the context."""
    counts = np.array([model.uni.get(model.word_id(w), 0) for w in candidates])
    best = [candidates[i] for i in np.argsort(-counts, kind="stable")[:k]]
    return lambda items: [list(best) for _ in items]
