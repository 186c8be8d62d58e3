"""``ff-ingest check``: runs written by the real tracker, ingested into SQLite, judged against
``config/acceptance_criteria_registry.csv`` (and against broken and malicious registries)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, run_ff_ingest
from tests.server import tracker

REGISTRY = REPO / "config" / "acceptance_criteria_registry.csv"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, template_store) -> tuple[Path, dict[str, str]]:
    """A project with six ingested runs; returns (project, name -> MLflow run id)."""
    from tests.conftest import mlflow_client

    project = tmp_path_factory.mktemp("check") / "proj"
    (project / "config").mkdir(parents=True)
    shutil.copy(REPO / "config" / "mlflow.yaml", project / "config")
    shutil.copy(REGISTRY, project / "config")
    (project / "data" / "mlflow").mkdir(parents=True)
    shutil.copy(template_store, project / "data" / "mlflow" / "mlruns.db")

    t = tracker(project)
    plan = {
        "pass": ("M2-sim-insertion-loss", {"insertion_loss_db": -0.5}),
        "fail": ("M2-sim-insertion-loss", {"insertion_loss_db": -2.0}),
        "missing": ("M1-coupon-build", {"build_time_seconds": 12.0}),
        "slow": ("M2-sim-return-loss", {"return_loss_db": -12.0, "sim_time_seconds": 7200.0}),
        "untagged": (None, {"insertion_loss_db": -0.1}),
    }
    producer_ids = {}
    for name, (task, metrics) in plan.items():
        with t.start_run(name, experiment_name="ff-m2-simulation",
                         tags={"task": task} if task else None) as run:
            for step, scale in enumerate((2.0, 1.0)):  # the latest (highest step) value counts
                run.log_metrics({k: v * scale for k, v in metrics.items()}, step=step)
        producer_ids[name] = run.run_id
    assert run_ff_ingest(project, "-q", "--sink", "api") == 0
    client = mlflow_client(project)
    exp = client.get_experiment_by_name("ff-m2-simulation")
    ids = {name: client.search_runs([exp.experiment_id], filter_string=f"tags.`ff.run_id` = '{pid}'")[0]
           .info.run_id for name, pid in producer_ids.items()}
    return project, ids


def _check(project: Path, capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run_ff_ingest(project, "check", *args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_passing_run_exits_0(runs, capsys):
    project, ids = runs
    code, out, _ = _check(project, capsys, "--run", ids["pass"])
    assert code == 0, out
    assert f"M2-sim-insertion-loss  {ids['pass']}  PASS" in out
    assert "1 run(s): 1 passed, 0 failed, 0 missing metrics" in out


def test_failing_run_exits_1_with_the_values(runs, capsys):
    project, ids = runs
    code, out, _ = _check(project, capsys, "--run", ids["fail"])
    assert code == 1 and "FAIL" in out
    assert "reason: false with insertion_loss_db=-2.0" in out


def test_failing_clause_is_named(runs, capsys):
    project, _ = runs
    code, out, _ = _check(project, capsys, "--task", "M2-sim-return-loss")
    assert code == 1
    assert "failing: [sim_time_seconds <= 3600]" in out and "[return_loss_db" not in out


def test_missing_metric_is_reported(runs, capsys):
    project, ids = runs
    code, out, _ = _check(project, capsys, "--task", "M1-coupon-build", "--json")
    report = json.loads(out)
    assert code == 1 and report["missing"] == 1
    (row,) = report["runs"]
    assert row["run_id"] == ids["missing"] and row["status"] == "MISSING"
    assert row["missing"] == ["constraint_violations"] and row["values"] == {"build_time_seconds": 12.0}


def test_all_runs_of_a_task_and_latest(runs, capsys):
    project, ids = runs
    code, out, _ = _check(project, capsys, "--task", "M2-sim-insertion-loss", "--json")
    report = json.loads(out)
    assert code == 1 and (report["passed"], report["failed"]) == (1, 1)
    assert [r["run_id"] for r in report["runs"]] == [ids["pass"], ids["fail"]]  # oldest first
    code, out, _ = _check(project, capsys, "--task", "M2-sim-insertion-loss", "--latest", "--json")
    assert code == 1 and [r["run_id"] for r in json.loads(out)["runs"]] == [ids["fail"]]


def test_every_task_without_arguments(runs, capsys):
    project, _ = runs
    code, out, _ = _check(project, capsys)
    assert code == 1
    assert "4 run(s): 1 passed, 2 failed, 1 missing metrics" in out
    assert "not checked (no runs tagged task=<id>): M4-macromodel-fit" in out


def test_run_without_task_tag(runs, capsys):
    project, ids = runs
    code, _, _ = _check(project, capsys, "--run", ids["untagged"])
    assert code == 1
    code, out, _ = _check(project, capsys, "--run", ids["untagged"], "--task", "M2-sim-insertion-loss")
    assert code == 0 and "PASS" in out  # --task names the criterion to apply


def test_problems_exit_1(runs, capsys):
    project, _ = runs
    code, out, _ = _check(project, capsys, "--run", "0" * 32)
    assert code == 1 and f"error: run {'0' * 32} does not exist" in out
    code, out, _ = _check(project, capsys, "--run", runs[1]["untagged"])
    assert "has no 'task' tag; name its task with --task" in out
    code, out, _ = _check(project, capsys, "--task", "M4-macromodel-fit")
    assert code == 1 and "error: no runs tagged task=M4-macromodel-fit" in out


def test_unknown_task_exits_2(runs, capsys):
    project, _ = runs
    code, out, err = _check(project, capsys, "--task", "M9-nope")
    assert code == 2 and out == ""
    assert "no acceptance criterion for task 'M9-nope'" in err and "M2-sim-insertion-loss" in err


def _registry(tmp_path: Path, expression: str) -> Path:
    path = tmp_path / "registry.csv"
    path.write_text("task_id,milestone,required_metrics,target_expression,description\n"
                    f'M2-sim-insertion-loss,M2,insertion_loss_db,"{expression}",evil\n')
    return path


@pytest.mark.parametrize("expression, message", [
    ("__import__('os').system('touch {marker}') or insertion_loss_db > 0", "is not allowed"),
    ("insertion_loss_db.__class__.__bases__ and insertion_loss_db > 0", "attribute access ('.') is not allowed"),
    ("insertion_loss_db >", "does not parse"),
    ("insertion_loss_db ** 99999999 > 0", "operator '**' is not allowed"),
])
def test_malicious_or_malformed_expression_exits_2(runs, capsys, tmp_path, expression, message):
    """The registry is rejected before any evaluation: nothing runs, the error names file, line, column."""
    project, ids = runs
    marker = tmp_path / "pwned"
    path = _registry(tmp_path, expression.format(marker=marker))
    code, out, err = _check(project, capsys, "--registry", str(path), "--run", ids["pass"])
    assert code == 2 and out == ""
    assert err.startswith(f"acceptance registry error: {path}:2: column 'target_expression': ")
    assert message in err
    assert not marker.exists()


def test_missing_registry_exits_2(runs, capsys, tmp_path):
    project, _ = runs
    code, _, err = _check(project, capsys, "--registry", str(tmp_path / "nope.csv"))
    assert code == 2 and "acceptance registry file not found" in err
