"""Output commit protocol: staged files that say which rows they hold, a check by counts, publish.

Ray's file sinks write final paths directly, so a crash leaves partial output and a re-run
duplicates rows. Here every row travels with its place in the input (row group + index, the
hidden columns of :mod:`.source`), and every staged file records in its Parquet footer which row
ranges of which row groups it holds (``ranges``), with its row, error and token counts. The
driver never collects row ids:

* **Check by counts** (:func:`collect_staged`): from the footers alone, the staged ranges of each
  row group must tile it exactly, ``[0, num_rows)`` with no gap and no overlap (the footer of the
  input file says how many rows it has). Memory and time grow with the staged files and row
  groups, not with rows. A gap is an :class:`IncompleteOutputError` naming the file, row group
  and rows; a file whose rows another file already holds (a retried write task that bundled
  differently) is deleted, or rewritten without the repeated rows, deterministically (files in
  name order, first one wins). A retried write of the same rows gets the same name (a hash of
  its ranges), so it replaces rather than duplicates.
* **Resume by ranges** (:func:`prepare_output`): an interrupted run's staged ranges are handed to
  the read, which skips those rows (whole row groups are not even read): nothing staged is
  scored again, and no id is shipped anywhere. A published output whose input gained new files
  is resumed the same way: its files are staged again (hard links on local disks), so only the
  new files are scored; a changed or vanished input file is refused (:mod:`.input_changes`).
* **Right-sized files**: a write task waits for ``output.stage_rows`` rows (Ray's
  ``min_rows_per_write``): that is what a crash can lose per write in flight. Before publishing,
  staged files smaller than half of ``output.target_file_mb`` are merged, in parallel Ray tasks,
  into files of about that size (:func:`compact_staged`); a crash while merging is safe, since a
  merged file holds exactly its sources' ranges and the overlap rule drops whichever copy comes
  second.
* **Publish**: ``_manifest.json`` into the staged directory, one rename into place (local, HDFS),
  or on object stores (no rename) a parallel server-side copy, ``_SUCCESS`` last. Readers trust
  only ``_SUCCESS``. What is replaced must be ours (:mod:`.output_safety`).

Layout::

    <parent>/.<name>.rayformers-staging/job.json          config + fingerprint of the run
    <parent>/.<name>.rayformers-staging/data/part-*.parquet
    <output>/part-*.parquet, <output>/_manifest.json, <output>/_SUCCESS   (after publish)
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import posixpath
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayformers.operators.records import ERROR_COLUMN
from rayformers.operators.tokenize import STAGE_TIME_PREFIX

from .output_safety import (
    JOB_FILE,
    MANIFEST,
    OUTPUT_FORMAT,
    SUCCESS,
    OutputError,
    UnsafeOutputError,
    check_replaceable,
    check_staging_is_ours,
    foreign_entries,
    sibling_path,
)
from .source import HIDDEN_COLUMNS, ROW_COLUMN, UNIT_COLUMN

logger = logging.getLogger("rayformers.pipeline")

FOOTER_KEY = b"rayformers"
"""Parquet key-value metadata of a staged file: ``{"ranges": [[unit, start, end], ...], "rows",
"errors", "tokens"}`` with ranges in the file's row order."""

IO_THREADS = 16
"""Concurrent footer reads / object copies on the driver (object stores answer each in ~10 ms)."""


class IncompleteOutputError(RuntimeError):
    """Rows are missing from the staged output (the job must be resumed)."""


