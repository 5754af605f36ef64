"""Entity-level precision, recall and F1 of tag sequences, by seqeval's rules (no dependency).

NER is scored on entities, not tokens: a predicted entity counts only when its type, first and
last word all equal a reference entity's. Entities are read from the tags as seqeval's default
mode (conlleval-compatible) reads them, which accepts IOB1, IOB2, IOE and IOBES prefixes and is
lenient: an ``I-X`` after ``O`` or after another type starts a new entity, a change of type ends
one. The scores are micro averages over all entities, as ``seqeval.metrics.f1_score`` with its
default ``average="micro"``; 0 when there is nothing to divide by.

Why counts instead of scores: evaluation is sharded over workers, so each worker adds its
(true positives, predicted, actual) counts and the sums are reduced before dividing (see
:class:`rayformers.jobs.metrics.MetricState`).
"""

from __future__ import annotations

from typing import Sequence


def _split(tag: str) -> tuple[str, str]:
    """``B-PER`` → (``B``, ``PER``); ``O`` → (``O``, ``_``) as seqeval (prefix form, no suffix)."""
    return tag[0], (tag[1:].split("-", maxsplit=1)[-1] or "_")


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first, last) word index of every entity in one sentence's tags."""
    prev_tag, prev_type, begin = "O", "", 0
    chunks = []
    for i, chunk in enumerate(list(tags) + ["O"]):
        tag, type_ = _split(chunk)
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def entity_counts(references: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]) -> tuple[int, int, int]:
    """(correct, predicted, actual) entity counts over sentences of word tags."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} reference sentences but {len(predictions)} predicted")
    correct = predicted = actual = 0
    for ref, pred in zip(references, predictions):
        if len(ref) != len(pred):
            raise ValueError(f"a sentence has {len(ref)} reference tags but {len(pred)} predicted")
        true_set, pred_set = set(get_entities(ref)), set(get_entities(pred))
        correct += len(true_set & pred_set)
        predicted += len(pred_set)
        actual += len(true_set)
    return correct, predicted, actual


def scores_from_counts(correct: float, predicted: float, actual: float) -> dict:
    """``precision``, ``recall`` and ``f1`` from summed counts (0 where undefined, as seqeval)."""
    precision = correct / predicted if predicted else 0.0
    recall = correct / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def entity_scores(references: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]) -> dict:
    """Micro precision/recall/F1 of entities (seqeval's ``precision_score``/``recall_score``/``f1_score``)."""
    return scores_from_counts(*entity_counts(references, predictions))


__all__ = ["entity_counts", "entity_scores", "get_entities", "scores_from_counts"]
