"""formula_foundry.tracking.acceptance: the registry CSV, the safe expression language, evaluation."""

from __future__ import annotations

import ast
import math
import sys
from pathlib import Path

import pytest

from formula_foundry.errors import AcceptanceError, FormulaFoundryError
from formula_foundry.tracking import acceptance
from formula_foundry.tracking.acceptance import (
    MAX_EXPRESSION_LENGTH,
    REGISTRY_COLUMNS,
    Criterion,
    Evaluation,
    Registry,
    evaluate,
    load_registry,
    parse_expression,
    render_report,
)
from tests.conftest import imported_names

REPO = Path(__file__).resolve().parents[2]
HEADER = ",".join(REGISTRY_COLUMNS)


def write(tmp_path: Path, *rows: str, header: str = HEADER) -> Path:
    path = tmp_path / "acceptance_criteria_registry.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def criterion(expression: str, metrics: tuple[str, ...] = ("a", "b"), task_id: str = "T-1") -> Criterion:
    return Criterion(task_id=task_id, milestone="M1", required_metrics=metrics, target_expression=expression)


# --------------------------------------------------------------------------- the shipped registry

def test_shipped_registry_loads() -> None:
    """config/acceptance_criteria_registry.csv is valid and holds the seed-style examples."""
    registry = load_registry(REPO / "config" / "acceptance_criteria_registry.csv")
    assert len(registry) >= 3
    build = registry.criterion("M1-coupon-build")
    assert build.milestone == "M1"
    assert build.required_metrics == ("build_time_seconds", "constraint_violations")
    assert build.target_expression == "build_time_seconds < 30 and constraint_violations == 0"
    loss = registry.criterion("M2-sim-insertion-loss")
    assert loss.required_metrics == ("insertion_loss_db",)
    assert registry.evaluate_run("M2-sim-insertion-loss", {"insertion_loss_db": -0.5}).passed
    assert not registry.evaluate_run("M2-sim-insertion-loss", {"insertion_loss_db": -1.5}).passed
    assert all(c.line is not None and c.description for c in registry)


# --------------------------------------------------------------------------- loading

def test_load_registry_reads_rows_with_line_numbers(tmp_path: Path) -> None:
    """Rows become criteria keyed by task id, with their line; fields are stripped; 'm2' → M2."""
    path = write(tmp_path,
                 "A-1, M1 ,x;y, x < 1 and y > 2 ,first",
                 "",
                 "B-2,m2, z ,z != 0,\"quoted, with comma\"")
    registry = load_registry(path)
    assert registry.task_ids == ("A-1", "B-2")
    assert "A-1" in registry and "C" not in registry
    a, b = registry.criteria["A-1"], registry.criteria["B-2"]
    assert (a.milestone, a.required_metrics, a.target_expression, a.line) == ("M1", ("x", "y"),
                                                                              "x < 1 and y > 2", 2)
    assert (b.milestone, b.required_metrics, b.description, b.line) == ("M2", ("z",), "quoted, with comma", 4)
    assert registry.path == path
    assert registry.for_milestone("2") == (b,)


def test_columns_in_any_order_and_bom(tmp_path: Path) -> None:
    """Header order is free; a UTF-8 BOM (Excel) is accepted."""
    path = tmp_path / "r.csv"
    path.write_bytes("\ufefftarget_expression,task_id,description,milestone,required_metrics\n"
                     "x > 0,T,d,M3,x\n".encode())
    assert load_registry(path).criterion("T").target_expression == "x > 0"


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is an AcceptanceError naming it."""
    missing = tmp_path / "nope.csv"
    with pytest.raises(AcceptanceError, match="not found") as info:
        load_registry(missing)
    assert info.value.path == missing and str(missing) in str(info.value)
    assert isinstance(info.value, FormulaFoundryError)


def test_empty_file(tmp_path: Path) -> None:
    """An empty file names the header it expected."""
    path = tmp_path / "r.csv"
    path.write_text("")
    with pytest.raises(AcceptanceError, match="empty file; expected the header task_id,"):
        load_registry(path)


def test_not_utf8(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are an AcceptanceError, not a UnicodeDecodeError."""
    path = tmp_path / "r.csv"
    path.write_bytes(HEADER.encode() + b"\nT,M1,x,x > 0,caf\xe9\n")
    with pytest.raises(AcceptanceError, match="not UTF-8"):
        load_registry(path)


