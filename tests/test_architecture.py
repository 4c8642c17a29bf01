"""docs/ARCHITECTURE.md's layering, checked: no import runs back up; server/ and client/ never meet."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sweepcat"

# Lowest first. A module may import modules of its own layer or below.
LAYERS = [
    {"errors", "h5open", "atomic"},
    {"h5scan", "contract", "query", "h5read", "demodata"},
    {"spec", "catalog"},
    {"server", "client", "manifest", "inspect"},
    {"cli"},
]


def _unit(module: str) -> str:
    """`sweepcat.catalog.ingest` -> `catalog`; `sweepcat.h5open` -> `h5open`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(unit: str) -> int:
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"module sweepcat.{unit} is not placed in a layer: add it to LAYERS and the docs")


def _imports(path: Path) -> set[str]:
    """sweepcat modules imported by ``path`` (relative imports resolved)."""
    module = "sweepcat." + ".".join(path.relative_to(SRC).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "sweepcat" or target.startswith("sweepcat."):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names if target in ("sweepcat", "sweepcat.server",
                                                                                       "sweepcat.client",
                                                                                       "sweepcat.catalog"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sweepcat."))
    return found


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_import_runs_back_up(path: Path) -> None:
    me = "sweepcat." + ".".join(path.relative_to(SRC).with_suffix("").parts)
    mine = _unit(me)
    if not mine or mine in ("__init__", "__main__"):
        return
    for target in _imports(path):
        theirs = _unit(target)
        if not theirs or theirs in ("__init__", "__version__"):
            continue
        assert _layer(theirs) <= _layer(mine), f"{me} (layer {_layer(mine)}) imports {target} (layer {_layer(theirs)})"
        assert {mine, theirs} != {"server", "client"}, f"{me} imports {target}: server/ and client/ never meet"
