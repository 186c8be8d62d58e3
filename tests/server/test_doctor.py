"""``ff-ingest doctor`` on SQLite stores and against a server that is not running.

The PostgreSQL, HTTP and S3 variants are in the tests of those stores.
"""

from __future__ import annotations

import json
import sqlite3
import time

from tests.conftest import run_ff_ingest
from tests.server import produce
from tests.services import free_port

CHECKS = ["config", "mlflow", "journals", "store", "schema", "experiments", "artifacts", "storage", "backlog"]


def _doctor(project, capsys, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = run_ff_ingest(project, "doctor", "--json", *args)
    return code, json.loads(capsys.readouterr().out)


def _by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def test_healthy_sqlite_store_all_ok_and_no_dummy_run_left(store_project, capsys):
    """Every check OK, exit 0; the backlog goes from "all bytes" to 0 with an ingest; the dummy
    run and its artifact are gone for good afterwards."""
    from mlflow.entities import ViewType

    from tests.conftest import mlflow_client

    produce(store_project, "doc-exp")
    journals = list((store_project / "data" / "runs").glob("*/tracking/*.jsonl"))
    code, report = _doctor(store_project, capsys)
    assert code == 0 and report["status"] == "OK", report
    backlog = _by_name(report)["backlog"]["data"]
    assert backlog["pending_bytes"] == sum(p.stat().st_size for p in journals) > 0
    assert backlog["never_ingested"] == len(journals) == 2

    assert run_ff_ingest(store_project, "-q", "--sink", "api") == 0
    capsys.readouterr()
    assert run_ff_ingest(store_project, "doctor") == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [["OK", name] for name in CHECKS], text
    assert lines[-1].startswith("healthy: 9 OK, 0 warnings, 0 failures")
    assert "0 B not yet ingested (2 journals, all caught up)" in text
    assert "deleted its artifacts and the run permanently" in text

    client = mlflow_client(store_project)
    exp = client.get_experiment_by_name("ff-doctor")
    assert client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL) == []
    doctor_root = store_project / "data" / "mlflow" / "artifacts" / "ff-doctor"
    assert [p for p in doctor_root.rglob("*")] == []
    with sqlite3.connect(store_project / "data" / "mlflow" / "mlruns.db") as con:  # hard-deleted rows
        assert con.execute("SELECT count(*) FROM runs WHERE experiment_id = ?",
                           (exp.experiment_id,)).fetchone() == (0,)


def test_stopped_server_exit_3_quickly(project, capsys):
    """Nobody listens on the port: exit 3 within seconds, a clear reason, the store checks skipped."""
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    capsys.readouterr()
    code = run_ff_ingest(project, "doctor", "--tracking-uri", url)
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert code == 3, out
    assert elapsed < 20, f"took {elapsed:.1f} s"
    assert f"FAIL  store        cannot reach {url}: connection refused; is the server running?" in out
    for name in ("schema", "experiments", "artifacts"):
        assert f"SKIP  {name:<12} the store is not reachable" in out
    assert f"the store {url} is unreachable" in out.splitlines()[-1]


def test_missing_sqlite_store_is_a_warning_and_is_not_created(project, capsys):
    code, report = _doctor(project, capsys)
    checks = _by_name(report)
    assert code == 0 and report["status"] == "WARN"
    assert checks["store"]["status"] == "WARN" and "does not exist yet" in checks["store"]["detail"]
    assert checks["journals"]["status"] == "WARN"  # data/runs does not exist either
    assert checks["artifacts"]["status"] == "SKIP"
    assert not (project / "data" / "mlflow" / "mlruns.db").exists()


def test_config_error_is_a_failure(project, capsys):
    """A config error fails the config check and exits 2, as every command's config error does."""
    (project / "config" / "mlflow.yaml").write_text("tracking:\n  colour: blue\n")
    code, report = _doctor(project, capsys)
    assert code == 2
    checks = _by_name(report)
    assert checks["config"]["status"] == "FAIL" and "tracking.colour" in checks["config"]["detail"]
    assert {c["status"] for name, c in checks.items() if name != "config"} == {"SKIP"}


def test_journal_stopped_at_an_error_is_a_warning(store_project, capsys):
    produce(store_project, "doc-corrupt")
    journal = min((store_project / "data" / "runs").glob("*/tracking/*.jsonl"))
    lines = journal.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b'"', b"'", 2)  # a corrupt record in the middle
    journal.write_bytes(b"\n".join(lines))
    assert run_ff_ingest(store_project, "-q", "--sink", "api") == 1
    code, report = _doctor(store_project, capsys)
    backlog = _by_name(report)["backlog"]
    assert code == 0 and backlog["status"] == "WARN", backlog
    assert "1 journal(s) stopped at an error" in backlog["detail"] and str(journal) in backlog["detail"]
    assert backlog["data"]["pending_bytes"] > 0


def test_schema_older_or_newer_than_mlflow_fails(store_project, capsys):
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    script = ScriptDirectory.from_config(_get_alembic_config(db_url=""))
    older = list(script.walk_revisions())[1].revision
    db = store_project / "data" / "mlflow" / "mlruns.db"
    for revision, expected in ((older, "mlflow db upgrade"), ("ffffffffffff", "newer MLflow")):
        with sqlite3.connect(db) as con:
            con.execute("UPDATE alembic_version SET version_num = ?", (revision,))
        code, report = _doctor(store_project, capsys)
        checks = _by_name(report)
        assert code == 1 and checks["schema"]["status"] == "FAIL"
        assert expected in checks["schema"]["detail"]
        assert checks["experiments"]["status"] == checks["artifacts"]["status"] == "SKIP"
