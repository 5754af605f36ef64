"""Long rows as windows: the model-side half of ``tokenizer.overflow: chunk``.

The tokenizer keeps one row per input row (a Ray batch may be cut anywhere between the tokenizer
and the model, so a row's windows must travel in that row): ``input_ids`` holds the row's windows
concatenated and ``window_lengths`` their sizes. Here the rows are viewed as windows, one
:class:`~.batching.TokenLists` entry each (no copy: starts into the same flat buffer), so
micro-batch planning, padding and the forward run over windows like over any rows; windows of
one row may land in different micro-batches. Afterwards the window results are merged back per
row (:func:`reduce_windows`), or, for ``chunk_aggregate: none``, laid out as one output row per
window (:func:`exploded_layout`). Everything is numpy over all windows of a batch at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import pyarrow as pa

from .batching import TokenLists


@dataclass
class Windows:
    """The windows of a batch, in row order: window ``w`` belongs to row ``row[w]`` and holds
    ``lengths[w]`` tokens from ``offset[w]`` tokens past its row's start; row ``r`` has
    ``count[r]`` windows from window ``first[r]`` (0 windows: an error row)."""

    row: np.ndarray
    offset: np.ndarray
    lengths: np.ndarray
    first: np.ndarray
    count: np.ndarray

    def __len__(self) -> int:
        return len(self.row)

    @classmethod
    def from_arrow(cls, column: Union[pa.Array, pa.ChunkedArray], num_rows: int) -> "Windows":
        """From the tokenizer's ``window_lengths`` column (null for rows without tokens)."""
        per_row = TokenLists.from_arrow(column)
        count = per_row.lengths
        first = np.zeros(num_rows, dtype=np.int64)
        np.cumsum(count[:-1], out=first[1:])
        row = np.repeat(np.arange(num_rows, dtype=np.int64), count)
        within = np.arange(len(row), dtype=np.int64) - first[row]
        lengths = per_row.values[per_row.starts[row] + within].astype(np.int64)
        before = np.cumsum(lengths) - lengths  # tokens of all earlier windows of the batch
        offset = before - before[first[row]] if len(row) else before
        return cls(row, offset, lengths, first, count)

    def lists(self, rows: Optional[TokenLists]) -> Optional[TokenLists]:
        """The windows of row-level token lists (``input_ids`` or an offset column), one entry
        per window, sharing ``rows``' flat values."""
        if rows is None:
            return None
        return TokenLists(rows.values, rows.starts[self.row] + self.offset, self.lengths)

    def index_in_row(self) -> np.ndarray:
        """Each window's position among its row's windows (0 for the first)."""
        return np.arange(len(self.row), dtype=np.int64) - self.first[self.row]


def reduce_windows(values: np.ndarray, windows: Windows, has: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, per-row values)`` from per-window ``values`` (window order, ``has`` marking the
    windows with a result; a row is merged only from complete windows, the caller drops rows
    with a failed window): ``mean`` weighted by each window's tokens (the mask sum the window's
    pooling saw, so mean-pooled windows average to the mean over all windows' tokens), or
    element-wise ``max``."""
    kept = np.flatnonzero(has)
    if not len(kept):
        return np.zeros(0, dtype=np.int64), values[:0]
    row = windows.row[kept]
    starts = np.flatnonzero(np.concatenate(([True], row[1:] != row[:-1])))
    v = values[kept].astype(np.float32, copy=False)
    if how == "max":
        return row[starts], np.maximum.reduceat(v, starts, axis=0)
    if how != "mean":
        raise ValueError(f"unknown chunk_aggregate {how!r}; use mean or max")
    weight = windows.lengths[kept].astype(np.float32)
    shape = (-1,) + (1,) * (v.ndim - 1)
    summed = np.add.reduceat(v * weight.reshape(shape), starts, axis=0)
    return row[starts], summed / np.add.reduceat(weight, starts).reshape(shape)


@dataclass
class ExplodedLayout:
    """Output rows of ``chunk_aggregate: none``: unit ``u`` is window ``window[u]`` of batch row
    ``row[u]`` (``window[u] = -1`` and ``index[u] = -1`` for a row without results, which stays
    one row)."""

    row: np.ndarray
    window: np.ndarray
    index: np.ndarray
    repeats: np.ndarray
    """Output rows of each unit's batch row (to spread per-row quantities over them)."""


def exploded_layout(windows: Windows, row_has: np.ndarray) -> ExplodedLayout:
    """One unit per window of every row with results (``row_has``), one per other row."""
    counts = np.where(row_has, windows.count, 1)
    row = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    index = np.arange(len(row), dtype=np.int64) - starts[row]
    ok = row_has[row]
    window = np.where(ok, windows.first[row] + index, -1)
    return ExplodedLayout(row, window, np.where(ok, index, -1), counts[row])


def window_spans(windows: Windows, starts: TokenLists, ends: TokenLists, special: TokenLists) -> tuple[np.ndarray, np.ndarray]:
    """Per window: the character offset where its first non-special token starts and where its
    last one ends (-1 for a window of special tokens only)."""
    win_special = windows.lists(special)
    real = np.flatnonzero(win_special.values == 0)  # non-special token positions in the flat buffer
    begin, stop = win_special.starts, win_special.starts + win_special.lengths
    lo = np.searchsorted(real, begin)
    hi = np.searchsorted(real, stop) - 1
    found = (lo <= hi) & (lo < len(real))
    first = np.where(found, real[np.minimum(lo, max(len(real) - 1, 0))] - begin, 0) if len(real) else np.zeros_like(begin)
    last = np.where(found, real[np.clip(hi, 0, max(len(real) - 1, 0))] - begin, 0) if len(real) else np.zeros_like(begin)
    win_starts, win_ends = windows.lists(starts), windows.lists(ends)
    span_start = np.where(found, win_starts.values[win_starts.starts + first] if len(win_starts.values) else 0, -1)
    span_end = np.where(found, win_ends.values[win_ends.starts + last] if len(win_ends.values) else 0, -1)
    return span_start.astype(np.int64), span_end.astype(np.int64)
