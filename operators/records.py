"""Errors are data: the checks that turn a bad input row into an error record instead of a crash.

A row that cannot be scored keeps its place in the output with its id, its passthrough columns,
null predictions and a human-readable ``error`` (Beam's dead-letter output, Spark's
``_corrupt_record``). The job fails only past ``output.max_error_fraction``, never on one row.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
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


def valid_rows(errors: Any) -> "np.ndarray":
    """Boolean mask of the rows whose error column is null (the rows to score)."""
    import numpy as np

    if isinstance(errors, (pa.Array, pa.ChunkedArray)):
        return np.asarray(errors.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return np.array([e is None for e in column_to_pylist(errors)], dtype=bool)


def error_column(errors: Any, failures: dict[int, str]) -> pa.Array:
    """The output error column: the input's, as string, plus the reasons rows failed in the model.

    Without failures (the common case) the input column passes through as it is; the per-row
    list is only built when some row needs a new reason."""
    if not failures and isinstance(errors, (pa.Array, pa.ChunkedArray)):
        return errors if errors.type == pa.string() else errors.cast(pa.string())
    merged = column_to_pylist(errors)
    for row, reason in failures.items():
        merged[row] = reason
    return pa.array(merged, type=pa.string())


def validated_texts(column, name: str) -> tuple[np.ndarray, list, dict[int, str]]:
    """``(usable, texts, reasons)``: a mask of the rows with usable text, the column as Python
    strings (``texts[i]`` is only meaningful where usable) and a reason per unusable row.

    A string column is checked by Arrow kernels (null, empty, whitespace only: ``utf8_is_space``
    agrees with ``str.isspace`` on every code point); other types (binary text, numbers) go
    through :func:`text_problem` row by row."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if isinstance(column, pa.Array) and column.type in (pa.string(), pa.large_string()):
        import pyarrow.compute as pc

        null = column.is_null().to_numpy(zero_copy_only=False)
        empty = pc.fill_null(pc.equal(pc.binary_length(column), 0), False).to_numpy(zero_copy_only=False)
        blank = pc.fill_null(pc.utf8_is_space(column), False).to_numpy(zero_copy_only=False)
        reasons = {}
        for i in np.flatnonzero(null | empty | blank).tolist():
            reasons[i] = text_problem(column[i].as_py(), name)[1]
        return ~(null | empty | blank), column.to_pylist(), reasons
    texts, reasons = [], {}
    for i, v in enumerate(column_to_pylist(column)):
        text, err = text_problem(v, name)
        texts.append(text)
        if err is not None:
            reasons[i] = err
    usable = np.ones(len(texts), dtype=bool)
    usable[list(reasons)] = False
    return usable, texts, reasons
