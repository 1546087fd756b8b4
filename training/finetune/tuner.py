"""Fine-tuning a pretrained encoder as a text classifier: the `FineTuner` behind `bert-finetune`,
whose loop is `training.run.loop.RunLoop`'s, and `Tuner`, the part every fine-tuning task shares
(the reranker of reranker.py is the other).

    model = the checkpoint's encoder + a fresh classifier over the training file's labels
    for each step:
        rows = this epoch's permutation[cursor : cursor + batch]   (seeded by seed + epoch)
        loss = cross_entropy(model.classify(rows), labels, class weights)
        backward, clip, AdamW step, lr from the schedule (steps or wall-clock time)
        every eval_every steps (default once per epoch) and at the end:
            valid accuracy / macro-F1 / loss; save a checkpoint (best = highest macro-F1)

From the shared loop it has the non-finite guard (a step with a non-finite loss or gradient is
skipped and counted; `max_consecutive_nonfinite` in a row abort the run, naming the last good
checkpoint) and the stop request (Ctrl-C or SIGTERM: a resumable checkpoint at the next step,
then exit).

The output directory holds `best/` (the checkpoint with the best valid macro-F1: an HF
BertForSequenceClassification, or RoFormerForSequenceClassification for rotary models, with
`id2label` and the tokenizer; `bert-serve --checkpoint DIR/best` serves it), the periodic
`checkpoint-NNNNNN/` directories that `--resume` continues from exactly (optimizer, schedule,
data position and RNG states travel with them), `metrics.jsonl`, TensorBoard events and
`curves.png`. Checkpoints are published atomically (`training.run.checkpointing`);
`best/eval.json` holds the valid figures that made it the best.

The encoder's weights come through the one loader, so any checkpoint `bert-serve` reads can be
fine-tuned (ours, a transformers BERT or a sentence-transformers directory). Its MLM head is left
out and the classifier starts from BERT's initialisation, as transformers'
`...ForSequenceClassification.from_pretrained` does for a masked-LM checkpoint. Deliberately not
here: several processes (DDP), text pairs (the reranker's, in reranker.py), multi-label tasks,
and reusing a BertForPreTraining checkpoint's pooler (transformers would; ours start it fresh).
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from model import BertForMaskedLM, load_checkpoint
from tokenization import WordPieceTokenizer
from training.data.labelled import LabelSet, class_weights, encode_examples, read_labelled
from training.evaluation.classification import classification_metrics, predict
from training.finetune.config import FinetuneConfig
from training.run.distributed import DistInfo, resolve_device
from training.run.loop import RunLoop, StepWork
from training.run.metrics import RunLog, plot_finetune_curves
from training.run.options import TrainConfigError

__all__ = ["FineTuneResult", "FineTuner", "Tuner", "classifier_from", "start_device"]

logger = logging.getLogger(__name__)

CONFIG_FILE = "finetune_config.yaml"
EVAL_FILE = "eval.json"
BEST = "best"


@dataclass
class FineTuneResult:
    output_dir: Path
    step: int
    finished: bool
    best_dir: Path | None
    best: dict[str, Any] | None  # valid metrics of the best checkpoint (no per-class table)
    examples_per_s: float
    train_time_s: float


def classifier_from(
    checkpoint: Path, labels: Sequence[str], dropout: float | None
) -> tuple[BertForMaskedLM, Any]:
    """(classifier, tokenizer): the checkpoint's encoder under a classification head over
    `labels` (the checkpoint's own head when it has these labels, else a fresh one), with the
    given dropout (None: the checkpoint's). TrainConfigError when it does not fit."""
    start = load_checkpoint(
        checkpoint,
        BertForMaskedLM,
        tokenizer_factory=WordPieceTokenizer.from_pretrained,
        allow_pickle=False,
    )
    if start.tokenizer is None:
        raise TrainConfigError(f"{checkpoint}: no tokenizer (vocab.txt or tokenizer.json)")
    base = start.model.config
    config = dataclasses.replace(
        base,
        labels=tuple(labels),
        hidden_dropout_prob=base.hidden_dropout_prob if dropout is None else dropout,
    )
    model = BertForMaskedLM(config, mlm_head=False, classifier=True)
    same_head = start.model.classifier is not None and base.labels == config.labels
    missing, unexpected = model.load_state_dict(start.model.state_dict(), strict=False)
    unexpected = [k for k in unexpected if not k.startswith(("mlm_head.", "classifier."))]
    if unexpected or any(not k.startswith("classifier.") for k in missing):
        raise TrainConfigError(f"{checkpoint}: the encoder does not fit ({unexpected[:3]})")
    if not same_head and start.model.classifier is not None:
        model.classifier.apply(model._init_weights)  # other labels: a fresh head
    return model, start.tokenizer


def start_device(cfg: FinetuneConfig) -> torch.device:
    """Threads, device and seed of a fine-tuning run, set before its model is built."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    return resolve_device(cfg.device)


class Tuner(RunLoop[FineTuneResult]):
    """What every fine-tuning task shares on top of `RunLoop`: the training examples in one
    seeded permutation per epoch, an evaluation every eval_every steps (and at the end) that
    publishes best/ when it is the best so far, the result and the recipe.

    A task builds its model and data, then calls `__init__` with the number of training
    examples; it supplies `forward_backward`, `evaluate`, `selection_loss`, `describe` (the log
    line of an evaluation) and `data_record` (what the recipe and the training state record of
    its data; a resume refuses other data).
    """

    cfg: FinetuneConfig
    plot: ClassVar[Callable[[Path, Path], Any]] = staticmethod(plot_finetune_curves)

    def __init__(
        self,
        cfg: FinetuneConfig,
        *,
        model: BertForMaskedLM,
        tokenizer: Any,
        checkpoint: str | Path,
        output_dir: str | Path,
        examples: int,
        device: torch.device,
    ) -> None:
        steps_per_epoch = math.ceil(examples / cfg.batch_size)
        max_steps = cfg.max_steps or (
            math.ceil(cfg.epochs * steps_per_epoch) if cfg.epochs else 10**9
        )
        super().__init__(
            cfg,
            model=model.to(device).train(),
            tokenizer=tokenizer,
            output_dir=output_dir,
            info=DistInfo(device=device),
            max_steps=max_steps,
        )
        self.checkpoint = Path(checkpoint)
        self.model_config = model.config
        self.examples = examples
        self.steps_per_epoch = steps_per_epoch
        self.eval_every = cfg.eval_every or steps_per_epoch
        self.best: dict[str, Any] | None = None
        self.last_valid: dict[str, Any] | None = None
        self.session_examples = 0  # training examples of this session (the throughput)
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, its row permutation)

    # -- what a task supplies ---------------------------------------------------------------------
    @abc.abstractmethod
    def evaluate(self) -> dict[str, Any]:
        """The valid (or dev) figures of the model as it is now, with "step"."""

    @abc.abstractmethod
    def describe(self, valid: dict[str, Any]) -> str:
        """One log line of an evaluation's figures."""

    @abc.abstractmethod
    def data_record(self) -> dict[str, Any]:
        """What the run records of its data (JSON-able); a resume must find the same."""

    # -- data -------------------------------------------------------------------------------------
    def batch_rows(self, step: int) -> np.ndarray:
        """Rows of optimizer step `step`: a slice of its epoch's seeded permutation (the last
        batch of an epoch may be short), so the data position is a function of the step."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:  # one permutation per epoch, not step
            perm = np.random.default_rng(self.cfg.seed + epoch).permutation(self.examples)
            self._order = (epoch, perm)
        return self._order[1][k * self.cfg.batch_size : (k + 1) * self.cfg.batch_size]

    @property
    def _pad(self) -> int:
        return self.tokenizer.pad_token_id

    # -- evaluation and checkpoints ---------------------------------------------------------------
    def after_step(self, log: RunLog, total_elapsed: float, *, finished: bool) -> None:
        """Every eval_every steps and at the end: evaluate, publish best/ when it is the best so
        far, and save a resumable checkpoint."""
        if self.step % self.eval_every and not finished:
            return
        valid = self.evaluate()
        self.last_valid = valid
        summary = {k: v for k, v in valid.items() if k != "per_class"}
        log.valid(self.step, summary)
        logger.info("step %d: %s", self.step, self.describe(valid))
        files = {EVAL_FILE: json.dumps(valid, indent=2) + "\n"}
        if self.best is None or self.selection_loss(valid) < self.selection_loss(self.best):
            self.best = summary
            # best/ is published beside the pointers: `latest` must keep naming a resumable one.
            self.save(BEST, total_elapsed, resumable=False, files=files)
        self.save(self.manager.name_for(self.step), total_elapsed, files=files)

    def finish(self, log: RunLog, *, finished: bool, total_elapsed: float) -> FineTuneResult:
        plot_to = self.output_dir / "curves.png" if self.cfg.plot else None
        log.close(plot_to, plot=type(self).plot)
        best_dir = self.output_dir / BEST
        return FineTuneResult(
            output_dir=self.output_dir,
            step=self.step,
            finished=finished,
            best_dir=best_dir if best_dir.is_dir() else None,
            best=self.best,
            examples_per_s=self.session_examples / max(log.session_time, 1e-9),
            train_time_s=log.session_time,
        )

    def run_config(self, elapsed_s: float | None = None) -> dict[str, Any]:
        run = {
            "checkpoint": str(self.checkpoint),
            **self.data_record(),
            **self.run_record(elapsed_s),
        }
        return {"finetune": self.cfg.to_dict(), "run": run}

    def extra_state(self) -> dict[str, Any]:
        return {"best": self.best, "data": self.data_record()}

    def load_extra_state(self, state: dict[str, Any], checkpoint: Path) -> None:
        saved = state.get("data")
        if saved is None and "labels" in state:  # a classifier's state from before the tasks
            saved = {**self.data_record(), "labels": state["labels"]}
        if saved != self.data_record():
            raise TrainConfigError(
                f"--resume: {checkpoint} was trained on other data than this run's "
                f"({saved} vs {self.data_record()})"
            )
        self.best = state["best"]


class FineTuner(Tuner, kind="finetune", config_file=CONFIG_FILE):
    """A text classifier: builds it and its data; the loop is `RunLoop`'s (`train()`)."""

    def __init__(
        self,
        cfg: FinetuneConfig,
        *,
        checkpoint: str | Path,
        train_file: str | Path,
        valid_file: str | Path,
        output_dir: str | Path,
    ) -> None:
        device = start_device(cfg)
        train_examples, valid_examples = read_labelled(train_file), read_labelled(valid_file)
        labels = LabelSet.from_examples(train_examples)
        model, tokenizer = classifier_from(Path(checkpoint), labels.names, cfg.dropout)
        max_len = min(cfg.max_length, model.config.max_position_embeddings)
        train_ids = labels.ids(train_examples, str(train_file))
        train_data = encode_examples(train_examples, train_ids, tokenizer, max_len)
        valid_ids = labels.ids(valid_examples, str(valid_file))
        valid_data = encode_examples(valid_examples, valid_ids, tokenizer, max_len)
        super().__init__(
            cfg,
            model=model,
            tokenizer=tokenizer,
            checkpoint=checkpoint,
            output_dir=output_dir,
            examples=len(train_data),
            device=device,
        )
        self.labels, self.train_data, self.valid_data = labels, train_data, valid_data
        weights = class_weights(train_data.labels, len(labels.names), cfg.class_weighting)
        self.class_weights = None if weights is None else torch.from_numpy(weights).to(device)

    def forward_backward(self, step_model: torch.nn.Module, *, want_accuracy: bool) -> StepWork:
        """The step's one batch through the classifier (class-weighted cross-entropy); its
        accuracy every step (B x C logits: nothing to save by skipping it)."""
        rows = self.batch_rows(self.step)
        ids, mask, labels = (t.to(self.device) for t in self.train_data.batch(rows, self._pad))
        with self.autocast:
            out = step_model.classify(ids, mask, labels=labels, class_weights=self.class_weights)
        self.scaler.scale(out.loss).backward()
        self.session_examples += len(rows)
        accuracy = float((out.logits.argmax(-1) == labels).float().mean())
        return StepWork(loss=out.loss.detach().float(), tokens=int(mask.sum()), accuracy=accuracy)

    def evaluate(self) -> dict[str, Any]:
        with self.autocast:
            logits, loss = predict(
                self.model, self.valid_data, pad_id=self._pad, batch_size=self.cfg.eval_batch_size
            )
        metrics = classification_metrics(
            self.valid_data.labels, logits.argmax(axis=1), self.labels.names
        )
        metrics["loss"] = loss
        metrics["step"] = self.step
        return metrics

    def selection_loss(self, valid: dict[str, Any]) -> float:
        """The best checkpoint has the highest valid macro-F1."""
        return -valid["macro_f1"]

    def describe(self, valid: dict[str, Any]) -> str:
        return (
            f"valid accuracy {valid['accuracy']:.4f}, macro-F1 {valid['macro_f1']:.4f}, "
            f"loss {valid['loss']:.4f}"
        )

    def data_record(self) -> dict[str, Any]:
        return {"labels": list(self.labels.names), "train_examples": len(self.train_data)}

    def log_start(self) -> None:
        logger.info(
            "fine-tuning %s params on %d examples, %d labels, precision %s, %d steps/epoch",
            self.params,
            len(self.train_data),
            len(self.labels.names),
            self.precision,
            self.steps_per_epoch,
        )