class ErrorBudgetExceeded(RuntimeError):
    """More rows failed than ``output.max_error_fraction`` allows; ``.report`` has the counts."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


def staging_path(output_path: str) -> str:
    """Sibling hidden directory, so that listing the output never shows half-written parts."""
    return sibling_path(output_path, "staging")


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _list_files(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    if not _exists(fs, path):
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


def _write_text(fs: pafs.FileSystem, path: str, text: str) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as f:
        f.write(text.encode())
    fs.move(tmp, path)


def _read_json(fs: pafs.FileSystem, path: str) -> Optional[dict]:
    if not _exists(fs, path):
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


# ------------------------------------------------------------------------------------------------
# Write tasks


def split_stage_columns(table: pa.Table) -> tuple[pa.Table, dict]:
    """Remove the ``_stage_<name>_s`` timing columns and return their sums."""
    import pyarrow.compute as pc

    stages = {}
    keep = []
    for name in table.column_names:
        if name.startswith(STAGE_TIME_PREFIX):
            stage = name[len(STAGE_TIME_PREFIX) : -2]
            stages[stage] = float(pc.sum(table.column(name)).as_py() or 0.0)
        else:
            keep.append(name)
    return table.select(keep), stages


def row_ranges(table: pa.Table) -> tuple[pa.Table, list[list]]:
    """Sort rows by their place in the input and return ``(table without the hidden columns,
    [[unit, start, end], ...])``: the runs of consecutive rows, in the sorted table's order.

    An input row may fill several output rows in a row (one per window of a long text,
    ``chunk_aggregate: none``; the sort is stable, so they stay in window order): a repeat
    continues its run, and the ranges count input rows, not output rows.

    Vectorised (Arrow sort, numpy run detection): a write task never loops over rows."""
    import numpy as np
    import pyarrow.compute as pc

    units = table.column(UNIT_COLUMN)
    if pa.types.is_dictionary(units.type):
        units = units.cast(pa.string())
    table = table.set_column(table.column_names.index(UNIT_COLUMN), UNIT_COLUMN, units)
    table = table.sort_by([(UNIT_COLUMN, "ascending"), (ROW_COLUMN, "ascending")])
    encoded = pc.dictionary_encode(table.column(UNIT_COLUMN).combine_chunks())
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    names = encoded.dictionary.to_pylist()
    rows = table.column(ROW_COLUMN).to_numpy().astype(np.int64)
    if len(rows) == 0:
        return table.drop_columns(list(HIDDEN_COLUMNS)), []
    step = np.diff(rows)
    breaks = np.flatnonzero((np.diff(codes) != 0) | ((step != 1) & (step != 0))) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(rows)]])
    ranges = [[names[codes[s]], int(rows[s]), int(rows[e - 1]) + 1] for s, e in zip(starts, ends)]
    return table.drop_columns(list(HIDDEN_COLUMNS)), ranges


def _counts(table: pa.Table) -> tuple[int, int]:
    import pyarrow.compute as pc

    errors = int(table.num_rows - pc.sum(pc.is_null(table.column(ERROR_COLUMN)).cast(pa.int64())).as_py())
    tokens = int(pc.sum(table.column("num_tokens")).as_py() or 0) if "num_tokens" in table.column_names else 0
    return errors, tokens


def _write_file(fs: pafs.FileSystem, data_dir: str, name: str, table: pa.Table, info: dict, compression: str) -> None:
    meta = dict(table.schema.metadata or {})
    meta[FOOTER_KEY] = json.dumps(info).encode()
    table = table.replace_schema_metadata(meta)
    final = posixpath.join(data_dir, name)
    tmp = posixpath.join(data_dir, f".tmp-{uuid.uuid4().hex}-{name}")
    fs.create_dir(data_dir, recursive=True)
    pq.write_table(table, tmp, filesystem=fs, compression=compression)
    fs.move(tmp, final)


def write_part(
    fs: pafs.FileSystem,
    data_dir: str,
    table: pa.Table,
    compression: str,
    ranges: Optional[list] = None,
    name_hint: Optional[str] = None,
) -> dict:
    """Write one staged file atomically (temp name, then rename); returns its statistics.

    Rows tagged with the hidden place columns are sorted and their ranges recorded; a table
    without them (the ETL's rewrite of a finished run) passes explicit ``ranges`` or none, and a
    ``name_hint`` that makes its name deterministic."""
    start = time.perf_counter()
    table, stages = split_stage_columns(table)
    stats = {"rows": table.num_rows, "errors": 0, "tokens": 0, "stages": stages, "file": None}
    if table.num_rows == 0:
        return stats
    if UNIT_COLUMN in table.column_names:
        table, ranges = row_ranges(table)
    errors, tokens = _counts(table)
    if ranges:  # input rows, however many output rows each fills
        stats["rows"] = sum(b - a for _, a, b in ranges)
    stats.update(errors=errors, tokens=tokens)
    identity = json.dumps(ranges) if ranges else (name_hint or uuid.uuid4().hex)
    name = f"part-{hashlib.sha1(identity.encode()).hexdigest()[:24]}.parquet"
    info = {"ranges": ranges or [], "rows": stats["rows"], "errors": errors, "tokens": tokens}
    _write_file(fs, data_dir, name, table, info, compression)
    stats["file"] = name
    stats["stages"]["write"] = time.perf_counter() - start
    return stats


DROPPED_DIR = "dropped"
"""Staging subdirectory of the rows a keep rule dropped (beside ``data``)."""


def split_by_keep(table: pa.Table, keep: str, full_rows: bool, id_column: Optional[str] = None):
    """``(kept, dropped)`` rows of ``table`` under the keep rule: a row is kept where the rule is
    true or the row is an error record (errors are never dropped); a null condition drops. With
    ``full_rows`` false the dropped rows keep only what the accounting needs (their place, id,
    error and stage timings): they are counted, not published."""
    import pyarrow.compute as pc

    from .keep_rules import keep_mask

    mask = pc.or_(keep_mask(table, keep), pc.is_valid(table.column(ERROR_COLUMN)))
    dropped = table.filter(pc.invert(mask))
    if not full_rows:
        wanted = {*HIDDEN_COLUMNS, ERROR_COLUMN, id_column}
        dropped = dropped.select([c for c in dropped.column_names if c in wanted or c.startswith(STAGE_TIME_PREFIX)])
    return table.filter(mask), dropped


def make_datasink(fs: pafs.FileSystem, data_dir: str, compression: str, stage_rows: int,
                  keep: Optional[str] = None, dropped_dir: Optional[str] = None, dropped_full_rows: bool = False,
                  id_column: Optional[str] = None):
    """A Ray Data ``Datasink`` writing atomic staged files of at least ``stage_rows`` rows.

    With a ``keep`` rule each write splits its rows (:func:`split_by_keep`): kept rows to
    ``data_dir``, dropped rows to ``dropped_dir``, each file with the ranges it holds, so the
    driver's check by counts sees every input row once, kept or dropped."""
    from ray.data.block import BlockAccessor
    from ray.data.datasource import Datasink

    class StagingParquetDatasink(Datasink):
        def __init__(self):
            self.results: list[dict] = []

        def get_name(self) -> str:
            return "WriteStagedParquet"

        @property
        def min_rows_per_write(self) -> Optional[int]:
            return int(stage_rows)

        def write(self, blocks: Iterable, ctx) -> dict:
            tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
            tables = [t for t in tables if t.num_rows]
            if not tables:
                return {"rows": 0, "errors": 0, "tokens": 0, "stages": {}, "file": None}
            table = pa.concat_tables(tables, promote_options="permissive")
            if keep is None:
                return write_part(fs, data_dir, table, compression)
            kept, dropped = split_by_keep(table, keep, dropped_full_rows, id_column)
            stats = write_part(fs, data_dir, kept, compression)
            gone = write_part(fs, dropped_dir, dropped, compression)
            stats["dropped"] = gone["rows"]
            stats["rows"] += gone["rows"]
            for k, v in gone["stages"].items():
                stats["stages"][k] = stats["stages"].get(k, 0.0) + v
            return stats

        def on_write_complete(self, write_result) -> None:
            self.results = list(write_result.write_returns)

    return StagingParquetDatasink()


# ------------------------------------------------------------------------------------------------
# Reading what is staged (footers only)


@dataclass
class StagedFile:
    path: str
    rows: int
    errors: int
    tokens: int
    size: int
    ranges: list
    dropped: bool = False
    """Rows a keep rule dropped (staged in ``dropped/``, published to ``output.dropped_path``)."""

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)


