"""The row groups of a published output, and which of them a report reads.

A report must stay cheap on an output of billions of rows: it lists the row groups from the
Parquet footers (with the ``error`` column's null count, so that error rows can be found without
reading the rest), reads one row group at a time with only the columns it needs, and samples by
whole row groups in a seeded random order.
"""

from __future__ import annotations

import posixpath
import random
from dataclasses import dataclass
from typing import Optional

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayformers.operators.records import ERROR_COLUMN

SAMPLE_SEED = 0


@dataclass
class RowGroup:
    """One row group of one output file; ``error_nulls`` is the ``error`` column's null count from
    the footer statistics (None when the file has no statistics or no such column)."""

    path: str
    index: int
    rows: int
    error_nulls: Optional[int]


def data_files(fs: pafs.FileSystem, path: str, manifest: dict) -> list[str]:
    """The output's Parquet files: those its manifest lists, else the ``.parquet`` files in it."""
    listed = [f["path"] for f in manifest.get("output_files") or [] if f.get("path")]
    if listed:
        return [posixpath.join(path, p) for p in listed]
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet"))


def list_row_groups(fs: pafs.FileSystem, files: list[str]) -> tuple[list[RowGroup], Optional[pa.Schema]]:
    """Every row group of ``files`` (footers only) and the first file's schema."""
    groups, schema = [], None
    for path in files:
        with fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
        if schema is None:
            schema = meta.schema.to_arrow_schema()
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        error_index = names.index(ERROR_COLUMN) if ERROR_COLUMN in names else None
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            nulls = None
            if error_index is not None:
                stats = rg.column(error_index).statistics
                nulls = stats.null_count if stats is not None and stats.has_null_count else None
            groups.append(RowGroup(path, i, rg.num_rows, nulls))
    return groups, schema


def read_row_group(fs: pafs.FileSystem, group: RowGroup, columns: list[str]) -> pa.Table:
    with fs.open_input_file(group.path) as f:
        return pq.ParquetFile(f).read_row_group(group.index, columns=columns)


def sample_groups(groups: list[RowGroup], sample_rows: int, seed: int = SAMPLE_SEED) -> list[tuple[RowGroup, int]]:
    """``[(row group, rows to take from its start)]``: every row group when the output has at most
    ``sample_rows`` rows, else row groups in a seeded random order until ``sample_rows``."""
    total = sum(g.rows for g in groups)
    if total <= sample_rows:
        return [(g, g.rows) for g in groups]
    order = list(groups)
    random.Random(seed).shuffle(order)
    picked, left = [], sample_rows
    for g in order:
        if left <= 0:
            break
        take = min(g.rows, left)
        picked.append((g, take))
        left -= take
    return picked
