"""Callable classes that run inside Ray actors: tokenize, classify, token-classify, generate,
embed, zero-shot-classify, sparse-embed, rerank; length-sorted micro-batching; error records. Plain Python: no YAML, no CLI, unit-testable
without Ray, mapped by the pipeline with ``map_batches(..., compute=ActorPoolStrategy(...))``."""

import importlib

# Imported on first use (PEP 562): Ray's read and write tasks unpickle functions that live under
# ``rayformers``; importing this package must not pull torch into every such worker process
# (~3 s of CPU each, paid by every read/write worker at job start on a small node).
_HOME = {
    "MicroBatch": "batching", "iter_micro_batches": "batching", "pad_rows": "batching",
    "plan_micro_batches": "batching", "ClassifyOperator": "classify", "EmbedOperator": "embed",
    "GenerateOperator": "generate", "ModelOperator": "model_operator", "ERROR_COLUMN": "records",
    "text_problem": "records", "SparseEmbedOperator": "sparse_embed",
    "TokenClassifyOperator": "token_classify", "TokenizeOperator": "tokenize",
    "ZeroShotClassifyOperator": "zero_shot", "RerankOperator": "rerank",
}

_TASKS = {
    "classify": "ClassifyOperator",
    "token-classify": "TokenClassifyOperator",
    "generate": "GenerateOperator",
    "embed": "EmbedOperator",
    "zero-shot-classify": "ZeroShotClassifyOperator",
    "sparse-embed": "SparseEmbedOperator",
    "rerank": "RerankOperator",
}


def __getattr__(name: str):
    if name == "OPERATOR_FOR_TASK":
        value = {task: __getattr__(cls) for task, cls in _TASKS.items()}
    elif name in _HOME:
        value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)

__all__ = [
    "ERROR_COLUMN",
    "OPERATOR_FOR_TASK",
    "ClassifyOperator",
    "EmbedOperator",
    "GenerateOperator",
    "MicroBatch",
    "ModelOperator",
    "RerankOperator",
    "SparseEmbedOperator",
    "TokenClassifyOperator",
    "TokenizeOperator",
    "ZeroShotClassifyOperator",
    "iter_micro_batches",
    "pad_rows",
    "plan_micro_batches",
    "text_problem",
]
