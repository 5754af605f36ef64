"""Base class of the model actors: load once, length-sorted micro-batches, errors as data.

A subclass says how one padded micro-batch becomes results (``predict``: tensors, or per-row
lists where the task is per-row by nature) and how the micro-batches' results become output
columns (``output_fields`` / ``to_arrays``). Everything else (choosing rows without errors, the
padded-token budget, restoring row order, isolating a row that makes the model fail, moving
micro-batches to the accelerator one ahead, timing) lives here once.

The host path has no per-row Python when no row fails: token ids go from the Arrow column's
buffers to padded tensors through numpy (``batching``), results come back as arrays and are
scattered to row order by index, and the error column passes through untouched.

Long rows cut into windows by the tokenizer (a ``window_lengths`` column) run as windows
(:mod:`.windows`): every micro-batch holds windows instead of rows, and the task merges the
window results back per row (``merge_windows``) or, when ``explode_windows`` is set, writes one
output row per window. A window the model fails on fails its whole row.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import torch

from .batching import MicroBatch, TokenLists, iter_micro_batches, pad_flat
from .loading import configure_cpu_threads, load_model, pick_device
from .records import ERROR_COLUMN, error_column, valid_rows
from .tokenize import STAGE_TIME_PREFIX, WINDOW_LENGTHS, add_stage_time, set_column
from .windows import Windows, exploded_layout, window_spans

INTERNAL_COLUMNS = ("input_ids", "token_type_ids", "offset_start", "offset_end", "special_tokens_mask", WINDOW_LENGTHS)
"""Columns the tokenizer adds for the model; dropped from the output."""

Chunk = tuple  # (rows: np.ndarray of batch positions, result of ``predict`` for those rows)


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
        dtype: Optional[str] = "float32",
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
        quantization: str = "none",
        allow_new_head: bool = False,
        adapter: Optional[str] = None,
        head: Optional[dict] = None,
        keep_token_columns: bool = False,
        **task_options: Any,
    ):
        self.revision = revision
        self.token_columns = () if keep_token_columns else INTERNAL_COLUMNS
        """Tokenizer columns dropped from the output; kept (``keep_token_columns``) when the next
        model of a several-model pass reads the same tokens."""
        self.local_files_only = local_files_only
        self.gpu = bool(num_gpus)
        """Ray gave this actor a GPU: the GPU defaults apply (token budget, precision), also on the
        test-only CPU stand-in (``loading.GPU_ON_CPU_ENV``)."""
        self.device = pick_device(num_gpus)
        if self.device == "cpu":
            configure_cpu_threads(torch_threads, model_actors)
        if model is None:
            model = load_model(self.task, model_path, dtype, revision, local_files_only, self.device, quantization,
                               allow_new_head, gpu=self.gpu, adapter=adapter, head=head)
        self.model = model
        self.vocab_size = input_vocab_size(model)
        self.config = getattr(model, "config", None)
        if pad_token_id is None:
            pad_token_id = getattr(self.config, "pad_token_id", None)
        self.pad_token_id = 0 if pad_token_id is None else int(pad_token_id)
        if max_tokens_per_batch is None:
            max_tokens_per_batch = self.default_token_budget["cuda" if self.gpu else "cpu"]
        self.max_tokens = int(max_tokens_per_batch)
        self.max_rows = int(max_rows_per_batch)
        # Chunked MEGA needs inputs padded to whole chunks; every other model reports None.
        self.pad_to_multiple_of = getattr(model, "pad_to_multiple_of", None)
        self.drop_columns = tuple(drop_columns)
        # Page-locked host tensors make the host-to-GPU copy asynchronous; on CPU they only cost.
        self.pin_memory = self.device != "cpu" and torch.cuda.is_available()
        self.setup(**task_options)

    windows: Optional[Windows] = None
    """The current batch's windows while it runs (None when its rows are not chunked): the units
    ``predict`` sees in ``mb.rows`` are then windows, ``windows.row`` maps them to batch rows."""
    explode_windows = False
    """Write one output row per window instead of merging (embed ``chunk_aggregate: none``)."""

    # -- for subclasses --------------------------------------------------------------------------
    def setup(self, **task_options: Any) -> None:
        """Read task options (top_k, pooling, ...); unknown ones are an error."""
        if task_options:
            raise TypeError(f"{type(self).__name__} got unknown options: {sorted(task_options)}")

    def predict(self, mb: MicroBatch, batch: pa.Table) -> Any:
        """Results for one micro-batch, in ``mb.rows`` order: a dict of tensors with one row per
        micro-batch row (left on the device: the base class copies them to the host after queuing
        the next micro-batch), or a list with one entry per row."""
        raise NotImplementedError

    def output_fields(self) -> list[pa.Field]:
        """Prediction columns (fixed, so an all-error block has the same schema)."""
        raise NotImplementedError

    def to_arrays(self, chunks: list[Chunk], num_rows: int) -> list[pa.Array]:
        """``(rows, result)`` per micro-batch (results on the host) → one array per output field,
        ``num_rows`` long, null where a row has no result."""
        raise NotImplementedError

    def merge_windows(self, chunks: list[Chunk], windows: Windows, num_rows: int) -> list[Chunk]:
        """Window results (``chunks`` over window indices, rows with a failed window left out)
        → row results in the shape ``to_arrays`` takes. Tasks that can chunk override it."""
        raise ValueError(f"{self.task} cannot score rows cut into windows (tokenizer.overflow chunk)")

    def batch_rows(self, units) -> np.ndarray:
        """The batch rows of ``predict``'s units (``mb.rows``): themselves, or the windows' rows."""
        units = np.asarray(units, dtype=np.int64)
        return units if self.windows is None else self.windows.row[units]

    def unit_lists(self, batch: pa.Table, column: str) -> TokenLists:
        """A token-aligned list column of ``batch`` (offsets, special mask) per unit: per row, or
        per window when the rows are chunked."""
        rows = TokenLists.from_arrow(batch.column(column))
        return rows if self.windows is None else self.windows.lists(rows)

    # -- the shared loop ---------------------------------------------------------------------------
    def forward(self, mb: MicroBatch) -> Any:
        """Run the model on a padded micro-batch (on this actor's device)."""
        kwargs = {"input_ids": mb.input_ids.to(self.device), "attention_mask": mb.attention_mask.to(self.device)}
        if mb.token_type_ids is not None:
            kwargs["token_type_ids"] = mb.token_type_ids.to(self.device)
        return self.model(**kwargs)

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.perf_counter()
        tokens = TokenLists.from_arrow(batch.column("input_ids"))
        types = TokenLists.from_arrow(batch.column("token_type_ids")) if "token_type_ids" in batch.column_names else None
        errors = batch.column(ERROR_COLUMN)
        valid = valid_rows(errors) & (tokens.lengths > 0)
        windows = None
        if WINDOW_LENGTHS in batch.column_names:
            windows = Windows.from_arrow(batch.column(WINDOW_LENGTHS), batch.num_rows)
            tokens, types = windows.lists(tokens), windows.lists(types)
            valid = valid[windows.row] & (windows.lengths > 0)
        positions = np.flatnonzero(valid)
        failures: dict[int, str] = {}
        self.windows = windows
        try:
            with torch.inference_mode():
                host_batches = iter_micro_batches(tokens, positions, self.pad_token_id, self.max_tokens,
                                                  self.max_rows, types, self.pad_to_multiple_of, self.pin_memory)
                chunks = self._run(host_batches, batch, tokens, types, failures)
            if windows is None:
                return self._output(batch, chunks, errors, failures, start)
            return self._windowed_output(batch, windows, chunks, errors, failures, start)
        finally:
            self.windows = None

    def _windowed_output(self, batch: pa.Table, windows: Windows, chunks: list[Chunk], errors, failures: dict,
                         start: float) -> pa.Table:
        """Window results back to rows: a failed window fails its row (its other windows are
        dropped), then merged per row, or one output row per window."""
        row_failures: dict[int, str] = {}
        for unit, reason in sorted(failures.items()):
            row_failures.setdefault(int(windows.row[unit]), reason)
        if row_failures:
            failed = np.zeros(batch.num_rows, dtype=bool)
            failed[list(row_failures)] = True
            chunks = [kept for kept in (subset_chunk(c, ~failed[windows.row[c[0]]]) for c in chunks) if len(kept[0])]
        if not self.explode_windows:
            return self._output(batch, self.merge_windows(chunks, windows, batch.num_rows), errors, row_failures, start)
        return self._exploded_output(batch, windows, chunks, errors, row_failures, start)

    def _exploded_output(self, batch: pa.Table, windows: Windows, chunks: list[Chunk], errors, failures: dict,
                         start: float) -> pa.Table:
        """One output row per window of every scored row (its other columns repeated, hidden
        place columns included, so accounting still finds its input row), with ``chunk_index``
        and ``chunk_start``/``chunk_end`` (character offsets of the window's first and last
        non-special token); rows without results stay one row with null chunk columns.
        ``num_tokens`` becomes the window's tokens, and per-row stage seconds are spread over
        the row's windows, so sums over the output stay true."""
        row_has = np.zeros(batch.num_rows, dtype=bool)
        for rows, _ in chunks:
            row_has[windows.row[rows]] = True
        layout = exploded_layout(windows, row_has)
        scored = layout.window >= 0
        span_start, span_end = window_spans(
            windows, *(TokenLists.from_arrow(batch.column(c)) for c in ("offset_start", "offset_end", "special_tokens_mask")))
        picks = pa.array(layout.window, mask=~scored)
        out = batch.drop_columns([c for c in (*INTERNAL_COLUMNS, *self.drop_columns) if c in batch.column_names])
        out = out.take(pa.array(layout.row))
        for f, arr in zip(self.output_fields(), self.to_arrays(chunks, len(windows))):
            out = set_column(out, f.name, (arr.cast(f.type) if arr.type != f.type else arr).take(picks))
        safe = np.maximum(layout.window, 0)
        for name, values in (("chunk_index", layout.index), ("chunk_start", span_start[safe] if len(windows) else safe),
                             ("chunk_end", span_end[safe] if len(windows) else safe)):
            out = set_column(out, name, pa.array(values.astype(np.int32), mask=~scored | (values < 0)))
        if "num_tokens" in out.column_names:
            row_tokens = out.column("num_tokens").to_numpy(zero_copy_only=False)
            window_tokens = windows.lengths[safe] if len(windows) else row_tokens
            out = set_column(out, "num_tokens", pa.array(np.where(scored, window_tokens, row_tokens).astype(np.int32)))
        for name in [c for c in out.column_names if c.startswith(STAGE_TIME_PREFIX)]:
            out = set_column(out, name, pa.array(out.column(name).to_numpy(zero_copy_only=False) / layout.repeats))
        out = set_column(out, ERROR_COLUMN, error_column(errors, failures).take(pa.array(layout.row)))
        return add_stage_time(out, "model", time.perf_counter() - start)

    def _output(self, batch: pa.Table, chunks: list[Chunk], errors, failures: dict, start: float) -> pa.Table:
        out = batch.drop_columns([c for c in (*self.token_columns, *self.drop_columns) if c in batch.column_names])
        for f, arr in zip(self.output_fields(), self.to_arrays(chunks, batch.num_rows)):
            out = set_column(out, f.name, arr.cast(f.type) if arr.type != f.type else arr)
        out = set_column(out, ERROR_COLUMN, error_column(errors, failures))
        return add_stage_time(out, "model", time.perf_counter() - start)

    def _run(self, host_batches: Iterator[MicroBatch], batch, tokens, types, failures) -> list[Chunk]:
        """Predict every micro-batch, one ahead on an accelerator.

        CUDA kernels run asynchronously: while micro-batch k runs, the host finishes k-1's
        results (:meth:`host_result`: per-row Python such as token-classify's entities), pads
        micro-batch k+1 and queues its (pinned, non-blocking) copy; only then are k's results
        copied back, which waits for k. On CPU the same loop simply runs k to completion first."""
        chunks: list[Chunk] = []
        fetched: list[Chunk] = []  # the previous micro-batch's results, on the host
        current = self._to_device(next(host_batches, None))
        while current is not None:
            launched = self._predict_isolating_failures(current, batch, tokens, types, failures)
            chunks.extend((rows, self.host_result(rows, result, batch)) for rows, result in fetched)
            following = self._to_device(next(host_batches, None))
            fetched = [(rows, self._to_host(result)) for rows, result in launched]
            current = following
        chunks.extend((rows, self.host_result(rows, result, batch)) for rows, result in fetched)
        return chunks

    def host_result(self, units: np.ndarray, result: Any, batch: pa.Table) -> Any:
        """A micro-batch's result once on the host (``units``: its ``mb.rows``), before it joins
        the chunks: per-row Python post-processing goes here, not in ``predict``, so that it runs
        while the next micro-batch computes on the device."""
        return result

    def to_host(self, result: dict) -> dict:
        """Device tensors of a ``predict`` result → numpy arrays. Called after the next micro-batch
        is queued, so work that syncs with the device (a boolean-mask selection, whose size the
        host must learn) belongs in an override of this, not in ``predict``."""
        return {k: v.cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in result.items()}

    def _to_host(self, result: Any) -> Any:
        """A ``predict`` result with its tensors as numpy arrays (waits for the device)."""
        if isinstance(result, dict):
            return self.to_host(result)
        return result

    def _to_device(self, mb: Optional[MicroBatch]) -> Optional[MicroBatch]:
        """The micro-batch on this actor's device (its copy queued, not awaited), with its largest
        token id read on the host first (see :meth:`check_token_ids`)."""
        if mb is None:
            return mb
        ids = mb.input_ids
        max_id = int(ids.numpy().max()) if ids.numel() and ids.device.type == "cpu" else mb.max_id
        if self.device == "cpu":
            mb.max_id = max_id
            return mb
        move = lambda t: None if t is None else t.to(self.device, non_blocking=self.pin_memory)  # noqa: E731
        return MicroBatch(mb.rows, move(mb.input_ids), move(mb.attention_mask), move(mb.token_type_ids), max_id)

    def check_token_ids(self, mb: MicroBatch) -> None:
        """Refuse a micro-batch holding a token id the model's input embedding does not have.

        On a GPU such an id is a device-side assert that poisons the actor's CUDA context (every
        later call fails too); checked on the host, it is a ValueError that the row-by-row retry
        of :meth:`_predict_isolating_failures` turns into the affected rows' error records."""
        if self.vocab_size is None or mb.max_id is None or mb.max_id < self.vocab_size:
            return
        raise ValueError(out_of_vocab_message(mb.max_id, self.vocab_size))

    def drop_out_of_vocab_rows(self, tokens: TokenLists, positions: np.ndarray, failures: dict) -> np.ndarray:
        """``positions`` without the rows holding a token id past the model's input embeddings
        (each recorded in ``failures``): one max over the flat ids, per-row work only when it
        fails. For loops that hand rows to the model without micro-batches of their own."""
        if self.vocab_size is None or not len(tokens.values) or int(tokens.values.max()) < self.vocab_size:
            return positions
        bad = [int(r) for r in positions
               if tokens.lengths[r] and tokens.values[tokens.starts[r]:tokens.starts[r] + tokens.lengths[r]].max()
               >= self.vocab_size]
        for row in bad:
            row_max = int(tokens.values[tokens.starts[row]:tokens.starts[row] + tokens.lengths[row]].max())
            failures[row] = f"model failed on this row: ValueError: {out_of_vocab_message(row_max, self.vocab_size)}"
        return positions[~np.isin(positions, bad)]

    def _predict_isolating_failures(self, mb, batch, tokens, types, failures) -> list[Chunk]:
        """Predict a micro-batch; if the model raises, retry row by row so only the culprit fails."""
        try:
            self.check_token_ids(mb)
            return [(np.asarray(mb.rows, dtype=np.int64), self.predict(mb, batch))]
        except Exception as exc:  # noqa: BLE001 - any model failure becomes a row error below
            if len(mb.rows) == 1:
                failures[mb.rows[0]] = f"model failed on this row: {type(exc).__name__}: {exc}"[:1000]
                return []
        out: list[Chunk] = []
        for row in mb.rows:
            out.extend(self._predict_isolating_failures(self._single(row, tokens, types), batch, tokens, types, failures))
        return out

    def _single(self, row: int, tokens: TokenLists, types: Optional[TokenLists]) -> MicroBatch:
        rows = np.array([row])
        ids, mask = pad_flat(tokens, rows, self.pad_token_id, self.pad_to_multiple_of)
        type_ids = None if types is None else pad_flat(types, rows, 0, self.pad_to_multiple_of)[0]
        return self._to_device(MicroBatch([row], ids, mask, type_ids))


def out_of_vocab_message(token_id: int, vocab_size: int) -> str:
    return (f"token id {token_id} is outside the model's input embeddings ({vocab_size} ids): the tokenizer does not "
            "match the checkpoint (use the checkpoint's own tokenizer, or a model whose vocabulary covers it)")


def input_vocab_size(model: Any) -> Optional[int]:
    """How many token ids the model's input embedding has (None when it exposes none)."""
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    size = getattr(embeddings, "num_embeddings", None)
    return None if size is None else int(size)


def subset_chunk(chunk: Chunk, keep: np.ndarray) -> Chunk:
    """The units of a ``(rows, result)`` chunk where ``keep`` is true (dict of arrays or list)."""
    rows, result = chunk
    if isinstance(result, dict):
        return rows[keep], {k: v[keep] if isinstance(v, np.ndarray) and v.ndim and len(v) == len(rows) else v
                            for k, v in result.items()}
    return rows[keep], [r for r, k in zip(result, keep.tolist()) if k]


def scatter(chunks: list[Chunk], key: str, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """One row-aligned result of every micro-batch in batch row order: ``(values, has_result)``,
    zeros where a row has none."""
    if not chunks:
        return np.zeros((num_rows,), dtype=np.float32), np.zeros(num_rows, dtype=bool)
    rows = np.concatenate([r for r, _ in chunks])
    parts = np.concatenate([res[key] for _, res in chunks])
    values = np.zeros((num_rows, *parts.shape[1:]), dtype=parts.dtype)
    values[rows] = parts
    has = np.zeros(num_rows, dtype=bool)
    has[rows] = True
    return values, has


def rows_in_order(chunks: list[Chunk], num_rows: int) -> list:
    """Per-row list results of every micro-batch as one list in batch row order (None if none)."""
    out: list = [None] * num_rows
    for rows, results in chunks:
        for row, res in zip(rows.tolist(), results):
            out[row] = res
    return out


def label_name(config: Any, index: int) -> str:
    """``config.id2label[index]`` tolerant of str keys (raw JSON) and missing entries."""
    id2label = getattr(config, "id2label", None) or {}
    if index in id2label:
        return str(id2label[index])
    if str(index) in id2label:
        return str(id2label[str(index)])
    return f"LABEL_{index}"


def label_names(config: Any, count: int) -> pa.Array:
    """The label names of indices ``0..count-1`` as one Arrow array, to ``take`` from."""
    return pa.array([label_name(config, i) for i in range(count)], type=pa.string())
