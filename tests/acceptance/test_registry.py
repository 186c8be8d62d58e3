"""formula_foundry.acceptance.registry: the registry CSV, its criteria, judging a run against one."""

from __future__ import annotations

from pathlib import Path

import pytest

from formula_foundry.acceptance import REGISTRY_COLUMNS, Evaluation, Registry, evaluate, load_registry
from formula_foundry.errors import AcceptanceError, FormulaFoundryError
from tests.acceptance import criterion

REPO = Path(__file__).resolve().parents[2]
HEADER = ",".join(REGISTRY_COLUMNS)


def write(tmp_path: Path, *rows: str, header: str = HEADER) -> Path:
    path = tmp_path / "acceptance_criteria_registry.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


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


def test_duplicate_is_reported_before_a_later_bad_row(tmp_path: Path) -> None:
    """Rows are checked in file order: a duplicate on line 3 wins over a bad expression on line 4."""
    path = write(tmp_path, "T,M1,x,x > 0,", "T,M1,x,x > 0,", "U,M1,x,x >,d")
    with pytest.raises(AcceptanceError, match="duplicate task_id 'T'") as info:
        load_registry(path)
    assert info.value.line == 3


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


def test_required_metric_keys_follow_the_producer_key_rule(tmp_path: Path) -> None:
    """The producer's MLflow key rule (validation.check_key) applies, path rule included: 'a//b' is refused."""
    path = write(tmp_path, "T,M1,x;loss//val,x > 0,d")
    with pytest.raises(AcceptanceError, match=r"'loss//val'.*not a valid MLflow metric key") as info:
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


def test_unknown_task_in_a_huge_registry_names_a_few_and_the_count() -> None:
    """200,000 tasks: the message shows a few ids and the count, not a 2 MB line."""
    from dataclasses import replace

    base = criterion("a > 0")
    registry = Registry.from_criteria([replace(base, task_id=f"T-{i}") for i in range(200_000)])
    with pytest.raises(AcceptanceError) as info:
        registry.criterion("X")
    message = str(info.value)
    assert "T-0, T-1" in message and "(200000 in all)" in message and len(message) < 400