def test_missing_column(tmp_path: Path) -> None:
    """A header without target_expression: line 1, that column."""
    path = write(tmp_path, "T,M1,x,d", header="task_id,milestone,required_metrics,description")
    with pytest.raises(AcceptanceError, match="missing column") as info:
        load_registry(path)
    assert (info.value.line, info.value.column) == (1, "target_expression")
    assert f"{path}:1: column 'target_expression'" in str(info.value)


def test_unknown_column(tmp_path: Path) -> None:
    """An extra column (e.g. a typo) is named, not ignored."""
    path = write(tmp_path, "T,M1,x,x > 0,d,1", header=HEADER + ",owner")
    with pytest.raises(AcceptanceError, match="unknown column") as info:
        load_registry(path)
    assert (info.value.line, info.value.column) == (1, "owner")


def test_wrong_field_count(tmp_path: Path) -> None:
    """A row with too few fields names its line."""
    path = write(tmp_path, "T,M1,x,x > 0,d", "U,M1,x")
    with pytest.raises(AcceptanceError, match="expected 5 fields") as info:
        load_registry(path)
    assert info.value.line == 3


def test_duplicate_task_id(tmp_path: Path) -> None:
    """The second definition is reported with its line and the first one's."""
    path = write(tmp_path, "T,M1,x,x > 0,first", "U,M1,x,x > 0,", "T,M2,y,y > 0,second")
    with pytest.raises(AcceptanceError, match=r"duplicate task_id 'T' \(first defined on line 2\)") as info:
        load_registry(path)
    assert (info.value.line, info.value.column) == (4, "task_id")


def test_empty_expression(tmp_path: Path) -> None:
    """An empty target_expression names line and column."""
    path = write(tmp_path, "T,M1,x,x > 0,", "", "U,M1,x,  ,d")
    with pytest.raises(AcceptanceError, match="target_expression is empty") as info:
        load_registry(path)
    assert (info.value.line, info.value.column) == (4, "target_expression")


def test_line_numbers_count_multiline_fields(tmp_path: Path) -> None:
    """A quoted description spanning two lines shifts later line numbers correctly."""
    path = write(tmp_path, 'T,M1,x,x > 0,"two\nlines"', "U,M1,x,x >,d")
    with pytest.raises(AcceptanceError, match="does not parse") as info:
        load_registry(path)
    assert info.value.line == 4


def test_expression_that_does_not_parse(tmp_path: Path) -> None:
    """A syntax error: line, column target_expression, col inside the expression."""
    path = write(tmp_path, "T,M1,x,x < ,d", "U,M1,x,x > 1 1,d")
    expected = r"task 'T': expression 'x <' does not parse at the end"
    with pytest.raises(AcceptanceError, match=expected) as info:
        load_registry(path)
    assert (info.value.line, info.value.column) == (2, "target_expression")


def test_syntax_error_position() -> None:
    """A syntax error in the middle names its column."""
    with pytest.raises(AcceptanceError, match=r"does not parse at col 7: invalid syntax"):
        parse_expression("x > 1 1")


def test_expression_names_unlisted_metric(tmp_path: Path) -> None:
    """An expression may only use metrics listed in required_metrics."""
    path = write(tmp_path, "T,M1,x,x > 0 and y < 1,d")
    with pytest.raises(AcceptanceError, match="names 'y', not listed in required_metrics") as info:
        load_registry(path)
    assert (info.value.line, info.value.column) == (2, "target_expression")


