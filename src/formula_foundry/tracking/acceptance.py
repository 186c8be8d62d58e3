"""The acceptance criteria registry and its safe target-expression language (pure: stdlib only).

Seed 003: "Ensure each run logs tag ``task:<task_id>`` and metrics listed in
``acceptance_criteria_registry.csv``". This module loads that registry, parses
its target expressions with an allow-listed grammar and evaluates a run's
metrics against them. It never imports MLflow: the command that fetches runs
(``ff-ingest check``) lives with the ingester and hands metrics in as a plain
mapping.

Registry file (``config/acceptance_criteria_registry.csv``)
-----------------------------------------------------------
UTF-8 CSV (a BOM is accepted), a header row with exactly these columns, in any
order, then one row per task::

    task_id,milestone,required_metrics,target_expression,description
    M2-sim-insertion-loss,M2,insertion_loss_db,insertion_loss_db > -1.0,Loss of the via transition

- ``task_id``: unique, non-empty; matched against a run's ``task`` tag.
- ``milestone``: ``M1`` ... ``M6`` (``m2`` and ``2`` are accepted and normalized).
- ``required_metrics``: metric keys separated by ``;`` (MLflow key characters:
  letters, digits, ``_ - . / : `` and space). A run missing any of them is
  reported as MISSING, whatever the expression says.
- ``target_expression``: a condition over the required metrics (grammar below).
  It may only name metrics listed in ``required_metrics``.
- ``description``: free text.

Blank lines are skipped. Every error is an :class:`AcceptanceError` naming the
file, the line (1-based, the header is line 1) and the CSV column.

Target expressions
------------------
Parsed with ``ast.parse(text, mode="eval")`` and accepted only if every node is
on this allow-list; they are evaluated by walking that tree here, never with
``eval``, ``exec`` or ``compile``:

- ``and``, ``or``, ``not`` over conditions (short-circuit, as in Python, so
  ``n > 0 and total / n < 2`` never divides by zero);
- comparisons ``< <= > >= == !=`` between numbers, chained (``0 < x <= 1``);
- arithmetic ``+ - * /``, unary ``-`` and ``+``;
- metric names: ASCII identifiers (``[A-Za-z_][A-Za-z0-9_]*``, not starting
  with ``__``, not ``abs``/``min``/``max``); a metric whose MLflow key is not an
  identifier (``loss/val``) can be required but not used in an expression;
- number literals (int, float, scientific notation) and ``True``/``False``;
- the calls ``abs(x)``, ``min(a, b, ...)`` and ``max(a, b, ...)`` (positional
  arguments only, at least two for ``min``/``max``).

Anything else (attributes, subscripts, strings, ``**``, ``//``, ``%``, bit
operators, ``in``/``is``, lambdas, comprehensions, conditional expressions,
``:=``, f-strings, any other call) is an :class:`AcceptanceError` naming the
construct and its column (1-based). An expression is at most
:data:`MAX_EXPRESSION_LENGTH` characters and :data:`MAX_EXPRESSION_NODES`
nodes, and must be a condition, not a bare number.

Numeric edge cases, decided once here:

- NaN: every comparison with a NaN operand is false, *including* ``!=`` (so a
  NaN metric never satisfies a comparison; note that ``not (x > 1)`` is then
  true). ``min``/``max`` return NaN when any argument is NaN. The evaluation's
  reason names NaN metrics.
- Division by zero and overflow (e.g. a huge integer literal mixed with a
  float) make the criterion FAIL with the reason, never crash the report.
"""

from __future__ import annotations

import ast
import csv
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from formula_foundry.errors import AcceptanceError, ValidationError
from formula_foundry.tracking.conventions import normalize_milestone

__all__ = [
    "DEFAULT_REGISTRY_RELPATH",
    "MAX_EXPRESSION_LENGTH",
    "MAX_EXPRESSION_NODES",
    "REGISTRY_COLUMNS",
    "Criterion",
    "Evaluation",
    "Registry",
    "TargetExpression",
    "evaluate",
    "load_registry",
    "parse_expression",
    "render_report",
]

