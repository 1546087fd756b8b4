"""Benchmarks share parts, never each other: no module of bench/ imports a bench_*.py module
(nor a study_*.py one: the studies run by hand are benchmarks too).

A benchmark that imports another takes on its arguments, constants and heavy imports, and a
change to one silently changes the other's figures; what they share lives in bench/common.py,
bench/server.py, bench/wrk.py and the like. Read with `ast` (nothing is imported or run), so
function-local imports, relative imports and ``importlib.import_module("bench.bench_x")`` count.
Deliberately not checked: running one benchmark from another as a subprocess (bench/run_all.py
does exactly that, by design: each in its own process).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
BENCHMARKS = frozenset(
    p.stem for pattern in ("bench_*.py", "study_*.py") for p in BENCH.glob(pattern)
)


def imported_names(source: str) -> set[str]:
    """Every module (and ``module.name``) a source file imports, as dotted names from the root.

    ``from bench import bench_x`` -> {"bench", "bench.bench_x"}; ``from .wrk import f`` ->
    {"bench.wrk", "bench.wrk.f"} (relative imports are inside the bench package).
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(filter(None, ["bench", node.module]))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and _is_import_call(node.func):
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names.add(first.value)
    return names


def _is_import_call(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def benchmarks_imported(source: str) -> set[str]:
    """The bench_*.py modules among what ``source`` imports (``bench.bench_x`` or ``bench_x``)."""
    found = set()
    for name in imported_names(source):
        parts = name.split(".")
        if parts[0] == "bench" and len(parts) > 1 and parts[1] in BENCHMARKS:
            found.add(parts[1])
        elif parts[0] in BENCHMARKS:
            found.add(parts[0])
    return found


def test_there_are_benchmarks_to_check():
    assert {"bench_cloze", "bench_model", "bench_serve", "study_int8"} <= BENCHMARKS


@pytest.mark.parametrize("path", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_no_module_of_bench_imports_a_benchmark(path: Path):
    imported = benchmarks_imported(path.read_text(encoding="utf-8"))
    assert not imported, (
        f"bench/{path.name} imports the benchmark(s) {sorted(imported)}: move what they share "
        "to bench/common.py (or bench/server.py, bench/wrk.py) and import it from there"
    )


@pytest.mark.parametrize(
    "source",
    [
        "from bench.bench_cloze import log",
        "import bench.bench_serve",
        "from bench import bench_serve",
        "from .bench_cloze import cpu_flags",
        "from . import bench_finetune",
        "import bench_sop",
        "def main():\n    from bench.bench_finetune import quick_files\n",
        "import importlib\nimportlib.import_module('bench.bench_model')",
        "from bench.study_int8 import LEVERS",
    ],
)
def test_every_form_of_import_is_caught(source: str):
    assert benchmarks_imported(source)


@pytest.mark.parametrize(
    "source",
    [
        "from bench.common import ROOT, write_results",
        "from bench.server import Server",
        "from bench import wrk",
        "import benchmark_tools",
        "cmd = [sys.executable, '-m', 'bench.bench_cloze']",  # a subprocess, not an import
    ],
)
def test_shared_modules_and_subprocesses_are_allowed(source: str):
    assert not benchmarks_imported(source)
