"""Input discovery and the Parquet read: files, row groups, stable ids, column pruning.

Why our own Ray ``Datasource`` instead of ``ray.data.read_parquet``: without an id column a row
needs an id that is the same on every run, so that ``resume`` can tell which rows are done. We
read by row group, so each row knows its position in its file, and the generated id is
``<file path relative to the input root>:<row index>``. Discovery runs once on the driver
(footers only) and gives the manifest exact per-file row counts. Only the needed columns are
read; hive partition keys (``key=value`` folders) become columns when asked for.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
from dataclasses import dataclass, field
from typing import Collection, Iterable, Optional

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .config import FilesystemConfig

ID_COLUMN = "id"
"""Output id column name when the input has no id column of its own."""

_GLOB_CHARS = set("*?[")


class InputError(ValueError):
    """The input cannot be read as configured (missing path, column, wrong type...)."""


def resolve_filesystem(path: str, fs_config: Optional[FilesystemConfig] = None) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` for a local path or URI, honouring explicit options."""
    fs_config = fs_config or FilesystemConfig()
    kind = fs_config.kind
    options = dict(fs_config.options or {})
    scheme = path.split("://", 1)[0] if "://" in path else ""
    stripped = path.split("://", 1)[1] if "://" in path else path
    if kind == "auto":
        kind = {"s3": "s3", "gs": "gcs", "gcs": "gcs", "hdfs": "hdfs", "file": "local", "": "local"}.get(scheme, "uri")
    if kind == "local":
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(stripped))
    if kind == "s3":
        return pafs.S3FileSystem(**options), stripped
    if kind == "gcs":
        return pafs.GcsFileSystem(**options), stripped
    if kind == "hdfs":
        host = stripped.split("/", 1)[0]
        return pafs.HadoopFileSystem(host, **options), "/" + stripped.split("/", 1)[1] if "/" in stripped else "/"
    if kind == "uri":
        fs, p = pafs.FileSystem.from_uri(path)
        return fs, p
    raise InputError(f"unknown filesystem kind {fs_config.kind!r}; use auto, local, s3, gcs or hdfs")


@dataclass
class InputFile:
    """One Parquet file with what the read and the manifest need."""

    path: str
    relpath: str
    num_rows: int
    row_group_rows: list[int]
    partition: dict = field(default_factory=dict)
    size: int = 0
    """Bytes, modification time and footer digest at discovery: with the path they are the file's
    version, part of every read unit's identity, so staged rows of an older version are never
    resumed (see :func:`read_footer` for what the digest adds to size and mtime)."""
    mtime_ns: int = 0
    footer_sha1: str = ""
    casts: dict = field(default_factory=dict)
    """Column → Arrow type this file's column is cast to when read (set by the pre-flight): a
    dictionary-encoded column decoded to its values, an integer id widened to the type every
    file shares, so that every file yields one schema."""

    def version(self) -> dict:
        """What the manifest records of this file, and what ``resume`` compares it with."""
        return {
            "path": self.path,
            "rows": self.num_rows,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "footer_sha1": self.footer_sha1,
            "row_groups": list(self.row_group_rows),
        }


FOOTER_READ_BYTES = 64 << 10
"""Bytes read from the end of a Parquet file to get its footer in one request (Arrow's own
default); a bigger footer costs a second read."""


