"""Figure reporting for the reliability suite.

Every reliability test states what it measured (requests sent, rejected, failed, lost, seconds,
bytes, ...) through the ``figures`` fixture. The figures are printed in one table at the end of
the pytest run (``make reliability`` and ``make test`` both show it), and written as JSON when
``--figures-json PATH`` is given, which is where the README's summary comes from.

This conftest does not start servers or build models; helpers for that live in
``tests/reliability/helpers.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

_FIGURES: dict[str, dict[str, Any]] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--figures-json",
        default=None,
        help="Write the reliability figures (one object per test) to this JSON file.",
    )


class Figures:
    """Records the figures of one test; ``figures.record(sent=100, rejected=36, failed=0)``."""

    def __init__(self, nodeid: str) -> None:
        self._values = _FIGURES.setdefault(nodeid, {})

    def record(self, **values: Any) -> None:
        self._values.update(values)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    """The figure recorder of the running test."""
    return Figures(request.node.nodeid)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    for nodeid, values in _FIGURES.items():
        name = nodeid.split("tests/reliability/", 1)[-1]
        parts = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
        terminalreporter.write_line(f"{name}: {parts}")
    path = config.getoption("--figures-json")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(_FIGURES, indent=2, default=str) + "\n", encoding="utf-8")
        terminalreporter.write_line(f"figures written to {path}")
