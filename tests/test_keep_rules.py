"""``output.keep``'s expression language: parsed without eval, evaluated by Arrow, errors point at
their position."""

from __future__ import annotations

import pyarrow as pa
import pytest

from rayformers.pipeline.keep_rules import KeepRuleError, Compare, Logical, Not, check, keep_mask, parse

TABLE = pa.table({
    "quality_score": pa.array([1.0, 3.5, None, 4.0, 5.0, 3.0], pa.float32()),
    "topic_label": ["science", "sports", "health", None, "health", "it's"],
    "n": [1, 2, 3, 4, 5, 6],
    "flag": [True, False, None, True, False, True],
})


def kept(rule: str) -> list[bool]:
    return keep_mask(TABLE, rule).to_pylist()


def test_the_issue_example_keeps_rows_that_pass_both_tests():
    assert kept("quality_score >= 3 and topic_label in ['science', 'health']") == [
        False, False, False, False, True, False]


def test_precedence_not_binds_tighter_than_and_which_binds_tighter_than_or():
    tree = parse("not a > 1 or b < 2 and c == 3")
    assert isinstance(tree, Logical) and tree.op == "or"
    assert isinstance(tree.left, Not) and isinstance(tree.left.operand, Compare)
    assert isinstance(tree.right, Logical) and tree.right.op == "and"
    # or of (n == 1) and (n == 2 and flag): parentheses change it
    assert kept("n == 1 or n == 2 and flag") == [True, False, False, False, False, False]
    assert kept("(n == 1 or n == 2) and flag") == [True, False, False, False, False, False]
    assert kept("(n == 1 or n == 6) and flag") == [True, False, False, False, False, True]
    assert kept("n == 1 or n == 6 and not flag") == [True, False, False, False, False, False]


def test_keywords_are_case_insensitive_and_comparisons_can_put_the_value_first():
    assert kept("3 <= quality_score AND NOT topic_label IN ['health']") == [False, True, False, False, False, True]


def test_in_and_not_in_lists_treat_a_null_value_as_unknown():
    assert kept("topic_label in ['health', 'sports',]") == [False, True, True, False, True, False]
    # a null topic is neither in nor out of the list: the row is not kept either way
    assert kept("topic_label not in ['health']") == [True, True, False, False, False, True]
    assert kept("n in [1, 3, 5.0]") == [True, False, True, False, True, False]


def test_strings_with_quotes_inside():
    assert kept("topic_label == 'it\\'s'") == [False] * 5 + [True]
    assert kept('topic_label == "it\'s"') == [False] * 5 + [True]
    assert parse(r"a == 'back\\slash'").right.value == "back\\slash"


def test_null_checks_and_nulls_never_pass_a_comparison():
    assert kept("quality_score is null") == [False, False, True, False, False, False]
    assert kept("topic_label is not null and quality_score is not null") == [True, True, False, False, True, True]
    assert kept("quality_score < 100") == [True, True, False, True, True, True]
    assert kept("not quality_score < 100") == [False] * 6  # not null is still null: dropped


def test_boolean_columns_and_literals():
    assert kept("flag") == [True, False, False, True, False, True]
    assert kept("flag == false or flag is null") == [False, True, True, False, True, False]
    assert kept("true") == [True] * 6


def test_backticks_name_columns_with_any_characters():
    table = pa.table({"my score": [1, 5]})
    assert keep_mask(table, "`my score` > 2").to_pylist() == [False, True]


@pytest.mark.parametrize("rule, position, words", [
    ("quality_score >", 15, "expected a column, a value or '('"),
    ("quality_score = 3", 14, "use == to compare"),
    ("topic_label in []", 15, "the 'in' list is empty"),
    ("topic_label in 'health'", 15, "expected '['"),
    ("(n > 1 or n < 0", 15, "expected ')'"),
    ("n > 1 n < 0", 6, "a missing 'and' / 'or'"),
    ("topic_label == 'open", 15, "unterminated string"),
    ("quality_score == null", 17, "use 'is null'"),
    ("n in [1, 'a']", 6, "mixes number and string"),
    ("quality_score is 3", 17, "expected 'null' after 'is'"),
    ("", 0, "empty"),
    ("n > 1 and", 9, "found the end of the expression"),
    ("import os", 7, "unexpected name 'os'"),
])
def test_syntax_errors_point_at_their_position(rule, position, words):
    with pytest.raises(KeepRuleError) as e:
        parse(rule)
    assert e.value.position == position
    assert words in str(e.value)
    assert f"at position {position}:\n    {rule}\n    {' ' * position}^" in str(e.value)


def test_unknown_columns_and_mismatched_types_are_errors_at_their_position():
    columns = {"quality_score": pa.float32(), "topic_label": pa.string(), "emb_embedding": pa.list_(pa.float32()),
               "later": None}
    with pytest.raises(KeepRuleError) as e:
        check("quality_score > 3 and topci_label == 'x'", columns)
    assert e.value.position == 22 and "unknown column 'topci_label'" in str(e.value)
    assert "topic_label" in str(e.value)  # the columns that exist are listed
    with pytest.raises(KeepRuleError, match="compares a number with a string"):
        check("quality_score > 'high'", columns)
    with pytest.raises(KeepRuleError, match="tests a string against a list of number"):
        check("topic_label in [1, 2]", columns)
    with pytest.raises(KeepRuleError, match="holds lists"):
        check("emb_embedding > 1", columns)
    with pytest.raises(KeepRuleError, match="need conditions, not a number"):
        check("quality_score and topic_label == 'a'", columns)
    check("later > 3 or later == 'x'", columns)  # a type not known before the run: not checked here
    check("emb_embedding is null", columns)


def test_no_python_is_ever_evaluated():
    for rule in ("__import__('os').system('true')", "quality_score.__class__", "[x for x in n]"):
        with pytest.raises(KeepRuleError):
            check(rule, {"quality_score": pa.float32(), "n": pa.int64()})
