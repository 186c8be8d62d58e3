"""formula_foundry.acceptance.expression: the safe target-expression language and its semantics."""

from __future__ import annotations

import math

import pytest

from formula_foundry.acceptance import MAX_EXPRESSION_LENGTH, Criterion, evaluate, parse_expression
from formula_foundry.errors import AcceptanceError
from tests.acceptance import criterion


# --------------------------------------------------------------------------- semantics

def test_short_circuit_guards_division() -> None:
    """'b != 0 and a / b > 1' never divides by zero, as in Python."""
    result = evaluate(criterion("b != 0 and a / b > 1"), {"a": 1.0, "b": 0.0})
    assert result.status == "FAIL" and "ZeroDivisionError" not in result.reason
    assert evaluate(criterion("b == 0 or a / b > 1"), {"a": 1.0, "b": 0.0}).passed


def test_overflow_fails_with_reason() -> None:
    """A huge integer literal mixed with a float overflows: FAIL with the reason."""
    big = "9" * 400
    result = evaluate(criterion(f"a * {big} > 0"), {"a": 1.5, "b": 0.0})
    assert result.status == "FAIL" and "OverflowError" in result.reason


@pytest.mark.parametrize("expression", ["a > 0", "a < 0", "a == a", "a != 1", "a >= -1"])
def test_nan_never_satisfies_a_comparison(expression: str) -> None:
    """Every comparison with NaN is false, != included; the reason names the NaN metric."""
    result = evaluate(criterion(expression, metrics=("a",)), {"a": math.nan})
    assert not result.passed
    assert "NaN metric(s): a" in result.reason


def test_not_of_nan_comparison_is_true() -> None:
    """Documented consequence: not (a > 1) holds when a is NaN."""
    assert evaluate(criterion("not (a > 1)", metrics=("a",)), {"a": math.nan}).passed


def test_min_max_propagate_nan() -> None:
    """min/max with a NaN argument are NaN (so the comparison fails), whatever the order."""
    for expression in ("min(a, b) < 5", "min(b, a) < 5", "max(a, b) > 0", "max(b, a) > 0"):
        assert not evaluate(criterion(expression), {"a": math.nan, "b": 1.0}).passed, expression


@pytest.mark.parametrize("expression, metrics, expected", [
    ("0 < a <= 1", {"a": 1.0, "b": 0}, True),
    ("0 < a <= 1", {"a": 1.5, "b": 0}, False),
    ("1 < a < b", {"a": 2, "b": 2}, False),
    ("abs(a - b) < 0.1", {"a": 1.05, "b": 1.0}, True),
    ("min(a, b, 3) >= 1 and max(a, b) <= 2", {"a": 1, "b": 2}, True),
    ("-a > +b", {"a": -3.0, "b": 2.0}, True),
    ("a * 2 + b / 4 - 1 == 2", {"a": 1, "b": 4.0}, True),
    ("not a > 1 or b > 1", {"a": 2, "b": 0}, False),
    ("True", {"a": 0, "b": 0}, True),
    ("a > 1e-3 and b < 1.5E2", {"a": 0.01, "b": 149}, True),
    ("a >= 0 and not (b < 0)", {"a": 0, "b": 0}, True),
])
def test_expression_semantics(expression: str, metrics: dict[str, float], expected: bool) -> None:
    """Arithmetic, chained comparisons, abs/min/max, unary operators and booleans behave as in Python."""
    assert evaluate(criterion(expression), metrics).passed is expected


def test_integer_metrics_and_infinities() -> None:
    """int metric values are numbers; +inf compares as a number."""
    assert evaluate(criterion("a > 1 and b < 0"), {"a": 2, "b": -math.inf}).passed


# --------------------------------------------------------------------------- the safe grammar

