"""Pretraining (MLM, optionally plus InfoNCE and a sentence-pair objective): the `Trainer`, whose
loop is `training.run.loop.RunLoop`'s, DDP-aware and resumable bit for bit on CPU.

`training.pretrain.prepare.run_training(...)` is the whole job behind `bert-train`: it sets up
DDP, the tokenizer and the cached data, then `Trainer.train()` runs the loop, in which the
trainer's part of an optimizer step is `forward_backward`::

    for each micro-batch (gradient accumulation):
        rows = RowOrder.rows(global position)    # resumable data position
        ids, labels = mask_batch(rows, seeded by the position)   # fresh mask each epoch
        loss = model(ids, labels=labels, prediction_mask=labels != -100).loss  # sparse head
        backward(mlm_weight * loss)                 # (skipped when mlm_weight is 0)
        if contrastive_weight > 0:                  # contrastive.py
            a, b = ContrastiveData.batch(its streams' positions)   # positive pairs
            backward(contrastive_weight * InfoNCE(pool(model(a)), pool(model(b))))
        (DDP syncs in the last backward of the last micro-batch only)

and after a step it evaluates and checkpoints every eval_every / save_every steps (rank 0
writes; everyone else waits at a barrier), and at the end into `final/`.

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

Deliberately not here: set-up (prepare.py), the loop, precision and checkpoint state
(training/run/), data-loader worker processes (batches are gathered from an in-memory array in
well under a millisecond), gradient checkpointing, and FSDP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from model import BertForMaskedLM
from training.data.corpus import LineDataset, PackedDataset, RowOrder
from training.data.pairs import RetrievalSet
from training.evaluation.mlm import evaluate_mlm
from training.evaluation.retrieval import evaluate_retrieval
from training.pretrain.batches import MLMBatches
from training.pretrain.config import TrainConfig
from training.pretrain.contrastive import ContrastiveData, check_objective, contrastive_loss
from training.run.checkpointing import init_weights_from
from training.run.distributed import DistInfo, barrier
from training.run.loop import RunLoop, StepWork
from training.run.metrics import RunLog

__all__ = ["TrainResult", "Trainer"]

logger = logging.getLogger(__name__)

CONFIG_FILE = "training_config.yaml"


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


class Trainer(RunLoop[TrainResult], kind="train", config_file=CONFIG_FILE):
    """Owns model, data order and evaluation of a pretraining run; the loop is `RunLoop`'s."""

    cfg: TrainConfig

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
        check_objective(model_config, cfg)
        if (cfg.contrastive_weight > 0) != (contrastive is not None):
            raise ValueError("contrastive data must be given exactly when contrastive_weight > 0")
        info = info or DistInfo(device=torch.device("cpu"))
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        # A sentence-pair objective trains BERT's NSP head (pooler + cls.seq_relationship).
        model = BertForMaskedLM(model_config, nsp_head=cfg.sop_weight > 0).to(info.device)
        if cfg.init_from is not None:  # a later stage: these weights, a fresh optimizer
            init_weights_from(model, Path(cfg.init_from), info.device)
        model.train()
        super().__init__(
            cfg,
            model=model,
            tokenizer=tokenizer,
            output_dir=output_dir,
            info=info,
            max_steps=cfg.max_steps,
        )
        self.train_data, self.valid_data = train_data, valid_data
        self.model_config = model_config
        self.provenance = provenance or {}
        self.contrastive = contrastive
        self.retrieval = retrieval  # valid pairs scored at each evaluation
        self.order = RowOrder(len(train_data), cfg.seed)
        self.batches = MLMBatches(train_data, self.order, tokenizer, cfg, self.device)
        self.cursor = 0  # rows consumed by the whole run (all ranks): the data position
        # The same for each contrastive stream (pairs, simcse).
        self.contrastive_cursor = {s: 0 for s in contrastive.per_batch} if contrastive else {}
        self.last_valid: dict[str, float] | None = None
        self._valid_step = -1  # step at which last_valid was measured
        # Dropout differs per rank (different data, different masks), and is set after init
        # so that the weights above are the same everywhere.
        torch.manual_seed(cfg.seed + 1 + self.info.rank)

    # -- checkpoint I/O ---------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {
            "cursor": self.cursor,
            "contrastive_cursor": dict(self.contrastive_cursor),
            "world_size": self.info.world_size,
            "last_valid": self.last_valid,
        }

    def load_extra_state(self, state: dict[str, Any], checkpoint: Path) -> None:
        self.cursor = int(state["cursor"])
        saved = state.get("contrastive_cursor") or {}
        for stream in self.contrastive_cursor:
            self.contrastive_cursor[stream] = int(saved.get(stream, 0))
        self.last_valid = state.get("last_valid")
        if state.get("world_size") != self.info.world_size:
            logger.warning(
                "resuming a %s-process run with %d processes: the data order is kept, "
                "dropout streams are not",
                state.get("world_size"),
                self.info.world_size,
            )

    def run_config(self, elapsed_s: float | None = None) -> dict[str, Any]:
        """training_config.yaml: the recipe (usable as --config again) and the run's provenance
        (corpus, valid, vocab; processes, precision, steps and seconds)."""
        model = dataclasses.asdict(self.model_config)
        model.pop("pooling", None)  # a train setting (train.pooling); config.json records it
        run = {**self.provenance, "world_size": self.info.world_size, **self.run_record(elapsed_s)}
        return {"model": model, "train": self.cfg.to_dict(), "run": run}

    def save(self, name: str, elapsed_s: float, **kwargs: Any) -> Path | None:
        """RunLoop.save; only a validation measured at this very step may make it the best."""
        fresh = self.last_valid is not None and self._valid_step == self.step
        valid_loss = self.selection_loss(self.last_valid) if fresh and self.last_valid else None
        return super().save(name, elapsed_s, valid_loss=valid_loss, **kwargs)

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

    def selection_loss(self, valid: dict[str, Any]) -> float | None:
        """What the best checkpoint minimises: the valid MLM loss, or, in a contrastive-only
        run (mlm_weight 0, where MLM may drift), 1 - retrieval MRR; None when unmeasured."""
        if self.cfg.mlm_weight > 0:
            return valid["loss"]
        mrr = valid.get("retrieval_mrr")
        return None if mrr is None else 1.0 - mrr

    # -- one optimizer step: its micro-batches ----------------------------------------------------
    def forward_backward(self, step_model: torch.nn.Module, *, want_accuracy: bool) -> StepWork:
        """`grad_accum_steps` micro-batches of each objective, rank r taking slot j * world + r
        of every global micro-batch j; the data positions then move past the whole step."""
        cfg, info = self.cfg, self.info
        work = StepWork(loss=torch.zeros((), device=self.device))
        mlm_on, nce_on = cfg.mlm_weight > 0, self.contrastive is not None
        if mlm_on:
            work.parts["mlm_loss"] = torch.zeros((), device=self.device)
        if nce_on:
            work.parts["contrastive_loss"] = torch.zeros((), device=self.device)
        for j in range(cfg.grad_accum_steps):
            slot = j * info.world_size + info.rank
            last = j == cfg.grad_accum_steps - 1
            if mlm_on:
                final = last and not nce_on
                self.mlm_micro_batch(
                    step_model, work, slot, final=final, accuracy=want_accuracy and last
                )
            if nce_on:
                self.contrastive_micro_batch(step_model, work, slot, final=last)
        step_rows = info.world_size * cfg.grad_accum_steps
        if mlm_on:
            self.cursor += step_rows * cfg.batch_size
        if self.contrastive is not None:
            for stream, n in self.contrastive.per_batch.items():
                self.contrastive_cursor[stream] += step_rows * n
        return work

    def mlm_micro_batch(
        self, step_model: torch.nn.Module, work: StepWork, slot: int, *, final: bool, accuracy: bool
    ) -> None:
        """Masked-LM loss (+ the sentence-pair loss) of micro-batch `slot`, backpropagated into
        `work`; `final`: the step's last backward; `accuracy`: measure masked-token accuracy."""
        cfg, accum = self.cfg, self.cfg.grad_accum_steps
        mb = self.batches.batch(self.cursor + slot * cfg.batch_size)
        labels, pmask = mb.labels, mb.labels.ne(-100)
        with self.sync_if(step_model, final):
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
        work.loss += loss.detach().float()
        work.parts["mlm_loss"] += out.loss.detach().float() / accum
        attention = mb.attention_mask
        work.tokens += labels.numel() if attention is None else int(attention.sum())
        if accuracy:
            with torch.no_grad():
                work.accuracy = (out.logits.argmax(-1) == labels[pmask]).float().mean().item()

    def contrastive_micro_batch(
        self, step_model: torch.nn.Module, work: StepWork, slot: int, *, final: bool
    ) -> None:
        """InfoNCE of contrastive micro-batch `slot`, backpropagated into `work`."""
        cfg = self.cfg
        ids, attn = self.contrastive_batch(slot)
        with self.sync_if(step_model, final):
            with self.autocast:
                nce = contrastive_loss(
                    step_model,
                    ids,
                    attn,
                    pooling=cfg.pooling,
                    temperature=cfg.temperature,
                    symmetric=cfg.contrastive_symmetric,
                )
            loss = nce * cfg.contrastive_weight / cfg.grad_accum_steps
            self.scaler.scale(loss).backward()
        work.loss += loss.detach().float()
        work.parts["contrastive_loss"] += nce.detach().float() / cfg.grad_accum_steps
        work.tokens += int(attn.sum())

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

    def sync_if(
        self, step_model: torch.nn.Module, final_backward: bool
    ) -> contextlib.AbstractContextManager[Any]:
        """DDP all-reduces gradients in the last backward of a step only: `no_sync` elsewhere."""
        if not self.info.distributed or final_backward:
            return contextlib.nullcontext()
        return step_model.no_sync()  # type: ignore[operator]

    # -- the loop's parts -------------------------------------------------------------------------
    def step_model(self) -> torch.nn.Module:
        step_model: torch.nn.Module = self.model
        if self.cfg.compile:
            step_model = torch.compile(step_model)  # type: ignore[assignment]
        if self.info.distributed:
            step_model = DDP(
                step_model,
                device_ids=[self.info.local_rank] if self.device.type == "cuda" else None,
            )
        return step_model

    def log_start(self) -> None:
        logger.info(
            "training %s params, precision %s, %d process(es), %d tokens/step",
            self.params,
            self.precision,
            self.info.world_size,
            self.info.world_size * self.cfg.tokens_per_step,
        )

    def after_step(self, log: RunLog, total_elapsed: float, *, finished: bool) -> None:
        """Periodic evaluations and checkpoints; the final ones are `finish`'s."""
        if finished:
            return
        cfg = self.cfg
        periodic_eval = cfg.eval_every and self.step % cfg.eval_every == 0
        periodic_save = cfg.save_every and self.step % cfg.save_every == 0
        if periodic_eval or periodic_save:
            # Every saved checkpoint carries a fresh validation loss (best tracking).
            log.valid(self.step, self.evaluate())
        if periodic_save:
            self.save(self.manager.name_for(self.step), total_elapsed)

    def finish(self, log: RunLog, *, finished: bool, total_elapsed: float) -> TrainResult:
        """A finished run: the final evaluation and `final/`; then curves.png and the result."""
        final_dir = None
        if finished and log.steps > 0:
            log.valid(self.step, self.evaluate())
            final_dir = self.save("final", total_elapsed)
        elif finished:
            final_dir = self.output_dir / "final"
            logger.info("run already finished at step %d; nothing to do", self.step)
        log.close(self.output_dir / "curves.png" if self.cfg.plot else None)
        barrier(self.info)
        return TrainResult(
            output_dir=self.output_dir,
            step=self.step,
            finished=finished,
            final_dir=final_dir,
            last_checkpoint=self.last_checkpoint,
            skipped_steps=self.skipped_steps,
            first_loss=log.first_loss,
            last_loss=log.last_loss,
            valid=self.last_valid,
            tokens_per_s=log.tokens_per_s,
            train_time_s=log.session_time,
        )
