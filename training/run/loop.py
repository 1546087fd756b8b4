"""The one training loop every run kind extends: `RunLoop` (pretraining's `Trainer`, fine-tuning's
`FineTuner`).

    train(resume, stop_after):
        resume from DIR/latest, or refuse a directory that already holds a run
        while the budget is not spent (max steps, or the wall-clock budget of the schedule):
            lr = schedule(step or elapsed time)
            work = forward_backward(...)                  # the run kind's micro-batches
            agree on loss, stop request, clock            # one all-reduce under DDP
            non-finite loss or gradient? -> skip the update, count it; N in a row -> abort
            else unscale, clip, step, zero grads
            log every log_every steps; after_step(...)    # the run kind's evaluations and saves
            stop request (Ctrl-C, SIGTERM) or --stop-after -> save a resumable checkpoint, leave
        return finish(...)                                # final evaluation, export, result

A run kind builds its model before `RunLoop.__init__` (which sets up AdamW, loss scaling, the
schedule and the checkpoint manager around it) and supplies `forward_backward` (its micro-batches
and their backward passes), `after_step` and `finish` (when it evaluates and what it saves),
`selection_loss` (what its best checkpoint minimises), `run_config` (the recipe and provenance
saved beside the weights), its part of the training state (`extra_state`,
`load_extra_state`) and, if it must, `describe_model` (metadata beside the weights). The loop supplies the rest: the optimizer (no weight decay for biases and
norms), gradient scaling (fp16 only), the non-finite guard, the stop request, atomic checkpoints
whose training state (optimizer, scheduler, scaler, RNG states) makes a resume exact, the
device, precision, metrics and progress bar.

Deliberately not here: what is trained (objectives, data order, heads), the DDP wrapper of the
model and data sharding (the pretrainer's; the loop only all-reduces its per-step scalars).
"""

from __future__ import annotations

import abc
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
import torch.distributed as dist
import yaml
from tqdm.auto import tqdm

from model import BertForMaskedLM
from training.run.checkpointing import CheckpointManager, assert_finite_weights
from training.run.distributed import (
    DistInfo,
    StopRequest,
    autocast_for,
    barrier,
    resolve_precision,
    rng_state,
    set_rng_state,
)
from training.run.metrics import MetricsLogger, RunLog, StepStats
from training.run.options import RunConfig, TrainConfigError
from training.run.schedule import LRSchedule

__all__ = ["STATE_FILE", "NonFiniteLossError", "RunLoop", "StepWork"]

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
STATE_FORMAT = 1

ResultT = TypeVar("ResultT")


