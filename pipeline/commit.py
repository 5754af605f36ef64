"""Output commit protocol: staging directory → manifest → atomic publish + ``_SUCCESS``.

Ray's file sinks write final paths directly, so a crash leaves partial output and a re-run
duplicates rows. Here every write task writes a whole Parquet part file under a temporary name
in a staging directory and renames it into place (one rename = the part is either there or not),
named by a hash of its ids so a retried task overwrites instead of duplicating. When all rows
are written, the driver checks that every input row is present exactly once, writes
``_manifest.json`` (input files, row counts, error count, config fingerprint), publishes the data
directory in one rename and writes ``_SUCCESS`` last. Readers trust only ``_SUCCESS``.

Resume reads the ids of the part files already staged and the read skips those rows, so after a
crash nothing is scored twice except batches that were in flight.

Layout::

    <parent>/.<name>.rayformers-staging/job.json          config + fingerprint of the run
    <parent>/.<name>.rayformers-staging/data/part-*.parquet
    <output>/part-*.parquet, <output>/_manifest.json, <output>/_SUCCESS   (after publish)
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayformers.operators.records import ERROR_COLUMN
from rayformers.operators.tokenize import STAGE_TIME_PREFIX

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
JOB_FILE = "job.json"


class OutputError(RuntimeError):
    """The output location is in a state the chosen ``output.mode`` does not allow."""


class IncompleteOutputError(RuntimeError):
    """Rows are missing from the staged output (the job must be resumed)."""


class ErrorBudgetExceeded(RuntimeError):
    """More rows failed than ``output.max_error_fraction`` allows; ``.report`` has the counts."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


def staging_path(output_path: str) -> str:
    """Sibling hidden directory, so that listing the output never shows half-written parts."""
    parent, name = posixpath.split(output_path.rstrip("/"))
    return posixpath.join(parent, f".{name}.rayformers-staging")


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _list_files(fs: pafs.FileSystem, path: str) -> list[str]:
    if not _exists(fs, path):
        return []
    return sorted(i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=False)) if i.type == pafs.FileType.File)


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


def part_name(ids: pa.Array) -> str:
    """Deterministic file name from the rows' ids: a retried write of the same block overwrites."""
    h = hashlib.sha1("\x1f".join(map(str, ids.to_pylist())).encode())
    return f"part-{h.hexdigest()[:20]}.parquet"


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


def write_part(fs: pafs.FileSystem, data_dir: str, table: pa.Table, id_column: str, compression: str) -> dict:
    """Write one part atomically (temp name, then rename); returns its statistics."""
    import pyarrow.compute as pc

    start = time.perf_counter()
    table, stages = split_stage_columns(table)
    stats = {"rows": table.num_rows, "errors": 0, "tokens": 0, "stages": stages, "file": None}
    if table.num_rows == 0:
        return stats
    stats["errors"] = int(table.num_rows - pc.sum(pc.is_null(table.column(ERROR_COLUMN)).cast(pa.int64())).as_py())
    if "num_tokens" in table.column_names:
        stats["tokens"] = int(pc.sum(table.column("num_tokens")).as_py() or 0)
    name = part_name(table.column(id_column))
    final = posixpath.join(data_dir, name)
    tmp = posixpath.join(data_dir, f".tmp-{uuid.uuid4().hex}-{name}")
    fs.create_dir(data_dir, recursive=True)
    pq.write_table(table, tmp, filesystem=fs, compression=compression)
    fs.move(tmp, final)
    stats["file"] = name
    stats["stages"]["write"] = time.perf_counter() - start
    return stats


def make_datasink(fs: pafs.FileSystem, data_dir: str, id_column: str, compression: str):
    """A Ray Data ``Datasink`` writing atomic part files into the staging directory."""
    from ray.data.block import BlockAccessor
    from ray.data.datasource import Datasink

    class StagingParquetDatasink(Datasink):
        def __init__(self):
            self.results: list[dict] = []

        def get_name(self) -> str:
            return "WriteStagedParquet"

        def write(self, blocks: Iterable, ctx) -> dict:
            tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
            tables = [t for t in tables if t.num_rows]
            if not tables:
                return {"rows": 0, "errors": 0, "tokens": 0, "stages": {}, "file": None}
            table = pa.concat_tables(tables, promote_options="permissive")
            return write_part(fs, data_dir, table, id_column, compression)

        def on_write_complete(self, write_result) -> None:
            self.results = list(write_result.write_returns)

    return StagingParquetDatasink()


