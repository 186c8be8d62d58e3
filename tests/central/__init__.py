"""Helpers of the central-ingest tests: hosts and central machines as separate project folders.

* :func:`machine` - a project folder with its own config and state (``data/``): a producing
  host, or a central ingester (two central ones = two machines: two state dirs);
* :func:`produce` - runs written by the real producer (:class:`~formula_foundry.tracking.Tracker`):
  params, a metric history, a nested child run, a real artifact (its blob in the host's
  content-addressed store) and an artifact reference;
* :func:`ship` - ``ff-ingest ship --to DEST --host NAME`` (in this process);
* :func:`central` / :func:`central_argv` - ``ff-ingest --root DEST`` in this process, or as a
  subprocess command line (for concurrency and SIGKILL);
* :func:`offline` - the hosts' folders moved away while a central ingest runs, so nothing of a
  host (journal, blob) can be read except through the destination;
* :func:`reference_snapshot` - the same journals ingested directly (no shipping) into a fresh
  SQLite store, as :func:`tests.server.snapshot` sees it: what a central ingest must equal.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

from tests.conftest import REPO, subprocess_env

__all__ = ["central", "central_argv", "child_env", "machine", "offline", "produce", "reference_snapshot", "ship"]


def machine(root: Path, *, lease_seconds: float | None = None, rescan: float | None = None,
            sink: str | None = None) -> Path:
    """A project folder ``root`` with the repository's config (and the given overrides)."""
    (root / "config").mkdir(parents=True)
    data = yaml.safe_load((REPO / "config" / "mlflow.yaml").read_text())
    if lease_seconds is not None:
        data["ingest"]["lease_seconds"] = lease_seconds
    if rescan is not None:
        data["ingest"]["watch"]["rescan_interval_seconds"] = rescan
    if sink is not None:
        data["ingest"]["sink"] = sink
    (root / "config" / "mlflow.yaml").write_text(yaml.safe_dump(data))
    return root


def config_of(project: Path) -> str:
    return str(project / "config" / "mlflow.yaml")


def produce(project: Path, experiment: str, *, runs: int = 1, metrics: int = 30, tag: str = "") -> list[str]:
    """``runs`` parent runs (each with a nested child) on ``project``; returns every producer run id."""
    from formula_foundry.tracking import Tracker, load_config

    t = Tracker(load_config(config_of(project)))
    files = project / "files"
    files.mkdir(exist_ok=True)
    ids = []
    for r in range(runs):
        with t.start_run(f"parent{tag}{r}", experiment_name=experiment, tags={"host": project.name}) as run:
            run.log_params({"solver": "fdtd", "r": r})
            for step in range(metrics):
                run.log_metric("residual", 1.0 / (step + 1), step=step)
            blob = files / f"curve{tag}{r}.csv"
            blob.write_text(f"# {project.name} {tag}{r}\n" + "".join(f"{i},{i * r}\n" for i in range(200)))
            run.log_artifact(blob, "tables")
            run.log_artifact_reference("figs/loss.png", "ab" * 32, 16, media_type="image/png")
            with t.start_run(f"child{tag}{r}", experiment_name=experiment, nested=True) as child:
                child.log_metric("accuracy", 0.9, step=0)
                child.set_tag("stage", "validation")
            ids += [run.run_id, child.run_id]
    return ids


def _main(args: list[str]) -> int:
    from formula_foundry.tracking.ingest.cli import main

    return main(args)


def ship(host: Path, dest: str, *args: str) -> int:
    """``ff-ingest ship --to DEST --host <folder name>`` for ``host``, in this process."""
    return _main(["ship", "--to", dest, "--host", host.name, "-q", *args, "--config", config_of(host)])


def central(project: Path, dest: str, tracking_uri: str, *args: str) -> int:
    """``ff-ingest --root DEST --tracking-uri URI ARGS`` for the central machine ``project``, in this process."""
    return _main(["--root", dest, "--tracking-uri", tracking_uri, *args, "--config", config_of(project)])


def central_json(project: Path, dest: str, tracking_uri: str, capsys, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = central(project, dest, tracking_uri, "--json", *args)
    return code, json.loads(capsys.readouterr().out)


def central_argv(project: Path, dest: str, tracking_uri: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "formula_foundry.tracking.ingest.cli", "--root", dest, "--tracking-uri",
            tracking_uri, *args, "--config", config_of(project)]


def child_env(**extra: str) -> dict[str, str]:
    env = subprocess_env(**extra)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env["PYTHONPATH"]
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


@contextlib.contextmanager
def offline(*hosts: Path) -> Iterator[None]:
    """The hosts' folders renamed away for the duration: a central ingest can read nothing of them."""
    away = [h.with_name(h.name + ".away") for h in hosts]
    for host, gone in zip(hosts, away):
        host.rename(gone)
    try:
        yield
    finally:
        for host, gone in zip(hosts, away):
            gone.rename(host)


def reference_snapshot(tmp_path: Path, hosts: list[Path], template_store: Path, experiments: list[str]) -> dict:
    """The hosts' journals ingested directly (no shipping) into a fresh SQLite store; its snapshot."""
    from mlflow.tracking import MlflowClient

    from tests.server import snapshot

    ref = machine(tmp_path / f"reference-{len(list(tmp_path.glob('reference-*')))}")
    db = ref / "data" / "mlflow" / "mlruns.db"
    db.parent.mkdir(parents=True)
    shutil.copy(template_store, db)
    roots = [arg for host in hosts for arg in ("--root", str(host / "data" / "runs"))]
    # In a child process: MLflow caches artifact repositories by run id in its process, and the bulk
    # sink gives runs the same (producer) ids in every store.
    proc = subprocess.run([sys.executable, "-m", "formula_foundry.tracking.ingest.cli", "-q", *roots, "--config",
                           config_of(ref)], env=child_env(), capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return snapshot(MlflowClient(f"sqlite:///{db}"), experiments)
