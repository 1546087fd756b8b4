"""What every benchmark shares: paths, logging, the CPU record, results files, tables, arguments.

    from bench.common import RESULTS, bench_parser, cpu_report, setup_logging, table_lines

* ``ROOT``, ``DATA``, ``RESULTS`` (bench/results/), ``CACHE``, ``DEFAULT_CHECKPOINT``, the
  bundled corpora ``TRAIN_FILES`` / ``VALID_FILES`` (wordnet, then pydocs), ``RETRIEVAL_FILE``
  (the valid glosses whose examples bench_retrieval and bench_rerank ask about), and the supersense
  task's ``SUPERSENSE_TRAIN`` / ``SUPERSENSE_VALID`` with ``supersense_sample`` (the --quick
  subset both fine-tuning benchmarks use); ``gloss_batches(n)``, batches of 32 held-out WordNet
  glosses, lemmas dropped (the workload the precision benchmarks time).
* ``best_of_rounds(runs, rounds)``: each of several systems timed in turn, round by round in a
  shuffled order (a burst of load elsewhere slows all of them), best round kept.
* ``setup_logging()``: the running benchmark's progress lines on stderr, bare (``log.info``), so
  that stdout holds only its tables.
* ``cpu_report()``: one record of the machine a figure was measured on, built on
  ``model.hardware`` (its ``REPORTED_FLAGS`` and model name); each benchmark stores the fields it
  always stored (``summary`` ``"avx2 avx512f"``, ``present`` ``["avx2", "avx512f"]``, ``flags``
  ``{"avx2": True, ...}``, ``machine``, ``platform``, ``cpus``); ``machine_fields(threads)``, the
  record the precision benchmarks open their results with (machine, present flags, torch, threads).
* ``write_results(path, report)``: indented JSON, written atomically (``atomicio``), so that an
  interrupted run never leaves half a results file where the previous one was.
* ``table_lines(header, rows, align)`` and ``ratio(x)``: markdown tables that put each system's
  figures and the ratios between them side by side, ``| base | 812.3 | 2.10x |``.
* ``bench_parser(name, doc, quick=...)``: ``--quick`` and ``--out`` (and ``--threads`` where a
  benchmark runs torch in its own process), with the module docstring as ``--help``;
  ``named_checkpoints`` reads repeated ``--checkpoint NAME=DIR``.

Deliberately not here: starting servers (bench/server.py), load generation (bench/wrk.py), what
a single benchmark alone uses, and torch at import time (the serving benchmarks are HTTP clients
that never load it). A benchmark imports this module, never another benchmark.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atomicio import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
RESULTS = ROOT / "bench" / "results"
CACHE = ROOT / ".cache" / "bertserve"  # tokenized corpora, shared with bert-train
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "default"  # the model we ship
TRAIN_FILES = (DATA / "wordnet.train.txt", DATA / "pydocs.train.txt")
VALID_FILES = (DATA / "wordnet.valid.txt", DATA / "pydocs.valid.txt")
RETRIEVAL_FILE = VALID_FILES[0]  # glosses with usage examples: the retrieval benchmarks' task
SUPERSENSE_TRAIN = DATA / "wordnet-supersense.train.tsv"
SUPERSENSE_VALID = DATA / "wordnet-supersense.valid.tsv"

log = logging.getLogger(__name__)


def setup_logging(level: int = logging.INFO) -> None:
    """Show the benchmark's own log lines (loggers ``__main__`` and ``bench.*``) on stderr.

    Bare messages, as the benchmarks always printed them. Libraries keep their defaults (httpx
    alone would log every request at INFO). Calling it twice changes nothing.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("__main__", "bench"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False  # a library's basicConfig would print every line twice


def supersense_sample(work: Path, n: int = 4000) -> tuple[Path, Path]:
    """About ``n`` training rows, every k-th (the file is sorted by synset, so a prefix would
    hold few labels), and the valid rows whose labels occur in that sample, written into
    ``work``: (train.tsv, valid.tsv)."""
    header, *rows = SUPERSENSE_TRAIN.read_text(encoding="utf-8").splitlines()
    sample = rows[:: max(1, len(rows) // n)]
    seen = {r.split("\t", 1)[0] for r in sample}
    _, *valid = SUPERSENSE_VALID.read_text(encoding="utf-8").splitlines()
    kept = [r for r in valid if r.split("\t", 1)[0] in seen]
    train, val = work / "train.tsv", work / "valid.tsv"
    train.write_text("\n".join([header, *sample]) + "\n", encoding="utf-8")
    val.write_text("\n".join([header, *kept]) + "\n", encoding="utf-8")
    return train, val


def gloss_batches(n_batches: int, seed: int = 0, size: int = 32) -> list[list[str]]:
    """``n_batches`` batches of ``size`` glosses sampled (seeded) from the valid WordNet split,
    the lemmas dropped: ``"accomplishment, achievement: the action of accomplishing something."``
    -> ``"the action of accomplishing something."``."""
    lines = RETRIEVAL_FILE.read_text(encoding="utf-8").splitlines()
    sample = random.Random(seed).sample(lines, size * n_batches)
    texts = [line.partition(": ")[2] or line for line in sample]
    return [texts[i : i + size] for i in range(0, len(texts), size)]


def best_of_rounds(
    runs: Mapping[str, Callable[[], object]],
    rounds: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """The best time (``clock`` seconds) of each run over ``rounds`` rounds, after one warm-up
    run each; every round runs all of them once, in a new random order, so that a neighbour's
    burst of load falls on all systems alike rather than on whichever ran then.
    ``clock=time.thread_time`` times one thread's CPU (steadier on a shared machine)."""
    for run in runs.values():
        run()  # warm-up: first-call allocations, kernel selection, caches
    best = dict.fromkeys(runs, float("inf"))
    order = list(runs)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            t0 = clock()
            runs[name]()
            best[name] = min(best[name], clock() - t0)
    return best


# --- the CPU record -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuReport:
    """The machine a figure was measured on: what decides fp32/bf16/int8 speed, for the record."""

    model: str  # "AMD EPYC 7B13" (/proc/cpuinfo), else platform.processor()
    machine: str  # platform.processor(), else the architecture: "x86_64"
    platform: str  # OS and architecture: "Linux-6.8.0-x86_64-with-glibc2.39"
    cpus: int | None  # os.cpu_count()
    flags: Mapping[str, bool | None]  # each of model.hardware.REPORTED_FLAGS: None where unknown
    native_bf16: bool  # model.hardware.native_bf16_cpu(): which precisions are worth timing

    @property
    def present(self) -> list[str]:
        """The reported flags this CPU has, in ``REPORTED_FLAGS`` order: ``["avx2"]``."""
        return [flag for flag, there in self.flags.items() if there]

    @property
    def summary(self) -> str:
        """The present flags as one string: ``"avx2 avx512f"``; says so when there are none."""
        if all(there is None for there in self.flags.values()):
            return "unknown (no /proc/cpuinfo)"
        return " ".join(self.present) or "none of " + "/".join(self.flags)

    @property
    def torch_capability(self) -> str:
        """The kernel level torch dispatches to here (``"AVX2"``, ``"AVX512"``)."""
        import torch  # heavy, and only the benchmarks that run models ask

        return torch.backends.cpu.get_cpu_capability()


def cpu_report() -> CpuReport:
    """This machine's ``CpuReport`` (one /proc/cpuinfo reading, cached by model.hardware)."""
    # Here, not at the top: the model package imports torch, which the serving benchmarks (HTTP
    # clients) would otherwise load while they measure.
    from model import hardware

    present = hardware.cpu_flags()
    return CpuReport(
        model=hardware.cpu_model_name() or platform.processor(),
        machine=platform.processor() or platform.machine(),
        platform=platform.platform(),
        cpus=os.cpu_count(),
        flags={f: None if present is None else f in present for f in hardware.REPORTED_FLAGS},
        native_bf16=hardware.native_bf16_cpu(),
    )


def machine_fields(threads: int) -> dict[str, Any]:
    """``{"cpu": "x86_64", "cpu_flags": ["avx2", ...], "torch": "2.13.0+cpu", "threads": 2}``:
    what bench_precision and study_int8 record of the machine, first in their results."""
    import torch  # heavy, and only the benchmarks that run models ask

    cpu = cpu_report()
    return {
        "cpu": cpu.machine,
        "cpu_flags": cpu.present,
        "torch": torch.__version__,
        "threads": threads,
    }


# --- results and tables -------------------------------------------------------------------------


def write_results(path: Path, report: Mapping[str, Any]) -> None:
    """Write a benchmark's results as indented JSON (paths and the like as strings), atomically."""
    atomic_write_text(Path(path), json.dumps(report, indent=2, default=str) + "\n")
    log.info("wrote %s", path)


def table_lines(
    header: Sequence[str], rows: Iterable[Sequence[object]], align: str | None = None
) -> list[str]:
    """A markdown table as lines: header, rule, one line per row (cells already formatted).

    ``align`` has one letter per column, ``l`` or ``r`` (right-aligned, ``---:``); default all
    left. ``table_lines(["shape", "ratio"], [["base", "2.10x"]], "lr")`` ->
    ``["| shape | ratio |", "|---|---:|", "| base | 2.10x |"]``.
    """
    align = align or "l" * len(header)
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align wants one of l/r per column ({len(header)}), got {align!r}")
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    return [_row(header), rule, *(_row(r) for r in rows)]


def _row(cells: Sequence[object]) -> str:
    # An empty cell is written "| |", not "|  |".
    return "|" + "".join(f" {c} |" if str(c) else " |" for c in cells)


def ratio(value: float | None, digits: int = 2, missing: str = "-") -> str:
    """A ratio as the tables print it: ``ratio(2.104)`` -> ``"2.10x"``; ``missing`` for None."""
    return missing if value is None else f"{value:.{digits}f}x"


# --- arguments ----------------------------------------------------------------------------------


def bench_parser(
    name: str,
    doc: str,
    *,
    quick: str | None,
    out: bool = True,
    threads: int | None = None,
) -> argparse.ArgumentParser:
    """The arguments every benchmark shares; ``doc`` (the module docstring) is its ``--help``.

    ``quick``: the help of ``--quick`` (what the short variant leaves out), None where there is no
    short variant. ``out``: a ``--out`` results path, default bench/results/<name>.json.
    ``threads``: the default of ``--threads`` (torch threads in this process, 0: torch's own).
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m bench.{name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=quick)
    if out:
        default = RESULTS / f"{name}.json"
        parser.add_argument(
            "--out", type=Path, default=default, help=f"results JSON (default: {default})"
        )
    if threads is not None:
        parser.add_argument(
            "--threads", type=int, default=threads, help="torch threads (0: torch's default)"
        )
    return parser


def named_checkpoints(
    values: Iterable[str], parser: argparse.ArgumentParser, reserved: Iterable[str] = ()
) -> dict[str, Path]:
    """``--checkpoint NAME=DIR`` values as {name: directory}; a parser error on a malformed or
    repeated one (or a ``reserved`` name), or on a directory without config.json."""
    out: dict[str, Path] = {}
    reserved = set(reserved)
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            parser.error(f"--checkpoint takes NAME=DIR, got {value!r}")
        if name in out or name in reserved:
            parser.error(f"--checkpoint name {name!r} is used twice (or is one of {reserved})")
        if not (Path(path) / "config.json").is_file():
            parser.error(f"--checkpoint {name}: {path} is not a checkpoint directory")
        out[name] = Path(path)
    return out
