"""Smoke test of the benchmark runner: ``tools/bench/run.py --smoke --only producer`` runs and prints its table
(``--smoke``: ``--quick``'s code paths with tiny N and one run each).

No timing is asserted anywhere: numbers depend on the machine and its load.
The full numbers live in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, subprocess_env

PRODUCER_ROWS = (
    "ff run.log_metric, fsync=always",
    "ff run.log_metric, fsync=interval",
    "ff run.log_metric, fsync=never",
    "bare orjson append + flush",
    "mlflow.log_metric → SQLite",
    "mlflow async → SQLite, until flushed",
    "wandb offline run.log",
    "import formula_foundry.tracking",
    "import mlflow",
    "producer (fsync=interval) vs mlflow.log_metric",
    "producer (fsync=interval) vs bare append",
)


@pytest.mark.slow
def test_smoke_producer_run_prints_one_table(tmp_path: Path):
    """``--smoke --only producer`` exits 0 and prints one markdown table with every producer row."""
    pytest.importorskip("mlflow")
    pytest.importorskip("matplotlib")
    plot = tmp_path / "producer.png"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench" / "run.py"), "--smoke", "--only", "producer",
         "--plot", str(plot), "--json", str(tmp_path / "out.json")],
        check=False, capture_output=True, text=True, timeout=600, cwd=REPO, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    rows = [line for line in lines if line.startswith("|")]
    assert rows[0].split("|")[1].strip() == "section"
    assert set(rows[1]) <= set("|- "), "the second line is the markdown separator"
    first, last = lines.index(rows[0]), lines.index(rows[-1])
    assert lines[first:last + 1] == rows, "one contiguous table"
    options = {line.split("|")[2].strip() for line in rows[2:]}
    for name in PRODUCER_ROWS:
        assert name in options, f"row {name!r} missing from:\n{proc.stdout}"
    assert not any("| failed" in line for line in rows), proc.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "out.json").read_text())
    assert {r["option"] for r in saved["rows"]} == options


def test_unknown_section_is_a_usage_error():
    """``--only`` with a section that does not exist exits 2 without running anything."""
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "bench" / "run.py"), "--only", "nope"],
                          check=False, capture_output=True, text=True, timeout=60, cwd=REPO, env=subprocess_env())
    assert proc.returncode == 2
    assert "unknown section" in proc.stderr


@pytest.mark.slow
def test_smoke_ingest_run_has_no_failed_row():
    """``--smoke --only ingest``: the ingest benchmark's children run against the current ingest API
    (a refactor that breaks them shows here, not first in a benchmark session)."""
    pytest.importorskip("mlflow")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "bench" / "run.py"), "--smoke", "--only", "ingest"],
                          check=False, capture_output=True, text=True, timeout=600, cwd=REPO, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ingest")]
    assert rows and not any("| failed" in line for line in rows), proc.stdout
