"""``rerank``: a relevance score per (query, document) pair (see :mod:`.rerank_settings`).

* cross-encoder: the tokenizer stage encodes the pair; the score is the classifier's logits
  through CrossEncoder's activation (``score``, one label), or the activated logits of every
  label (``scores``, several labels), as ``CrossEncoder.predict`` returns them.
* yes/no LLM: this operator writes each pair into ``rerank_prompt`` and tokenizes it without the
  tokenizer's special tokens (as the Qwen3-Reranker model card does); the causal LM's hidden state
  at each row's last token goes through the LM head, and ``score`` is the softmax of the "yes"
  and "no" logits' P("yes"). A prompt longer than ``max_length`` is an error record: cutting its
  end would cut the answer's cue.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import torch

from .batching import MicroBatch, TokenLists, iter_micro_batches
from .classify import apply_function, pad_like_the_classifier
from .embed import last_token_index
from .model_operator import INTERNAL_COLUMNS, ModelOperator, scatter
from .records import ERROR_COLUMN, column_to_pylist, error_column, text_problem
from .rerank_settings import DEFAULT_RERANK_PROMPT, check_rerank_prompt, rerank_kind, yes_no_token_ids
from .tokenize import add_stage_time, set_column


class RerankOperator(ModelOperator):
    task = "rerank"

    def setup(self, activation: str = "sigmoid", text_column: str = "text", text_pair_column: Optional[str] = None,
              tokenizer_path: Optional[str] = None, max_length: Optional[int] = None,
              rerank_prompt: Optional[str] = None, tokenizer: Any = None) -> None:
        self.kind = rerank_kind(self.config)
        self.num_labels = 1 if self.kind == "yes-no" else int(getattr(self.config, "num_labels", 1) or 1)
        if self.kind == "cross-encoder":
            if activation not in ("sigmoid", "softmax", "tanh", "none"):
                raise ValueError(f"unknown cross-encoder activation {activation!r}")
            self.activation = activation
            pad_like_the_classifier(self)
            return
        if not text_pair_column:
            raise ValueError("rerank needs input.text_pair_column (the documents)")
        if tokenizer is None:
            from .loading import load_tokenizer

            tokenizer = load_tokenizer(tokenizer_path, self.revision, self.local_files_only)
        self.tokenizer = tokenizer
        self.yes_id, self.no_id = yes_no_token_ids(tokenizer)
        self.prompt = check_rerank_prompt(DEFAULT_RERANK_PROMPT if rerank_prompt is None else rerank_prompt)
        self.text_column, self.text_pair_column = text_column, text_pair_column
        self.max_length = max_length
        softcap = getattr(getattr(self.model.base_model, "spec", None), "final_softcap", None)
        self.softcap = None if softcap is None else float(softcap)

    # -- both kinds ---------------------------------------------------------------------------------
    def output_fields(self) -> list[pa.Field]:
        if self.num_labels == 1:
            return [pa.field("score", pa.float32())]
        return [pa.field("scores", pa.list_(pa.float32(), self.num_labels))]

    def to_arrays(self, chunks: list, num_rows: int) -> list[pa.Array]:
        scores, has = scatter(chunks, "scores", num_rows)
        scores = scores.reshape(num_rows, -1) if scores.ndim == 2 else np.zeros((num_rows, self.num_labels))
        if self.num_labels == 1:
            return [pa.array(scores[:, 0], type=pa.float32(), mask=~has)]
        values = pa.array(scores.astype(np.float32).reshape(-1))
        return [pa.FixedSizeListArray.from_arrays(values, self.num_labels, mask=pa.array(~has))]

    def predict(self, mb: MicroBatch, batch: pa.Table) -> dict:
        if self.kind == "cross-encoder":
            return {"scores": apply_function(self.forward(mb).logits, self.activation)}
        mask = mb.attention_mask.to(self.device)
        hidden = self.model.base_model(input_ids=mb.input_ids.to(self.device), attention_mask=mask,
                                       return_dict=True).last_hidden_state
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(mask)]
        logits = self.model.get_output_embeddings()(last)[:, [self.yes_id, self.no_id]].float()
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return {"scores": torch.softmax(logits, dim=-1)[:, :1]}

    # -- yes/no LLM: the prompts are built and tokenized here -------------------------------------
    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.kind == "cross-encoder":
            return super().__call__(batch)
        start = time.perf_counter()
        errors = column_to_pylist(batch.column(ERROR_COLUMN))
        queries = column_to_pylist(batch.column(self.text_column))
        documents = column_to_pylist(batch.column(self.text_pair_column))
        failures: dict[int, str] = {}
        rows = [i for i in range(batch.num_rows) if errors[i] is None]
        ids: list = [None] * batch.num_rows
        if rows:
            # text_problem decodes a binary column's UTF-8 (the tokenizer stage has refused anything else)
            prompts = [self.prompt.format(query=text_problem(queries[i], self.text_column)[0],
                                          document=text_problem(documents[i], self.text_pair_column)[0]) for i in rows]
            for i, row_ids in zip(rows, self.tokenizer(prompts, add_special_tokens=False)["input_ids"]):
                if self.max_length is not None and len(row_ids) > self.max_length:
                    failures[i] = (f"rerank prompt is {len(row_ids)} tokens, more than tokenizer.max_length "
                                   f"{self.max_length}: shorten {self.text_pair_column!r} or raise max_length")
                else:
                    ids[i] = row_ids
        tokens = TokenLists.from_lists(ids)
        positions = np.array([i for i in rows if i not in failures], dtype=np.int64)
        positions = self.drop_out_of_vocab_rows(tokens, positions, failures)
        with torch.inference_mode():
            host_batches = iter_micro_batches(tokens, positions, self.pad_token_id, self.max_tokens, self.max_rows,
                                              None, self.pad_to_multiple_of, self.pin_memory)
            chunks = self._run(host_batches, batch, tokens, None, failures)
        out = batch.drop_columns([c for c in (*INTERNAL_COLUMNS, *self.drop_columns) if c in batch.column_names])
        for f, arr in zip(self.output_fields(), self.to_arrays(chunks, batch.num_rows)):
            out = set_column(out, f.name, arr)
        if "num_tokens" in out.column_names:  # the prompt's tokens, not the tokenizer stage's pair
            counted = out.column("num_tokens").to_numpy(zero_copy_only=False)
            out = set_column(out, "num_tokens", pa.array(np.where(tokens.lengths > 0, tokens.lengths, counted)
                                                         .astype(np.int32)))
        out = set_column(out, ERROR_COLUMN, error_column(batch.column(ERROR_COLUMN), failures))
        return add_stage_time(out, "model", time.perf_counter() - start)
