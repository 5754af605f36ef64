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
        found = [(info.path, rel) for info, _, rel in listed]
        if only is not None:
            found = [(p, rel) for p, rel in found if p in wanted]
        for p, rel in sorted(found):
            try:
                meta = pq.ParquetFile(p, filesystem=fs_i).metadata
            except Exception as e:  # noqa: BLE001 - report which file is broken
                raise InputError(f"input file {p} is not a readable Parquet file: {e}") from e
            rg = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            files.append(
                InputFile(
                    path=p,
                    relpath=rel,
                    num_rows=meta.num_rows,
                    row_group_rows=rg,
                    partition=_hive_partition(rel) if partitioning == "hive" else {},
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


def read_unit(
    fs: pafs.FileSystem,
    unit: ReadUnit,
    columns: list[str],
    id_column: Optional[str],
    skip_ids: Optional[pa.Array] = None,
) -> pa.Table:
    """Read one unit with only ``columns``; add the generated id; drop ids already done."""
    f = unit.file
    file_cols = [c for c in columns if c not in f.partition]
    table = pq.ParquetFile(f.path, filesystem=fs).read_row_groups(unit.row_groups, columns=file_cols)
    for k, v in f.partition.items():
        if k in columns and k not in table.column_names:
            table = table.append_column(k, pa.array([v] * table.num_rows, type=pa.string()))
    table = table.select(columns)
    if id_column is None:
        ids = [f"{f.relpath}:{unit.first_row + i}" for i in range(table.num_rows)]
        table = table.append_column(ID_COLUMN, pa.array(ids, type=pa.string()))
    if skip_ids is not None and len(skip_ids):
        import pyarrow.compute as pc

        key = table.column(id_column or ID_COLUMN)
        keep = pc.invert(pc.is_in(key, value_set=skip_ids.cast(key.type)))
        table = table.filter(keep)
    return table


def make_datasource(
    fs: pafs.FileSystem,
    files: list[InputFile],
    columns: list[str],
    id_column: Optional[str],
    skip_ids_ref=None,
    block_rows: int = 256,
    blocks_per_task: int = 8,
):
    """A Ray Data ``Datasource`` reading ``files`` unit by unit (imported lazily: Ray is heavy).

    Each read task yields blocks of at most ``block_rows`` rows. A block then stays one unit of
    work through tokenizer and model to one staged part file, so ``block_rows`` (the job's
    ``compute.batch_size``) is also the granularity of resume: a crash loses at most the blocks
    in flight."""
    import ray
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    units = plan_units(files, block_rows * blocks_per_task)

    class ParquetRowGroupDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> Optional[int]:
            return None

        def get_name(self) -> str:
            return "ReadParquetRows"

        @property
        def num_units(self) -> int:
            return len(units)

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
            tasks = []
            for unit in units:

                def read_fn(unit: ReadUnit = unit) -> Iterable[pa.Table]:
                    skip = ray.get(skip_ids_ref) if skip_ids_ref is not None else None
                    table = read_unit(fs, unit, columns, id_column, skip)
                    for offset in range(0, table.num_rows, block_rows):
                        yield table.slice(offset, block_rows)

                meta = BlockMetadata(
                    num_rows=unit.num_rows, size_bytes=None, exec_stats=None, input_files=[unit.file.path]
                )
                tasks.append(ReadTask(read_fn, meta))
            return tasks

    return ParquetRowGroupDatasource()
