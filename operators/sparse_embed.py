"""``sparse-embed``: SPLADE-style sparse vectors from a masked-LM head, for hybrid search.

A row's weight for vocabulary token ``v`` is ``max over its tokens t of log(1 + relu(logit[t, v]))``
(SPLADE's max pooling; padding positions excluded), so the vector lives in the vocabulary space
and most weights are zero. Output: ``sparse_embedding``, a list of ``{token_id, weight}`` (and
``token`` with ``task.sparse_tokens``) above ``task.sparse_threshold``, the ``task.sparse_top_k``
largest at most, by weight descending; ``sparse_nnz`` is how many were kept.

Why computed on the device and cut there: the full ``batch x vocab`` weight matrix (30k floats a
row) never crosses to the host; only the kept (id, weight) pairs do, as flat arrays that become
the Arrow list column by offsets, with no per-row Python.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyarrow as pa
import torch

from .batching import MicroBatch
from .model_operator import ModelOperator


def splade_weights(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(batch, vocab)`` weights from ``(batch, seq, vocab)`` MLM logits (padding excluded)."""
    activated = torch.log1p(torch.relu(logits.float()))
    return (activated * attention_mask.unsqueeze(-1).to(activated.dtype)).amax(dim=1)


def top_weights(weights: torch.Tensor, top_k: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the ``top_k`` largest weights (all when None), largest first: ``(values, ids)``,
    fixed-size, on the weights' device (no host sync)."""
    k = weights.shape[1] if top_k is None else min(int(top_k), weights.shape[1])
    return torch.topk(weights, k, dim=1, sorted=True)


def compact_sparse(values: torch.Tensor, ids: torch.Tensor, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries of :func:`top_weights` above ``threshold``, on the host: ``(flat token ids, flat
    weights, per-row counts)``. Selected on the device (only the kept pairs cross); the selection's
    size is data-dependent, so this waits for the device."""
    keep = values > threshold
    return ids[keep].cpu().numpy(), values[keep].cpu().numpy(), keep.sum(dim=1).cpu().numpy()


def keep_sparse(weights: torch.Tensor, threshold: float, top_k: Optional[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, the weights above ``threshold`` (the ``top_k`` largest at most), largest first:
    ``(flat token ids, flat weights, per-row counts)``."""
    values, ids = top_weights(weights, top_k)
    return compact_sparse(values, ids, threshold)


class SparseEmbedOperator(ModelOperator):
    task = "sparse-embed"

    def setup(self, threshold: float = 0.0, top_k: Optional[int] = None, with_tokens: bool = False,
              tokenizer_path: Optional[str] = None, tokenizer: Any = None) -> None:
        if top_k is not None and int(top_k) < 1:
            raise ValueError(f"task.sparse_top_k must be at least 1, got {top_k}")
        self.threshold = float(threshold)
        self.top_k = None if top_k is None else int(top_k)
        self.tokenizer = None
        if with_tokens:
            if tokenizer is None:
                from .loading import load_tokenizer

                tokenizer = load_tokenizer(tokenizer_path, self.revision, self.local_files_only)
            self.tokenizer = tokenizer

    def predict(self, mb: MicroBatch, batch: pa.Table) -> dict:
        """Each row's ``top_k`` weights and ids, left on the device; cut at the threshold in
        :meth:`to_host`, once the next micro-batch is queued."""
        logits = self.forward(mb).logits
        values, ids = top_weights(splade_weights(logits, mb.attention_mask.to(logits.device)), self.top_k)
        return {"top_values": values, "top_ids": ids}

    def to_host(self, result: dict) -> dict:
        ids, values, counts = compact_sparse(result["top_values"], result["top_ids"], self.threshold)
        return {"ids": ids, "weights": values, "counts": counts}

    def output_fields(self) -> list[pa.Field]:
        return [pa.field("sparse_embedding", self._entry_type()), pa.field("sparse_nnz", pa.int32())]

    def _entry_type(self) -> pa.DataType:
        fields = [pa.field("token_id", pa.int32()), pa.field("weight", pa.float32())]
        if self.tokenizer is not None:
            fields.append(pa.field("token", pa.string()))
        return pa.list_(pa.struct(fields))

    def to_arrays(self, chunks: list, num_rows: int) -> list[pa.Array]:
        """The kept pairs of all micro-batches, put in row order by one gather, as a list column."""
        counts = np.zeros(num_rows, dtype=np.int64)
        has = np.zeros(num_rows, dtype=bool)
        pieces = []  # (row, ids, weights) per micro-batch, rows in micro-batch order
        for rows, res in chunks:
            counts[rows] = res["counts"]
            has[rows] = True
            pieces.append((rows, res["ids"], res["weights"], res["counts"]))
        offsets = np.zeros(num_rows + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        ids = np.zeros(offsets[-1], dtype=np.int32)
        weights = np.zeros(offsets[-1], dtype=np.float32)
        for rows, chunk_ids, chunk_weights, chunk_counts in pieces:
            starts = np.repeat(offsets[rows], chunk_counts)
            within = np.arange(len(chunk_ids)) - np.repeat(np.cumsum(chunk_counts) - chunk_counts, chunk_counts)
            ids[starts + within] = chunk_ids
            weights[starts + within] = chunk_weights
        children = [pa.array(ids), pa.array(weights)]
        names = ["token_id", "weight"]
        if self.tokenizer is not None:
            children.append(pa.array(self.tokenizer.convert_ids_to_tokens(ids.tolist()), type=pa.string()))
            names.append("token")
        entries = pa.StructArray.from_arrays(children, names=names)
        lists = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), entries, mask=pa.array(~has))
        return [lists, pa.array(np.where(has, counts, 0).astype(np.int32), mask=~has)]


__all__ = ["SparseEmbedOperator", "compact_sparse", "keep_sparse", "splade_weights", "top_weights"]