def test_disallowed_expression_in_file(tmp_path: Path) -> None:
    """A malicious expression in the file is reported with line, column and position."""
    path = write(tmp_path, "T,M1,x,\"__import__('os').system('echo hi') == 0\",d")
    with pytest.raises(AcceptanceError, match="attribute access") as info:
        load_registry(path)
    assert (info.value.line, info.value.column) == (2, "target_expression")
    assert "col 17" in str(info.value)


@pytest.mark.parametrize("field, message", [
    ("", "required_metrics is empty"),
    (" ; ", "required_metrics is empty"),
    ("x;x", "listed twice"),
    ("x;bad!key", "not a valid MLflow metric key"),
])
def test_bad_required_metrics(tmp_path: Path, field: str, message: str) -> None:
    """required_metrics must list valid, distinct MLflow keys."""
    path = write(tmp_path, f"T,M1,{field},x > 0,d")
    with pytest.raises(AcceptanceError, match=message) as info:
        load_registry(path)
    assert (info.value.line, info.value.column) == (2, "required_metrics")


def test_required_metrics_may_be_non_identifiers(tmp_path: Path) -> None:
    """A key like loss/val can be required (checked for presence) even if no expression can use it."""
    registry = load_registry(write(tmp_path, "T,M1,loss/val;x,x > 0,d"))
    result = registry.evaluate_run("T", {"x": 1.0})
    assert result.status == "MISSING" and result.missing == ("loss/val",)


@pytest.mark.parametrize("milestone", ["", "M9", "phase-1"])
def test_bad_milestone(tmp_path: Path, milestone: str) -> None:
    """The milestone column must be one of M1..M6."""
    path = write(tmp_path, f"T,{milestone},x,x > 0,d")
    with pytest.raises(AcceptanceError, match="milestone") as info:
        load_registry(path)
    assert (info.value.line, info.value.column) == (2, "milestone")


def test_empty_task_id(tmp_path: Path) -> None:
    """A row without a task id names the line."""
    with pytest.raises(AcceptanceError, match="task_id is empty") as info:
        load_registry(write(tmp_path, " ,M1,x,x > 0,d"))
    assert (info.value.line, info.value.column) == (2, "task_id")


def test_registry_from_criteria_rejects_duplicates() -> None:
    """Built in code, a duplicate task id is still an error."""
    with pytest.raises(AcceptanceError, match="duplicate task_id 'T-1'"):
        Registry.from_criteria([criterion("a > 0"), criterion("b > 0")])


def test_unknown_task_names_the_known_ones() -> None:
    """evaluate_run of a task the registry does not know is an AcceptanceError listing known ids."""
    registry = Registry.from_criteria([criterion("a > 0")])
    with pytest.raises(AcceptanceError, match="no acceptance criterion for task 'X'; known tasks: T-1"):
        registry.evaluate_run("X", {"a": 1.0})


# --------------------------------------------------------------------------- evaluation

def test_passing_run() -> None:
    """All metrics present and the condition holds: PASS, values reported in registry order."""
    result = evaluate(criterion("a < 30 and b == 0"), {"b": 0.0, "a": 12.5, "other": 1.0}, run_id="r1")
    assert isinstance(result, Evaluation)
    assert (result.passed, result.status, result.missing, result.run_id) == (True, "PASS", (), "r1")
    assert result.values == (("a", 12.5), ("b", 0.0))
    assert result.reason == "holds with a=12.5, b=0.0"
    assert result.task_id == "T-1" and result.expression == "a < 30 and b == 0"


def test_failing_run_names_failing_clauses() -> None:
    """The condition is false: FAIL, and the failing top-level clauses are named."""
    result = evaluate(criterion("a < 30 and b == 0"), {"a": 42.0, "b": 0.0})
    assert (result.passed, result.status) == (False, "FAIL")
    assert result.reason == "false with a=42.0, b=0.0; failing: [a < 30]"


