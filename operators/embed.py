"""``embed``: sentence embeddings from a base encoder, as sentence-transformers computes them.

Pooling ``mean`` (attention-masked average of the last hidden state), ``cls`` (first token),
``max`` (masked max) or ``lasttoken`` (the last non-padding token of each row: decoder embedders
such as Qwen3-Embedding, whose causal attention leaves only the last token seeing the whole text),
then optional L2 normalisation; written as a fixed-size list<float32>.
Pooling runs in float32 even for a bf16/fp16 model, so precision is only lost inside the model.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import torch

from .batching import MicroBatch
from .embedding_outputs import CALIBRATED, PRECISIONS, output_type, quantize, sentence_transformers_defaults  # noqa: F401 - re-exported
from .model_operator import ModelOperator, scatter
from .windows import reduce_windows

POOLINGS = ("mean", "cls", "max", "lasttoken")


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Masked pooling over the sequence dimension (float32)."""
    hidden = hidden.float()
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(m == 0, float("-inf")).max(dim=1).values
    if mode == "lasttoken":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(mask)]
    summed = (hidden * m).sum(dim=1)
    return summed / m.sum(dim=1).clamp(min=1e-9)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Per row, the position of its last attended token, whichever side the padding is on
    (sentence-transformers' ``lasttoken`` rule; a row without any attended token gets the last
    position)."""
    seq_len = mask.shape[1]
    values, from_end = mask.flip(1).max(dim=1)
    from_end = torch.where(values == 0, torch.zeros_like(from_end), from_end)
    return seq_len - 1 - from_end


class EmbedOperator(ModelOperator):
    task = "embed"

    def setup(self, pooling: str = "mean", normalize: Optional[bool] = False, truncate_dim: Optional[int] = None,
              precision: str = "float32", ranges: Optional[list] = None, chunk_aggregate: str = "mean") -> None:
        if chunk_aggregate not in ("mean", "max", "none"):
            raise ValueError(f"unknown chunk_aggregate {chunk_aggregate!r}; use mean, max or none")
        self.chunk_aggregate = chunk_aggregate
        self.explode_windows = chunk_aggregate == "none"
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown embedding precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        self.pooling = pooling
        self.normalize = bool(normalize)
        full = int(getattr(self.config, "hidden_size", 0) or getattr(self.config, "d_model", 0))
        if truncate_dim is not None and not 0 < int(truncate_dim) <= full:
            raise ValueError(f"truncate_dim {truncate_dim} must be between 1 and the model's {full} dimensions")
        self.truncate_dim = None if truncate_dim is None else int(truncate_dim)
        self.dim = self.truncate_dim or full
        self.precision = precision
        self.ranges = None if ranges is None else np.asarray(ranges, dtype=np.float32)
        if precision in CALIBRATED and self.ranges is None:
            raise ValueError(f"embedding precision {precision} needs calibration ranges ([min, max] per dimension)")

    def predict(self, mb: MicroBatch, batch: pa.Table) -> dict:
        hidden = self.forward(mb).last_hidden_state
        emb = pool(hidden, mb.attention_mask.to(hidden.device), self.pooling)
        if self.windows is not None and not self.explode_windows:
            return {"embedding": emb}  # a window's pooled vector: merged per row, then finished
        return {"embedding": self.finish(emb)}

    def finish(self, emb: torch.Tensor) -> torch.Tensor:
        """Pooled vectors → stored ones: Matryoshka cut first, then normalise what is kept."""
        if self.truncate_dim is not None:
            emb = emb[:, : self.truncate_dim]
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, p=2, dim=1)
        return emb

    def merge_windows(self, chunks: list, windows, num_rows: int) -> list:
        """A long row's embedding from its windows' pooled vectors (``chunk_aggregate`` mean,
        weighted by tokens, or max), then cut and normalised as a short row's."""
        pooled, has = scatter(chunks, "embedding", len(windows))
        rows, merged = reduce_windows(pooled, windows, has, self.chunk_aggregate)
        return [(rows, {"embedding": self.finish(torch.from_numpy(merged)).numpy()})] if len(rows) else []

    def output_fields(self) -> list[pa.Field]:
        return [pa.field("embedding", output_type(self.precision, self.dim))]

    def to_arrays(self, chunks: list, num_rows: int) -> list[pa.Array]:
        """One float32 buffer of ``rows x dim`` in row order, viewed as a fixed-size list column."""
        if not chunks:
            flat, has = np.zeros((num_rows, self.dim), dtype=np.float32), np.zeros(num_rows, dtype=bool)
        else:
            flat, has = scatter(chunks, "embedding", num_rows)
        stored = quantize(flat.astype(np.float32, copy=False), self.precision, self.ranges)
        values = pa.array(stored.reshape(-1))
        return [pa.FixedSizeListArray.from_arrays(values, stored.shape[1], mask=pa.array(~has))]
