"""Everything a run needs before its first step, and `run_training`, the whole `bert-train` job.

`run_training` sets up DDP (training/run/distributed.py), the tokenizer (trained from the corpus,
or reused), the model config (from the YAML model section, or the `init_from` checkpoint's), the
cached data and the valid retrieval pairs (`prepare_data`), then hands over to `Trainer.train()`.

Deliberately not here: the loop itself (trainer.py, training/run/loop.py) and checkpoint I/O
(training/run/checkpointing.py, model/checkpoint.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import tempfile
import time
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from model import BertConfig, ModelError
from model.layout import read_layout
from tokenization import WordPieceTokenizer, has_tokenizer
from training.data.corpus import (
    LineDataset,
    PackedDataset,
    build_dataset,
    iter_documents,
    load_corpus,
)
from training.data.pairs import RetrievalSet, gloss_files, retrieval_set
from training.pretrain.config import TrainConfig
from training.pretrain.contrastive import ContrastiveData, build_contrastive_data, check_objective
from training.pretrain.trainer import Trainer, TrainResult
from training.run.distributed import DistInfo, barrier, init_distributed
from training.run.options import TrainConfigError, coerce_value

__all__ = [
    "RunData",
    "build_model_config",
    "init_checkpoint",
    "init_model_config",
    "prepare_data",
    "prepare_tokenizer",
    "run_training",
]

logger = logging.getLogger(__name__)


def prepare_tokenizer(
    *,
    output_dir: Path,
    corpus: Sequence[str],
    vocab: str | os.PathLike[str] | None,
    vocab_size: int,
    cfg: TrainConfig,
    info: DistInfo,
    resume: bool,
) -> Any:
    """The run's tokenizer, saved in `output_dir/tokenizer/` (rank 0 writes, others then read).

    Resume: the run's own tokenizer. `vocab` given: that one. Otherwise a WordPiece vocabulary of
    `vocab_size` is trained on the corpus (jsonl files contribute their `text` fields).
    """
    tok_dir = output_dir / "tokenizer"
    if resume and (tok_dir / "vocab.txt").is_file():
        return WordPieceTokenizer.from_pretrained(tok_dir)
    if info.is_main:
        if vocab is not None:
            tok = WordPieceTokenizer.from_pretrained(vocab)
        else:
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                files = []
                for i, path in enumerate(corpus):
                    if str(path).lower().endswith(".jsonl"):
                        # The tokenizer trainer reads plain lines: hand it the documents.
                        txt = Path(tmp) / f"corpus{i}.txt"
                        txt.write_text("\n".join(iter_documents(path)) + "\n", encoding="utf-8")
                        files.append(str(txt))
                    else:
                        files.append(str(path))
                tok = WordPieceTokenizer.train(
                    files,
                    vocab_size=vocab_size,
                    min_frequency=cfg.vocab_min_frequency,
                    lowercase=cfg.lowercase,
                )
            logger.info(
                "trained a %d-token vocabulary in %.1fs", tok.vocab_size, time.perf_counter() - t0
            )
        tok_dir.mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(tok_dir)
    barrier(info)
    return WordPieceTokenizer.from_pretrained(tok_dir)


def build_model_config(model_section: dict[str, Any], vocab_size: int, cfg: TrainConfig) -> Any:
    """BertConfig from the YAML model section, with the tokenizer's real vocabulary size."""
    hints = typing.get_type_hints(BertConfig)
    values = {k: coerce_value(f"model.{k}", v, hints[k]) for k, v in model_section.items()}
    requested = values.get("vocab_size")
    if requested is not None and requested != vocab_size:
        logger.info("model.vocab_size %s -> %d (the tokenizer's size)", requested, vocab_size)
    values["vocab_size"] = vocab_size
    values["pooling"] = cfg.pooling  # recorded in config.json: servers embed the same way
    config = BertConfig(**values)
    if cfg.max_seq_length > config.max_position_embeddings:
        raise TrainConfigError(
            f"train.max_seq_length={cfg.max_seq_length} exceeds "
            f"model.max_position_embeddings={config.max_position_embeddings}"
        )
    return config


