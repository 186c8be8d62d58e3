"""The producer under real signals: SIGKILL and SIGINT delivered to a process that is logging."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from formula_foundry.tracking.events import decode_metric_value
from formula_foundry.tracking.journal import JournalReader
from tests.conftest import subprocess_env

# Logs in a tight loop; after every 1000 returned calls prints the count, so the
# test knows which records the child was promised were logged.
PRODUCER = r"""
import sys
from formula_foundry.tracking import get_tracker

tracker = get_tracker()
with tracker.start_run(run_name="signal-target") as run:
    print(run.journal_path, flush=True)
    i = 0
    while True:
        run.log_metric("loss", i * 0.5, step=i)
        if i % 7 == 0:
            run.set_tag("note", "x" * (i % 300))  # vary line lengths
        i += 1
        if i % 1000 == 0:
            print(i, flush=True)
"""


def _start(project: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", PRODUCER], cwd=project, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = Path(proc.stdout.readline().strip())
    assert journal.is_file(), proc.stderr.read()
    first = proc.stdout.readline()  # at least 1000 records are in
    assert first.strip().isdigit(), proc.stderr.read()
    return proc, journal


def _check_complete_prefix(journal: Path, promised: int) -> list[dict]:
    """Every complete record reads back with seq 0..n-1; every promised metric point is there."""
    reader = JournalReader(journal)
    records = list(reader.records())  # raises CorruptRecordError on any bad or out-of-order line
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert records[0]["type"] == "run_start"
    steps = [r["step"] for r in records if r["type"] == "metric"]
    assert steps == list(range(len(steps)))
    assert len(steps) >= promised
    assert all(decode_metric_value(r["value"]) == r["step"] * 0.5 for r in records if r["type"] == "metric")
    data = journal.read_bytes()
    # A torn last line is reported as pending, never taken as data.
    assert reader.pending_bytes == len(data) - (data.rfind(b"\n") + 1)
    return records


def test_sigkill_mid_stream_loses_nothing_that_returned(project: Path):
    """SIGKILL at random moments: the complete records read back, seq contiguous, nothing promised lost."""
    rng = random.Random(20261123)
    for _trial in range(4):
        proc, journal = _start(project)
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        counts = [int(line) for line in out.split()]
        records = _check_complete_prefix(journal, counts[-1] if counts else 1000)
        assert records[-1]["type"] != "run_end"  # the producer died: the run has no end


def test_sigint_mid_stream_ends_the_run_killed(project: Path):
    """SIGINT (Ctrl-C) at random moments: the run ends KILLED and the journal stays contiguous."""
    rng = random.Random(7)
    for _trial in range(6):
        proc, journal = _start(project)
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode != 0 and "KeyboardInterrupt" in err
        counts = [int(line) for line in out.split()]
        records = _check_complete_prefix(journal, counts[-1] if counts else 1000)
        assert records[-1]["type"] == "run_end"
        assert records[-1]["status"] == "KILLED"
        assert journal.read_bytes().endswith(b"\n")


def test_sigterm_leaves_the_run_without_an_end(project: Path):
    """SIGTERM (Python's default: die at once): like SIGKILL, the records read back and no run_end is
    invented; the run stays RUNNING in MLflow (docs/workflow.md says so)."""
    proc, journal = _start(project)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    counts = [int(line) for line in out.split()]
    records = _check_complete_prefix(journal, counts[-1] if counts else 1000)
    assert records[-1]["type"] != "run_end"
