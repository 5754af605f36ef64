"""Training data: label discovery, bad-row checks, and a deterministic sharded Ray Data stream.

Three steps, all driven from the Parquet files (discovered with the inference pipeline's
``discover_files``/``plan_units``, so paths, globs, hive folders and filesystems behave the same):

1. **Scan** (Ray tasks, one per read unit, label/text columns only): the label kind and label
   names when the config does not fix them, then every row checked — missing text or label, an
   unknown label name, an id out of range, an empty target. Per unit we learn how many rows are
   usable and which split (train/eval) they fall in. With ``bad_rows: fail`` the job stops here,
   before any worker starts, naming files, rows and reasons; with ``skip`` they are counted,
   reported and left out.

2. **Plan**: because the usable row count of every unit is known, each row's position in every
   epoch is known without a sort. Epoch ``e`` visits units in a seeded order and rows within a
   unit in a seeded permutation; global micro-batch ``m`` is positions ``[m·W·B, (m+1)·W·B)`` and
   worker ``r`` gets the slice ``[m·W·B + r·B, m·W·B + (r+1)·B)``. So the rows of one optimizer
   step are the same set whatever the number of workers W (1 worker with batch 8 sees exactly the
   rows that 2 workers with batch 4 see), the order is reproducible, and a resumed run continues
   with exactly the rows it had not trained on. An epoch's incomplete last global batch is
   dropped (every step then averages exactly ``global_batch`` rows).

3. **Stream**: worker ``r`` gets its own Ray Data pipeline — a datasource whose read tasks are
   (epoch, unit) pairs holding rows of that worker, then tokenization in ``map_batches`` (Ray Data
   tasks, never the training loop) — handed over by :class:`ShardedDataConfig` through Ray
   Train's ``get_dataset_shard``. The price of exact sharding: every worker reads the row groups
   it has rows in (Parquet I/O grows with W; tokenization does not). Eval rows are dealt
   round-robin to workers, never dropped.

Limitations: a fixed number of workers per run (no elastic resize); the row order is a block
shuffle (unit order + permutation inside a unit), not a global shuffle.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from .batch_columns import MICRO_COLUMN, pad_list_column  # noqa: F401  (re-exported)
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayformers.operators.records import text_problem

from .sft_data import PROMPT_LENGTH_COLUMN, pack_rows, sft_row_problems, tokenize_sft

SLICE_ROWS = 2048
"""Rows per block a read task yields (bounds memory of one unit's read)."""
MAX_EXAMPLES = 20
"""Bad rows quoted per message."""


class DataError(ValueError):
    """Training data that cannot be used as configured; names the file, rows and what to do."""


# ------------------------------------------------------------------------------------------------
# What the labels are.


@dataclass
class LabelSpec:
    """How the label (or target) column becomes model labels."""

    task: str
    """``classify``, ``generate``, ``token-classify`` or ``embed``."""
    problem_type: Optional[str] = None
    """``single_label_classification``, ``multi_label_classification``, ``regression`` or
    ``token_classification``."""
    source: str = "names"
    """classify: the column holds ``names`` (strings), ``ids`` (integers) or ``values`` (numbers)."""
    names: list = field(default_factory=list)
    """Label names in id order (classification)."""
    num_outputs: int = 1
    """Model outputs: number of labels, or regression targets per row."""

    @property
    def label2id(self) -> dict:
        return {name: i for i, name in enumerate(self.names)}

    @property
    def id2label(self) -> dict:
        return {i: name for i, name in enumerate(self.names)}

    def model_kwargs(self) -> dict:
        """Keyword arguments for ``from_pretrained`` that give the model this label space."""
        if self.task not in ("classify", "token-classify"):
            return {}
        names = self.names or [f"LABEL_{i}" for i in range(self.num_outputs)]
        out = {
            "num_labels": len(names),
            "id2label": {i: str(n) for i, n in enumerate(names)},
            "label2id": {str(n): i for i, n in enumerate(names)},
        }
        if self.task == "classify":
            out["problem_type"] = self.problem_type
        return out


def _is_named(id2label: Optional[dict]) -> bool:
    """True when a config's labels are real names, not transformers' LABEL_<i> placeholders."""
    if not id2label:
        return False
    return not all(re.fullmatch(r"LABEL_\d+", str(v)) for v in id2label.values())


def _arrow_kind(t: pa.DataType) -> tuple[str, bool]:
    """(``names``/``ids``/``values``, is_list) of a label column type."""
    is_list = pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
    inner = t.value_type if is_list else t
    if pa.types.is_dictionary(inner):
        inner = inner.value_type
    if pa.types.is_string(inner) or pa.types.is_large_string(inner):
        return "names", is_list
    if pa.types.is_integer(inner) or pa.types.is_boolean(inner):
        return "ids", is_list
    if pa.types.is_floating(inner) or pa.types.is_decimal(inner):
        return "values", is_list
    raise DataError(f"unsupported label column type {t}; use strings (names), integers (ids) or floats (regression)")


# ------------------------------------------------------------------------------------------------
# Units, row selection and validation (shared by the scan and the read tasks: same function,
# same answer, so the planned row counts always match what the stream yields).


@dataclass
class Unit:
    """A contiguous run of row groups of one Parquet file."""

    index: int
    path: str
    relpath: str
    row_groups: list
    first_row: int
    num_rows: int

    @property
    def file_key(self) -> int:
        return zlib.crc32(self.relpath.encode("utf-8"))

    def where(self, row: int) -> str:
        """``file.parquet row 12`` (row index within the file, 0-based)."""
        return f"{self.path} row {self.first_row + row}"


@dataclass
class Columns:
    text: str
    pair: Optional[str]
    label: str
    """Label column (classify, token-classify), target column (generate), response column (SFT) or
    positive column (embed)."""
    messages: bool = False
    """SFT: ``text`` is a messages column (``label`` is the same column)."""
    negative: Optional[str] = None
    """embed: the hard-negative column, if any."""

    def read(self) -> list:
        return list(dict.fromkeys(c for c in (self.text, self.pair, self.label, self.negative) if c))


@dataclass
class Split:
    """Which rows of a data source a stream uses."""

    role: str = "all"
    """``all``, ``train`` (rows not held out) or ``eval`` (held-out rows)."""
    fraction: float = 0.0
    seed: int = 0

    def mask(self, unit: Unit, n: int) -> np.ndarray:
        if self.role == "all" or self.fraction <= 0:
            return np.ones(n, dtype=bool) if self.role != "eval" else np.zeros(n, dtype=bool)
        held_out = row_uniform(unit.file_key, unit.first_row + np.arange(n), self.seed) < self.fraction
        return held_out if self.role == "eval" else ~held_out


def row_uniform(file_key: int, rows: np.ndarray, seed: int) -> np.ndarray:
    """A stable pseudo-random number in [0, 1) per (file, row, seed): splitmix64 finaliser."""
    with np.errstate(over="ignore"):
        x = rows.astype(np.uint64) + np.uint64(file_key) * np.uint64(0x9E3779B97F4A7C15)
        x = x ^ (np.uint64(seed & 0xFFFFFFFF) * np.uint64(0xD1B54A32D192ED03))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def read_unit_table(fs: pafs.FileSystem, unit: Unit, columns: list) -> pa.Table:
    table = pq.ParquetFile(unit.path, filesystem=fs).read_row_groups(unit.row_groups, columns=columns)
    return table


def label_problem(value: Any, spec: LabelSpec, column: str) -> Optional[str]:
    """Why a label value cannot be used with ``spec`` (None when fine)."""
    if spec.task == "generate":
        return text_problem(value, column)[1]
    if value is None:
        return f"{column}: label is missing (null)"
    multi = spec.problem_type == "multi_label_classification"
    regression = spec.problem_type == "regression"
    if regression:
        values = value if isinstance(value, (list, tuple)) else [value]
        if len(values) != spec.num_outputs:
            return f"{column}: expected {spec.num_outputs} regression value(s), got {len(values)}"
        for v in values:
            if v is None or not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(float(v)):
                return f"{column}: regression target {v!r} is not a number"
        return None
    items = value if multi else [value]
    if multi and not isinstance(value, (list, tuple)):
        return f"{column}: multi-label rows need a list of labels, got {value!r}"
    for item in items:
        if item is None:
            return f"{column}: label list contains null"
        if isinstance(item, str):
            if spec.source != "names":
                return f"{column}: label {item!r} is a name but the column holds ids"
            if item not in spec.label2id:
                known = ", ".join(map(str, spec.names[:10])) + (" ..." if len(spec.names) > 10 else "")
                return f"{column}: unknown label name {item!r} (known: {known})"
        else:
            if isinstance(item, float) and not float(item).is_integer():
                return f"{column}: label id {item!r} is not an integer"
            if not 0 <= int(item) < len(spec.names):
                return f"{column}: label id {int(item)} is outside 0..{len(spec.names) - 1}"
    return None


def row_problems(table: pa.Table, columns: Columns, spec: LabelSpec) -> list:
    """One reason (or None) per row: text, pair text, then label/target."""
    if spec.task == "sft":
        return sft_row_problems(table, columns.text, columns.label, columns.messages)
    if spec.task == "token-classify":
        return _tagged_row_problems(table, columns, spec)
    if spec.task == "embed":
        return _pair_row_problems(table, columns)
    texts = table.column(columns.text).to_pylist()
    pairs = table.column(columns.pair).to_pylist() if columns.pair else None
    labels = table.column(columns.label).to_pylist()
    problems = []
    for i in range(table.num_rows):
        reason = text_problem(texts[i], columns.text)[1]
        if reason is None and pairs is not None:
            reason = text_problem(pairs[i], columns.pair)[1]
        if reason is None:
            reason = label_problem(labels[i], spec, columns.label)
        problems.append(reason)
    return problems


def _tagged_row_problems(table: pa.Table, columns: Columns, spec: LabelSpec) -> list:
    """token-classify: a list of words and one in-set tag per word."""
    from .token_tagging import tags_problem, words_problem

    words = table.column(columns.text).to_pylist()
    tags = table.column(columns.label).to_pylist()
    return [words_problem(w, columns.text) or tags_problem(w, t, spec.names, columns.label) for w, t in zip(words, tags)]


def _pair_row_problems(table: pa.Table, columns: Columns) -> list:
    """embed: anchor, positive and (when configured) hard negative are all usable texts."""
    names = [c for c in (columns.text, columns.label, columns.negative) if c]
    values = [table.column(c).to_pylist() for c in names]
    problems = []
    for i in range(table.num_rows):
        reason = None
        for name, column in zip(names, values):
            reason = text_problem(column[i], name)[1]
            if reason is not None:
                break
        problems.append(reason)
    return problems


def selected_rows(table: pa.Table, unit: Unit, columns: Columns, spec: LabelSpec, split: Split,
                  skip_bad: bool) -> tuple[np.ndarray, list]:
    """Row indices (ascending) a stream uses from this unit, and the problem per row."""
    problems = row_problems(table, columns, spec)
    keep = split.mask(unit, table.num_rows)
    if skip_bad:
        keep &= np.array([p is None for p in problems], dtype=bool)
    return np.nonzero(keep)[0], problems


# ------------------------------------------------------------------------------------------------
# Scan: labels, then validation (Ray tasks, one per unit).


def _label_summary(fs: pafs.FileSystem, unit: Unit, column: str) -> dict:
    values = read_unit_table(fs, unit, [column]).column(column).to_pylist()
    names: Counter = Counter()
    max_id = -1
    lengths = set()
    for v in values:
        items = v if isinstance(v, (list, tuple)) else [v]
        if isinstance(v, (list, tuple)):
            lengths.add(len(v))
        for item in items:
            if isinstance(item, str):
                names[item] += 1
            elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                max_id = max(max_id, int(item))
            elif isinstance(item, bool):
                max_id = max(max_id, int(item))
    return {"names": dict(names), "max_id": max_id, "lengths": sorted(lengths)}


def _validate_unit(fs: pafs.FileSystem, unit: Unit, columns: Columns, spec: LabelSpec,
                   splits: dict) -> dict:
    """Per split role (``train``/``eval``): rows, usable rows, reasons and example bad rows."""
    table = read_unit_table(fs, unit, columns.read())
    problems = row_problems(table, columns, spec)
    good = np.array([p is None for p in problems], dtype=bool)
    out: dict = {"unit": unit.index}
    for role, split in splits.items():
        mask = split.mask(unit, table.num_rows)
        bad = [(i, problems[i]) for i in np.nonzero(mask & ~good)[0]]
        out[role] = {
            "rows": int(mask.sum()),
            "good": int((mask & good).sum()),
            "reasons": dict(Counter(_reason_kind(p) for _, p in bad)),
            "examples": [(unit.where(int(i)), p) for i, p in bad[:MAX_EXAMPLES]],
        }
    return out


def _reason_kind(reason: str) -> str:
    """``label: unknown label name 'x' (known: …)`` → ``label: unknown label name`` (for counts)."""
    return re.sub(r"\s*(\(.*\)|'.*'|-?\d+(\.\.\d+)?|\S*\d\S*)\s*", " ", reason).strip()


def _run_tasks(fn, args_list: list, num_cpus: float) -> list:
    """Run ``fn(*args)`` for each args as Ray tasks (in-process when Ray is not initialised)."""
    import ray

    if not args_list:
        return []
    if not ray.is_initialized():
        return [fn(*args) for args in args_list]
    remote = ray.remote(num_cpus=num_cpus, max_retries=2)(fn)
    return ray.get([remote.remote(*args) for args in args_list])


def discover_units(paths, fs_config, partitioning, target_rows: int) -> tuple[pafs.FileSystem, list[Unit]]:
    from rayformers.pipeline.source import InputError, discover_files, plan_units

    try:
        fs, files = discover_files(paths, fs_config, partitioning)
    except InputError as e:
        raise DataError(str(e)) from e
    units = [
        Unit(index=i, path=u.file.path, relpath=u.file.relpath, row_groups=list(u.row_groups),
             first_row=u.first_row, num_rows=u.num_rows)
        for i, u in enumerate(plan_units(files, target_rows))
    ]
    return fs, units


def check_columns(fs: pafs.FileSystem, units: list[Unit], columns: Columns, role: str) -> pa.DataType:
    """Every file has the configured columns; returns the label column's type (same in all files)."""
    seen: dict[str, pa.DataType] = {}
    for unit in units:
        if unit.path in seen:
            continue
        schema = pq.ParquetFile(unit.path, filesystem=fs).schema_arrow
        for key, col in (("input.text_column", columns.text), ("input.text_pair_column", columns.pair),
                         ("train.label_column/target_column/positive_column", columns.label),
                         ("train.negative_column", columns.negative)):
            if col and col not in schema.names:
                raise DataError(
                    f"{role} data: {key} {col!r} is not a column of {unit.path} (columns: {', '.join(schema.names)})"
                )
        seen[unit.path] = schema.field(columns.label).type
    types = {str(t) for t in seen.values()}
    if len(types) > 1:
        detail = "; ".join(f"{p}: {t}" for p, t in list(seen.items())[:5])
        raise DataError(f"{role} data: column {columns.label!r} has different types across files ({detail})")
    return next(iter(seen.values()))


def infer_label_spec(task: str, label_type: pa.DataType, problem_type: str, labels: Optional[list],
                     model_id2label: Optional[dict], summaries: Optional[list]) -> LabelSpec:
    """The label space: explicit ``train.labels`` > the model's named labels (when they cover the
    data) > the sorted names (or 0..max id) found in the training data."""
    if task in ("generate", "sft", "embed"):
        return LabelSpec(task=task)
    source, is_list = _arrow_kind(label_type)
    if task == "token-classify":
        if not is_list or source == "values":
            raise DataError(f"token-classify needs a list of tag names or ids per row; the label column is {label_type}")
        names = _label_names(source, labels, model_id2label, summaries)
        if not names:
            raise DataError("no tags found in the training data; set train.labels")
        return LabelSpec(task=task, problem_type="token_classification", source=source, names=names,
                         num_outputs=len(names))
    if problem_type == "auto":
        if source == "values":
            problem_type = "regression"
        elif is_list:
            problem_type = "multi_label_classification"
        else:
            problem_type = "single_label_classification"
    if problem_type == "multi_label_classification" and not is_list:
        raise DataError("train.problem_type multi_label_classification needs a list label column (list of names or ids)")
    if problem_type == "regression":
        lengths = sorted({n for s in summaries or [] for n in s["lengths"]}) if is_list else [1]
        if len(lengths) != 1:
            raise DataError(f"regression label lists have different lengths {lengths}; every row needs the same count")
        return LabelSpec(task="classify", problem_type="regression", source="values", num_outputs=lengths[0] or 1)
    if source == "values":
        raise DataError(
            f"label column holds numbers ({label_type}) but train.problem_type is {problem_type}; "
            "use integer ids or names for classification"
        )
    names = _label_names(source, labels, model_id2label, summaries)
    if len(names) < 2 and problem_type == "single_label_classification":
        raise DataError(
            f"found {len(names)} label(s) ({', '.join(names) or 'none'}) in the training data; single-label "
            "classification needs at least 2 (set train.labels to list them)"
        )
    if not names:
        raise DataError("no labels found in the training data; set train.labels")
    return LabelSpec(task="classify", problem_type=problem_type, source=source, names=names, num_outputs=len(names))


def _label_names(source: str, labels: Optional[list], model_id2label: Optional[dict], summaries: Optional[list]) -> list:
    if labels is not None:
        return [str(x) for x in labels]
    model_names = [model_id2label[i] for i in sorted(model_id2label)] if _is_named(model_id2label) else None
    found_names = sorted({n for s in summaries or [] for n in s["names"]})
    max_id = max([s["max_id"] for s in summaries or []] + [-1])
    if source == "names":
        return model_names if model_names and set(found_names) <= set(model_names) else found_names
    return model_names if model_names and max_id < len(model_names) else [f"LABEL_{i}" for i in range(max_id + 1)]


@dataclass
class DataReport:
    """Counts of rows used and left out, with examples; printed and returned with the result."""

    role: str
    rows: int = 0
    used: int = 0
    bad: int = 0
    reasons: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)

    def format(self) -> str:
        if not self.bad:
            return f"{self.role} data: {self.used} rows used"
        reasons = ", ".join(f"{k} ({v})" for k, v in sorted(self.reasons.items(), key=lambda kv: -kv[1]))
        lines = [f"{self.role} data: {self.bad} bad row(s) of {self.rows}: {reasons}"]
        lines += [f"  {where}: {reason}" for where, reason in self.examples[:MAX_EXAMPLES]]
        if self.bad > len(self.examples[:MAX_EXAMPLES]):
            lines.append(f"  ... and {self.bad - len(self.examples[:MAX_EXAMPLES])} more")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"role": self.role, "rows": self.rows, "used": self.used, "bad": self.bad,
                "reasons": dict(self.reasons), "examples": [list(e) for e in self.examples]}


