"""Artifact references in an S3-compatible store (moto's standalone server on 127.0.0.1).

Two ways a team gets there: through an ``mlflow server`` whose ``--artifacts-destination``
is ``s3://...`` (clients need no S3 credentials: the server proxies), and with a SQL store
written directly plus ``FF_ARTIFACT_ROOT=s3://...`` (the ingester uploads itself, with the
``MLFLOW_S3_ENDPOINT_URL`` / ``AWS_*`` environment).
"""

from __future__ import annotations

import json

from tests.conftest import run_ff_ingest
from tests.server import ARTIFACT_PATH, REF_DIGEST, produce


def test_ingest_through_a_server_with_s3_artifacts(project, s3_mlflow_server, moto_s3, capsys):
    from mlflow.tracking import MlflowClient

    ids = produce(project, "srv-s3")
    assert run_ff_ingest(project, "-q", "--tracking-uri", s3_mlflow_server.url) == 0

    client = MlflowClient(s3_mlflow_server.url)
    exp_id = client.get_experiment_by_name("srv-s3").experiment_id
    run = client.search_runs([exp_id], filter_string=f"tags.`ff.run_id` = '{ids['parent']}'")[0]
    prefix = f"mlflow/{exp_id}/{run.info.run_id}/artifacts/"
    keys = set(moto_s3.keys(prefix))
    assert {f"{prefix}artifact_refs/{ARTIFACT_PATH}.json", f"{prefix}manifest.json"} <= keys, keys
    body = moto_s3.client().get_object(Bucket=moto_s3.bucket, Key=f"{prefix}artifact_refs/{ARTIFACT_PATH}.json")
    assert REF_DIGEST in json.dumps(json.loads(body["Body"].read()))


def test_direct_sql_store_with_an_s3_artifact_root(store_project, s3_client_env, monkeypatch, capsys):
    """SQLite store written directly; ``FF_ARTIFACT_ROOT=s3://bucket/direct``: the ingester uploads.
    The doctor then writes, reads back and deletes its dummy artifact in the same bucket."""
    from mlflow.tracking import MlflowClient

    s3 = s3_client_env
    monkeypatch.setenv("FF_ARTIFACT_ROOT", f"s3://{s3.bucket}/direct")
    ids = produce(store_project, "srv-s3-direct")
    assert run_ff_ingest(store_project, "-q", "--sink", "api") == 0

    client = MlflowClient(f"sqlite:///{store_project / 'data' / 'mlflow' / 'mlruns.db'}")
    exp = client.get_experiment_by_name("srv-s3-direct")
    assert exp.artifact_location == f"s3://{s3.bucket}/direct/srv-s3-direct"
    run = client.search_runs([exp.experiment_id], filter_string=f"tags.`ff.run_id` = '{ids['parent']}'")[0]
    prefix = f"direct/srv-s3-direct/{run.info.run_id}/artifacts/"
    keys = set(s3.keys(prefix))
    assert {f"{prefix}artifact_refs/{ARTIFACT_PATH}.json", f"{prefix}manifest.json"} <= keys, keys

    capsys.readouterr()
    code = run_ff_ingest(store_project, "doctor", "--json")
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["artifacts"]["status"] == "OK", checks["artifacts"]
    assert checks["artifacts"]["data"]["artifact_uri"].startswith(f"s3://{s3.bucket}/direct/ff-doctor/")
    assert "remote (not measured)" in checks["storage"]["detail"]
    assert s3.keys("direct/ff-doctor/") == []  # the dummy artifact was deleted again
