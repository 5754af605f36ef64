"""Prompted generation: chat messages with ``{column}`` fields, rendered and tokenized per row.

A job's ``task.messages`` (``[{role, content}, ...]``) is one prompt for every row: each content
may name input columns (``{text}``, ``{title}``), replaced by the row's values, and the
conversation is rendered with the checkpoint's chat template (``add_generation_prompt=True``, as
transformers' ``apply_chat_template``, so the model answers as the assistant) or, without a
template, by joining the contents with newlines. This runs in the CPU tokenizer actors: the model
actor receives ready token ids, as for every other task.

Why prompts are fitted here and not truncated by the tokenizer: cutting the rendered prompt's
tokens at ``max_length`` would cut the template's end (the assistant header the model needs) and
leave a prompt the model was never trained on. Instead the row's text column is cut to the longest
prefix of its tokens with which the whole rendered prompt fits; a prompt whose template and other columns alone do not fit is an
error record naming the limit.
"""

from __future__ import annotations

import string
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from .records import validated_texts
from .tokenizer_backend import configured_backend

NO_TEMPLATE = "none"
"""``task.chat_template`` value that joins message contents with newlines instead of a template."""


class PromptError(ValueError):
    """``task.messages`` that cannot be rendered (bad shape, a field that is not a column name)."""


def message_columns(messages: Any) -> list[str]:
    """The input columns the messages name, in order of first use; raises :class:`PromptError`
    naming the message for anything but ``[{role: str, content: str}, ...]`` with plain
    ``{column}`` fields (no attribute, index, conversion or format spec)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise PromptError("task.messages must be a non-empty list of {role, content} messages")
    columns: list[str] = []
    for i, message in enumerate(messages):
        where = f"task.messages[{i}]"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise PromptError(f"{where} must be a mapping with exactly the keys role and content, got {message!r}")
        if not isinstance(message["role"], str) or not message["role"]:
            raise PromptError(f"{where}.role must be a non-empty string, got {message['role']!r}")
        if not isinstance(message["content"], str):
            raise PromptError(f"{where}.content must be a string, got {message['content']!r}")
        try:
            fields = list(string.Formatter().parse(message["content"]))
        except ValueError as e:
            raise PromptError(f"{where}.content: {e} (write literal braces as {{{{ and }}}})") from e
        for _, name, spec, conversion in fields:
            if name is None:
                continue
            if not name.isidentifier() or spec or conversion:
                raise PromptError(f"{where}.content: {{{name}{'!' + conversion if conversion else ''}"
                                  f"{':' + spec if spec else ''}}} is not a column field; name an input column as "
                                  "{column} (write literal braces as {{ and }})")
            if name not in columns:
                columns.append(name)
    return columns


class PromptRenderer:
    """Renders ``messages`` for one row's column values and tokenizes the result to fit
    ``max_length`` (see the module docstring)."""

    def __init__(self, tokenizer: Any, messages: list, chat_template: Optional[str], text_column: str,
                 max_length: Optional[int], overflow: str = "truncate"):
        self.tokenizer = tokenizer
        self.messages = [dict(m) for m in messages]
        self.columns = message_columns(self.messages)
        self.chat_template = chat_template
        """The template string to render with, or None to join the contents with newlines."""
        self.text_column = text_column
        self.max_length = max_length
        self.overflow = overflow
        self.backend = configured_backend(tokenizer, None, "none")
        # A template writes its own special tokens (apply_chat_template tokenizes without adding
        # any); joined contents are plain text, tokenized as the raw-text generate task does.
        self.add_special_tokens = chat_template is None

    def render(self, values: dict) -> str:
        """The prompt text for one row (``values``: column name -> string)."""
        filled = [{"role": m["role"], "content": m["content"].format_map(values)} for m in self.messages]
        if self.chat_template is None:
            return "\n".join(m["content"] for m in filled)
        return self.tokenizer.apply_chat_template(filled, chat_template=self.chat_template,
                                                  add_generation_prompt=True, tokenize=False)

    def _encode(self, values: dict):
        return self.backend.encode(self.render(values), add_special_tokens=self.add_special_tokens)

    def fit(self, values: dict):
        """``(encoding, None)`` of the row's prompt within ``max_length``, or ``(None, reason)``."""
        full = self._encode(values)
        limit = self.max_length
        if limit is None or len(full.ids) <= limit:
            return full, None
        over = f"the prompt has {len(full.ids)} tokens, more than tokenizer.max_length {limit}"
        if self.overflow != "truncate":
            return None, f"{over} (tokenizer.overflow is error)"
        if self.text_column not in self.columns:
            return None, f"{over}, and task.messages name no {{{self.text_column}}} (input.text_column) to cut"
        bare = len(self._encode({**values, self.text_column: ""}).ids)
        alone = (f"the prompt without its {self.text_column} text has {bare} tokens, more than tokenizer.max_length "
                 f"{limit}: shorten task.messages or the other columns, or raise tokenizer.max_length")
        if bare >= limit:
            return None, alone
        text = values[self.text_column]
        ends = [end for _, end in self.backend.encode(text, add_special_tokens=False).offsets]
        cut = lambda k: self._encode({**values, self.text_column: text[: ends[k - 1]]})  # noqa: E731
        k = min(limit - bare, len(ends))
        while k > 0:  # tokens can merge across the cut: step down by the excess until it fits ...
            enc = cut(k)
            if len(enc.ids) <= limit:
                break
            k -= len(enc.ids) - limit
        if k <= 0:
            return None, alone
        while k < len(ends):  # ... then up while one more token of the text still fits
            longer = cut(k + 1)
            if len(longer.ids) > limit:
                break
            k, enc = k + 1, longer
        return enc, None

    def encode_rows(self, batch: pa.Table) -> tuple[np.ndarray, list, dict[int, str]]:
        """``(rows, encodings, reasons)`` for a batch: the rows whose prompt fits, their encodings
        (in row order) and a reason for every other row (a null or empty column value, an
        overlong prompt, a template that refuses the messages)."""
        n = batch.num_rows
        good = np.ones(n, dtype=bool)
        reasons: dict[int, str] = {}
        values: dict[str, list] = {}
        for column in reversed(self.columns):  # the first named column's reason wins
            usable, texts, why = validated_texts(batch.column(column), column)
            good &= usable
            reasons.update(why)
            values[column] = texts
        rows, encodings = [], []
        for i in np.flatnonzero(good).tolist():
            row = {c: values[c][i] for c in self.columns}
            try:
                enc, reason = self.fit(row)
            except Exception as e:  # noqa: BLE001 - a template's raise_exception is this row's error
                enc, reason = None, f"chat template: {type(e).__name__}: {e}"
            if enc is None:
                reasons[i] = f"prompt: {reason}"
                continue
            rows.append(i)
            encodings.append(enc)
        return np.asarray(rows, dtype=np.int64), encodings, reasons
