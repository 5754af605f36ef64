"""Base class of the model actors: load once, length-sorted micro-batches, errors as data.

A subclass says how one padded micro-batch becomes per-row results (``predict``) and how those
results become output columns (``output_fields`` / ``to_arrays``). Everything else (choosing rows
without errors, the padded-token budget, restoring row order, isolating a row that makes the
model fail, timing) lives here once.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import pyarrow as pa
import torch

from .batching import MicroBatch, iter_micro_batches
from .loading import configure_cpu_threads, load_model, pick_device
from .records import ERROR_COLUMN, column_to_pylist
from .tokenize import add_stage_time, set_column

INTERNAL_COLUMNS = ("input_ids", "token_type_ids", "offset_start", "offset_end", "special_tokens_mask")
"""Columns the tokenizer adds for the model; dropped from the output."""


class ModelOperator:
    """Callable class for ``map_batches`` in the model actor pool.

    ``model`` may be passed directly (tests, notebooks); otherwise it is loaded from ``model_path``
    with the Auto class of ``task``."""

    task: str = ""
    default_token_budget = {"cpu": 2048, "cuda": 16384}
    """Padded-token budget per forward when the config leaves it unset. On CPU, small micro-batches
    are faster per token (their activations stay in cache): all-MiniLM-L6 on 2 threads runs
    146 rows/s at 2,048 tokens, 111 at 8,192, 98 at 16,384; GPUs want large batches."""

    def __init__(
        self,
        model_path: str = "",
        dtype: str = "float32",
        revision: Optional[str] = None,
        local_files_only: bool = False,
        num_gpus: float = 0.0,
        torch_threads: Optional[int] = None,
        model_actors: int = 1,
        max_tokens_per_batch: Optional[int] = None,
        max_rows_per_batch: int = 128,
        pad_token_id: Optional[int] = None,
        drop_columns: tuple = (),
        model: Any = None,
        **task_options: Any,
    ):
        self.revision = revision
        self.local_files_only = local_files_only
        self.device = pick_device(num_gpus)
        if self.device == "cpu":
            configure_cpu_threads(torch_threads, model_actors)
        if model is None:
            model = load_model(self.task, model_path, dtype, revision, local_files_only, self.device)
        self.model = model
        self.config = getattr(model, "config", None)
        if pad_token_id is None:
            pad_token_id = getattr(self.config, "pad_token_id", None)
        self.pad_token_id = 0 if pad_token_id is None else int(pad_token_id)
        if max_tokens_per_batch is None:
            max_tokens_per_batch = self.default_token_budget["cpu" if self.device == "cpu" else "cuda"]
        self.max_tokens = int(max_tokens_per_batch)
        self.max_rows = int(max_rows_per_batch)
        # Chunked MEGA needs inputs padded to whole chunks; every other model reports None.
        self.pad_to_multiple_of = getattr(model, "pad_to_multiple_of", None)
        self.drop_columns = tuple(drop_columns)
        self.setup(**task_options)

    # -- for subclasses --------------------------------------------------------------------------
    def setup(self, **task_options: Any) -> None:
        """Read task options (top_k, pooling, ...); unknown ones are an error."""
        if task_options:
            raise TypeError(f"{type(self).__name__} got unknown options: {sorted(task_options)}")

    def predict(self, mb: MicroBatch, batch: pa.Table) -> list:
        """Per-row results for one micro-batch, in ``mb.rows`` order."""
        raise NotImplementedError

    def output_fields(self) -> list[pa.Field]:
        """Prediction columns (fixed, so an all-error block has the same schema)."""
        raise NotImplementedError

    def to_arrays(self, results: list) -> list[pa.Array]:
        """Per-row results (None for error rows) → one array per output field."""
        raise NotImplementedError

    # -- the shared loop ---------------------------------------------------------------------------
    def forward(self, mb: MicroBatch) -> Any:
        """Run the model on a padded micro-batch (on this actor's device)."""
        kwargs = {
            "input_ids": mb.input_ids.to(self.device),
            "attention_mask": mb.attention_mask.to(self.device),
        }
        if mb.token_type_ids is not None:
            kwargs["token_type_ids"] = mb.token_type_ids.to(self.device)
        return self.model(**kwargs)

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.perf_counter()
        n = batch.num_rows
        errors = column_to_pylist(batch.column(ERROR_COLUMN))
        ids = column_to_pylist(batch.column("input_ids"))
        types = column_to_pylist(batch.column("token_type_ids")) if "token_type_ids" in batch.column_names else None
        positions = [i for i in range(n) if errors[i] is None and ids[i]]
        results: list = [None] * n
        with torch.inference_mode():
            for mb in iter_micro_batches(ids, positions, self.pad_token_id, self.max_tokens, self.max_rows, types,
                                         self.pad_to_multiple_of):
                for row, res in self._predict_isolating_failures(mb, batch, ids, types, errors):
                    results[row] = res
        out = batch.drop_columns([c for c in (*INTERNAL_COLUMNS, *self.drop_columns) if c in batch.column_names])
        for f, arr in zip(self.output_fields(), self.to_arrays(results)):
            out = set_column(out, f.name, arr.cast(f.type) if arr.type != f.type else arr)
        out = set_column(out, ERROR_COLUMN, pa.array(errors, type=pa.string()))
        return add_stage_time(out, "model", time.perf_counter() - start)

    def _predict_isolating_failures(self, mb, batch, ids, types, errors):
        """Predict a micro-batch; if the model raises, retry row by row so only the culprit fails."""
        try:
            return list(zip(mb.rows, self.predict(mb, batch)))
        except Exception as exc:  # noqa: BLE001 - any model failure becomes a row error below
            if len(mb.rows) == 1:
                errors[mb.rows[0]] = f"model failed on this row: {type(exc).__name__}: {exc}"[:1000]
                return []
        out = []
        for row in mb.rows:
            single = next(iter_micro_batches(ids, [row], self.pad_token_id, self.max_tokens, 1, types,
                                             self.pad_to_multiple_of))
            out.extend(self._predict_isolating_failures(single, batch, ids, types, errors))
        return out


def label_name(config: Any, index: int) -> str:
    """``config.id2label[index]`` tolerant of str keys (raw JSON) and missing entries."""
    id2label = getattr(config, "id2label", None) or {}
    if index in id2label:
        return str(id2label[index])
    if str(index) in id2label:
        return str(id2label[str(index)])
    return f"LABEL_{index}"
