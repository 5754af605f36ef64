"""Errors are data: the checks that turn a bad input row into an error record instead of a crash.

A row that cannot be scored keeps its place in the output with its id, its passthrough columns,
null predictions and a human-readable ``error`` (Beam's dead-letter output, Spark's
``_corrupt_record``). The job fails only past ``output.max_error_fraction``, never on one row.
"""

from __future__ import annotations

from typing import Any, Optional

import pyarrow as pa

ERROR_COLUMN = "error"
"""Output column holding the reason a row has no prediction (null when the row is fine)."""


def text_problem(value: Any, column: str) -> tuple[Optional[str], Optional[str]]:
    """Return ``(text, None)`` for usable text, else ``(None, reason)``.

    Bytes are accepted when they are valid UTF-8 (a binary Parquet column of text); anything else
    that is not a string is an error, as are null, empty and whitespace-only strings."""
    if value is None:
        return None, f"{column}: text is null"
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"{column}: text is not valid UTF-8 ({e.reason} at byte {e.start})"
    if not isinstance(value, str):
        return None, f"{column}: text is not a string (got {type(value).__name__})"
    if value == "":
        return None, f"{column}: text is empty"
    if value.isspace():
        return None, f"{column}: text is blank (whitespace only)"
    return value, None


def column_to_pylist(column: Any) -> list:
    """A batch column (pyarrow array/chunked array, numpy array, pandas series or list) as a list."""
    if isinstance(column, (pa.Array, pa.ChunkedArray)):
        return column.to_pylist()
    if hasattr(column, "tolist"):
        return column.tolist()
    return list(column)


def merge_errors(first: list[Optional[str]], second: list[Optional[str]]) -> list[Optional[str]]:
    """Keep the first reason a row failed; later stages never overwrite an earlier error."""
    return [a if a is not None else b for a, b in zip(first, second)]
