"""``zero-shot-classify``: an NLI checkpoint scores candidate labels, as transformers' pipeline does.

Each row becomes one (text, hypothesis) pair per candidate label, the hypothesis being
``hypothesis_template.format(label)``; the model's entailment logit decides. Single-label: a
softmax of the entailment logits over the labels. Multi-label (or a single candidate): per label,
a softmax over (contradiction, entailment). Output: ``labels`` (best first) and their ``scores``.

Why a pair per label through the same length-sorted micro-batches: a row with 10 labels is 10
forward rows; packing all pairs of a block by length keeps padding as low as for plain
classification, and a pair that makes the model fail marks only its row as an error.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyarrow as pa
import torch

from .batching import MicroBatch, TokenLists, iter_micro_batches
from .model_operator import INTERNAL_COLUMNS, ModelOperator
from .records import ERROR_COLUMN, column_to_pylist


def entailment_id(config: Any) -> int:
    """The label whose name starts with "entail" (transformers' rule); -1 (the last) when none does."""
    id2label = getattr(config, "id2label", None) or {}
    for index, name in sorted(((int(k), v) for k, v in id2label.items()), key=lambda item: item[0]):
        if str(name).lower().startswith("entail"):
            return index
    return -1


def zero_shot_scores(logits: torch.Tensor, entail: int, multi_label: bool) -> list[float]:
    """Scores of one row's candidate labels from its (labels, classes) NLI logits."""
    logits = logits.float()
    if multi_label or logits.shape[0] == 1:
        contradiction = -1 if entail == 0 else 0
        pair = logits[:, [contradiction, entail]]
        return torch.softmax(pair, dim=-1)[:, 1].tolist()
    return torch.softmax(logits[:, entail], dim=0).tolist()


class ZeroShotClassifyOperator(ModelOperator):
    task = "zero-shot-classify"

    def setup(
        self,
        candidate_labels: Optional[list] = None,
        hypothesis_template: str = "This example is {}.",
        multi_label: bool = False,
        text_column: str = "text",
        tokenizer_path: Optional[str] = None,
        max_length: Optional[int] = None,
        tokenizer: Any = None,
    ) -> None:
        if not candidate_labels:
            raise ValueError("zero-shot-classify needs task.candidate_labels (at least one label)")
        if tokenizer is None:
            from .loading import load_tokenizer

            tokenizer = load_tokenizer(tokenizer_path, self.revision, self.local_files_only)
        self.tokenizer = tokenizer
        self.labels = [str(label) for label in candidate_labels]
        self.hypotheses = [hypothesis_template.format(label) for label in self.labels]
        self.multi_label = bool(multi_label) or len(self.labels) == 1
        self.text_column = text_column
        self.max_length = max_length
        self.entailment = entailment_id(self.config)

    def output_fields(self) -> list[pa.Field]:
        return [pa.field("labels", pa.list_(pa.string())), pa.field("scores", pa.list_(pa.float64()))]

    def _row_arrays(self, results: list) -> list[pa.Array]:
        """Per-row ``(labels, scores)`` (None for error rows) → the two output columns."""
        labels = [None if r is None else r[0] for r in results]
        scores = [None if r is None else r[1] for r in results]
        return [pa.array(labels, type=pa.list_(pa.string())), pa.array(scores, type=pa.list_(pa.float64()))]

    def predict(self, mb: MicroBatch, batch: pa.Table) -> dict:
        """The pairs' NLI logits in float32, left on the device (copied once the next micro-batch
        is queued)."""
        return {"logits": self.forward(mb).logits.float()}

    def __call__(self, batch: pa.Table) -> pa.Table:
        import time

        from .tokenize import add_stage_time, set_column

        start = time.perf_counter()
        errors = column_to_pylist(batch.column(ERROR_COLUMN))
        texts = column_to_pylist(batch.column(self.text_column))
        rows = [i for i in range(batch.num_rows) if errors[i] is None]
        n_labels = len(self.labels)
        pair_ids, pair_types = self._encode_pairs(rows, texts, errors)
        pair_tokens = TokenLists.from_lists(pair_ids)
        used_types = self._types_if_used(pair_types)
        pair_type_ids = None if used_types is None else TokenLists.from_lists(used_types)
        pair_failures: dict = {}
        logits: list = [None] * len(pair_ids)
        with torch.inference_mode():
            host_batches = iter_micro_batches(pair_tokens, np.arange(len(pair_ids)), self.pad_token_id, self.max_tokens,
                                              self.max_rows, pair_type_ids, self.pad_to_multiple_of, self.pin_memory)
            for pairs, res in self._run(host_batches, batch, pair_tokens, pair_type_ids, pair_failures):
                for pair, row_logits in zip(pairs.tolist(), res["logits"]):
                    logits[pair] = row_logits
        results: list = [None] * batch.num_rows
        for j, row in enumerate(rows):
            own = range(j * n_labels, (j + 1) * n_labels)
            bad = next((k for k in own if k in pair_failures), None)
            if bad is not None:
                errors[row] = f"{pair_failures[bad]} (hypothesis {self.hypotheses[bad - own.start]!r})"
                continue
            scores = zero_shot_scores(torch.from_numpy(np.stack([logits[k] for k in own])), self.entailment,
                                      self.multi_label)
            order = sorted(range(n_labels), key=lambda k: -scores[k])
            results[row] = ([self.labels[k] for k in order], [scores[k] for k in order])
        out = batch.drop_columns([c for c in (*INTERNAL_COLUMNS, *self.drop_columns) if c in batch.column_names])
        for f, arr in zip(self.output_fields(), self._row_arrays(results)):
            out = set_column(out, f.name, arr)
        out = set_column(out, ERROR_COLUMN, pa.array(errors, type=pa.string()))
        return add_stage_time(out, "model", time.perf_counter() - start)

    def _encode_pairs(self, rows: list, texts: list, errors: list) -> tuple[list, list]:
        """Pair k of rows[j] (in place j * labels + k): rows[j]'s text with hypothesis k, truncating the
        text only (as transformers). A row whose hypothesis alone is too long becomes an error."""
        def encode(row_list):
            encoded = self.tokenizer([texts[i] for i in row_list for _ in self.labels],
                                     self.hypotheses * len(row_list), truncation="only_first",
                                     max_length=self.max_length, return_token_type_ids=True)
            return encoded["input_ids"], encoded["token_type_ids"]

        if not rows:
            return [], []
        try:
            return encode(rows)
        except ValueError:
            ids, types = [], []
            for i in list(rows):
                try:
                    row_ids, row_types = encode([i])
                except ValueError as err:
                    errors[i] = f"{self.text_column}: cannot pair with the hypotheses within max_length: {err}"[:1000]
                    rows.remove(i)
                    continue
                ids += row_ids
                types += row_types
            return ids, types

    def _types_if_used(self, pair_types: list):
        """Token type ids only for models that take them (BERT-style), as the tokenizer decides."""
        return pair_types if "token_type_ids" in getattr(self.tokenizer, "model_input_names", ()) else None
