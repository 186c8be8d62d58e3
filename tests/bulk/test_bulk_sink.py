"""The bulk SQL sink on SQLite: same store as the API sink, exactly once under SIGKILL, schema guard.

Every test runs ``ff-ingest`` (in-process, or as a subprocess where it is killed)
against real MLflow SQLite stores copied from the session's template.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import time
from pathlib import Path

import pytest

from tests.bulk.conftest import (
    assert_kills_landed,
    differences,
    dump_store,
    kill_at_random_moments,
    row_counts,
    sibling_project,
    store_uri,
    table_dump,
    tracker,
    write_backfill,
    write_journals,
)
from tests.conftest import run_ff_ingest

pytestmark = pytest.mark.usefixtures("_quiet_mlflow")

SEED = int(os.environ.get("FF_CRASH_SEED") or 8)


@pytest.fixture
def _quiet_mlflow(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def ingest(project: Path, sink: str, capsys, *args: str) -> tuple[int, dict]:
    """``ff-ingest --json --sink SINK`` in-process; (exit code, summary)."""
    capsys.readouterr()
    code = run_ff_ingest(project, "--sink", sink, "--json", *args)
    return code, json.loads(capsys.readouterr().out)


def checkpoint_rows(db: Path, *, timeout: float = 5.0) -> list[tuple]:
    """The bulk sink's checkpoint rows (read-write: after a SIGKILL the first reader rolls back)."""
    con = sqlite3.connect(db, timeout=timeout)
    try:
        return con.execute("SELECT journal_id, byte_offset, records, ended FROM ff_ingest_checkpoints").fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        con.close()


def db_of(project: Path) -> Path:
    return project / "data" / "mlflow" / "mlruns.db"


# --------------------------------------------------------------------------- the schema guard (pure)

