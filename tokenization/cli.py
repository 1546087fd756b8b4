"""`bert-tokenizer`: train a WordPiece vocabulary, or encode a text with one.

    bert-tokenizer train --corpus data/wordnet.train.txt data/pydocs.train.txt --vocab-size 16000 --out vocab/
    bert-tokenizer encode --vocab vocab/ "Hello, world!"

Deliberately not here: batch encoding of files (the trainer's data pipeline does that).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .tokenizer import WordPieceTokenizer
from .vocab import VocabError


def timed_train(
    files: list[str], vocab_size: int, min_frequency: int, lowercase: bool
) -> tuple[WordPieceTokenizer, float]:
    """Train with a progress bar and return ``(tokenizer, seconds)``.

    The bar is tqdm's, imported here only: the tokenizer itself needs nothing beyond the
    standard library, and only a person at a terminal wants the bar.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    with tqdm(total=vocab_size, desc="merges", unit="tok") as bar:

        def progress(n: int) -> None:
            bar.n = min(vocab_size, n)
            if n % 500 == 0 or n >= vocab_size:
                bar.refresh()

        tok = WordPieceTokenizer.train(files, vocab_size, min_frequency, lowercase, progress)
    return tok, time.perf_counter() - t0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bert-tokenizer", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="learn a vocabulary from corpus files")
    t.add_argument(
        "--corpus", nargs="+", required=True, help="text files, one document per line (or .jsonl)"
    )
    t.add_argument("--vocab-size", type=int, default=16000)
    t.add_argument("--min-frequency", type=int, default=2)
    t.add_argument("--cased", action="store_true", help="keep case and accents (default: uncased)")
    t.add_argument("--out", required=True, help="directory for vocab.txt and tokenizer_config.json")
    e = sub.add_parser("encode", help="print the tokens and ids of a text")
    e.add_argument("--vocab", required=True, help="directory holding vocab.txt")
    e.add_argument("text", nargs="+", help="text to encode; a second text makes a pair with --pair")
    e.add_argument("--pair", action="store_true", help="treat the two texts as a pair")
    e.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            tok, seconds = timed_train(
                args.corpus, args.vocab_size, args.min_frequency, not args.cased
            )
            tok.save_pretrained(args.out)
            print(f"vocabulary: {tok.vocab_size} tokens in {seconds:.1f}s -> {args.out}/vocab.txt")
            return 0
        tok = WordPieceTokenizer.from_pretrained(args.vocab)
        if args.pair:
            if len(args.text) != 2:
                raise ValueError(f"--pair needs exactly two texts, got {len(args.text)}")
            enc = tok.encode(args.text[0], args.text[1])
        else:
            enc = tok.encode(" ".join(args.text))
        if args.json:
            print(
                json.dumps(
                    {
                        "tokens": enc.tokens,
                        "ids": enc.ids,
                        "type_ids": enc.type_ids,
                        "offsets": enc.offsets,
                    }
                )
            )
        else:
            width = max(len(t) for t in enc.tokens)
            for token, i, (s, e) in zip(enc.tokens, enc.ids, enc.offsets, strict=True):
                print(f"{token:<{width}}  {i:>6}  {s}:{e}")
        return 0
    except (VocabError, ValueError, TypeError, OSError) as exc:
        print(f"bert-tokenizer: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