class NonFiniteLossError(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""


@dataclass
class StepWork:
    """What the forward and backward passes of one optimizer step did on this rank."""

    loss: torch.Tensor  # () float32: the loss backpropagated, summed over the micro-batches
    tokens: int = 0  # tokens this rank processed
    accuracy: float | None = None  # train accuracy of the last micro-batch, when measured
    # Unweighted parts of the loss, by StepStats field name (averaged over ranks for the logs).
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


class RunLoop(abc.ABC, Generic[ResultT]):
    """Owns optimizer, schedule, loss scaling and checkpoints of one run; `train()` runs it.

    A run kind names itself in its class statement:
    `class Trainer(RunLoop[TrainResult], kind="train", config_file="training_config.yaml")`.
    """

    kind: ClassVar[str] = "run"  # the progress bar's label
    config_file: ClassVar[str] = "run_config.yaml"  # the recipe saved in every checkpoint

    def __init_subclass__(
        cls, *, kind: str | None = None, config_file: str | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls.kind = kind or cls.kind
        cls.config_file = config_file or cls.config_file

    def __init__(
        self,
        cfg: RunConfig,
        *,
        model: Any,
        tokenizer: Any,
        output_dir: str | os.PathLike[str],
        info: DistInfo,
        max_steps: int,
    ) -> None:
        self.cfg = cfg
        self.info = info
        self.device = info.device
        self.model = model
        self.tokenizer = tokenizer
        self.output_dir = Path(output_dir)
        self.max_steps = max_steps  # the schedule's length and a cap on the steps
        self.precision = resolve_precision(cfg.precision, self.device)
        self.autocast = autocast_for(self.precision, self.device)
        self.optimizer = torch.optim.AdamW(
            model.optimizer_param_groups(cfg.weight_decay),
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_eps,
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.precision == "fp16" and self.device.type == "cuda"
        )
        self.schedule = LRSchedule.from_config(cfg, max_steps)
        self.manager = CheckpointManager(self.output_dir, cfg.keep_last, writer=info.is_main)
        self.step = 0
        self.skipped_steps = 0
        self.consecutive_nonfinite = 0
        self.train_time_s = 0.0  # seconds spent in training steps over all sessions
        self.last_checkpoint: Path | None = None  # the newest resumable one (rank 0)
        self._resumable_step = -1  # step of the newest resumable checkpoint (every rank)

    # -- what a run kind supplies -----------------------------------------------------------------
    @abc.abstractmethod
    def forward_backward(self, step_model: torch.nn.Module, *, want_accuracy: bool) -> StepWork:
        """This rank's micro-batches of the step, each loss backpropagated through
        `self.scaler.scale(...)` (DDP: gradients synchronised in the last backward only)."""

    @abc.abstractmethod
    def after_step(self, log: RunLog, total_elapsed: float, *, finished: bool) -> None:
        """Evaluations and checkpoints due after a step (`finished`: the run's last step)."""

    @abc.abstractmethod
    def finish(self, log: RunLog, *, finished: bool, total_elapsed: float) -> ResultT:
        """Close the session: final evaluation and export when `finished`, the log, the result."""

    @abc.abstractmethod
    def selection_loss(self, valid: dict[str, Any]) -> float | None:
        """What the best checkpoint minimises, from one evaluation's metrics (None: unmeasured)."""

    @abc.abstractmethod
    def run_config(self, elapsed_s: float | None = None) -> dict[str, Any]:
        """The YAML saved as `config_file`: the recipe (usable as --config again) and provenance."""

    def extra_state(self) -> dict[str, Any]:
        """The run kind's part of the training state (its data position, best so far, ...)."""
        return {}

    def load_extra_state(self, state: dict[str, Any], checkpoint: Path) -> None:
        """Restore `extra_state` before the weights are loaded (may refuse the checkpoint)."""

    def describe_model(self, directory: Path) -> None:
        """Add to the model files just written into `directory` what only the run kind knows
        (default: nothing; a reranker names its scores' activation in config.json)."""

    def step_model(self) -> torch.nn.Module:
        """The module the steps call (the pretrainer wraps it in torch.compile and DDP)."""
        return self.model

    def log_start(self) -> None:
        logger.info("%s: %s params, precision %s", self.kind, self.params, self.precision)

    # -- the loop ---------------------------------------------------------------------------------
    def train(self, *, resume: bool = False, stop_after: int | None = None) -> ResultT:
        """Run (or, with `resume`, continue) until the budget is spent, a stop is requested or
        `stop_after` steps are done; a stopped run leaves a checkpoint `--resume` continues."""
        self.start(resume)
        step_model = self.step_model()
        log = self.open_log()
        self.last_checkpoint = self.manager.latest() if self.info.is_main else None
        self.log_start()
        session_start = time.perf_counter()
        elapsed = 0.0  # this session's wall-clock seconds, agreed between ranks
        with StopRequest() as stop:
            while not (finished := self.done(elapsed)):  # (also true when resuming a finished run)
                if stop_after is not None and self.step >= stop_after:
                    break
                st = self.train_step(
                    step_model,
                    clock=lambda: time.perf_counter() - session_start,
                    elapsed=elapsed,
                    stop_requested=stop.requested,
                    want_accuracy=(self.step + 1) % self.cfg.log_every == 0,
                )
                elapsed = st.elapsed
                log.add(st)
                self.abort_if_diverged(log, st)
                stopping = st.stop_requested or (stop_after is not None and self.step >= stop_after)
                self.end_step(log, st, elapsed, stopping=stopping)
                if st.stop_requested:
                    break
        return self.finish(
            log, finished=finished, total_elapsed=self.schedule.elapsed_offset + elapsed
        )

    def start(self, resume: bool) -> None:
        """Resume from DIR/latest, or refuse an output directory that already holds a run."""
        if resume:
            latest = self.manager.latest()
            if latest is None:
                raise FileNotFoundError(f"--resume: no checkpoint in {self.output_dir}")
            self.load(latest)
        elif self.info.is_main and (self.output_dir / "latest").exists():
            raise TrainConfigError(
                f"{self.output_dir} already holds a run (see its 'latest' file); "
                "pass --resume to continue it or choose another --output-dir"
            )
        barrier(self.info)

    def done(self, elapsed: float) -> bool:
        """The budget is spent: max steps, or (time mode) the schedule's wall-clock budget."""
        return self.step >= self.max_steps or (
            self.schedule.time_based and self.schedule.progress(self.step, elapsed) >= 1.0
        )

    def end_step(self, log: RunLog, st: StepStats, elapsed: float, *, stopping: bool) -> None:
        """Log the step; the run kind's evaluations and saves; a checkpoint when stopping."""
        finished = self.done(elapsed)
        total = self.schedule.elapsed_offset + elapsed
        if self.step % self.cfg.log_every == 0 or finished:
            log.record(self.step, st, elapsed=total, skipped=self.skipped_steps)
        log.advance(total)
        self.after_step(log, total, finished=finished)
        if stopping and not finished and self._resumable_step != self.step:
            self.save(self.manager.name_for(self.step), total)

    def abort_if_diverged(self, log: RunLog, st: StepStats) -> None:
        """NonFiniteLossError after `max_consecutive_nonfinite` skipped steps in a row."""
        if self.consecutive_nonfinite < self.cfg.max_consecutive_nonfinite:
            return
        log.close()
        raise NonFiniteLossError(
            f"{self.consecutive_nonfinite} consecutive steps had a non-finite loss "
            f"or gradient (last at step {self.step - 1}, lr {st.lr:.3g}); aborting. "
            f"The last good checkpoint is {self.manager.latest()}. Try a lower "
            f"{self.cfg.section}.lr, a longer warmup, or fp32 precision."
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
        """One optimizer step (all ranks in lockstep): the run kind's forward and backward
        passes, then the update.

        `elapsed` is the agreed session time before the step (drives the LR in time mode);
        `clock()` reads it after the step. Non-finite loss or gradient: no update, counted.
        """
        t0 = time.perf_counter()
        lr = self.schedule.lr(self.step, elapsed)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        work = self.forward_backward(step_model, want_accuracy=want_accuracy)
        loss, stop, now, parts = self.agree(work, stop_requested, clock())
        finite = self.update(loss)
        self.step += 1
        dt = time.perf_counter() - t0
        self.train_time_s += dt
        return StepStats(
            loss=loss,
            finite=finite,
            tokens=work.tokens * self.info.world_size,
            seconds=dt,
            lr=lr,
            train_accuracy=work.accuracy,
            stop_requested=stop,
            elapsed=now,
            **parts,
        )

    def agree(
        self, work: StepWork, stop_requested: bool, now: float
    ) -> tuple[float, bool, float, dict[str, float]]:
        """(loss, stop requested, clock, loss parts) as every rank sees them: one all-reduce
        carries what ranks must decide alike (and the parts, for the logs)."""
        names = list(work.parts)
        shared = torch.tensor(
            [0.0, float(stop_requested), now] + [0.0] * len(names),
            device=self.device,
            dtype=torch.float32,
        )
        shared[0] = work.loss
        if names:
            shared[3:] = torch.stack([work.parts[n] for n in names])
        if self.info.distributed:
            dist.all_reduce(shared)
            shared /= self.info.world_size
        values = shared.tolist()
        return values[0], values[1] > 0, values[2], dict(zip(names, values[3:], strict=True))

    def update(self, loss: float) -> bool:
        """Unscale, clip and step, or skip the update of a non-finite loss or gradient (counted);
        zero the gradients either way. Whether the step was applied."""
        finite = math.isfinite(loss)
        if finite:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients (fp16)
            if self.cfg.max_grad_norm > 0:
                gnorm = torch.nn.utils.clip_grad_norm_(
                    self.model.parameters(), self.cfg.max_grad_norm
                )
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
                loss,
                self.consecutive_nonfinite,
            )
        self.optimizer.zero_grad(set_to_none=True)
        return finite

    # -- checkpoint I/O ---------------------------------------------------------------------------
    def save(
        self,
        name: str,
        elapsed_s: float,
        *,
        resumable: bool = True,
        valid_loss: float | None = None,
        files: dict[str, str] | None = None,
    ) -> Path | None:
        """Rank 0 writes checkpoint `name` atomically: weights, tokenizer, the recipe, `files`
        (name -> text) and, when `resumable`, the training state that `latest` then names.
        `valid_loss` may make it the best (best.json). Every rank returns once it is published.
        """
        path = None
        if self.info.is_main:
            assert_finite_weights(self.model)  # non-finite weights are never written
            state = self.training_state(elapsed_s) if resumable else None
            texts = {
                self.config_file: yaml.safe_dump(self.run_config(elapsed_s), sort_keys=False),
                **(files or {}),
            }

            def write(tmp: Path) -> None:
                self.model.save_pretrained(tmp)
                self.describe_model(tmp)
                self.tokenizer.save_pretrained(tmp)
                if state is not None:
                    torch.save(state, tmp / STATE_FILE)
                for file_name, text in texts.items():
                    (tmp / file_name).write_text(text, encoding="utf-8")

            path = self.manager.save(
                name, write, step=self.step, valid_loss=valid_loss, update_latest=resumable
            )
        if resumable:
            self._resumable_step = self.step
            self.last_checkpoint = path
        barrier(self.info)
        return path

    def training_state(self, elapsed_s: float) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "train_time_s": self.train_time_s,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {**self.schedule.state_dict(), "elapsed_offset": elapsed_s},
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            **self.extra_state(),
        }

    def load(self, checkpoint: Path) -> None:
        """Restore weights, optimizer, scheduler, scaler, position and RNG from a checkpoint."""
        state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)
        # A state without "format" is a fine-tuning run's from before the shared loop: format 1.
        if state.get("format", STATE_FORMAT) != STATE_FORMAT:
            raise ValueError(f"{checkpoint / STATE_FILE}: unknown format {state.get('format')!r}")
        self.load_extra_state(state, checkpoint)
        loaded = BertForMaskedLM.from_pretrained(
            checkpoint, map_location=self.device, nsp_head=self.model.nsp_head is not None
        )
        self.model.load_state_dict(loaded.state_dict())
        del loaded
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.train_time_s = float(state.get("train_time_s", 0.0))
        if self.info.is_main:
            set_rng_state(state["rng"])
        else:  # only rank 0's RNG is saved; the others continue from a derived seed
            torch.manual_seed(self.cfg.seed + 1 + self.info.rank + self.step)
        logger.info("resumed from %s at step %d", checkpoint, self.step)

    def run_record(self, elapsed_s: float | None) -> dict[str, Any]:
        """What every run records of itself beside its recipe (`run:` in `config_file`).

        `train_time_s` (seconds in training steps) and `elapsed_s` (wall clock of the run,
        evaluations and checkpoints included, over all sessions) give the cost of the run.
        """
        run = {
            "precision": self.precision,
            "torch": str(torch.__version__),
            "step": self.step,
            "train_time_s": round(self.train_time_s, 1),
        }
        if elapsed_s is not None:
            run["elapsed_s"] = round(elapsed_s, 1)
        return run

    # -- logging ----------------------------------------------------------------------------------
    @property
    def params(self) -> str:
        return f"{self.model.num_parameters():,}"

    def open_log(self) -> RunLog:
        """metrics.jsonl, TensorBoard and the progress bar (rank 0 only)."""
        main = self.info.is_main
        return RunLog(
            MetricsLogger(self.output_dir, tensorboard=self.cfg.tensorboard) if main else None,
            self.progress_bar() if main and self.cfg.progress_bar else None,
            time_mode=self.schedule.time_based,
        )

    def progress_bar(self) -> Any:
        time_mode = self.schedule.time_based
        return tqdm(
            total=int(self.schedule.budget_s) if time_mode else self.max_steps,
            initial=int(self.schedule.elapsed_offset) if time_mode else self.step,
            unit="s" if time_mode else "step",
            dynamic_ncols=True,
            desc=self.kind,
        )
