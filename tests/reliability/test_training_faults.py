"""kill -9 the trainer at random points and inside every window of a checkpoint save, then resume.

Each trial starts a real trainer process (tiny model, tiny corpus, CPU, one thread, seed 0,
checkpoint every 4 of 20 steps, validation on so `best.json` moves too), kills it with SIGKILL,
and resumes the run the way a user would (`bert-train ... --resume`). It asserts that the resume

* starts from the checkpoint `latest` named at the moment of the kill, and that this is the step
  the kill point implies (a half-written, unpublished or not-yet-pointed-to checkpoint is never
  picked up), and
* finishes bit for bit equal to an uninterrupted run: every tensor of `final/model.safetensors`,
  the optimizer state, the RNG states, the data position, `best.json`, the per-step losses in
  `metrics.jsonl`, and the same files in the output directory (nothing left over).

How the kills land exactly where they should: the killed process runs `bert-train`'s `main`
through a small launcher that freezes itself (SIGSTOP) at the chosen point; the test then sends
SIGKILL, so the process dies at that very instruction with nothing flushed or cleaned up, which
is what a kill -9 or an OOM kill does. The points, drawn from a seeded RNG:

* random: the K-th call into `training/` or `model/` code, K uniform over each third of a run;
* mid-step: after the backward pass of step n, before the optimizer update, early enough
  that no checkpoint exists yet (`--resume` must refuse clearly; a fresh start must match);
* write: inside the checkpoint writer, model and tokenizer written, training state not yet;
* publish: the temporary directory complete and fsynced, not yet renamed;
* pointer: the directory published under its final name, `latest` not yet moved;
* latest: the new pointer written to its temporary file, not yet renamed over `latest`;
* rotate: `latest` moved, an old checkpoint half deleted by rotation;
* swap: a second kill, in the resumed run, while `final` is being replaced (old one moved aside,
  new one not yet in place).

The default suite runs one quick trial; the ten trials are `@pytest.mark.long`. Deliberately not
here: kills under DDP (tests/training/pretrain/test_ddp.py covers resume there) and disk-full faults
(tests/training/run/test_checkpointing.py injects a failing writer).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_testing import REPO, cli_args

from training.pretrain.cli import main as train_main
from training.run.checkpointing import CheckpointManager
from training.run.metrics import read_metrics

MAX_STEPS, SAVE_EVERY, SEED = 20, 4, 20260117
RUN = ("--max-steps", str(MAX_STEPS), "--save-every", str(SAVE_EVERY))
BERT_TRAIN = str(Path(sys.executable).with_name("bert-train"))
PROCESS_TIMEOUT_S = 300.0
RESUMED = re.compile(r"resumed from (\S+) at step (\d+)")

# Runs `bert-train`'s main with one fault point armed (KILL_POINT=kind:arg). At the point the
# process stops itself; the test then SIGKILLs it. KILL_POINT=count:PATH counts the calls a
# whole run makes (the range the random kill points are drawn from) and writes it to PATH.
LAUNCHER = textwrap.dedent(
    """
    import os, shutil, signal, sys
    from pathlib import Path

    kind, _, arg = os.environ["KILL_POINT"].partition(":")

    def freeze():
        os.kill(os.getpid(), signal.SIGSTOP)  # the test SIGKILLs us here
        os._exit(99)

    if kind in ("events", "count"):
        roots = tuple(str(Path.cwd() / d) + os.sep for d in ("training", "model"))
        calls = [0]

        def profile(frame, event, _arg):
            if event == "call" and frame.f_code.co_filename.startswith(roots):
                calls[0] += 1
                if kind == "events" and calls[0] == int(arg):
                    freeze()

        sys.setprofile(profile)
    elif kind == "step":
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        steps = [0]

        def before_step(optimizer, args, kwargs):
            steps[0] += 1
            if steps[0] == int(arg):
                freeze()

        register_optimizer_step_pre_hook(before_step)
    elif kind == "write":
        import torch

        real_save = torch.save

        def save(obj, *a, **k):
            if isinstance(obj, dict) and "optimizer" in obj and obj.get("step") == int(arg):
                freeze()
            return real_save(obj, *a, **k)

        torch.save = save
    elif kind in ("publish", "pointer", "swap"):
        real_rename = os.rename

        def rename(src, dst, *a, **k):
            src_name, dst_name = Path(src).name, Path(dst).name
            hit = (
                src_name.startswith(f".tmp-{arg}-")
                if kind != "swap"
                else src_name == arg and dst_name.startswith(".tmp-old-")
            )
            if hit and kind == "publish":
                freeze()
            real_rename(src, dst, *a, **k)
            if hit:
                freeze()

        os.rename = rename
    elif kind == "latest":
        real_replace = os.replace

        def replace(src, dst, *a, **k):
            if Path(dst).name == "latest" and Path(src).read_text().strip() == arg:
                freeze()
            return real_replace(src, dst, *a, **k)

        os.replace = replace
    elif kind == "rotate":
        real_rmtree = shutil.rmtree

        def rmtree(path, *a, **k):
            if Path(path).name == arg:
                (Path(path) / "model.safetensors").unlink()  # half deleted, then killed
                freeze()
            return real_rmtree(path, *a, **k)

        shutil.rmtree = rmtree
    else:
        raise SystemExit(f"unknown KILL_POINT {kind!r}")

    from training.pretrain import cli

    code = cli.main(sys.argv[1:])
    if kind == "count":
        sys.setprofile(None)
        Path(arg).write_text(str(calls[0]))
    sys.exit(code)
    """
)


def _env(kill_point: str | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("KILL_POINT", None)
    if kill_point is not None:
        env["KILL_POINT"] = kill_point
    return env


def _tail(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-3000:]


def run_launcher(args: list[str], kill_point: str, log: Path) -> None:
    """Run the trainer with `kill_point` armed; SIGKILL it there (fail if it is never reached)."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(kill_point),
            cwd=REPO,
        )
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    try:
        while True:
            pid, status = os.waitpid(proc.pid, os.WUNTRACED | os.WNOHANG)
            if pid and os.WIFSTOPPED(status):
                break
            if pid:  # exited (and reaped) without reaching the kill point
                proc.returncode = os.waitstatus_to_exitcode(status)
                raise AssertionError(
                    f"kill point {kill_point} never reached (exit {proc.returncode}):\n"
                    + _tail(log)
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"kill point {kill_point} not reached in time:\n" + _tail(log))
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()