def _read_footer(fs: pafs.FileSystem, info: pafs.FileInfo) -> StagedFile:
    with fs.open_input_file(info.path) as f:
        md = pq.read_metadata(f)
    raw = (md.metadata or {}).get(FOOTER_KEY)
    if raw is None:
        raise IncompleteOutputError(
            f"staged file {info.path} has no rayformers footer: it was not written by this version's commit "
            f"protocol; start over with output.mode=overwrite"
        )
    d = json.loads(raw.decode())
    return StagedFile(info.path, int(d["rows"]), int(d["errors"]), int(d["tokens"]), int(info.size or 0), d["ranges"])


def read_staged(fs: pafs.FileSystem, data_dir: str, dropped_dir: Optional[str] = None) -> list[StagedFile]:
    """Footers of every staged file, in name order; temp files of writes that died are removed.
    With ``dropped_dir``, the dropped rows' files too (marked ``dropped``), in the same order."""
    files = _read_staged_dir(fs, data_dir)
    if dropped_dir is not None:
        for f in _read_staged_dir(fs, dropped_dir):
            f.dropped = True
            files.append(f)
        files.sort(key=lambda f: (f.name, f.dropped))
    return files


def _read_staged_dir(fs: pafs.FileSystem, data_dir: str) -> list[StagedFile]:
    infos = []
    for info in _list_files(fs, data_dir):
        name = posixpath.basename(info.path)
        if name.startswith(".tmp-"):
            fs.delete_file(info.path)  # a write that died before its rename: never counted
        elif name.endswith(".parquet"):
            infos.append(info)
    with ThreadPoolExecutor(IO_THREADS) as pool:
        return list(pool.map(lambda i: _read_footer(fs, i), infos))


class Coverage:
    """Row ranges already accounted for, per unit, kept merged: ``O(units)`` once complete."""

    def __init__(self):
        self.by_unit: dict[str, list[list[int]]] = {}

    def overlap(self, unit: str, a: int, b: int) -> list[tuple[int, int]]:
        out = []
        spans = self.by_unit.get(unit, [])
        i = max(0, bisect.bisect_right(spans, [a, float("inf")]) - 1)
        while i < len(spans) and spans[i][0] < b:
            lo, hi = max(a, spans[i][0]), min(b, spans[i][1])
            if lo < hi:
                out.append((lo, hi))
            i += 1
        return out

    def add(self, unit: str, a: int, b: int) -> None:
        spans = self.by_unit.setdefault(unit, [])
        i = bisect.bisect_left(spans, [a, b])
        if i > 0 and spans[i - 1][1] >= a:  # touches the previous span: extend it
            i -= 1
            spans[i][1] = max(spans[i][1], b)
        else:
            spans.insert(i, [a, b])
        while i + 1 < len(spans) and spans[i + 1][0] <= spans[i][1]:
            spans[i][1] = max(spans[i][1], spans[i + 1][1])
            del spans[i + 1]

    def done(self) -> dict[str, list[tuple[int, int]]]:
        return {u: [(a, b) for a, b in s] for u, s in self.by_unit.items()}


def staged_ranges(files: Sequence[StagedFile]) -> dict[str, list[tuple[int, int]]]:
    """Unit → merged staged row ranges (what a resume skips)."""
    cov = Coverage()
    for f in files:
        for unit, a, b in f.ranges:
            cov.add(unit, a, b)
    return cov.done()


# ------------------------------------------------------------------------------------------------
# Driver side: modes, resume, finalize, compact, publish


