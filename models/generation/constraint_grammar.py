"""The torch-free half of constrained decoding: which constraint a job sets and its llguidance
grammar, checked. The job driver validates `task.choices` / `json_schema` / `regex` with it
before any row is read, without importing torch (see :mod:`.constraints` for the token masks).
"""

from __future__ import annotations

import json
from typing import Any

KINDS = ("choices", "json_schema", "regex")
"""The constraint keys, in the order they are looked up."""

INSTALL_HINT = "pip install rayformers[constrained]"

JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""How a `json_schema` answer is laid out: as Python's `json.dumps` writes it, no other whitespace.
llguidance's own default allows any whitespace between tokens, where a model can loop on newlines
until its token limit; a schema's `x-guidance` options override this (any whitespace: set
`whitespace_flexible: true` with the separators `","` and `":"`)."""


class ConstraintError(ValueError):
    """A constraint that cannot be built (bad shape, invalid schema or regex), naming its key."""


def _llguidance():
    try:
        import llguidance
    except ImportError as e:
        raise ImportError(
            f"constrained outputs (task.choices / task.json_schema / task.regex) need the llguidance package, "
            f"which is not installed: {INSTALL_HINT}"
        ) from e
    return llguidance


def grammar(kind: str, value: Any) -> str:
    """The llguidance grammar of one constraint, checked: a wrong shape, an invalid JSON Schema or
    an invalid regex raises :class:`ConstraintError` naming `task.<kind>` and what is wrong."""
    key = f"task.{kind}"
    if kind not in KINDS:
        raise ConstraintError(f"unknown constraint {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "choices":
        if not isinstance(value, (list, tuple)) or not value:
            raise ConstraintError(f"{key} must be a non-empty list of strings, got {value!r}")
        for i, choice in enumerate(value):
            if not isinstance(choice, str) or not choice:
                raise ConstraintError(f"{key}[{i}] must be a non-empty string, got {choice!r}")
        if len(set(value)) != len(value):
            twice = sorted({c for c in value if list(value).count(c) > 1})
            raise ConstraintError(f"{key} lists {twice} more than once")
    elif kind == "json_schema":
        if not isinstance(value, dict) or not value:
            raise ConstraintError(f"{key} must be a JSON Schema mapping (e.g. {{type: object, properties: ...}}), "
                                  f"got {value!r}")
    elif not isinstance(value, str) or not value:
        raise ConstraintError(f"{key} must be a non-empty regular expression string, got {value!r}")
    ll = _llguidance()
    try:
        if kind == "choices":
            # a Lark rule with one string literal per choice (JSON string escapes are Lark's)
            text = ll.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in value))
        elif kind == "json_schema":
            text = ll.LLMatcher.grammar_from_json_schema(value, defaults=JSON_LAYOUT)
        else:
            text = ll.LLMatcher.grammar_from_regex(value)
    except (ValueError, TypeError) as e:
        raise ConstraintError(f"{key}: {e}") from e
    problem = ll.LLMatcher.validate_grammar(text)
    if problem:
        raise ConstraintError(f"{key} is not valid: {problem.strip()}")
    return text


def constraint_of(settings: dict) -> tuple[str, Any] | None:
    """The one `(kind, value)` set in `settings` (keys of KINDS, None/empty = unset), or None."""
    chosen = [(k, settings[k]) for k in KINDS if settings.get(k) not in (None, [], {}, "")]
    if len(chosen) > 1:
        raise ConstraintError(f"set one of task.{', task.'.join(KINDS)}, not {' and '.join(k for k, _ in chosen)}")
    return chosen[0] if chosen else None
