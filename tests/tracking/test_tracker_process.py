"""The producer under real signals: SIGKILL and SIGINT delivered to a process that is logging."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

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


def _signal_mid_stream(project: Path, sig: int, *, seed: int, trials: int):
    """Per trial: start the producer, send ``sig`` at a random moment, check the journal's complete
    prefix; yields (exit status, stderr, records, journal path)."""
    rng = random.Random(seed)
    for _trial in range(trials):
        proc, journal = _start(project)
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        counts = [int(line) for line in out.split()]
        yield proc.returncode, err, _check_complete_prefix(journal, counts[-1] if counts else 1000), journal


def test_sigkill_mid_stream_loses_nothing_that_returned(project: Path):
    """SIGKILL at random moments: the complete records read back, seq contiguous, nothing promised lost."""
    for status, _err, records, _journal in _signal_mid_stream(project, signal.SIGKILL, seed=20261123, trials=4):
        assert status == -signal.SIGKILL
        assert records[-1]["type"] != "run_end"  # the producer died: the run has no end


def test_sigint_mid_stream_ends_the_run_killed(project: Path):
    """SIGINT (Ctrl-C) at random moments: the run ends KILLED and the journal stays contiguous."""
    for status, err, records, journal in _signal_mid_stream(project, signal.SIGINT, seed=7, trials=6):
        assert status != 0 and "KeyboardInterrupt" in err
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


# --------------------------------------------------------------------------- journal.end_runs_on_sigterm (opt-in)

def _opt_in(project: Path) -> Path:
    config = project / "config" / "mlflow.yaml"
    data = yaml.safe_load(config.read_text())
    data["journal"]["end_runs_on_sigterm"] = True
    config.write_text(yaml.safe_dump(data))
    return project


def test_opted_in_sigterm_mid_stream_ends_the_run_killed(project: Path):
    """With end_runs_on_sigterm, SIGTERM at random moments: the ``with`` block ends the run KILLED
    (error "SIGTERM"), the journal stays contiguous, and the process exits 143 (128 + SIGTERM)."""
    _opt_in(project)
    for status, err, records, journal in _signal_mid_stream(project, signal.SIGTERM, seed=15, trials=5):
        assert status == 128 + signal.SIGTERM, err
        assert (records[-1]["type"], records[-1]["status"], records[-1]["error"]) == ("run_end", "KILLED", "SIGTERM")
        assert journal.read_bytes().endswith(b"\n")


# Runs outside any ``with`` block: a parent, a nested child and an attached segment, all left open.
OPEN_RUNS = r"""
import signal, sys, time
from formula_foundry.tracking import get_tracker

tracker = get_tracker()
parent = tracker.start_run(run_name="parent")
child = tracker.start_run(run_name="child", nested=True)
segment = tracker.attach_run(parent.run_id)
print(signal.getsignal(signal.SIGTERM).__name__, flush=True)
i = 0
while True:
    child.log_metric("loss", i * 0.5, step=i)
    segment.log_metric("rank1", 1.0, step=i)
    i += 1
    if i == 100:
        print("logging", flush=True)
"""


def test_opted_in_sigterm_ends_runs_outside_with_blocks_at_exit(project: Path):
    """Runs never put in a ``with`` block are ended KILLED by the exit hook: parent, child, segment."""
    _opt_in(project)
    proc = subprocess.Popen([sys.executable, "-c", OPEN_RUNS], cwd=project, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "_on_sigterm", proc.stderr.read()
    assert proc.stdout.readline().strip() == "logging", proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    ends = {}
    for path in (project / "data" / "runs").rglob("*.jsonl"):
        records = list(JournalReader(path).records())
        assert [r["seq"] for r in records] == list(range(len(records)))
        head, last = records[0], records[-1]
        ends[head.get("run_name") or head["type"]] = (last["type"], last.get("status"))
    assert ends == {"parent": ("run_end", "KILLED"), "child": ("run_end", "KILLED"),
                    "run_attach": ("segment_end", None)}


# A program with a SIGTERM handler of its own: the tracker must leave it in place.
OWN_HANDLER = r"""
import signal, time
from formula_foundry.tracking import get_tracker

stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
with get_tracker().start_run(run_name="own-handler") as run:
    print(run.journal_path, flush=True)
    while not stop:
        run.log_metric("loss", 1.0)
        time.sleep(0.001)
    print("stopped by my handler", flush=True)
"""


def test_opted_in_sigterm_leaves_the_programs_own_handler(project: Path):
    _opt_in(project)
    proc = subprocess.Popen([sys.executable, "-c", OWN_HANDLER], cwd=project, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = Path(proc.stdout.readline().strip())
    assert journal.is_file(), proc.stderr.read()
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped by my handler" in out
    last = list(JournalReader(journal).records())[-1]
    assert (last["type"], last["status"]) == ("run_end", "FINISHED")