# Model settings a second stage may change: regularisation, not shape (SimCSE needs dropout even
# when the first stage had none).
INIT_FROM_ADJUSTABLE = frozenset({"hidden_dropout_prob", "attention_probs_dropout_prob"})


def init_checkpoint(cfg: TrainConfig, vocab: str | os.PathLike[str] | None) -> Path | None:
    """The model directory of `train.init_from` (None when unset): where its config.json and
    tokenizer are (a sentence-transformers directory's Transformer module; else the directory).

    It must be a checkpoint the one loader recognises and hold a tokenizer; a `--vocab` given as
    well must be the same vocabulary, since the weights' embedding rows belong to that
    checkpoint's token ids.
    """
    if cfg.init_from is None:
        return None
    try:
        directory = read_layout(cfg.init_from).model_dir
    except ModelError as e:
        raise TrainConfigError(
            f"train.init_from={cfg.init_from!r} is not a checkpoint directory: {e}"
        ) from None
    if not has_tokenizer(directory):
        raise TrainConfigError(
            f"train.init_from={cfg.init_from!r} has no tokenizer: neither vocab.txt nor "
            f"tokenizer.json in {directory}"
        )
    if vocab is not None:
        given = WordPieceTokenizer.from_pretrained(vocab)
        own = WordPieceTokenizer.from_pretrained(directory)
        if given.vocab != own.vocab or given.lowercase != own.lowercase:
            raise TrainConfigError(
                f"--vocab {vocab} is not the vocabulary of train.init_from={cfg.init_from!r} "
                f"({given.vocab_size} vs {own.vocab_size} tokens, lowercase {given.lowercase} "
                f"vs {own.lowercase}); leave --vocab out: init_from brings its own tokenizer"
            )
    return directory


def init_model_config(
    directory: Path, model_section: dict[str, Any], vocab_size: int, cfg: TrainConfig
) -> Any:
    """The BertConfig of an init_from run: the checkpoint's, with this run's pooling.

    Shape settings in the model section must equal the checkpoint's (TrainConfigError names the
    first that does not); only dropout may differ.
    """
    try:
        base = read_layout(directory).config
    except ModelError as e:
        raise TrainConfigError(f"train.init_from: {e}") from None
    hints = typing.get_type_hints(BertConfig)
    changes: dict[str, Any] = {}
    for key, raw in model_section.items():
        value = coerce_value(f"model.{key}", raw, hints[key])
        if key in INIT_FROM_ADJUSTABLE:
            changes[key] = value
        elif value != getattr(base, key):
            raise TrainConfigError(
                f"model.{key}={value!r} does not match the init_from checkpoint {directory} "
                f"({key}={getattr(base, key)!r}): a run started from a checkpoint keeps its "
                f"shape and vocabulary; leave {key} out of the model section"
            )
    if vocab_size > base.vocab_size:
        raise TrainConfigError(
            f"the init_from checkpoint {directory} has a {vocab_size}-token tokenizer but only "
            f"{base.vocab_size} embedding rows"
        )
    config = dataclasses.replace(base, pooling=cfg.pooling, **changes)
    if cfg.max_seq_length > config.max_position_embeddings:
        raise TrainConfigError(
            f"train.max_seq_length={cfg.max_seq_length} exceeds the init_from checkpoint's "
            f"max_position_embeddings={config.max_position_embeddings}"
        )
    return config


@dataclass
class RunData:
    """What a run trains and evaluates on (`prepare_data`)."""

    train: PackedDataset | LineDataset
    valid: PackedDataset | LineDataset | None
    contrastive: ContrastiveData | None  # when train.contrastive_weight > 0
    retrieval: RetrievalSet | None  # the valid gloss pairs, on rank 0 (it alone evaluates)