#: Where the registry lives, relative to the project root.
DEFAULT_REGISTRY_RELPATH = Path("config") / "acceptance_criteria_registry.csv"

#: The registry's columns, all required, no others allowed.
REGISTRY_COLUMNS: tuple[str, ...] = (
    "task_id", "milestone", "required_metrics", "target_expression", "description",
)

#: Longest target expression accepted, in characters.
MAX_EXPRESSION_LENGTH = 1000

#: Most expression nodes (names, numbers, operations, calls) in one target expression.
MAX_EXPRESSION_NODES = 256

_FUNCTIONS = ("abs", "min", "max")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# MLflow's rule for metric keys (mlflow.utils.validation), and its length limit.
_METRIC_KEY_RE = re.compile(r"[/\w.\- :]+")
_METRIC_KEY_MAX = 250

_BIN_OPS: dict[type[ast.operator], str] = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/",
}
_CMP_OPS: dict[type[ast.cmpop], str] = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
}
_REJECTED_OPS: dict[type[ast.AST], str] = {
    ast.Pow: "operator '**'", ast.FloorDiv: "operator '//'", ast.Mod: "operator '%'",
    ast.MatMult: "operator '@'", ast.LShift: "operator '<<'", ast.RShift: "operator '>>'",
    ast.BitOr: "operator '|'", ast.BitAnd: "operator '&'", ast.BitXor: "operator '^'",
    ast.Invert: "operator '~'", ast.In: "comparison 'in'", ast.NotIn: "comparison 'not in'",
    ast.Is: "comparison 'is'", ast.IsNot: "comparison 'is not'",
}
_REJECTED_NODES: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access ('.')",
    ast.Subscript: "subscript ('[...]')",
    ast.Lambda: "lambda",
    ast.ListComp: "list comprehension",
    ast.SetComp: "set comprehension",
    ast.DictComp: "dict comprehension",
    ast.GeneratorExp: "generator expression",
    ast.IfExp: "conditional expression ('x if c else y')",
    ast.NamedExpr: "assignment expression (':=')",
    ast.JoinedStr: "f-string",
    ast.FormattedValue: "f-string",
    ast.List: "list display",
    ast.Tuple: "tuple",
    ast.Set: "set display",
    ast.Dict: "dict display",
    ast.Starred: "starred argument ('*')",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield from",
    ast.Slice: "slice",
}

_NUMBER = "number"
_CONDITION = "condition"


def _where(node: ast.AST) -> str:
    """' at col N' (1-based); for x.y and x[i], the column of the '.' or '['."""
    col = getattr(node, "col_offset", None)
    if isinstance(node, (ast.Attribute, ast.Subscript)) and node.value.end_col_offset is not None:
        col = node.value.end_col_offset
    return f" at col {col + 1}" if col is not None else ""


