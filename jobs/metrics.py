"""Evaluation metrics for fine-tuning: accuracy, macro-F1 and ROUGE-L, in plain Python/torch.

Why sufficient statistics instead of "compute the metric on my rows": evaluation is sharded over
the Ray Train workers, and a mean of per-worker F1 scores is not the F1 of the whole eval set.
Each worker therefore accumulates additive counts (a confusion matrix, sums of ROUGE-L scores,
loss sums) in a :class:`MetricState`, the states are summed across workers with one
``all_reduce`` on the worker's device (:mod:`.collectives`), and the final numbers are computed
once from the totals. The pure functions (:func:`accuracy`, :func:`f1_macro`, :func:`rouge_l`)
are the reference the accumulators are tested against.

Conventions (documented because libraries differ):

* macro-F1 averages over every class that occurs in the labels *or* the predictions (as
  scikit-learn's ``f1_score(average="macro")`` without ``labels=``); a class with no true and no
  predicted rows is left out; F1 of a class is 0 when precision + recall is 0.
* multi-label: ``accuracy`` is exact-match (subset) accuracy; macro-F1 averages per-label F1 over
  the labels that occur in the targets or predictions.
* ROUGE-L is the sentence-level LCS F-measure (beta = 1) on lower-cased word tokens
  (``\\w+``, Unicode-aware), averaged over rows. The ``rouge_score`` package keeps only
  ``[a-z0-9]`` tokens, so scores agree on ASCII text and we additionally score non-Latin text.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional, Sequence

import torch

from rayformers.models.checkpoint_refs import metric_order  # noqa: F401 - re-exported: how "best" compares

_WORD = re.compile(r"\w+", re.UNICODE)


# ------------------------------------------------------------------------------------------------
# Reference functions on whole lists.


def accuracy(predictions: Sequence, references: Sequence) -> float:
    """Share of rows whose prediction equals the reference (exact match for label sets)."""
    if len(predictions) != len(references):
        raise ValueError(f"accuracy: {len(predictions)} predictions but {len(references)} references")
    if not references:
        return 0.0
    return sum(1 for p, r in zip(predictions, references) if p == r) / len(references)


def f1_macro(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Macro-averaged F1 of single-label predictions (see the module docstring for conventions)."""
    classes = sorted(set(predictions) | set(references))
    if not classes:
        return 0.0
    scores = []
    for c in classes:
        tp = sum(1 for p, r in zip(predictions, references) if p == c and r == c)
        fp = sum(1 for p, r in zip(predictions, references) if p == c and r != c)
        fn = sum(1 for p, r in zip(predictions, references) if p != c and r == c)
        scores.append(_f1(tp, fp, fn))
    return sum(scores) / len(scores)


def _f1(tp: float, fp: float, fn: float) -> float:
    denominator = 2 * tp + fp + fn
    return 0.0 if denominator == 0 else 2 * tp / denominator


def rouge_tokens(text: str) -> list[str]:
    """Lower-cased word tokens used by :func:`rouge_l`."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence (O(len(a)·len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            current[j] = previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1])
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """Sentence-level ROUGE-L F-measure of one prediction against one reference."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


# ------------------------------------------------------------------------------------------------
# Additive accumulators, reduced across workers.


KINDS = ("single_label_classification", "multi_label_classification", "regression", "seq2seq",
         "token_classification", "embedding")