def prepare_data(
    cfg: TrainConfig,
    tokenizer: Any,
    *,
    corpus: Sequence[str],
    valid: Sequence[str] | None,
    info: DistInfo,
) -> RunData:
    """The run's datasets from cached token ids: rank 0 tokenizes and fills the cache, the
    others then read it."""
    cache = cfg.cache_dir or None

    def load() -> tuple[Any, Any, ContrastiveData | None]:
        train_corpora = load_corpus(corpus, tokenizer, cache)
        valid_corpora = load_corpus(valid, tokenizer, cache) if valid else None
        contrastive = None
        if cfg.contrastive_weight > 0:
            contrastive = build_contrastive_data(
                cfg, tokenizer, corpus=corpus, holdout=valid or [], train_corpora=train_corpora
            )
        return train_corpora, valid_corpora, contrastive

    if info.is_main:
        train_corpora, valid_corpora, contrastive = load()
    barrier(info)
    if not info.is_main:
        train_corpora, valid_corpora, contrastive = load()
    retrieval = None
    if info.is_main and valid:
        rset = retrieval_set(gloss_files(valid))
        if rset.queries:
            retrieval = rset
            logger.info(
                "valid retrieval: %d queries, %d candidates",
                len(rset.queries),
                len(rset.candidates),
            )
    seq = cfg.max_seq_length
    train_data = build_dataset(train_corpora, tokenizer, seq_len=seq, packing=cfg.packing)
    valid_data = (
        build_dataset(valid_corpora, tokenizer, seq_len=seq, packing=cfg.packing)
        if valid_corpora
        else None
    )
    logger.info(
        "data: %d train rows of %d tokens%s",
        len(train_data),
        seq,
        f", {len(valid_data)} valid rows" if valid_data else "",
    )
    return RunData(train_data, valid_data, contrastive, retrieval)


def run_training(
    model_section: dict[str, Any],
    cfg: TrainConfig,
    *,
    corpus: Sequence[str],
    valid: Sequence[str] | None,
    output_dir: str | os.PathLike[str],
    vocab: str | os.PathLike[str] | None = None,
    resume: bool = False,
    stop_after: int | None = None,
) -> TrainResult:
    """Everything `bert-train` does: distributed set-up, tokenizer, data, model, loop."""
    info = init_distributed(cfg)
    threads_before = torch.get_num_threads()  # restored: callers (tests, notebooks) share it
    try:
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        elif info.distributed and info.device.type == "cpu":
            # N processes on N cores: one intra-op thread each, or they fight over the cores.
            torch.set_num_threads(1)
        out = Path(output_dir)
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
        barrier(info)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        init_dir = init_checkpoint(cfg, vocab)
        tokenizer = prepare_tokenizer(
            output_dir=out,
            corpus=corpus,
            vocab=vocab if init_dir is None else init_dir,
            vocab_size=int(model_section.get("vocab_size", 16000)),
            cfg=cfg,
            info=info,
            resume=resume,
        )
        if init_dir is None:
            model_config = build_model_config(model_section, tokenizer.vocab_size, cfg)
        else:
            model_config = init_model_config(init_dir, model_section, tokenizer.vocab_size, cfg)
        check_objective(model_config, cfg)  # before any data is read
        if getattr(tokenizer, "model_max_length", 0) > model_config.max_position_embeddings:
            # Saved with every checkpoint: tokenizers (ours and transformers') then truncate to
            # what the position table holds.
            tokenizer.model_max_length = model_config.max_position_embeddings
        data = prepare_data(cfg, tokenizer, corpus=corpus, valid=valid, info=info)
        trainer = Trainer(
            model_config=model_config,
            cfg=cfg,
            tokenizer=tokenizer,
            train_data=data.train,
            valid_data=data.valid,
            output_dir=out,
            info=info,
            provenance={
                "corpus": [str(p) for p in corpus],
                "valid": [str(p) for p in valid or []],
                "vocab": str(vocab) if vocab else None,
            },
            contrastive=data.contrastive,
            retrieval=data.retrieval,
        )
        result = trainer.train(resume=resume, stop_after=stop_after)
        if info.is_main:
            summary = {
                "step": result.step,
                "finished": result.finished,
                "skipped_steps": result.skipped_steps,
                "tokens_per_s": round(result.tokens_per_s, 1),
                "valid": result.valid,
            }
            logger.info("done: %s", json.dumps(summary))
        return result
    finally:
        torch.set_num_threads(threads_before)
        if info.distributed and dist.is_initialized():
            dist.destroy_process_group()
