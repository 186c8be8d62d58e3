"""The acceptance criteria registry: its CSV file, its criteria, and judging a run against one.

Seed 003: "Ensure each run logs tag ``task:<task_id>`` and metrics listed in
``acceptance_criteria_registry.csv``". This module loads that registry and
evaluates a run's metrics (a plain mapping, key → latest value) against the
criterion of the run's task. It never imports MLflow: ``ff-ingest check``
fetches the runs and renders the report.

Registry file (``config/acceptance_criteria_registry.csv``)
-----------------------------------------------------------
UTF-8 CSV (a BOM is accepted), a header row with exactly these columns, in any
order, then one row per task::

    task_id,milestone,required_metrics,target_expression,description
    M2-sim-insertion-loss,M2,insertion_loss_db,insertion_loss_db > -1.0,Loss of the via transition

- ``task_id``: unique, non-empty; matched against a run's ``task`` tag.
- ``milestone``: ``M1`` ... ``M6`` (``m2`` and ``2`` are accepted and normalized).
- ``required_metrics``: metric keys separated by ``;``, each a valid MLflow
  metric key (:func:`formula_foundry.tracking.validation.check_key`). A run
  missing any of them is reported as MISSING, whatever the expression says.
- ``target_expression``: a condition over the required metrics, in the language
  of :mod:`formula_foundry.acceptance.expression`. It may only name metrics
  listed in ``required_metrics``.
- ``description``: free text.

Blank lines are skipped. Every error is an :class:`AcceptanceError` naming the
file, the line (1-based, the header is line 1) and the CSV column.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from formula_foundry.acceptance.expression import TargetExpression, parse_expression
from formula_foundry.errors import AcceptanceError, ValidationError
from formula_foundry.tracking.conventions import normalize_milestone
from formula_foundry.tracking.validation import check_key

__all__ = [
    "DEFAULT_REGISTRY_RELPATH",
    "REGISTRY_COLUMNS",
    "Criterion",
    "Evaluation",
    "Registry",
    "evaluate",
    "load_registry",
]

#: Where the registry lives, relative to the project root.
DEFAULT_REGISTRY_RELPATH = Path("config") / "acceptance_criteria_registry.csv"

#: The registry's columns, all required, no others allowed.
REGISTRY_COLUMNS: tuple[str, ...] = (
    "task_id", "milestone", "required_metrics", "target_expression", "description",
)


def _split_metrics(text: str) -> tuple[str, ...]:
    names: list[str] = []
    for raw in text.split(";"):
        name = raw.strip()
        if not name:
            continue
        try:
            check_key(name, "metric")
        except ValidationError as exc:
            raise AcceptanceError(f"{exc} (not a valid MLflow metric key)") from None
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
    with the reason; the reason names NaN metrics (comparisons with NaN are false).
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
    nans = [k for k, v in present if isinstance(v, float) and math.isnan(v)]
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


KNOWN_SHOWN = 10  # task ids named in "no criterion" errors (a registry can hold many thousands)


@dataclass(frozen=True)
class Registry:
    """Acceptance criteria by task id (read-only mapping), and where they were loaded from.

    Build one with :meth:`from_criteria` (or :func:`load_registry`), the one
    place that rejects a task id defined twice.
    """

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
        """Build a registry; a task id seen twice is an :class:`AcceptanceError`.

        ``criteria`` is consumed in order, so with a lazy iterable (as
        :func:`load_registry` passes) the first problem in the file is the one reported.
        """
        by_id: dict[str, Criterion] = {}
        for criterion in criteria:
            first = by_id.get(criterion.task_id)
            if first is not None:
                where = f" (first defined on line {first.line})" if first.line is not None else ""
                raise AcceptanceError(f"duplicate task_id {criterion.task_id!r}{where}", path=path,
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
            known = ", ".join(list(self.criteria)[:KNOWN_SHOWN]) or "none"
            if len(self.criteria) > KNOWN_SHOWN:
                known += f", ... ({len(self.criteria)} in all)"
            where = f" in {self.path}" if self.path is not None else ""
            raise AcceptanceError(f"no acceptance criterion for task {task_id!r}{where}; "
                                  f"known tasks: {known}") from None

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
            return Registry.from_criteria(_read_criteria(handle, path), path=path)
    except FileNotFoundError:
        raise AcceptanceError("acceptance registry file not found", path=path) from None
    except UnicodeDecodeError as exc:
        raise AcceptanceError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path=path) from None
    except OSError as exc:
        raise AcceptanceError(f"cannot read the acceptance registry: {exc.strerror or exc}",
                              path=path) from None


def _read_criteria(handle: Iterable[str], path: Path) -> Iterator[Criterion]:
    """The rows as criteria, lazily, in file order (duplicates are :meth:`Registry.from_criteria`'s)."""
    reader = csv.reader(handle, strict=True)
    header: list[str] | None = None
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
        yield _row_to_criterion(dict(zip(header, row, strict=True)), path, line)
    if header is None:
        raise AcceptanceError(f"empty file; expected the header {','.join(REGISTRY_COLUMNS)}",
                              path=path, line=1)


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
