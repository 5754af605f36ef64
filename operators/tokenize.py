"""CPU tokenizer actor: validate text, then ``tokenizers.Tokenizer.encode_batch`` with truncation.

Tokenizing apart from the model keeps the model actor (the accelerator) from waiting on Python
string work; the model actor receives ready ``input_ids`` and only pads and runs forward.

Input batch (pyarrow Table): the text column (and optionally the pair column) plus whatever else
the plan carries. Output: the same columns plus ``input_ids`` (list<int32>), ``num_tokens``,
``error`` (a reason for rows that cannot be scored, else null), and when asked
``token_type_ids`` (pairs) or ``offset_start``/``offset_end``/``special_tokens_mask``
(token classification).
"""

from __future__ import annotations

import time
from typing import Optional

import pyarrow as pa

from .records import ERROR_COLUMN, column_to_pylist, merge_errors, text_problem

CHARS_PER_TOKEN_CAP = 32
"""Texts longer than this many characters per allowed token are pre-cut before tokenizing."""

STAGE_TIME_PREFIX = "_stage_"
"""Columns named ``_stage_<name>_s`` carry per-row seconds of a stage to the sink's report."""


def add_stage_time(table: pa.Table, stage: str, seconds: float) -> pa.Table:
    """Spread a batch's wall time over its rows (summed again by the sink)."""
    n = table.num_rows
    name = f"{STAGE_TIME_PREFIX}{stage}_s"
    per_row = seconds / n if n else 0.0
    col = pa.array([per_row] * n, type=pa.float64())
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, col)
    return table.append_column(name, col)


def set_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    """Replace or append a column."""
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


def configured_backend(tokenizer, max_length: Optional[int], truncation: str):
    """A private copy of the raw ``tokenizers.Tokenizer`` with our padding/truncation settings.

    ``tokenizer.json`` files often carry padding and truncation from their export (MiniLM's pads
    every row to 128); we turn padding off (the model actor pads dynamically) and truncate per
    the job config."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    if truncation == "none" or max_length is None:
        backend.no_truncation()
    else:
        backend.enable_truncation(max_length, strategy=truncation, direction="right")
    return backend


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
    ):
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
        self.with_offsets = with_offsets
        self.drop_columns = tuple(drop_columns)
        self.backend = configured_backend(tokenizer, max_length, truncation)
        self.special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.perf_counter()
        if not isinstance(batch, pa.Table):
            batch = pa.Table.from_pandas(batch, preserve_index=False) if hasattr(batch, "columns") else pa.table(batch)
        n = batch.num_rows
        texts, errors = self._validated(batch, self.text_column)
        pairs = None
        if self.text_pair_column:
            pairs, pair_errors = self._validated(batch, self.text_pair_column)
            errors = merge_errors(errors, pair_errors)

        if self.source_language_column:
            good, encodings = self._encode_by_language(batch, texts, pairs, errors)
        else:
            good = [i for i in range(n) if errors[i] is None]
            encodings = self._encode(good, texts, pairs, self.backend)

        input_ids: list = [None] * n
        type_ids: list = [None] * n
        starts: list = [None] * n
        ends: list = [None] * n
        specials: list = [None] * n
        num_tokens = [0] * n
        for i, enc in zip(good, encodings):
            ids = enc.ids
            mask = enc.special_tokens_mask
            if not any(m == 0 for m in mask):
                errors[i] = f"{self.text_column}: text tokenizes to no tokens"
                continue
            if self.truncation == "none" and self.max_length is not None and len(ids) > self.max_length:
                errors[i] = (
                    f"{self.text_column}: text has {len(ids)} tokens, more than max_length "
                    f"{self.max_length} (tokenizer.truncation is none)"
                )
                continue
            input_ids[i] = ids
            num_tokens[i] = len(ids)
            if pairs is not None:
                type_ids[i] = enc.type_ids
            if self.with_offsets:
                starts[i] = [o[0] for o in enc.offsets]
                ends[i] = [o[1] for o in enc.offsets]
                specials[i] = mask

        out = batch
        out = set_column(out, "input_ids", pa.array(input_ids, type=pa.list_(pa.int32())))
        out = set_column(out, "num_tokens", pa.array(num_tokens, type=pa.int32()))
        if pairs is not None:
            out = set_column(out, "token_type_ids", pa.array(type_ids, type=pa.list_(pa.int8())))
        if self.with_offsets:
            out = set_column(out, "offset_start", pa.array(starts, type=pa.list_(pa.int32())))
            out = set_column(out, "offset_end", pa.array(ends, type=pa.list_(pa.int32())))
            out = set_column(out, "special_tokens_mask", pa.array(specials, type=pa.list_(pa.int8())))
        previous = (
            column_to_pylist(batch.column(ERROR_COLUMN)) if ERROR_COLUMN in batch.column_names else [None] * n
        )
        out = set_column(out, ERROR_COLUMN, pa.array(merge_errors(previous, errors), type=pa.string()))
        out = out.drop_columns([c for c in self.drop_columns if c in out.column_names])
        return add_stage_time(out, "tokenize", time.perf_counter() - start)

    def _encode(self, rows: list, texts: list, pairs: Optional[list], backend) -> list:
        if not rows:
            return []
        if pairs is None:
            return self._encode_singles([texts[i] for i in rows], backend)
        return backend.encode_batch([(texts[i], pairs[i]) for i in rows])

    def _encode_by_language(self, batch: pa.Table, texts: list, pairs: Optional[list], errors: list):
        """Rows grouped by their source language, each group with that language's tokens."""
        column = self.source_language_column
        languages = column_to_pylist(batch.column(column))
        groups: dict = {}
        for i, code in enumerate(languages):
            if errors[i] is not None:
                continue
            backend = self._backend_for_language(code)
            if isinstance(backend, str):
                errors[i] = f"{column}: {backend}"
                continue
            groups.setdefault(code, []).append(i)
        rows, encodings = [], []
        for code, members in groups.items():
            rows += members
            encodings += self._encode(members, texts, pairs, self._language_backends[code])
        return rows, encodings

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
        backend = configured_backend(self.tokenizer, self.max_length, self.truncation)
        self._language_backends[code] = backend
        return backend

    def _encode_singles(self, texts: list[str], backend=None) -> list:
        """``encode_batch``, without tokenizing megabytes that truncation would throw away.

        A text much longer than ``max_length`` tokens could need is first cut at a whitespace
        before ``CHARS_PER_TOKEN_CAP * max_length`` characters. Words before a whitespace cut
        tokenize exactly as in the full text, so if the prefix still overflows ``max_length`` its
        truncated encoding is the full text's; otherwise the full text is encoded."""
        cap = None
        if self.truncation != "none" and self.max_length:
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
        encodings = backend.encode_batch(inputs)
        redo = [k for k in cut if not encodings[k].overflowing]
        if redo:
            for k, enc in zip(redo, backend.encode_batch([texts[k] for k in redo])):
                encodings[k] = enc
        return encodings

    @staticmethod
    def _validated(batch: pa.Table, column: str) -> tuple[list, list]:
        values = column_to_pylist(batch.column(column))
        texts, errors = [], []
        for v in values:
            text, err = text_problem(v, column)
            texts.append(text)
            errors.append(err)
        return texts, errors
