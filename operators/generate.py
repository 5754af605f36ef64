"""``generate``: summarisation / translation with a seq2seq model, or prompt continuation with a
decoder-only causal LM (the output is the continuation, not the prompt), detokenized text out.

Uses the continuous-batching API (``rayformers.models.generation.continuous.stream_generate``)
when it is available: rows that finish leave the batch and pending rows take their slot, so
short outputs never wait for long ones. Otherwise falls back to ``model.generate`` on
length-sorted micro-batches. Decoding settings come from the job's ``task.generation`` section
on top of the checkpoint's generation config (passed as keyword arguments, validated by the
model layer exactly as for ``generate``).
"""

from __future__ import annotations

from typing import Any, Optional

import pyarrow as pa
import torch

from .batching import MicroBatch, iter_micro_batches
from .model_operator import ModelOperator
from .records import column_to_pylist


def load_stream_generate():
    """The continuous-batching entry point, or None when the model layer does not provide it."""
    try:
        from rayformers.models.generation.continuous import stream_generate
    except ImportError:
        return None
    return stream_generate


class GenerateOperator(ModelOperator):
    task = "generate"
    # Decoder steps are small matrix products: on CPU they gain from more rows per step.
    default_token_budget = {"cpu": 8192, "cuda": 16384}

    def setup(
        self,
        generation: Optional[dict] = None,
        max_batch_size: int = 32,
        tokenizer_path: Optional[str] = None,
        tokenizer: Any = None,
        use_continuous_batching: bool = True,
    ) -> None:
        if tokenizer is None:
            from .loading import load_tokenizer

            tokenizer = load_tokenizer(tokenizer_path, self.revision, self.local_files_only)
        self.tokenizer = tokenizer
        self.settings = dict(generation or {})
        self.max_batch_size = int(max_batch_size)
        self.stream_generate = load_stream_generate() if use_continuous_batching else None

    def output_fields(self) -> list[pa.Field]:
        return [pa.field("generated_text", pa.string()), pa.field("generated_tokens", pa.int32())]

    def to_arrays(self, results: list) -> list[pa.Array]:
        texts = [None if r is None else r[0] for r in results]
        counts = [None if r is None else r[1] for r in results]
        return [pa.array(texts, type=pa.string()), pa.array(counts, type=pa.int32())]

    def _decoded(self, token_lists: list[list[int]]) -> list[tuple[str, int]]:
        texts = self.tokenizer.batch_decode(token_lists, skip_special_tokens=True)
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        return [(t, sum(1 for x in ids if x not in special)) for t, ids in zip(texts, token_lists)]

    def predict(self, mb: MicroBatch, batch: pa.Table) -> list:
        input_ids, attention_mask = mb.input_ids, mb.attention_mask
        decoder_only = not getattr(self.model.config, "is_encoder_decoder", False)
        if decoder_only:  # a prompt to continue: left-padded in, the continuation only out
            from rayformers.models.generation.utils import left_pad

            input_ids, attention_mask = left_pad(input_ids, attention_mask)
        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            **self.settings,
        )
        sequences = out.sequences if hasattr(out, "sequences") else out
        if decoder_only:
            sequences = sequences[:, input_ids.shape[1]:]
        return self._decoded([row.tolist() for row in sequences.cpu()])

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.stream_generate is None:
            return super().__call__(batch)
        return self._call_streaming(batch)

    def _call_streaming(self, batch: pa.Table) -> pa.Table:
        import time

        from .model_operator import INTERNAL_COLUMNS
        from .records import ERROR_COLUMN
        from .tokenize import add_stage_time, set_column

        start = time.perf_counter()
        errors = column_to_pylist(batch.column(ERROR_COLUMN))
        ids = column_to_pylist(batch.column("input_ids"))
        positions = [i for i in range(batch.num_rows) if errors[i] is None and ids[i]]
        # Longest first: long inputs start early, short ones fill the slots they free.
        positions.sort(key=lambda i: -len(ids[i]))
        results: list = [None] * batch.num_rows
        finished: dict[int, list[int]] = {}
        try:
            with torch.inference_mode():
                for key, tokens in self.stream_generate(
                    self.model,
                    ((i, ids[i]) for i in positions),
                    max_batch_size=self.max_batch_size,
                    max_batch_tokens=self.max_tokens,
                    **self.settings,
                ):
                    finished[key] = list(tokens)
        except Exception:  # noqa: BLE001 - fall back to per-micro-batch generate with row isolation
            finished = {}
            with torch.inference_mode():
                for mb in iter_micro_batches(ids, positions, self.pad_token_id, self.max_tokens, self.max_rows):
                    for row, res in self._predict_isolating_failures(mb, batch, ids, None, errors):
                        results[row] = res
        if finished:
            keys = list(finished)
            for key, res in zip(keys, self._decoded([finished[k] for k in keys])):
                results[key] = res
        for i in positions:
            if results[i] is None and errors[i] is None:
                errors[i] = "generation produced no output for this row"
        out = batch.drop_columns([c for c in (*INTERNAL_COLUMNS, *self.drop_columns) if c in batch.column_names])
        for f, arr in zip(self.output_fields(), self.to_arrays(results)):
            out = set_column(out, f.name, arr)
        out = set_column(out, ERROR_COLUMN, pa.array(errors, type=pa.string()))
        return add_stage_time(out, "model", time.perf_counter() - start)
