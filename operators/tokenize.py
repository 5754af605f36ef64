"""CPU tokenizer actor: validate text, then ``tokenizers.Tokenizer.encode_batch`` with truncation.

Tokenizing apart from the model keeps the model actor (the accelerator) from waiting on Python
string work; the model actor receives ready ``input_ids`` and only pads and runs forward.

Input batch (pyarrow Table): the text column (and optionally the pair column) plus whatever else
the plan carries. Output: the same columns plus ``input_ids`` (list<int32>), ``num_tokens``,
``error`` (a reason for rows that cannot be scored, else null), and when asked
``token_type_ids`` (pairs) or ``offset_start``/``offset_end``/``special_tokens_mask``
(token classification).

Long rows (``overflow="chunk"``): the tokenizers library's own overflow (what transformers'
``return_overflowing_tokens=True, stride=...`` returns) cuts a row into windows of
``max_length`` tokens, each with its special tokens, overlapping by ``stride``. The windows stay
in their row: ``input_ids`` (and the offset columns) hold them concatenated and
``window_lengths`` (list<int32>) says how many tokens each has. One row per input row keeps every
row's windows together however Ray splits blocks between the tokenizer and the model.
"""

from __future__ import annotations

import time
from itertools import chain
from typing import Optional

import numpy as np
import pyarrow as pa

from .records import ERROR_COLUMN, column_to_pylist, merge_errors, text_problem, validated_texts
from .tokenizer_backend import configured_backend

CHARS_PER_TOKEN_CAP = 32
"""Texts longer than this many characters per allowed token are pre-cut before tokenizing."""

STAGE_TIME_PREFIX = "_stage_"
"""Columns named ``_stage_<name>_s`` carry per-row seconds of a stage to the sink's report."""


def add_stage_time(table: pa.Table, stage: str, seconds: float) -> pa.Table:
    """Spread a batch's wall time over its rows (summed again by the sink)."""
    n = table.num_rows
    name = f"{STAGE_TIME_PREFIX}{stage}_s"
    col = pa.array(np.full(n, seconds / n if n else 0.0, dtype=np.float64))
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, col)
    return table.append_column(name, col)


def set_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    """Replace or append a column."""
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


WINDOW_LENGTHS = "window_lengths"
"""Column of ``overflow="chunk"``: tokens per window of the row (the windows are concatenated in
``input_ids``)."""

OVERFLOWS = ("truncate", "chunk", "error")


def check_stride(stride: int, max_length: int, special_tokens: int) -> None:
    """Windows must advance: the tokenizers library needs ``stride < max_length - specials``."""
    room = max_length - special_tokens
    if not 0 <= stride < room:
        raise ValueError(f"tokenizer.stride {stride} must be at least 0 and below max_length {max_length} minus "
                         f"the {special_tokens} special tokens of each window ({room})")


