"""Selective ingest, status and prune (--run-id, --experiment, --since, --until), and the disk budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from formula_foundry.tracking.ingest.select import Selection, parse_time, select
from tests.conftest import mlflow_client, run_ff_ingest
from tests.ingest import ingest, journals_of, tracker


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def runs(project: Path):
    """exp a: r1, r2 (child of r1); exp b: r3."""
    t = tracker(project)
    with t.start_run("r1", experiment_name="a") as r1:
        r1.log_metric("m", 1.0, step=0)
        with t.start_run("r2", experiment_name="a", nested=True) as r2:
            r2.log_metric("m", 2.0, step=0)
    with t.start_run("r3", experiment_name="b") as r3:
        r3.log_metric("m", 3.0, step=0)
    return r1, r2, r3


def ingested_names(project: Path) -> set[str]:
    client = mlflow_client(project)
    return {r.info.run_name for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}


def test_selection_rules():
    """All filters must hold; since <= start < until; a segment is judged by its run's header; no header,
    no match; an empty selection takes everything."""
    start = {"type": "run_start", "run_id": "r", "experiment": "a", "ts": parse_time("2026-12-01T12:00")}
    attach = {"type": "run_attach", "run_id": "r"}
    assert Selection().matches(None)
    assert Selection(experiment="a").matches(start) and not Selection(experiment="b").matches(start)
    assert Selection(since_ms=parse_time("2026-12-01")).matches(start)
    assert not Selection(until_ms=parse_time("2026-12-01T12:00")).matches(start)
    assert Selection(experiment="a").matches(attach, owner=start) and not Selection(experiment="a").matches(attach)
    assert Selection(run_ids=frozenset({"r"})).matches(attach)
    assert not Selection(run_ids=frozenset({"x"})).matches(None)
    assert parse_time("2026-12-01T00:00+01:00") == parse_time("2026-11-30T23:00")
    with pytest.raises(ValueError, match="ISO"):
        parse_time("yesterday")
    assert select([Path("x")], Selection()) == [Path("x")]


def test_ingest_by_run_id_and_experiment_and_time(store_project, capsys):
    """--run-id takes that run only (not its child); --until in the past takes nothing; --experiment takes its
    runs; status and prune select alike; a child ingests after its parent's journal was pruned."""
    r1, r2, r3 = runs(store_project)
    assert ingest(store_project, "--run-id", r1.run_id) == 0
    assert ingested_names(store_project) == {"r1"}
    assert ingest(store_project, "--until", "2000-01-01") == 0
    assert ingested_names(store_project) == {"r1"}
    assert ingest(store_project, "--experiment", "b", "--since", "2000-01-01") == 0
    assert ingested_names(store_project) == {"r1", "r3"}
    capsys.readouterr()
    assert run_ff_ingest(store_project, "status", "--json", "--experiment", "a") == 0
    rows = json.loads(capsys.readouterr().out)["journals"]
    assert {(j["run_id"], j["state"]) for j in rows} == {(r1.run_id, "finished"), (r2.run_id, "pending")}
    # the parent's journal pruned before its child is ingested: the child still finds its parent in the store
    assert run_ff_ingest(store_project, "prune", "--json", "--older-than", "0",
                         "--run-id", r1.run_id) == 0
    assert not r1.journal_path.exists()
    assert ingest(store_project) == 0
    assert ingested_names(store_project) == {"r1", "r2", "r3"}
    client = mlflow_client(store_project)
    by_name = {r.info.run_name: r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}
    assert by_name["r2"].data.tags["mlflow.parentRunId"] == by_name["r1"].info.run_id
    capsys.readouterr()
    assert run_ff_ingest(store_project, "prune", "--json", "--older-than", "0", "--run-id", r3.run_id) == 0
    out = json.loads(capsys.readouterr().out)
    assert [t["path"] for t in out["taken"]] == [str(r3.journal_path)] and out["kept"] == []
    assert journals_of(store_project) == [r2.journal_path]
    assert ingest(store_project, "--since", "tomorrow") == 2


def test_status_shows_disk_and_doctor_warns_above_the_budget(store_project, capsys):
    """status: journal bytes on disk and what a default prune would free (nothing: all are fresh);
    doctor's backlog check warns above ingest.journal_budget and not without one."""
    runs(store_project)
    assert ingest(store_project) == 0
    total = sum(p.stat().st_size for p in journals_of(store_project))
    capsys.readouterr()
    assert run_ff_ingest(store_project, "status", "--json") == 0
    disk = json.loads(capsys.readouterr().out)["disk"]
    assert disk["journal_bytes"] == total and disk["prunable_bytes"] == 0
    assert run_ff_ingest(store_project, "status") == 0
    assert "would free 0 B" in capsys.readouterr().out

    def backlog() -> dict:
        capsys.readouterr()
        run_ff_ingest(store_project, "doctor", "--json", "--no-write")
        return {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}["backlog"]

    check = backlog()
    assert check["status"] == "OK" and check["data"]["journal_bytes"] == total
    cfg_file = store_project / "config" / "mlflow.yaml"
    data = yaml.safe_load(cfg_file.read_text())
    data["ingest"]["journal_budget"] = 100
    cfg_file.write_text(yaml.safe_dump(data))
    check = backlog()
    assert check["status"] == "WARN" and "ingest.journal_budget" in check["detail"] and "prune" in check["detail"]
