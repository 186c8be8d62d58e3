"""``ff-ingest`` straight into PostgreSQL (``--sink api --tracking-uri postgresql://...``).

A fresh database per session (``postgres_url``); journals from the real producer; checked
through ``MlflowClient``. Skipped when PostgreSQL is unreachable, unless FF_REQUIRE_POSTGRES=1.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_ff_ingest
from tests.server import ARTIFACT_PATH, REF_DIGEST, produce, snapshot, wipe_state
from tests.services import free_port

pytestmark = pytest.mark.postgres

SECRET = "pg-secret-4711"  # trust auth ignores it; it must never be printed


def _with_password(url: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@", 1)


def test_ingest_into_postgres_then_replay_is_identical(project, postgres_url, capsys, tmp_path):
    """Everything lands (params, history, NaN/-inf, nesting, status, artifact refs); a second
    ingest sends nothing; a replay of every journal from scratch leaves the store identical."""
    from mlflow.tracking import MlflowClient

    ids = produce(project, "srv-pg")
    capsys.readouterr()
    assert run_ff_ingest(project, "--sink", "api", "--tracking-uri", postgres_url, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["runs_created"] == 2 and summary["errors"] == 0

    client = MlflowClient(postgres_url)
    first = snapshot(client, ["srv-pg"])
    parent, child = first[ids["parent"]], first[ids["child"]]
    assert parent["params"] == {"solver": "fdtd", "mesh_cells": "120000"}
    assert [h[0] for h in parent["history"]["residual"]] == list(range(25))
    assert parent["latest"]["nan_metric"] == "NaN"
    assert parent["latest"]["inf_metric"] == -sys.float_info.max  # MLflow's SQL stores clamp ±inf
    assert parent["latest"]["insertion_loss_db"] == -0.4
    assert parent["tags"]["task"] == "M2-sim-insertion-loss" and parent["tags"]["git_sha"] == "0" * 40
    assert child["tags"]["mlflow.parentRunId"] == ("parent", ids["parent"])
    assert parent["status"] == child["status"] == "FINISHED"
    assert {f"artifact_refs/{ARTIFACT_PATH}.json", "manifest.json"} <= set(parent["artifacts"])
    run_id = client.search_runs([client.get_experiment_by_name("srv-pg").experiment_id],
                                filter_string=f"tags.`ff.run_id` = '{ids['parent']}'")[0].info.run_id
    local = client.download_artifacts(run_id, f"artifact_refs/{ARTIFACT_PATH}.json", str(tmp_path))
    ref = json.loads(Path(local).read_text())
    assert REF_DIGEST in json.dumps(ref)

    assert run_ff_ingest(project, "--sink", "api", "--tracking-uri", postgres_url, "--json") == 0
    assert json.loads(capsys.readouterr().out)["records"] == 0
    assert snapshot(client, ["srv-pg"]) == first

    wipe_state(project)  # forget the checkpoints: every record goes to PostgreSQL again
    assert run_ff_ingest(project, "--sink", "api", "--tracking-uri", postgres_url, "--json") == 0
    again = json.loads(capsys.readouterr().out)
    assert again["records"] == summary["records"] and again["runs_created"] == 0
    assert snapshot(client, ["srv-pg"]) == first


def test_password_in_tracking_uri_env_is_never_printed(project, postgres_url, capsys, caplog, monkeypatch):
    """Credentials come from MLFLOW_TRACKING_URI; ingest, doctor and the unreachable case print ***."""
    produce(project, "srv-pg-secret")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _with_password(postgres_url))
    capsys.readouterr()
    assert run_ff_ingest(project, "--sink", "api") == 0
    assert run_ff_ingest(project, "doctor") == 0
    out = capsys.readouterr()
    assert "postgres:***@" in out.out
    assert SECRET not in out.out + out.err + caplog.text

    dead = f"postgresql://postgres:{SECRET}@127.0.0.1:{free_port()}/nothing"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    started = time.monotonic()
    assert run_ff_ingest(project, "--sink", "api") == 3
    assert run_ff_ingest(project, "doctor") == 3
    assert time.monotonic() - started < 30
    out = capsys.readouterr()
    assert "unavailable" in out.err and "connection refused" in out.out
    assert SECRET not in out.out + out.err + caplog.text


def test_doctor_on_postgres_is_healthy_and_leaves_no_dummy_run(project, postgres_url, capsys):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    capsys.readouterr()
    code = run_ff_ingest(project, "doctor", "--tracking-uri", postgres_url, "--json")
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["schema"]["status"] == "OK" and by_name["schema"]["data"]["revision"]
    assert by_name["artifacts"]["status"] == "OK" and "permanently" in by_name["artifacts"]["detail"]
    assert by_name["storage"]["data"]["store_bytes"] > 0
    client = MlflowClient(postgres_url)
    exp = client.get_experiment_by_name("ff-doctor")
    assert client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL) == []
