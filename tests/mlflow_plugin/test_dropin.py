"""The MLflow drop-in (``MLFLOW_TRACKING_URI=ff-journal:``): unchanged MLflow code, journals, ``ff-ingest``.

Every MLflow script runs in a subprocess of its own (MLflow keeps process-wide state:
the store cache, the active-run stack, autologging patches); ``ff-ingest`` runs as the
real command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, subprocess_env
from tests.mlflow_plugin.store_compare import diff, snapshot

pytest.importorskip("mlflow")

SCRIPT = Path(__file__).with_name("dropin_script.py")
FF_INGEST = Path(sys.executable).with_name("ff-ingest")
QUIET = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
         "PYTHONWARNINGS": "ignore"}
MODEL_DIR = "model/"  # where sklearn autolog's model files land in an ff-journal: run


def run_script(cwd: Path, uri: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
                          env=subprocess_env(MLFLOW_TRACKING_URI=uri, **QUIET), timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def ff_ingest(project: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(FF_INGEST), *args, "--config", str(project / "config" / "mlflow.yaml")],
                          cwd=project, capture_output=True, text=True, env=subprocess_env(**QUIET), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def store_uri(project: Path) -> str:
    return f"sqlite:///{project / 'data' / 'mlflow' / 'mlruns.db'}"


@pytest.fixture(scope="module")
def direct(tmp_path_factory) -> tuple[dict, dict]:
    """The script straight into SQLite: (snapshot, run ids by name)."""
    folder = tmp_path_factory.mktemp("direct")
    uri = f"sqlite:///{folder / 'mlruns.db'}"
    run_script(folder, uri, str(folder / "ids.json"))
    return snapshot(uri), json.loads((folder / "ids.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("sink", ["bulk", "api"])
def test_same_script_gives_equal_stores(direct, project: Path, sink: str):
    """The script through ff-journal: + ff-ingest gives the store it gives straight into SQLite:
    run names, statuses, params, user tags, parent links, metric histories, datasets, artifact bytes;
    with the bulk sink the MLflow run ids are the ones start_run returned."""
    want, direct_ids = direct
    run_script(project, "ff-journal:", str(project / "ids.json"))
    ids = json.loads((project / "ids.json").read_text())
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids.values())
    assert not (project / "data" / "mlflow" / "mlruns.db").exists(), "logging must not touch the store"
    ff_ingest(project, "--sink", sink)
    got = snapshot(store_uri(project), skip_artifacts=(MODEL_DIR,))
    assert diff(want, got) == []
    assert set(ids) == set(direct_ids)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(store_uri(project))
    by_name = {r.info.run_name: r for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()], max_results=1000)}
    for name, run_id in ids.items():
        assert by_name[name].data.tags["ff.run_id"] == run_id
        if sink == "bulk":  # run ids survive wherever the ingester writes SQL
            assert by_name[name].info.run_id == run_id
    # sklearn autolog's model files are in the run's artifacts after ingest
    model_files = {f.path for f in client.list_artifacts(by_name["autolog"].info.run_id, MODEL_DIR.rstrip("/"))}
    assert {f"{MODEL_DIR}MLmodel", f"{MODEL_DIR}model.pkl"} <= model_files, model_files
    if sink == "bulk":  # the runs:/ URI written down during the run loads the model after ingest
        code = f"import mlflow.sklearn; print(type(mlflow.sklearn.load_model('runs:/{ids['autolog']}/model')).__name__)"
        proc = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True,
                              env=subprocess_env(MLFLOW_TRACKING_URI=store_uri(project), **QUIET), timeout=120)
        assert proc.stdout.strip() == "LogisticRegression", proc.stderr[-3000:]


def test_tracker_run_ids_survive_bulk_ingest(store_project: Path, monkeypatch):
    """The same holds for Tracker-API runs: the bulk sink creates the MLflow run with run.run_id."""
    from mlflow.tracking import MlflowClient

    from formula_foundry.tracking import get_tracker
    from tests.conftest import run_ff_ingest

    monkeypatch.chdir(store_project)
    with get_tracker().start_run(run_name="tracker-run") as run:
        run.log_metric("m", 1.5, step=2)
    assert run_ff_ingest(store_project, "--sink", "bulk") == 0
    got = MlflowClient(store_uri(store_project)).get_run(run.run_id)
    assert got.info.run_name == "tracker-run" and got.data.metrics == {"m": 1.5}
    assert got.info.artifact_uri.endswith(f"/{run.run_id}/artifacts")


@pytest.mark.slow
def test_status_json_maps_run_ids(project: Path):
    """``ff-ingest status --json`` gives each journal's producer run id and its MLflow run id."""
    run_script(project, "ff-journal:", str(project / "ids.json"), "--no-autolog")
    ids = json.loads((project / "ids.json").read_text())
    ff_ingest(project, "--sink", "api")
    status = json.loads(ff_ingest(project, "status", "--json").stdout)
    journals = status["journals"] if isinstance(status, dict) else status
    mapping = {j["run_id"]: j["mlflow_run_id"] for j in journals}
    assert set(ids.values()) <= set(mapping)
    assert all(mapping[i] and len(mapping[i]) == 32 for i in ids.values())