# ------------------------------------------------------------------------------------------------
# Plans: where each row goes.


@dataclass
class Tokenization:
    """What the tokenize stage needs (plain values: shipped to Ray tasks)."""

    tokenizer_path: str
    revision: Optional[str]
    local_files_only: bool
    max_length: Optional[int]
    truncation: str
    max_target_length: Optional[int]
    pass_token_type_ids: bool
    chat_template: Optional[str] = None
    """SFT: the template string rows are rendered with, or None for plain prompt + response."""


@dataclass
class StreamSource:
    """The files of one stream, with the columns, labels and row selection it uses."""

    fs: Any
    units: list
    usable: list
    """Usable rows per unit (same index as ``units``)."""
    columns: Columns
    spec: LabelSpec
    split: Split
    skip_bad: bool

    @property
    def total(self) -> int:
        return int(sum(self.usable))


@dataclass
class TrainPlan:
    """Deterministic order and sharding of the training stream (see the module docstring)."""

    source: StreamSource
    batch_size: int
    """Rows per worker per micro-batch (B)."""
    world_size: int
    accumulation: int
    seed: int
    shuffle: bool
    epochs: int
    total_steps: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size * self.accumulation

    @property
    def steps_per_epoch(self) -> int:
        return self.source.total // self.global_batch

    @property
    def micro_per_epoch(self) -> int:
        return self.steps_per_epoch * self.accumulation

    def unit_order(self, epoch: int) -> np.ndarray:
        n = len(self.source.units)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(n)

    def row_permutation(self, epoch: int, unit_index: int, n: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch, unit_index, 0xB10C]).permutation(n)

    def tasks_for_rank(self, rank: int, start_step: int = 0) -> list:
        """(epoch, unit, offset, expected rows) read tasks of one worker, in stream order."""
        tasks = []
        B, W = self.batch_size, self.world_size
        used_per_epoch = self.micro_per_epoch * W * B
        start_micro = start_step * self.accumulation
        end_micro = self.total_steps * self.accumulation
        for epoch in range(self.epochs):
            epoch_first = epoch * self.micro_per_epoch
            if epoch_first + self.micro_per_epoch <= start_micro or epoch_first >= end_micro:
                continue
            offset = 0
            for u in self.unit_order(epoch):
                n = self.source.usable[u]
                lo, hi = offset, min(offset + n, used_per_epoch)
                offset += n
                if lo >= hi:
                    continue
                count = _rows_for_rank(lo, hi, B, W, rank, epoch_first, start_micro, end_micro)
                if count:
                    tasks.append((epoch, int(u), lo, count))
        return tasks

    def rank_rows(self, epoch: int, unit_index: int, offset: int, n_rows: int, rank: int,
                  start_step: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices into the unit's selected rows, global micro index) of ``rank``'s rows."""
        B, W = self.batch_size, self.world_size
        perm = self.row_permutation(epoch, unit_index, n_rows)
        pos = offset + np.arange(n_rows)
        micro = epoch * self.micro_per_epoch + pos // (W * B)
        keep = (
            ((pos // B) % W == rank)
            & (pos < self.micro_per_epoch * W * B)
            & (micro >= start_step * self.accumulation)
            & (micro < self.total_steps * self.accumulation)
        )
        return perm[keep], micro[keep]


def _rows_for_rank(lo: int, hi: int, B: int, W: int, rank: int, epoch_first: int, start_micro: int,
                   end_micro: int) -> int:
    total = 0
    for chunk in range(lo // B, (hi - 1) // B + 1):
        if chunk % W != rank:
            continue
        micro = epoch_first + chunk // W
        if micro < start_micro or micro >= end_micro:
            continue
        total += min(hi, (chunk + 1) * B) - max(lo, chunk * B)
    return total


@dataclass
class EvalPlan:
    """Eval rows dealt round-robin to workers in file order (never dropped)."""

    source: StreamSource
    world_size: int

    def offsets(self) -> list:
        out, acc = [], 0
        for n in self.source.usable:
            out.append(acc)
            acc += n
        return out


# ------------------------------------------------------------------------------------------------
# Ray Data: read tasks + tokenization.


def _rank_table(table: pa.Table, rows: np.ndarray, columns: Columns) -> pa.Table:
    return table.select(columns.read()).take(pa.array(rows, type=pa.int64()))


def train_read_fn(plan: TrainPlan, task: tuple, rank: int, start_step: int):
    epoch, u, offset, expected = task
    src = plan.source
    unit = src.units[u]
    table = read_unit_table(src.fs, unit, src.columns.read())
    selected, _ = selected_rows(table, unit, src.columns, src.spec, src.split, src.skip_bad)
    if len(selected) != src.usable[u]:
        raise DataError(
            f"{unit.path} changed since the scan: {len(selected)} usable rows in row groups {unit.row_groups}, "
            f"expected {src.usable[u]}. Do not modify training files during a run."
        )
    idx, micro = plan.rank_rows(epoch, u, offset, len(selected), rank, start_step)
    if len(idx) != expected:
        raise DataError(f"{unit.path}: planned {expected} rows for worker {rank}, selected {len(idx)} (a bug)")
    out = _rank_table(table, selected[idx], src.columns)
    out = out.append_column(MICRO_COLUMN, pa.array(micro, type=pa.int64()))
    for start in range(0, out.num_rows, SLICE_ROWS):
        yield out.slice(start, SLICE_ROWS)


def eval_read_fn(plan: EvalPlan, u: int, offset: int, rank: int):
    src = plan.source
    unit = src.units[u]
    table = read_unit_table(src.fs, unit, src.columns.read())
    selected, _ = selected_rows(table, unit, src.columns, src.spec, src.split, src.skip_bad)
    keep = (offset + np.arange(len(selected))) % plan.world_size == rank
    out = _rank_table(table, selected[keep], src.columns)
    for start in range(0, out.num_rows, SLICE_ROWS):
        yield out.slice(start, SLICE_ROWS)


def planned_datasource(name: str, tasks: list):
    """A Ray Data ``Datasource`` whose read tasks are the given ``(read_fn, num_rows, path)``, in
    order (Ray is imported lazily: the planning code above runs without it)."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class PlannedDatasource(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_name(self):
            return name

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [
                ReadTask(fn, BlockMetadata(num_rows=rows, size_bytes=None, exec_stats=None, input_files=[path]))
                for fn, rows, path in tasks
            ]

    return PlannedDatasource()


_TOKENIZERS: dict = {}


def _tokenizer(tok: Tokenization):
    key = (tok.tokenizer_path, tok.revision, tok.local_files_only)
    if key not in _TOKENIZERS:
        from rayformers.operators.loading import load_tokenizer

        _TOKENIZERS[key] = load_tokenizer(tok.tokenizer_path, tok.revision, tok.local_files_only)
    return _TOKENIZERS[key]


def _texts(batch: pa.Table, column: str) -> list:
    """The column's strings (UTF-8 binary decoded); rows reaching this stage passed the checks."""
    return [text_problem(v, column)[0] for v in batch.column(column).to_pylist()]


def tokenize_batch(batch: pa.Table, tok: Tokenization, columns: Columns, spec: LabelSpec) -> pa.Table:
    """Ray Data stage: texts → ``input_ids`` (+ ``token_type_ids`` for pairs), labels → tensors.

    Labels: single-label → int64 id; multi-label → float32 multi-hot list; regression → float32
    (list when several outputs); seq2seq → target token ids (list<int32>)."""
    tokenizer = _tokenizer(tok)
    truncation: Any = True if tok.truncation == "longest_first" else tok.truncation
    if spec.task == "token-classify":
        from .token_tagging import tokenize_tagged

        ids, labels = tokenize_tagged(tokenizer, batch.column(columns.text).to_pylist(),
                                      batch.column(columns.label).to_pylist(), spec.label2id, tok.max_length, truncation)
        out = {"input_ids": pa.array(ids, type=pa.list_(pa.int32())), "labels": pa.array(labels, type=pa.list_(pa.int32()))}
        if MICRO_COLUMN in batch.column_names:
            out[MICRO_COLUMN] = batch.column(MICRO_COLUMN)
        return pa.table(out)
    if spec.task in ("sft", "embed"):
        if spec.task == "sft":
            out = tokenize_sft(batch, tokenizer, columns.text, columns.label, columns.messages, tok.chat_template,
                               tok.max_length)
        else:
            from .embedding_training import tokenize_pairs

            texts = {role: _texts(batch, column) for role, column in
                     (("anchor", columns.text), ("positive", columns.label), ("negative", columns.negative)) if column}
            out = tokenize_pairs(tokenizer, texts, tok.max_length, truncation)
        if MICRO_COLUMN in batch.column_names:
            out[MICRO_COLUMN] = batch.column(MICRO_COLUMN)
        return pa.table(out)
    texts = _texts(batch, columns.text)
    pairs = _texts(batch, columns.pair) if columns.pair else None
    enc = tokenizer(texts, text_pair=pairs, truncation=truncation, max_length=tok.max_length)
    out = {"input_ids": pa.array(enc["input_ids"], type=pa.list_(pa.int32()))}
    if pairs is not None and tok.pass_token_type_ids and "token_type_ids" in enc:
        out["token_type_ids"] = pa.array(enc["token_type_ids"], type=pa.list_(pa.int8()))
    values = batch.column(columns.label).to_pylist()
    if spec.task == "generate":
        targets = tokenizer(text_target=_texts(batch, columns.label), truncation=True, max_length=tok.max_target_length)
        out["labels"] = pa.array(targets["input_ids"], type=pa.list_(pa.int32()))
    elif spec.problem_type == "regression":
        if spec.num_outputs == 1:
            flat = [float(v[0]) if isinstance(v, (list, tuple)) else float(v) for v in values]
            out["labels"] = pa.array(flat, type=pa.float32())
        else:
            out["labels"] = pa.array([[float(x) for x in v] for v in values], type=pa.list_(pa.float32()))
    elif spec.problem_type == "multi_label_classification":
        label2id = spec.label2id
        hot = np.zeros((len(values), spec.num_outputs), dtype=np.float32)
        for i, v in enumerate(values):
            for item in v:
                hot[i, label2id[item] if isinstance(item, str) else int(item)] = 1.0
        out["labels"] = pa.array(list(hot), type=pa.list_(pa.float32()))
    else:
        label2id = spec.label2id
        ids = [label2id[v] if isinstance(v, str) else int(v) for v in values]
        out["labels"] = pa.array(ids, type=pa.int64())
    if MICRO_COLUMN in batch.column_names:
        out[MICRO_COLUMN] = batch.column(MICRO_COLUMN)
    return pa.table(out)


def build_stream(name: str, tasks: list, tok: Tokenization, columns: Columns, spec: LabelSpec,
                 io_num_cpus: float, tokenizer_num_cpus: float, tokenizer_batch_size: int):
    """read (planned tasks) → tokenize (map_batches tasks), order preserved."""
    import ray

    source = planned_datasource(name, tasks)
    ds = ray.data.read_datasource(source, num_cpus=io_num_cpus)
    ds = ds.map_batches(
        tokenize_batch,
        fn_kwargs={"tok": tok, "columns": columns, "spec": spec},
        batch_size=tokenizer_batch_size,
        batch_format="pyarrow",
        num_cpus=tokenizer_num_cpus,
        zero_copy_batch=True,
    )
    return ds


def train_stream(plan: TrainPlan, rank: int, start_step: int, tok: Tokenization, compute) -> Any:
    tasks = []
    for task in plan.tasks_for_rank(rank, start_step):
        epoch, u, offset, count = task

        def read(task=task):
            yield from train_read_fn(plan, task, rank, start_step)

        tasks.append((read, count, plan.source.units[u].path))
    return build_stream(f"train_rank{rank}", tasks, tok, plan.source.columns, plan.source.spec,
                        compute.io_num_cpus, compute.tokenizer_num_cpus, compute.tokenizer_batch_size)


def eval_stream(plan: EvalPlan, rank: int, tok: Tokenization, compute) -> Any:
    tasks = []
    offsets = plan.offsets()
    for u, unit in enumerate(plan.source.units):
        n = plan.source.usable[u]
        count = sum(1 for k in range(offsets[u], offsets[u] + n) if k % plan.world_size == rank)
        if not count:
            continue

        def read(u=u):
            yield from eval_read_fn(plan, u, offsets[u], rank)

        tasks.append((read, count, unit.path))
    return build_stream(f"eval_rank{rank}", tasks, tok, plan.source.columns, plan.source.spec,
                        compute.io_num_cpus, compute.tokenizer_num_cpus, compute.tokenizer_batch_size)


def _ordered_options(base=None):
    from ray.data import ExecutionOptions

    options = ExecutionOptions() if base is None else base
    options.preserve_order = True
    return options


def make_data_config(train_plan: TrainPlan, eval_plan: Optional[EvalPlan], tok: Tokenization, compute,
                     resume_from: Optional[str]):
    """A Ray Train ``DataConfig`` handing every worker its own deterministic shard.

    ``configure`` runs each time the worker group (re)starts. It looks up the run's latest
    checkpoint *committed in Ray's snapshot* (``resume_from`` is the run directory) — the one
    ``get_checkpoint()`` hands the workers — so a restarted worker's stream begins at the step it
    resumes from instead of re-reading and re-tokenizing consumed rows. (A checkpoint uploaded by
    a worker that died before Ray registered it is ignored, as Ray ignores it.)
    """
    from ray.train import DataConfig

    class ShardedDataConfig(DataConfig):
        def __init__(self):
            super().__init__(datasets_to_split=[])

        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            # Ray Train asks once per dataset name, on the first get_dataset_shard(name).
            if world_size != train_plan.world_size:
                raise DataError(
                    f"the data plan was made for {train_plan.world_size} workers but {world_size} started; "
                    "elastic worker counts are not supported"
                )
            start_step = 0
            if resume_from and "train" in datasets:
                from .checkpoints import latest_checkpoint

                latest = latest_checkpoint(resume_from, committed_only=True)
                start_step = latest.step if latest is not None else 0
            output = [{} for _ in range(world_size)]
            for rank in range(world_size):
                for name in datasets:
                    if name == "train":
                        ds = train_stream(train_plan, rank, start_step, tok, compute)
                    elif name == "eval" and eval_plan is not None:
                        ds = eval_stream(eval_plan, rank, tok, compute)
                    else:
                        raise DataError(f"no stream named {name!r}")
                    ds.context.execution_options = _ordered_options(self._resolve_execution_options(name))
                    output[rank][name] = ds.iterator()
            return output

    return ShardedDataConfig()


# ------------------------------------------------------------------------------------------------
# Collation inside the worker (padding only: tokenization already happened in Ray Data).


def collate(batch: pa.Table, pad_token_id: int, pack_capacity: Optional[int] = None) -> dict:
    """Dynamic padding of one micro-batch; returns CPU tensors (the training loop checks the
    micro-batch index on the host, then copies the model inputs to the device). With
    ``pack_capacity`` (SFT packing) the rows are packed instead (:func:`.sft_data.pack_rows`)."""
    import torch

    if pack_capacity is not None:
        packed = pack_rows(batch.column("input_ids").to_pylist(), batch.column("labels").to_pylist(), pack_capacity,
                           pad_token_id)
        out = {k: torch.from_numpy(v) for k, v in packed.items()}
        if MICRO_COLUMN in batch.column_names:
            out[MICRO_COLUMN] = torch.from_numpy(batch.column(MICRO_COLUMN).to_numpy().astype(np.int64))
        return out
    if "positive_input_ids" in batch.column_names:
        from .embedding_training import collate_pairs

        return collate_pairs(batch, pad_token_id)
    ids, lengths = pad_list_column(batch.column("input_ids"), pad_token_id)
    out = {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy((np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)),
    }
    if "token_type_ids" in batch.column_names:
        out["token_type_ids"] = torch.from_numpy(pad_list_column(batch.column("token_type_ids"), 0)[0])
    labels = batch.column("labels")
    if pa.types.is_list(labels.type):
        if pa.types.is_floating(labels.type.value_type):
            out["labels"] = torch.tensor(np.stack(labels.to_numpy(zero_copy_only=False)), dtype=torch.float32)
        else:
            out["labels"] = torch.from_numpy(pad_list_column(labels, -100)[0])
    elif pa.types.is_floating(labels.type):
        out["labels"] = torch.from_numpy(labels.to_numpy().astype(np.float32))
    else:
        out["labels"] = torch.from_numpy(labels.to_numpy().astype(np.int64))
    if PROMPT_LENGTH_COLUMN in batch.column_names:
        out[PROMPT_LENGTH_COLUMN] = torch.from_numpy(batch.column(PROMPT_LENGTH_COLUMN).to_numpy().astype(np.int64))
    if MICRO_COLUMN in batch.column_names:
        out[MICRO_COLUMN] = torch.from_numpy(batch.column(MICRO_COLUMN).to_numpy().astype(np.int64))
    return out


def make_collate_fn(pad_token_id: int, pack_capacity: Optional[int] = None):
    from ray.data.collate_fn import ArrowBatchCollateFn

    class PadCollate(ArrowBatchCollateFn):
        def __call__(self, batch: pa.Table) -> dict:
            return collate(batch, pad_token_id, pack_capacity)

    return PadCollate()


# ------------------------------------------------------------------------------------------------
# Everything together (driver side).


@dataclass
class PreparedData:
    """The scanned and planned data of a run."""

    spec: LabelSpec
    train: TrainPlan
    eval: Optional[EvalPlan]
    reports: list

    def fingerprint(self) -> str:
        """What fixes the rows of every optimizer step: files, usable rows, labels, global batch,
        seed and shuffle. A checkpoint is only resumed under the same fingerprint (the number of
        workers may change as long as the global batch stays the same)."""
        import hashlib
        import json

        src = self.train.source
        blob = {
            "units": [(u.relpath, u.row_groups, u.num_rows) for u in src.units],
            "usable": list(src.usable),
            "split": [src.split.role, src.split.fraction, src.split.seed],
            "labels": [self.spec.problem_type, list(map(str, self.spec.names)), self.spec.num_outputs],
            "global_batch": self.train.global_batch,
            "seed": self.train.seed,
            "shuffle": self.train.shuffle,
        }
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sft_columns(cfg) -> Columns:
    """SFT columns: ``train.messages_column``, or ``train.prompt_column`` (default ``input.text_column``)
    and ``train.response_column`` (default ``train.target_column``)."""
    t = cfg.train
    if t.messages_column:
        return Columns(text=t.messages_column, pair=None, label=t.messages_column, messages=True)
    return Columns(text=t.prompt_column or cfg.input.text_column, pair=None,
                   label=t.response_column or t.target_column)


def prepare_data(cfg, world_size: int, model_id2label: Optional[dict], causal_lm: bool = False) -> PreparedData:
    """Scan, validate and plan the training (and eval) data of a :class:`TrainJobConfig`.
    ``causal_lm``: ``generate`` on a decoder-only model, i.e. supervised fine-tuning rows.

    Raises :class:`DataError` for unusable data, and for bad rows under ``bad_rows: fail``."""
    t = cfg.train
    task = cfg.model.task
    label_column = {"generate": t.target_column, "embed": t.positive_column}.get(task, t.label_column)
    columns = Columns(text=cfg.input.text_column, pair=cfg.input.text_pair_column if task != "embed" else None,
                      label=label_column, negative=t.negative_column if task == "embed" else None)
    data_task = task
    if causal_lm:
        columns, data_task = sft_columns(cfg), "sft"
    global_batch = t.batch_size_per_worker * world_size * t.gradient_accumulation_steps
    target_rows = max(4096, global_batch)
    io_cpus = cfg.compute.io_num_cpus

    fs, units = discover_units(cfg.input.path, cfg.input.filesystem, cfg.input.partitioning, target_rows)
    label_type = check_columns(fs, units, columns, "training")
    eval_units: list = []
    eval_fs = None
    if t.eval_path:
        eval_fs, eval_units = discover_units(t.eval_path, cfg.input.filesystem, cfg.input.partitioning, target_rows)
        eval_type = check_columns(eval_fs, eval_units, columns, "eval")
        if task in ("classify", "token-classify") and _arrow_kind(eval_type) != _arrow_kind(label_type):
            raise DataError(
                f"eval data: label column {columns.label!r} has type {eval_type}, training data has {label_type}"
            )

    summaries = None
    needs_vocabulary = task in ("classify", "token-classify") and t.labels is None
    if needs_vocabulary:
        summaries = _run_tasks(_label_summary, [(fs, u, columns.label) for u in units], io_cpus)
    spec = infer_label_spec(data_task, label_type, t.problem_type, t.labels, model_id2label, summaries)

    if t.eval_split > 0:
        train_split = Split("train", t.eval_split, t.seed)
        eval_split: Optional[Split] = Split("eval", t.eval_split, t.seed)
    else:
        train_split, eval_split = Split("all"), None
    splits = {"train": train_split} if eval_split is None else {"train": train_split, "eval": eval_split}
    results = _run_tasks(_validate_unit, [(fs, u, columns, spec, splits) for u in units], io_cpus)
    results.sort(key=lambda r: r["unit"])
    eval_results = []
    if eval_units:
        eval_results = _run_tasks(
            _validate_unit, [(eval_fs, u, columns, spec, {"eval": Split("all")}) for u in eval_units], io_cpus
        )
        eval_results.sort(key=lambda r: r["unit"])

    skip_bad = t.bad_rows == "skip"
    reports = [_summarise("training", [r["train"] for r in results])]
    if eval_split is not None:
        reports.append(_summarise("eval", [r["eval"] for r in results]))
    if eval_results:
        reports.append(_summarise("eval", [r["eval"] for r in eval_results]))
    bad_reports = [r for r in reports if r.bad]
    if bad_reports and not skip_bad:
        text = "\n".join(r.format() for r in bad_reports)
        raise DataError(
            f"{text}\nFix these rows, or set train.bad_rows: skip to leave them out (they are then counted "
            "and reported)."
        )

    train_source = StreamSource(
        fs=fs, units=units, usable=[r["train"]["good"] for r in results], columns=columns, spec=spec,
        split=train_split, skip_bad=True,
    )
    eval_plan = None
    if eval_split is not None:
        eval_source = StreamSource(
            fs=fs, units=units, usable=[r["eval"]["good"] for r in results], columns=columns, spec=spec,
            split=eval_split, skip_bad=True,
        )
        eval_plan = EvalPlan(eval_source, world_size)
    elif eval_units:
        eval_source = StreamSource(
            fs=eval_fs, units=eval_units, usable=[r["eval"]["good"] for r in eval_results], columns=columns,
            spec=spec, split=Split("all"), skip_bad=True,
        )
        eval_plan = EvalPlan(eval_source, world_size)
    if eval_plan is not None and eval_plan.source.total == 0:
        raise DataError("the eval data has no usable rows (check train.eval_split / train.eval_path)")

    n = train_source.total
    steps_per_epoch = n // global_batch
    if steps_per_epoch == 0:
        raise DataError(
            f"{n} usable training rows are fewer than one global batch of {global_batch} "
            f"(batch_size_per_worker {t.batch_size_per_worker} x {world_size} workers x "
            f"gradient_accumulation_steps {t.gradient_accumulation_steps}); lower the batch size"
        )
    total_steps = t.max_steps if t.max_steps is not None else t.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    plan = TrainPlan(
        source=train_source, batch_size=t.batch_size_per_worker, world_size=world_size,
        accumulation=t.gradient_accumulation_steps, seed=t.seed, shuffle=t.shuffle, epochs=epochs,
        total_steps=total_steps,
    )
    return PreparedData(spec=spec, train=plan, eval=eval_plan, reports=reports)


def _summarise(role: str, parts: list) -> DataReport:
    report = DataReport(role=role)
    reasons: Counter = Counter()
    for part in parts:
        report.rows += part["rows"]
        report.used += part["good"]
        reasons.update(part["reasons"])
        report.examples.extend(tuple(e) for e in part["examples"])
    report.bad = report.rows - report.used
    report.reasons = dict(reasons)
    report.examples = report.examples[:MAX_EXAMPLES]
    return report


__all__ = [
    "Columns",
    "DataError",
    "DataReport",
    "EvalPlan",
    "LabelSpec",
    "MICRO_COLUMN",
    "Split",
    "StreamSource",
    "Tokenization",
    "TrainPlan",
    "Unit",
    "PreparedData",
    "collate",
    "infer_label_spec",
    "prepare_data",
    "make_collate_fn",
    "make_data_config",
    "pad_list_column",
    "row_problems",
    "row_uniform",
]
