"""Real artifacts (issue 15) uploaded through MLflow's remote repositories: an ``mlflow server``
with proxied artifacts (local destination), the same with an S3 destination (moto), and a SQL
store written directly with an ``s3://`` artifact root (the ingester talks to S3 itself, here
through the bulk sink). Each: a byte-exact round trip of nested, empty and multi-MiB files, and
an ingest from scratch again (checkpoints forgotten) that leaves the same bytes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests.conftest import run_ff_ingest
from tests.ingest.test_artifacts_ingest import blob_store, log_blob, write
from tests.ingest import tracker
from tests.server import wipe_state

MIB = 1 << 20


def _produce(project: Path, tmp: Path, experiment: str) -> tuple[str, dict[str, bytes]]:
    """One run with 24 files: nested, an empty one, a 6 MiB one (S3: a multipart upload); returns
    (producer run id, artifact path -> bytes)."""
    rng = random.Random(experiment)
    files = {f"tables/part{i % 3}/t{i:02d}.csv": rng.randbytes(rng.randint(1, 5000)) for i in range(20)}
    files.update({"empty.txt": b"", "figs/s21.png": rng.randbytes(70_000), "logs/solver.log": rng.randbytes(6 * MIB),
                  "notes.md": b"# notes\n"})
    store = blob_store(project)
    with tracker(project).start_run("uploads", experiment_name=experiment) as run:
        run.log_param("files", len(files))
        for i, (path, data) in enumerate(files.items()):
            folder, _, name = path.rpartition("/")
            log_blob(run, store, write(tmp / str(i), name, data), folder or None)
    return run.run_id, files


def _ingest(project: Path, capsys, *args: str) -> dict:
    capsys.readouterr()
    code = run_ff_ingest(project, "--json", *args)
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary
    return summary


def _mlflow_run(client, experiment: str, run_id: str):
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    (run,) = client.search_runs([exp_id], filter_string=f"tags.`ff.run_id` = '{run_id}'")
    return exp_id, run


def _downloaded(client, mlflow_run_id: str, tmp: Path) -> dict[str, bytes]:
    """Every artifact of the run as MLflow's own client downloads it (the reader's view)."""
    root = Path(client.download_artifacts(mlflow_run_id, "", str(tmp)))
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_upload_through_a_server_with_proxied_artifacts(project, mlflow_server, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    run_id, files = _produce(project, tmp_path / "src", "srv-uploads")
    summary = _ingest(project, capsys, "--tracking-uri", mlflow_server.url)
    assert (summary["uploads"], summary["upload_bytes"]) == (len(files), sum(map(len, files.values())))

    client = MlflowClient(mlflow_server.url)
    exp_id, run = _mlflow_run(client, "srv-uploads", run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    root = mlflow_server.artifacts / exp_id / run.info.run_id / "artifacts"
    on_server = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert on_server == files  # nothing else either: no file left in flight
    assert _downloaded(client, run.info.run_id, tmp_path / "dl") == files

    wipe_state(project)  # from scratch: every upload again, the same bytes at the same paths
    assert _ingest(project, capsys, "--tracking-uri", mlflow_server.url)["uploads"] == len(files)
    assert {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()} == files


def test_upload_through_a_server_with_s3_artifacts(project, s3_mlflow_server, moto_s3, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    run_id, files = _produce(project, tmp_path / "src", "srv-s3-uploads")
    _ingest(project, capsys, "--tracking-uri", s3_mlflow_server.url)
    client = MlflowClient(s3_mlflow_server.url)
    exp_id, run = _mlflow_run(client, "srv-s3-uploads", run_id)
    prefix = f"mlflow/{exp_id}/{run.info.run_id}/artifacts/"
    s3 = moto_s3.client()
    stored = {key[len(prefix):]: s3.get_object(Bucket=moto_s3.bucket, Key=key)["Body"].read()
              for key in moto_s3.keys(prefix)}
    assert stored == files
    assert _downloaded(client, run.info.run_id, tmp_path / "dl") == files


def test_upload_direct_to_s3_with_the_bulk_sink(store_project, s3_client_env, monkeypatch, tmp_path, capsys):
    """SQLite store written directly (bulk sink), ``FF_ARTIFACT_ROOT=s3://bucket/uploads``: the ingester
    uploads to S3 itself, 8 files at a time."""
    from mlflow.tracking import MlflowClient

    s3 = s3_client_env
    monkeypatch.setenv("FF_ARTIFACT_ROOT", f"s3://{s3.bucket}/uploads")
    run_id, files = _produce(store_project, tmp_path / "src", "s3-direct-uploads")
    summary = _ingest(store_project, capsys, "--sink", "bulk")
    assert summary["sink"] == "bulk" and summary["uploads"] == len(files)

    client = MlflowClient(f"sqlite:///{store_project / 'data' / 'mlflow' / 'mlruns.db'}")
    _, run = _mlflow_run(client, "s3-direct-uploads", run_id)
    assert run.info.artifact_uri.startswith(f"s3://{s3.bucket}/uploads/")
    prefix = run.info.artifact_uri.removeprefix(f"s3://{s3.bucket}/") + "/"
    stored = {key[len(prefix):]: s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()
              for key in s3.keys(prefix)}
    assert stored == files
    assert run.data.params == {"files": str(len(files))}
