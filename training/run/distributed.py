"""Processes and numerics of a training run: DDP set-up from torchrun's environment, the
barrier ranks meet at, the precision (fp32 / bf16 / fp16 autocast) a device trains in, the
process's RNG states (saved for an exact resume) and the SIGINT/SIGTERM stop request.

Deliberately not here: anything about the model or the data; FSDP and tensor parallelism.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from model.hardware import native_bf16_cpu
from training.run.options import RunConfig, TrainConfigError

__all__ = [
    "DistInfo",
    "StopRequest",
    "autocast_for",
    "barrier",
    "init_distributed",
    "resolve_device",
    "resolve_precision",
    "rng_state",
    "set_rng_state",
]

logger = logging.getLogger(__name__)


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


def resolve_device(device: str) -> torch.device:
    """The device a run's `device` setting names: "auto" is CUDA when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def init_distributed(cfg: RunConfig) -> DistInfo:
    """DDP from the environment (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = resolve_device(cfg.device).type == "cuda"
    if "RANK" not in os.environ or world <= 1:
        return DistInfo(device=resolve_device(cfg.device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on CUDA with bf16 and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32.

    On CPUs without it bf16 autocast is emulated and measured slower than fp32 (see docs/precision.md).
    """
    if precision != "auto":
        if precision == "fp16" and device.type != "cuda":
            raise TrainConfigError("precision='fp16' needs CUDA; use 'bf16' or 'fp32' on CPU")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if native_bf16_cpu() else "fp32"


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) RNG states, for an exact resume."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop stops at the next step boundary and checkpoints."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
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