def read_footer(fs: pafs.FileSystem, path: str) -> tuple[pq.FileMetaData, str, int]:
    """``(metadata, digest, size)`` of one Parquet file from one read of its tail.

    The digest (first 16 hex digits of the SHA-1 of the footer bytes) is part of the file's
    identity besides size and mtime, because a file rewritten in place with the same byte size
    and its mtime restored (``cp -p``, ``rsync -t``) keeps both. The footer holds every row
    group's row count and byte sizes and every column chunk's offsets, compressed and
    uncompressed sizes, encodings and (when the writer writes them, as pyarrow, Spark and
    pandas do) min/max/null-count statistics, plus the writer's key-value metadata: a rewrite
    that changes any of these changes the digest. Reading the footer is needed anyway (row
    counts), so the digest costs a hash of bytes already read."""
    try:
        with fs.open_input_file(path) as fh:
            size = fh.size()
            tail_len = min(size, FOOTER_READ_BYTES)
            fh.seek(size - tail_len)
            tail = fh.read(tail_len)
            if size < 12 or tail[-4:] != b"PAR1":
                raise ValueError("no Parquet footer (the file does not end with PAR1)")
            n = int.from_bytes(tail[-8:-4], "little")
            if n + 12 > size:
                raise ValueError(f"the footer length {n} is larger than the file ({size} bytes)")
            if n + 8 > len(tail):
                fh.seek(size - n - 8)
                tail = fh.read(n + 8)
        footer = tail[len(tail) - n - 8 : len(tail) - 8]
        meta = pq.read_metadata(pa.BufferReader(b"PAR1" + footer + tail[-8:]))
    except Exception as e:  # noqa: BLE001 - report which file is broken
        raise InputError(f"input file {path} is not a readable Parquet file: {e}") from e
    return meta, hashlib.sha1(footer).hexdigest()[:16], size


def _hive_partition(relpath: str) -> dict:
    parts = {}
    for piece in relpath.split("/")[:-1]:
        if "=" in piece:
            k, v = piece.split("=", 1)
            parts[k] = v
    return parts


def _is_hidden(relpath: str) -> bool:
    return any(p.startswith((".", "_")) for p in relpath.split("/"))


def _is_glob(path: str) -> bool:
    return any(c in path for c in _GLOB_CHARS)


def list_input_path(fs: pafs.FileSystem, path: str) -> list[tuple[pafs.FileInfo, str, str]]:
    """The files one input path names, as ``(info, base, relpath)``, from a listing alone (no
    footer is read): a file is itself (base: its folder); a directory gives every non-hidden file
    below it (base: the directory); a glob gives its matches below its fixed prefix (base: that
    prefix; hidden names included, since the pattern names them). ``relpath`` under ``base`` is
    what generated ids and hive columns are made of, so the pipeline and the incremental ETL both
    list through here. Raises ``FileNotFoundError`` for a plain path that does not exist."""
    if _is_glob(path):
        base = path
        while _is_glob(base):
            base = posixpath.dirname(base)
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        except (FileNotFoundError, OSError):
            infos = []
        return [
            (i, base, posixpath.relpath(i.path, base))
            for i in infos
            if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path)
        ]
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(path)
    if info.type == pafs.FileType.File:
        return [(info, posixpath.dirname(path), posixpath.basename(path))]
    listed = []
    for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        rel = posixpath.relpath(i.path, path)
        if i.type == pafs.FileType.File and not _is_hidden(rel):
            listed.append((i, path, rel))
    return listed