@dataclass
class OutputState:
    """What ``prepare_output`` found and decided."""

    fs: pafs.FileSystem
    output_path: str
    staging_dir: str
    data_dir: str
    already_complete: bool = False
    resumed_rows: int = 0
    done: dict = field(default_factory=dict)
    """Unit key → row ranges staged by an interrupted attempt (skipped by the read)."""
    new_input_files: int = 0
    """``resume`` of a published output: input files added since it was published (scored now;
    the published rows are kept)."""
    dropped_dir: Optional[str] = None
    """With a keep rule: the staging directory of the dropped rows (``<staging>/dropped``)."""
    dropped_path: Optional[str] = None
    """``output.dropped_path``: where the dropped rows are published (None: only counted)."""


@dataclass
class OutputCheck:
    """What :func:`check_output_mode` found, for ``prepare_output`` to act on."""

    out_exists: bool = False
    stage_exists: bool = False
    finished: bool = False
    """``resume``: the output is a published run of this configuration."""
    new_files: list = field(default_factory=list)
    """``resume`` of a published run: input files it has not scored."""


def check_output_mode(
    fs: pafs.FileSystem,
    output_path: str,
    mode: str,
    fingerprint: str,
    input_files: Optional[Sequence] = None,
) -> OutputCheck:
    """Every refusal ``output.mode`` can give, reading only listings and small JSON files: run by
    the pre-flight (so ``run`` refuses before Ray starts and ``plan`` refuses like a run) and again
    by :func:`prepare_output` under the output's lock.

    ``input_files`` (the input as it is now): ``resume`` of a published output compares it with
    the manifest's record of the input (:mod:`.input_changes`): new files are to be scored, a
    changed or vanished file is refused naming it."""
    from .input_changes import compare_input, refuse_finished_changes

    staging = staging_path(output_path)
    check = OutputCheck()
    check.out_exists = _exists(fs, output_path) and bool(_list_files(fs, output_path))
    check.stage_exists = check_staging_is_ours(fs, staging)
    if mode in ("overwrite", "resume"):
        # Whatever the mode, publishing replaces output_path: it must be empty or ours.
        check_replaceable(fs, output_path, why=f"output.mode={mode}")
    if mode == "error-if-exists":
        if check.out_exists:
            raise OutputError(
                f"output.path {output_path} already exists; choose output.mode=overwrite to replace it "
                f"or output.mode=resume to complete it"
            )
        if check.stage_exists:
            raise OutputError(
                f"an interrupted run left staged output in {staging}; use output.mode=resume to finish "
                f"it or output.mode=overwrite to start over"
            )
    elif mode == "resume":
        if check.out_exists:
            manifest = _read_json(fs, posixpath.join(output_path, MANIFEST))
            if _exists(fs, posixpath.join(output_path, SUCCESS)) and manifest:
                if manifest.get("config_fingerprint") != fingerprint:
                    raise OutputError(
                        f"output.path {output_path} holds a finished run of a different configuration "
                        f"(fingerprint {manifest.get('config_fingerprint')} != {fingerprint}); "
                        f"use output.mode=overwrite"
                    )
                check.finished = True
                if input_files is not None and "input_files" in manifest:
                    changes = compare_input(manifest["input_files"], input_files)
                    refuse_finished_changes(changes, output_path)
                    check.new_files = changes.new
                if check.new_files and check.stage_exists:  # the published rows join what is staged
                    _refuse_staged_other_config(fs, staging, fingerprint)
                return check
            if not check.stage_exists:
                raise OutputError(
                    f"output.path {output_path} exists but is not a rayformers output (no {SUCCESS}); "
                    f"use output.mode=overwrite or another path"
                )
        if check.stage_exists:
            _refuse_staged_other_config(fs, staging, fingerprint)
    elif mode != "overwrite":
        raise OutputError(f"unknown output.mode {mode!r}")
    return check


def _refuse_staged_other_config(fs: pafs.FileSystem, staging: str, fingerprint: str) -> None:
    job = _read_json(fs, posixpath.join(staging, JOB_FILE)) or {}
    if job.get("config_fingerprint") not in (None, fingerprint):
        raise OutputError(
            f"the staged run in {staging} used a different configuration (fingerprint "
            f"{job.get('config_fingerprint')} != {fingerprint}): resuming would mix predictions; "
            f"use output.mode=overwrite"
        )


def _stage_published(fs: pafs.FileSystem, output_path: str, data_dir: str) -> int:
    """Put the published output's data files into the staging directory, so that resuming there
    keeps their rows (their footers hold their ranges) and scores only what is new; returns how
    many. Local disks: hard links (no copy; publishing replaces the old directory, the links keep
    the data). Elsewhere, or where links fail: a copy (server-side on object stores). A file
    already staged (an earlier attempt) is kept; every file appears whole under its name or not
    at all, so a crash midway leaves a state the next attempt completes."""
    import os
    import shutil

    fs.create_dir(data_dir, recursive=True)
    staged = {posixpath.basename(i.path) for i in _list_files(fs, data_dir)}
    sources = [i for i in _list_files(fs, output_path) if i.path.endswith(".parquet")
               and posixpath.basename(i.path) not in staged]
    local = isinstance(fs, pafs.LocalFileSystem)

    def stage(info: pafs.FileInfo) -> None:
        name = posixpath.basename(info.path)
        target = posixpath.join(data_dir, name)
        if local:
            try:
                os.link(info.path, target)
                return
            except OSError:
                tmp = posixpath.join(data_dir, f".tmp-{uuid.uuid4().hex}-{name}")
                shutil.copyfile(info.path, tmp)
                os.replace(tmp, target)
                return
        fs.copy_file(info.path, target)

    with ThreadPoolExecutor(IO_THREADS) as pool:
        list(pool.map(stage, sources))
    return len(sources)


