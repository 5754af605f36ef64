"""Callable classes that run inside Ray actors: tokenize, classify, token-classify, generate,
embed, zero-shot-classify, sparse-embed; length-sorted micro-batching; error records. Plain Python: no YAML, no CLI, unit-testable
without Ray, mapped by the pipeline with ``map_batches(..., compute=ActorPoolStrategy(...))``."""

from .batching import MicroBatch, iter_micro_batches, pad_rows, plan_micro_batches
from .classify import ClassifyOperator
from .embed import EmbedOperator
from .generate import GenerateOperator
from .model_operator import ModelOperator
from .records import ERROR_COLUMN, text_problem
from .sparse_embed import SparseEmbedOperator
from .token_classify import TokenClassifyOperator
from .tokenize import TokenizeOperator
from .zero_shot import ZeroShotClassifyOperator

OPERATOR_FOR_TASK = {
    "classify": ClassifyOperator,
    "token-classify": TokenClassifyOperator,
    "generate": GenerateOperator,
    "embed": EmbedOperator,
    "zero-shot-classify": ZeroShotClassifyOperator,
    "sparse-embed": SparseEmbedOperator,
}

__all__ = [
    "ERROR_COLUMN",
    "OPERATOR_FOR_TASK",
    "ClassifyOperator",
    "EmbedOperator",
    "GenerateOperator",
    "MicroBatch",
    "ModelOperator",
    "SparseEmbedOperator",
    "TokenClassifyOperator",
    "TokenizeOperator",
    "ZeroShotClassifyOperator",
    "iter_micro_batches",
    "pad_rows",
    "plan_micro_batches",
    "text_problem",
]
