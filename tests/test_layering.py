"""Layers import downward only: jobs/ -> pipeline/ -> operators/ -> models/ (models/ knows no Ray).

Read from the source with ``ast`` (imports inside functions count too), so a lazy upward import
that would only fail at run time on some path is caught here."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["models", "operators", "pipeline", "jobs"]
FORBIDDEN_EXTRA = {"models": {"ray"}}


SCAN = """
import ast, json, sys
out = {}
for path in sys.argv[1:]:
    names = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), filename=path)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    out[path] = sorted(names)
print(json.dumps(out))
"""


@functools.lru_cache(maxsize=None)
def imported_modules() -> dict[str, set[str]]:
    """Every layer file's absolute imports (by path), parsed in a fresh interpreter: CPython
    3.11.7's ``ast.parse`` raised a spurious "AST constructor recursion depth mismatch"
    SystemError in a pytest process that had run the Ray test modules (a bug fixed in later 3.11
    releases); the parse itself does not depend on this process."""
    paths = [str(p) for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))]
    result = subprocess.run([sys.executable, "-c", SCAN, *paths], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return {path: set(names) for path, names in json.loads(result.stdout).items()}


@pytest.mark.parametrize("layer", LAYERS)
def test_no_import_runs_upward(layer):
    above = {f"rayformers.{name}" for name in LAYERS[LAYERS.index(layer) + 1 :]}
    above |= FORBIDDEN_EXTRA.get(layer, set())
    offenders = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for module in imported_modules()[str(path)]:
            if any(module == a or module.startswith(a + ".") for a in above):
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not offenders, "\n".join(offenders)


def test_the_plan_builders_actor_classes_import_no_torch():
    """The driver pickles the model actor's class by reference, so it imports that class's module:
    ``operators/actors.py`` must stay torch-free (importing torch costs the driver ~3.5 s of CPU
    before the first row is read) and name an operator for every task."""
    code = (
        "import sys\n"
        "from rayformers.operators.actors import ACTOR_FOR_TASK\n"
        "import rayformers.pipeline.dataflow, rayformers.pipeline.runner\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "from rayformers.operators import OPERATOR_FOR_TASK\n"
        "assert sorted(ACTOR_FOR_TASK) == sorted(OPERATOR_FOR_TASK)\n"
        "assert all(OPERATOR_FOR_TASK[t].__name__ == a.operator_name for t, a in ACTOR_FOR_TASK.items())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_model_actor_env_is_set_before_torch_loads_and_a_users_value_wins():
    import os
    code = (
        "import os\n"
        "from rayformers.operators.loading import apply_model_actor_env\n"
        "assert apply_model_actor_env() and os.environ['OMP_WAIT_POLICY'] == '{want}'\n"
        "import torch\n"
        "assert not apply_model_actor_env(), 'too late once torch is loaded'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for user, want in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        run_env = dict(env, **({"OMP_WAIT_POLICY": user} if user else {}))
        result = subprocess.run([sys.executable, "-c", code.format(want=want)], env=run_env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]


GRAPH = """
import ast, json, sys
from pathlib import Path
root, layers = Path(sys.argv[1]), sys.argv[2:]
files = {}
for layer in layers:
    for p in sorted((root / layer).rglob("*.py")):
        parts = list(p.relative_to(root).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        files[".".join(["rayformers"] + (parts[:-1] if is_pkg else parts))] = (p, is_pkg)
graph = {}
for mod, (p, is_pkg) in files.items():
    package = mod if is_pkg else mod.rsplit(".", 1)[0]
    deps = set()
    for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"), filename=str(p))):
        if isinstance(node, ast.Import):
            deps.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:  # `from . import transfer` depends on the submodule
                sub = f"{target}.{alias.name}"
                deps.add(sub if sub in files else target)
    graph[mod] = sorted(d for d in deps if d in files and d != mod)
print(json.dumps(graph))
"""


KNOWN_CYCLES = {
    # The job-level pre-flight hands a several-model job to multi_model, which resolves each model
    # with pre-flight's single-model resolution: splitting preflight.py into the job check and the
    # per-model resolution removes it (both imports are lazy on preflight's side).
    frozenset({"rayformers.pipeline.preflight", "rayformers.pipeline.multi_model"}),
}
"""Cycles known and explained; any other (or one of these growing) fails."""


def test_no_import_cycles_between_our_modules():
    """Two modules that import each other (even lazily, inside a function) work only by the luck
    of import order and cannot be read on their own; every cycle is reported with its path."""
    result = subprocess.run([sys.executable, "-c", GRAPH, str(ROOT), *LAYERS], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    graph = json.loads(result.stdout)
    cycles, state = [], {}

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = "open"
        for dep in graph[mod]:
            if state.get(dep) == "open":
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[mod] = "done"

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    unexplained = [c for c in cycles if frozenset(c.split(" -> ")) not in KNOWN_CYCLES]
    assert not unexplained, "\n".join(unexplained)