def prepare_output(
    fs: pafs.FileSystem,
    output_path: str,
    mode: str,
    fingerprint: str,
    job_info: dict,
    plan_units: Optional[dict] = None,
    input_files: Optional[Sequence] = None,
    keep: bool = False,
    dropped_path: Optional[str] = None,
) -> OutputState:
    """Apply ``output.mode`` before any work starts (clear errors, nothing half-done).

    ``plan_units`` (unit key → rows) lets ``resume`` refuse staged rows of input files that
    changed or vanished since the interrupted attempt; ``input_files`` (the input as it is now)
    lets it compare a published output's recorded input with the input: with new files only, the
    published rows are staged again and only the new files are scored (see
    :func:`check_output_mode`).

    ``keep`` (a keep rule): dropped rows are staged in ``<staging>/dropped`` and count as done on
    resume (never scored again); ``dropped_path`` is where they are published. A publish killed
    after the dropped rows were published and before the output was is resumed by staging the
    published dropped rows again (same configuration only)."""
    from .input_changes import refuse_stale_staged_rows

    staging = staging_path(output_path)
    state = OutputState(fs, output_path, staging, posixpath.join(staging, "data"))
    if keep:
        state.dropped_dir = posixpath.join(staging, DROPPED_DIR)
        state.dropped_path = dropped_path
    check = check_output_mode(fs, output_path, mode, fingerprint, input_files)
    stage_exists = check.stage_exists
    if mode == "overwrite":
        if stage_exists:
            fs.delete_dir(staging)
    elif mode == "resume":
        if check.finished:
            if not check.new_files:
                state.already_complete = True
                return state
            # New input files: keep the published rows, score the new files, publish the whole.
            _write_job_file(fs, staging, job_info, fingerprint)
            _stage_published(fs, output_path, state.data_dir)
            if state.dropped_dir and _published_by(fs, dropped_path, fingerprint):
                _stage_published(fs, dropped_path, state.dropped_dir)
            state.new_input_files = len(check.new_files)
            stage_exists = True
        elif stage_exists and state.dropped_dir and not _exists(fs, state.dropped_dir) \
                and _published_by(fs, dropped_path, fingerprint):
            # a publish killed between the dropped rows' directory and the output's
            _stage_published(fs, dropped_path, state.dropped_dir)
        if stage_exists:
            staged = read_staged(fs, state.data_dir, state.dropped_dir)
            state.done = staged_ranges(staged)
            if plan_units is not None:
                refuse_stale_staged_rows([u for u in state.done if u not in plan_units], staging, input_files)
            state.resumed_rows = sum(b - a for spans in state.done.values() for a, b in spans)
    _write_job_file(fs, staging, job_info, fingerprint)
    if state.dropped_dir:
        fs.create_dir(state.dropped_dir, recursive=True)  # its absence later means: published (see above)
    return state


def _published_by(fs: pafs.FileSystem, path: Optional[str], fingerprint: str) -> bool:
    """``path`` holds a published output (``_SUCCESS``) of a run with this configuration."""
    if not path or not _exists(fs, posixpath.join(path, SUCCESS)):
        return False
    manifest = _read_json(fs, posixpath.join(path, MANIFEST)) or {}
    return manifest.get("config_fingerprint") == fingerprint


def _write_job_file(fs: pafs.FileSystem, staging: str, job_info: dict, fingerprint: str) -> None:
    """The staging directory with its ``job.json`` (what marks it as ours)."""
    fs.create_dir(posixpath.join(staging, "data"), recursive=True)
    _write_text(fs, posixpath.join(staging, JOB_FILE), json.dumps({**job_info, "config_fingerprint": fingerprint}, indent=2, default=str))


@dataclass
class FinalCounts:
    rows: int
    """Rows of the output (kept rows and error records; every input row without a keep rule)."""
    errors: int
    tokens: int
    duplicates_removed: int
    files: list[StagedFile]
    dropped_files: list[StagedFile] = field(default_factory=list)
    """Files of the rows a keep rule dropped."""

    @property
    def dropped_rows(self) -> int:
        return sum(f.rows for f in self.dropped_files)

    def manifest_files(self) -> list[dict]:
        return [{"path": f.name, "rows": f.rows, "errors": f.errors} for f in self.files]