def discover_files(
    paths: str | list,
    fs_config: Optional[FilesystemConfig] = None,
    partitioning: Optional[str] = "hive",
    only: Optional[Collection[str]] = None,
) -> tuple[pafs.FileSystem, list[InputFile]]:
    """Expand files, directories (recursive) and globs; read each footer once.

    ``only`` keeps just those files (as listed, e.g. by the incremental ETL) out of the expansion,
    before any footer is read: each keeps the relpath it has within the whole input, so generated
    ids and hive columns are the same as when the whole input is scored.

    Raises :class:`InputError` naming the path that does not exist or holds no Parquet files, or a
    file of ``only`` that ``paths`` does not cover."""
    if isinstance(paths, str):
        paths = [paths]
    if not paths or not all(isinstance(p, str) and p for p in paths):
        raise InputError("input.path is empty: set it to a Parquet file, directory or glob")
    if only is not None and not only:
        raise InputError("the list of input files to score is empty: nothing to do")
    fs = None
    files: list[InputFile] = []
    wanted = set(only) if only is not None else set()
    for raw in paths:
        fs_i, path = resolve_filesystem(raw, fs_config)
        fs = fs or fs_i
        try:
            listed = list_input_path(fs_i, path)
        except FileNotFoundError:
            raise InputError(f"input.path {raw!r} does not exist") from None
        if not listed:
            what = ": the glob matches no files" if _is_glob(path) else " is a directory without Parquet files"
            raise InputError(f"input.path {raw!r}{what}")
        found = [(info.path, rel, info) for info, _, rel in listed]
        if only is not None:
            found = [(p, rel, info) for p, rel, info in found if p in wanted]
        for p, rel, info in sorted(found, key=lambda x: x[:2]):
            meta, digest, size = read_footer(fs_i, p)
            rg = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            files.append(
                InputFile(
                    path=p,
                    relpath=rel,
                    num_rows=meta.num_rows,
                    row_group_rows=rg,
                    partition=_hive_partition(rel) if partitioning == "hive" else {},
                    size=size,
                    mtime_ns=int(info.mtime_ns or 0),
                    footer_sha1=digest,
                )
            )
    if only is not None:
        missing = sorted(wanted - {f.path for f in files})
        if missing:
            raise InputError(
                f"input file {missing[0]} (one of {len(missing)} requested) is not covered by input.path {paths!r}"
            )
    return fs, files


def file_schema(fs: pafs.FileSystem, f: InputFile) -> pa.Schema:
    """Arrow schema of one file, plus its hive partition keys as string columns."""
    schema = pq.ParquetFile(f.path, filesystem=fs).schema_arrow
    for k in f.partition:
        if k not in schema.names:
            schema = schema.append(pa.field(k, pa.string()))
    return schema


def decoded_type(t: pa.DataType) -> pa.DataType:
    """The type a column is read as: a dictionary-encoded column (what pandas categoricals and
    some Spark writers leave in the Arrow schema) as its values' type, anything else as is."""
    return t.value_type if pa.types.is_dictionary(t) else t


def apply_casts(table: pa.Table, casts: dict) -> pa.Table:
    """``table`` with the columns named in ``casts`` cast to their type (see ``InputFile.casts``).
    Casts are safe: a value that does not fit (e.g. a uint64 id above int64's range) raises."""
    for name, t in casts.items():
        if name in table.column_names:
            i = table.column_names.index(name)
            table = table.set_column(i, name, table.column(i).cast(t))
    return table


class ColumnTypeConflict(InputError):
    """A column has types in different files that cannot be read as one."""


def unify_column_type(column: str, typed: list[tuple[str, pa.DataType]], key: str) -> pa.DataType:
    """The one type ``column`` is read as across files (``typed``: ``(path, type)`` per file).

    Dictionary columns count as their values; integers of different widths become the type that
    holds them all (int32 + int64 → int64), string + large_string → large_string. Anything else
    that differs (an int64 id in one file, a string id in another) raises
    :class:`ColumnTypeConflict` naming ``key``, the files of each type and the fix."""
    decoded = [(p, decoded_type(t)) for p, t in typed]
    first = decoded[0][1]
    if all(t.equals(first) for _, t in decoded):
        return first
    try:
        schemas = [pa.schema([(column, t)]) for _, t in decoded]
        unified = pa.unify_schemas(schemas, promote_options="permissive").field(column).type
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        unified = None
    numeric = all(pa.types.is_integer(t) for _, t in decoded)
    stringy = all(pa.types.is_string(t) or pa.types.is_large_string(t) for _, t in decoded)
    if unified is None or not (numeric or stringy):
        by_type: dict[str, list[str]] = {}
        for p, t in typed:
            by_type.setdefault(str(t), []).append(p)
        shown = "; ".join(
            f"{t} in {paths[0]}" + (f" (and {len(paths) - 1} more files)" if len(paths) > 1 else "")
            for t, paths in by_type.items()
        )
        raise ColumnTypeConflict(
            f"{key}: column {column!r} has different types across the input files ({shown}); they cannot be read "
            f"as one column. Rewrite the files so that {column!r} has one type (e.g. cast it to string everywhere)"
        )
    return unified