def run_count(args: list[str], log: Path) -> int:
    """Run the trainer to the end under the launcher's call counter; the number of calls."""
    count = log.with_suffix(".count")
    with log.open("w") as out:
        proc = subprocess.run(
            [sys.executable, "-c", LAUNCHER, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(f"count:{count}"),
            cwd=REPO,
            timeout=PROCESS_TIMEOUT_S,
        )
    assert proc.returncode == 0, _tail(log)
    return int(count.read_text())


def committed(out: Path) -> tuple[str, int] | None:
    """(name, step) of the checkpoint `latest` names, checked to be complete; None if none."""
    if not (out / "latest").exists():
        return None
    name = (out / "latest").read_text(encoding="utf-8").strip()
    assert re.fullmatch(r"checkpoint-\d{6}|final", name), f"latest names {name!r}"
    directory = out / name
    for f in ("model.safetensors", "config.json", "vocab.txt", "training_state.pt"):
        assert (directory / f).is_file(), f"latest names {name}, which lacks {f}"
    load_file(directory / "model.safetensors")  # loads: not truncated
    step = int(torch.load(directory / "training_state.pt", weights_only=False)["step"])
    assert name == "final" or step == int(name.split("-")[1])
    return name, step


def resume_cli(args: list[str], log: Path) -> int | None:
    """`bert-train ... --resume` as a user runs it; the step it resumed from (None: fresh start).

    With no checkpoint yet (killed before the first save), `--resume` must refuse with a clear
    message; the user then starts the run again without it.
    """
    argv = [BERT_TRAIN, *args, "--log-level", "INFO"]
    had_checkpoint = committed(Path(args[args.index("--output-dir") + 1])) is not None
    with log.open("w") as out:
        proc = subprocess.run(
            [*argv, "--resume"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
            timeout=PROCESS_TIMEOUT_S,
        )
    text = log.read_text(encoding="utf-8")
    if not had_checkpoint:
        assert proc.returncode == 2, text[-3000:]
        assert "--resume: no checkpoint in" in text
        with log.open("w") as out:
            proc = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, env=_env(), timeout=PROCESS_TIMEOUT_S
            )
        text = log.read_text(encoding="utf-8")
    assert proc.returncode == 0, text[-3000:]
    assert f"bert-train: step {MAX_STEPS}, checkpoint" in text
    found = RESUMED.findall(text)
    if not had_checkpoint:
        assert not found, found
        return None
    assert len(found) == 1, text[-3000:]
    path, step = found[0]
    assert re.fullmatch(r"checkpoint-\d{6}|final", Path(path).name), path  # never a .tmp-*
    return int(step)


def _losses(out: Path) -> dict[str, dict[int, float]]:
    # The last value logged for a step wins, as in the plot: a resume re-logs the steps after
    # its checkpoint.
    series: dict[str, dict[int, float]] = {"train_loss": {}, "valid_loss": {}}
    for record in read_metrics(out / "metrics.jsonl"):
        for key, by_step in series.items():
            if key in record:
                by_step[int(record["step"])] = record[key]
    return series


def assert_same_as_reference(out: Path, ref: Path) -> float:
    """Assert the finished run in `out` equals the uninterrupted `ref`; max |weight diff|."""
    a, b = (
        load_file(ref / "final" / "model.safetensors"),
        load_file(out / "final" / "model.safetensors"),
    )
    assert a.keys() == b.keys()
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs (max |diff| {diff})"

    sa = torch.load(ref / "final" / "training_state.pt", weights_only=False)
    sb = torch.load(out / "final" / "training_state.pt", weights_only=False)
    for key in ("step", "cursor", "skipped_steps", "world_size", "last_valid"):
        assert sa[key] == sb[key], key
    oa, ob = sa["optimizer"], sb["optimizer"]
    assert oa["param_groups"] == ob["param_groups"]
    assert oa["state"].keys() == ob["state"].keys()
    for pid, state in oa["state"].items():
        assert state.keys() == ob["state"][pid].keys()
        for key, value in state.items():
            assert torch.equal(value, ob["state"][pid][key]), f"optimizer state {pid}.{key}"
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])
    assert sa["rng"]["python"] == sb["rng"]["python"]
    na, nb = sa["rng"]["numpy"], sb["rng"]["numpy"]
    assert na[0] == nb[0] and np.array_equal(na[1], nb[1]) and na[2:] == nb[2:]
    drop = ("elapsed_offset",)  # wall-clock time differs between any two runs
    assert {k: v for k, v in sa["scheduler"].items() if k not in drop} == {
        k: v for k, v in sb["scheduler"].items() if k not in drop
    }

    assert json.loads((out / "best.json").read_text()) == json.loads(
        (ref / "best.json").read_text()
    )
    assert _losses(out) == _losses(ref)
    # Same checkpoints kept, and nothing the killed process was writing is left behind.
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())
    return diff


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Shared inputs (corpus, vocabulary, config, token cache) of every run in this module."""
    return tmp_path_factory.mktemp("training-faults")


@pytest.fixture(scope="module")
def reference(work) -> Path:
    """The uninterrupted run, trained in this process."""
    ref = work / "reference"
    assert train_main(cli_args(work, ref, *RUN)) == 0
    return ref


def previous(step: int) -> int | None:
    """The newest periodic checkpoint strictly before `step` (None when there is none)."""
    last = (step - 1) // SAVE_EVERY * SAVE_EVERY
    return last or None


def ckpt(step: int) -> str:
    return CheckpointManager.name_for(step)


def test_one_kill_while_moving_latest_resumes_from_the_previous_checkpoint(
    work, reference, figures, caplog
):
    """Quick trial: killed with the new `latest` written but not yet renamed into place."""
    t0 = time.perf_counter()
    out = work / "quick"
    args = cli_args(work, out, *RUN)
    run_launcher(args, f"latest:{ckpt(8)}", work / "quick-killed.log")
    assert committed(out) == (ckpt(4), 4)
    assert (out / ckpt(8)).is_dir()  # complete on disk, but never committed: not used
    with caplog.at_level(logging.INFO, logger="training.run.loop"):
        assert train_main([*args, "--resume"]) == 0
    resumed = [m.groups() for r in caplog.records if (m := RESUMED.search(r.getMessage()))]
    assert resumed == [(str(out / ckpt(4)), "4")]
    diff = assert_same_as_reference(out, reference)
    figures.record(
        trials=1,
        kills=1,
        resumes_ok=1,
        resumed_from=[4],
        max_abs_diff=diff,
        seconds=round(time.perf_counter() - t0, 1),
    )


FROM_LATEST = -1  # a random kill: the resume must start wherever `latest` pointed


def kill_plan(rng: random.Random, calls: int) -> list[tuple[str, list[tuple[str, int | None]]]]:
    """Ten trials: (label, [(kill point, step the resume must start from, None: no checkpoint)])."""
    periodic = list(range(SAVE_EVERY, MAX_STEPS, SAVE_EVERY))  # 4, 8, 12, 16
    # One random kill in each third of the run (stratified, so they do not all land late).
    thirds = [(i * calls // 3 + 1, (i + 1) * calls // 3 - 1) for i in range(3)]
    plan: list[tuple[str, list[tuple[str, int | None]]]] = [
        (f"random #{i}", [(f"events:{rng.randint(lo, hi)}", FROM_LATEST)])
        for i, (lo, hi) in enumerate(thirds)
    ]
    # Before the first checkpoint: --resume must refuse clearly, and a fresh start must match.
    n = rng.randint(2, SAVE_EVERY)
    plan.append(("mid-step", [(f"step:{n}", previous(n))]))
    # Each save window at a different checkpoint, `final` included.
    steps = rng.sample([*periodic[1:], MAX_STEPS], 4)
    for window, step in zip(("write", "publish", "pointer", "latest"), steps, strict=True):
        name = "final" if step == MAX_STEPS else ckpt(step)
        point = f"{window}:{step}" if window == "write" else f"{window}:{name}"
        plan.append((window, [(point, previous(step))]))
    # keep_last=2 and a validation loss that falls at every checkpoint of this run (the best is
    # the newest): checkpoint k is rotated away while checkpoint k + 8 is being saved.
    old = rng.choice(periodic[:-2])
    plan.append(("rotate", [(f"rotate:{ckpt(old)}", old + 2 * SAVE_EVERY)]))
    last = previous(MAX_STEPS)
    plan.append(("pointer+swap", [("pointer:final", last), ("swap:final", last)]))
    return plan


@pytest.mark.long
def test_ten_kill_trials_resume_from_the_last_complete_checkpoint_and_match(
    work, reference, figures
):
    t0 = time.perf_counter()
    calls = run_count(cli_args(work, work / "counted", *RUN), work / "counted.log")
    # The call counter's run is itself a reference: profiling must not change a single bit.
    assert_same_as_reference(work / "counted", reference)
    plan = kill_plan(random.Random(SEED), calls)
    kills = resumes_ok = 0
    resumed_from: list[int | None] = []
    max_diff = 0.0
    for t, (label, points) in enumerate(plan):
        out = work / f"trial{t}"
        args = cli_args(work, out, *RUN)
        for k, (point, expected) in enumerate(points):
            log = work / f"trial{t}-kill{k}.log"
            if k == 0:
                run_launcher(args, point, log)
            else:  # a kill during the resumed run
                run_launcher([*args, "--resume"], point, log)
            kills += 1
            state = committed(out)
            step = None if state is None else state[1]
            if expected != FROM_LATEST:
                assert step == expected, f"{label} ({point}): latest is {state}"
        resumed = resume_cli(args, work / f"trial{t}-resume.log")
        assert resumed == step, f"{label}: resumed from {resumed}, latest was at step {step}"
        resumes_ok += 1
        resumed_from.append(resumed)
        max_diff = max(max_diff, assert_same_as_reference(out, reference))
    figures.record(
        trials=len(plan),
        kills=kills,
        resumes_ok=resumes_ok,
        resumed_from=resumed_from,
        fresh_starts=resumed_from.count(None),  # killed before the first checkpoint
        max_abs_diff=max_diff,
        calls_per_run=calls,
        seconds=round(time.perf_counter() - t0, 1),
    )
