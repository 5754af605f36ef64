"""The classes Ray Data instantiates in the model actors: one thin class per task, without torch.

Ray pickles an actor class by reference, so the process that builds the plan (the job's driver)
imports the class's module. The operators import torch at the top (~2-3 s of CPU on a small
node, before the first row is read); these classes import their operator, and with it torch,
only inside the actor, after setting the OpenMP environment torch reads when it loads
(``loading.MODEL_ACTOR_ENV``). Ray Data names the stage after the class
(``MapBatches(ClassifyActor)``).
"""

from __future__ import annotations

import importlib
from typing import Any

from . import _TASKS


class ModelActor:
    """Builds the task's operator inside the actor and forwards each block to it."""

    operator_name = ""

    def __init__(self, **kwargs: Any):
        from .loading import apply_model_actor_env

        apply_model_actor_env()  # OpenMP settings, before the operator's import loads torch
        operators = importlib.import_module(__package__)
        self.operator = getattr(operators, self.operator_name)(**kwargs)

    def __call__(self, batch: Any) -> Any:
        return self.operator(batch)


def _actor_class(operator_name: str) -> type[ModelActor]:
    """``ClassifyOperator`` -> a ``ClassifyActor`` subclass, defined in this module under that
    name so Ray pickles it by reference like any top-level class."""
    name = operator_name.replace("Operator", "Actor")
    cls = type(name, (ModelActor,), {"operator_name": operator_name, "__module__": __name__, "__qualname__": name})
    globals()[name] = cls
    return cls


# One per task, from the operators' own task table (no second list to keep in step).
ACTOR_FOR_TASK = {task: _actor_class(operator_name) for task, operator_name in _TASKS.items()}

__all__ = ["ACTOR_FOR_TASK", "ModelActor", *(cls.__name__ for cls in ACTOR_FOR_TASK.values())]
