"""A journal that is no longer the one its checkpoint describes (truncated, replaced by another run's,
copied to a second path) is reported once, shown as an error by ``status``, and never ingested."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

from tests.conftest import run_ff_ingest
from tests.ingest import ingest, store_db, tracker
from tests.watch.test_watch import configure, daemons  # noqa: F401 - the fixture


def _run(project: Path, name: str, n: int = 20):
    with tracker(project).start_run(name, experiment_name="continuity") as run:
        for i in range(n):
            run.log_metric("m", float(i), step=i)
    return run


def _rows(project: Path) -> tuple[int, int]:
    with sqlite3.connect(store_db(project)) as con:
        return (con.execute("SELECT count(*) FROM runs").fetchone()[0],
                con.execute("SELECT count(*) FROM metrics").fetchone()[0])


def _status(project: Path, capsys) -> dict[str, dict]:
    import json

    capsys.readouterr()
    run_ff_ingest(project, "status", "--json")
    return {j["path"]: j for j in json.loads(capsys.readouterr().out)["journals"]}


def test_a_truncated_journal_is_an_error_and_adds_nothing(store_project, capsys):
    run = _run(store_project, "a")
    assert ingest(store_project) == 0
    before = _rows(store_project)
    data = run.journal_path.read_bytes()
    run.journal_path.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert ingest(store_project) == 1
    err = capsys.readouterr().err
    assert "truncated" in err and str(run.journal_path) in err
    assert _rows(store_project) == before
    row = _status(store_project, capsys)[str(run.journal_path)]
    assert row["state"] == "error" and "truncated" in row["last_error"]


def test_a_journal_replaced_by_another_runs_is_not_ingested(store_project, capsys):
    a, b = _run(store_project, "a"), _run(store_project, "b", n=30)
    assert ingest(store_project) == 0
    before = _rows(store_project)
    more = _run(store_project, "c", n=50)  # longer than a's, so only the run id gives it away
    shutil.copyfile(more.journal_path, a.journal_path)
    more.journal_path.unlink()
    capsys.readouterr()
    assert ingest(store_project) == 1
    err = capsys.readouterr().err
    assert "replaced" in err and more.run_id in err
    assert _rows(store_project) == before
    assert _status(store_project, capsys)[str(a.journal_path)]["state"] == "error"
    assert b.run_id  # untouched


def test_a_copied_run_folder_is_not_ingested_twice(store_project, capsys):
    run = _run(store_project, "a")
    assert ingest(store_project) == 0
    before = _rows(store_project)
    folder = run.journal_path.parent.parent
    copy = folder.with_name(folder.name + "-copy")
    shutil.copytree(folder, copy)
    capsys.readouterr()
    assert ingest(store_project) == 1
    assert "a copy of journal" in capsys.readouterr().err
    assert _rows(store_project) == before
    rows = _status(store_project, capsys)
    assert rows[str(run.journal_path)]["state"] == "finished"
    (copied,) = [r for p, r in rows.items() if p.startswith(str(copy))]
    assert copied["state"] == "error" and "a copy of journal" in copied["last_error"]
    # a move (the original gone) is fine: the checkpoint follows the journal
    shutil.rmtree(folder)
    assert ingest(store_project) == 0
    assert _rows(store_project) == before


def test_watch_reports_a_truncated_journal_once(store_project, daemons):
    configure(store_project)
    run = _run(store_project, "a")
    daemon = daemons(store_project).wait_ready()
    daemon.wait_for("event=ingested")
    before = _rows(store_project)
    data = run.journal_path.read_bytes()
    run.journal_path.write_bytes(data[: len(data) // 2])
    daemon.wait_for("truncated")
    for _ in range(3):  # more changes to the same file: still one report
        with open(run.journal_path, "ab") as fh:
            fh.write(b"")
        run.journal_path.touch()
        time.sleep(0.5)
    assert sum("truncated" in line for line in daemon.events("journal_error")) == 1
    assert _rows(store_project) == before
    rc, _ = daemon.stop()
    assert rc == 0
