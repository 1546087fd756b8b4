"""bench/__init__.py is the map of bench/: it names every module there, benchmark or shared part.

Deliberately not checked: what the map says of each module (a reader's job).
"""

from __future__ import annotations

from pathlib import Path

import bench

BENCH = Path(bench.__file__).resolve().parent


def test_the_map_names_every_module():
    modules = {p.stem for p in BENCH.glob("*.py")} - {"__init__", "run_all"}
    missing = sorted(m for m in modules if m not in bench.__doc__)
    assert not missing, f"bench/__init__.py does not name {missing}: add them to its map"
