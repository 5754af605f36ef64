"""Before a quantised job: does int8 give the answers float32 gives, on this job's own rows?

A sample of the input (``model.agreement_rows``, taken as calibration samples are) is scored
twice through the job's own stages, once with ``model.quantization: none``, and compared per
row: the same label (classify; zero-shot: the same best label), the cosine of the embeddings
(embed, sparse-embed), the same entities (token-classify), the same text (generate) or a score within
0.05 (rerank). The
mean goes into the report; below ``model.min_agreement`` the job does not start, since a
billion rows scored wrongly cost more than a billion rows scored slowly.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np

METRIC = {
    "classify": "same label",
    "zero-shot-classify": "same best label",
    "embed": "cosine",
    "sparse-embed": "cosine",
    "token-classify": "same entities",
    "generate": "same text",
    "rerank": "score within 0.05",
}
RERANK_TOLERANCE = 0.05
"""rerank: a quantised score agrees when it is this close to float32's (each label's, several labels)."""


def _sparse_dense(entries) -> dict:
    return {e["token_id"]: e["weight"] for e in entries or []}


def _row_agreement(task: str, a: dict, b: dict) -> float:
    if a.get("error") is not None or b.get("error") is not None:
        return float(a.get("error") is not None and b.get("error") is not None)
    if task == "classify":
        return float(a["label"] == b["label"])
    if task == "zero-shot-classify":
        return float(a["labels"][:1] == b["labels"][:1])
    if task == "embed":
        x, y = np.asarray(a["embedding"], dtype=np.float64), np.asarray(b["embedding"], dtype=np.float64)
        return float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-12))
    if task == "sparse-embed":
        x, y = _sparse_dense(a["sparse_embedding"]), _sparse_dense(b["sparse_embedding"])
        dot = sum(w * y.get(k, 0.0) for k, w in x.items())
        norm = np.sqrt(sum(w * w for w in x.values()) * sum(w * w for w in y.values()))
        return float(dot / max(norm, 1e-12))
    if task == "token-classify":
        key = lambda ents: [(e.get("entity_group", e.get("entity")), e["start"], e["end"]) for e in ents or []]  # noqa: E731
        return float(key(a["entities"]) == key(b["entities"]))
    if task == "rerank":
        x = np.atleast_1d(np.asarray(a["score"] if "score" in a else a["scores"], dtype=np.float64))
        y = np.atleast_1d(np.asarray(b["score"] if "score" in b else b["scores"], dtype=np.float64))
        return float(np.abs(x - y).max() <= RERANK_TOLERANCE)
    return float(a["generated_text"] == b["generated_text"])


def quantization_agreement(job: Any, sample_ds: Any) -> dict:
    """Score ``sample_ds`` with and without the job's quantisation; ``{metric, agreement, rows}``."""
    from .dataflow import processing_stages

    float_cfg = copy.deepcopy(job.config)
    float_cfg.model.quantization = "none"
    reference = dataclasses.replace(job, config=float_cfg)
    key = job.id_column
    want = lambda spec: {r[key]: r for r in processing_stages(sample_ds, spec).take_all()}  # noqa: E731
    base, quantized = want(reference), want(job)
    task = job.config.model.task
    scores = [_row_agreement(task, base[k], quantized[k]) for k in base if k in quantized]
    return {
        "quantization": job.config.model.quantization,
        "metric": METRIC.get(task, "agreement"),
        "agreement": float(np.mean(scores)) if scores else 0.0,
        "rows": len(scores),
    }


__all__ = ["METRIC", "quantization_agreement"]
