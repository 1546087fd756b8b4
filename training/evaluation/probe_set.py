"""Write the serving precision gate's probe set, ``app/probes.json``, from the bundled WordNet
splits: ``python -m training.evaluation.probe_set`` (deterministic; a test checks the committed file is
what this writes).

The server gates a reduced precision (bf16, int8) against fp32 on this set at every load
(``app.precision``), and calibrates int8's smoothing on it. ``app/`` never imports this package,
so the set is generated once here, with training's own parsers, and read there as JSON:

* ``fill_mask``: held-out glosses (``wordnet.valid.txt``, lemmas cut) drawn as the cloze
  benchmark draws its lines (``training.cloze``: 6-30 words, a word that is a single token of
  the shipped vocabulary), with that word and every ``MASK_EVERY``-th word after it replaced
  by ``[MASK]`` (2-4 masks a line: a top-1 agreement of 97% needs a hundred masks or more to
  be told from 95%, and more masks cost no extra tokens), each with its unmasked ``text``.
* ``long``: held-out glosses run together, far past any model's token limit (the server cuts
  them at its limit), with a ``[MASK]`` every ``MASK_EVERY`` words or so.
* ``retrieval``: (query, document) pairs as training's retrieval evaluation builds them
  (``training.pairs``: a usage example and the definition of its own gloss, lemmas dropped),
  one per held-out gloss with examples, in a seeded random order (a prefix is a fair sample).
* ``calibration``: training-split glosses (``wordnet.train.txt``), for int8's activation
  ranges: never the probes themselves, so the gate judges int8 on text it was not tuned on.

Only WordNet text is used: its licence (copied into the file) is short and allows
redistribution with the notice kept; the Python documentation's would have to travel too.
Deliberately not here: reading the set (``app.precision``), and any model.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tokenization import WordPieceTokenizer
from training.data.pairs import iter_glosses
from training.evaluation.cloze import cloze_items, vocab_word_filter

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
OUT = ROOT / "app" / "probes.json"
VOCAB = ROOT / "checkpoints" / "default"
SEED = 26
FILL_MASK, LONG, LONG_WORDS, MASK_EVERY = 48, 2, 600, 5
RETRIEVAL, CALIBRATION = 200, 32
FORMAT = 1


def _body(line: str) -> str:
    """A gloss line without its lemmas: "dog, domestic dog: a member of ..." -> "a member of ..."."""
    _, sep, body = line.strip().partition(": ")
    return body if sep else line.strip()


def _mask_from(text: str, start: int, end: int) -> str:
    """``text`` with the word ``text[start:end]`` and every ``MASK_EVERY``-th word before and
    after it replaced by ``[MASK]`` (those only where they are letters alone: no "e.g.").

    Example (MASK_EVERY 2): "a b c. d e", 4, 5 -> "[MASK] b [MASK]. d [MASK]".
    """
    words = (text[:start] + "\0" + text[end:]).split(" ")
    first = next(i for i, w in enumerate(words) if "\0" in w)
    for i in range(first % MASK_EVERY, len(words), MASK_EVERY):
        if i != first and words[i].isalpha():
            words[i] = "[MASK]"
    return " ".join(words).replace("\0", "[MASK]")


def _long_texts(lines: list[str], rng: random.Random) -> list[str]:
    """``LONG`` texts of ``LONG_WORDS`` words of consecutive glosses, masked every
    ``MASK_EVERY`` words (so every token limit keeps several)."""
    out = []
    for _ in range(LONG):
        start = rng.randrange(len(lines) - 200)
        words: list[str] = []
        for line in lines[start:]:
            words.extend(_body(line).split())
            if len(words) >= LONG_WORDS:
                break
        text = " ".join(words[:LONG_WORDS])
        first = len(" ".join(words[:5])) + 1  # the sixth word
        out.append(_mask_from(text, first, first + len(words[5])))
    return out


def build() -> dict:
    """The probe set (see the module doc)."""
    rng = random.Random(SEED)
    valid = DATA / "wordnet.valid.txt"
    vocab = WordPieceTokenizer.from_pretrained(VOCAB)
    items = cloze_items([valid], vocab_word_filter([vocab]), seed=SEED, max_items=10_000)
    # The mask in the gloss, not in its lemma list, which is then cut (as retrieval cuts it).
    items = [it for it in items if ": " in it.text[: it.start]]
    fill = sorted(rng.sample(items, FILL_MASK), key=lambda it: it.line)
    cut = [it.text.index(": ") + 2 for it in fill]
    lines = valid.read_text(encoding="utf-8").splitlines()

    pairs, seen = [], set()
    for gloss in iter_glosses([valid]):
        if gloss.examples and gloss.definition not in seen:
            seen.add(gloss.definition)
            pairs.append({"query": gloss.examples[0], "document": gloss.definition})
    pairs = rng.sample(pairs, RETRIEVAL)

    train = (DATA / "wordnet.train.txt").read_text(encoding="utf-8").splitlines()
    calibration = [_body(line) for line in rng.sample(train, CALIBRATION)]
    return {
        "format": FORMAT,
        "source": (
            "WordNet 3.0 glosses (data/wordnet.valid.txt; calibration: data/wordnet.train.txt), "
            "written by `python -m training.evaluation.probe_set`"
        ),
        "licence": (DATA / "LICENSE.wordnet").read_text(encoding="utf-8"),
        "fill_mask": [
            {"masked": _mask_from(it.text[c:], it.start - c, it.end - c), "text": it.text[c:]}
            for it, c in zip(fill, cut, strict=True)
        ],
        "long": _long_texts(lines, rng),
        "retrieval": pairs,
        "calibration": calibration,
    }


def render(probes: dict) -> str:
    return json.dumps(probes, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.out.write_text(render(build()), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