class MetricState:
    """Additive evaluation statistics of one worker; ``totals()`` after an all-reduce of ``vector``.

    The layout of the state vector is fixed by ``kind`` and ``num_labels`` so every worker
    produces a tensor of the same shape for ``torch.distributed.all_reduce``.
    """

    def __init__(self, kind: str, num_labels: int = 0):
        if kind not in KINDS:
            raise ValueError(f"unknown metric kind {kind!r}")
        self.kind = kind
        self.num_labels = int(num_labels)
        # [loss_sum, loss_weight, rows, correct_or_exact, sq_error_sum, rouge_sum] + per-class counts
        self.head = torch.zeros(6, dtype=torch.float64)
        if kind == "single_label_classification":
            self.confusion = torch.zeros(self.num_labels, self.num_labels, dtype=torch.float64)
        elif kind == "multi_label_classification":
            self.confusion = torch.zeros(self.num_labels, 3, dtype=torch.float64)  # tp, fp, fn per label
        elif kind == "token_classification":
            self.confusion = torch.zeros(4, dtype=torch.float64)  # entities correct, predicted, actual; words
        else:
            self.confusion = torch.zeros(0, dtype=torch.float64)

    # -- accumulation -------------------------------------------------------------------------
    def add_loss(self, loss_sum: float, weight: float) -> None:
        """``loss_sum`` is the summed loss of ``weight`` items (rows, or target tokens)."""
        self.head[0] += float(loss_sum)
        self.head[1] += float(weight)

    def add_classification(self, logits: torch.Tensor, labels: torch.Tensor, threshold: float = 0.0) -> None:
        """Update from a batch of logits and labels (ids, multi-hot rows or regression targets)."""
        logits = logits.detach().float().cpu()
        labels = labels.detach().cpu()
        n = logits.shape[0]
        self.head[2] += n
        if self.kind == "single_label_classification":
            pred = logits.argmax(-1)
            ref = labels.long().view(-1)
            self.head[3] += float((pred == ref).sum())
            index = ref * self.num_labels + pred
            self.confusion += torch.bincount(index, minlength=self.num_labels**2).view(
                self.num_labels, self.num_labels
            ).double()
        elif self.kind == "multi_label_classification":
            pred = logits > threshold  # logit > 0 ⇔ sigmoid > 0.5
            ref = labels > 0.5
            self.head[3] += float((pred == ref).all(dim=-1).sum())
            self.confusion[:, 0] += (pred & ref).sum(0).double()
            self.confusion[:, 1] += (pred & ~ref).sum(0).double()
            self.confusion[:, 2] += (~pred & ref).sum(0).double()
        elif self.kind == "regression":
            values = logits.view(n, -1)
            targets = labels.float().view(n, -1)
            self.head[4] += float(((values - targets) ** 2).mean(dim=-1).sum())
        else:
            raise ValueError("add_classification on a seq2seq MetricState")

    def add_tagging(self, logits: torch.Tensor, labels: torch.Tensor, id2label: dict) -> None:
        """Token classification: word accuracy and entity counts (seqeval's rules) at the labelled
        (first sub-token) positions of a batch."""
        from .entity_metrics import entity_counts
        from .token_tagging import word_predictions

        predicted = logits.detach().argmax(-1).cpu().tolist()
        references, predictions = word_predictions(predicted, labels.detach().cpu().tolist(),
                                                   {int(k): v for k, v in id2label.items()})
        correct, n_pred, n_true = entity_counts(references, predictions)
        self.head[2] += len(references)
        self.head[3] += sum(r == p for ref, pred in zip(references, predictions) for r, p in zip(ref, pred))
        self.confusion += torch.tensor([correct, n_pred, n_true, sum(len(r) for r in references)], dtype=torch.float64)

    def add_retrieval(self, correct: int, rows: int) -> None:
        """Embeddings: anchors whose most similar in-batch candidate is their own positive."""
        self.head[2] += rows
        self.head[3] += correct

    def add_generations(self, predictions: Iterable[str], references: Iterable[str]) -> None:
        for p, r in zip(predictions, references):
            self.head[2] += 1
            self.head[5] += rouge_l(p, r)
            self.head[3] += float(rouge_tokens(p) == rouge_tokens(r))

    # -- reduction ----------------------------------------------------------------------------
    def vector(self) -> torch.Tensor:
        return torch.cat([self.head, self.confusion.flatten()])

    def load_vector(self, vector: torch.Tensor) -> None:
        vector = vector.detach().double().cpu()
        self.head = vector[:6].clone()
        self.confusion = vector[6:].clone().view(self.confusion.shape)

    def all_reduce(self, device: torch.device) -> None:
        """Sum the statistics over all workers (no-op without a process group).

        The statistics are kept on the host; the collective runs on ``device``, the worker's
        device (NCCL accepts only CUDA tensors), and the sums come back to the host."""
        from .collectives import all_reduce_sum, world_size

        if world_size() > 1:
            self.load_vector(all_reduce_sum(self.vector(), device))

    def totals(self, prefix: str = "eval_") -> dict[str, float]:
        """Final metrics from the (reduced) statistics."""
        loss_sum, loss_weight, rows, correct, sq_error, rouge_sum = self.head.tolist()
        out: dict[str, float] = {f"{prefix}rows": int(rows)}
        if loss_weight > 0:
            out[f"{prefix}loss"] = loss_sum / loss_weight
        if rows == 0:
            return out
        if self.kind == "single_label_classification":
            out[f"{prefix}accuracy"] = correct / rows
            out[f"{prefix}f1_macro"] = _f1_macro_from_confusion(self.confusion)
        elif self.kind == "multi_label_classification":
            out[f"{prefix}accuracy"] = correct / rows
            scores = [
                _f1(tp, fp, fn) for tp, fp, fn in self.confusion.tolist() if tp + fp + fn > 0
            ]
            out[f"{prefix}f1_macro"] = sum(scores) / len(scores) if scores else 0.0
        elif self.kind == "regression":
            out[f"{prefix}mse"] = sq_error / rows
        elif self.kind == "token_classification":
            from .entity_metrics import scores_from_counts

            entity_correct, predicted, actual, words = self.confusion.tolist()
            for name, value in scores_from_counts(entity_correct, predicted, actual).items():
                out[f"{prefix}{name}"] = value
            out[f"{prefix}accuracy"] = correct / words if words else 0.0
        elif self.kind == "embedding":
            out[f"{prefix}accuracy"] = correct / rows
        else:
            out[f"{prefix}rougeL"] = rouge_sum / rows
            out[f"{prefix}exact_match"] = correct / rows
        return out


def _f1_macro_from_confusion(confusion: torch.Tensor) -> float:
    """Macro-F1 from a [reference, prediction] count matrix, over classes that occur at all."""
    tp = confusion.diag()
    predicted = confusion.sum(0)
    actual = confusion.sum(1)
    present = (predicted + actual) > 0
    if not bool(present.any()):
        return 0.0
    f1 = torch.where(predicted + actual > 0, 2 * tp / (predicted + actual).clamp(min=1e-12), torch.zeros_like(tp))
    return float(f1[present].mean())


def format_metrics(metrics: dict, keys: Optional[Sequence[str]] = None) -> str:
    """``eval_loss 0.4123 eval_accuracy 0.9100`` for progress lines."""
    items = []
    for k in keys or sorted(metrics):
        if k not in metrics:
            continue
        v = metrics[k]
        items.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    return " ".join(items)


__all__ = [
    "MetricState",
    "accuracy",
    "f1_macro",
    "format_metrics",
    "lcs_length",
    "metric_order",
    "rouge_l",
    "rouge_tokens",
]
