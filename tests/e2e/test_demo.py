"""End to end: ``tools/demo.py`` in a throw-away project, then the MLflow store it leaves behind.

The demo runs as a subprocess, from an unrelated working directory, with its project
chosen through ``FF_CONFIG`` (as a user would from anywhere). Its SQLite store starts
as a copy of the session's migrated template store (creating one costs seconds).
Every check goes through ``MlflowClient``, the way docs/viewing-results.md shows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, subprocess_env

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient

from formula_foundry.demo import (
    COUPONS,
    N_FREQ,
    OPTIMIZER_STEPS,
    SOLVER_STEPS,
    insertion_loss_sweep,
    optimizer_curve,
    solver_residuals,
)
from formula_foundry.substrate import ArtifactStore

DEMO = REPO / "tools" / "demo.py"
UI_COMMAND = "mlflow ui --backend-store-uri sqlite:///data/mlflow/mlruns.db --port 5000"
CHILD_NAMES = {f"{kind}-{c.name}" for c in COUPONS for kind in ("coupongen", "simulate")}
CONVENTION_KEYS = ("task", "milestone", "agent", "dataset_version", "code_revision")
MANIFEST_KEYS = ("git_sha", "design_doc_sha256", "environment_fingerprint", "determinism_mode")


def make_project(root: Path, template_store: Path) -> Path:
    (root / "config").mkdir(parents=True)
    shutil.copy(REPO / "config" / "mlflow.yaml", root / "config" / "mlflow.yaml")
    db = root / "data" / "mlflow" / "mlruns.db"
    db.parent.mkdir(parents=True)
    shutil.copy(template_store, db)
    return root


def run_demo(project: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, str(DEMO), *args], check=False, cwd=cwd, capture_output=True, text=True,
                          env=subprocess_env(FF_CONFIG=str(project / "config" / "mlflow.yaml")), timeout=240)
    assert proc.returncode == 0, f"demo failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def git_head() -> str | None:
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        return None
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], check=False, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


@pytest.fixture(scope="module")
def demo(tmp_path_factory, template_store):
    """(project, demo stdout, client, parent run, {child name: run}) after one demo run."""
    base = tmp_path_factory.mktemp("demo")
    project = make_project(base / "proj", template_store)
    proc = run_demo(project, cwd=base / "elsewhere")
    client = MlflowClient(f"sqlite:///{project / 'data' / 'mlflow' / 'mlruns.db'}")
    exp = client.get_experiment_by_name("ff-m3-pipeline")
    assert exp is not None, proc.stdout
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.info.run_name == "m3-pipeline-demo"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    children = {r.info.run_name: r for r in runs if r is not parents[0]}
    return project, proc.stdout, client, parents[0], children


# --------------------------------------------------------------------------- the command

def test_prints_the_ui_command_for_the_project_store(demo):
    project, out, *_ = demo
    assert UI_COMMAND in out
    assert f"cd {project}" in out  # run from elsewhere: the command says where to run it
    assert re.search(r"http://127\.0\.0\.1:5000/#/experiments/\d+/runs/[0-9a-f]{32}\?workflowType=machine_learning",
                     out), out


def test_parent_run_and_nested_children(demo):
    _, out, _, parent, children = demo
    assert parent.info.status == "FINISHED"
    assert set(children) == CHILD_NAMES
    for run in children.values():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
    # The producer's run id, printed by the demo, is the ff.run_id tag of the MLflow run.
    producer_id = re.search(r"ff\.run_id ([0-9a-f]{32})", out).group(1)
    assert parent.data.tags["ff.run_id"] == producer_id


def test_params(demo):
    _, _, _, parent, children = demo
    assert parent.data.params["pipeline_version"] == "1.0"
    assert parent.data.params["seed"] == "42"
    assert parent.data.params["n_coupons"] == str(len(COUPONS))
    gen = children["coupongen-via-d025"].data.params
    assert gen["via_drill_mm"] == "0.25" and gen["coupon_family"] == "F1_SINGLE_ENDED_VIA"
    sim = children["simulate-via-d025"].data.params
    assert sim["n_freq"] == str(N_FREQ) and sim["solver"] == "fdtd-demo"


def test_metric_histories_have_hundreds_of_steps_and_are_deterministic(demo):
    _, _, client, parent, children = demo
    coupon = COUPONS[2]
    sim = children[f"simulate-{coupon.name}"].info.run_id
    history = sorted(client.get_metric_history(sim, "insertion_loss_db"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(N_FREQ))
    assert [m.value for m in history] == [p["insertion_loss_db"] for p in insertion_loss_sweep(coupon, 42)]
    residual = client.get_metric_history(sim, "solver/log10_residual")
    assert sorted(m.value for m in residual) == sorted(solver_residuals(coupon, 42))
    assert len(residual) == SOLVER_STEPS
    gen = children[f"coupongen-{coupon.name}"].info.run_id
    loss = sorted(client.get_metric_history(gen, "optimizer/loss"), key=lambda m: m.step)
    assert len(loss) == OPTIMIZER_STEPS
    assert [m.value for m in loss] == [p["optimizer/loss"] for p in optimizer_curve(coupon, 42)]
    assert len(client.get_metric_history(parent.info.run_id, "pipeline/il_at_band_edge_db")) == len(COUPONS)
    # The acceptance metrics of M1/M2 are logged under the registry's names.
    assert {"build_time_seconds", "constraint_violations"} <= set(children[f"coupongen-{coupon.name}"].data.metrics)
    assert {"insertion_loss_db", "return_loss_db", "sim_time_seconds"} <= set(
        children[f"simulate-{coupon.name}"].data.metrics)


def test_manifest_tags_and_manifest_artifact(demo):
    _, _, client, parent, children = demo
    head = git_head()
    for run in [parent, *children.values()]:
        tags = run.data.tags
        for key in MANIFEST_KEYS:
            assert tags.get(key), (run.info.run_name, key)
        assert tags["determinism_mode"] == "strict"
        assert {tags[f"seed_{n}"] for n in ("python", "numpy", "torch")} == {"42"}
        assert re.fullmatch(r"[0-9a-f]{64}", tags["environment_fingerprint"])
        if head is not None:
            assert tags["git_sha"] == head
        assert "manifest.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_substrate_tags_point_at_run_directories(demo):
    project, _, _, parent, children = demo
    run_root = (project / "data" / "runs").resolve()
    for run in [parent, *children.values()]:
        run_dir = Path(run.data.tags["substrate_run_dir"])
        assert run_dir.parent == run_root
        assert run_dir.name == run.data.tags["substrate_run_id"]
        assert (run_dir / "manifest.json").is_file()
        assert list((run_dir / "tracking").glob("*.jsonl")), run_dir
    assert Path(children["simulate-via-d020"].data.tags["substrate_run_dir"]).name.startswith(
        parent.data.tags["substrate_run_id"] + ".")


def test_artifact_references_resolve_to_stored_blobs(demo, tmp_path):
    project, _, client, parent, children = demo
    store = ArtifactStore(project / "data" / "artifacts")
    expected = {
        parent.info.run_id: ["reports/pipeline_report.json"],
        **{children[f"coupongen-{c.name}"].info.run_id: [f"coupons/{c.name}/coupon.kicad_pcb",
                                                         f"coupons/{c.name}/geometry.json"] for c in COUPONS},
        **{children[f"simulate-{c.name}"].info.run_id: [f"sparams/{c.name}.s2p"] for c in COUPONS},
    }
    for run_id, logical_paths in expected.items():
        for logical in logical_paths:
            local = client.download_artifacts(run_id, f"artifact_refs/{logical}.json", str(tmp_path))
            ref = json.loads(Path(local).read_text())
            assert ref["type"] == "formula_foundry.artifact_reference"
            assert ref["logical_path"] == logical
            digest = ref["digest"]["value"]
            blob = store.path_for(digest)
            assert blob.is_file(), logical
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == digest
            assert blob.stat().st_size == ref["size_bytes"]
            assert ref["store_uri"] == blob.as_uri()
    # A reference is never a copy: only small JSON files in the run's artifacts.
    sim = children["simulate-via-d020"].info.run_id
    assert [a.path for a in client.list_artifacts(sim, "artifact_refs/sparams")] == [
        "artifact_refs/sparams/via-d020.s2p.json"]


def test_convention_tags(demo):
    _, _, _, parent, children = demo
    expected_milestone = {"m3-pipeline-demo": "M3", "coupongen": "M1", "simulate": "M2"}
    for run in [parent, *children.values()]:
        tags = run.data.tags
        for key in CONVENTION_KEYS:
            assert tags.get(key), (run.info.run_name, key)
        kind = run.info.run_name.split("-")[0] if run is not parent else "m3-pipeline-demo"
        assert tags["milestone"] == expected_milestone[kind]
        assert tags["code_revision"] == tags["git_sha"]
        assert tags["agent"] == "ff-demo"
    assert children["simulate-via-d020"].data.tags["task"] == "M2-sim-insertion-loss"
    assert children["coupongen-via-d020"].data.tags["task"] == "M1-coupon-build"


@pytest.mark.slow
def test_second_run_adds_runs_and_fresh_starts_over(tmp_path, template_store):
    project = make_project(tmp_path / "proj", template_store)

    def count() -> int:
        # Plain sqlite3: MLflow caches its engine per URI, which would keep reading the removed file.
        with contextlib.closing(sqlite3.connect(project / "data" / "mlflow" / "mlruns.db")) as db:
            return db.execute("SELECT count(*) FROM runs WHERE lifecycle_stage = 'active'").fetchone()[0]

    run_demo(project, cwd=project)
    run_demo(project, cwd=project)
    assert count() == 14
    assert len(list((project / "data" / "runs").iterdir())) == 14
    # --fresh removes runs, artifacts and the store first (not ingested here: a new store costs migrations).
    out = run_demo(project, "--fresh", "--no-ingest", cwd=project).stdout
    assert "removed data/runs" in out and "removed data/mlflow/mlruns.db" in out
    assert not (project / "data" / "mlflow" / "mlruns.db").exists()
    assert len(list((project / "data" / "runs").iterdir())) == 7
    blobs = [p for p in (project / "data" / "artifacts" / "objects").rglob("*") if p.is_file()]
    assert len(blobs) == 19  # this run's: 1 report + 3 x (board, geometry, touchstone) + 3 x (figure, table, solver log)


def test_pipeline_models_are_seeded():
    coupon = COUPONS[0]
    assert optimizer_curve(coupon, 7) == optimizer_curve(coupon, 7)
    assert optimizer_curve(coupon, 7) != optimizer_curve(coupon, 8)
    assert insertion_loss_sweep(coupon, 7) == insertion_loss_sweep(coupon, 7)
    assert solver_residuals(coupon, 7) != solver_residuals(coupon, 8)