def test_verified_revisions_include_the_installed_mlflow_head():
    """An MLflow upgrade that moves the schema head fails here first: re-verify, then pin the new head."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    from formula_foundry.tracking.ingest.stores.bulk.schema import VERIFIED_REVISIONS

    assert _get_latest_schema_revision() in VERIFIED_REVISIONS


def test_mlflows_models_have_the_columns_the_bulk_sink_writes():
    from formula_foundry.tracking.ingest.stores.bulk.schema import model_problem

    assert model_problem() is None


def test_revision_problem_names_the_revision():
    from formula_foundry.tracking.ingest.stores.bulk.schema import VERIFIED_REVISIONS, revision_problem

    head = VERIFIED_REVISIONS[-1]
    assert revision_problem([head], head) is None
    assert "0000deadbeef" in revision_problem(["0000deadbeef"], "0000deadbeef")
    assert "no alembic revision" in revision_problem([], head)
    assert "differs from the installed" in revision_problem([head], "1111feedface")
    assert "several" in revision_problem([head, "0000deadbeef"], head)


def test_non_sql_store_falls_back_or_refuses(project, caplog):
    """auto: a store the bulk sink does not support is a one-line notice; bulk: an error."""
    from formula_foundry.errors import IngestError
    from formula_foundry.tracking import load_config
    from formula_foundry.tracking.ingest.stores.connect import open_bulk_sink

    cfg = load_config(project / "config" / "mlflow.yaml")
    with caplog.at_level(logging.WARNING, logger="formula_foundry.ingest"):
        assert open_bulk_sink(cfg, "mysql://u@db/mlflow", project / "state", forced=False) is None
    assert "bulk sink not used" in caplog.text and "mysql" in caplog.text
    with pytest.raises(IngestError, match="mysql"):
        open_bulk_sink(cfg, "mysql://u@db/mlflow", project / "state", forced=True)


# --------------------------------------------------------------------------- equivalence

def test_api_and_bulk_sinks_give_identical_stores(store_project, tmp_path, template_store, capsys):
    """Every event type, nested runs, NaN/±inf, duplicates, latest-metric ties, a conflicting param
    from an attached segment, artifact references: through the API sink into one store and the
    bulk sink into another, the stores are equal through MlflowClient and row for row."""
    write_journals(store_project)
    bulk = sibling_project(tmp_path, store_project, "bulk", template_store=template_store)
    code_api, api = ingest(store_project, "api", capsys)
    code_bulk, blk = ingest(bulk, "bulk", capsys)
    assert (api["sink"], blk["sink"]) == ("api", "bulk")
    assert code_api == code_bulk == 1  # the conflicting param, reported by both
    errors = [(d["run_id"], d["errors"]) for d in api["details"] if d["errors"]]
    assert errors == [(d["run_id"], d["errors"]) for d in blk["details"] if d["errors"]]
    assert len(errors) == 1 and "'layers'" in errors[0][1][0]
    assert api["records"] == blk["records"] and api["runs_created"] == blk["runs_created"] == 6

    a, b = dump_store(store_uri(store_project)), dump_store(store_uri(bulk))
    assert differences(a, b) == []
    assert row_counts(store_uri(store_project)) == row_counts(store_uri(bulk))
    # the cases are really there
    alpha = next(r for r in a.values() if r["name"] == "alpha-renamed")
    assert alpha["latest_rows"]["tie"] == (10, 1_700_000_000_000, "NaN")
    assert alpha["latest_rows"]["special"] == (11, 1_700_000_000_000, (1.7976931348623157e308).hex())
    assert alpha["latest_rows"]["ooo"] == (5, 1_700_000_000_001, (2.5).hex())
    assert alpha["params"]["layers"] == "4" and alpha["tags"]["rank"] == "1"
    assert "artifact_refs/models/best.pt.json" in alpha["artifacts"]
    assert sorted(r["status"] for r in a.values()) == ["FAILED", "FINISHED", "FINISHED", "FINISHED", "KILLED",
                                                       "RUNNING"]


def test_replay_over_a_complete_store_changes_nothing(store_project, capsys):
    """Replaying again, and replaying every journal from the start (checkpoints dropped), leaves
    every table as it was: the insert-or-ignore / upsert path is idempotent."""
    write_journals(store_project, points=300, big_keys=50)
    code, first = ingest(store_project, "bulk", capsys)
    assert code == 1 and first["sink"] == "bulk"
    uri = store_uri(store_project)
    before, counts = dump_store(uri), row_counts(uri)
    code, again = ingest(store_project, "bulk", capsys)
    assert code == 0 and again["records"] == 0
    with sqlite3.connect(db_of(store_project)) as con:
        con.execute("DELETE FROM ff_ingest_checkpoints")
    code, scratch = ingest(store_project, "bulk", capsys)
    assert scratch["records"] == first["records"] and scratch["runs_created"] == 0
    assert differences(before, dump_store(uri)) == []
    assert row_counts(uri) == counts


def test_switching_from_the_api_sink_resumes_from_its_checkpoints(store_project, capsys):
    """Journals ingested by the API sink are not replayed by the bulk sink; status reads the table."""
    from formula_foundry.tracking import load_config
    from formula_foundry.tracking.ingest.stores.checkpoints import SqlCheckpoints
    from formula_foundry.tracking.ingest.stores.connect import open_checkpoints

    t = tracker(store_project)
    with t.start_run("first", experiment_name="switch") as run:
        for i in range(50):
            run.log_metric("m", i * 1.0, step=i)
    assert ingest(store_project, "api", capsys)[0] == 0
    with t.start_run("second", experiment_name="switch") as run:
        run.log_metric("m", 1.0, step=0)
    code, summary = ingest(store_project, "bulk", capsys)
    assert code == 0 and summary["runs_created"] == 1
    states = {Path(d["path"]).name.split(".")[0]: (d["state"], d["records"]) for d in summary["details"]}
    assert sorted(states.values()) == [("ingested", 3), ("up-to-date", 0)]
    store = open_checkpoints(load_config(store_project / "config" / "mlflow.yaml"))
    try:
        assert isinstance(store, SqlCheckpoints)
        assert len(store.all()) == 2 and all(cp.ended for cp in store.all())
    finally:
        store.close()


# --------------------------------------------------------------------------- transactions

def test_group_commit_keeps_data_and_checkpoints_together(store_project, tmp_path):
    """Full batches share one open transaction: until it commits, neither their metric rows nor their
    checkpoints are visible; a crash (rollback) loses both; a commit publishes both."""
    from formula_foundry.tracking import load_config
    from formula_foundry.tracking.events import MetricPoint
    from formula_foundry.tracking.ingest.stores.connect import open_bulk_sink
    from formula_foundry.tracking.ingest.sink import Batch, Checkpoint
    from formula_foundry.tracking.journal import ReadPosition

    cfg = load_config(store_project / "config" / "mlflow.yaml")
    sink = open_bulk_sink(cfg, store_uri(store_project), tmp_path / "state", forced=True)
    journal = tmp_path / "big.jsonl"
    journal.write_bytes(b"x" * (4 << 20))  # far from its end: full batches keep the group open
    db = db_of(store_project)

    def visible() -> tuple[int, int]:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return (con.execute("SELECT count(*) FROM metrics").fetchone()[0],
                    con.execute("SELECT count(*) FROM ff_ingest_checkpoints").fetchone()[0])
        finally:
            con.close()

    try:
        info = sink.create_run(experiment_id=sink.experiment_id("group"), run_id="a" * 32, run_name="g",
                               start_time=1, tags={"ff.run_id": "a" * 32})
        for n in (1, 2):
            points = [MetricPoint("m", float(i), 1000 + i, i) for i in range(1000 * n - 1000, 1000 * n)]
            batch = Batch(metrics=points, records=1000)
            sink.commit(info.mlflow_run_id, batch, Checkpoint("j1", str(journal), "a" * 32, info.mlflow_run_id,
                                                              ReadPosition(n * 1000, n * 1000, n * 1000), n * 1000))
            assert visible() == (0, 0)
        sink._abort()  # what a SIGKILL does to the open transaction
        assert visible() == (0, 0) and sink.checkpoints.get("j1") is None
        sink.commit(info.mlflow_run_id, Batch(metrics=[MetricPoint("m", 5.0, 5, 5)], records=1),
                    Checkpoint("j1", str(journal), "a" * 32, info.mlflow_run_id, ReadPosition(10, 2, 1), 1))
        assert visible() == (1, 1)  # a short batch (a journal's tail) commits at once
    finally:
        sink.close()


def test_deleted_run_refuses_data_as_mlflow_does(store_project, tmp_path):
    from mlflow.tracking import MlflowClient

    from formula_foundry.errors import StoreRejectedError
    from formula_foundry.tracking import load_config
    from formula_foundry.tracking.events import MetricPoint
    from formula_foundry.tracking.ingest.stores.connect import open_bulk_sink
    from formula_foundry.tracking.ingest.sink import Batch, Checkpoint

    cfg = load_config(store_project / "config" / "mlflow.yaml")
    sink = open_bulk_sink(cfg, store_uri(store_project), tmp_path / "state", forced=True)
    try:
        info = sink.create_run(experiment_id=sink.experiment_id("del"), run_id="b" * 32, run_name="d",
                               start_time=1, tags={"ff.run_id": "b" * 32})
        MlflowClient(store_uri(store_project)).delete_run(info.mlflow_run_id)
        with pytest.raises(StoreRejectedError, match="deleted"):
            sink.commit(info.mlflow_run_id, Batch(metrics=[MetricPoint("m", 1.0, 1, 1)], records=1),
                        Checkpoint("j", str(tmp_path / "j.jsonl"), "b" * 32, info.mlflow_run_id))
        assert sink.checkpoints.get("j") is None
    finally:
        sink.close()


def test_latest_metrics_follow_mlflows_rule_on_random_sequences(store_project, tmp_path):
    """Random points with many ties (few steps, timestamps and values; NaN, ±0, ±inf) in random
    batches: MLflow's log_batch into one run and the bulk sink into another leave the same
    metric rows and the same latest_metrics rows."""
    import math

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from formula_foundry.tracking import load_config
    from formula_foundry.tracking.events import MetricPoint
    from formula_foundry.tracking.ingest.stores.connect import open_bulk_sink
    from formula_foundry.tracking.ingest.sink import Batch, Checkpoint

    rng = random.Random(11)
    # key "a": every point ties on (step, timestamp, value) - NaN is stored as 0 - so the order
    # decides (the first one stays latest; the last one differs from it); key "b": any value.
    values = [0.0, -0.0, 1.0, 2.0, -1.0, math.nan, math.inf, -math.inf]
    points = [MetricPoint("a", math.nan, 1, 1)]
    for _ in range(400):
        if rng.random() < 0.3:
            points.append(MetricPoint("a", rng.choice([0.0, math.nan]), 1, 1))
        else:
            points.append(MetricPoint("b", rng.choice(values), rng.randint(0, 2), rng.randint(0, 2)))
    batches, i = [], 0
    while i < len(points):
        size = rng.randint(1, 40)
        seen, batch = set(), []
        for p in points[i:i + size]:  # de-duplicated on the metric key inside a batch, as plan.py does
            ident = (p.key, p.timestamp, p.step, 0.0 if math.isnan(p.value) else p.value, math.isnan(p.value))
            if ident not in seen:
                seen.add(ident)
                batch.append(p)
        batches.append(batch)
        i += size
    batches.append([MetricPoint("a", 0.0, 1, 1)])  # a tie with the first point, alone in the last batch

    uri = store_uri(store_project)
    client = MlflowClient(uri)
    exp = client.create_experiment("latest-rule")
    api_run = client.create_run(exp, tags={"ff.run_id": "c" * 32}).info.run_id
    sink = open_bulk_sink(load_config(store_project / "config" / "mlflow.yaml"), uri, tmp_path / "s", forced=True)
    try:
        bulk_run = sink.create_run(experiment_id=exp, run_id="d" * 32, run_name="b", start_time=1,
                                   tags={"ff.run_id": "d" * 32}).mlflow_run_id
        for n, batch in enumerate(batches):
            client.log_batch(api_run, metrics=[Metric(p.key, p.value, p.timestamp, p.step) for p in batch])
            sink.commit(bulk_run, Batch(metrics=batch, records=len(batch)),
                        Checkpoint("j", str(tmp_path / "none.jsonl"), "d" * 32, bulk_run))
            if n % 7 == 0:
                sink.flush()
    finally:
        sink.close()
    with sqlite3.connect(db_of(store_project)) as con:
        def rows(table: str, run: str) -> list:
            return sorted(con.execute(f"SELECT key, step, timestamp, value, is_nan FROM {table} "
                                      "WHERE run_uuid = ?", (run,)).fetchall())

        assert rows("metrics", api_run) == rows("metrics", bulk_run)
        assert rows("latest_metrics", api_run) == rows("latest_metrics", bulk_run)
        assert rows("latest_metrics", api_run)[0] == ("a", 1, 1, 0.0, 1)  # the first point, NaN


def test_set_status_ends_a_run_as_set_terminated_does(store_project, tmp_path):
    """The watch daemon's stale-run action: status and end time on the run; a deleted run refuses."""
    from mlflow.tracking import MlflowClient

    from formula_foundry.errors import StoreRejectedError
    from formula_foundry.tracking import load_config
    from formula_foundry.tracking.ingest.stores.connect import open_bulk_sink

    client = MlflowClient(store_uri(store_project))
    sink = open_bulk_sink(load_config(store_project / "config" / "mlflow.yaml"), store_uri(store_project),
                          tmp_path / "state", forced=True)
    try:
        exp = sink.experiment_id("stale")
        runs = [sink.create_run(experiment_id=exp, run_id=c * 32, run_name=c, start_time=5,
                                tags={"ff.run_id": c * 32}).mlflow_run_id for c in "ef"]
        sink.set_status(runs[0], "KILLED", 1234)
        info = client.get_run(runs[0]).info
        assert (info.status, info.end_time, info.lifecycle_stage) == ("KILLED", 1234, "active")
        client.delete_run(runs[1])
        with pytest.raises(StoreRejectedError, match="deleted"):
            sink.set_status(runs[1], "FAILED", 99)
    finally:
        sink.close()


