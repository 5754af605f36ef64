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


class ClassifyActor(ModelActor):
    operator_name = "ClassifyOperator"


class TokenClassifyActor(ModelActor):
    operator_name = "TokenClassifyOperator"


class GenerateActor(ModelActor):
    operator_name = "GenerateOperator"


class EmbedActor(ModelActor):
    operator_name = "EmbedOperator"


class ZeroShotClassifyActor(ModelActor):
    operator_name = "ZeroShotClassifyOperator"


class SparseEmbedActor(ModelActor):
    operator_name = "SparseEmbedOperator"


ACTOR_FOR_TASK = {
    "classify": ClassifyActor,
    "token-classify": TokenClassifyActor,
    "generate": GenerateActor,
    "embed": EmbedActor,
    "zero-shot-classify": ZeroShotClassifyActor,
    "sparse-embed": SparseEmbedActor,
}

__all__ = ["ACTOR_FOR_TASK", "ModelActor"]
