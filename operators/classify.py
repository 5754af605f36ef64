"""``classify``: sequence classification with transformers' pipeline semantics.

* single-label: softmax, ``label``/``score`` of the best class;
* multi-label (``problem_type`` multi_label_classification, or a single logit): sigmoid, and
  ``labels`` lists every label whose score reaches ``threshold``;
* regression: raw values (``score`` = the value of the top output);
* ``top_k`` > 1 adds ``top_k_labels``/``top_k_scores`` (best first).
Label names come from the checkpoint's ``id2label``.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import torch

from .batching import MicroBatch
from .model_operator import ModelOperator, label_name


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


class ClassifyOperator(ModelOperator):
    task = "classify"

    def setup(self, top_k: int = 1, function_to_apply: str = "auto", threshold: float = 0.5) -> None:
        self.top_k = max(1, int(top_k))
        self.function = resolve_function(self.config, function_to_apply)
        self.threshold = float(threshold)
        self.multi_label = getattr(self.config, "problem_type", None) == "multi_label_classification"
        self.num_labels = int(getattr(self.config, "num_labels", 0) or 0)

    def predict(self, mb: MicroBatch, batch: pa.Table) -> list:
        scores = apply_function(self.forward(mb).logits, self.function).cpu()
        k = min(self.top_k, scores.shape[-1])
        top_scores, top_idx = torch.topk(scores, k, dim=-1)
        rows = []
        for r in range(scores.shape[0]):
            idx = top_idx[r].tolist()
            vals = top_scores[r].tolist()
            labels = [label_name(self.config, i) for i in idx]
            row = {"label": labels[0], "score": vals[0], "top_k_labels": labels, "top_k_scores": vals}
            if self.multi_label:
                order = torch.argsort(scores[r], descending=True).tolist()
                row["labels"] = [label_name(self.config, i) for i in order if scores[r, i] >= self.threshold]
            rows.append(row)
        return rows

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

    def to_arrays(self, results: list) -> list[pa.Array]:
        arrays = []
        for f in self.output_fields():
            arrays.append(pa.array([None if r is None else r[f.name] for r in results], type=f.type))
        return arrays
