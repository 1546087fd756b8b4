"""Atomic checkpoint directories, the `latest`/`best` pointers and rotation.

Layout of an output directory::

    DIR/tokenizer/               vocabulary used by the run
    DIR/checkpoint-000500/       model.save_pretrained + tokenizer.save_pretrained
                                 + training_state.pt + training_config.yaml
    DIR/final/                   same, written when a run finishes
    DIR/latest                   one line: the name of the newest complete checkpoint
    DIR/best.json                {"name", "step", "valid_loss"} of the best one by validation loss

A checkpoint is written into `DIR/.tmp-<name>-<pid>/`, every file fsynced, the directory renamed
to its final name, and only then are the `best.json` and `latest` pointers replaced (each written
to a temporary file and renamed; `latest` last). A crash at any point therefore leaves `latest`
naming a complete checkpoint, and readers never scan for directories, so a half-written one can
never be picked up. Leftover temporary directories and pointer files are removed the next time a
manager opens the directory.

Rotation keeps the newest `keep_last` periodic checkpoints plus the best one; `final` is never
rotated. `init_weights_from` starts a later stage (`train.init_from`) from another checkpoint's
weights, through the one loader. Deliberately not here: what goes into a checkpoint (the trainer
passes a writer function) and remote storage.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from atomicio import atomic_write_text, fsync_path
from model import BertForMaskedLM, load_checkpoint

__all__ = [
    "CheckpointManager",
    "NonFiniteWeightsError",
    "assert_finite_weights",
    "atomic_write_text",
    "fsync_tree",
    "init_weights_from",
]

logger = logging.getLogger(__name__)

LATEST = "latest"
BEST = "best.json"
FINAL = "final"
_PERIODIC = re.compile(r"^checkpoint-(\d+)$")


class NonFiniteWeightsError(ValueError):
    """The model holds NaN/inf weights, which are never written to a checkpoint."""


def assert_finite_weights(model: torch.nn.Module) -> None:
    """Raise NonFiniteWeightsError naming the first parameter that is not finite."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise NonFiniteWeightsError(f"parameter {name!r} has non-finite values; not saving")


def init_weights_from(model: torch.nn.Module, directory: Path, device: torch.device | str) -> None:
    """Start a run (`train.init_from`) from a checkpoint's weights, read by the one loader (ours, a
    transformers BERT directory or a sentence-transformers one). An encoder without MLM head
    (BertModel) keeps the run's freshly initialised head, its decoder tied to the loaded word
    embeddings. ValueError when the checkpoint does not fit the model."""
    start = load_checkpoint(directory, BertForMaskedLM, map_location=device).model
    missing, unexpected = model.load_state_dict(start.state_dict(), strict=False)
    # Heads the checkpoint lacks start fresh: the MLM head of an encoder-only checkpoint, and
    # the NSP head a sentence-pair objective adds.
    fresh = ("nsp_head.",) if start.mlm_head is not None else ("mlm_head.", "nsp_head.")
    if unexpected or any(not k.startswith(fresh) for k in missing):
        raise ValueError(
            f"train.init_from={str(directory)!r} does not fit the model: missing "
            f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    del start
    if missing:
        heads = sorted({k.split(".")[0] for k in missing})
        logger.warning(
            "initialised the encoder from %s; %s start(s) from a fresh initialisation",
            directory,
            " and ".join(heads),
        )
    else:
        logger.info("initialised the weights from %s", directory)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (so a rename publishes durable data)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


class CheckpointManager:
    """Writes checkpoints atomically under `root` and answers which is latest / best."""

    def __init__(self, root: str | os.PathLike[str], keep_last: int = 2, *, writer: bool = True):
        self.root = Path(root)
        self.keep_last = keep_last
        self.writer = writer  # False on DDP ranks other than 0: they only read
        if writer:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".tmp-*"):
                logger.warning("removing incomplete checkpoint %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
            # A kill inside atomic_write_text leaves the pointer's temporary file behind.
            for pointer in (LATEST, BEST):
                for stale in self.root.glob(f".{pointer}.tmp-*"):
                    logger.warning("removing unfinished pointer update %s", stale)
                    stale.unlink(missing_ok=True)

    # -- reading ------------------------------------------------------------------------------
    def latest(self) -> Path | None:
        """The newest complete checkpoint, from the pointer file (no directory scan)."""
        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        name = pointer.read_text(encoding="utf-8").strip()
        path = self.root / name
        if not name or not path.is_dir():
            raise FileNotFoundError(f"{pointer} names {name!r}, which is not a directory")
        return path

    def best(self) -> dict[str, Any] | None:
        """`{"name", "step", "valid_loss"}` of the best checkpoint so far, or None."""
        p = self.root / BEST
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None

    def periodic(self) -> list[Path]:
        """Complete periodic checkpoints, oldest first (used for rotation only)."""
        found = [
            (int(m.group(1)), p) for p in self.root.iterdir() if (m := _PERIODIC.match(p.name))
        ]
        return [p for _, p in sorted(found)]

    # -- writing ------------------------------------------------------------------------------
    @staticmethod
    def name_for(step: int) -> str:
        return f"checkpoint-{step:06d}"

    def save(
        self,
        name: str,
        write: Callable[[Path], None],
        *,
        step: int,
        valid_loss: float | None = None,
        update_latest: bool = True,
    ) -> Path:
        """Run `write(tmp_dir)`, publish it as `root/name`, move `latest`, rotate old ones.

        update_latest=False publishes the directory only (an export that cannot be resumed from).
        """
        if not self.writer:
            raise RuntimeError("only the writer (rank 0) saves checkpoints")
        target = self.root / name
        tmp = self.root / f".tmp-{name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            write(tmp)
            fsync_tree(tmp)
            if target.exists():
                # rename() cannot replace a non-empty directory: move the old one aside first.
                trash = self.root / f".tmp-old-{name}-{os.getpid()}"
                os.rename(target, trash)
                os.rename(tmp, target)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.rename(tmp, target)
            fsync_path(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # `best` before `latest`: a kill between the two then leaves `latest` on the previous
        # checkpoint, so a resume saves this one again and `best` stays right. The other order
        # would resume from here with `best` never updated, and rotation could delete the best.
        if valid_loss is not None:
            best = self.best()
            if best is None or valid_loss < best["valid_loss"] or best["name"] == name:
                record = {"name": name, "step": step, "valid_loss": valid_loss}
                atomic_write_text(self.root / BEST, json.dumps(record) + "\n")
        if not update_latest:
            return target
        atomic_write_text(self.root / LATEST, name + "\n")
        self._rotate()
        logger.info("saved checkpoint %s (step %d)", target, step)
        return target

    def _rotate(self) -> None:
        keep = set()
        best = self.best()
        if best is not None:
            keep.add(best["name"])
        latest = self.latest()
        if latest is not None:
            keep.add(latest.name)
        periodic = self.periodic()
        keep.update(p.name for p in periodic[-self.keep_last :])
        for p in periodic:
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
