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


def end_token_ids(model: Any, settings: dict) -> set:
    """The token ids that end a row: ``eos_token_id`` of the job's settings, else of the
    checkpoint's generation config, else of its config (an int or a list)."""
    eos = settings.get("eos_token_id")
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        if eos is None and source is not None:
            eos = getattr(source, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(x) for x in (eos if isinstance(eos, (list, tuple)) else [eos])}


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
        stop: tuple = (),
        max_kv_tokens: Optional[int] = None,
        constraint: Optional[dict] = None,
    ) -> None:
        if tokenizer is None:
            from .loading import load_tokenizer

            tokenizer = load_tokenizer(tokenizer_path, self.revision, self.local_files_only)
        self.tokenizer = tokenizer
        self.settings = dict(generation or {})
        self.max_batch_size = int(max_batch_size)
        self.stream_generate = load_stream_generate() if use_continuous_batching else None
        self.max_kv_tokens = max_kv_tokens
        if max_kv_tokens is None and self.stream_generate is not None and not getattr(
                self.model.config, "is_encoder_decoder", False):
            from rayformers.models.generation.kv_budget import default_max_kv_tokens

            self.max_kv_tokens = default_max_kv_tokens(self.model, max_batch_size=self.max_batch_size,
                                                       device=self.device)
        self.special_ids = sorted(set(getattr(tokenizer, "all_special_ids", []) or []))
        self.stop = [str(x) for x in stop if x]
        self.eos_ids = end_token_ids(self.model, self.settings)
        self.decoder_start = (getattr(self.model.config, "decoder_start_token_id", None)
                              if getattr(self.model.config, "is_encoder_decoder", False) else None)
        self.constraint = self._build_constraint(constraint)

    def _build_constraint(self, constraint: Optional[dict]):
        """``task.choices`` / ``json_schema`` / ``regex`` compiled for this model's vocabulary (once
        per actor), or None. Both continuous batching and the per-micro-batch ``generate`` fallback
        (row isolation) apply it."""
        if not constraint:
            return None
        from rayformers.models.generation.constraints import TokenConstraint

        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        vocab = getattr(head, "out_features", None) or self.model.config.vocab_size
        return TokenConstraint.build(constraint["kind"], constraint["value"], self.tokenizer, vocab,
                                     sorted(self.eos_ids))

    def output_fields(self) -> list[pa.Field]:
        return [pa.field("generated_text", pa.string()), pa.field("generated_tokens", pa.int32()),
                pa.field("finish_reason", pa.string()), pa.field("num_generated_tokens", pa.int32())]

    def to_arrays(self, chunks: list, num_rows: int) -> list[pa.Array]:
        """Texts in row order by one ``take``; token counts by one scatter."""
        if not chunks:
            return [pa.nulls(num_rows, f.type) for f in self.output_fields()]
        rows = np.concatenate([r for r, _ in chunks])
        where = np.full(num_rows, -1, dtype=np.int64)
        where[rows] = np.arange(len(rows))
        index = pa.array(where, mask=where < 0)
        texts = pa.array([t for _, res in chunks for t in res["texts"]], type=pa.string())
        counts = pa.array(np.concatenate([res["counts"] for _, res in chunks]).astype(np.int32))
        reasons = pa.array([r for _, res in chunks for r in res["finish"]], type=pa.string())
        generated = pa.array(np.concatenate([res["generated"] for _, res in chunks]).astype(np.int32))
        return [texts.take(index), counts.take(index), reasons.take(index), generated.take(index)]

    def _finished(self, ids: list[int]) -> tuple[list[int], str]:
        """The tokens the model generated for a row (no seq2seq decoder start token, nothing after
        its end token: the padding of finished rows) and why it ended (``stop``: an end token,
        ``length``: the token limit)."""
        if self.decoder_start is not None and ids and ids[0] == self.decoder_start:
            ids = ids[1:]
        for k, token in enumerate(ids):
            if token in self.eos_ids:
                return ids[: k + 1], "stop"
        return ids, "length"

    def _cut_at_stop(self, ids: list[int], text: str) -> Optional[tuple[list[int], str]]:
        """With ``stop`` strings: the text before the first one the continuation contains and the
        fewest tokens whose text contains it (what a decoder stopping there would have generated),
        or None when it contains none."""
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if not found:
            return None
        decode = lambda k: self.tokenizer.decode(ids[:k], skip_special_tokens=True)  # noqa: E731
        lo, hi = 1, len(ids)  # the smallest prefix whose text holds a stop string
        while lo < hi:
            mid = (lo + hi) // 2
            if any(s in decode(mid) for s in self.stop):
                hi = mid
            else:
                lo = mid + 1
        return ids[:lo], text[: min(found)]

    def _decoded(self, token_lists: list[list[int]]) -> dict:
        """Texts without special tokens (cut before a stop string), how many non-special tokens
        each row generated, why it finished and how many tokens the model generated for it."""
        finished = [self._finished(list(ids)) for ids in token_lists]
        token_lists = [ids for ids, _ in finished]
        finish = [why for _, why in finished]
        texts = self.tokenizer.batch_decode(token_lists, skip_special_tokens=True)
        if self.stop:
            for k, (ids, text) in enumerate(zip(token_lists, texts)):
                cut = self._cut_at_stop(ids, text)
                if cut is not None:
                    token_lists[k], texts[k] = cut
                    finish[k] = "stop"
        flat = np.fromiter((x for ids in token_lists for x in ids), dtype=np.int64)
        lengths = np.fromiter((len(ids) for ids in token_lists), dtype=np.int64, count=len(token_lists))
        plain = ~np.isin(flat, np.fromiter(self.special_ids, dtype=np.int64))
        segment = np.repeat(np.arange(len(token_lists)), lengths)
        counts = np.bincount(segment, weights=plain, minlength=len(token_lists)).astype(np.int64)
        return {"texts": texts, "counts": counts, "finish": finish, "generated": lengths}

    def predict(self, mb: MicroBatch, batch: pa.Table) -> dict:
        input_ids, attention_mask = mb.input_ids, mb.attention_mask
        decoder_only = not getattr(self.model.config, "is_encoder_decoder", False)
        if decoder_only:  # a prompt to continue: left-padded in, the continuation only out
            from rayformers.models.generation.utils import left_pad

            input_ids, attention_mask = left_pad(input_ids, attention_mask)
        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            **self._constraint_kwargs(),
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

    def _constraint_kwargs(self) -> dict:
        return {} if self.constraint is None else {"constraint": self.constraint}

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
        refused: set[int] = set()

        def refuse(key: int, reason: str) -> None:  # a row that alone exceeds the KV budget
            refused.add(key)
            failures[key] = f"the prompt {reason} The budget is compute.max_kv_tokens."


        values = tokens.values
        try:
            with torch.inference_mode():
                for key, generated in self.stream_generate(
                    self.model,
                    ((i, values[s : s + n].tolist()) for i, s, n in
                     zip(positions.tolist(), tokens.starts[positions].tolist(), tokens.lengths[positions].tolist())),
                    max_batch_size=self.max_batch_size,
                    max_batch_tokens=self.max_tokens,
                    max_kv_tokens=self.max_kv_tokens,
                    on_reject=refuse,
                    **self._constraint_kwargs(),
                    **self.settings,
                ):
                    finished[key] = list(generated)
        except Exception:  # noqa: BLE001 - fall back to per-micro-batch generate with row isolation
            finished = {}
            positions = positions[~np.isin(positions, np.fromiter(refused, dtype=np.int64))]
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