# ------------------------------------------------------------------------------------------------
# Driver side: modes, resume, finalize, publish


@dataclass
class OutputState:
    """What ``prepare_output`` found and decided."""

    fs: pafs.FileSystem
    output_path: str
    staging_dir: str
    data_dir: str
    already_complete: bool = False
    resumed_files: list[str] = field(default_factory=list)
    done_ids: Optional[pa.Array] = None

    @property
    def resumed_rows(self) -> int:
        return 0 if self.done_ids is None else len(self.done_ids)


def read_staged_ids(fs: pafs.FileSystem, data_dir: str, id_column: str) -> tuple[list[str], Optional[pa.Array]]:
    """Ids already written by an earlier attempt; leftover temp files are removed."""
    files, chunks = [], []
    for path in _list_files(fs, data_dir):
        name = posixpath.basename(path)
        if name.startswith(".tmp-"):
            fs.delete_file(path)  # a write that died before its rename: never counted
            continue
        if not name.endswith(".parquet"):
            continue
        chunks.append(pq.read_table(path, columns=[id_column], filesystem=fs).column(id_column))
        files.append(path)
    if not chunks:
        return files, None
    ids = pa.chunked_array([c for ch in chunks for c in ch.chunks]).combine_chunks()
    return files, ids


def prepare_output(
    fs: pafs.FileSystem, output_path: str, mode: str, fingerprint: str, id_column: str, job_info: dict
) -> OutputState:
    """Apply ``output.mode`` before any work starts (clear errors, nothing half-done)."""
    staging = staging_path(output_path)
    state = OutputState(fs, output_path, staging, posixpath.join(staging, "data"))
    out_exists = _exists(fs, output_path) and bool(_list_files(fs, output_path))
    stage_exists = _exists(fs, staging)
    if mode == "error-if-exists":
        if out_exists:
            raise OutputError(
                f"output.path {output_path} already exists; choose output.mode=overwrite to replace it "
                f"or output.mode=resume to complete it"
            )
        if stage_exists:
            raise OutputError(
                f"an interrupted run left staged output in {staging}; use output.mode=resume to finish "
                f"it or output.mode=overwrite to start over"
            )
    elif mode == "overwrite":
        if stage_exists:
            fs.delete_dir(staging)
    elif mode == "resume":
        if out_exists:
            manifest = _read_json(fs, posixpath.join(output_path, MANIFEST))
            if _exists(fs, posixpath.join(output_path, SUCCESS)) and manifest:
                if manifest.get("config_fingerprint") != fingerprint:
                    raise OutputError(
                        f"output.path {output_path} holds a finished run of a different configuration "
                        f"(fingerprint {manifest.get('config_fingerprint')} != {fingerprint}); "
                        f"use output.mode=overwrite"
                    )
                state.already_complete = True
                return state
            if not stage_exists:
                raise OutputError(
                    f"output.path {output_path} exists but is not a rayformers output (no {SUCCESS}); "
                    f"use output.mode=overwrite or another path"
                )
        if stage_exists:
            job = _read_json(fs, posixpath.join(staging, JOB_FILE)) or {}
            if job.get("config_fingerprint") not in (None, fingerprint):
                raise OutputError(
                    f"the staged run in {staging} used a different configuration (fingerprint "
                    f"{job.get('config_fingerprint')} != {fingerprint}): resuming would mix predictions; "
                    f"use output.mode=overwrite"
                )
            state.resumed_files, state.done_ids = read_staged_ids(fs, state.data_dir, id_column)
    else:
        raise OutputError(f"unknown output.mode {mode!r}")
    fs.create_dir(state.data_dir, recursive=True)
    _write_text(fs, posixpath.join(staging, JOB_FILE), json.dumps({**job_info, "config_fingerprint": fingerprint}, indent=2, default=str))
    return state


@dataclass
class FinalCounts:
    rows: int
    errors: int
    tokens: int
    duplicates_removed: int
    files: list[dict]