MALICIOUS = [
    "__import__('os').system('echo hi')",
    "__import__('os')",
    "().__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "open('x')",
    "open('x').read() == ''",
    "'a' * 10**9",
    "'a' * 10 == 'aaaaaaaaaa'",
    "lambda: 1",
    "(lambda: 1)() == 1",
    "[x for x in y]",
    "{x for x in y}",
    "{x: 1 for x in y}",
    "any(x for x in y)",
    "x if y else z",
    "(a if b else 1) > 0",
    "x.y",
    "x.y > 1",
    "a[0]",
    "a[0] > 1",
    "a[1:2] > 1",
    "9**9**9",
    "a ** 2 > 1",
    "a // 2 > 1",
    "a % 2 == 0",
    "a @ b > 0",
    "a << 2 > 1",
    "a | b > 1",
    "~a > 0",
    "a in (1, 2)",
    "a not in [1]",
    "a is None",
    "a is not b",
    "(x := 1) > 0",
    "f'{a}' == 'a'",
    "b'x' == a",
    "1j > a",
    "None == a",
    "... == a",
    "eval('1') > 0",
    "exec('1') is None",
    "getattr(a, 'b') > 0",
    "globals() == 1",
    "abs(a, b) > 0",
    "abs() > 0",
    "min(a) > 0",
    "max(a, key=b) > 0",
    "abs(*a) > 0",
    "min(*[a, b]) > 0",
    "__class__ > 0",
    "__builtins__ > 0",
    "abs > 0",
    "await a",
    "{} == a",
    "{'a': 1} == a",
    "(a, b) > (1, 2)",
    "a",
    "a + 1",
    "abs(a)",
    "a and 1",
    "not a",
    "(a < 1) + 1 > 0",
    "(a < 1) < 2",
    "min(a < 1, 2) > 0",
    "a > 1; b > 2",
    "import os",
    "a > 1\nimport os",
    "a >",
    "",
    "   ",
    "a > 0 and \x00",
    "\uff41 > 0",  # fullwidth 'a', which Python's parser would NFKC-normalize to 'a'
    "café > 0",
]


def test_syntax_error_position() -> None:
    """A syntax error in the middle names its column."""
    with pytest.raises(AcceptanceError, match=r"does not parse at col 7: invalid syntax"):
        parse_expression("x > 1 1")


@pytest.mark.parametrize("expression", MALICIOUS)
def test_malicious_or_malformed_expressions_are_rejected(expression: str) -> None:
    """Anything off the allow-list (or not a condition) is an AcceptanceError, never evaluated."""
    with pytest.raises(AcceptanceError):
        parse_expression(expression)


@pytest.mark.parametrize("expression, construct, col", [
    ("x.y > 1", "attribute access", 2),
    ("a > 1 and b[0] > 1", "subscript", 12),
    ("a ** 2 > 1", "operator '**'", 1),
    ("open('x') == 1", "call to 'open'", 1),
    ("a > 1 or (lambda: 1)() == 1", "lambda", 11),
    ("a == 'x'", "string literal", 6),
    ("b > 0 and (x if y else z) > 0", "conditional expression", 12),
    ("[x for x in y] == 1", "list comprehension", 1),
    ("(x := 1) > 0", "assignment expression", 2),
    ("f'{a}' == 1", "f-string", 1),
])
def test_rejection_names_construct_and_column(expression: str, construct: str, col: int) -> None:
    """The message names the offending construct and its 1-based column."""
    with pytest.raises(AcceptanceError) as info:
        parse_expression(expression)
    message = str(info.value)
    assert construct in message
    assert f"at col {col} " in message
    assert repr(expression) in message


def test_expression_length_limit() -> None:
    """Longer than MAX_EXPRESSION_LENGTH characters: rejected before parsing."""
    text = " and ".join(["a > 1"] * 200)
    assert len(text) > MAX_EXPRESSION_LENGTH
    with pytest.raises(AcceptanceError, match="characters long"):
        parse_expression(text)


def test_expression_node_limit() -> None:
    """Short but with too many nodes: rejected by the node count."""
    text = "a" + "+a" * 300 + " > 0"
    assert len(text) <= MAX_EXPRESSION_LENGTH
    with pytest.raises(AcceptanceError, match="nodes, more than"):
        parse_expression(text)


@pytest.mark.parametrize("text", [
    "-" * 990 + "a > 0", "not " * 240 + "a > 0", "(" * 300 + "a" + ")" * 300 + " > 0",
])
def test_deep_nesting_is_an_acceptance_error_not_a_crash(text: str) -> None:
    """Deeply nested input never escapes as RecursionError/MemoryError."""
    try:
        parsed = parse_expression(text)
    except AcceptanceError:
        return
    evaluate(Criterion(task_id="T", milestone="M1", required_metrics=("a",), target_expression=text),
             {"a": 1.0})
    assert parsed.metric_names == ("a",)


def test_metric_names_in_first_use_order() -> None:
    """TargetExpression.metric_names lists each metric once, in order of first use."""
    assert parse_expression("b > a and abs(c - b) < 1").metric_names == ("b", "a", "c")
