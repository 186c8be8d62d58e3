"""Records with a valid checksum but a wrong shape (issue 14, class 2): each is its journal's error with file
and line; the good records before it are ingested, nothing else in the pass is affected, no traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from formula_foundry.tracking.framing import frame
from formula_foundry.tracking.journal import JournalReader
from tests.conftest import mlflow_client
from tests.ingest import child_env, ingest, ingest_cmd, ingest_json, tracker

STEPS = 10
BAD_LINE = 6  # run_start, param, metrics at steps 0..2, then the bad record


def _run(t, i: int):
    with t.start_run(f"run-{i:02d}", experiment_name="bad-records") as run:
        run.log_param("i", i)
        for step in range(STEPS):
            run.log_metric("m", float(step), step=step)
        run.set_tag("t", "x")
    return run


def _insert(path: Path, line: int, bad: dict, *, replace_first: dict | None = None) -> None:
    """Rewrite ``path`` with ``bad`` as line ``line`` (valid checksums, contiguous seq)."""
    records = list(JournalReader(path).records())
    if replace_first is not None:
        records[0] = {**records[0], **replace_first}
    if bad:
        records.insert(line - 1, {"v": 1, "seq": 0, "ts": records[line - 2]["ts"], **bad})
    lines = []
    for seq, record in enumerate(records):
        record["seq"] = seq
        lines.append(frame(record))
    path.write_bytes(b"".join(lines))


BAD_RECORDS = {
    "metric without key": {"type": "metric", "value": 1.0, "step": 3},
    "value 'nan' as a string": {"type": "metric", "key": "m", "value": "nan", "step": 3},
    "value a list": {"type": "metric", "key": "m", "value": [1.0], "step": 3},
    "tags not an object": {"type": "tags", "values": ["a", "b"]},
    "2**70 as a REAL step": {"type": "metric", "key": "m", "value": 1.0, "step": float(2**70)},
    "a key with NUL": {"type": "metric", "key": "m\x00x", "value": 1.0, "step": 3},
    "a string timestamp": {"type": "metric", "key": "m", "value": 1.0, "step": 3, "ts": "1763913600000"},
    "NUL in a logical path": {"type": "artifact_ref", "logical_path": "a\x00b", "digest": "0" * 64,
                              "size_bytes": 1, "store_uri": None, "media_type": None},
    "a second run_start": {"type": "run_start", "run_id": "b" * 32, "journal_id": "c" * 16, "experiment": "x",
                           "run_name": None, "parent_run_id": None, "tags": {}},
}


def test_25_journals_bad_records_are_their_journals_errors(store_project):
    """25 journals, 9 with a hand-made bad record at line 6 and one whose run names itself as its parent:
    the real CLI exits 1, names file and line of each, prints no traceback; the 15 good journals are
    complete; each bad journal holds the records before its bad line (steps 0..2), nothing after."""
    t = tracker(store_project)
    runs = [_run(t, i) for i in range(25)]
    bad = dict(zip(BAD_RECORDS, runs[:len(BAD_RECORDS)]))
    for name, run in bad.items():
        _insert(run.journal_path, BAD_LINE, BAD_RECORDS[name])
    self_parent = runs[len(BAD_RECORDS)]
    _insert(self_parent.journal_path, 0, {}, replace_first={"parent_run_id": self_parent.run_id})
    good = runs[len(BAD_RECORDS) + 1:]

    proc = subprocess.run(ingest_cmd(store_project), env=child_env(), capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(BAD_RECORDS) + 1, proc.stderr
    for name, run in bad.items():
        (line,) = [e for e in errors if str(run.journal_path) in e]
        assert f"{run.journal_path}:{BAD_LINE} (byte offset " in line, (name, line)
    (line,) = [e for e in errors if str(self_parent.journal_path) in e]
    assert f"{self_parent.journal_path}:1 " in line and "parent" in line

    client = mlflow_client(store_project)
    experiment = client.get_experiment_by_name("bad-records").experiment_id
    by_id = {r.data.tags["ff.run_id"]: r for r in client.search_runs([experiment], max_results=1000)}
    for run in good:
        stored = by_id[run.run_id]
        history = client.get_metric_history(stored.info.run_id, "m")
        assert sorted(m.step for m in history) == list(range(STEPS))
        assert stored.info.status == "FINISHED" and stored.data.params == {"i": str(runs.index(run))}
        assert stored.data.tags["t"] == "x"
    for name, run in bad.items():
        stored = by_id[run.run_id]
        history = client.get_metric_history(stored.info.run_id, "m")
        assert sorted(m.step for m in history) == [0, 1, 2], name
        assert stored.info.status == "RUNNING" and "t" not in stored.data.tags, name
    assert self_parent.run_id not in by_id

    # The next pass reports the same errors again and adds nothing.
    again = subprocess.run(ingest_cmd(store_project), env=child_env(), capture_output=True, text=True,
                           timeout=300, check=False)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert sorted(line for line in again.stderr.splitlines() if line.startswith("error: ")) == sorted(errors)


def test_skip_corrupt_passes_over_a_bad_record_and_reports_it(store_project, capsys):
    """``--skip-corrupt`` treats a wrong-shaped record as a corrupt line: a warning naming file and line,
    the records after it are ingested, and the checkpoint moves past it."""
    t = tracker(store_project)
    run = _run(t, 0)
    _insert(run.journal_path, BAD_LINE, BAD_RECORDS["metric without key"])
    code, summary = ingest_json(store_project, capsys, "--skip-corrupt")
    assert code == 0
    (detail,) = summary["details"]
    assert any(f"{run.journal_path}:{BAD_LINE} (byte offset" in w for w in detail["warnings"])
    client = mlflow_client(store_project)
    (stored,) = client.search_runs([client.get_experiment_by_name("bad-records").experiment_id])
    assert sorted(m.step for m in client.get_metric_history(stored.info.run_id, "m")) == list(range(STEPS))
    assert stored.info.status == "FINISHED"
    code, summary = ingest_json(store_project, capsys, "--skip-corrupt")
    assert code == 0 and not summary["details"][0]["warnings"]


def test_a_loop_of_parent_runs_is_an_error_not_a_recursion(store_project, capsys):
    """Two runs naming each other as parent (a RecursionError in the parent ordering before): both
    journals are errors naming line 1; a third, healthy journal is ingested."""
    t = tracker(store_project)
    a, b, healthy = _run(t, 0), _run(t, 1), _run(t, 2)
    _insert(a.journal_path, 0, {}, replace_first={"parent_run_id": b.run_id})
    _insert(b.journal_path, 0, {}, replace_first={"parent_run_id": a.run_id})
    code, summary = ingest_json(store_project, capsys)
    assert code == 1
    errors = {d["path"]: d["errors"] for d in summary["details"] if d["errors"]}
    assert set(errors) == {str(a.journal_path), str(b.journal_path)}
    assert all("own ancestor" in e[0] and ":1 (byte offset 0)" in e[0] for e in errors.values())
    client = mlflow_client(store_project)
    (stored,) = client.search_runs([client.get_experiment_by_name("bad-records").experiment_id])
    assert stored.data.tags["ff.run_id"] == healthy.run_id and stored.info.status == "FINISHED"


def test_an_unreadable_journal_is_its_own_error(store_project, capsys, monkeypatch):
    """A journal that cannot be opened (PermissionError) is that journal's error; the others go on."""
    import builtins

    import formula_foundry.tracking.journal as journal_module

    t = tracker(store_project)
    locked, healthy = _run(t, 0), _run(t, 1)

    def refuse(path) -> None:
        if Path(path) == locked.journal_path:
            raise PermissionError(13, "Permission denied", str(path))

    class GuardedOs:  # the reader's os.open (and open()) refuse this one journal, as chmod 000 would
        def __getattr__(self, name):
            return getattr(os, name)

        def open(self, path, *args, **kwargs):
            refuse(path)
            return os.open(path, *args, **kwargs)

    def guarded_open(path, *args, **kwargs):
        refuse(path)
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(journal_module, "open", guarded_open, raising=False)
    monkeypatch.setattr(journal_module, "os", GuardedOs())
    code, summary = ingest_json(store_project, capsys)
    assert code == 1
    errors = {d["path"]: d["errors"] for d in summary["details"] if d["errors"]}
    assert list(errors) == [str(locked.journal_path)]
    assert "PermissionError" in errors[str(locked.journal_path)][0]
    client = mlflow_client(store_project)
    (stored,) = client.search_runs([client.get_experiment_by_name("bad-records").experiment_id])
    assert stored.data.tags["ff.run_id"] == healthy.run_id


@pytest.mark.parametrize("sink", ["api", "bulk"])
def test_both_sinks_stop_at_the_bad_record(store_project, capsys, sink):
    """The API sink (record by record) and the bulk sink (list-level checks of metric runs) stop at the
    same line with the same message."""
    t = tracker(store_project)
    run = _run(t, 0)
    _insert(run.journal_path, BAD_LINE, BAD_RECORDS["2**70 as a REAL step"])
    assert ingest(store_project, "--sink", sink) == 1
    err = capsys.readouterr().err
    assert f"error: {run.journal_path}:{BAD_LINE} (byte offset " in err and "step must be an integer" in err
