"""``ff-ingest`` through a running ``mlflow server`` (``--tracking-uri http://127.0.0.1:PORT``).

The server (session fixture ``mlflow_server``) keeps a SQLite store and serves artifacts
from a local ``--artifacts-destination`` folder, so the tests can look at the files it wrote.
"""

from __future__ import annotations

import json
import time

from tests.conftest import run_ff_ingest
from tests.server import ARTIFACT_PATH, REF_DIGEST, produce, snapshot, wipe_state
from tests.services import free_port

SECRET = "http-secret-0815"  # the test server has no auth and ignores it; it must never be printed


def _server_files(server, run_id: str, experiment_id: str) -> dict[str, bytes]:
    root = server.artifacts / experiment_id / run_id / "artifacts"
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_ingest_over_http_lands_in_the_servers_stores(project, mlflow_server, capsys):
    """Runs, metrics and nesting in the server's store; artifact references and the manifest as
    files in the server's artifact destination; a replay from scratch changes nothing."""
    from mlflow.tracking import MlflowClient

    ids = produce(project, "srv-http")
    capsys.readouterr()
    assert run_ff_ingest(project, "--tracking-uri", mlflow_server.url, "--json") == 0
    summary = json.loads(capsys.readouterr().out)  # stdout is pure JSON (no "View run at" lines)
    assert summary["sink"] == "api" and summary["runs_created"] == 2 and summary["errors"] == 0

    client = MlflowClient(mlflow_server.url)
    first = snapshot(client, ["srv-http"])
    parent, child = first[ids["parent"]], first[ids["child"]]
    assert parent["params"]["solver"] == "fdtd" and len(parent["history"]["residual"]) == 25
    assert parent["latest"]["insertion_loss_db"] == -0.4 and parent["latest"]["nan_metric"] == "NaN"
    assert child["tags"]["mlflow.parentRunId"] == ("parent", ids["parent"])
    assert parent["status"] == child["status"] == "FINISHED"

    exp_id = client.get_experiment_by_name("srv-http").experiment_id
    run = client.search_runs([exp_id], filter_string=f"tags.`ff.run_id` = '{ids['parent']}'")[0]
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied by the server
    files = _server_files(mlflow_server, run.info.run_id, exp_id)
    ref = json.loads(files[f"artifact_refs/{ARTIFACT_PATH}.json"])
    assert REF_DIGEST in json.dumps(ref)
    assert json.loads(files["manifest.json"])["git_sha"] == "0" * 40

    wipe_state(project)
    assert run_ff_ingest(project, "--tracking-uri", mlflow_server.url, "--json") == 0
    assert json.loads(capsys.readouterr().out)["runs_created"] == 0
    assert snapshot(client, ["srv-http"]) == first
    assert _server_files(mlflow_server, run.info.run_id, exp_id) == files


def test_password_in_server_uri_is_never_printed(project, mlflow_server, capsys, caplog, monkeypatch):
    produce(project, "srv-http-secret")
    url = mlflow_server.url.replace("http://", f"http://ff:{SECRET}@")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    capsys.readouterr()
    assert run_ff_ingest(project) == 0
    assert run_ff_ingest(project, "doctor", "--no-write") == 0
    out = capsys.readouterr()
    assert "ff:***@" in out.out and SECRET not in out.out + out.err + caplog.text

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://ff:{SECRET}@127.0.0.1:{free_port()}")
    started = time.monotonic()
    assert run_ff_ingest(project) == 3  # a stopped server: at once, not after MLflow's minutes of retries
    assert time.monotonic() - started < 20
    out = capsys.readouterr()
    assert "unavailable" in out.err and SECRET not in out.out + out.err + caplog.text


def test_doctor_against_a_running_server(project, mlflow_server, capsys):
    """Version check via /version; the dummy run goes through the proxied artifact store and is
    deleted again (soft: the server's own `mlflow gc` removes the row)."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    capsys.readouterr()
    code = run_ff_ingest(project, "doctor", "--tracking-uri", mlflow_server.url, "--json")
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    checks = {c["name"]: c for c in report["checks"]}
    for name in ("config", "mlflow", "store", "schema", "experiments", "artifacts", "storage", "backlog"):
        assert checks[name]["status"] == "OK", checks[name]
    assert checks["journals"]["status"] == "WARN"  # this project has not written a run yet
    assert checks["schema"]["data"]["server_version"] == checks["mlflow"]["data"]["version"]
    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name("ff-doctor")
    assert client.search_runs([exp.experiment_id]) == []
    deleted = client.search_runs([exp.experiment_id], run_view_type=ViewType.DELETED_ONLY)
    assert [r.info.run_id for r in deleted] == [checks["artifacts"]["data"]["run_id"]]
    assert not [p for p in (mlflow_server.artifacts / exp.experiment_id).rglob("*") if p.is_file()]


def test_lock_message_and_state_key_carry_no_password(project, capsys):
    """Another ingester holds the store's lock: exit 5 naming the store with ***. The state
    folder of a URI with a password keeps the port (two servers on one host are two stores)."""
    from formula_foundry.tracking.config import load_config
    from formula_foundry.tracking.ingest.uri import store_key
    from formula_foundry.tracking.ingest.stores.connect import state_dir, store_lock

    url = f"http://ff:{SECRET}@127.0.0.1:{free_port()}"
    cfg = load_config(project / "config" / "mlflow.yaml")
    with store_lock(cfg, url):
        capsys.readouterr()
        assert run_ff_ingest(project, "--tracking-uri", url) == 5
    out = capsys.readouterr()
    assert "ff:***@127.0.0.1" in out.err and SECRET not in out.out + out.err
    assert store_key("http://u:p@host:5000") != store_key("http://u:p@host:5001")
    assert store_key("http://u:p@host:5000") == store_key("http://host:5000")
    assert SECRET not in str(state_dir(cfg, url))