def test_missing_metric() -> None:
    """A required metric absent: MISSING, not evaluated, the missing ones listed."""
    result = evaluate(criterion("a < 30", metrics=("a", "b", "c")), {"a": 1.0})
    assert (result.passed, result.status, result.missing) == (False, "MISSING", ("b", "c"))
    assert result.values == (("a", 1.0),)
    assert result.reason == "missing required metric(s): b, c"


def test_division_by_zero_fails_with_reason() -> None:
    """a / b with b == 0 makes the criterion FAIL with the reason; nothing is raised."""
    result = evaluate(criterion("a / b > 1"), {"a": 1.0, "b": 0.0})
    assert (result.passed, result.status) == (False, "FAIL")
    assert "ZeroDivisionError" in result.reason and "b=0.0" in result.reason


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


@pytest.mark.parametrize("value", ["1.0", None, True, [1.0]])
def test_non_numeric_metric_value_fails(value: object) -> None:
    """A metric value that is not an int/float (bools included) is a FAIL naming it, not a crash."""
    result = evaluate(criterion("a > 0", metrics=("a",)), {"a": value})  # type: ignore[dict-item]
    assert result.status == "FAIL" and "non-numeric" in result.reason and "a=" in result.reason


def test_evaluation_is_frozen_and_hashable() -> None:
    """Evaluations are values."""
    result = evaluate(criterion("a > 0"), {"a": 1.0, "b": 2.0})
    with pytest.raises(AttributeError):
        result.passed = False  # type: ignore[misc]
    assert hash(result) == hash(evaluate(criterion("a > 0"), {"a": 1.0, "b": 2.0}))


def test_criterion_validates_on_construction() -> None:
    """Built in code, a Criterion checks its expression against its metrics too."""
    with pytest.raises(AcceptanceError, match="names 'c', not listed"):
        criterion("c > 0")
    with pytest.raises(AcceptanceError, match="required_metrics is empty"):
        criterion("1 > 0", metrics=())


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


def test_module_is_pure_and_never_evaluates_code() -> None:
    """acceptance imports only the stdlib and formula_foundry; it never calls eval/exec/compile."""
    for name in imported_names(acceptance):
        assert name.split(".")[0] in sys.stdlib_module_names or name.startswith("formula_foundry."), name
    for node in ast.walk(ast.parse(Path(acceptance.__file__).read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in {"eval", "exec", "compile", "__import__"}, node.func.id


# --------------------------------------------------------------------------- the report

def test_render_report() -> None:
    """A table with task, run, status, missing metrics and expression; reasons; a summary line."""
    crit = criterion("a < 30 and b == 0")
    evaluations = [
        evaluate(crit, {"a": 1.0, "b": 0.0}, run_id="run-pass"),
        evaluate(crit, {"a": 99.0, "b": 0.0}, run_id="run-fail"),
        evaluate(crit, {"a": 1.0}, run_id="run-missing"),
        evaluate(crit, {"a": 1.0, "b": 0.0}),
    ]
    report = render_report(evaluations)
    lines = report.splitlines()
    assert lines[0].split() == ["TASK", "RUN", "STATUS", "MISSING", "EXPRESSION"]
    assert lines[1].split()[:4] == ["T-1", "run-pass", "PASS", "-"]
    assert lines[1].endswith("a < 30 and b == 0")
    assert lines[2].split()[:3] == ["T-1", "run-fail", "FAIL"]
    assert lines[3].strip() == "reason: false with a=99.0, b=0.0; failing: [a < 30]"
    assert lines[4].split()[:4] == ["T-1", "run-missing", "MISSING", "b"]
    assert lines[5].strip() == "reason: missing required metric(s): b"
    assert lines[6].split()[:3] == ["T-1", "-", "PASS"]
    assert lines[-1] == "4 run(s): 2 passed, 1 failed, 1 missing metrics"
    assert lines[1].index("PASS") == lines[0].index("STATUS")
    assert report.endswith("\n")


def test_render_report_empty() -> None:
    """No evaluations: one line saying so."""
    assert render_report([]) == "no runs evaluated\n"
