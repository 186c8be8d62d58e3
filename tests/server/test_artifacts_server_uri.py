"""``tracking.artifacts_server_uri``: an ingester writing the database of an ``mlflow server`` directly
(topology C) uploads the files of runs in experiments the server created (artifact location
``mlflow-artifacts:/<id>``, proxied artifacts) through that server.

Against a real ``mlflow server`` over SQLite with a local ``--artifacts-destination`` (the session's
``mlflow_server``), ``ff-ingest --tracking-uri sqlite:///<its database>`` as a subprocess: without the
key the journal waits with an error that says what to set (exit 1); with ``FF_ARTIFACTS_SERVER_URI``
the same journal goes on from its checkpoint and every file reaches the server byte-exact.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.ingest import child_env

EXIT_JOURNAL_ERRORS = 1  # formula_foundry.tracking.ingest.cli.app (docs/troubleshooting.md)


def _ff_ingest(project: Path, tracking_uri: str, **env: str) -> tuple[int, dict]:
    """``ff-ingest --json --tracking-uri URI`` as a subprocess (default sink: bulk on SQLite); (exit code, summary)."""
    environment = child_env(**env)
    if "FF_ARTIFACTS_SERVER_URI" not in env:
        environment.pop("FF_ARTIFACTS_SERVER_URI", None)
    done = subprocess.run([sys.executable, "-m", "formula_foundry.tracking.ingest.cli", "--json", "--tracking-uri",
                           tracking_uri, "--config", str(project / "config" / "mlflow.yaml")],
                          env=environment, capture_output=True, text=True, timeout=120)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_sql_direct_ingest_uploads_through_the_server_of_a_server_made_experiment(project, mlflow_server,
                                                                                  tmp_path):
    from mlflow.tracking import MlflowClient

    from formula_foundry.tracking import get_tracker

    server = MlflowClient(mlflow_server.url)
    name = f"server-made-{uuid.uuid4().hex[:8]}"
    exp_id = server.create_experiment(name)  # over HTTP: the server picks the location
    assert server.get_experiment(exp_id).artifact_location == f"mlflow-artifacts:/{exp_id}"

    data = bytes(range(256)) * 300 + b"tail"
    source = tmp_path / "s21.bin"
    source.write_bytes(data)
    with get_tracker(project / "config" / "mlflow.yaml").start_run("proxied", experiment_name=name) as run:
        run.log_metric("loss", 0.25)
        run.log_artifact(source, "sweeps")
        for i in range(8):  # one batch of uploads: the first alone, the others on the upload threads
            part = tmp_path / "parts" / f"p{i}.csv"
            part.parent.mkdir(exist_ok=True)
            part.write_text(f"{i},{i * i}\n")
            run.log_artifact(part, "parts")
        run.log_text("résumé: ok\n", "notes/summary.txt")
        run.log_manifest({"git_sha": "0" * 40, "design_doc_sha256": "1" * 64,
                          "environment_fingerprint": "env-1", "determinism_mode": "strict"})
    expected = {"sweeps/s21.bin": data, "notes/summary.txt": "résumé: ok\n".encode(),
                **{f"parts/p{i}.csv": f"{i},{i * i}\n".encode() for i in range(8)}}
    store = f"sqlite:///{mlflow_server.backend}"

    code, summary = _ff_ingest(project, store)
    assert code == EXIT_JOURNAL_ERRORS, summary
    (detail,) = summary["details"]
    assert detail["state"] == "error", detail
    (mlflow_run,) = server.search_runs([exp_id], filter_string=f"tags.`ff.run_id` = '{run.run_id}'")
    location = f"mlflow-artifacts:/{exp_id}/{mlflow_run.info.run_id}/artifacts"
    assert mlflow_run.info.artifact_uri == location
    (error,) = detail["errors"]
    assert (f"MLflow run {mlflow_run.info.run_id}'s artifact location is {location}, served by an MLflow server"
            in error), error
    assert "set tracking.artifacts_server_uri (FF_ARTIFACTS_SERVER_URI) to that server's http URL" in error
    assert "Perhaps you forgot" not in error
    on_server = Path(mlflow_server.artifacts) / exp_id / mlflow_run.info.run_id / "artifacts"
    assert not on_server.exists()  # the refused pass sent no file

    code, summary = _ff_ingest(project, store, FF_ARTIFACTS_SERVER_URI=mlflow_server.url)
    assert code == 0, summary
    assert summary["details"][0]["state"] == "ingested", summary

    downloaded = Path(server.download_artifacts(mlflow_run.info.run_id, "", str(tmp_path / "dl")))
    files = _files(downloaded)
    manifest = json.loads(files.pop("manifest.json"))  # write_artifacts' path (as artifact_ref documents, console)
    assert files == expected and manifest["git_sha"] == "0" * 40
    assert _files(on_server) == _files(downloaded)  # the server's destination holds what it serves
    stored = server.get_run(mlflow_run.info.run_id)
    assert stored.data.metrics["loss"] == 0.25 and stored.info.status == "FINISHED"


@pytest.mark.parametrize(("file_value", "env_value"), [
    ("s3://bucket/mlflow", None),
    ("mlflow:5000", None),
    ("http://", None),
    ("", "ftp://mlflow:5000"),
])
def test_a_non_http_artifacts_server_uri_is_refused_naming_the_key(tmp_path, file_value, env_value):
    from formula_foundry.errors import ConfigError
    from formula_foundry.tracking import load_config

    cfg = tmp_path / "config" / "mlflow.yaml"
    cfg.parent.mkdir()
    cfg.write_text(f"tracking:\n  artifacts_server_uri: {json.dumps(file_value)}\n")
    env = {} if env_value is None else {"FF_ARTIFACTS_SERVER_URI": env_value}
    with pytest.raises(ConfigError) as err:
        load_config(cfg, env=env)
    message = str(err.value)
    assert "key 'tracking.artifacts_server_uri': must be the http:// or https:// URL of an MLflow server" in message
    assert message.endswith(" (from $FF_ARTIFACTS_SERVER_URI)") == (env_value is not None)


def test_artifacts_server_uri_is_read_from_the_file_and_the_environment(tmp_path):
    from formula_foundry.tracking import load_config

    cfg = tmp_path / "config" / "mlflow.yaml"
    cfg.parent.mkdir()
    cfg.write_text("tracking:\n  backend_store_uri: sqlite:///m.db\n")
    assert load_config(cfg, env={}).tracking.artifacts_server_uri == ""  # default: none
    assert load_config(cfg, env={"FF_ARTIFACTS_SERVER_URI": ""}).tracking.artifacts_server_uri == ""
    cfg.write_text("tracking:\n  artifacts_server_uri: https://mlflow.example.org:8443/\n")
    assert load_config(cfg, env={}).tracking.artifacts_server_uri == "https://mlflow.example.org:8443"
    env = {"FF_ARTIFACTS_SERVER_URI": "http://mlflow:5000"}
    assert load_config(cfg, env=env).tracking.artifacts_server_uri == "http://mlflow:5000"
