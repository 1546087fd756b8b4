"""The maps of training/ are true: every wing's `__init__.py` lists exactly the modules its folder
holds, and the package's own map lists exactly its wings (no module lies loose beside them).

Standard library only: the maps are read from the docstrings with `ast`, never imported.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

TRAINING = Path(__file__).resolve().parents[2] / "training"
# A map line: indented, a name, then its description ("    corpus.py    corpus files -> ...").
MODULE_LINE = re.compile(r"^\s+(\w+\.py)\s", re.MULTILINE)
WING_LINE = re.compile(r"^\s+(\w+)/\s", re.MULTILINE)


def docstring(package: Path) -> str:
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8")))
    assert doc, f"{package}/__init__.py has no docstring (its map)"
    return doc


def wings() -> list[str]:
    """The wings in the order the package map lists them."""
    return WING_LINE.findall(docstring(TRAINING))


def test_the_package_map_lists_exactly_its_wings_and_nothing_lies_loose():
    listed = wings()
    folders = sorted(p.name for p in TRAINING.iterdir() if (p / "__init__.py").is_file())
    assert sorted(listed) == folders
    assert len(listed) == len(set(listed))
    loose = sorted(p.name for p in TRAINING.glob("*.py") if p.name != "__init__.py")
    assert loose == [], f"modules outside the wings: {loose}"


def test_every_wing_map_lists_exactly_its_modules():
    for wing in wings():
        folder = TRAINING / wing
        listed = MODULE_LINE.findall(docstring(folder))
        present = sorted(p.name for p in folder.glob("*.py") if p.name != "__init__.py")
        assert len(listed) == len(set(listed)), f"{wing}/: a module is listed twice"
        assert sorted(listed) == present, (
            f"{wing}/__init__.py lists {sorted(set(listed) - set(present))} which do not exist "
            f"and leaves out {sorted(set(present) - set(listed))}"
        )
        assert not [p for p in folder.iterdir() if p.is_dir() and p.name != "__pycache__"], (
            f"{wing}/ has subfolders; a wing is one level"
        )