@dataclass
class ReadUnit:
    """A contiguous run of row groups of one file, read by one task."""

    file: InputFile
    row_groups: list[int]
    first_row: int
    num_rows: int


def plan_units(files: list[InputFile], target_rows: int) -> list[ReadUnit]:
    """Split files into units of about ``target_rows`` rows on row-group boundaries."""
    units = []
    for f in files:
        start, groups, rows = 0, [], 0
        offset = 0
        for i, n in enumerate(f.row_group_rows):
            if groups and rows + n > target_rows:
                units.append(ReadUnit(f, groups, start, rows))
                start, groups, rows = offset, [], 0
            groups.append(i)
            rows += n
            offset += n
        if groups:
            units.append(ReadUnit(f, groups, start, rows))
    return units


def pack_units(units: list[ReadUnit], target_rows: int) -> list[list[ReadUnit]]:
    """Consecutive units into read tasks of about ``target_rows`` rows: a unit of a small file
    shares its task (and its blocks) with the next ones, so an input of many small files still
    flows as blocks of ``compute.batch_size`` rows (each block costs a round trip through every
    stage; 10k files of 100 rows would otherwise be 10k blocks of 100 rows). A unit is never split
    between tasks; one bigger than ``target_rows`` is a task of its own."""
    tasks: list[list[ReadUnit]] = []
    rows = 0
    for unit in units:
        if tasks and rows + unit.num_rows <= target_rows:
            tasks[-1].append(unit)
            rows += unit.num_rows
        else:
            tasks.append([unit])
            rows = unit.num_rows
    return tasks


def rebatch(tables: Iterable[pa.Table], rows: int) -> Iterable[pa.Table]:
    """Tables of exactly ``rows`` rows (the last one fewer) from a stream of smaller or equal
    ones, e.g. the slices of several small files. Pieces whose schemas cannot be unified
    (``promote_options="permissive"``: string vs large_string, nullability) are passed on
    unmerged rather than failing the read."""
    pending: list[pa.Table] = []
    held = 0

    def merged(pieces: list[pa.Table]) -> list[pa.Table]:
        if len(pieces) == 1:
            return pieces
        try:
            return [pa.concat_tables(pieces, promote_options="permissive").combine_chunks()]
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return pieces

    for table in tables:
        while table.num_rows:
            take = min(rows - held, table.num_rows)
            pending.append(table.slice(0, take))
            held += take
            table = table.slice(take)
            if held == rows:
                yield from merged(pending)
                pending, held = [], 0
    if pending:
        yield from merged(pending)


def read_unit(
    fs: pafs.FileSystem,
    unit: ReadUnit,
    columns: list[str],
    id_column: Optional[str],
) -> pa.Table:
    """Read one unit whole with only ``columns`` and the generated id (training data, tests)."""
    parts = [t for _, t in iter_row_group_slices(fs, unit.file, unit.row_groups, columns, id_column, 1 << 62)]
    return pa.concat_tables(parts) if parts else pa.table({})


# ------------------------------------------------------------------------------------------------
# The pipeline's read: row groups in slices, each row tagged with its place (see commit.py)

UNIT_COLUMN = "__rf_unit"
"""Hidden column: the row's verification unit (``RowGroup.key``: file version + row group)."""
ROW_COLUMN = "__rf_row"
"""Hidden column: the row's index inside its row group."""
HIDDEN_COLUMNS = (UNIT_COLUMN, ROW_COLUMN)


