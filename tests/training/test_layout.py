"""The maps of training/ are true and its wings are layered as the package map says.

Every wing's `__init__.py` lists exactly the modules its folder holds, and the package's own map
lists exactly its wings (no module lies loose beside them), in the order of `LAYERS`. A module
imports training modules of its own wing or of lower layers only; pretrain/ and finetune/ share
a layer and never import each other. No module imports a training module inside a function (a
lower module would be missing) or another module's private name.

Standard library only: maps and imports are read with `ast`, nothing is imported.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

TRAINING = Path(__file__).resolve().parents[2] / "training"
# A map line: indented, a name, then its description ("    corpus.py    corpus files -> ...").
MODULE_LINE = re.compile(r"^\s+(\w+\.py)\s", re.MULTILINE)
WING_LINE = re.compile(r"^\s+(\w+)/\s", re.MULTILINE)
# Lowest first; a wing may import its own and lower layers.
LAYERS = [{"data"}, {"run"}, {"evaluation"}, {"pretrain", "finetune"}]
LAYER = {wing: i for i, layer in enumerate(LAYERS) for wing in layer}


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


def test_the_package_map_lists_the_wings_in_layer_order():
    assert [LAYER.get(w) for w in wings()] == sorted(LAYER[w] for w in wings()), wings()
    assert set(wings()) == set(LAYER)


def modules() -> list[Path]:
    return sorted(TRAINING.rglob("*.py"))


def imports(path: Path) -> list[tuple[ast.AST, str, list[str], bool]]:
    """(node, module imported, names imported from it, inside a function) for every import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((child, a.name, [], in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child, child.module, [a.name for a in child.names], in_function))
            visit(child, inner)

    visit(tree, False)
    return found


def test_wings_import_only_their_own_and_lower_layers():
    wrong = []
    for path in modules():
        rel = path.relative_to(TRAINING)
        if len(rel.parts) < 2:
            continue  # training/__init__.py: the map, it imports nothing
        wing = rel.parts[0]
        for node, module, names, _ in imports(path):
            parts = module.split(".")
            if parts[0] != "training":
                continue
            targets = [parts[1]] if len(parts) > 1 else names  # `from training import run`
            for target in targets:
                if target != wing and LAYER[target] >= LAYER[wing]:
                    wrong.append(f"{rel}:{node.lineno} ({wing}/) imports {target}/")
    assert wrong == []


def test_no_function_local_training_imports_and_no_private_names():
    wrong = []
    for path in modules():
        rel = path.relative_to(TRAINING)
        for node, module, names, in_function in imports(path):
            if in_function and module.split(".")[0] == "training":
                wrong.append(f"{rel}:{node.lineno} imports {module} inside a function")
            private = [n for n in names if n.startswith("_") and module != "__future__"]
            if private:
                wrong.append(f"{rel}:{node.lineno} imports private {private} from {module}")
    assert wrong == []
