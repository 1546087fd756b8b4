"""Whole-word cloze: what a user of `/fill-mask` sees, measured on held-out lines.

Each item is one line of a corpus file with one whole word replaced by `[MASK]`; a model scores
when the word is its top prediction (top-1) or among its five best (top-5). This is the figure a
person trying the service judges, unlike masked-token accuracy, which averages over `##` pieces,
punctuation and 10% unmasked or random tokens.

Items (`cloze_items`), fixed by a seed and the vocabulary:

* lines of 6-30 whitespace-separated words and at most 200 characters;
* the masked word is a run of at least 3 ASCII letters that is a word of its own (no letter,
  digit or underscore touching it) and a single whole-word token of the vocabulary (lowercased
  when the vocabulary is uncased), so one `[MASK]` can be filled with it;
* up to `max_items` lines per file, drawn without replacement, one word per line, both drawn from
  a generator seeded by `(seed, crc32(file name))`, so adding a file leaves the others' items as
  they were.

Comparing models with different vocabularies: pass a `vocab_filter` that accepts only words all
of them hold as single tokens (`bench/bench_cloze.py` does), so every model sees the same items.

Predictions come from the model's own top-k over the whole vocabulary at the `[MASK]` position,
exactly as `/fill-mask` ranks them (a test sends the same items through the server). The
count-based baselines that bench the model live in `training/evaluation/ngram.py`.

Deliberately not here: multi-token words (one `[MASK]` per item), cased answers for uncased
vocabularies, and any restriction of the model's candidates to whole words.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model import BertForMaskedLM
from tokenization import WordPieceTokenizer

__all__ = [
    "ClozeItem",
    "ClozeScore",
    "cloze_items",
    "eligible_line",
    "evaluate_checkpoint_cloze",
    "model_predictor",
    "score_cloze",
    "vocab_word_filter",
]

MIN_WORDS, MAX_WORDS, MAX_CHARS = 6, 30, 200
MIN_LETTERS = 3
TOP_K = 5
# A whole word of ASCII letters: no word character (letter, digit, underscore) on either side, so
# BERT's pre-tokenizer makes it one word (punctuation and spaces split it off).
WORD_RE = re.compile(rf"(?<!\w)[A-Za-z]{{{MIN_LETTERS},}}(?!\w)")

Predictor = Callable[[Sequence[str]], list[list[str]]]


@dataclass(frozen=True)
class ClozeItem:
    """One line with one word to fill: `text[start:end]` is the word."""

    corpus: str  # file name the line comes from (the "by corpus" key)
    line: int  # 1-based line number in that file
    text: str
    start: int
    end: int
    answer: str  # the word as the vocabulary spells it (lowercased for uncased vocabularies)

    def masked(self, mask_token: str = "[MASK]") -> str:
        return self.text[: self.start] + mask_token + self.text[self.end :]

    @property
    def left(self) -> str:
        return self.text[: self.start]

    @property
    def right(self) -> str:
        return self.text[self.end :]


def eligible_line(text: str) -> bool:
    """6-30 whitespace-separated words and at most 200 characters."""
    return len(text) <= MAX_CHARS and MIN_WORDS <= len(text.split()) <= MAX_WORDS


def vocab_word_filter(vocabs: Iterable[Any]) -> Callable[[str], str | None]:
    """A filter accepting words that every tokenizer in `vocabs` holds as one whole-word token.

    Returns the word as the first vocabulary spells it (lowercased when that one is uncased), or
    None. Tokenizers need `vocab` (token -> id) and `lowercase`.
    """
    vocabs = list(vocabs)
    if not vocabs:
        raise ValueError("vocab_word_filter needs at least one tokenizer")

    def accept(word: str) -> str | None:
        out = None
        for tok in vocabs:
            form = word.lower() if tok.lowercase else word
            if form not in tok.vocab:
                return None
            out = form if out is None else out
        return out

    return accept


def cloze_items(
    paths: Sequence[str | Path],
    vocab_filter: Callable[[str], str | None],
    *,
    seed: int = 0,
    max_items: int = 2000,
) -> list[ClozeItem]:
    """The cloze items of `paths` (see the module docstring), in file then line order."""
    items: list[ClozeItem] = []
    for path in paths:
        path = Path(path)
        candidates: list[tuple[int, str, list[tuple[int, int, str]]]] = []
        with path.open(encoding="utf-8") as f:
            for lineno, raw in enumerate(f, 1):
                text = raw.strip()
                if not text or not eligible_line(text):
                    continue
                words = []
                for m in WORD_RE.finditer(text):
                    answer = vocab_filter(m.group())
                    if answer is not None:
                        words.append((m.start(), m.end(), answer))
                if words:
                    candidates.append((lineno, text, words))
        rng = np.random.default_rng([seed, zlib.crc32(path.name.encode())])
        n = min(max_items, len(candidates)) if max_items > 0 else len(candidates)
        chosen = np.sort(rng.choice(len(candidates), size=n, replace=False)) if n else []
        for i in chosen:
            lineno, text, words = candidates[int(i)]
            start, end, answer = words[int(rng.integers(len(words)))]
            items.append(ClozeItem(path.name, lineno, text, start, end, answer))
    return items


@dataclass
class ClozeScore:
    items: int
    top1: float
    top5: float
    by_corpus: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "top1": self.top1,
            "top5": self.top5,
            "by_corpus": self.by_corpus,
        }


def score_cloze(
    items: Sequence[ClozeItem], predictions: Sequence[Sequence[str]], k: int = TOP_K
) -> ClozeScore:
    """Top-1 and top-k hit rates of `predictions` (best first, one list per item)."""
    if len(items) != len(predictions):
        raise ValueError(f"{len(items)} items but {len(predictions)} prediction lists")
    hits1 = np.array(
        [bool(p) and p[0] == it.answer for it, p in zip(items, predictions, strict=True)]
    )
    hitsk = np.array([it.answer in list(p)[:k] for it, p in zip(items, predictions, strict=True)])
    by: dict[str, dict[str, float]] = {}
    corpora = np.array([it.corpus for it in items])
    for name in dict.fromkeys(corpora.tolist()):
        sel = corpora == name
        by[name] = {
            "items": int(sel.sum()),
            "top1": float(hits1[sel].mean()),
            "top5": float(hitsk[sel].mean()),
        }
    n = len(items)
    return ClozeScore(
        items=n,
        top1=float(hits1.mean()) if n else 0.0,
        top5=float(hitsk.mean()) if n else 0.0,
        by_corpus=by,
    )


def model_predictor(
    model: Any,
    tokenizer: Any,
    *,
    k: int = TOP_K,
    batch_size: int = 64,
    device: str = "cpu",
    candidates: Sequence[str] | None = None,
) -> Predictor:
    """texts with one `[MASK]` each -> the model's top-k tokens there (whole vocabulary).

    Texts are tokenized by the checkpoint's tokenizer and truncated to the model's positions, as
    `/fill-mask` with `truncate: true` does; a text whose mask falls off the end predicts nothing.
    With `candidates` (tokens of the vocabulary), only those are ranked, as `/fill-mask` with
    `targets` ranks them: the same choice the count-based baselines are given.
    """
    allowed = None
    if candidates is not None:
        allowed = torch.full((model.config.vocab_size,), float("-inf"))
        ids = [i for c in candidates if (i := tokenizer.token_to_id(c)) is not None]
        allowed[ids] = 0.0
        allowed = allowed.to(device)

    limit = min(tokenizer.model_max_length, model.config.max_position_embeddings)
    need_hidden = getattr(model, "nsp_head", None) is not None  # an NSP head reads [CLS]

    @torch.no_grad()
    def predict(texts: Sequence[str]) -> list[list[str]]:
        was_training = model.training
        model.eval()
        out: list[list[str]] = []
        try:
            for s in range(0, len(texts), batch_size):
                encs = [
                    tokenizer.encode(t, truncation=True, max_length=limit).ids
                    for t in texts[s : s + batch_size]
                ]
                T = max(len(e) for e in encs)
                ids = torch.full((len(encs), T), tokenizer.pad_token_id, dtype=torch.long)
                attn = torch.zeros((len(encs), T), dtype=torch.long)
                for b, e in enumerate(encs):
                    ids[b, : len(e)] = torch.tensor(e)
                    attn[b, : len(e)] = 1
                pmask = ids.eq(tokenizer.mask_token_id)
                first = pmask & (pmask.cumsum(dim=1) == 1)  # the first [MASK] of each row
                ids, attn, first = ids.to(device), attn.to(device), first.to(device)
                logits = model(
                    ids, attention_mask=attn, prediction_mask=first, return_hidden=need_hidden
                ).logits  # (M, V), rows in order of the rows that have a mask
                scores = logits.float() if allowed is None else logits.float() + allowed
                top = scores.topk(k, dim=-1).indices.tolist()
                has = first.any(dim=1).tolist()
                it = iter(top)
                for present in has:
                    out.append([tokenizer.id_to_token(i) for i in next(it)] if present else [])
        finally:
            model.train(was_training)
        return out

    return predict


def evaluate_checkpoint_cloze(
    checkpoint: Path,
    corpus: Sequence[str],
    *,
    seed: int = 0,
    max_items: int = 2000,
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, Any]:
    """What `bert-eval --task cloze` prints: whole-word cloze top-1/top-5 of a checkpoint on the
    lines of `corpus` (items chosen with its own vocabulary, as `cloze_items` says)."""
    model = BertForMaskedLM.from_pretrained(checkpoint, map_location=device)
    tokenizer = WordPieceTokenizer.from_pretrained(checkpoint)
    items = cloze_items(corpus, vocab_word_filter([tokenizer]), seed=seed, max_items=max_items)
    if not items:
        raise ValueError(
            f"no cloze items in {', '.join(map(str, corpus))}: no line of 6-30 words holds a "
            "word of 3+ letters that is a single token of the vocabulary"
        )
    predict = model_predictor(model, tokenizer, batch_size=batch_size, device=device)
    score = score_cloze(items, predict([it.masked(tokenizer.mask_token) for it in items]))
    return {
        "task": "cloze",
        "checkpoint": str(checkpoint),
        "corpus": [str(c) for c in corpus],
        "seed": seed,
        "max_items_per_file": max_items,
        **score.to_dict(),
    }
