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


def test_the_plan_builders_actor_classes_import_no_torch():
    """The driver pickles the model actor's class by reference, so it imports that class's module:
    ``operators/actors.py`` must stay torch-free (importing torch costs the driver ~3.5 s of CPU
    before the first row is read) and name an operator for every task."""
    import subprocess
    import sys

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
    import subprocess
    import sys

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
