"""bench/report.py renders docs/benchmarks.md from bench/results/*.json, and the committed page is
exactly that rendering: a new or changed result must regenerate it.

Deliberately not checked: the wording around the tables (a reader's job).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import report
from bench.common import RESULTS
from bench.run_all import BENCHES


def test_the_committed_page_is_the_rendering_of_the_committed_results():
    committed = report.PAGE.read_text(encoding="utf-8")
    assert committed == report.render(), (
        "docs/benchmarks.md differs from what bench/results/ renders: run python -m bench.report"
    )
    assert report.main(["--check"]) == 0


def test_every_committed_result_has_its_section():
    page = report.render()
    special = {
        "recipes": "bench.bench_recipes",
        "study_int8_diagnosis": "bench.study_int8 --diagnose",
        "reliability": "pytest -q tests/reliability",
    }
    for path in sorted(RESULTS.glob("*.json")):
        command = special.get(path.stem, f"bench.{path.stem}")
        assert f"`python -m {command}" in page or f"`{command}" in page, path.name


def test_a_result_without_a_renderer_is_an_error(tmp_path):
    (tmp_path / "bench_new.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bench_new\.json"):
        report.render(tmp_path)


def copy_results(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    shutil.copytree(RESULTS, out)
    return out


def test_a_changed_result_makes_the_page_stale_until_it_is_rendered_again(tmp_path):
    results = copy_results(tmp_path)
    page = tmp_path / "benchmarks.md"
    assert report.main(["--results", str(results), "--out", str(page)]) == 0
    assert report.main(["--results", str(results), "--out", str(page), "--check"]) == 0

    sop = json.loads((results / "bench_sop.json").read_text(encoding="utf-8"))
    sop["arms"]["mlm+sop"]["sop_accuracy"] = 0.8125
    (results / "bench_sop.json").write_text(json.dumps(sop), encoding="utf-8")
    assert report.main(["--results", str(results), "--out", str(page), "--check"]) == 1
    assert report.main(["--results", str(results), "--out", str(page)]) == 0
    assert "| mlm+sop | 0.7897 | 0.5979 | 0.0840 | 0.1411 | 0.812 |" in page.read_text()


def test_benchmarks_without_results_are_listed_as_such(tmp_path):
    shutil.copy(RESULTS / "bench_sop.json", tmp_path)
    page = report.render(tmp_path)
    missing = page.split("## Not committed yet", 1)[1]
    assert "`bench_sop`" not in missing
    for name in set(BENCHES) - {"bench_sop"}:
        assert f"`{name}`" in missing
    assert "## Sentence-order prediction" in page


def test_the_serving_section_shows_the_files_own_ratios_and_levels():
    data = json.loads((RESULTS / "bench_serve.json").read_text(encoding="utf-8"))
    section = "\n".join(report.serve_section(data))
    for name, value in data["ratios"].items():
        assert f"| {name} | {value:.2f}x |" in section
    for level in data["results"]["ours"]:
        assert f"| {level['connections']} |" in section
    assert f"--duration {data['duration_s']:g}" in section
    assert "`avx2`" in section  # the CPU flags the file records


def test_the_command_is_rebuilt_from_the_recorded_settings():
    sop = {"cpu_flags": "avx2 avx512_bf16", "pretrain_min": 6.0, "finetune_min": 2.5}
    sop |= {"sop_weight": 1.0, "arms": {}}
    lines = report.sop_section(sop)
    assert "`python -m bench.bench_sop --pretrain-min 6 --finetune-min 2.5 --sop-weight 1`" in lines
    assert "Measured on: CPU flags `avx2 avx512_bf16`." in lines


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("avx2", "`avx2`"),
        (["avx2", "avx512f"], "`avx2 avx512f`"),
        ({"avx2": True, "avx512_bf16": False, "amx_bf16": None}, "`avx2`"),
        ([], "none recorded"),
    ],
)
def test_cpu_flags_however_they_are_recorded(value, expected):
    assert report.flags(value) == expected


def test_number_formats():
    assert report.pct(0.30542) == "30.5%"
    assert report.pct(None) == "-"
    assert report.num(12345.6) == "12,346"
    assert report.num(0.30542, 3) == "0.305"
    assert report.arg(6.0) == "6"
    assert report.arg(0.5) == "0.5"


def _precision_result(http: bool) -> dict:
    gate = {"top5_overlap": 0.9673, "top1_agreement": 0.9796, "passed": True}
    system = {"sentences_per_s": 3888.0, "vs_ours_fp32": 1.094, "vs_hf_fp32": 1.525}
    system |= {"min_cosine": 0.999687, "recall_delta": 0.005}
    served = {"rps": 1145.2, "p50_ms": 26.1, "p99_ms": 43.0}
    return {
        "cpu_flags": ["avx2"],
        "torch": "2.13.0+cpu",
        "threads": 2,
        "checkpoint": None,
        "forward": [
            {
                "model": "default",
                "shape": "L2 H128 A2 I512",
                "tokens_per_batch": 634.3,
                "systems": {
                    "ours int8": {**system, "served": "fp32", "gate": {**gate, "passed": False}},
                    "ort int8": system,
                },
            }
        ],
        "http": [
            {
                "model": "default",
                "servers": {
                    "fp32": {"effective": "fp32", "/v1/embeddings": served},
                    "auto": {"effective": "int8", "/v1/embeddings": {**served, "rps": 2290.4}},
                },
            }
        ]
        if http
        else [],
    }


def test_the_precision_tables_known_answer():
    lines = report.precision_tables(_precision_result(http=True))
    failed = "FAIL (0.967 / 0.980), serves fp32"
    assert f"| ours int8 | 3,888 | 1.09x | 1.52x | 0.9997 | +0.005 | {failed} |" in lines
    assert "| ort int8 | 3,888 | 1.09x | 1.52x | 0.9997 | +0.005 | - |" in lines
    assert "| auto | int8 | 2,290 (26.1 / 43) | 2.00x | - | - |" in lines


def test_the_precision_command_is_rebuilt_from_the_recorded_settings():
    section = report.precision_section(_precision_result(http=False))
    assert "`python -m bench.bench_precision --models default --threads 2 --no-http`" in section
    section = report.precision_section(_precision_result(http=True))
    command = "python -m bench.bench_precision --models default --threads 2 --http-model default"
    assert f"`{command}`" in section


def test_the_precision_scripts_print_the_pages_tables():
    """bench_precision and study_int8 print what report renders: one code path, no copy."""
    for script, renderers in (
        ("bench_precision", ["precision_tables"]),
        ("study_int8", ["diagnosis_tables", "study_tables"]),
    ):
        source = (Path(report.__file__).parent / f"{script}.py").read_text(encoding="utf-8")
        assert f"from bench.report import {', '.join(renderers)}" in source
        assert "table_lines" not in source and "|---" not in source