@pytest.mark.slow
def test_sigkill_mid_loop_loses_nothing_logged(project: Path):
    """A script SIGKILLed in the middle of its metric loop: every point whose call returned is ingested."""
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "out.json", "--loop", "1000000"], cwd=project,
                            stdout=subprocess.PIPE, text=True,
                            env=subprocess_env(MLFLOW_TRACKING_URI="ff-journal:", **QUIET))
    run_id = proc.stdout.readline().strip()
    last = -1
    deadline = time.monotonic() + 120
    while last < 2000 and time.monotonic() < deadline:
        last = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last >= 2000
    ff_ingest(project, "--sink", "bulk")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(store_uri(project))
    run = client.get_run(run_id)  # the id start_run returned
    assert run.info.status == "RUNNING"
    assert run.data.params == {"n": "1000000"}
    steps = {m.step for m in client.get_metric_history(run_id, "x")}
    assert set(range(last + 1)) <= steps


def test_logging_needs_no_store(project: Path):
    """With no store anywhere (the configured SQLite file absent, and never created), logging works; reads
    of this process's runs are answered locally; other reads fail naming ff-journal: and ff-ingest."""
    code = """
import mlflow
from mlflow.exceptions import MlflowException
mlflow.set_experiment("offline")
with mlflow.start_run(run_name="r") as run:
    mlflow.log_param("p", 1)
    mlflow.log_metric("m", 2.0, step=3)
    mlflow.set_tag("t", "v")
    got = mlflow.get_run(run.info.run_id)
    assert got.data.params == {"p": "1"} and got.data.metrics == {"m": 2.0}, got.data
    assert got.data.tags["t"] == "v" and got.info.run_name == "r"
    assert mlflow.active_run().info.run_id == run.info.run_id
    assert mlflow.get_experiment_by_name("offline").experiment_id == run.info.experiment_id
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "m")
    assert [(m.step, m.value) for m in history] == [(3, 2.0)]
try:
    mlflow.search_runs(experiment_names=["offline"])
except MlflowException as exc:
    assert "ff-journal:" in str(exc) and "ff-ingest" in str(exc), exc
    print("REFUSED")
print(mlflow.get_run(run.info.run_id).info.status)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True,
                          env=subprocess_env(MLFLOW_TRACKING_URI="ff-journal:", **QUIET), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["REFUSED", "FINISHED"]
    assert not (project / "data" / "mlflow").exists()
    assert list((project / "data" / "runs").glob("*/tracking/*.jsonl"))


def test_registry_uri_set_only_when_unset(project: Path):
    """The plugin points MLflow's registry at the configured store (the fluent API then skips its
    per-call Spark lookup), unless MLFLOW_REGISTRY_URI chose one."""
    code = "import mlflow; mlflow.MlflowClient(); print(mlflow.get_registry_uri())"
    env = subprocess_env(MLFLOW_TRACKING_URI=f"ff-journal:{project}", **QUIET)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env)
    assert out.stdout.strip() == store_uri(project)
    env["MLFLOW_REGISTRY_URI"] = "sqlite:////elsewhere.db"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "sqlite:////elsewhere.db"


def test_system_metrics_monitor_logs_through_the_journal(project: Path):
    """MLflow's own system-metrics monitor (log_system_metrics=True) writes its samples into the journal."""
    pytest.importorskip("psutil", reason="MLflow's system-metrics monitor needs psutil, which is not installed")
    code = """
import time, mlflow
mlflow.set_system_metrics_sampling_interval(0.2)
mlflow.set_system_metrics_samples_before_logging(1)
with mlflow.start_run(run_name="sys", log_system_metrics=True) as run:
    time.sleep(1.5)
print(sorted(mlflow.get_run(run.info.run_id).data.metrics))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True,
                          env=subprocess_env(MLFLOW_TRACKING_URI="ff-journal:", **QUIET), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "system/cpu_utilization_percentage" in proc.stdout
    journal = next((project / "data" / "runs").glob("*/tracking/*.jsonl")).read_text()
    assert "system/cpu_utilization_percentage" in journal