# --------------------------------------------------------------------------- the schema guard (stores)

def _set_revision(db: Path, revision: str) -> None:
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = ?", (revision,))


def test_unverified_revision_auto_falls_back_to_the_api_sink(store_project, capsys, caplog, monkeypatch):
    """A newer MLflow (simulated: the store and MLflow's head at a revision the bulk sink was not
    verified on): auto ingests through the API sink after a one-line notice naming the revision."""
    import mlflow.store.db.utils as db_utils

    _set_revision(db_of(store_project), "ffffffffffff")
    monkeypatch.setattr(db_utils, "_get_latest_schema_revision", lambda: "ffffffffffff")
    t = tracker(store_project)
    with t.start_run("guarded", experiment_name="guard") as run:
        run.log_metric("m", 1.0, step=0)
    with caplog.at_level(logging.WARNING, logger="formula_foundry.ingest"):
        code, summary = ingest(store_project, "auto", capsys)
    assert code == 0 and summary["sink"] == "api" and summary["records"] == 3
    notices = [r.getMessage() for r in caplog.records if "bulk sink not used" in r.getMessage()]
    assert len(notices) == 1 and "ffffffffffff" in notices[0] and "\n" not in notices[0]
    runs = dump_store(store_uri(store_project))
    assert list(runs) == [run.run_id] and runs[run.run_id]["latest"] == {"m": (1.0).hex()}

    code = run_ff_ingest(store_project, "--sink", "bulk", "-q")
    assert code != 0
    assert "ffffffffffff" in capsys.readouterr().err