class TokenizeOperator:
    """Callable class for ``map_batches`` in a CPU actor pool (one tokenizer load per actor)."""

    def __init__(
        self,
        tokenizer_path: str,
        text_column: str,
        text_pair_column: Optional[str] = None,
        max_length: Optional[int] = None,
        truncation: str = "longest_first",
        with_offsets: bool = False,
        revision: Optional[str] = None,
        local_files_only: bool = False,
        drop_columns: tuple = (),
        tokenizer=None,
        source_language: Optional[str] = None,
        source_language_column: Optional[str] = None,
        text_prefix: str = "",
        single_thread: bool = False,
        overflow: str = "truncate",
        stride: int = 0,
        prompt: Optional[dict] = None,
    ):
        if overflow not in OVERFLOWS:
            raise ValueError(f"unknown overflow {overflow!r}; use one of {', '.join(OVERFLOWS)}")
        if single_thread:
            # In a Ray actor: one thread per actor, the pool scales by actors. ``tokenizers``
            # otherwise runs encode_batch on every core of the node, fighting the model actor's
            # threads for them (read at each call, so it holds for this whole process).
            import os

            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        if tokenizer is None:
            from .loading import load_tokenizer

            tokenizer = load_tokenizer(tokenizer_path, revision, local_files_only, source_language)
        self.tokenizer = tokenizer
        self.source_language_column = source_language_column
        self._language_backends: dict = {}
        self.text_column = text_column
        self.text_pair_column = text_pair_column
        self.max_length = max_length
        self.truncation = truncation
        self.overflow = "error" if truncation == "none" else overflow
        if self.overflow == "error":
            truncation = "none"
        self.chunk = self.overflow == "chunk" and max_length is not None
        self.stride = int(stride) if self.chunk else 0
        self.with_offsets = with_offsets
        self.drop_columns = tuple(drop_columns)
        self.text_prefix = text_prefix or ""
        """Prepended to every valid text (an embedding model's prompt, e.g. E5's ``query: ``)."""
        self.backend_truncation = truncation
        self.backend = configured_backend(tokenizer, max_length, truncation, self.stride)
        if self.chunk:
            check_stride(self.stride, max_length, self.backend.num_special_tokens_to_add(text_pair_column is not None))
        self.special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        self.prompt = None
        """Prompted generation (``prompt={"messages": ..., "chat_template": ...}``): each row's
        input is its rendered prompt (``operators.prompts``), not the text column as is."""
        if prompt is not None:
            from .prompts import PromptRenderer

            if self.chunk or text_pair_column or source_language_column or with_offsets:
                raise ValueError("prompted rows cannot be chunked, paired, language-tagged or offset-mapped")
            self.prompt = PromptRenderer(tokenizer, prompt["messages"], prompt.get("chat_template"), text_column,
                                         max_length, self.overflow)

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.perf_counter()
        if not isinstance(batch, pa.Table):
            batch = pa.Table.from_pandas(batch, preserve_index=False) if hasattr(batch, "columns") else pa.table(batch)
        n = batch.num_rows
        pairs = None
        if self.prompt is not None:
            rows, encodings, reasons = self.prompt.encode_rows(batch)
        else:
            rows, encodings, reasons, pairs = self._validated_encodings(batch)

        windows = None
        if self.chunk:  # every window of a row, as transformers' return_overflowing_tokens lists them
            windows = [[enc, *enc.overflowing] if enc.overflowing else [enc] for enc in encodings]
            encodings = [w for per_row in windows for w in per_row]
        ids_lists = [enc.ids for enc in encodings]
        window_lengths = np.fromiter(map(len, ids_lists), dtype=np.int64, count=len(ids_lists))
        counts = np.ones(len(rows), dtype=np.int64) if windows is None else np.fromiter(
            map(len, windows), dtype=np.int64, count=len(rows))
        first = np.zeros(len(rows), dtype=np.int64)  # each row's first encoding
        np.cumsum(counts[:-1], out=first[1:])
        lengths = window_lengths if windows is None else np.add.reduceat(window_lengths, first) \
            if len(rows) else np.zeros(0, dtype=np.int64)
        keep = np.ones(len(rows), dtype=bool)
        # Only a row no longer than the template's own tokens can be all special tokens.
        specials_only = self.backend.num_special_tokens_to_add(pairs is not None)
        for k in np.flatnonzero(lengths <= specials_only).tolist():
            if not any(m == 0 for m in encodings[first[k]].special_tokens_mask):
                reasons[int(rows[k])] = f"{self.text_column}: text tokenizes to no tokens"
                keep[k] = False
        if self.overflow == "error" and self.max_length is not None:
            key = "tokenizer.truncation is none" if self.truncation == "none" else "tokenizer.overflow is error"
            for k in np.flatnonzero(keep & (lengths > self.max_length)).tolist():
                reasons[int(rows[k])] = (
                    f"{self.text_column}: text has {int(lengths[k])} tokens, more than max_length "
                    f"{self.max_length} ({key})"
                )
                keep[k] = False

        kept_encodings = np.repeat(keep, counts)
        kept = None if keep.all() else np.flatnonzero(kept_encodings).tolist()
        row_lengths = np.zeros(n, dtype=np.int64)
        row_lengths[rows[keep]] = lengths[keep]

        def list_column(per_encoding: list, value_type: pa.DataType) -> pa.Array:
            lists = per_encoding if kept is None else [per_encoding[k] for k in kept]
            return token_list_column(lists, row_lengths, value_type)

        out = batch
        out = set_column(out, "input_ids", list_column(ids_lists, pa.int32()))
        out = set_column(out, "num_tokens", pa.array(row_lengths.astype(np.int32)))
        if windows is not None:
            row_windows = np.zeros(n, dtype=np.int64)
            row_windows[rows[keep]] = counts[keep]
            out = set_column(out, WINDOW_LENGTHS, token_list_column(
                [window_lengths[kept_encodings]], row_windows, pa.int32()))
        if pairs is not None:
            out = set_column(out, "token_type_ids", list_column([e.type_ids for e in encodings], pa.int8()))
        if self.with_offsets:
            spans = [e.offsets for e in encodings]
            out = set_column(out, "offset_start", list_column([[o[0] for o in s] for s in spans], pa.int32()))
            out = set_column(out, "offset_end", list_column([[o[1] for o in s] for s in spans], pa.int32()))
            out = set_column(out, "special_tokens_mask",
                             list_column([e.special_tokens_mask for e in encodings], pa.int8()))
        previous = batch.column(ERROR_COLUMN) if ERROR_COLUMN in batch.column_names else None
        out = set_column(out, ERROR_COLUMN, merged_error_column(previous, reasons, n))
        out = out.drop_columns([c for c in self.drop_columns if c in out.column_names])
        return add_stage_time(out, "tokenize", time.perf_counter() - start)

    def _validated_encodings(self, batch: pa.Table):
        """``(rows, encodings, reasons, pairs)``: the rows with usable text (and pair), their
        encodings in row order, a reason for every other row, and the pair texts (or None)."""
        good, texts, reasons = validated_texts(batch.column(self.text_column), self.text_column)
        if self.text_prefix:  # after validation: an empty text stays an error, prompt or not
            texts = [None if t is None else self.text_prefix + t for t in texts]
        pairs = None
        if self.text_pair_column:
            pair_good, pairs, pair_reasons = validated_texts(batch.column(self.text_pair_column), self.text_pair_column)
            reasons = {**pair_reasons, **reasons}  # the text column's reason wins
            good &= pair_good
        rows = np.flatnonzero(good)
        if self.source_language_column:
            rows, encodings = self._encode_by_language(batch, texts, pairs, rows, reasons)
        else:
            encodings = self._encode(rows.tolist(), texts, pairs, self.backend)
        return rows, encodings, reasons, pairs

    def _encode(self, rows: list, texts: list, pairs: Optional[list], backend) -> list:
        if not rows:
            return []
        if pairs is None:
            return self._encode_singles([texts[i] for i in rows], backend)
        return self._batch_encoder(backend)([(texts[i], pairs[i]) for i in rows])

    def _batch_encoder(self, backend):
        """``encode_batch_fast`` (tokenizers >= 0.20: no character offsets, measured 8-30% faster
        on short rows) unless the task reads offsets; identical ids, type ids, special-token
        masks and overflowing windows."""
        if not self.with_offsets and hasattr(backend, "encode_batch_fast"):
            return backend.encode_batch_fast
        return backend.encode_batch

    def _encode_by_language(self, batch: pa.Table, texts: list, pairs: Optional[list], rows, reasons: dict):
        """Rows grouped by their source language, each group encoded with that language's tokens;
        returned in row order (the list columns are built from one flat buffer in row order)."""
        column = self.source_language_column
        languages = column_to_pylist(batch.column(column))
        groups: dict = {}
        for i in rows.tolist():
            code = languages[i]
            backend = self._backend_for_language(code)
            if isinstance(backend, str):
                reasons[i] = f"{column}: {backend}"
                continue
            groups.setdefault(code, []).append(i)
        order, encodings = [], []
        for code, members in groups.items():
            order += members
            encodings += self._encode(members, texts, pairs, self._language_backends[code])
        idx = np.argsort(np.asarray(order, dtype=np.int64), kind="stable")
        return np.asarray(order, dtype=np.int64)[idx], [encodings[k] for k in idx]

    def _backend_for_language(self, code):
        """The configured backend for source language ``code``, or the reason it has none."""
        if code in self._language_backends:
            return self._language_backends[code]
        if not isinstance(code, str) or not code:
            return f"no source language code ({code!r})"
        try:
            self.tokenizer.src_lang = code
        except ValueError as err:  # UnknownLanguageCodeError: names the code and the accepted ones
            return str(err)[:1000]
        backend = configured_backend(self.tokenizer, self.max_length, self.backend_truncation, self.stride)
        self._language_backends[code] = backend
        return backend

    def _encode_singles(self, texts: list[str], backend=None) -> list:
        """``encode_batch``, without tokenizing megabytes that truncation would throw away.

        A text much longer than ``max_length`` tokens could need is first cut at a whitespace
        before ``CHARS_PER_TOKEN_CAP * max_length`` characters. Words before a whitespace cut
        tokenize exactly as in the full text, so if the prefix still overflows ``max_length`` its
        truncated encoding is the full text's; otherwise the full text is encoded."""
        cap = None
        if self.overflow == "truncate" and self.max_length:  # chunking needs every window
            cap = CHARS_PER_TOKEN_CAP * self.max_length
        cut = {}
        inputs = list(texts)
        if cap is not None:
            for k, t in enumerate(texts):
                if len(t) > cap:
                    end = max(t.rfind(" ", 0, cap), t.rfind("\n", 0, cap))
                    if end > 0:
                        cut[k] = True
                        inputs[k] = t[:end]
        backend = self.backend if backend is None else backend
        encode = self._batch_encoder(backend)
        encodings = encode(inputs)
        redo = [k for k in cut if not encodings[k].overflowing]
        if redo:
            for k, enc in zip(redo, encode([texts[k] for k in redo])):
                encodings[k] = enc
        return encodings



def token_list_column(lists: list, row_lengths: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """``list<value_type>`` over all rows from the kept rows' lists (in row order): one flat
    buffer and offsets, null where a row has none (``row_lengths`` 0 and no list)."""
    offsets = np.zeros(len(row_lengths) + 1, dtype=np.int32)
    np.cumsum(row_lengths, out=offsets[1:])
    flat = np.fromiter(chain.from_iterable(lists), dtype=value_type.to_pandas_dtype(), count=int(offsets[-1]))
    has = np.zeros(len(row_lengths), dtype=bool)
    has[np.flatnonzero(row_lengths)] = True
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=value_type), mask=pa.array(~has))


def merged_error_column(previous, reasons: dict[int, str], num_rows: int) -> pa.Array:
    """The stage's error column: an earlier stage's reason first, then this stage's."""
    if not reasons:
        if previous is None:
            return pa.nulls(num_rows, pa.string())
        return previous if previous.type == pa.string() else previous.cast(pa.string())
    mine = [None] * num_rows
    for row, reason in reasons.items():
        mine[row] = reason
    if previous is None:
        return pa.array(mine, type=pa.string())
    return pa.array(merge_errors(column_to_pylist(previous), mine), type=pa.string())
