"""Layers import downward only: jobs/ -> pipeline/ -> operators/ -> models/ (models/ knows no Ray).

Read from the source with ``ast`` (imports inside functions count too), so a lazy upward import
that would only fail at run time on some path is caught here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["models", "operators", "pipeline", "jobs"]
FORBIDDEN_EXTRA = {"models": {"ray"}}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", LAYERS)
def test_no_import_runs_upward(layer):
    above = {f"rayformers.{name}" for name in LAYERS[LAYERS.index(layer) + 1 :]}
    above |= FORBIDDEN_EXTRA.get(layer, set())
    offenders = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for module in imported_modules(path):
            if any(module == a or module.startswith(a + ".") for a in above):
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not offenders, "\n".join(offenders)
