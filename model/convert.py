"""`bert-convert`: convert and validate checkpoint directories.

    bert-convert --from-hf HF_DIR --out DIR   HuggingFace BERT dir (model.safetensors or
                                             pytorch_model.bin; BertForMaskedLM, BertForPreTraining,
                                             BertModel or a sentence-transformers directory) -> our
                                             dir; copies the tokenizer files (writes a
                                             tokenizer_config.json beside a bare vocab.txt)
    bert-convert --to-hf DIR [--out HF_DIR]   our post-LN dir already is the HF format
                                             (BertForMaskedLM, or RoFormerForMaskedLM for rotary
                                             positions): validate it (and copy it with --out);
                                             pre-LN is refused
    bert-convert --check DIR                  validate a checkpoint directory and summarise it

Every command loads the weights through the one loader (`model.checkpoint.load_checkpoint`), so it
checks what the server and trainer will check (layout, config, names, shapes, NaN/Inf) and reports
the kind of checkpoint and what it can do. User errors print one line on stderr and exit with
status 1, never a traceback. It does not read the tokenizer beyond copying its files and comparing
its vocabulary size to the config: `model/` may not import `tokenization/`, so the tokenizer
file names are listed here (the same as `tokenization.files.TOKENIZER_FILES`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from atomicio import atomic_write_files
from model.bert import BertForMaskedLM
from model.checkpoint import LoadedCheckpoint, load_checkpoint
from model.errors import ModelError

VOCAB_NAME = "vocab.txt"
TOKENIZER_JSON_NAME = "tokenizer.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
TOKENIZER_FILES = (
    VOCAB_NAME,
    TOKENIZER_JSON_NAME,
    TOKENIZER_CONFIG_NAME,
    "special_tokens_map.json",
)
PROG = "bert-convert"


class ConvertError(ModelError):
    """A user-facing problem with the directories given to bert-convert."""


def _load(directory: Path) -> LoadedCheckpoint:
    if not directory.is_dir():
        raise ConvertError(f"{directory}: not a directory")
    return load_checkpoint(directory, BertForMaskedLM)


def _summary(loaded: LoadedCheckpoint) -> str:
    model, caps = loaded.model, loaded.capabilities
    c = model.config
    positions = "rotary" if c.position_embedding_type == "rotary" else "learned"
    kind = caps.kind + (
        " in a sentence-transformers directory" if caps.sentence_transformers else ""
    )
    if caps.rerank:
        tasks = f"reranking (one score, {caps.score_activation}) and embeddings"
    elif caps.labels:
        tasks = f"text classification ({len(caps.labels)} labels) and embeddings"
    elif caps.sparse_encoder:
        tasks = "SPLADE vectors, fill-mask and embeddings"
    elif caps.fill_mask:
        tasks = "fill-mask and embeddings"
    else:
        tasks = "embeddings only (no MLM head)"
    return (
        f"{kind}, {tasks} ({caps.pooling} pooling{', normalized' if caps.normalize else ''}, "
        f"up to {caps.max_tokens} tokens); BERT {c.norm_position}-LN, {positions} positions: "
        f"L={c.num_hidden_layers} H={c.hidden_size} A={c.num_attention_heads} "
        f"I={c.intermediate_size} V={c.vocab_size} max_len={c.max_position_embeddings}, "
        f"{model.num_parameters():,} parameters"
    )


def _count_tokens(directory: Path) -> int | None:
    """Tokens of the tokenizer's vocabulary (vocab.txt lines, or tokenizer.json's vocabulary)."""
    if (directory / TOKENIZER_JSON_NAME).is_file():
        try:
            data = json.loads((directory / TOKENIZER_JSON_NAME).read_text(encoding="utf-8"))
            return len(data["model"]["vocab"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConvertError(f"{directory / TOKENIZER_JSON_NAME}: cannot read it ({e})") from e
    if (directory / VOCAB_NAME).is_file():
        # One token per line, as BertTokenizer reads it.
        return len((directory / VOCAB_NAME).read_text(encoding="utf-8").splitlines())
    return None


def _vocab_report(loaded: LoadedCheckpoint) -> list[str]:
    """Lines about the tokenizer files; raises ConvertError if the vocabulary cannot fit the model."""
    directory, config = loaded.layout.model_dir, loaded.model.config
    n_tokens = _count_tokens(directory)
    if n_tokens is None:
        return [
            f"warning: no {VOCAB_NAME} or {TOKENIZER_JSON_NAME} in {directory}: no tokenizer, "
            "the server cannot use it"
        ]
    if n_tokens > config.vocab_size:
        raise ConvertError(
            f"{directory}: the tokenizer has {n_tokens} tokens but config.json vocab_size is "
            f"{config.vocab_size}: ids would fall outside the embedding table"
        )
    lines = [f"tokenizer: {n_tokens} tokens"]
    if n_tokens < config.vocab_size:
        lines.append(
            f"note: the tokenizer has fewer tokens ({n_tokens}) than vocab_size "
            f"({config.vocab_size}); the extra embedding rows are unused"
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
    for name in TOKENIZER_FILES:
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
    loaded = _load(src)
    report = _vocab_report(loaded)
    loaded.model.save_pretrained(out)
    report += _copy_tokenizer_files(loaded.layout.model_dir, out, loaded.model)
    sentence = loaded.layout.sentence
    if sentence is not None or loaded.layout.cross_encoder:
        pooling = sentence.pooling if sentence is not None else None
        recorded = f"the pooling ({pooling}) is recorded in config.json; " if pooling else ""
        report.append(
            f"note: {recorded}the sentence-transformers settings (Normalize module, "
            "max_seq_length, do_lower_case, prompts, a CrossEncoder's activation, SpladePooling) "
            f"are not: serve {src} itself to keep them"
        )
    return [f"converted {src} -> {out}", _summary(loaded), *report]


def to_hf(directory: Path, out: Path | None) -> list[str]:
    loaded = _load(directory)
    model = loaded.model
    if model.config.norm_position == "pre":
        raise ConvertError(
            f"{directory} is a pre-LN model: transformers' BertForMaskedLM and "
            "RoFormerForMaskedLM (post-LN) cannot represent it, so there is no HuggingFace export"
        )
    report = [
        f"{directory} already is a HuggingFace {loaded.capabilities.kind} directory (config.json "
        "+ model.safetensors with transformers' names); nothing to convert. Validated:",
        _summary(loaded),
        *_vocab_report(loaded),
    ]
    if out is not None:
        model.save_pretrained(out)
        report += [
            f"copied to {out}",
            *_copy_tokenizer_files(loaded.layout.model_dir, out, model),
        ]
    return report


def check(directory: Path) -> list[str]:
    loaded = _load(directory)
    return [f"{directory}: OK", _summary(loaded), *_vocab_report(loaded)]


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
