"""The single-ingester lock held in a PostgreSQL store: two hosts (two state folders) cannot race."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from formula_foundry.tracking import load_config
from formula_foundry.tracking.ingest.stores.connect import store_lock
from tests.ingest import child_env, ingest_cmd, tracker


def one_run(project: Path) -> None:
    with tracker(project).start_run("r", experiment_name="lock") as run:
        run.log_metric("m", 1.0)


def _config(project: Path) -> str:
    return str(project / "config" / "mlflow.yaml")


@pytest.mark.postgres
def test_two_ingesters_on_one_postgres_database_one_waits(project, postgres_url, tmp_path):
    """Two projects (two state folders, as two hosts have) ingest into one PostgreSQL database with two
    spellings of its URI: the advisory lock in the database lets one through; the other exits 5 naming
    the holder. When the holder goes, the lock goes with its session."""
    uri_b = postgres_url + ("&" if "?" in postgres_url else "?") + "application_name=other"
    one_run(project)
    host_a = load_config(_config(project))
    other_cfg = project / "config" / "host-b.yaml"
    other_cfg.write_text((project / "config" / "mlflow.yaml").read_text()
                         .replace('state_dir: "data/mlflow/ingest"', f'state_dir: "{tmp_path / "host-b"}"'))
    cmd = [*ingest_cmd(project)[:-2], "--config", str(other_cfg), "--tracking-uri", uri_b]
    with store_lock(host_a, postgres_url):
        proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 5, proc.stderr
    assert "another ingester" in proc.stderr and "advisory lock" in proc.stderr
    assert f"ff-ingest pid {os.getpid()}" in proc.stderr
    ok = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=120, check=False)
    assert ok.returncode == 0, ok.stderr