class _Checker:
    """Walks a parsed expression once: allow-list, kinds (number/condition), metric names."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.names: list[str] = []

    def fail(self, what: str, node: ast.AST) -> AcceptanceError:
        return AcceptanceError(f"{what} is not allowed{_where(node)} in expression {self.source!r}")

    def kind(self, node: ast.AST) -> str:
        if isinstance(node, ast.BoolOp):
            for value in node.values:
                self.expect(value, _CONDITION, "an operand of 'and'/'or'")
            return _CONDITION
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                self.expect(node.operand, _CONDITION, "the operand of 'not'")
                return _CONDITION
            if isinstance(node.op, (ast.USub, ast.UAdd)):
                self.expect(node.operand, _NUMBER, "the operand of unary '-'/'+'")
                return _NUMBER
            raise self.fail(_REJECTED_OPS.get(type(node.op), type(node.op).__name__), node)
        if isinstance(node, ast.Compare):
            for op in node.ops:
                if type(op) not in _CMP_OPS:
                    raise self.fail(_REJECTED_OPS.get(type(op), type(op).__name__), node)
            for operand in (node.left, *node.comparators):
                self.expect(operand, _NUMBER, "a compared value")
            return _CONDITION
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BIN_OPS:
                raise self.fail(_REJECTED_OPS.get(type(node.op), type(node.op).__name__), node)
            self.expect(node.left, _NUMBER, f"an operand of '{_BIN_OPS[type(node.op)]}'")
            self.expect(node.right, _NUMBER, f"an operand of '{_BIN_OPS[type(node.op)]}'")
            return _NUMBER
        if isinstance(node, ast.Name):
            self.check_name(node)
            if node.id not in self.names:
                self.names.append(node.id)
            return _NUMBER
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool):
                return _CONDITION
            if isinstance(value, (int, float)):
                return _NUMBER
            what = {str: "string literal", bytes: "bytes literal", complex: "complex literal"}.get(
                type(value), f"constant {value!r}")
            raise self.fail(what, node)
        if isinstance(node, ast.Call):
            return self.check_call(node)
        raise self.fail(_REJECTED_NODES.get(type(node), f"construct '{type(node).__name__}'"), node)

    def expect(self, node: ast.AST, wanted: str, role: str) -> None:
        got = self.kind(node)
        if got != wanted:
            article = "a number" if wanted == _NUMBER else "a condition"
            raise AcceptanceError(
                f"{role} must be {article}, got a {got}{_where(node)} in expression {self.source!r}")

    def check_name(self, node: ast.Name) -> None:
        name = node.id
        if not _NAME_RE.fullmatch(name):
            raise self.fail(f"name {name!r} (metric names are ASCII identifiers)", node)
        if name.startswith("__"):
            raise self.fail(f"name {name!r} (names starting with '__')", node)
        if name in _FUNCTIONS:
            raise self.fail(f"'{name}' without a call (it is a function, not a metric)", node)

    def check_call(self, node: ast.Call) -> str:
        func = node.func
        if not isinstance(func, ast.Name):
            self.kind(func)  # names the real culprit: x.f(), x[0](), (lambda: 0)() ...
            raise self.fail("call to a computed function (only abs, min, max)", node)
        if func.id not in _FUNCTIONS:
            raise self.fail(f"call to '{func.id}' (only abs, min, max)", node)
        if node.keywords:
            raise self.fail(f"keyword argument to '{func.id}'", node.keywords[0].value)
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.fail(_REJECTED_NODES[ast.Starred], arg)
        count = len(node.args)
        if func.id == "abs" and count != 1:
            raise AcceptanceError(
                f"abs() takes exactly 1 argument, got {count}{_where(node)} in expression {self.source!r}")
        if func.id != "abs" and count < 2:
            raise AcceptanceError(
                f"{func.id}() takes at least 2 arguments, got {count}{_where(node)} "
                f"in expression {self.source!r}")
        for arg in node.args:
            self.expect(arg, _NUMBER, f"an argument of '{func.id}'")
        return _NUMBER


@dataclass(frozen=True)
class TargetExpression:
    """A parsed, allow-listed target expression; build it with :func:`parse_expression`."""

    source: str
    metric_names: tuple[str, ...]
    _tree: ast.Expression = field(repr=False, compare=False)

    def evaluate(self, metrics: Mapping[str, float]) -> bool:
        """Evaluate against numeric metric values.

        Raises ``KeyError`` for a metric it names that ``metrics`` lacks, and
        ``ArithmeticError`` (``ZeroDivisionError``, ``OverflowError``) for
        arithmetic that has no value; :func:`evaluate` turns both into a
        reported outcome.
        """
        return bool(_eval(self._tree.body, metrics))

    def clauses(self) -> tuple[tuple[str, TargetExpression], ...]:
        """The top-level ``and`` operands as (source text, expression); one item otherwise."""
        body = self._tree.body
        if not (isinstance(body, ast.BoolOp) and isinstance(body.op, ast.And)):
            return ((self.source, self),)
        out = []
        for value in body.values:
            text = ast.get_source_segment(self.source, value) or ast.dump(value)
            names = tuple(n for n in self.metric_names if _mentions(value, n))
            out.append((text, TargetExpression(text, names, ast.Expression(body=value))))
        return tuple(out)


def _mentions(node: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node))


def _syntax_where(exc: SyntaxError, text: str) -> str:
    if exc.offset is None:
        return ""
    lines = text.splitlines() or [""]
    line = exc.lineno or 1
    if exc.offset <= 0 or line > len(lines) or exc.offset > len(lines[line - 1]):
        return " at the end"
    return f" at col {exc.offset}" if len(lines) == 1 else f" at line {line} col {exc.offset}"


def parse_expression(source: str) -> TargetExpression:
    """Parse and check a target expression against the allow-list (see the module docstring).

    Raises :class:`AcceptanceError` naming the offending construct and its column.
    """
    if not isinstance(source, str):
        raise AcceptanceError(f"target expression must be a string, got {type(source).__name__}")
    text = source.strip()
    if not text:
        raise AcceptanceError("target expression is empty")
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise AcceptanceError(
            f"target expression is {len(text)} characters long, more than {MAX_EXPRESSION_LENGTH}")
    if not text.isascii():
        col = next(i for i, ch in enumerate(text) if not ch.isascii()) + 1
        raise AcceptanceError(f"non-ASCII character at col {col} in expression {text!r} "
                              "(metric names are ASCII identifiers)")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        where = _syntax_where(exc, text)
        raise AcceptanceError(f"expression {text!r} does not parse{where}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise AcceptanceError(f"expression {text!r} does not parse: {exc}") from None
    # Count iteratively (ast.walk uses a queue) before the recursive check, which bounds its depth.
    count = sum(1 for node in ast.walk(tree.body) if isinstance(node, ast.expr))
    if count > MAX_EXPRESSION_NODES:
        raise AcceptanceError(
            f"expression {text!r} has {count} nodes, more than {MAX_EXPRESSION_NODES}")
    checker = _Checker(text)
    kind = checker.kind(tree.body)
    if kind != _CONDITION:
        raise AcceptanceError(
            f"expression {text!r} is a number, not a condition; compare it (e.g. '... > 0')")
    return TargetExpression(text, tuple(checker.names), tree)


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _compare(op: ast.cmpop, left: float, right: float) -> bool:
    if _is_nan(left) or _is_nan(right):
        return False  # NaN never satisfies a comparison, != included (module docstring)
    if isinstance(op, ast.Lt):
        return left < right
    if isinstance(op, ast.LtE):
        return left <= right
    if isinstance(op, ast.Gt):
        return left > right
    if isinstance(op, ast.GtE):
        return left >= right
    if isinstance(op, ast.Eq):
        return left == right
    return left != right  # ast.NotEq: the checker admitted nothing else


def _eval(node: ast.expr, metrics: Mapping[str, float]) -> float | bool:
    # Only node types admitted by _Checker reach here; anything else is a bug, said loudly.
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return metrics[node.id]
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            return all(_eval(v, metrics) for v in node.values)
        return any(_eval(v, metrics) for v in node.values)
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, metrics)
        if isinstance(node.op, ast.Not):
            return not operand
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.Compare):
        left = _eval(node.left, metrics)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _eval(comparator, metrics)
            if not _compare(op, left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, metrics), _eval(node.right, metrics)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        return left / right
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        args = [_eval(a, metrics) for a in node.args]
        if node.func.id == "abs":
            return abs(args[0])
        if any(_is_nan(a) for a in args):
            return math.nan
        return min(args) if node.func.id == "min" else max(args)
    raise TypeError(f"unchecked node {type(node).__name__} in a target expression")


def _split_metrics(text: str) -> tuple[str, ...]:
    names: list[str] = []
    for raw in text.split(";"):
        name = raw.strip()
        if not name:
            continue
        if len(name) > _METRIC_KEY_MAX or not _METRIC_KEY_RE.fullmatch(name):
            raise AcceptanceError(
                f"metric key {name!r} is not a valid MLflow metric key (letters, digits, "
                f"'_ - . / :' and space, at most {_METRIC_KEY_MAX} characters)")
        if name in names:
            raise AcceptanceError(f"metric {name!r} is listed twice")
        names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class Criterion:
    """One registry row: the metrics a task's runs must log and the condition they must meet.

    ``target_expression`` is parsed on construction (:attr:`expression`); it may
    only name metrics in ``required_metrics``. ``line`` is the registry line it
    came from, when loaded from a file.
    """

    task_id: str
    milestone: str
    required_metrics: tuple[str, ...]
    target_expression: str
    description: str = ""
    line: int | None = None
    expression: TargetExpression = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.task_id, str) or not self.task_id.strip():
            raise AcceptanceError("task_id is empty")
        if not self.required_metrics:
            raise AcceptanceError(f"task {self.task_id!r}: required_metrics is empty")
        expression = parse_expression(self.target_expression)
        unlisted = [n for n in expression.metric_names if n not in self.required_metrics]
        if unlisted:
            raise AcceptanceError(
                f"task {self.task_id!r}: expression {expression.source!r} names "
                f"{', '.join(repr(n) for n in unlisted)}, not listed in required_metrics "
                f"({';'.join(self.required_metrics)})")
        object.__setattr__(self, "expression", expression)


@dataclass(frozen=True)
class Evaluation:
    """The outcome of one run against one criterion.

    ``missing``: required metrics the run lacks (then ``passed`` is false and the
    expression is not evaluated). ``values``: the required metrics the run has, as
    (key, value) pairs in registry order. ``reason``: one readable sentence.
    """

    task_id: str
    passed: bool
    missing: tuple[str, ...]
    values: tuple[tuple[str, float], ...]
    reason: str
    expression: str
    run_id: str | None = None

    @property
    def status(self) -> str:
        """``PASS``, ``FAIL`` or ``MISSING`` (a required metric is absent)."""
        if self.missing:
            return "MISSING"
        return "PASS" if self.passed else "FAIL"


def _fmt_values(pairs: Iterable[tuple[str, object]]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in pairs)


def evaluate(criterion: Criterion, metrics: Mapping[str, float], *, run_id: str | None = None) -> Evaluation:
    """Evaluate one run's metrics (key → latest value) against ``criterion``.

    Never raises for the run's data: missing metrics, non-numeric values,
    division by zero and overflow all become a non-passing :class:`Evaluation`
    with the reason.
    """
    missing = tuple(m for m in criterion.required_metrics if m not in metrics)
    present = tuple((m, metrics[m]) for m in criterion.required_metrics if m in metrics)

    def result(passed: bool, reason: str) -> Evaluation:
        return Evaluation(
            task_id=criterion.task_id, passed=passed, missing=missing, values=present,
            reason=reason, expression=criterion.expression.source, run_id=run_id,
        )

    if missing:
        return result(False, f"missing required metric(s): {', '.join(missing)}")
    bad = [(k, v) for k, v in present
           if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        return result(False, f"non-numeric metric value(s): {_fmt_values(bad)}")
    shown = _fmt_values(present)
    nan_note = ""
    nans = [k for k, v in present if _is_nan(v)]
    if nans:
        nan_note = f"; NaN metric(s): {', '.join(nans)} (comparisons with NaN are false)"
    try:
        passed = criterion.expression.evaluate(metrics)
    except ArithmeticError as exc:
        return result(False, f"cannot evaluate ({type(exc).__name__}: {exc}) with {shown}")
    if passed:
        return result(True, f"holds with {shown}{nan_note}")
    failing = []
    clauses = criterion.expression.clauses()
    if len(clauses) > 1:
        for text, clause in clauses:
            try:
                ok = clause.evaluate(metrics)
            except ArithmeticError:
                ok = False
            if not ok:
                failing.append(text)
    detail = f"; failing: {', '.join(f'[{t}]' for t in failing)}" if failing else ""
    return result(False, f"false with {shown}{detail}{nan_note}")


@dataclass(frozen=True)
class Registry:
    """Acceptance criteria by task id (read-only mapping), and where they were loaded from."""

    criteria: Mapping[str, Criterion] = field(hash=False)
    path: Path | None = None

    def __post_init__(self) -> None:
        by_id: dict[str, Criterion] = {}
        for key, criterion in self.criteria.items():
            if not isinstance(criterion, Criterion) or key != criterion.task_id:
                raise AcceptanceError(f"registry key {key!r} does not match its criterion")
            by_id[key] = criterion
        object.__setattr__(self, "criteria", MappingProxyType(by_id))

    @classmethod
    def from_criteria(cls, criteria: Iterable[Criterion], *, path: Path | None = None) -> Registry:
        """Build a registry; a task id seen twice is an :class:`AcceptanceError`."""
        by_id: dict[str, Criterion] = {}
        for criterion in criteria:
            if criterion.task_id in by_id:
                raise AcceptanceError(f"duplicate task_id {criterion.task_id!r}", path=path,
                                      line=criterion.line, column="task_id")
            by_id[criterion.task_id] = criterion
        return cls(by_id, path)

    def __len__(self) -> int:
        return len(self.criteria)

    def __iter__(self) -> Iterator[Criterion]:
        return iter(self.criteria.values())

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.criteria

    @property
    def task_ids(self) -> tuple[str, ...]:
        """Task ids in registry order."""
        return tuple(self.criteria)

    def criterion(self, task_id: str) -> Criterion:
        """The criterion of ``task_id``; an :class:`AcceptanceError` naming the known ids if none."""
        try:
            return self.criteria[task_id]
        except KeyError:
            known = ", ".join(self.criteria) or "none"
            where = f" in {self.path}" if self.path is not None else ""
            raise AcceptanceError(f"no acceptance criterion for task {task_id!r}{where}; "
                                  f"known tasks: {known}") from None

    def for_milestone(self, milestone: str) -> tuple[Criterion, ...]:
        """Criteria of one milestone (``"M2"``, ``"m2"`` or ``"2"``), in registry order."""
        canonical = normalize_milestone(milestone)
        return tuple(c for c in self.criteria.values() if c.milestone == canonical)

    def evaluate_run(self, task_id: str, metrics: Mapping[str, float], *,
                     run_id: str | None = None) -> Evaluation:
        """Evaluate one run of ``task_id``; an unknown task id is an :class:`AcceptanceError`."""
        return evaluate(self.criterion(task_id), metrics, run_id=run_id)


def load_registry(path: str | Path) -> Registry:
    """Load and check the registry CSV (format in the module docstring).

    Every problem is an :class:`AcceptanceError` naming the file, line and column:
    a missing or unreadable file, a missing or unknown column, a duplicate task
    id, an empty field, an expression that does not parse or is not allowed, or
    an expression naming a metric not in ``required_metrics``.
    """
    path = Path(path)
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            return _read_registry(handle, path)
    except FileNotFoundError:
        raise AcceptanceError("acceptance registry file not found", path=path) from None
    except UnicodeDecodeError as exc:
        raise AcceptanceError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path=path) from None
    except OSError as exc:
        raise AcceptanceError(f"cannot read the acceptance registry: {exc.strerror or exc}",
                              path=path) from None


def _read_registry(handle: Iterable[str], path: Path) -> Registry:
    reader = csv.reader(handle, strict=True)
    criteria: list[Criterion] = []
    first_line: dict[str, int] = {}
    header: list[str] | None = None
    line = 1
    while True:
        line = reader.line_num + 1  # first physical line of the next record
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise AcceptanceError(f"malformed CSV: {exc}", path=path, line=reader.line_num) from None
        if not row or all(not cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            _check_header(header, path, line)
            continue
        if len(row) != len(header):
            raise AcceptanceError(f"expected {len(header)} fields ({','.join(header)}), got {len(row)}",
                                  path=path, line=line)
        fields = dict(zip(header, row, strict=True))
        criterion = _row_to_criterion(fields, path, line)
        if criterion.task_id in first_line:
            raise AcceptanceError(
                f"duplicate task_id {criterion.task_id!r} (first defined on line "
                f"{first_line[criterion.task_id]})", path=path, line=line, column="task_id")
        first_line[criterion.task_id] = line
        criteria.append(criterion)
    if header is None:
        raise AcceptanceError(f"empty file; expected the header {','.join(REGISTRY_COLUMNS)}",
                              path=path, line=1)
    return Registry.from_criteria(criteria, path=path)


def _check_header(header: list[str], path: Path, line: int) -> None:
    for name in REGISTRY_COLUMNS:
        if name not in header:
            raise AcceptanceError(f"missing column (header must name {','.join(REGISTRY_COLUMNS)})",
                                  path=path, line=line, column=name)
    for name in header:
        if name not in REGISTRY_COLUMNS:
            raise AcceptanceError(f"unknown column (allowed: {','.join(REGISTRY_COLUMNS)})",
                                  path=path, line=line, column=name)
        if header.count(name) > 1:
            raise AcceptanceError("column appears twice in the header", path=path, line=line, column=name)


def _row_to_criterion(fields: Mapping[str, str], path: Path, line: int) -> Criterion:
    task_id = fields["task_id"].strip()
    if not task_id:
        raise AcceptanceError("task_id is empty", path=path, line=line, column="task_id")
    milestone_text = fields["milestone"].strip()
    if not milestone_text:
        raise AcceptanceError(f"task {task_id!r}: milestone is empty", path=path, line=line,
                              column="milestone")
    try:
        milestone = normalize_milestone(milestone_text)
    except ValidationError as exc:
        raise AcceptanceError(f"task {task_id!r}: {exc}", path=path, line=line, column="milestone") from None
    try:
        required = _split_metrics(fields["required_metrics"])
    except AcceptanceError as exc:
        raise AcceptanceError(f"task {task_id!r}: {exc.reason}", path=path, line=line,
                              column="required_metrics") from None
    if not required:
        raise AcceptanceError(f"task {task_id!r}: required_metrics is empty", path=path, line=line,
                              column="required_metrics")
    expression = fields["target_expression"].strip()
    if not expression:
        raise AcceptanceError(f"task {task_id!r}: target_expression is empty", path=path, line=line,
                              column="target_expression")
    try:
        return Criterion(
            task_id=task_id, milestone=milestone, required_metrics=required,
            target_expression=expression, description=fields["description"].strip(), line=line,
        )
    except AcceptanceError as exc:
        reason = exc.reason if exc.reason.startswith("task ") else f"task {task_id!r}: {exc.reason}"
        raise AcceptanceError(reason, path=path, line=line, column="target_expression") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def render_report(evaluations: Iterable[Evaluation]) -> str:
    """A plain-text table: task, run, status (PASS/FAIL/MISSING), missing metrics, expression.

    A non-passing row is followed by an indented ``reason:`` line; a summary
    line closes the report.
    """
    items = list(evaluations)
    if not items:
        return "no runs evaluated\n"
    header = ("TASK", "RUN", "STATUS", "MISSING", "EXPRESSION")
    rows = [
        (e.task_id, e.run_id or "-", e.status, ", ".join(e.missing) or "-", _one_line(e.expression))
        for e in items
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(4)]

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]

    lines = [fmt(header)]
    for evaluation, row in zip(items, rows, strict=True):
        lines.append(fmt(row))
        if evaluation.status != "PASS":
            lines.append(f"    reason: {_one_line(evaluation.reason)}")
    counts = {s: sum(1 for e in items if e.status == s) for s in ("PASS", "FAIL", "MISSING")}
    lines.append(f"{len(items)} run(s): {counts['PASS']} passed, {counts['FAIL']} failed, "
                 f"{counts['MISSING']} missing metrics")
    return "\n".join(lines) + "\n"