def _subtract(a: int, b: int, taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, cur = [], a
    for lo, hi in sorted(taken):
        if lo > cur:
            out.append((cur, lo))
        cur = max(cur, hi)
    if cur < b:
        out.append((cur, b))
    return out


def _rewrite_without(fs: pafs.FileSystem, data_dir: str, f: StagedFile, cov: Coverage, compression: str) -> StagedFile:
    """Rewrite ``f`` keeping only rows no earlier file holds (its rows are in ranges order)."""
    table = pq.read_table(f.path, filesystem=fs)
    first = input_row_starts(table)  # output row where each input row starts, and the end
    pieces, ranges, offset = [], [], 0
    for unit, a, b in f.ranges:
        for lo, hi in _subtract(a, b, cov.overlap(unit, a, b)):
            begin, end = int(first[offset + lo - a]), int(first[offset + hi - a])
            pieces.append(table.slice(begin, end - begin))
            ranges.append([unit, lo, hi])
        offset += b - a
    fs.delete_file(f.path)
    if not pieces:
        return StagedFile(f.path, 0, 0, 0, 0, [], f.dropped)
    kept = pa.concat_tables(pieces)
    data_dir = posixpath.dirname(f.path)  # a dropped file stays among the dropped
    stats = write_part(fs, data_dir, kept, compression, ranges=ranges)
    path = posixpath.join(data_dir, stats["file"])
    return StagedFile(path, stats["rows"], stats["errors"], stats["tokens"], fs.get_file_info(path).size or 0, ranges,
                      f.dropped)


def input_row_starts(table: pa.Table):
    """Output row positions where each input row begins, plus the table's end: every row, or
    with per-window rows (a ``chunk_index`` column) the rows whose index is 0 or null."""
    import numpy as np

    if "chunk_index" not in table.column_names:
        return np.arange(table.num_rows + 1)
    index = table.column("chunk_index").to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.isnan(index) | (index == 0)) if index.dtype.kind == "f" else np.flatnonzero(index == 0)
    return np.concatenate([starts, [table.num_rows]])


def _row_group_label(unit: str) -> str:
    path, _, rest = unit.rpartition("@")
    return f"row group {rest.rpartition('#rg')[2]} of {path}"


def collect_staged(
    fs: pafs.FileSystem,
    data_dir: str,
    units: Optional[dict] = None,
    expected_rows: Optional[int] = None,
    compression: str = "snappy",
    dropped_dir: Optional[str] = None,
) -> FinalCounts:
    """Check the staged files from their footers and count rows, errors and tokens.

    ``units`` (unit key → rows of that row group): the staged ranges must tile each unit exactly;
    repeats left by retried writes are removed (first file in name order wins). Without
    ``units`` (a rewrite of an already verified output) only the row count is checked.

    ``dropped_dir``: the rows a keep rule dropped are staged there; together with the kept rows
    they must tile every unit (each input row once, kept or dropped).

    Raises :class:`IncompleteOutputError` naming the first row group with missing rows."""
    cov = Coverage()
    kept: list[StagedFile] = []
    dups = 0
    for f in read_staged(fs, data_dir, dropped_dir):
        taken = sum(hi - lo for unit, a, b in f.ranges for lo, hi in cov.overlap(unit, a, b))
        if taken:
            if taken == f.rows:
                fs.delete_file(f.path)  # every row is in an earlier file: a retried write's copy
                dups += f.rows
                continue
            rewritten = _rewrite_without(fs, data_dir, f, cov, compression)
            dups += f.rows - rewritten.rows
            f = rewritten
            if not f.rows:
                continue
        for unit, a, b in f.ranges:
            cov.add(unit, a, b)
        # Only the first range is kept (file order for compaction): the driver's memory is the
        # merged coverage, O(row groups), plus O(files), however fragmented the files are.
        kept.append(StagedFile(f.path, f.rows, f.errors, f.tokens, f.size, f.ranges[:1], f.dropped))
    rows = sum(f.rows for f in kept)
    if units is not None:
        done = cov.done()
        unknown = [u for u in done if u not in units]
        if unknown:
            raise IncompleteOutputError(
                f"staged output in {data_dir} holds rows of {len(unknown)} row groups that are not part of this "
                f"job's input (e.g. {_row_group_label(unknown[0])}); start over with output.mode=overwrite"
            )
        missing_rows, first_gap = 0, None
        for unit, n in units.items():
            gaps = _subtract(0, n, done.get(unit, []))
            if gaps:
                missing_rows += sum(hi - lo for lo, hi in gaps)
                if first_gap is None:
                    first_gap = (unit, gaps)
        if first_gap is not None:
            unit, gaps = first_gap
            shown = ", ".join(f"{lo}-{hi - 1}" for lo, hi in gaps[:3])
            raise IncompleteOutputError(
                f"{missing_rows} of {sum(units.values())} input rows are missing from the staged output in "
                f"{data_dir} (first: {_row_group_label(unit)}, rows {shown}); re-run with output.mode=resume "
                f"to score them"
            )
        expected_rows = sum(units.values())
    if expected_rows is not None and rows != expected_rows:
        raise IncompleteOutputError(
            f"staged output in {data_dir} has {rows} rows for {expected_rows} input rows; re-run with "
            f"output.mode=resume to score the missing ones"
        )
    published = [f for f in kept if not f.dropped]
    return FinalCounts(sum(f.rows for f in published), sum(f.errors for f in published),
                       sum(f.tokens for f in kept), dups, published, [f for f in kept if f.dropped])