def collect_staged(fs: pafs.FileSystem, data_dir: str, id_column: str, expected_rows: int) -> FinalCounts:
    """Count rows/errors over every staged part; drop duplicate ids left by retried writes.

    Raises :class:`IncompleteOutputError` if rows are missing (never publish a partial result)."""
    import pyarrow.compute as pc

    seen: set = set()
    files, rows, errors, tokens, dups = [], 0, 0, 0, 0
    for path in _list_files(fs, data_dir):
        name = posixpath.basename(path)
        if not name.endswith(".parquet") or name.startswith(".tmp-"):
            continue
        cols = [id_column, ERROR_COLUMN]
        schema = pq.read_schema(path, filesystem=fs)
        if "num_tokens" in schema.names:
            cols.append("num_tokens")
        t = pq.read_table(path, columns=cols, filesystem=fs)
        ids = t.column(id_column).to_pylist()
        fresh = [i not in seen for i in ids]
        if not all(fresh):
            # A write task retried after its first attempt had already renamed a part with other
            # row boundaries: keep the first copy of each id, rewrite this part without repeats.
            full = pq.read_table(path, filesystem=fs).filter(pa.array(fresh))
            dups += len(ids) - full.num_rows
            fs.delete_file(path)
            if full.num_rows:
                write_part(fs, data_dir, full, id_column, "snappy")
                path = posixpath.join(data_dir, part_name(full.column(id_column)))
            t = t.filter(pa.array(fresh))
            ids = [i for i, f in zip(ids, fresh) if f]
            if not ids:
                continue
        seen.update(ids)
        n_err = int(t.num_rows - pc.sum(pc.is_null(t.column(ERROR_COLUMN)).cast(pa.int64())).as_py())
        n_tok = int(pc.sum(t.column("num_tokens")).as_py() or 0) if "num_tokens" in t.column_names else 0
        files.append({"path": posixpath.basename(path), "rows": t.num_rows, "errors": n_err})
        rows += t.num_rows
        errors += n_err
        tokens += n_tok
    if rows < expected_rows:
        raise IncompleteOutputError(
            f"{expected_rows - rows} of {expected_rows} input rows are missing from the staged output "
            f"in {data_dir}; re-run with output.mode=resume to score them"
        )
    if rows > expected_rows:
        raise IncompleteOutputError(
            f"staged output has {rows} unique ids for {expected_rows} input rows: are the input ids unique?"
        )
    return FinalCounts(rows, errors, tokens, dups, files)


def _move_tree(fs: pafs.FileSystem, src: str, dst: str) -> None:
    """One rename where the filesystem has directories (local, HDFS); file by file on object
    stores, where ``_SUCCESS`` written afterwards is what makes the result visible."""
    try:
        fs.move(src, dst)
        return
    except (OSError, NotImplementedError):
        if not _exists(fs, src):
            raise
    for info in fs.get_file_info(pafs.FileSelector(src, recursive=True)):
        if info.type == pafs.FileType.File:
            target = posixpath.join(dst, posixpath.relpath(info.path, src))
            fs.create_dir(posixpath.dirname(target), recursive=True)
            fs.copy_file(info.path, target)
    fs.delete_dir(src)


def publish(state: OutputState, manifest: dict) -> str:
    """Manifest into the data directory, one rename into place, then ``_SUCCESS``."""
    fs = state.fs
    _write_text(fs, posixpath.join(state.data_dir, MANIFEST), json.dumps(manifest, indent=2, default=str))
    old = None
    if _exists(fs, state.output_path):
        old = f"{state.staging_dir}-old-{uuid.uuid4().hex[:8]}"
        _move_tree(fs, state.output_path, old)
    parent = posixpath.dirname(state.output_path.rstrip("/"))
    if parent:
        fs.create_dir(parent, recursive=True)
    _move_tree(fs, state.data_dir, state.output_path)
    _write_text(fs, posixpath.join(state.output_path, SUCCESS), "")
    if old is not None:
        fs.delete_dir(old)
    fs.delete_dir(state.staging_dir)
    return state.output_path


def write_failed_manifest(state: OutputState, manifest: dict) -> str:
    """Keep the staged output for inspection with a manifest that says why it was not published."""
    path = posixpath.join(state.staging_dir, MANIFEST)
    _write_text(state.fs, path, json.dumps(manifest, indent=2, default=str))
    return path


def read_manifest(fs: pafs.FileSystem, output_path: str) -> Optional[dict]:
    return _read_json(fs, posixpath.join(output_path, MANIFEST))
