"""Column names and padding shared by the training data path and the training kinds built on it
(:mod:`.train_data`, :mod:`.embedding_training`): apart, so neither imports the other back."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

MICRO_COLUMN = "_micro"
"""Global micro-batch index of a training row (step = micro // gradient_accumulation_steps)."""


def pad_list_column(column, pad_value: int) -> tuple[np.ndarray, np.ndarray]:
    """A list<int> Arrow column → (padded [rows, longest] int64 array, lengths)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = column.offsets.to_numpy()
    lengths = np.diff(offsets)
    values = column.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
    width = int(lengths.max()) if len(lengths) else 0
    out = np.full((len(lengths), width), pad_value, dtype=np.int64)
    out[np.arange(width)[None, :] < lengths[:, None]] = values
    return out, lengths