@dataclass(frozen=True)
class RowGroup:
    """The unit of exactly-once accounting: one row group of one version of one file.

    Its row count comes from the footer, so the driver can check that the staged output tiles it
    (no gap, no overlap) without ever seeing a row id: memory and time grow with the number of
    row groups, not rows."""

    file: InputFile
    index: int
    first_row: int
    num_rows: int

    @property
    def key(self) -> str:
        return row_group_key(self.file, self.index)


def row_group_key(f: InputFile, index: int) -> str:
    """Stable identity of row group ``index`` of this version of ``f`` (see :class:`RowGroup`):
    ``<path>@<size>:<mtime_ns>:<footer digest>#rg<index>``."""
    return f"{f.path}@{f.size}:{f.mtime_ns}:{f.footer_sha1}#rg{index}"


def parse_row_group_key(key: str) -> dict:
    """The file version a :func:`row_group_key` names: ``{"path", "size", "mtime_ns",
    "footer_sha1", "row_group"}`` (fields a key of an older format lacks are absent)."""
    path, _, rest = key.rpartition("@")
    version, _, index = rest.rpartition("#rg")
    parts = version.split(":")
    out: dict = {"path": path, "row_group": int(index) if index.isdigit() else None}
    for name, value in zip(("size", "mtime_ns"), parts[:2]):
        if value.isdigit():
            out[name] = int(value)
    if len(parts) > 2:
        out["footer_sha1"] = parts[2]
    return out


def row_groups_of(files: list[InputFile]) -> list[RowGroup]:
    """Every row group of ``files`` in read order (empty groups included: they tile trivially)."""
    groups = []
    for f in files:
        first = 0
        for i, n in enumerate(f.row_group_rows):
            groups.append(RowGroup(f, i, first, n))
            first += n
    return groups


def _generated_ids(relpath: str, first: int, n: int) -> pa.Array:
    """``<relpath>:<row>`` for rows ``first .. first+n-1``, built by Arrow kernels, not per row."""
    import numpy as np
    import pyarrow.compute as pc

    rows = pc.cast(pa.array(np.arange(first, first + n, dtype=np.int64)), pa.string())
    return pc.binary_join_element_wise(pa.scalar(f"{relpath}:"), rows, "")


def _keep_mask(start: int, n: int, done: list[tuple[int, int]]):
    """Boolean mask of rows ``start .. start+n-1`` not covered by the ``done`` row ranges."""
    import numpy as np

    keep = np.ones(n, dtype=bool)
    for a, b in done:
        lo, hi = max(a, start), min(b, start + n)
        if lo < hi:
            keep[lo - start : hi - start] = False
    return keep


def iter_row_group_slices(
    fs: pafs.FileSystem,
    f: InputFile,
    row_groups: list[int],
    columns: list[str],
    id_column: Optional[str],
    slice_rows: int,
    done: Optional[dict] = None,
    tag: bool = False,
) -> Iterable[tuple[int, pa.Table]]:
    """Stream ``row_groups`` of ``f`` as tables of at most ``slice_rows`` rows.

    Each table has ``columns``, the generated id when ``id_column`` is unset, and (``tag``) the
    hidden unit/row columns. ``done`` maps a row group index to row ranges already staged by an
    earlier attempt: those rows are dropped here, so a resume rescoring nothing it has."""
    import numpy as np

    file_cols = [c for c in columns if c not in f.partition]
    pf = pq.ParquetFile(f.path, filesystem=fs)
    first_of = [0]
    for n in f.row_group_rows:
        first_of.append(first_of[-1] + n)
    for g in row_groups:
        group_done = (done or {}).get(g) or []
        if sum(b - a for a, b in group_done) >= f.row_group_rows[g]:
            continue  # staged whole: not even read
        start = 0
        for batch in pf.iter_batches(batch_size=slice_rows, row_groups=[g], columns=file_cols, use_threads=False):
            table = pa.Table.from_batches([batch])
            n = batch.num_rows
            for k, v in f.partition.items():
                if k in columns and k not in table.column_names:
                    table = table.append_column(k, pa.repeat(pa.scalar(v, pa.string()), n))
            table = table.select(columns)
            table = apply_casts(table, f.casts)
            if id_column is None:
                table = table.append_column(ID_COLUMN, _generated_ids(f.relpath, first_of[g] + start, n))
            if tag:
                key = row_group_key(f, g)
                table = table.append_column(UNIT_COLUMN, pa.DictionaryArray.from_arrays(
                    pa.array(np.zeros(n, dtype=np.int32)), pa.array([key])))
                table = table.append_column(ROW_COLUMN, pa.array(np.arange(start, start + n, dtype=np.int64)))
            if group_done:
                table = table.filter(pa.array(_keep_mask(start, n, group_done)))
            start += n
            if table.num_rows:
                yield g, table


