"""A special file named like a journal under a journal root (issue 14, item 4), with real processes.

Opening a FIFO for reading waits for a writer: a FIFO named like a journal used to hang a batch
``ff-ingest``, ``ff-ingest status`` and ``ff-ingest --watch`` (which then ignored SIGTERM). Now
discovery takes regular files only (the FIFO is skipped with a warning naming it), the reader
opens without blocking and refuses anything but a regular file, and every other journal is
ingested.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import subprocess_env
from tests.ingest import child_env, ingest_cmd, store_db, tracker

pytestmark = pytest.mark.usefixtures("_quiet")

FIFO_NAME = "0123456789abcdef0123456789abcdef.fedcba9876543210.jsonl"


@pytest.fixture
def _quiet(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def one_run(project: Path, name: str) -> str:
    with tracker(project).start_run(name, experiment_name="special") as run:
        run.log_metric("m", 1.0, step=0)
    return run.run_id


def fifo_under_root(project: Path, folder: str = "fifo-run") -> Path:
    path = project / "data" / "runs" / folder / "tracking" / FIFO_NAME
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    return path


def ingested_run_ids(project: Path) -> set[str]:
    with sqlite3.connect(store_db(project)) as db:
        return {row[0] for row in db.execute("SELECT value FROM tags WHERE key = 'ff.run_id'")}


def test_batch_ingest_skips_a_fifo_and_ingests_the_rest(store_project: Path):
    """Batch ``ff-ingest`` returns (exit 0), names the FIFO in a warning, and ingests the journals beside it."""
    good = [one_run(store_project, "a"), one_run(store_project, "b")]
    fifo = fifo_under_root(store_project)
    try:
        proc = subprocess.run(ingest_cmd(store_project), env=child_env(), capture_output=True, text=True,
                              timeout=90, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("ff-ingest hung on a FIFO under the journal root")
    assert proc.returncode == 0, proc.stderr
    assert f"{fifo}: skipped: a FIFO, not a regular file: not a journal" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert ingested_run_ids(store_project) == set(good)


def test_status_returns_with_a_fifo_under_the_root(store_project: Path):
    """``ff-ingest status`` returns and lists the regular journal; the FIFO is only a warning."""
    good = one_run(store_project, "a")
    fifo = fifo_under_root(store_project)
    cmd = [sys.executable, "-m", "formula_foundry.tracking.ingest.cli", "status", "--json",
           "--config", str(store_project / "config" / "mlflow.yaml")]
    try:
        proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=90, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("ff-ingest status hung on a FIFO under the journal root")
    assert proc.returncode == 0, proc.stderr
    assert str(fifo) in proc.stderr and "not a regular file" in proc.stderr
    assert good in proc.stdout and FIFO_NAME not in proc.stdout


def _wait_for(proc: subprocess.Popen, log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None:
            pytest.fail(f"daemon exited with {proc.returncode} before {text!r}:\n{log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {text!r} within {timeout} s:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


@pytest.mark.slow  # a daemon as a subprocess: seconds
def test_watch_with_fifos_ingests_the_rest_and_stops_on_sigterm(store_project: Path):
    """``ff-ingest --watch`` with a FIFO under the root at start, and another created while it runs: it gets
    ready, ingests a journal written later, and exits 0 within seconds of SIGTERM."""
    config = store_project / "config" / "mlflow.yaml"
    data = yaml.safe_load(config.read_text())
    data["ingest"]["watch"].update({"rescan_interval_seconds": 0.3})  # rescans meet the FIFOs again and again
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    first = one_run(store_project, "before")
    fifo = fifo_under_root(store_project)
    log = store_project / "daemon.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "formula_foundry.tracking.ingest.cli", "--watch", "--sink",
                                 "api", "--config", str(config), "--log-level", "info"],
                                stdout=subprocess.DEVNULL, stderr=err, cwd=store_project, env=subprocess_env())
        try:
            _wait_for(proc, log, "event=ready", 90)
            late_fifo = fifo_under_root(store_project, "late-fifo-run")  # an inotify event, not only a rescan
            second = one_run(store_project, "after")
            _wait_for(proc, log, f"run={second}", 60)
            time.sleep(1.0)  # a few rescans over both FIFOs
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(20)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the daemon did not stop within 20 s of SIGTERM:\n{log.read_text(errors='replace')}")
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text(errors="replace")
    assert rc == 0, text
    assert took < 10, f"SIGTERM took {took:.1f} s"
    assert f"{fifo}: skipped: a FIFO" in text
    assert str(late_fifo) in text and "not a regular file" in text
    assert "event=stopped" in text and "Traceback" not in text
    assert ingested_run_ids(store_project) == {first, second}
