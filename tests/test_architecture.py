"""The house rules that hold across packages, read from the source with ``ast`` (nothing is
imported):

* no import cycle between modules of the project (module-level and function-local imports alike;
  ``if TYPE_CHECKING:`` imports count too, since they hide the same dependency);
* no module imports another module's private name (``from x import _y``);
* the packages are layered: ``tokenization`` uses the standard library only (and ``atomicio``;
  its command line may draw a tqdm progress bar),
  ``model`` depends on torch, safetensors, the standard library and ``atomicio``, ``app`` never
  imports ``training``, and no package imports ``bench`` or the tests;
* no function in ``app/`` or ``training/`` is longer than 100 lines (a long function is several
  jobs; split it).

Standard library only. Deliberately not here: training/'s own wing order and maps
(tests/training/test_layout.py) and the benchmarks' rules (tests/bench/).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("atomicio", "tokenization", "model", "training", "app")
MAX_FUNCTION_LINES = 100
# What each package may import beyond itself and the standard library.
ALLOWED = {
    "atomicio": set(),
    "tokenization": {"atomicio"},
    "model": {"atomicio", "torch", "safetensors"},
}
# A command line may show a progress bar; the library under it stays standard-library only.
ALLOWED_IN_MODULE = {"tokenization.cli": {"tqdm"}}


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports(name: str, path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import statement of a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, [a.name for a in node.names], node.lineno


def _project_target(imported: str, names: list[str], known: dict[str, Path]) -> list[str]:
    """The project modules an import statement depends on (a ``from package import module``
    depends on that module)."""
    targets = []
    for n in names:
        if f"{imported}.{n}" in known:
            targets.append(f"{imported}.{n}")
    if imported in known and len(targets) < len(names):
        targets.append(imported)
    return targets


def test_no_import_cycles():
    known = modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    for name, path in known.items():
        for imported, names, _ in imports(name, path):
            for target in _project_target(imported, names, known):
                if target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    # Tarjan's strongly connected components: any component of two or more is a cycle.
    sys.setrecursionlimit(10_000)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_imports_another_modules_private_name():
    known = modules()
    offences = []
    for name, path in known.items():
        for imported, names, line in imports(name, path):
            if imported.split(".")[0] not in PACKAGES or imported == name:
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    offences.append(f"{path.relative_to(ROOT)}:{line} imports {imported}.{n}")
    assert not offences, "\n".join(offences)


def test_packages_are_layered():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    offences = []
    for name, path in modules().items():
        package = name.split(".")[0]
        for imported, _, line in imports(name, path):
            top = imported.split(".")[0]
            forbidden = top in ("bench", "tests") or (package == "app" and top == "training")
            outside = (
                package in ALLOWED
                and top not in stdlib | {package} | ALLOWED[package]
                and top not in ALLOWED_IN_MODULE.get(name, ())
            )
            if forbidden or outside:
                offences.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert not offences, "\n".join(offences)


def test_no_function_in_app_or_training_is_over_100_lines():
    long = []
    for package in ("app", "training"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert not long, "functions over 100 lines:\n" + "\n".join(long)
