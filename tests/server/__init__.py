"""Helpers of the server tests: real journals in, a store-independent snapshot out.

* :func:`produce` - journals written by the real producer (``Tracker``): a parent run with
  params, a metric history, NaN/±inf values, the seed-003 convention tags, a manifest and an
  artifact reference, and a nested child run;
* :func:`snapshot` - everything a user sees in a store through ``MlflowClient`` (works for
  SQLite, PostgreSQL and a server alike), keyed by producer run id (``ff.run_id``), so two
  ingests (with different MLflow run ids) compare with ``==``;
* :func:`wipe_state` - forget every checkpoint of a project, so the next ingest replays every
  journal from its first record again (idempotency against the store itself).

The fixtures (PostgreSQL database, ``mlflow server`` and moto subprocesses) are in
``conftest.py``.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

__all__ = ["ARTIFACT_PATH", "REF_DIGEST", "produce", "snapshot", "wipe_state"]

#: The logical path of the artifact reference every produced parent run carries.
ARTIFACT_PATH = "figs/insertion_loss.png"
REF_DIGEST = hashlib.sha256(b"not really a png").hexdigest()


def tracker(project: Path):
    from formula_foundry.tracking import Tracker, load_config

    return Tracker(load_config(project / "config" / "mlflow.yaml"))


def produce(project: Path, experiment: str, *, task: str = "M2-sim-insertion-loss",
            loss: float = -0.4) -> dict[str, str]:
    """Write a parent and a nested child run's journals; returns {"parent": run id, "child": run id}."""
    t = tracker(project)
    with t.start_run("parent", experiment_name=experiment,
                     tags={"task": task, "milestone": "M2", "agent": "server-tests"}) as parent:
        parent.log_params({"solver": "fdtd", "mesh_cells": 120000})
        for step in range(25):
            parent.log_metric("residual", 1.0 / (step + 1), step=step)
        parent.log_metric("insertion_loss_db", loss)
        parent.log_metric("nan_metric", math.nan)
        parent.log_metric("inf_metric", -math.inf)
        parent.log_manifest({"git_sha": "0" * 40, "design_doc_sha256": "1" * 64,
                             "environment_fingerprint": "env-1", "determinism_mode": "strict"})
        parent.log_artifact_reference(ARTIFACT_PATH, REF_DIGEST, 16, media_type="image/png")
        with t.start_run("child", experiment_name=experiment, nested=True) as child:
            child.log_param("fold", 1)
            child.log_metric("accuracy", 0.93, step=0)
            child.set_tag("stage", "validation")
        parent_id, child_id = parent.run_id, child.run_id
    return {"parent": parent_id, "child": child_id}


def wipe_state(project: Path) -> None:
    """Delete the ingest state (checkpoints) of every store of ``project``."""
    shutil.rmtree(project / "data" / "mlflow" / "ingest", ignore_errors=True)


def _value(value: float):
    return "NaN" if math.isnan(value) else value


def _artifact_listing(client, run_id: str, path: str | None = None) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            out.update(_artifact_listing(client, run_id, info.path))
        else:
            out[info.path] = info.file_size
    return out


def snapshot(client, experiments: list[str]) -> dict:
    """Runs of ``experiments`` by producer run id: name, status, times, params, tags, metric
    histories, latest metrics and artifact listing. Asserts one MLflow run per producer run."""
    from mlflow.entities import ViewType

    runs = []
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        assert exp is not None, f"experiment {name!r} was not created"
        runs += client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    ff_ids = {r.info.run_id: r.data.tags.get("ff.run_id") for r in runs}
    assert all(ff_ids.values()), f"runs without ff.run_id: {[k for k, v in ff_ids.items() if not v]}"
    assert len(set(ff_ids.values())) == len(runs), f"duplicate MLflow runs: {sorted(ff_ids.values())}"
    out = {}
    for run in runs:
        tags = dict(run.data.tags)
        if "mlflow.parentRunId" in tags:
            tags["mlflow.parentRunId"] = ("parent", ff_ids.get(tags["mlflow.parentRunId"]))
        history = {key: sorted((m.step, m.timestamp, _value(m.value))
                               for m in client.get_metric_history(run.info.run_id, key))
                   for key in run.data.metrics}
        out[ff_ids[run.info.run_id]] = {
            "name": run.info.run_name, "status": run.info.status, "lifecycle": run.info.lifecycle_stage,
            "start_time": run.info.start_time, "end_time": run.info.end_time,
            "experiment": client.get_experiment(run.info.experiment_id).name,
            "params": dict(run.data.params), "tags": tags,
            "latest": {k: _value(v) for k, v in run.data.metrics.items()}, "history": history,
            "artifacts": _artifact_listing(client, run.info.run_id),
        }
    return out
