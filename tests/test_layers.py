"""The library's layers: no module imports from a layer above its own (README: Layout).

Command entry points (`__main__.py`, the training commands) sit on top of everything and are exempt.
Every module opens with a docstring saying what it is for.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mechanisms"

# bottom to top; a module may import from its own layer or any layer below it
LAYERS = [
    {"mechanisms.geometry", "mechanisms.storage"},
    {"mechanisms.data"},
    {"mechanisms.models"},
    {"mechanisms.interventions"},
    {"mechanisms.tasks"},
    {"mechanisms.experiments"},
    {"mechanisms.organisms"},
    {"mechanisms.reports"},
    {"mechanisms.suite"},
]
ENTRY_POINTS = {"mechanisms.data.__main__", "mechanisms.organisms.train", "mechanisms.organisms.train_internvl",
                "mechanisms.compare"}


def layer_of(module: str) -> int:
    for index, roots in enumerate(LAYERS):
        if any(module == root or module.startswith(root + ".") for root in roots):
            return index
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and the README's layout")


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mechanisms"):
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names
                         if (PACKAGE.parent / f"{node.module}.{alias.name}".replace(".", "/")).exists()
                         or (PACKAGE.parent / (f"{node.module}.{alias.name}".replace(".", "/") + ".py")).exists())
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("mechanisms"))
    return {n for n in names if n != "mechanisms"}


@pytest.mark.parametrize("name, path", modules(), ids=[m for m, _ in modules()])
def test_no_module_imports_from_a_layer_above_it(name, path):
    if name == "mechanisms" or name in ENTRY_POINTS:
        return
    own = layer_of(name)
    above = sorted(m for m in imported(path) if layer_of(m) > own)
    assert not above, f"{name} (layer {own}) imports from higher layers: {above}"


@pytest.mark.parametrize("name, path", modules(), ids=[m for m, _ in modules()])
def test_every_module_says_what_it_is_for(name, path):
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    assert docstring and len(docstring.split()) >= 5, f"{name} has no opening docstring"