def sample_input(
    fs: pafs.FileSystem,
    files: list[InputFile],
    columns: list[str],
    id_column: Optional[str],
    rows: int,
    max_files: int = 8,
) -> pa.Table:
    """Up to ``rows`` rows from the first row group of up to ``max_files`` files spread over the
    input (for estimates and calibration): deterministic, so a resumed job calibrates alike."""
    import math

    files = [f for f in files if f.num_rows]
    if len(files) > max_files:
        step = len(files) / max_files
        files = [files[int(i * step)] for i in range(max_files)]
    per_file = max(1, math.ceil(rows / max(1, len(files))))
    tables = []
    for f in files:
        for _, t in iter_row_group_slices(fs, f, [0], columns, id_column, per_file):
            tables.append(t)
            break
    table = pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
    return table.slice(0, rows)


def make_datasource(
    fs: pafs.FileSystem,
    files: list[InputFile],
    columns: list[str],
    id_column: Optional[str],
    done: Optional[dict] = None,
    block_rows: int = 256,
    rows_per_task: int = 65536,
):
    """A Ray Data ``Datasource`` reading ``files`` (imported lazily: Ray is heavy).

    One read task covers consecutive row groups of one file, about ``rows_per_task`` rows (a
    single bigger row group is one task, streamed in slices, never held whole), and small files
    share tasks (:func:`pack_units`) whose slices are re-cut into blocks of ``block_rows``. Every row carries
    its row group and index (:data:`HIDDEN_COLUMNS`); ``done`` (row group key → staged row ranges,
    from an interrupted attempt) is cut down to each task's own groups. Tasks whose rows are all
    staged are not created at all."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    done = done or {}
    tasks_spec = []  # per read task: [(unit, its staged ranges), ...] and the rows left to read
    for packed in pack_units(plan_units(files, rows_per_task), rows_per_task):
        parts, remaining = [], 0
        for unit in packed:
            keys = {g: row_group_key(unit.file, g) for g in unit.row_groups}
            mine = {g: done[k] for g, k in keys.items() if k in done}
            left = unit.num_rows - sum(b - a for r in mine.values() for a, b in r)
            if left > 0:
                parts.append((unit, mine))
                remaining += left
        if remaining > 0:
            tasks_spec.append((parts, remaining))

    class ParquetRowGroupDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> Optional[int]:
            return None

        def get_name(self) -> str:
            return "ReadParquetRows"

        @property
        def num_units(self) -> int:
            return len(tasks_spec)

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
            tasks = []
            for parts, remaining in tasks_spec:

                def read_fn(parts: list = parts) -> Iterable[pa.Table]:
                    slices = (
                        table
                        for unit, mine in parts
                        for _, table in iter_row_group_slices(
                            fs, unit.file, unit.row_groups, columns, id_column, block_rows, mine, tag=True
                        )
                    )
                    yield from rebatch(slices, block_rows)

                paths = list(dict.fromkeys(unit.file.path for unit, _ in parts))
                meta = BlockMetadata(num_rows=remaining, size_bytes=None, exec_stats=None, input_files=paths)
                tasks.append(ReadTask(read_fn, meta))
            return tasks

    return ParquetRowGroupDatasource()
