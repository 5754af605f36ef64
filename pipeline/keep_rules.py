"""``output.keep``: a small expression language for which rows a curation job keeps.

Why a parser of our own and not ``eval``: a config file is data, and ``eval`` of a string from it
would run any Python a config holds. The language is small enough for a tokenizer and a
recursive-descent parser, and the result is a ``pyarrow.compute.Expression``: the write tasks
evaluate it on whole Arrow tables (vectorised, no Python per row).

Grammar (lowest precedence first)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | comparison
    comparison := operand ( ("==" | "!=" | "<" | "<=" | ">" | ">=") operand
                          | ["not"] "in" "[" literal ("," literal)* [","] "]"
                          | "is" ["not"] "null" )?
    operand    := column | literal | "(" expr ")"
    column     := name (letters, digits, "_", ".") | `any name in backticks`
    literal    := number | 'string' | "string" | true | false

Keywords are case-insensitive. Strings take ``\\'``, ``\\"`` and ``\\\\`` escapes. Nulls follow
SQL: a comparison or ``in`` on a null value is null, and a null condition does not keep the row
(``x is null`` / ``x is not null`` test for it). Every error names its position in the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

COMPARISONS = ("==", "!=", "<=", ">=", "<", ">")
KEYWORDS = ("and", "or", "not", "in", "is", "null", "true", "false")


class KeepRuleError(ValueError):
    """An ``output.keep`` expression that cannot be used; ``position`` is a 0-based offset."""

    def __init__(self, message: str, text: str, position: int):
        self.reason = message
        self.text = text
        self.position = position
        caret = " " * position + "^"
        super().__init__(f"{message} at position {position}:\n    {text}\n    {caret}")


@dataclass(frozen=True)
class Token:
    kind: str  # "name", "number", "string", "op", "keyword", "end"
    value: Any
    position: int


_TOKEN_RE = re.compile(
    r"""(?P<space>\s+)
      | (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
      | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,)
    """,
    re.VERBOSE,
)


def tokenize(text: str) -> list[Token]:
    """Tokens of ``text``; a character that starts no token is an error at its position."""
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "'\"":
            value, i_end = _read_string(text, i)
            tokens.append(Token("string", value, i))
            i = i_end
            continue
        if ch == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise KeepRuleError("unterminated `column name`", text, i)
            if end == i + 1:
                raise KeepRuleError("empty `column name`", text, i)
            tokens.append(Token("name", text[i + 1:end], i))
            i = end + 1
            continue
        m = _TOKEN_RE.match(text, i)
        if not m:
            hint = " (use == to compare)" if ch == "=" else ""
            raise KeepRuleError(f"unexpected character {ch!r}{hint}", text, i)
        kind = m.lastgroup
        word = m.group(kind)
        if kind == "number":
            tokens.append(Token("number", float(word) if any(c in word for c in ".eE") else int(word), i))
        elif kind == "name":
            lower = word.lower()
            tokens.append(Token("keyword", lower, i) if lower in KEYWORDS else Token("name", word, i))
        elif kind == "op":
            tokens.append(Token("op", word, i))
        i = m.end()
    tokens.append(Token("end", None, len(text)))
    return tokens


def _read_string(text: str, start: int) -> tuple[str, int]:
    quote = text[start]
    out = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in (quote, "\\", "'", '"'):
            out.append(text[i + 1])
            i += 2
            continue
        if ch == quote:
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise KeepRuleError("unterminated string", text, start)


# ------------------------------------------------------------------------------------------------
# Syntax tree: small frozen nodes, turned into an Arrow expression by ``to_expression``.


@dataclass(frozen=True)
class Column:
    name: str
    position: int


@dataclass(frozen=True)
class Literal:
    value: Any
    position: int


@dataclass(frozen=True)
class Compare:
    op: str
    left: Any
    right: Any
    position: int


@dataclass(frozen=True)
class InList:
    operand: Any
    values: tuple
    negated: bool
    position: int


@dataclass(frozen=True)
class NullCheck:
    operand: Any
    negated: bool
    position: int


@dataclass(frozen=True)
class Logical:
    op: str  # "and", "or"
    left: Any
    right: Any


@dataclass(frozen=True)
class Not:
    operand: Any
    position: int


Node = Union[Column, Literal, Compare, InList, NullCheck, Logical, Not]


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        t = self.tokens[self.i]
        self.i += 1
        return t

    def at(self, kind: str, value: Any = None) -> bool:
        t = self.tok
        return t.kind == kind and (value is None or t.value == value)

    def fail(self, message: str, token: Optional[Token] = None) -> KeepRuleError:
        t = token or self.tok
        return KeepRuleError(message, self.text, t.position)

    def expect(self, kind: str, value: Any, what: str) -> Token:
        if not self.at(kind, value):
            raise self.fail(f"expected {what}, found {_describe(self.tok)}")
        return self.take()

    def parse(self) -> Node:
        if self.at("end"):
            raise self.fail("the expression is empty")
        node = self.or_expr()
        if not self.at("end"):
            raise self.fail(f"unexpected {_describe(self.tok)} (a missing 'and' / 'or'?)")
        return node

    def or_expr(self) -> Node:
        node = self.and_expr()
        while self.at("keyword", "or"):
            self.take()
            node = Logical("or", node, self.and_expr())
        return node

    def and_expr(self) -> Node:
        node = self.not_expr()
        while self.at("keyword", "and"):
            self.take()
            node = Logical("and", node, self.not_expr())
        return node

    def not_expr(self) -> Node:
        if self.at("keyword", "not"):
            t = self.take()
            return Not(self.not_expr(), t.position)
        return self.comparison()

    def comparison(self) -> Node:
        left = self.operand()
        t = self.tok
        if t.kind == "op" and t.value in COMPARISONS:
            self.take()
            right = self.operand()
            for side in (left, right):
                if isinstance(side, Literal) and side.value is None:
                    raise KeepRuleError("null cannot be compared with " + t.value + ": use 'is null' or 'is not null'",
                                        self.text, side.position)
            return Compare(t.value, left, right, t.position)
        if t.kind == "keyword" and t.value == "not" and self.tokens[self.i + 1].kind == "keyword" \
                and self.tokens[self.i + 1].value == "in":
            self.take()
            self.take()
            return InList(left, self.value_list(), True, t.position)
        if self.at("keyword", "in"):
            self.take()
            return InList(left, self.value_list(), False, t.position)
        if self.at("keyword", "is"):
            self.take()
            negated = False
            if self.at("keyword", "not"):
                self.take()
                negated = True
            self.expect("keyword", "null", "'null' after 'is'" + (" not" if negated else ""))
            return NullCheck(left, negated, t.position)
        return left

    def value_list(self) -> tuple:
        opening = self.expect("op", "[", "'[' starting the list of values after 'in'")
        values = []
        while not self.at("op", "]"):
            lit = self.literal()
            if lit.value is None:
                raise KeepRuleError("null cannot be in an 'in' list: use 'is null'", self.text, lit.position)
            values.append(lit)
            if self.at("op", ","):
                self.take()
            elif not self.at("op", "]"):
                raise self.fail(f"expected ',' or ']' in the list, found {_describe(self.tok)}")
        self.take()
        if not values:
            raise KeepRuleError("the 'in' list is empty", self.text, opening.position)
        kinds = {_literal_kind(v.value) for v in values}
        if len(kinds) > 1:
            raise KeepRuleError("the 'in' list mixes " + " and ".join(sorted(kinds)) + " values", self.text,
                                values[0].position)
        return tuple(values)

    def literal(self) -> Literal:
        t = self.tok
        if t.kind in ("number", "string"):
            self.take()
            return Literal(t.value, t.position)
        if t.kind == "keyword" and t.value in ("true", "false", "null"):
            self.take()
            return Literal({"true": True, "false": False, "null": None}[t.value], t.position)
        raise self.fail(f"expected a number, a 'string', true or false, found {_describe(t)}")

    def operand(self) -> Node:
        t = self.tok
        if t.kind == "name":
            self.take()
            return Column(t.value, t.position)
        if self.at("op", "("):
            self.take()
            node = self.or_expr()
            self.expect("op", ")", "')'")
            return node
        if t.kind in ("number", "string") or (t.kind == "keyword" and t.value in ("true", "false", "null")):
            return self.literal()
        raise self.fail(f"expected a column, a value or '(', found {_describe(t)}")


def _describe(t: Token) -> str:
    if t.kind == "end":
        return "the end of the expression"
    if t.kind == "string":
        return f"string {t.value!r}"
    return f"{t.kind} {t.value!r}" if t.kind != "op" else f"{t.value!r}"


def _literal_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "string" if isinstance(value, str) else "null"


def parse(text: str) -> Node:
    """The syntax tree of ``text`` (raises :class:`KeepRuleError` with the position)."""
    if not isinstance(text, str):
        raise KeepRuleError(f"expected a string, got {type(text).__name__}", str(text), 0)
    return _Parser(text).parse()


def columns_of(node: Node) -> list[Column]:
    """Every column the expression names, in order of appearance (with positions)."""
    if isinstance(node, Column):
        return [node]
    if isinstance(node, Literal):
        return []
    if isinstance(node, Compare):
        return columns_of(node.left) + columns_of(node.right)
    if isinstance(node, (InList, NullCheck)):
        return columns_of(node.operand)
    if isinstance(node, Logical):
        return columns_of(node.left) + columns_of(node.right)
    if isinstance(node, Not):
        return columns_of(node.operand)
    raise TypeError(node)


# ------------------------------------------------------------------------------------------------
# Checking against the columns a job has, and building the Arrow expression


def _type_kind(t) -> str:
    import pyarrow as pa

    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or (
            getattr(pa.types, "is_string_view", None) and pa.types.is_string_view(t)):
        return "string"
    if pa.types.is_dictionary(t):
        return _type_kind(t.value_type)
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_date(t) or pa.types.is_timestamp(t):
        return "temporal"
    return "other"


def check(text: str, columns: dict) -> Node:
    """Parse ``text`` and check it against ``columns`` (name → Arrow type, or None where the type
    is not known before the run): an unknown column, or a comparison between a column and a
    value of another kind (a number with a string column, ``<`` on a list column), is an error
    at its position. Returns the tree."""
    tree = parse(text)
    for col in columns_of(tree):
        if col.name not in columns:
            known = ", ".join(sorted(columns))
            raise KeepRuleError(f"unknown column {col.name!r} (the columns a kept row has: {known})",
                                text, col.position)
    _check_types(tree, columns, text)
    return tree


def _kind_of(node: Node, columns: dict) -> Optional[str]:
    if isinstance(node, Literal):
        return _literal_kind(node.value)
    if isinstance(node, Column):
        t = columns.get(node.name)
        return None if t is None else _type_kind(t)
    return "boolean"


def _check_types(node: Node, columns: dict, text: str) -> None:
    if isinstance(node, Logical):
        _check_types(node.left, columns, text)
        _check_types(node.right, columns, text)
        for side in (node.left, node.right):
            _check_boolean(side, columns, text)
    elif isinstance(node, Not):
        _check_types(node.operand, columns, text)
        _check_boolean(node.operand, columns, text)
    elif isinstance(node, Compare):
        _check_types(node.left, columns, text)
        _check_types(node.right, columns, text)
        kinds = [_kind_of(s, columns) for s in (node.left, node.right)]
        if "other" in kinds:
            side = (node.left, node.right)[kinds.index("other")]
            raise KeepRuleError(f"column {side.name!r} holds lists or structs, which cannot be compared with "
                                f"{node.op}", text, side.position)
        if None not in kinds and "null" not in kinds and kinds[0] != kinds[1]:
            raise KeepRuleError(f"{node.op} compares a {kinds[0]} with a {kinds[1]}", text, node.position)
    elif isinstance(node, InList):
        _check_types(node.operand, columns, text)
        kind = _kind_of(node.operand, columns)
        want = _literal_kind(node.values[0].value)
        if kind == "other":
            raise KeepRuleError("'in' needs a column of single values, not lists or structs", text, node.position)
        if kind not in (None, "null") and kind != want:
            raise KeepRuleError(f"'in' tests a {kind} against a list of {want} values", text, node.position)
    elif isinstance(node, NullCheck):
        _check_types(node.operand, columns, text)


def _check_boolean(node: Node, columns: dict, text: str) -> None:
    kind = _kind_of(node, columns)
    if kind not in (None, "boolean", "null"):
        where = node.position if hasattr(node, "position") else 0
        raise KeepRuleError(f"'and' / 'or' / 'not' need conditions, not a {kind} value", text, where)


def to_expression(node: Node):
    """The ``pyarrow.compute.Expression`` of a syntax tree (null-propagating as SQL)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def build(n: Node):
        if isinstance(n, Column):
            return pc.field(n.name)
        if isinstance(n, Literal):
            return pc.scalar(n.value)
        if isinstance(n, Compare):
            ops: dict[str, Callable] = {"==": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal,
                                        ">": pc.greater, ">=": pc.greater_equal}
            return ops[n.op](build(n.left), build(n.right))
        if isinstance(n, InList):
            operand = build(n.operand)
            found = pc.is_in(operand, value_set=pa.array([v.value for v in n.values]))
            if n.negated:
                found = pc.invert(found)
            # is_in says false for a null value; SQL (and this language) says null
            return pc.if_else(pc.is_null(operand), pc.scalar(pa.scalar(None, pa.bool_())), found)
        if isinstance(n, NullCheck):
            test = pc.is_null(build(n.operand))
            return pc.invert(test) if n.negated else test
        if isinstance(n, Logical):
            return (pc.and_kleene if n.op == "and" else pc.or_kleene)(build(n.left), build(n.right))
        if isinstance(n, Not):
            return pc.invert(build(n.operand))
        raise TypeError(n)

    return build(node)


def compile_keep(text: str, columns: Optional[dict] = None):
    """``text`` parsed (and checked against ``columns`` when given) into an Arrow expression."""
    tree = check(text, columns) if columns is not None else parse(text)
    return to_expression(tree)


def keep_mask(table, text: str):
    """Boolean array: the rows of ``table`` that ``text`` keeps (a null condition keeps nothing)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    expr = pc.coalesce(compile_keep(text), pc.scalar(False))
    names = sorted({c.name for c in columns_of(parse(text))})
    if not names:  # constant expression: a zero-column dataset has no rows to evaluate it on
        names = table.column_names[:1]
    mask = pads.dataset(table.select(names)).to_table(columns={"keep": expr}).column("keep")
    return mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask


__all__ = ["KeepRuleError", "check", "columns_of", "compile_keep", "keep_mask", "parse", "to_expression"]
