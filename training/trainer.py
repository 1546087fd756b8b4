"""The pretraining loop (MLM, optionally plus InfoNCE): one readable loop, DDP-aware, resumable
bit for bit on CPU.

`run_training(...)` is the whole job behind `bert-train`: set up (DDP from the environment,
tokenizer, cached data, model, optimizer), then `Trainer.train()` runs the loop::

    for each optimizer step:
        lr = schedule(step or elapsed time)
        for each micro-batch (gradient accumulation):
            rows = RowOrder.rows(global position)    # resumable data position
            ids, labels = mask_batch(rows, seeded by the position)   # fresh mask each epoch
            loss = model(ids, labels=labels, prediction_mask=labels != -100).loss  # sparse head
            backward(mlm_weight * loss)                 # (skipped when mlm_weight is 0)
            if contrastive_weight > 0:                  # training/contrastive.py
                a, b = ContrastiveData.batch(its streams' positions)   # positive pairs
                backward(contrastive_weight * InfoNCE(pool(model(a)), pool(model(b))))
            (DDP syncs in the last backward of the last micro-batch only)
        non-finite loss? -> skip the step, count it, abort after N in a row
        unscale, clip, step, zero grads
        log / evaluate / checkpoint (rank 0 writes; everyone else waits at a barrier)

Exactness: every random choice is either seeded from the data position (row order, masks, the
contrastive streams' order) or drawn from the torch RNG, whose state is checkpointed with the
optimizer and scheduler; on CPU a run of K steps equals k steps + resume + (K - k) steps bit for
bit, with or without the contrastive objective. `train.init_from` starts a run (a second stage)
from another checkpoint's weights and tokenizer with a fresh optimizer and schedule.

Distributed: launched by torchrun (`RANK`/`WORLD_SIZE` set), each process takes its share of
every global batch (micro-batch j of rank r reads rows at `cursor + (j * world + r) * batch`), so
N processes with accumulation a see exactly the rows of one process with accumulation N * a.
Per-step scalars (loss, stop request, elapsed time) are all-reduced so every rank takes the same
decisions. Contrastive micro-batches are split the same way; each rank contrasts its own.

Each evaluation measures the valid MLM loss and, when the valid files hold WordNet glosses,
retrieval recall@k / MRR of their example -> definition pairs with the run's pooling. The best
checkpoint is the lowest valid MLM loss (or, with mlm_weight 0, the highest MRR).

Deliberately not here: data-loader worker processes (batches are gathered from an in-memory
array in well under a millisecond), gradient checkpointing, and FSDP.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml

from training.checkpointing import CheckpointManager, assert_finite_weights
from training.config import TrainConfig, TrainConfigError, coerce_value
from training.contrastive import (
    ContrastiveData,
    build_contrastive_data,
    check_objective,
    contrastive_loss,
)
from training.data import (
    LineDataset,
    PackedDataset,
    RowOrder,
    build_dataset,
    iter_documents,
    load_corpus,
)
from training.evaluate import evaluate_mlm
from training.masking import MaskingSpec, mask_batch
from training.metrics import MetricsLogger, plot_curves
from training.pairs import RetrievalSet, gloss_files, retrieval_set
from training.schedule import LRSchedule

__all__ = [
    "DistInfo",
    "NonFiniteLossError",
    "TrainResult",
    "Trainer",
    "init_distributed",
    "prepare_tokenizer",
    "resolve_precision",
    "run_training",
]

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
CONFIG_FILE = "training_config.yaml"
STATE_FORMAT = 1
_MASK_STREAM = 0x4D41534B  # "MASK": keeps mask seeds apart from any other use of the run seed


class NonFiniteLossError(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@dataclass
class StepStats:
    """What one optimizer step reports (identical on every rank)."""

    loss: float  # mean micro-batch loss over ranks; nan/inf when the step was skipped
    finite: bool
    tokens: int  # tokens processed by all ranks
    seconds: float
    lr: float
    train_accuracy: float | None  # masked-token accuracy of the last micro-batch, if asked
    stop_requested: bool  # some rank got SIGINT/SIGTERM
    elapsed: float  # agreed session seconds after the step
    mlm_loss: float | None = None  # unweighted parts of `loss` (None: that objective is off)
    contrastive_loss: float | None = None


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    finished: bool  # False when stopped early (--stop-after, a signal)
    final_dir: Path | None
    last_checkpoint: Path | None
    skipped_steps: int
    first_loss: float | None  # mean train loss of the first logged window of this session
    last_loss: float | None  # mean train loss of the last logged window
    valid: dict[str, float] | None  # metrics of the last evaluation
    tokens_per_s: float  # training throughput of this session, all processes together
    train_time_s: float


def init_distributed(cfg: TrainConfig) -> DistInfo:
    """DDP from the environment (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if "RANK" not in os.environ or world <= 1:
        return DistInfo(device=torch.device("cuda" if want_cuda else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on CUDA with bf16 and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32.

    On CPUs without it bf16 autocast is emulated and measured slower than fp32 (see README).
    """
    if precision != "auto":
        if precision == "fp16" and device.type != "cuda":
            raise TrainConfigError("precision='fp16' needs CUDA; use 'bf16' or 'fp32' on CPU")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if _cpu_has_native_bf16() else "fp32"


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


def _barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


# ----------------------------------------------------------------------------------------------
# Set-up helpers


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
    from tokenization import WordPieceTokenizer

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
    _barrier(info)
    return WordPieceTokenizer.from_pretrained(tok_dir)


def build_model_config(model_section: dict[str, Any], vocab_size: int, cfg: TrainConfig) -> Any:
    """BertConfig from the YAML model section, with the tokenizer's real vocabulary size."""
    import typing

    from model import BertConfig

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
    """`train.init_from` as a checked directory (None when unset).

    It must hold a model config and a tokenizer; a `--vocab` given as well must be the same
    vocabulary, since the weights' embedding rows belong to that checkpoint's token ids.
    """
    if cfg.init_from is None:
        return None
    from tokenization import WordPieceTokenizer

    directory = Path(cfg.init_from)
    for name, what in (("config.json", "model config"), ("vocab.txt", "tokenizer")):
        if not (directory / name).is_file():
            raise TrainConfigError(
                f"train.init_from={cfg.init_from!r} is not a checkpoint directory: "
                f"no {name} ({what}) in it"
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
    import dataclasses
    import typing

    from model import BertConfig, ConfigError

    try:
        base = BertConfig.from_json_file(directory / "config.json")
    except ConfigError as e:
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


def masking_spec(tokenizer: Any, cfg: TrainConfig) -> MaskingSpec:
    return MaskingSpec.from_vocab(
        tokenizer.vocab,
        tokenizer.special_ids,
        tokenizer.mask_token_id,
        mlm_probability=cfg.mlm_probability,
        mask_token_prob=cfg.mask_token_prob,
        random_token_prob=cfg.random_token_prob,
        whole_word=cfg.whole_word_masking,
    )


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop stops at the next step boundary and checkpoints."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C kills at once
            raise KeyboardInterrupt
        logger.warning("signal %d: stopping after this step and saving a checkpoint", signum)
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """Owns model, optimizer, schedule, data order and checkpoints of one run."""

    def __init__(
        self,
        *,
        model_config: Any,
        cfg: TrainConfig,
        tokenizer: Any,
        train_data: PackedDataset | LineDataset,
        valid_data: PackedDataset | LineDataset | None,
        output_dir: str | os.PathLike[str],
        info: DistInfo | None = None,
        provenance: dict[str, Any] | None = None,
        contrastive: ContrastiveData | None = None,
        retrieval: RetrievalSet | None = None,
    ) -> None:
        from model import BertForMaskedLM

        check_objective(model_config, cfg)
        if (cfg.contrastive_weight > 0) != (contrastive is not None):
            raise ValueError("contrastive data must be given exactly when contrastive_weight > 0")
        self.cfg = cfg
        self.info = info or DistInfo(device=torch.device("cpu"))
        self.device = self.info.device
        self.tokenizer = tokenizer
        self.train_data, self.valid_data = train_data, valid_data
        self.output_dir = Path(output_dir)
        self.model_config = model_config
        self.provenance = provenance or {}
        self.precision = resolve_precision(cfg.precision, self.device)
        self.spec = masking_spec(tokenizer, cfg)
        self.autocast = _autocast(self.precision, self.device)

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = BertForMaskedLM(model_config).to(self.device)
        if cfg.init_from is not None:  # a later stage: these weights, a fresh optimizer
            start = BertForMaskedLM.from_pretrained(cfg.init_from, map_location=self.device)
            self.model.load_state_dict(start.state_dict())
            del start
            logger.info("initialised the weights from %s", cfg.init_from)
        self.model.train()
        self.contrastive = contrastive
        self.retrieval = retrieval  # valid pairs scored at each evaluation
        self.optimizer = torch.optim.AdamW(
            self.model.optimizer_param_groups(cfg.weight_decay),
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_eps,
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.precision == "fp16" and self.device.type == "cuda"
        )
        budget = cfg.time_budget_minutes * 60.0 if cfg.time_budget_minutes is not None else None
        self.schedule = LRSchedule(
            peak_lr=cfg.lr,
            min_lr=cfg.min_lr,
            warmup_fraction=cfg.warmup_fraction,
            max_steps=cfg.max_steps,
            budget_s=budget,
        )
        self.order = RowOrder(len(train_data), cfg.seed)
        self.manager = CheckpointManager(self.output_dir, cfg.keep_last, writer=self.info.is_main)
        self.step = 0
        self.cursor = 0  # rows consumed by the whole run (all ranks): the data position
        # The same for each contrastive stream (pairs, simcse).
        self.contrastive_cursor = {s: 0 for s in contrastive.per_batch} if contrastive else {}
        self.skipped_steps = 0
        self.consecutive_nonfinite = 0
        self.train_time_s = 0.0  # seconds spent in training steps over all sessions
        self.last_valid: dict[str, float] | None = None
        self._valid_step = -1  # step at which last_valid was measured
        # Dropout differs per rank (different data, different masks), and is set after init
        # so that the weights above are the same everywhere.
        torch.manual_seed(cfg.seed + 1 + self.info.rank)

    # -- checkpoint I/O ---------------------------------------------------------------------------
    def training_state(self, elapsed_s: float) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "cursor": self.cursor,
            "contrastive_cursor": dict(self.contrastive_cursor),
            "skipped_steps": self.skipped_steps,
            "train_time_s": self.train_time_s,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {**self.schedule.state_dict(), "elapsed_offset": elapsed_s},
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            "world_size": self.info.world_size,
            "last_valid": self.last_valid,
        }

    def run_config(self, elapsed_s: float | None = None) -> dict[str, Any]:
        """training_config.yaml: the recipe (usable as --config again) and the run's provenance.

        `run.train_time_s` (seconds in training steps) and `run.elapsed_s` (wall clock of the run,
        evaluations and checkpoints included, over all sessions) give the cost of the stage.
        """
        import dataclasses

        model = dataclasses.asdict(self.model_config)
        model.pop("pooling", None)  # a train setting (train.pooling); config.json records it
        run = {
            **self.provenance,
            "world_size": self.info.world_size,
            "precision": self.precision,
            "torch": str(torch.__version__),
            "step": self.step,
            "train_time_s": round(self.train_time_s, 1),
        }
        if elapsed_s is not None:
            run["elapsed_s"] = round(elapsed_s, 1)
        return {"model": model, "train": self.cfg.to_dict(), "run": run}

    def save(self, name: str, elapsed_s: float) -> Path | None:
        """Rank 0 writes `name` atomically; every rank returns after it is published."""
        path = None
        if self.info.is_main:
            assert_finite_weights(self.model)  # non-finite weights are never written
            state = self.training_state(elapsed_s)
            config_text = yaml.safe_dump(self.run_config(elapsed_s), sort_keys=False)

            def write(tmp: Path) -> None:
                self.model.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
                torch.save(state, tmp / STATE_FILE)
                (tmp / CONFIG_FILE).write_text(config_text, encoding="utf-8")

            # Only a validation loss measured at this very step may make this checkpoint "best".
            fresh = self.last_valid is not None and self._valid_step == self.step
            loss = self.selection_loss(self.last_valid) if fresh and self.last_valid else None
            path = self.manager.save(name, write, step=self.step, valid_loss=loss)
        _barrier(self.info)
        return path

    def load(self, checkpoint: Path) -> None:
        """Restore weights, optimizer, scheduler, scaler, position and RNG from a checkpoint."""
        from model import BertForMaskedLM

        loaded = BertForMaskedLM.from_pretrained(checkpoint, map_location=self.device)
        self.model.load_state_dict(loaded.state_dict())
        del loaded
        state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{checkpoint / STATE_FILE}: unknown format {state.get('format')!r}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.cursor = int(state["step"]), int(state["cursor"])
        saved = state.get("contrastive_cursor") or {}
        for stream in self.contrastive_cursor:
            self.contrastive_cursor[stream] = int(saved.get(stream, 0))
        self.skipped_steps = int(state["skipped_steps"])
        self.train_time_s = float(state.get("train_time_s", 0.0))
        self.last_valid = state.get("last_valid")
        if state.get("world_size") != self.info.world_size:
            logger.warning(
                "resuming a %s-process run with %d processes: the data order is kept, "
                "dropout streams are not",
                state.get("world_size"),
                self.info.world_size,
            )
        if self.info.is_main:
            _set_rng_state(state["rng"])
        else:  # only rank 0's RNG is saved; the others continue from a derived seed
            torch.manual_seed(self.cfg.seed + 1 + self.info.rank + self.step)
        logger.info("resumed from %s at step %d", checkpoint, self.step)

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float] | None:
        if self.valid_data is None:
            return None
        metrics = None
        if self.info.is_main:
            metrics = evaluate_mlm(
                self.model,
                self.valid_data,
                self.spec,
                batch_size=self.cfg.eval_batch_size,
                max_rows=self.cfg.eval_max_sequences,
                seed=self.cfg.eval_seed,
                device=self.device,
                autocast=self.autocast,
            )
            metrics.update(self.evaluate_retrieval())
            self.last_valid = metrics
            self._valid_step = self.step
        _barrier(self.info)
        return metrics

    def evaluate_retrieval(self) -> dict[str, float]:
        """recall@k and MRR of the valid pairs (example -> its definition), with the run's pooling.

        Eval mode and no_grad, no random draws: it never changes what training does next.
        """
        if self.retrieval is None:
            return {}
        from training.retrieval import evaluate_retrieval

        with self.autocast:
            found = evaluate_retrieval(
                self.model,
                self.tokenizer,
                self.retrieval,
                pooling=self.cfg.pooling,
                device=self.device,
            )
        return {
            "retrieval_" + key.replace("@", "_at_"): float(value)
            for key, value in found.items()
            if key.startswith("recall@") or key == "mrr"
        }

    def selection_loss(self, valid: dict[str, float]) -> float | None:
        """What the best checkpoint minimises: the valid MLM loss, or, in a contrastive-only
        run (mlm_weight 0, where MLM may drift), 1 - retrieval MRR; None when unmeasured."""
        if self.cfg.mlm_weight > 0:
            return valid["loss"]
        mrr = valid.get("retrieval_mrr")
        return None if mrr is None else 1.0 - mrr

    # -- one micro-batch --------------------------------------------------------------------------
    def micro_batch(self, start: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Masked inputs and labels of the `batch_size` rows at global position `start`."""
        rows = self.order.rows(start, self.cfg.batch_size)
        ids, attn = self.train_data.rows(rows)
        # Seeded by the position: a new mask each time a row comes round again (its position
        # differs), the same mask after a resume.
        rng = np.random.default_rng([self.cfg.seed, _MASK_STREAM, start])
        inp, labels = mask_batch(ids, self.spec, rng, attn)
        dev = self.device
        attention = None if attn is None else torch.from_numpy(attn).to(dev, non_blocking=True)
        return (
            torch.from_numpy(inp).to(dev, non_blocking=True),
            attention,
            torch.from_numpy(labels).to(dev, non_blocking=True),
        )

    def contrastive_batch(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Contrastive ids and attention mask (2B, T) of micro-batch `slot` of this step."""
        assert self.contrastive is not None
        starts = {
            stream: self.contrastive_cursor[stream] + slot * n
            for stream, n in self.contrastive.per_batch.items()
        }
        ids, attn = self.contrastive.batch(starts)
        dev = self.device
        return (
            torch.from_numpy(ids).to(dev, non_blocking=True),
            torch.from_numpy(attn).to(dev, non_blocking=True),
        )

    # -- one optimizer step -----------------------------------------------------------------------
    def train_step(
        self,
        step_model: torch.nn.Module,
        *,
        clock: Callable[[], float],
        elapsed: float,
        stop_requested: bool = False,
        want_accuracy: bool = False,
    ) -> StepStats:
        """One optimizer step over `grad_accum_steps` micro-batches (all ranks in lockstep).

        `elapsed` is the agreed session time before the step (drives the LR in time mode);
        `clock()` reads it after the step. Non-finite loss or gradient: no update, counted.
        """
        cfg, info = self.cfg, self.info
        accum, B = cfg.grad_accum_steps, cfg.batch_size
        t0 = time.perf_counter()
        lr = self.schedule.lr(self.step, elapsed)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        mlm_on, nce_on = cfg.mlm_weight > 0, self.contrastive is not None
        step_loss = torch.zeros((), device=self.device)
        parts = torch.zeros(2, device=self.device)  # unweighted MLM and InfoNCE, step means
        step_tokens = 0
        train_acc = None

        def sync_if(final_backward: bool) -> contextlib.AbstractContextManager[Any]:
            # DDP all-reduces gradients in the last backward of the last micro-batch only.
            if not info.distributed or final_backward:
                return contextlib.nullcontext()
            return step_model.no_sync()  # type: ignore[operator]

        for j in range(accum):
            slot = j * info.world_size + info.rank
            last = j == accum - 1
            if mlm_on:
                input_ids, attention, labels = self.micro_batch(self.cursor + slot * B)
                pmask = labels.ne(-100)
                with sync_if(last and not nce_on):
                    with self.autocast:
                        out = step_model(
                            input_ids,
                            attention_mask=attention,
                            labels=labels,
                            prediction_mask=pmask,
                        )
                    loss = out.loss * cfg.mlm_weight / accum  # x * 1.0 is exact: weight 1 = MLM
                    self.scaler.scale(loss).backward()
                step_loss += loss.detach().float()
                parts[0] += out.loss.detach().float() / accum
                step_tokens += input_ids.numel() if attention is None else int(attention.sum())
                if want_accuracy and last:
                    with torch.no_grad():
                        train_acc = (out.logits.argmax(-1) == labels[pmask]).float().mean().item()
            if nce_on:
                ids, attn = self.contrastive_batch(slot)
                with sync_if(last):
                    with self.autocast:
                        nce = contrastive_loss(
                            step_model,
                            ids,
                            attn,
                            pooling=cfg.pooling,
                            temperature=cfg.temperature,
                            symmetric=cfg.contrastive_symmetric,
                        )
                    loss = nce * cfg.contrastive_weight / accum
                    self.scaler.scale(loss).backward()
                step_loss += loss.detach().float()
                parts[1] += nce.detach().float() / accum
                step_tokens += int(attn.sum())
        if mlm_on:
            self.cursor += info.world_size * accum * B
        if self.contrastive is not None:
            for stream, n in self.contrastive.per_batch.items():
                self.contrastive_cursor[stream] += info.world_size * accum * n

        # One all-reduce carries what every rank must agree on: loss, stop request, clock (and
        # the loss's two parts, for the logs).
        shared = torch.tensor(
            [0.0, float(stop_requested), clock(), 0.0, 0.0],
            device=self.device,
            dtype=torch.float32,
        )
        shared[0] = step_loss
        shared[3:] = parts
        if info.distributed:
            dist.all_reduce(shared)
            shared /= info.world_size
        loss_value = float(shared[0])

        finite = math.isfinite(loss_value)
        if finite:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients (fp16)
            if cfg.max_grad_norm > 0:
                gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                # fp16: inf gradients are the GradScaler's business (it skips the step and
                # lowers the scale); elsewhere they mean divergence.
                if not self.scaler.is_enabled() and not torch.isfinite(gnorm):
                    finite = False
        if finite:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.consecutive_nonfinite = 0
        else:
            self.skipped_steps += 1
            self.consecutive_nonfinite += 1
            logger.warning(
                "step %d: non-finite loss/gradient (%s); step skipped (%d in a row)",
                self.step,
                loss_value,
                self.consecutive_nonfinite,
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        dt = time.perf_counter() - t0
        self.train_time_s += dt
        return StepStats(
            loss=loss_value,
            finite=finite,
            tokens=step_tokens * info.world_size,
            seconds=dt,
            lr=lr,
            train_accuracy=train_acc,
            stop_requested=float(shared[1]) > 0,
            elapsed=float(shared[2]),
            mlm_loss=float(shared[3]) if mlm_on else None,
            contrastive_loss=float(shared[4]) if nce_on else None,
        )

    # -- the loop ---------------------------------------------------------------------------------
    def train(self, *, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        cfg, info = self.cfg, self.info
        if resume:
            latest = self.manager.latest()
            if latest is None:
                raise FileNotFoundError(f"--resume: no checkpoint in {self.output_dir}")
            self.load(latest)
        elif info.is_main and (self.output_dir / "latest").exists():
            raise TrainConfigError(
                f"{self.output_dir} already holds a run (see its 'latest' file); "
                "pass --resume to continue it or choose another --output-dir"
            )
        _barrier(info)

        step_model: torch.nn.Module = self.model
        if cfg.compile:
            step_model = torch.compile(step_model)  # type: ignore[assignment]
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            step_model = DDP(
                step_model, device_ids=[info.local_rank] if self.device.type == "cuda" else None
            )
        metrics = (
            MetricsLogger(self.output_dir, tensorboard=cfg.tensorboard) if info.is_main else None
        )
        time_mode = self.schedule.time_based
        bar = None
        if info.is_main and cfg.progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=int(self.schedule.budget_s) if time_mode else cfg.max_steps,
                initial=int(self.schedule.elapsed_offset) if time_mode else self.step,
                unit="s" if time_mode else "step",
                dynamic_ncols=True,
                desc="train",
            )
        rows_per_step = info.world_size * cfg.grad_accum_steps * cfg.batch_size
        first_loss = last_loss = None
        window_loss, window_n, window_tokens, window_time = 0.0, 0, 0, 0.0
        window_parts = {"mlm": 0.0, "contrastive": 0.0}
        session_tokens, session_time = 0, 0.0
        last_ckpt: Path | None = self.manager.latest() if info.is_main else None
        finished = False
        session_start = time.perf_counter()
        elapsed = 0.0  # this session's wall-clock seconds, agreed between ranks
        steps_this_session = 0
        logger.info(
            "training %s params, precision %s, %d process(es), %d tokens/step",
            f"{self.model.num_parameters():,}",
            self.precision,
            info.world_size,
            rows_per_step * cfg.max_seq_length,
        )

        with _StopRequest() as stop:
            while True:
                if self.step >= cfg.max_steps or (
                    time_mode and self.schedule.progress(self.step, elapsed) >= 1.0
                ):
                    finished = True  # (also when resuming a run that had already finished)
                    break
                if stop_after is not None and self.step >= stop_after:
                    break
                st = self.train_step(
                    step_model,
                    clock=lambda: time.perf_counter() - session_start,
                    elapsed=elapsed,
                    stop_requested=stop.requested,
                    want_accuracy=(self.step + 1) % cfg.log_every == 0,
                )
                lr, elapsed, stop_requested = st.lr, st.elapsed, st.stop_requested
                steps_this_session += 1
                session_tokens += st.tokens
                session_time += st.seconds
                window_tokens += st.tokens
                window_time += st.seconds
                if st.finite:
                    window_loss += st.loss
                    window_n += 1
                    window_parts["mlm"] += st.mlm_loss or 0.0
                    window_parts["contrastive"] += st.contrastive_loss or 0.0
                if self.consecutive_nonfinite >= cfg.max_consecutive_nonfinite:
                    if metrics is not None:
                        metrics.close()
                    if bar is not None:
                        bar.close()
                    raise NonFiniteLossError(
                        f"{self.consecutive_nonfinite} consecutive steps had a non-finite loss "
                        f"or gradient (last at step {self.step - 1}, lr {lr:.3g}); aborting. "
                        f"The last good checkpoint is {self.manager.latest()}. Try a lower "
                        "train.lr, a longer warmup, or fp32 precision."
                    )
                train_acc = st.train_accuracy

                finished_now = self.step >= cfg.max_steps or (
                    time_mode and self.schedule.progress(self.step, elapsed) >= 1.0
                )
                if self.step % cfg.log_every == 0 or finished_now:
                    record: dict[str, Any] = {
                        "train_loss": window_loss / window_n if window_n else float("nan"),
                        "lr": lr,
                        "tokens_per_s": window_tokens / max(window_time, 1e-9),
                        "elapsed_s": self.schedule.elapsed_offset + elapsed,
                        "skipped_steps": self.skipped_steps,
                    }
                    if train_acc is not None:
                        record["train_accuracy"] = train_acc
                    if self.contrastive is not None and window_n:  # the loss's two parts
                        if cfg.mlm_weight > 0:
                            record["train_mlm_loss"] = window_parts["mlm"] / window_n
                        record["train_contrastive_loss"] = window_parts["contrastive"] / window_n
                    if window_n:
                        last_loss = record["train_loss"]
                        if first_loss is None:
                            first_loss = last_loss
                    if metrics is not None:
                        metrics.log(self.step, record)
                    if bar is not None:
                        shown = {"loss": f"{record['train_loss']:.3f}"}
                        parts = {"mlm": "train_mlm_loss", "nce": "train_contrastive_loss"}
                        for short, key in parts.items():
                            if key in record:
                                shown[short] = f"{record[key]:.3f}"
                        bar.set_postfix(
                            **shown, lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}"
                        )
                    window_loss, window_n, window_tokens, window_time = 0.0, 0, 0, 0.0
                    window_parts = {"mlm": 0.0, "contrastive": 0.0}
                if bar is not None:
                    if time_mode:
                        bar.update(max(0, int(self.schedule.elapsed_offset + elapsed) - bar.n))
                    else:
                        bar.update(1)

                periodic_eval = cfg.eval_every and self.step % cfg.eval_every == 0
                periodic_save = cfg.save_every and self.step % cfg.save_every == 0
                stopping = stop_requested or (stop_after is not None and self.step >= stop_after)
                if not finished_now and (periodic_eval or periodic_save):
                    # Every saved checkpoint carries a fresh validation loss (best tracking).
                    valid = self.evaluate()
                    if valid is not None and metrics is not None:
                        metrics.log(self.step, {f"valid_{k}": v for k, v in valid.items()})
                if not finished_now and (periodic_save or stopping):
                    last_ckpt = self.save(
                        self.manager.name_for(self.step), self.schedule.elapsed_offset + elapsed
                    )
                if stop_requested:
                    break

        total_elapsed = self.schedule.elapsed_offset + elapsed
        final_dir = None
        if finished and steps_this_session > 0:
            valid = self.evaluate()
            if valid is not None and metrics is not None:
                metrics.log(self.step, {f"valid_{k}": v for k, v in valid.items()})
            final_dir = self.save("final", total_elapsed)
            last_ckpt = final_dir
        elif finished:
            final_dir = self.output_dir / "final"
            logger.info("run already finished at step %d; nothing to do", self.step)
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
            if cfg.plot:
                plot_curves(metrics.path, self.output_dir / "curves.png")
        _barrier(info)
        return TrainResult(
            output_dir=self.output_dir,
            step=self.step,
            finished=finished,
            final_dir=final_dir,
            last_checkpoint=last_ckpt,
            skipped_steps=self.skipped_steps,
            first_loss=first_loss,
            last_loss=last_loss,
            valid=self.last_valid,
            tokens_per_s=session_tokens / max(session_time, 1e-9),
            train_time_s=session_time,
        )


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
        _barrier(info)
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
        cache = cfg.cache_dir or None

        def load_data() -> tuple[Any, Any, ContrastiveData | None]:
            train_corpora = load_corpus(corpus, tokenizer, cache)
            valid_corpora = load_corpus(valid, tokenizer, cache) if valid else None
            contrastive = None
            if cfg.contrastive_weight > 0:
                contrastive = build_contrastive_data(
                    cfg, tokenizer, corpus=corpus, holdout=valid or [], train_corpora=train_corpora
                )
            return train_corpora, valid_corpora, contrastive

        # Rank 0 tokenizes and fills the cache; the others then read it.
        if info.is_main:
            train_corpora, valid_corpora, contrastive = load_data()
        _barrier(info)
        if not info.is_main:
            train_corpora, valid_corpora, contrastive = load_data()
        retrieval = None  # only rank 0 evaluates
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
        trainer = Trainer(
            model_config=model_config,
            cfg=cfg,
            tokenizer=tokenizer,
            train_data=train_data,
            valid_data=valid_data,
            output_dir=out,
            info=info,
            provenance={
                "corpus": [str(p) for p in corpus],
                "valid": [str(p) for p in valid or []],
                "vocab": str(vocab) if vocab else None,
            },
            contrastive=contrastive,
            retrieval=retrieval,
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
