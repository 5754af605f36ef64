"""The numeric thresholds of an ``output.keep`` expression, for marking them on score histograms.

A curation report draws the keep threshold on the histogram of the column it applies to
(``quality_score >= 3``: a line at 3 on ``quality_score``). Only that much of the expression is
needed here: every comparison of a column with a number literal, in either order
(``3 <= quality_score`` is the same threshold). Quoted strings are blanked first so that a
comparison written inside a label (``topic_label in ['a>=3']``) is not mistaken for one.

This reads the expression text only; it never decides which rows are kept (the keep rule's own
parser does that when the job runs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NAME = r"[A-Za-z_][A-Za-z0-9_.]*"
_OPERATOR = r">=|<=|==|!=|>|<"
_COLUMN_FIRST = re.compile(rf"(?<![\w.])({_NAME})\s*({_OPERATOR})\s*({_NUMBER})(?![\w.])")
_NUMBER_FIRST = re.compile(rf"(?<![\w.])({_NUMBER})\s*({_OPERATOR})\s*({_NAME})(?![\w.])")
_MIRRORED = {">=": "<=", "<=": ">=", ">": "<", "<": ">", "==": "==", "!=": "!="}
_KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false"}


@dataclass(frozen=True)
class Threshold:
    """``column op value`` as written (``value op column`` is turned around)."""

    column: str
    op: str
    value: float

    def text(self) -> str:
        return f"{self.column} {self.op} {self.value:g}"


def keep_thresholds(expression: Optional[str]) -> dict[str, list[Threshold]]:
    """Every ``column <op> number`` comparison in ``expression``, by column (in the order written)."""
    if not expression:
        return {}
    text = _STRING.sub(lambda m: " " * len(m.group(0)), expression)
    found: list[tuple[int, Threshold]] = []
    for m in _COLUMN_FIRST.finditer(text):
        if m.group(1).lower() not in _KEYWORDS:
            found.append((m.start(), Threshold(m.group(1), m.group(2), float(m.group(3)))))
    for m in _NUMBER_FIRST.finditer(text):
        if m.group(3).lower() not in _KEYWORDS:
            found.append((m.start(), Threshold(m.group(3), _MIRRORED[m.group(2)], float(m.group(1)))))
    by_column: dict[str, list[Threshold]] = {}
    for _, t in sorted(found, key=lambda item: item[0]):
        by_column.setdefault(t.column, []).append(t)
    return by_column
