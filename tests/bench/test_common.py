"""bench.common: the tables, the CPU record, results files and arguments every benchmark shares.

Deliberately not here: the benchmarks' own figures (their quick runs are the check of those).
"""

from __future__ import annotations

import json

import pytest

from bench import common
from bench.common import CpuReport, bench_parser, named_checkpoints, ratio, table_lines


def test_table_lines_known_answer():
    lines = table_lines(
        ["shape", "ours", "ratio"], [["base", 812.3, "2.10x"], ["tiny", 9, ""]], "lrr"
    )
    assert lines == [
        "| shape | ours | ratio |",
        "|---|---:|---:|",
        "| base | 812.3 | 2.10x |",
        "| tiny | 9 | |",  # an empty cell is "| |", as the benchmarks always printed it
    ]


def test_table_lines_wants_one_alignment_per_column():
    assert table_lines(["a", "b"], [])[1] == "|---|---|"
    with pytest.raises(ValueError, match="one of l/r per column"):
        table_lines(["a", "b"], [], "l")


def test_ratio():
    assert ratio(2.104) == "2.10x"
    assert ratio(1.23456, 3) == "1.235x"
    assert ratio(None) == "-"
    assert ratio(None, missing="n/a") == "n/a"


def _report(flags: dict[str, bool | None]) -> CpuReport:
    return CpuReport("cpu", "x86_64", "Linux", 2, flags, native_bf16=False)


def test_cpu_report_summaries():
    some = _report({"avx2": True, "avx512f": False, "amx_bf16": True})
    assert some.present == ["avx2", "amx_bf16"]
    assert some.summary == "avx2 amx_bf16"
    assert _report({"avx2": False, "avx512f": False}).summary == "none of avx2/avx512f"
    assert _report({"avx2": None}).summary == "unknown (no /proc/cpuinfo)"


def test_cpu_report_names_the_shared_flags():
    from model.hardware import REPORTED_FLAGS

    report = common.cpu_report()
    assert list(report.flags) == list(REPORTED_FLAGS)
    assert set(report.present) <= set(REPORTED_FLAGS)


def test_write_results_writes_json_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results" / "bench_x.json"
    common.write_results(path, {"ratio": 2.5, "checkpoint": tmp_path})
    assert json.loads(path.read_text()) == {"ratio": 2.5, "checkpoint": str(tmp_path)}
    assert path.read_text().endswith("}\n")
    assert [p.name for p in path.parent.iterdir()] == ["bench_x.json"]


def test_bench_parser_shared_arguments():
    args = bench_parser("bench_x", "doc", quick="short").parse_args(["--quick"])
    assert args.quick and args.out == common.RESULTS / "bench_x.json"
    args = bench_parser("bench_x", "doc", quick=None, out=False, threads=3).parse_args([])
    assert vars(args) == {"threads": 3}


def test_named_checkpoints(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    parser = bench_parser("bench_x", "doc", quick=None)
    assert named_checkpoints([f"a={tmp_path}"], parser) == {"a": tmp_path}
    for bad in (["a"], [f"a={tmp_path}", f"a={tmp_path}"], [f"default={tmp_path}"], ["a=/nope"]):
        with pytest.raises(SystemExit):
            named_checkpoints(bad, parser, reserved={"default"})


def test_gloss_batches_are_seeded_glosses_without_their_lemmas():
    batches = common.gloss_batches(3)
    assert [len(b) for b in batches] == [32, 32, 32]
    assert common.gloss_batches(3) == batches
    assert common.gloss_batches(3, seed=1) != batches
    lines = common.RETRIEVAL_FILE.read_text(encoding="utf-8").splitlines()
    glosses = {line.partition(": ")[2] or line for line in lines}
    assert all(text in glosses for b in batches for text in b)
    assert [len(b) for b in common.gloss_batches(2, size=4)] == [4, 4]


def test_best_of_rounds_keeps_each_runs_best_round_after_a_warm_up():
    now = [0.0]
    calls = {"slow": 0, "fast": 0}
    costs = {"slow": [9.0, 3.0, 4.0, 5.0], "fast": [9.0, 2.0, 1.0, 1.5]}  # warm-up first

    def run(name):
        def once():
            now[0] += costs[name][calls[name]]
            calls[name] += 1

        return once

    best = common.best_of_rounds({k: run(k) for k in costs}, rounds=3, clock=lambda: now[0])
    assert best == {"slow": 3.0, "fast": 1.0}  # the warm-up's 9 s is never counted
    assert calls == {"slow": 4, "fast": 4}


def test_machine_fields():
    import torch

    from model.hardware import REPORTED_FLAGS

    fields = common.machine_fields(2)
    assert list(fields) == ["cpu", "cpu_flags", "torch", "threads"]
    assert fields["torch"] == torch.__version__ and fields["threads"] == 2
    assert set(fields["cpu_flags"]) <= set(REPORTED_FLAGS)
