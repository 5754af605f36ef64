"""Token classification (``model.task: token-classify``) data: word tags checked, then aligned to
sub-word tokens.

Rows hold a list of words (``input.text_column``) and one tag per word (``train.label_column``,
names such as ``B-PER`` or ids). After tokenization each word's *first* sub-token carries the
word's tag id and every other position (later sub-tokens, special tokens) carries -100, which the
loss ignores: transformers' ``run_ner`` example with ``label_all_tokens=False``. Evaluation reads
the prediction at the same first-sub-token positions, so the model is scored per word, and the
word tags become entities (:mod:`.entity_metrics`).

Words cut off by ``tokenizer.max_length`` are not trained on or scored (as ``run_ner``).
"""

from __future__ import annotations

from typing import Any, Optional

IGNORE = -100


def words_problem(value: Any, column: str) -> Optional[str]:
    """Why a row's words cannot be tagged (None when fine): a non-empty list of non-empty strings."""
    if value is None:
        return f"{column}: words are missing (null)"
    if not isinstance(value, (list, tuple)):
        return f"{column}: token-classify needs a list of words per row, got {type(value).__name__}"
    if not value:
        return f"{column}: the list of words is empty"
    for i, word in enumerate(value):
        if not isinstance(word, str) or word.strip() == "":
            return f"{column}: word {i} is {word!r}; every word must be a non-blank string"
    return None


def tags_problem(words: Any, tags: Any, names: list, column: str) -> Optional[str]:
    """Why a row's tags cannot be used (None when fine): one tag per word, each in the label set."""
    if tags is None:
        return f"{column}: tags are missing (null)"
    if not isinstance(tags, (list, tuple)):
        return f"{column}: token-classify needs a list of tags per row, got {type(tags).__name__}"
    if isinstance(words, (list, tuple)) and len(tags) != len(words):
        return f"{column}: {len(tags)} tags for {len(words)} words (one tag per word)"
    known = set(names)
    for i, tag in enumerate(tags):
        if isinstance(tag, str):
            if tag not in known:
                shown = ", ".join(map(str, names[:10])) + (" ..." if len(names) > 10 else "")
                return f"{column}: tag {tag!r} of word {i} is outside the label set ({shown}); add it to train.labels"
        elif tag is None or isinstance(tag, bool) or not isinstance(tag, int) or not 0 <= tag < len(names):
            return f"{column}: tag {tag!r} of word {i} is outside the label ids 0..{len(names) - 1}"
    return None


def tag_ids(tags: list, label2id: dict) -> list[int]:
    return [label2id[t] if isinstance(t, str) else int(t) for t in tags]


def align_labels(word_ids: list, word_labels: list[int]) -> list[int]:
    """Per token: the tag id of the word it starts, -100 for special tokens and continuation
    sub-tokens (``word_ids`` from the tokenizer: None for special tokens)."""
    out, previous = [], None
    for word in word_ids:
        if word is None or word == previous:
            out.append(IGNORE)
        else:
            out.append(word_labels[word])
        previous = word
    return out


def tokenize_tagged(tokenizer: Any, words: list, tags: list, label2id: dict, max_length: Optional[int],
                    truncation: Any) -> tuple[list, list]:
    """(input_ids, aligned labels) of a batch of word lists and their tags."""
    enc = tokenizer([list(w) for w in words], is_split_into_words=True, truncation=truncation, max_length=max_length)
    labels = [align_labels(enc.word_ids(i), tag_ids(t, label2id)) for i, t in enumerate(tags)]
    return enc["input_ids"], labels


def word_predictions(logits_argmax: list, labels: list, id2label: dict) -> tuple[list, list]:
    """(reference tags, predicted tags) per row, read at the labelled (first sub-token) positions."""
    references, predictions = [], []
    for pred_row, label_row in zip(logits_argmax, labels):
        ref, pred = [], []
        for p, lab in zip(pred_row, label_row):
            if lab == IGNORE:
                continue
            ref.append(id2label[int(lab)])
            pred.append(id2label[int(p)])
        references.append(ref)
        predictions.append(pred)
    return references, predictions


__all__ = ["IGNORE", "align_labels", "tags_problem", "tokenize_tagged", "word_predictions", "words_problem"]
