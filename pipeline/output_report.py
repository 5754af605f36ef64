"""What a curator decides from, read from a published output: ``rayformers report OUTPUT``.

The manifest (``_manifest.json``) gives the counts (input, output, error, kept, dropped rows),
the keep rule, the models and the stage timings of the run; the Parquet files give label
distributions, score histograms and error reasons. This module only reads and counts; turning
an :class:`OutputReport` into terminal text or an HTML page is :mod:`.report_text` and
:mod:`.report_html`.

Big outputs are sampled, never read whole (:mod:`.output_row_groups`): row groups are read one at
a time, only the columns a plot needs, in a seeded random order, until ``sample_rows`` rows are in
(the last row group cut). Memory is one row group plus the sampled score values. Error reasons are read apart from
the sample: the Parquet statistics of the ``error`` column say which row groups hold errors
(its null count is below the row count), and only those are read, so the reasons are exact as
long as there are at most ``sample_rows`` error rows.

Manifests name their models (``models``: ``name``, ``task``, ``model_type``,
``prediction_columns``), the keep rule (``keep``) and ``kept_rows`` / ``dropped_rows``; a
manifest without these fields (one model, no keep rule) is read too: its model comes from
``task`` / ``model_type`` and its prediction columns are the task's known columns found in the
output.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from rayformers.operators.records import ERROR_COLUMN

from .keep_thresholds import Threshold, keep_thresholds
from .output_row_groups import SAMPLE_SEED, RowGroup, data_files, list_row_groups, read_row_group, sample_groups
from .output_safety import MANIFEST, SUCCESS, OutputError
from .preflight import PREDICTION_COLUMNS
from .source import ID_COLUMN, resolve_filesystem

DEFAULT_SAMPLE_ROWS = 100_000
HISTOGRAM_BINS = 20
ERROR_EXAMPLES = 3

LABEL_COLUMNS = {"label": "value", "labels": "elements"}
"""Prediction columns (without a model's ``<name>_`` prefix) plotted as a label distribution, and
how a row counts: its value, or each element of its list (multi-label ``labels``)."""
SCORE_COLUMNS = {"score": "value"}
"""Prediction columns plotted as a score histogram."""
FIRST_ELEMENT_TASKS = {"zero-shot-classify": {"labels": "label", "scores": "score"}}
"""Tasks whose list columns are sorted best first: the first element is the row's prediction
(zero-shot ``labels``/``scores`` hold every candidate label, so counting all elements would
give every label the same count)."""


class ReportError(OutputError):
    """The path is not a published rayformers output (or cannot be read as one)."""


@dataclass
class ModelColumns:
    """One model of the run and the output columns it wrote."""

    name: str
    task: str
    model_type: Optional[str]
    prediction_columns: list[str]


@dataclass
class LabelDistribution:
    column: str
    model: str
    how: str
    """``value`` (one label per row), ``elements`` (every label of a list) or ``first`` (a list's
    first, best, label)."""
    counts: list[tuple[str, int]]
    """``(label, rows)`` most frequent first, over the sampled rows that have a label."""
    missing: int
    """Sampled rows without a label (error rows, or an empty multi-label list)."""


@dataclass
class ScoreHistogram:
    column: str
    model: str
    how: str
    edges: list[float]
    """``bins + 1`` bin edges; a value ``v`` falls in bin ``i`` when ``edges[i] <= v < edges[i+1]``
    (the last bin includes its right edge, as numpy's histogram)."""
    counts: list[int]
    values: int
    """Sampled rows with a score (the counts sum to this)."""
    missing: int
    minimum: Optional[float]
    maximum: Optional[float]
    mean: Optional[float]
    thresholds: list[Threshold] = field(default_factory=list)
    """The keep rule's comparisons of this column with a number (drawn on the histogram)."""
    passing: Optional[int] = None
    """Sampled scores that pass every threshold (None without a threshold)."""


@dataclass
class ErrorReason:
    reason: str
    count: int
    examples: list[str]
    """Ids of a few rows that failed for this reason."""


@dataclass
class StageTime:
    stage: str
    seconds: float
    """Seconds summed over the actors / tasks of the stage (``plan``: the wall time of the Ray
    execution; ``finalize``: checks, manifest and publish)."""
    rows_per_s: Optional[float]
    """Rows scored by the run per second of this stage (per actor-second for actor stages)."""


@dataclass
class OutputReport:
    path: str
    status: str
    created_at: Optional[str]
    input_rows: Optional[int]
    output_rows: Optional[int]
    error_rows: Optional[int]
    kept_rows: Optional[int]
    dropped_rows: Optional[int]
    keep: Optional[str]
    models: list[ModelColumns]
    total_rows: int
    """Rows in the output's Parquet files (from their footers)."""
    sampled_rows: int
    """Rows the label and score figures are computed from (all of them when ``sampled`` is false)."""
    labels: list[LabelDistribution]
    scores: list[ScoreHistogram]
    errors: list[ErrorReason]
    error_rows_read: int
    errors_complete: bool
    """Every error row was read (the reasons' counts are exact)."""
    stages: list[StageTime]
    wall_s: Optional[float]
    rows_scored: Optional[int]
    rows_per_s: Optional[float]
    tokens_per_s: Optional[float]

    @property
    def sampled(self) -> bool:
        return self.sampled_rows < self.total_rows

    def to_dict(self) -> dict:
        return {**asdict(self), "sampled": self.sampled}


# ------------------------------------------------------------------------------------------------
# Manifest


def read_published_manifest(fs: pafs.FileSystem, path: str) -> dict:
    """The manifest of a published output; a clear :class:`ReportError` for anything else."""
    import json

    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise ReportError(f"{path}: no such output directory")
    if info.type != pafs.FileType.Directory:
        raise ReportError(f"{path}: not a directory; give the output directory of a rayformers run")
    manifest_path = posixpath.join(path, MANIFEST)
    if fs.get_file_info(manifest_path).type == pafs.FileType.NotFound:
        raise ReportError(f"{path}: no {MANIFEST}; not a published rayformers output (a run that did not finish "
                          "is resumed with output.mode: resume, then reported)")
    if fs.get_file_info(posixpath.join(path, SUCCESS)).type == pafs.FileType.NotFound:
        raise ReportError(f"{path}: {MANIFEST} without {SUCCESS}: the output was not published completely")
    with fs.open_input_stream(manifest_path) as f:
        try:
            return json.loads(f.read().decode())
        except ValueError as e:
            raise ReportError(f"{manifest_path}: not valid JSON ({e})") from e


def models_of(manifest: dict, schema: pa.Schema) -> list[ModelColumns]:
    """The manifest's ``models``, or for a manifest without that field its one model, with the
    task's known prediction columns that the output has."""
    if manifest.get("models"):
        return [ModelColumns(name=str(m.get("name") or ""), task=str(m.get("task") or ""),
                             model_type=m.get("model_type"), prediction_columns=list(m.get("prediction_columns") or []))
                for m in manifest["models"]]
    task = manifest.get("task") or (manifest.get("config") or {}).get("model", {}).get("task") or ""
    columns = [c for c in PREDICTION_COLUMNS.get(task, []) if c in schema.names]
    return [ModelColumns(name="", task=task, model_type=manifest.get("model_type"), prediction_columns=columns)]


def _base_name(model: ModelColumns, column: str) -> str:
    """The task's column name behind ``column``: without the ``<name>_`` prefix a multi-model run
    adds (a column that is already a known name, e.g. ``score`` of a model named ``score``, stays)."""
    prefix = f"{model.name}_"
    known = {*LABEL_COLUMNS, *SCORE_COLUMNS, *FIRST_ELEMENT_TASKS.get(model.task, {})}
    if model.name and column.startswith(prefix) and column not in known:
        return column[len(prefix):]
    return column


def plotted_columns(models: list[ModelColumns], schema: pa.Schema) -> tuple[list[tuple], list[tuple]]:
    """``([(column, model, how)], [(column, model, how)])``: the label and the score columns to plot."""
    labels, scores = [], []
    for m in models:
        first = FIRST_ELEMENT_TASKS.get(m.task, {})
        for column in m.prediction_columns:
            if column not in schema.names:
                continue
            base = _base_name(m, column)
            if base in first:
                (labels if first[base] == "label" else scores).append((column, m.name, "first"))
            elif base in LABEL_COLUMNS:
                labels.append((column, m.name, LABEL_COLUMNS[base]))
            elif base in SCORE_COLUMNS:
                scores.append((column, m.name, SCORE_COLUMNS[base]))
    return labels, scores


# ------------------------------------------------------------------------------------------------
# Counting


def _label_values(column: pa.ChunkedArray, how: str) -> tuple[pa.Array, int]:
    """The labels a column holds (``how``) and how many rows have none."""
    column = column.combine_chunks()
    if how == "value":
        return column.drop_null(), column.null_count
    lengths = pc.fill_null(pc.list_value_length(column), 0)
    missing = int(pc.sum(pc.equal(lengths, 0).cast(pa.int64())).as_py() or 0)
    if how == "elements":
        return pc.list_flatten(column).drop_null(), missing
    return pc.list_element(column.filter(pc.greater(lengths, 0)), 0).drop_null(), missing


def _score_values(column: pa.ChunkedArray, how: str) -> np.ndarray:
    column = column.combine_chunks()
    if how == "first":
        lengths = pc.fill_null(pc.list_value_length(column), 0)
        column = pc.list_element(column.filter(pc.greater(lengths, 0)), 0)
    values = column.drop_null().cast(pa.float64()).to_numpy(zero_copy_only=False)
    return values[np.isfinite(values)]


def histogram(values: np.ndarray, thresholds: list[Threshold], bins: int = HISTOGRAM_BINS) -> tuple[list[float], list[int]]:
    """Bin edges and counts: ``[0, 1]`` for probabilities, else the values' range; widened to
    include every threshold so that its mark falls on the plot."""
    marks = [t.value for t in thresholds]
    if len(values) and values.min() >= 0.0 and values.max() <= 1.0 and all(0.0 <= v <= 1.0 for v in marks):
        low, high = 0.0, 1.0
    else:
        points = [*(values.tolist() if len(values) else []), *marks] or [0.0]
        low, high = min(points), max(points)
    if low == high:
        low, high = low - 0.5, high + 0.5
    width = (high - low) / bins
    if marks and not any(np.isclose((m - low) / width, round((m - low) / width)) for m in marks):
        # Shift the bins so that the first threshold is a bin edge: every bin is then wholly kept
        # or wholly dropped by it, and the bars left of the mark are what the rule drops.
        low = marks[0] - np.ceil((marks[0] - low) / width) * width
        bins = int(np.ceil((high - low) / width - 1e-9))
        high = low + bins * width
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    return [float(e) for e in edges], [int(c) for c in counts]


def _passes(values: np.ndarray, thresholds: list[Threshold]) -> int:
    ops = {">=": np.greater_equal, "<=": np.less_equal, ">": np.greater, "<": np.less, "==": np.equal, "!=": np.not_equal}
    mask = np.ones(len(values), dtype=bool)
    for t in thresholds:
        mask &= ops[t.op](values, t.value)
    return int(mask.sum())


def read_error_reasons(fs: pafs.FileSystem, groups: list[RowGroup], id_column: Optional[str], limit: int,
                       examples: int = ERROR_EXAMPLES) -> tuple[list[ErrorReason], int, bool]:
    """Error reasons with their counts and a few example ids, from the row groups whose statistics
    show errors (all row groups when a file has no statistics), reading at most ``limit`` error rows."""
    counts: Counter = Counter()
    ids: dict[str, list[str]] = {}
    read, complete = 0, True
    for g in groups:
        if g.error_nulls is not None and g.error_nulls >= g.rows:
            continue
        table = read_row_group(fs, g, [c for c in (ERROR_COLUMN, id_column) if c])
        failed = table.filter(pc.is_valid(table.column(ERROR_COLUMN)))
        if read + failed.num_rows > limit:
            failed, complete = failed.slice(0, limit - read), False
        reasons = failed.column(ERROR_COLUMN).to_pylist()
        row_ids = failed.column(id_column).to_pylist() if id_column else [None] * len(reasons)
        for reason, row_id in zip(reasons, row_ids):
            counts[reason] += 1
            shown = ids.setdefault(reason, [])
            if len(shown) < examples and row_id is not None:
                shown.append(str(row_id))
        read += failed.num_rows
        if not complete:
            break
    reasons = [ErrorReason(r, n, ids.get(r, [])) for r, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return reasons, read, complete


def stage_times(manifest: dict) -> list[StageTime]:
    report = manifest.get("report") or {}
    scored = report.get("rows_scored")
    return [StageTime(stage, float(seconds), scored / seconds if scored and seconds else None)
            for stage, seconds in (report.get("stage_s") or {}).items()]


def read_output_report(path: str, sample_rows: int = DEFAULT_SAMPLE_ROWS, fs: Optional[pafs.FileSystem] = None,
                       seed: int = SAMPLE_SEED) -> OutputReport:
    """Read ``path`` (a published output, local or a URI) into an :class:`OutputReport`."""
    if sample_rows < 1:
        raise ValueError(f"sample rows must be at least 1, got {sample_rows}")
    if fs is None:
        fs, path = resolve_filesystem(path)
    manifest = read_published_manifest(fs, path)
    groups, schema = list_row_groups(fs, data_files(fs, path, manifest))
    schema = schema or pa.schema([])
    models = models_of(manifest, schema)
    label_columns, score_columns = plotted_columns(models, schema)
    thresholds = keep_thresholds(manifest.get("keep"))

    label_counts = {c: Counter() for c, _, _ in label_columns}
    label_missing = {c: 0 for c, _, _ in label_columns}
    score_parts: dict[str, list[np.ndarray]] = {c: [] for c, _, _ in score_columns}
    score_rows = {c: 0 for c, _, _ in score_columns}
    wanted = [c for c, _, _ in (*label_columns, *score_columns)]
    sampled = 0
    for group, take in sample_groups(groups, sample_rows, seed):
        sampled += take
        if not wanted:
            continue
        table = read_row_group(fs, group, wanted).slice(0, take)
        for column, _, how in label_columns:
            values, missing = _label_values(table.column(column), how)
            label_missing[column] += missing
            for item in pc.value_counts(values).to_pylist():
                label_counts[column][str(item["values"])] += int(item["counts"])
        for column, _, how in score_columns:
            values = _score_values(table.column(column), how)
            score_parts[column].append(values)
            score_rows[column] += table.num_rows

    labels = [LabelDistribution(c, m, how, sorted(label_counts[c].items(), key=lambda kv: (-kv[1], kv[0])),
                                label_missing[c]) for c, m, how in label_columns]
    scores = []
    for column, model, how in score_columns:
        values = np.concatenate(score_parts[column]) if score_parts[column] else np.zeros(0)
        marks = thresholds.get(column, [])
        edges, counts = histogram(values, marks)
        scores.append(ScoreHistogram(
            column, model, how, edges, counts, values=len(values), missing=score_rows[column] - len(values),
            minimum=float(values.min()) if len(values) else None, maximum=float(values.max()) if len(values) else None,
            mean=float(values.mean()) if len(values) else None, thresholds=marks,
            passing=_passes(values, marks) if marks else None,
        ))

    id_column = manifest.get("id_column")
    if id_column not in schema.names:
        id_column = ID_COLUMN if ID_COLUMN in schema.names else None
    errors, errors_read, complete = ([], 0, True)
    if ERROR_COLUMN in schema.names:
        errors, errors_read, complete = read_error_reasons(fs, groups, id_column, sample_rows)

    report = manifest.get("report") or {}
    total = sum(g.rows for g in groups)
    return OutputReport(
        path=path, status=str(manifest.get("status", "")), created_at=manifest.get("created_at"),
        input_rows=manifest.get("input_rows"), output_rows=manifest.get("output_rows", total),
        error_rows=manifest.get("error_rows"), kept_rows=manifest.get("kept_rows"),
        dropped_rows=manifest.get("dropped_rows"), keep=manifest.get("keep"), models=models,
        total_rows=total, sampled_rows=sampled, labels=labels, scores=scores, errors=errors,
        error_rows_read=errors_read, errors_complete=complete, stages=stage_times(manifest),
        wall_s=report.get("wall_s"), rows_scored=report.get("rows_scored"),
        rows_per_s=report.get("rows_per_s"), tokens_per_s=report.get("tokens_per_s"),
    )


__all__ = ["OutputReport", "ReportError", "read_output_report", "DEFAULT_SAMPLE_ROWS"]
