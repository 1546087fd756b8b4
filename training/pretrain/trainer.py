"""The pretraining loop (MLM, optionally plus InfoNCE): one readable loop, DDP-aware, resumable
bit for bit on CPU.

`training.pretrain.prepare.run_training(...)` is the whole job behind `bert-train`: it sets up
DDP, the tokenizer and the cached data, then `Trainer.train()` runs the loop::

    for each optimizer step:
        lr = schedule(step or elapsed time)
        for each micro-batch (gradient accumulation):
            rows = RowOrder.rows(global position)    # resumable data position
            ids, labels = mask_batch(rows, seeded by the position)   # fresh mask each epoch
            loss = model(ids, labels=labels, prediction_mask=labels != -100).loss  # sparse head
            backward(mlm_weight * loss)                 # (skipped when mlm_weight is 0)
            if contrastive_weight > 0:                  # training/pretrain/contrastive.py
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

Deliberately not here: set-up (training/pretrain/prepare.py), processes and precision
(training/run/distributed.py), data-loader worker processes (batches are gathered from an in-memory
array in well under a millisecond), gradient checkpointing, and FSDP.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml

from training.data.corpus import (
    LineDataset,
    PackedDataset,
    RowOrder,
)
from training.data.pairs import RetrievalSet
from training.evaluation.mlm import evaluate_mlm
from training.evaluation.retrieval import evaluate_retrieval
from training.pretrain.batches import MLMBatches
from training.pretrain.config import TrainConfig
from training.pretrain.contrastive import (
    ContrastiveData,
    check_objective,
    contrastive_loss,
)
from training.run.checkpointing import CheckpointManager, assert_finite_weights, init_weights_from
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
from training.run.options import TrainConfigError
from training.run.schedule import LRSchedule

__all__ = ["NonFiniteLossError", "StepStats", "TrainResult", "Trainer"]

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
CONFIG_FILE = "training_config.yaml"
STATE_FORMAT = 1


class NonFiniteLossError(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""


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
        self.autocast = autocast_for(self.precision, self.device)

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        # A sentence-pair objective trains BERT's NSP head (pooler + cls.seq_relationship).
        self.model = BertForMaskedLM(model_config, nsp_head=cfg.sop_weight > 0).to(self.device)
        if cfg.init_from is not None:  # a later stage: these weights, a fresh optimizer
            init_weights_from(self.model, Path(cfg.init_from), self.device)
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
        self.schedule = LRSchedule.from_config(cfg, cfg.max_steps)
        self.order = RowOrder(len(train_data), cfg.seed)
        self.batches = MLMBatches(train_data, self.order, tokenizer, cfg, self.device)
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
            "rng": rng_state(),
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
        barrier(self.info)
        return path

    def load(self, checkpoint: Path) -> None:
        """Restore weights, optimizer, scheduler, scaler, position and RNG from a checkpoint."""
        from model import BertForMaskedLM

        loaded = BertForMaskedLM.from_pretrained(
            checkpoint, map_location=self.device, nsp_head=self.model.nsp_head is not None
        )
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
            set_rng_state(state["rng"])
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
                self.batches.spec,
                batch_size=self.cfg.eval_batch_size,
                max_rows=self.cfg.eval_max_sequences,
                seed=self.cfg.eval_seed,
                device=self.device,
                autocast=self.autocast,
            )
            metrics.update(self.evaluate_retrieval())
            self.last_valid = metrics
            self._valid_step = self.step
        barrier(self.info)
        return metrics

    def evaluate_retrieval(self) -> dict[str, float]:
        """recall@k and MRR of the valid pairs (example -> its definition), with the run's pooling.

        Eval mode and no_grad, no random draws: it never changes what training does next.
        """
        if self.retrieval is None:
            return {}
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
                mb = self.batches.batch(self.cursor + slot * B)
                labels, pmask = mb.labels, mb.labels.ne(-100)
                with sync_if(last and not nce_on):
                    with self.autocast:
                        out = step_model(
                            mb.input_ids,
                            attention_mask=mb.attention_mask,
                            token_type_ids=mb.token_type_ids,
                            labels=labels,
                            prediction_mask=pmask,
                        )
                    loss = out.loss * cfg.mlm_weight  # x * 1.0 is exact: weight 1 = MLM
                    if mb.sentence_labels is not None:  # SOP / NSP through the NSP head
                        pair = F.cross_entropy(out.nsp_logits.float(), mb.sentence_labels)
                        loss = loss + cfg.sop_weight * pair
                    loss = loss / accum
                    self.scaler.scale(loss).backward()
                step_loss += loss.detach().float()
                parts[0] += out.loss.detach().float() / accum
                attention = mb.attention_mask
                step_tokens += labels.numel() if attention is None else int(attention.sum())
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
        barrier(info)

        step_model: torch.nn.Module = self.model
        if cfg.compile:
            step_model = torch.compile(step_model)  # type: ignore[assignment]
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            step_model = DDP(
                step_model, device_ids=[info.local_rank] if self.device.type == "cuda" else None
            )
        time_mode = self.schedule.time_based
        log = RunLog(
            MetricsLogger(self.output_dir, tensorboard=cfg.tensorboard) if info.is_main else None,
            self._progress_bar() if info.is_main and cfg.progress_bar else None,
            time_mode=time_mode,
        )
        last_ckpt: Path | None = self.manager.latest() if info.is_main else None
        finished = False
        session_start = time.perf_counter()
        elapsed = 0.0  # this session's wall-clock seconds, agreed between ranks
        logger.info(
            "training %s params, precision %s, %d process(es), %d tokens/step",
            f"{self.model.num_parameters():,}",
            self.precision,
            info.world_size,
            info.world_size * cfg.grad_accum_steps * cfg.batch_size * cfg.max_seq_length,
        )

        def done() -> bool:
            return self.step >= cfg.max_steps or (
                time_mode and self.schedule.progress(self.step, elapsed) >= 1.0
            )

        with StopRequest() as stop:
            while not (finished := done()):  # (also true when resuming a finished run)
                if stop_after is not None and self.step >= stop_after:
                    break
                st = self.train_step(
                    step_model,
                    clock=lambda: time.perf_counter() - session_start,
                    elapsed=elapsed,
                    stop_requested=stop.requested,
                    want_accuracy=(self.step + 1) % cfg.log_every == 0,
                )
                elapsed = st.elapsed
                log.add(st)
                if self.consecutive_nonfinite >= cfg.max_consecutive_nonfinite:
                    log.close()
                    raise NonFiniteLossError(
                        f"{self.consecutive_nonfinite} consecutive steps had a non-finite loss "
                        f"or gradient (last at step {self.step - 1}, lr {st.lr:.3g}); aborting. "
                        f"The last good checkpoint is {self.manager.latest()}. Try a lower "
                        "train.lr, a longer warmup, or fp32 precision."
                    )
                finished_now = done()
                total = self.schedule.elapsed_offset + elapsed
                if self.step % cfg.log_every == 0 or finished_now:
                    log.record(self.step, st, elapsed=total, skipped=self.skipped_steps)
                log.advance(total)
                periodic_eval = cfg.eval_every and self.step % cfg.eval_every == 0
                periodic_save = cfg.save_every and self.step % cfg.save_every == 0
                stopping = st.stop_requested or (stop_after is not None and self.step >= stop_after)
                if not finished_now and (periodic_eval or periodic_save):
                    # Every saved checkpoint carries a fresh validation loss (best tracking).
                    log.valid(self.step, self.evaluate())
                if not finished_now and (periodic_save or stopping):
                    last_ckpt = self.save(self.manager.name_for(self.step), total)
                if st.stop_requested:
                    break

        total_elapsed = self.schedule.elapsed_offset + elapsed
        final_dir = None
        if finished and log.steps > 0:
            log.valid(self.step, self.evaluate())
            final_dir = last_ckpt = self.save("final", total_elapsed)
        elif finished:
            final_dir = self.output_dir / "final"
            logger.info("run already finished at step %d; nothing to do", self.step)
        log.close(self.output_dir / "curves.png" if cfg.plot else None)
        barrier(info)
        return TrainResult(
            output_dir=self.output_dir,
            step=self.step,
            finished=finished,
            final_dir=final_dir,
            last_checkpoint=last_ckpt,
            skipped_steps=self.skipped_steps,
            first_loss=log.first_loss,
            last_loss=log.last_loss,
            valid=self.last_valid,
            tokens_per_s=log.tokens_per_s,
            train_time_s=log.session_time,
        )

    def _progress_bar(self) -> Any:
        from tqdm.auto import tqdm

        time_mode = self.schedule.time_based
        return tqdm(
            total=int(self.schedule.budget_s) if time_mode else self.cfg.max_steps,
            initial=int(self.schedule.elapsed_offset) if time_mode else self.step,
            unit="s" if time_mode else "step",
            dynamic_ncols=True,
            desc="train",
        )