def test_unknown_revision_forced_bulk_exits_with_the_revision(store_project, capsys):
    """A store at a revision nobody here knows: --sink bulk refuses before touching it, naming it."""
    _set_revision(db_of(store_project), "0123456789ab")
    tracker(store_project).start_run("x", experiment_name="guard").end()
    code = run_ff_ingest(store_project, "--sink", "bulk", "-q")
    err = capsys.readouterr().err
    assert code != 0
    assert "--sink bulk" in err and "0123456789ab" in err and "verified" in err
    assert checkpoint_rows(db_of(store_project)) == []


# --------------------------------------------------------------------------- crash injection

def test_sigkill_at_random_moments_then_rerun_equals_one_clean_ingest(store_project, tmp_path, template_store,
                                                                      launcher):
    """SIGKILL the bulk ingester again and again (start-up, run creation, inside open groups, at
    commits), then rerun: no orphan or duplicate run, and every row equal to one clean ingest."""
    rng = random.Random(SEED)
    total = write_backfill(store_project)
    reference = sibling_project(tmp_path, store_project, "reference", template_store=template_store)
    started = time.monotonic()
    assert run_ff_ingest(reference, "--sink", "bulk", "-q") == 1  # the conflicting param
    pace = time.monotonic() - started
    assert sum(r[2] for r in checkpoint_rows(db_of(reference))) == total

    def progress() -> int:
        try:
            return sum(r[2] for r in checkpoint_rows(db_of(store_project), timeout=0.5))
        except sqlite3.OperationalError:  # locked by a committing ingester: ask again later
            return -1

    args = ["--sink", "bulk", "-q", "--config", str(store_project / "config" / "mlflow.yaml")]
    attempts = kill_at_random_moments(launcher, args, tmp_path / "ingesters.log", progress, total, rng, pace=pace)
    print(f"bulk crash test (seed {SEED}): (exit status, records checkpointed) per attempt {attempts}, "
          f"of {total}")
    assert_kills_landed(attempts, total)
    assert run_ff_ingest(store_project, "--sink", "bulk", "-q") in (0, 1)
    assert run_ff_ingest(store_project, "--sink", "bulk", "-q") == 0  # nothing left
    crashed, clean = table_dump(store_uri(store_project)), table_dump(store_uri(reference))
    assert crashed == clean
    assert len(crashed["metrics"]) > 30_000
