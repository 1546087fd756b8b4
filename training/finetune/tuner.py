"""Fine-tuning a pretrained encoder as a text classifier: the loop behind `bert-finetune`.

    model = the checkpoint's encoder + a fresh classifier over the training file's labels
    for each step:
        rows = this epoch's permutation[cursor : cursor + batch]   (seeded by seed + epoch)
        loss = cross_entropy(model.classify(rows), labels, class weights)
        backward, clip, AdamW step, lr from the schedule (steps or wall-clock time)
        every eval_every steps (default once per epoch) and at the end:
            valid accuracy / macro-F1 / loss; save a checkpoint (best = highest macro-F1)

The output directory holds `best/` (the checkpoint with the best valid macro-F1: an HF
BertForSequenceClassification, or RoFormerForSequenceClassification for rotary models, with
`id2label` and the tokenizer; `bert-serve --checkpoint DIR/best` serves it), the periodic
`checkpoint-NNNNNN/` directories that `--resume` continues from exactly (optimizer, schedule,
data position and RNG states travel with them), `metrics.jsonl`, TensorBoard events and
`curves.png`. Checkpoints are published atomically by
`training.run.checkpointing.CheckpointManager`;
`best/eval.json` holds the valid figures that made it the best.

The encoder's weights come through the one loader, so any checkpoint `bert-serve` reads can be
fine-tuned (ours, a transformers BERT or a sentence-transformers directory). Its MLM head is left
out and the classifier starts from BERT's initialisation, as transformers'
`...ForSequenceClassification.from_pretrained` does for a masked-LM checkpoint. Deliberately not
here: several processes (DDP), text pairs, multi-label tasks, and reusing a BertForPreTraining
checkpoint's pooler (transformers would; ours start it fresh).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from training.data.labelled import LabelSet, class_weights, encode_examples, read_labelled
from training.evaluation.classification import classification_metrics, predict
from training.finetune.config import FinetuneConfig
from training.run.checkpointing import CheckpointManager, assert_finite_weights
from training.run.distributed import autocast_for, resolve_precision, rng_state, set_rng_state
from training.run.metrics import MetricsLogger, RunLog, StepStats, plot_finetune_curves
from training.run.options import TrainConfigError
from training.run.schedule import LRSchedule

__all__ = ["FineTuneResult", "FineTuner"]

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
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


class FineTuner:
    """Builds the classifier, the data and the optimizer; `train()` runs the loop."""

    def __init__(
        self,
        cfg: FinetuneConfig,
        *,
        checkpoint: str | Path,
        train_file: str | Path,
        valid_file: str | Path,
        output_dir: str | Path,
    ) -> None:
        from model import BertForMaskedLM, load_checkpoint
        from tokenization import WordPieceTokenizer

        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.checkpoint = Path(checkpoint)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        want = (
            cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.device = torch.device(want)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.autocast = autocast_for(self.precision, self.device)
        torch.manual_seed(cfg.seed)

        train_examples = read_labelled(train_file)
        valid_examples = read_labelled(valid_file)
        self.labels = LabelSet.from_examples(train_examples)
        start = load_checkpoint(
            self.checkpoint,
            BertForMaskedLM,
            tokenizer_factory=WordPieceTokenizer.from_pretrained,
            allow_pickle=False,
        )
        if start.tokenizer is None:
            raise TrainConfigError(f"{checkpoint}: no tokenizer (vocab.txt or tokenizer.json)")
        self.tokenizer = start.tokenizer
        base = start.model.config
        dropout = base.hidden_dropout_prob if cfg.dropout is None else cfg.dropout
        self.model_config = dataclasses.replace(
            base, labels=self.labels.names, hidden_dropout_prob=dropout
        )
        model = BertForMaskedLM(self.model_config, mlm_head=False, classifier=True)
        same_head = start.model.classifier is not None and base.labels == self.labels.names
        missing, unexpected = model.load_state_dict(start.model.state_dict(), strict=False)
        unexpected = [k for k in unexpected if not k.startswith(("mlm_head.", "classifier."))]
        if unexpected or any(not k.startswith("classifier.") for k in missing):
            raise TrainConfigError(f"{checkpoint}: the encoder does not fit ({unexpected[:3]})")
        if not same_head and start.model.classifier is not None:
            model.classifier.apply(model._init_weights)  # other labels: a fresh head
        del start
        self.model = model.to(self.device).train()

        max_len = min(cfg.max_length, self.model_config.max_position_embeddings)
        self.train_data = encode_examples(
            train_examples,
            self.labels.ids(train_examples, str(train_file)),
            self.tokenizer,
            max_len,
        )
        self.valid_data = encode_examples(
            valid_examples,
            self.labels.ids(valid_examples, str(valid_file)),
            self.tokenizer,
            max_len,
        )
        weights = class_weights(self.train_data.labels, len(self.labels.names), cfg.class_weighting)
        self.class_weights = None if weights is None else torch.from_numpy(weights).to(self.device)

        self.steps_per_epoch = math.ceil(len(self.train_data) / cfg.batch_size)
        self.max_steps = cfg.max_steps or (
            math.ceil(cfg.epochs * self.steps_per_epoch) if cfg.epochs else 10**9
        )
        self.eval_every = cfg.eval_every or self.steps_per_epoch
        self.optimizer = torch.optim.AdamW(
            self.model.optimizer_param_groups(cfg.weight_decay),
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_eps,
        )
        self.schedule = LRSchedule.from_config(cfg, self.max_steps)
        self.manager = CheckpointManager(self.output_dir, keep_last=cfg.keep_last)
        self.step = 0
        self.train_time_s = 0.0
        self.best: dict[str, Any] | None = None
        self.last_valid: dict[str, Any] | None = None
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, its row permutation)

    # -- data -------------------------------------------------------------------------------------
    def batch_rows(self, step: int) -> np.ndarray:
        """Rows of optimizer step `step`: a slice of its epoch's seeded permutation (the last
        batch of an epoch may be short), so the data position is a function of the step."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:  # one permutation per epoch, not step
            perm = np.random.default_rng(self.cfg.seed + epoch).permutation(len(self.train_data))
            self._order = (epoch, perm)
        return self._order[1][k * self.cfg.batch_size : (k + 1) * self.cfg.batch_size]

    # -- one step -----------------------------------------------------------------------------------
    def train_step(self, elapsed: float) -> StepStats:
        t0 = time.perf_counter()
        lr = self.schedule.lr(self.step, elapsed)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        ids, mask, labels = (
            t.to(self.device) for t in self.train_data.batch(self.batch_rows(self.step), self._pad)
        )
        with self.autocast:
            out = self.model.classify(ids, mask, labels=labels, class_weights=self.class_weights)
        out.loss.backward()
        loss = float(out.loss.detach())
        finite = math.isfinite(loss)
        if finite and self.cfg.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
            finite = bool(torch.isfinite(norm))
        if finite:
            self.optimizer.step()
        else:
            logger.warning("step %d: non-finite loss or gradient; step skipped", self.step)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        dt = time.perf_counter() - t0
        self.train_time_s += dt
        acc = float((out.logits.argmax(-1) == labels).float().mean())
        return StepStats(
            loss=loss,
            finite=finite,
            tokens=int(mask.sum()),
            seconds=dt,
            lr=lr,
            train_accuracy=acc,
            stop_requested=False,
            elapsed=elapsed + dt,
        )

    @property
    def _pad(self) -> int:
        return self.tokenizer.pad_token_id

    # -- evaluation and checkpoints ---------------------------------------------------------------
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
        self.last_valid = metrics
        return metrics

    def run_config(self, elapsed_s: float) -> dict[str, Any]:
        return {
            "finetune": self.cfg.to_dict(),
            "run": {
                "checkpoint": str(self.checkpoint),
                "labels": len(self.labels.names),
                "train_examples": len(self.train_data),
                "precision": self.precision,
                "torch": str(torch.__version__),
                "step": self.step,
                "train_time_s": round(self.train_time_s, 1),
                "elapsed_s": round(elapsed_s, 1),
            },
        }

    def save(self, name: str, elapsed_s: float, *, state: bool = True) -> Path:
        import json

        assert_finite_weights(self.model)
        config_text = yaml.safe_dump(self.run_config(elapsed_s), sort_keys=False)
        valid = (
            self.last_valid if self.last_valid and self.last_valid["step"] == self.step else None
        )
        training_state = self.training_state(elapsed_s) if state else None

        def write(tmp: Path) -> None:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            (tmp / CONFIG_FILE).write_text(config_text, encoding="utf-8")
            if valid is not None:
                (tmp / EVAL_FILE).write_text(json.dumps(valid, indent=2) + "\n", encoding="utf-8")
            if training_state is not None:
                torch.save(training_state, tmp / STATE_FILE)

        # best/ is published beside the pointers: `latest` must keep naming a resumable one.
        return self.manager.save(name, write, step=self.step, update_latest=name != BEST)

    def training_state(self, elapsed_s: float) -> dict[str, Any]:
        return {
            "step": self.step,
            "train_time_s": self.train_time_s,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {**self.schedule.state_dict(), "elapsed_offset": elapsed_s},
            "rng": rng_state(),
            "best": self.best,
            "labels": list(self.labels.names),
        }

    def load(self, checkpoint: Path) -> None:
        from model import BertForMaskedLM

        state = torch.load(checkpoint / STATE_FILE, map_location=self.device, weights_only=False)
        if tuple(state["labels"]) != self.labels.names:
            raise TrainConfigError(
                f"--resume: {checkpoint} was trained on other labels than the training file's"
            )
        loaded = BertForMaskedLM.from_pretrained(checkpoint, map_location=self.device)
        self.model.load_state_dict(loaded.state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.step, self.train_time_s, self.best = (
            state["step"],
            state["train_time_s"],
            state["best"],
        )
        set_rng_state(state["rng"])
        logger.info("resumed from %s at step %d", checkpoint, self.step)

    # -- the loop -----------------------------------------------------------------------------------
    def train(self, *, resume: bool = False, stop_after: int | None = None) -> FineTuneResult:
        cfg = self.cfg
        if resume:
            latest = self.manager.latest()
            if latest is None:
                raise FileNotFoundError(f"--resume: no checkpoint in {self.output_dir}")
            self.load(latest)
        elif (self.output_dir / "latest").exists():
            raise TrainConfigError(
                f"{self.output_dir} already holds a run (see its 'latest' file); pass --resume "
                "to continue it or choose another --output-dir"
            )
        time_mode = self.schedule.time_based
        log = RunLog(
            MetricsLogger(self.output_dir, tensorboard=cfg.tensorboard),
            self._progress_bar() if cfg.progress_bar else None,
            time_mode=time_mode,
        )
        logger.info(
            "fine-tuning %s params on %d examples, %d labels, precision %s, %d steps/epoch",
            f"{self.model.num_parameters():,}",
            len(self.train_data),
            len(self.labels.names),
            self.precision,
            self.steps_per_epoch,
        )
        session_start = time.perf_counter()
        elapsed, examples = 0.0, 0

        def done() -> bool:
            return self.step >= self.max_steps or (
                time_mode and self.schedule.progress(self.step, elapsed) >= 1.0
            )

        while not done() and not (stop_after is not None and self.step >= stop_after):
            st = self.train_step(elapsed)
            elapsed = time.perf_counter() - session_start
            examples += len(self.batch_rows(self.step - 1))
            log.add(st)
            total = self.schedule.elapsed_offset + elapsed
            last = done() or (stop_after is not None and self.step >= stop_after)
            if self.step % cfg.log_every == 0 or last:
                log.record(self.step, st, elapsed=total, skipped=0)
            log.advance(total)
            if self.step % self.eval_every == 0 or last:
                self._evaluate_and_save(log, total)
            elapsed = time.perf_counter() - session_start  # evaluations count: wall clock
        finished = done()
        log.close()
        if cfg.plot and log.metrics is not None:
            try:
                plot_finetune_curves(log.metrics.path, self.output_dir / "curves.png")
            except ImportError as e:  # the run is done and saved; only the picture is missing
                logger.warning("curves.png not drawn: %s", e)
        best_dir = self.output_dir / BEST
        return FineTuneResult(
            output_dir=self.output_dir,
            step=self.step,
            finished=finished,
            best_dir=best_dir if best_dir.is_dir() else None,
            best=self.best,
            examples_per_s=examples / max(log.session_time, 1e-9),
            train_time_s=log.session_time,
        )

    def _evaluate_and_save(self, log: RunLog, total_elapsed: float) -> None:
        valid = self.evaluate()
        summary = {k: v for k, v in valid.items() if k != "per_class"}
        log.valid(self.step, summary)
        logger.info(
            "step %d: valid accuracy %.4f, macro-F1 %.4f, loss %.4f",
            self.step,
            valid["accuracy"],
            valid["macro_f1"],
            valid["loss"],
        )
        if self.best is None or valid["macro_f1"] > self.best["macro_f1"]:
            self.best = summary
            self.save(BEST, total_elapsed, state=False)
        self.save(self.manager.name_for(self.step), total_elapsed)

    def _progress_bar(self) -> Any:
        from tqdm.auto import tqdm

        time_mode = self.schedule.time_based
        return tqdm(
            total=int(self.schedule.budget_s) if time_mode else self.max_steps,
            initial=int(self.schedule.elapsed_offset) if time_mode else self.step,
            unit="s" if time_mode else "step",
            dynamic_ncols=True,
            desc="finetune",
        )