def _merge_files(fs: pafs.FileSystem, data_dir: str, sources: list[StagedFile], compression: str) -> StagedFile:
    """One file holding ``sources`` (in order), written atomically; the sources are then deleted."""
    tables = [pq.read_table(s.path, filesystem=fs) for s in sources]
    ranges = [r for t in tables for r in json.loads(t.schema.metadata[FOOTER_KEY].decode())["ranges"]]
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables], promote_options="permissive")
    name = "part-" + hashlib.sha1("\x1f".join(s.name for s in sources).encode()).hexdigest()[:24] + ".parquet"
    info = {"ranges": ranges, "rows": sum(s.rows for s in sources), "errors": sum(s.errors for s in sources),
            "tokens": sum(s.tokens for s in sources)}
    _write_file(fs, data_dir, name, table, info, compression)
    for s in sources:
        fs.delete_file(s.path)
    path = posixpath.join(data_dir, name)
    return StagedFile(path, info["rows"], info["errors"], info["tokens"], fs.get_file_info(path).size or 0, ranges)


def plan_compaction(files: Sequence[StagedFile], target_bytes: int) -> list[list[StagedFile]]:
    """Groups of small staged files (each under half the target) to merge, about ``target_bytes``
    each, in input order; files already big enough are left as they are."""
    small = sorted((f for f in files if f.size < target_bytes // 2), key=lambda f: (f.ranges[:1], f.name))
    groups, cur, size = [], [], 0
    for f in small:
        if cur and size + f.size > target_bytes:
            groups.append(cur)
            cur, size = [], 0
        cur.append(f)
        size += f.size
    if cur:
        groups.append(cur)
    return [g for g in groups if len(g) > 1]


def compact_staged(
    fs: pafs.FileSystem, data_dir: str, counts: FinalCounts, target_bytes: int, compression: str, io_num_cpus: float = 0.5
) -> FinalCounts:
    """Merge small staged files into files of about ``target_bytes`` (Ray tasks when Ray runs);
    dropped rows' files among themselves, in their own directory."""
    groups = plan_compaction(counts.files, target_bytes) + plan_compaction(counts.dropped_files, target_bytes)
    if not groups:
        return counts
    merged_away = {f.path for g in groups for f in g}
    try:
        import ray

        use_ray = ray.is_initialized()
    except ImportError:  # pragma: no cover - ray is a dependency
        use_ray = False
    dirs = [posixpath.dirname(g[0].path) for g in groups]
    if use_ray:
        merge = ray.remote(num_cpus=io_num_cpus)(_merge_files)
        merged = ray.get([merge.remote(fs, d, g, compression) for d, g in zip(dirs, groups)])
    else:
        merged = [_merge_files(fs, d, g, compression) for d, g in zip(dirs, groups)]
    for m, g in zip(merged, groups):
        m.dropped = g[0].dropped
    files = [f for f in counts.files if f.path not in merged_away] + [m for m in merged if not m.dropped]
    dropped = [f for f in counts.dropped_files if f.path not in merged_away] + [m for m in merged if m.dropped]
    return FinalCounts(counts.rows, counts.errors, counts.tokens, counts.duplicates_removed,
                       sorted(files, key=lambda f: f.name), sorted(dropped, key=lambda f: f.name))


def _move_tree(fs: pafs.FileSystem, src: str, dst: str) -> None:
    """One rename where the filesystem has directories (local, HDFS); on object stores a
    parallel server-side copy of each file, where ``_SUCCESS`` written afterwards is what makes
    the result visible."""
    try:
        fs.move(src, dst)
        return
    except (OSError, NotImplementedError):
        if not _exists(fs, src):
            raise
    infos = [i for i in fs.get_file_info(pafs.FileSelector(src, recursive=True)) if i.type == pafs.FileType.File]

    def copy(info: pafs.FileInfo) -> None:
        target = posixpath.join(dst, posixpath.relpath(info.path, src))
        fs.copy_file(info.path, target)

    fs.create_dir(dst, recursive=True)
    with ThreadPoolExecutor(IO_THREADS) as pool:
        list(pool.map(copy, infos))
    fs.delete_dir(src)


def publish(state: OutputState, manifest: dict, files: Optional[Sequence[StagedFile]] = None) -> str:
    """Manifest into the data directory, one rename into place, then ``_SUCCESS``.

    The old output (if any) must be ours (checked again here: files someone added while the job
    ran are not ours to delete either).

    With a keep rule and ``output.dropped_path``, the dropped rows are published first, the same
    way, with a manifest of their own; the output's ``_SUCCESS``, written last, is what makes the
    run complete (a kill in between is resumed, see :func:`prepare_output`). Without
    ``dropped_path`` the staged dropped rows (ranges and ids only) are deleted with the staging."""
    fs = state.fs
    if files is None:
        files = read_staged(fs, state.data_dir)
    manifest = {"format": OUTPUT_FORMAT, **manifest}
    manifest["output_files"] = [{"path": f.name, "rows": f.rows, "errors": f.errors} for f in files]
    if state.dropped_dir and state.dropped_path:
        dropped = [f for f in read_staged(fs, state.dropped_dir)]
        side = {k: manifest[k] for k in ("format", "status", "created_at", "config_fingerprint", "keep") if k in manifest}
        side.update(role="dropped rows", output_path=state.output_path, dropped_rows=sum(f.rows for f in dropped),
                    output_files=[{"path": f.name, "rows": f.rows} for f in dropped])
        _publish_dir(fs, state.dropped_dir, state.dropped_path, side, staging_path(state.dropped_path))
    _publish_dir(fs, state.data_dir, state.output_path, manifest, state.staging_dir)
    fs.delete_dir(state.staging_dir)
    clean_publish_leftovers(fs, state.output_path)
    return state.output_path


def _publish_dir(fs: pafs.FileSystem, source: str, target: str, manifest: dict, aside: str) -> None:
    """``manifest`` into ``source``, the old ``target`` (ours) moved aside, one move of
    ``source`` into place, then ``_SUCCESS``."""
    _write_text(fs, posixpath.join(source, MANIFEST), json.dumps(manifest, indent=2, default=str))
    check_replaceable(fs, target, why="publishing")
    old = None
    if _exists(fs, target):
        if isinstance(fs, pafs.LocalFileSystem):
            old = f"{aside}-old-{uuid.uuid4().hex[:8]}"
            _move_tree(fs, target, old)
        else:
            fs.delete_dir(target)  # no rename on object stores: a copy away is wasted work
    parent = posixpath.dirname(target.rstrip("/"))
    if parent:
        fs.create_dir(parent, recursive=True)
    if not _exists(fs, source):
        fs.create_dir(source, recursive=True)
    _move_tree(fs, source, target)
    _write_text(fs, posixpath.join(target, SUCCESS), "")
    if old is not None:
        fs.delete_dir(old)


OLD_OUTPUT_RE = re.compile(r"^\.(?P<name>.+)\.rayformers-staging-old-[0-9a-f]{8}$")
"""A previous output moved aside by :func:`publish` (``<staging>-old-<8 hex>``)."""


def clean_publish_leftovers(fs: pafs.FileSystem, output_path: str) -> list[str]:
    """Delete what a publish killed half-way left beside a published output, and only what is
    provably ours: previous outputs moved aside (``.<name>.rayformers-staging-old-*`` holding a
    rayformers manifest that lists every file in it, or nothing) and a staging directory holding
    nothing but our ``job.json`` (its rows were moved into the output). Anything else by those
    names is left alone with a warning. Call only once ``output_path`` is published."""
    if not _exists(fs, posixpath.join(output_path, SUCCESS)):
        return []
    parent, name = posixpath.split(output_path.rstrip("/"))
    removed = []
    for info in fs.get_file_info(pafs.FileSelector(parent or "/", recursive=False)):
        m = OLD_OUTPUT_RE.match(posixpath.basename(info.path))
        if not m or m.group("name") != name or info.type != pafs.FileType.Directory:
            continue
        _, foreign = foreign_entries(fs, info.path)
        if foreign:
            logger.warning("left %s in place: it holds files that are not a rayformers output (%s)",
                           info.path, ", ".join(sorted(foreign)[:3]))
            continue
        fs.delete_dir(info.path)
        removed.append(info.path)
    staging = staging_path(output_path)
    if _exists(fs, staging) and _holds_only_job_file(fs, staging):
        fs.delete_dir(staging)
        removed.append(staging)
    if removed:
        logger.info("removed %d leftovers of an interrupted publish of %s: %s", len(removed), output_path, ", ".join(removed))
    return removed


def _holds_only_job_file(fs: pafs.FileSystem, staging: str) -> bool:
    """Our ``job.json`` (with a fingerprint) and at most an empty ``data/``: no staged rows."""
    entries = {posixpath.relpath(i.path, staging): i for i in fs.get_file_info(pafs.FileSelector(staging, recursive=True))}
    if set(entries) - {JOB_FILE, "data"} or JOB_FILE not in entries:
        return False
    if "data" in entries and entries["data"].type != pafs.FileType.Directory:
        return False
    try:
        job = _read_json(fs, posixpath.join(staging, JOB_FILE))
    except ValueError:
        return False
    return isinstance(job, dict) and "config_fingerprint" in job


def write_failed_manifest(state: OutputState, manifest: dict) -> str:
    """Keep the staged output for inspection with a manifest that says why it was not published."""
    path = posixpath.join(state.staging_dir, MANIFEST)
    _write_text(state.fs, path, json.dumps(manifest, indent=2, default=str))
    return path


def read_manifest(fs: pafs.FileSystem, output_path: str) -> Optional[dict]:
    return _read_json(fs, posixpath.join(output_path, MANIFEST))


__all__ = [
    "ErrorBudgetExceeded",
    "FinalCounts",
    "IncompleteOutputError",
    "OutputError",
    "OutputState",
    "StagedFile",
    "UnsafeOutputError",
    "check_output_mode",
    "clean_publish_leftovers",
    "collect_staged",
    "compact_staged",
    "make_datasink",
    "prepare_output",
    "publish",
    "read_manifest",
    "read_staged",
    "staging_path",
    "write_part",
]
