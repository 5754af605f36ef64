"""``classify``: sequence classification with transformers' pipeline semantics.

* single-label: softmax, ``label``/``score`` of the best class;
* multi-label (``problem_type`` multi_label_classification, or a single logit): sigmoid, and
  ``labels`` lists every label whose score reaches ``threshold``;
* regression: raw values (``score`` = the value of the top output);
* ``top_k`` > 1 adds ``top_k_labels``/``top_k_scores`` (best first).
Label names come from the checkpoint's ``id2label``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .batching import MicroBatch
from .model_operator import ModelOperator, label_names, scatter
from .windows import reduce_windows

logger = logging.getLogger(__name__)


def resolve_function(config: Any, requested: str = "auto") -> str:
    """The score function transformers' TextClassificationPipeline would apply."""
    if requested != "auto":
        return requested
    problem = getattr(config, "problem_type", None)
    num_labels = int(getattr(config, "num_labels", 2))
    if problem == "regression":
        return "none"
    if problem == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    return "softmax"


def apply_function(logits: torch.Tensor, function: str) -> torch.Tensor:
    logits = logits.float()
    if function == "softmax":
        return torch.softmax(logits, dim=-1)
    if function == "sigmoid":
        return torch.sigmoid(logits)
    return logits


def pad_like_the_classifier(operator: ModelOperator) -> None:
    """Pad micro-batches the way a decoder-only sequence classifier reads them.

    Such a classifier (Qwen2ForSequenceClassification, ...) scores the rightmost token that is not
    ``config.pad_token_id``, as transformers does; padding with the tokenizer's pad id, when the
    two differ, would make it score a padding token. So its micro-batches are padded with the
    config's id. Without one, transformers scores only batches of one row (the last token): the
    operator then runs one row per forward, which computes exactly that."""
    from .loading import _decoder_only_family

    config = operator.config
    if not type(operator.model).__name__.endswith("ForSequenceClassification") or \
            not _decoder_only_family(getattr(config, "model_type", "")):
        return
    if getattr(config, "pad_token_id", None) is not None:
        operator.pad_token_id = int(config.pad_token_id)
    else:
        logger.warning("%s has no config.pad_token_id: scoring one row per forward (transformers cannot find "
                       "the last token of a padded row without it)", type(operator.model).__name__)
        operator.max_rows = 1


class ClassifyOperator(ModelOperator):
    task = "classify"

    def setup(self, top_k: int = 1, function_to_apply: str = "auto", threshold: float = 0.5,
              chunk_aggregate: str = "mean") -> None:
        if chunk_aggregate not in ("mean", "max"):
            raise ValueError(f"unknown chunk_aggregate {chunk_aggregate!r} for classify; use mean or max")
        self.chunk_aggregate = chunk_aggregate
        self.top_k = max(1, int(top_k))
        self.function = resolve_function(self.config, function_to_apply)
        self.threshold = float(threshold)
        self.multi_label = getattr(self.config, "problem_type", None) == "multi_label_classification"
        self.num_labels = int(getattr(self.config, "num_labels", 0) or 0)
        pad_like_the_classifier(self)

    def predict(self, mb: MicroBatch, batch: pa.Table) -> dict:
        logits = self.forward(mb).logits
        if self.windows is not None:
            return {"logits": logits.float()}  # merged per row before the score function
        return self.scored(logits)

    def merge_windows(self, chunks: list, windows, num_rows: int) -> list:
        """A long row's logits: the ``chunk_aggregate`` (mean weighted by tokens, or max) of its
        windows' logits, then scored as a short row's."""
        logits, has = scatter(chunks, "logits", len(windows))
        rows, merged = reduce_windows(logits, windows, has, self.chunk_aggregate)
        return [(rows, self._to_host(self.scored(torch.from_numpy(merged))))] if len(rows) else []

    def scored(self, logits: torch.Tensor) -> dict:
        """Logits → the score function's top-k (and, multi-label, every label in order)."""
        scores = apply_function(logits, self.function)
        k = min(self.top_k, scores.shape[-1])
        top_scores, top_idx = torch.topk(scores, k, dim=-1)
        result = {"top_idx": top_idx, "top_scores": top_scores, "num_classes": scores.shape[-1]}
        if self.multi_label:
            ordered = torch.argsort(scores, dim=-1, descending=True)
            result["ordered_idx"] = ordered
            result["ordered_scores"] = torch.gather(scores, -1, ordered)
        return result

    def output_fields(self) -> list[pa.Field]:
        fields = [pa.field("label", pa.string()), pa.field("score", pa.float32())]
        if self.top_k > 1:
            fields += [
                pa.field("top_k_labels", pa.list_(pa.string())),
                pa.field("top_k_scores", pa.list_(pa.float32())),
            ]
        if self.multi_label:
            fields.append(pa.field("labels", pa.list_(pa.string())))
        return fields

    def to_arrays(self, chunks: list, num_rows: int) -> list[pa.Array]:
        """Label indices → names by one ``take`` on the label-name array; scores straight from
        the float32 results; top-k lists as offsets over the valid rows' values."""
        top_idx, has = scatter(chunks, "top_idx", num_rows)
        top_scores, _ = scatter(chunks, "top_scores", num_rows)
        missing = pa.array(~has)
        names = label_names(self.config, max([res["num_classes"] for _, res in chunks], default=0))
        best = pa.array(top_idx[:, 0] if top_idx.ndim == 2 else top_idx, type=pa.int64(), mask=~has)
        arrays = {"label": names.take(best), "score": pa.array(top_scores[:, 0] if top_scores.ndim == 2
                                                               else top_scores, type=pa.float32(), mask=~has)}
        if self.top_k > 1:
            k = top_idx.shape[1] if top_idx.ndim == 2 else 0
            offsets = pa.array(np.concatenate(([0], np.cumsum(has * k))).astype(np.int32))
            arrays["top_k_labels"] = pa.ListArray.from_arrays(
                offsets, names.take(pa.array(top_idx[has].reshape(-1), type=pa.int64())), mask=missing)
            arrays["top_k_scores"] = pa.ListArray.from_arrays(
                offsets, pa.array(top_scores[has].reshape(-1), type=pa.float32()), mask=missing)
        if self.multi_label:
            ordered, _ = scatter(chunks, "ordered_idx", num_rows)
            ordered_scores, _ = scatter(chunks, "ordered_scores", num_rows)
            keep = (ordered_scores >= self.threshold) & has[:, None]
            offsets = pa.array(np.concatenate(([0], np.cumsum(keep.sum(axis=1)))).astype(np.int32))
            arrays["labels"] = pa.ListArray.from_arrays(
                offsets, names.take(pa.array(ordered[keep], type=pa.int64())), mask=missing)
        return [arrays[f.name] for f in self.output_fields()]
