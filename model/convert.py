"""`bert-convert`: convert and validate checkpoint directories.

    bert-convert --from-hf HF_DIR --out DIR   HuggingFace BERT dir (model.safetensors or
                                             pytorch_model.bin) -> our dir; copies vocab.txt and
                                             tokenizer_config.json (writes the latter if absent)
    bert-convert --to-hf DIR [--out HF_DIR]   our post-LN dir already is the HF format
                                             (BertForMaskedLM, or RoFormerForMaskedLM for rotary
                                             positions): validate it (and copy it with --out);
                                             pre-LN is refused
    bert-convert --check DIR                  validate a checkpoint directory and summarise it

Every command loads the weights through `BertForMaskedLM.from_pretrained`, so it checks what the
server and trainer will check (config, names, shapes, NaN/Inf). User errors print one line on
stderr and exit with status 1, never a traceback. It does not touch the tokenizer beyond copying
its files and comparing the vocab.txt size to the config.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from model.bert import BertForMaskedLM
from model.checkpoint import atomic_write_files
from model.errors import ModelError

VOCAB_NAME = "vocab.txt"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
PROG = "bert-convert"


class ConvertError(ModelError):
    """A user-facing problem with the directories given to bert-convert."""


def _load(directory: Path) -> BertForMaskedLM:
    if not directory.is_dir():
        raise ConvertError(f"{directory}: not a directory")
    return BertForMaskedLM.from_pretrained(directory)


def _summary(model: BertForMaskedLM) -> str:
    c = model.config
    positions = "rotary" if c.position_embedding_type == "rotary" else "learned"
    return (
        f"BERT {c.norm_position}-LN, {positions} positions: L={c.num_hidden_layers} "
        f"H={c.hidden_size} "
        f"A={c.num_attention_heads} I={c.intermediate_size} V={c.vocab_size} "
        f"max_len={c.max_position_embeddings}, {model.num_parameters():,} parameters"
    )


def _vocab_report(directory: Path, model: BertForMaskedLM) -> list[str]:
    """Lines about the tokenizer files; raises ConvertError if vocab.txt cannot fit the model."""
    vocab = directory / VOCAB_NAME
    if not vocab.is_file():
        return [f"warning: no {VOCAB_NAME} in {directory}: no tokenizer, the server cannot use it"]
    # One token per line, as BertTokenizer reads it.
    n_tokens = len(vocab.read_text(encoding="utf-8").splitlines())
    if n_tokens > model.config.vocab_size:
        raise ConvertError(
            f"{vocab} has {n_tokens} tokens but config.json vocab_size is "
            f"{model.config.vocab_size}: ids would fall outside the embedding table"
        )
    lines = [f"{VOCAB_NAME}: {n_tokens} tokens"]
    if n_tokens < model.config.vocab_size:
        lines.append(
            f"note: {VOCAB_NAME} has fewer tokens ({n_tokens}) than vocab_size "
            f"({model.config.vocab_size}); the extra embedding rows are unused"
        )
    if not (directory / TOKENIZER_CONFIG_NAME).is_file():
        lines.append(f"warning: no {TOKENIZER_CONFIG_NAME} in {directory}")
    return lines


def _default_tokenizer_config(model: BertForMaskedLM) -> dict:
    """What transformers' BertTokenizer assumes for a vocab.txt without tokenizer_config.json."""
    return {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "model_max_length": model.config.max_position_embeddings,
        "clean_up_tokenization_spaces": False,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }


def _copy_tokenizer_files(src: Path, out: Path, model: BertForMaskedLM) -> list[str]:
    if src.resolve() == out.resolve():
        return []
    writers = {}
    lines = []
    for name in (VOCAB_NAME, TOKENIZER_CONFIG_NAME):
        if (src / name).is_file():
            writers[out / name] = lambda p, s=src / name: shutil.copyfile(s, p)
            lines.append(f"copied {name}")
    if (src / VOCAB_NAME).is_file() and not (src / TOKENIZER_CONFIG_NAME).is_file():
        text = json.dumps(_default_tokenizer_config(model), indent=2) + "\n"
        writers[out / TOKENIZER_CONFIG_NAME] = lambda p: p.write_text(text, encoding="utf-8")
        lines.append(f"wrote a default {TOKENIZER_CONFIG_NAME} (lowercasing BertTokenizer)")
    if writers:
        atomic_write_files(writers)
    return lines


def from_hf(src: Path, out: Path) -> list[str]:
    model = _load(src)
    report = _vocab_report(src, model)
    model.save_pretrained(out)
    report += _copy_tokenizer_files(src, out, model)
    return [f"converted {src} -> {out}", _summary(model), *report]


def to_hf(directory: Path, out: Path | None) -> list[str]:
    model = _load(directory)
    if model.config.norm_position == "pre":
        raise ConvertError(
            f"{directory} is a pre-LN model: transformers' BertForMaskedLM and "
            "RoFormerForMaskedLM (post-LN) cannot represent it, so there is no HuggingFace export"
        )
    arch = model.config.to_dict()["architectures"][0]
    report = [
        f"{directory} already is a HuggingFace {arch} directory (config.json + "
        "model.safetensors with transformers' names); nothing to convert. Validated:",
        _summary(model),
        *_vocab_report(directory, model),
    ]
    if out is not None:
        model.save_pretrained(out)
        report += [f"copied to {out}", *_copy_tokenizer_files(directory, out, model)]
    return report


def check(directory: Path) -> list[str]:
    model = _load(directory)
    return [f"{directory}: OK", _summary(model), *_vocab_report(directory, model)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Convert and validate BERT checkpoint directories."
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--from-hf", type=Path, metavar="HF_DIR", help="HuggingFace BERT directory")
    mode.add_argument("--to-hf", type=Path, metavar="DIR", help="our checkpoint directory")
    mode.add_argument("--check", type=Path, metavar="DIR", help="validate a checkpoint directory")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output directory")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is loaded")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        if args.from_hf is not None:
            if args.out is None:
                parser.error("--from-hf needs --out DIR")
            lines = from_hf(args.from_hf, args.out)
        elif args.to_hf is not None:
            lines = to_hf(args.to_hf, args.out)
        else:
            if args.out is not None:
                parser.error("--check takes no --out")
            lines = check(args.check)
    except (ModelError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
