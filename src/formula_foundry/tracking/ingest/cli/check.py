"""``ff-ingest check``: evaluate MLflow runs against the acceptance criteria registry (seed 003).

Usage::

    ff-ingest check --run MLFLOW_RUN_ID            # one run, against the criterion of its `task` tag
    ff-ingest check --task M2-sim-insertion-loss   # every run tagged task=M2-sim-insertion-loss
    ff-ingest check                                # every run tagged with any task of the registry
    ff-ingest check --task T --latest --json       # only the newest run per task; JSON report

Seed 003 asks every run to "log tag ``task:<task_id>``": the tag *key* is
``task``, its *value* the task id (see :mod:`formula_foundry.tracking.conventions`).
The registry is ``config/acceptance_criteria_registry.csv`` under the project
root, or ``--registry PATH``; it is parsed and evaluated by the pure
:mod:`formula_foundry.acceptance` package (an allow-listed expression
grammar, never ``eval``). A run's metric values are MLflow's latest values
(the highest step, then the newest timestamp), as ``MlflowClient.get_run``
reports them. Runs are searched among active (not deleted) runs of every
active experiment, or of the ``--experiment`` ones.

Per run: ``PASS``, ``FAIL`` (the expression is false; the failing ``and``
clauses are named) or ``MISSING`` (a required metric was never logged).

Exit codes:

===  ===========================================================================
0    every evaluated run passes
1    a run fails or misses a metric; ``--run`` names a run that does not exist or
     has no ``task`` tag; ``--task`` matches no run
2    the registry is invalid (file, line and column named), or has no criterion
     for a task that was asked for (``--task``, or a run's ``task`` tag)
3    the tracking store is unreachable
===  ===========================================================================
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from formula_foundry.errors import AcceptanceError, StoreUnavailableError
from formula_foundry.acceptance import DEFAULT_REGISTRY_RELPATH, Evaluation, Registry, load_registry
from formula_foundry.tracking.config import sqlite_path_of
from formula_foundry.tracking.ingest.cli.common import common, load, require_mlflow, setup_logging
from formula_foundry.tracking.ingest.store_errors import store_errors
from formula_foundry.tracking.ingest.uri import redact

__all__ = ["TASK_TAG", "CheckReport", "check_command", "render_evaluations", "run_check"]

#: The run tag whose value is the task id (seed 003: "tag task:<task_id>").
TASK_TAG = "task"
EXIT_OK, EXIT_FAILED, EXIT_REGISTRY = 0, 1, 2
_PAGE = 1000


@dataclass
class RunResult:
    evaluation: Evaluation
    run_name: str | None
    experiment_id: str
    status: str  # the MLflow run status (FINISHED, RUNNING, ...)


@dataclass
class CheckReport:
    store: str
    registry: Path
    results: list[RunResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # runs/tasks that could not be evaluated
    tasks_without_runs: list[str] = field(default_factory=list)  # informational (no --task given)

    @property
    def exit_code(self) -> int:
        if self.problems or any(r.evaluation.status != "PASS" for r in self.results):
            return EXIT_FAILED
        return EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        counts = {s: sum(r.evaluation.status == s for r in self.results) for s in ("PASS", "FAIL", "MISSING")}
        return {
            "store": self.store, "registry": str(self.registry), "exit_code": self.exit_code,
            "passed": counts["PASS"], "failed": counts["FAIL"], "missing": counts["MISSING"],
            "problems": self.problems, "tasks_without_runs": self.tasks_without_runs,
            "runs": [{
                "task_id": r.evaluation.task_id, "run_id": r.evaluation.run_id, "run_name": r.run_name,
                "experiment_id": r.experiment_id, "run_status": r.status, "status": r.evaluation.status,
                "passed": r.evaluation.passed, "missing": list(r.evaluation.missing),
                "values": {k: _json_number(v) for k, v in r.evaluation.values},
                "expression": r.evaluation.expression, "reason": r.evaluation.reason,
            } for r in self.results],
        }

    def render(self) -> str:
        text = render_evaluations(r.evaluation for r in self.results) if self.results else ""
        lines = [f"error: {problem}" for problem in self.problems]
        if self.tasks_without_runs:
            lines.append(f"not checked (no runs tagged {TASK_TAG}=<id>): {', '.join(self.tasks_without_runs)}")
        if not self.results and not lines:
            lines.append("no runs evaluated")
        return text + "".join(f"{line}\n" for line in lines)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def render_evaluations(evaluations: Iterable[Evaluation]) -> str:
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


def _json_number(value: Any) -> Any:
    """JSON has no NaN/Infinity: such values are written as the strings "NaN", "Infinity", "-Infinity"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _quote(value: str) -> str:
    """A string literal for MLflow's search filter (which has no escapes: pick the quote that is absent)."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise AcceptanceError(f"task id {value!r} contains both quote characters; it cannot be searched for")


def _open_client(cfg, uri: str):
    from mlflow.tracking import MlflowClient

    from formula_foundry.tracking.ingest.stores.mlflow_api import probe_store, quiet_mlflow_logs

    quiet_mlflow_logs()
    db = sqlite_path_of(uri)
    if db is not None and not db.exists():
        raise StoreUnavailableError(f"no MLflow store at {db} yet (nothing has been ingested)")
    if db is None:
        probe_store(uri)
    with store_errors("open the store", uri):
        return MlflowClient(tracking_uri=uri)


def _experiment_ids(client, names: tuple[str, ...]) -> list[str]:
    from mlflow.entities import ViewType

    if names:
        ids = []
        for name in names:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise click.UsageError(f"no experiment named {name!r}")
            ids.append(exp.experiment_id)
        return ids
    ids, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=_PAGE, page_token=token)
        ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            return ids


def _runs_of_task(client, experiment_ids: list[str], task_id: str) -> list:
    from mlflow.entities import ViewType

    if not experiment_ids:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=f"tags.{TASK_TAG} = {_quote(task_id)}",
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=_PAGE,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _evaluate(registry: Registry, task_id: str, run) -> RunResult:
    evaluation = registry.evaluate_run(task_id, dict(run.data.metrics), run_id=run.info.run_id)
    return RunResult(evaluation, run.info.run_name, run.info.experiment_id, run.info.status)


def run_check(client, registry: Registry, *, store: str, tasks: tuple[str, ...] = (),
              run_ids: tuple[str, ...] = (), experiments: tuple[str, ...] = (),
              latest: bool = False) -> CheckReport:
    """Evaluate runs (see the module docstring); an unknown task id raises :class:`AcceptanceError`."""
    from mlflow.exceptions import MlflowException

    report = CheckReport(store=store, registry=registry.path or Path("-"))
    for task in tasks:
        registry.criterion(task)  # unknown task: AcceptanceError (exit 2) before any store call
    if len(tasks) > 1 and run_ids:
        raise click.UsageError("with --run, give at most one --task (the criterion to apply)")

    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                report.problems.append(f"run {run_id} does not exist in {store}")
                continue
            raise
        task = tasks[0] if tasks else run.data.tags.get(TASK_TAG)
        if not task:
            report.problems.append(f"run {run_id} has no {TASK_TAG!r} tag; name its task with --task")
            continue
        report.results.append(_evaluate(registry, task, run))
    if run_ids:
        return report

    experiment_ids = _experiment_ids(client, experiments)
    for task in tasks or registry.task_ids:
        runs = _runs_of_task(client, experiment_ids, task)
        if latest and runs:
            runs = runs[-1:]
        if not runs:
            if tasks:
                report.problems.append(f"no runs tagged {TASK_TAG}={task} in {store}")
            else:
                report.tasks_without_runs.append(task)
            continue
        report.results.extend(_evaluate(registry, task, run) for run in runs)
    return report


@click.command(name="check")
@common
@click.option("--task", "tasks", multiple=True, metavar="TASK_ID",
              help="Evaluate the runs tagged task=TASK_ID (repeatable). With --run: the criterion to apply.")
@click.option("--run", "run_ids", multiple=True, metavar="MLFLOW_RUN_ID",
              help="Evaluate this MLflow run against the criterion of its `task` tag (repeatable).")
@click.option("--registry", "registry_path", type=click.Path(dir_okay=False), default=None,
              help=f"Acceptance registry CSV (default: <project root>/{DEFAULT_REGISTRY_RELPATH}).")
@click.option("--experiment", "experiments", multiple=True, metavar="NAME",
              help="Search only these experiments (repeatable; default: every active experiment).")
@click.option("--latest", is_flag=True, help="Only the newest run of each task.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def check_command(config_path, tracking_uri, roots, log_level, tasks, run_ids, registry_path, experiments,
                  latest, as_json):
    """Check runs against the acceptance criteria registry: PASS, FAIL or MISSING per run.

    Exit codes: 0 all pass, 1 a failure or missing metric (or no such run), 2 registry error,
    3 store unreachable.
    """
    setup_logging(log_level)
    cfg = load(config_path, roots, tracking_uri)
    path = Path(registry_path).resolve() if registry_path else cfg.project_root / DEFAULT_REGISTRY_RELPATH
    uri = tracking_uri or cfg.tracking.backend_store_uri
    try:
        registry = load_registry(path)
        for task in tasks:
            registry.criterion(task)
        require_mlflow()
        client = _open_client(cfg, uri)
        with store_errors("read runs", uri):  # MLflow/network errors: unavailable (3) or rejected (1)
            report = run_check(client, registry, store=redact(uri), tasks=tasks, run_ids=run_ids,
                               experiments=experiments, latest=latest)
    except AcceptanceError as exc:
        click.echo(f"acceptance registry error: {exc}", err=True)
        return EXIT_REGISTRY
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(report.render(), nl=False)
    sys.stdout.flush()
    return report.exit_code
