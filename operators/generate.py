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

import numpy as np
import pyarrow as pa
import torch

from .batching import MicroBatch, TokenLists, iter_micro_batches
from .model_operator import ModelOperator
from .records import ERROR_COLUMN, valid_rows


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
        self.special_ids = sorted(set(getattr(tokenizer, "all_special_ids", []) or []))

    def output_fields(self) -> list[pa.Field]:
        return [pa.field("generated_text", pa.string()), pa.field("generated_tokens", pa.int32())]

    def to_arrays(self, chunks: list, num_rows: int) -> list[pa.Array]:
        """Texts in row order by one ``take``; token counts by one scatter."""
        if not chunks:
            return [pa.nulls(num_rows, pa.string()), pa.nulls(num_rows, pa.int32())]
        rows = np.concatenate([r for r, _ in chunks])
        where = np.full(num_rows, -1, dtype=np.int64)
        where[rows] = np.arange(len(rows))
        index = pa.array(where, mask=where < 0)
        texts = pa.array([t for _, res in chunks for t in res["texts"]], type=pa.string())
        counts = pa.array(np.concatenate([res["counts"] for _, res in chunks]).astype(np.int32))
        return [texts.take(index), counts.take(index)]

    def _decoded(self, token_lists: list[list[int]]) -> dict:
        """Texts without special tokens, and how many non-special tokens each row generated."""
        texts = self.tokenizer.batch_decode(token_lists, skip_special_tokens=True)
        flat = np.fromiter((x for ids in token_lists for x in ids), dtype=np.int64)
        lengths = np.fromiter((len(ids) for ids in token_lists), dtype=np.int64, count=len(token_lists))
        plain = ~np.isin(flat, np.fromiter(self.special_ids, dtype=np.int64))
        segment = np.repeat(np.arange(len(token_lists)), lengths)
        counts = np.bincount(segment, weights=plain, minlength=len(token_lists)).astype(np.int64)
        return {"texts": texts, "counts": counts}

    def predict(self, mb: MicroBatch, batch: pa.Table) -> dict:
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
        return self._decoded(sequences.cpu().tolist())

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.stream_generate is None:
            return super().__call__(batch)
        return self._call_streaming(batch)

    def _call_streaming(self, batch: pa.Table) -> pa.Table:
        import time

        start = time.perf_counter()
        tokens = TokenLists.from_arrow(batch.column("input_ids"))
        errors = batch.column(ERROR_COLUMN)
        positions = np.flatnonzero(valid_rows(errors) & (tokens.lengths > 0))
        # Longest first: long inputs start early, short ones fill the slots they free.
        positions = positions[np.argsort(-tokens.lengths[positions], kind="stable")]
        failures: dict[int, str] = {}
        positions = self.drop_out_of_vocab_rows(tokens, positions, failures)
        finished: dict[int, list[int]] = {}
        values = tokens.values
        try:
            with torch.inference_mode():
                for key, generated in self.stream_generate(
                    self.model,
                    ((i, values[s : s + n].tolist()) for i, s, n in
                     zip(positions.tolist(), tokens.starts[positions].tolist(), tokens.lengths[positions].tolist())),
                    max_batch_size=self.max_batch_size,
                    max_batch_tokens=self.max_tokens,
                    **self.settings,
                ):
                    finished[key] = list(generated)
        except Exception:  # noqa: BLE001 - fall back to per-micro-batch generate with row isolation
            finished = {}
            with torch.inference_mode():
                host = iter_micro_batches(tokens, positions, self.pad_token_id, self.max_tokens, self.max_rows)
                chunks = self._run(host, batch, tokens, None, failures)
        else:
            keys = list(finished)
            chunks = [(np.asarray(keys, dtype=np.int64), self._decoded([finished[k] for k in keys]))] if keys else []
        done = np.zeros(batch.num_rows, dtype=bool)
        for rows, _ in chunks:
            done[rows] = True
        for i in positions[~done[positions]].tolist():
            failures.setdefault(i, "generation produced no output for this row")
        return self._output(batch, chunks, errors, failures, start)
