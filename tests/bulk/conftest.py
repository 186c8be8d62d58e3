"""Fixtures and helpers of the bulk-sink tests (issue 8).

* ``postgres_url`` - a fresh, empty PostgreSQL database for one test, dropped
  afterwards; ``postgres_url_factory`` makes more (optionally as copies of a
  template). Skipped with the reason when no server answers, unless
  ``FF_REQUIRE_POSTGRES=1`` (then the test fails). Server:
  ``$FF_TEST_POSTGRES_URL`` (an admin connection to an existing database),
  default ``postgresql://postgres@127.0.0.1:5432/test``. Written to move to
  ``tests/conftest.py`` unchanged.
* ``postgres_template`` - one MLflow store per session, created by MLflow itself
  (every migration, in a child process so no connection lingers), for
  ``CREATE DATABASE ... TEMPLATE`` copies.
* :func:`write_journals` - journals with every event type and the hard cases;
  :func:`sibling_project` - a second project reading the same journals into its
  own store; :func:`dump_store` / :func:`row_counts` - a store as seen through
  ``MlflowClient`` (and its tables' row counts), keyed by producer run id, so two
  stores compare with ``==`` (SQLite and PostgreSQL alike).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from tests.conftest import POSTGRES_ADMIN_URL, REPO, subprocess_env
from tests.conftest import with_database as _with_database

ADMIN_URL = POSTGRES_ADMIN_URL
TS0 = 1_700_000_000_000


# --------------------------------------------------------------------------- PostgreSQL

def _admin_execute(admin: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(admin, connect_timeout=5, autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture
def postgres_url_factory(postgres_admin: str):
    """``make(template=None) -> url``: fresh databases ``ff_test_<random>``, all dropped at teardown."""
    made: list[str] = []

    def make(template: str | None = None) -> str:
        name = f"ff_test_{uuid.uuid4().hex[:12]}"
        _admin_execute(postgres_admin, f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        made.append(name)
        return _with_database(postgres_admin, name)

    yield make
    for name in made:
        _admin_execute(postgres_admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_url_factory) -> str:
    """A fresh, empty PostgreSQL database for this test."""
    return postgres_url_factory()


@pytest.fixture(scope="session")
def postgres_template(postgres_admin: str):
    """The name of a database holding a complete MLflow store, created by MLflow (session-wide)."""
    name = f"ff_template_{uuid.uuid4().hex[:12]}"
    _admin_execute(postgres_admin, f'CREATE DATABASE "{name}"')
    try:
        code = "import sys; from mlflow.tracking import MlflowClient; MlflowClient(sys.argv[1]).search_experiments()"
        subprocess.run([sys.executable, "-c", code, _with_database(postgres_admin, name)], check=True,
                       env=subprocess_env(MLFLOW_DISABLE_TELEMETRY="true"), capture_output=True, timeout=180)
        yield name
    finally:
        _admin_execute(postgres_admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------- projects and journals

def store_uri(project: Path) -> str:
    return f"sqlite:///{project / 'data' / 'mlflow' / 'mlruns.db'}"


def sibling_project(tmp_path: Path, source: Path, name: str, *, template_store: Path | None = None) -> Path:
    """A second project reading ``source``'s journals into its own store (a template copy) and artifacts."""
    root = tmp_path / name
    (root / "config").mkdir(parents=True)
    data = yaml.safe_load((source / "config" / "mlflow.yaml").read_text())
    data["journal"]["root"] = str(source / "data" / "runs")
    (root / "config" / "mlflow.yaml").write_text(yaml.safe_dump(data))
    if template_store is not None:
        db = root / "data" / "mlflow" / "mlruns.db"
        db.parent.mkdir(parents=True)
        shutil.copy(template_store, db)
    return root


def tracker(project: Path):
    from formula_foundry.tracking import Tracker, load_config

    return Tracker(load_config(project / "config" / "mlflow.yaml"))


_DEAD_PRODUCER = textwrap.dedent("""
    import os, sys
    from formula_foundry.tracking import Tracker, load_config
    run = Tracker(load_config(sys.argv[1])).start_run("died", experiment_name="bulk-b")
    run.log_param("p", "1")
    for i in range(50):
        run.log_metric("m", i * 0.25, step=i)
    os._exit(0)  # no run_end: the run stays RUNNING
""")


def write_journals(project: Path, *, points: int = 1500, big_keys: int = 40) -> dict[str, str]:
    """Journals with every event type and the hard cases; returns {name: producer run id}.

    Runs: ``alpha`` (manifest, params, ``metrics`` records of 4 keys x ``points`` steps, one
    ``log_metrics`` record of ``big_keys`` keys (split across batches), NaN/±inf, exact duplicates
    in one batch and across batches, ties that MLflow's latest-metric rule settles by order, steps
    logged out of order, tags overwritten, ``mlflow.runName`` renamed, artifact references) with
    three nested children ending FINISHED / FAILED (with an error) / KILLED; a segment attached
    to ``alpha`` (same param again, a conflicting param, more metrics, a tag); ``beta`` in a second
    experiment without a run name; ``died``, whose producer died (stays RUNNING).
    """
    tr = tracker(project)
    ids: dict[str, str] = {}
    manifest = {"git_sha": "0" * 40, "design_doc_sha256": "1" * 64, "environment_fingerprint": "env",
                "determinism_mode": "strict", "seeds": {"numpy": 7, "torch": 11}}
    with tr.start_run("alpha", experiment_name="bulk-a", manifest=manifest, tags={"team": "aero"}) as a:
        ids["alpha"] = a.run_id
        a.log_params({"lr": "0.1", "layers": "4"})
        a.log_param("opt", "adam")
        a.log_param("opt", "adam")  # the same value again: no new record
        a.log_metric("dup", 1.5, step=1, timestamp=TS0)
        a.log_metric("dup", 1.5, step=1, timestamp=TS0)  # exact duplicate in the same batch
        for i in range(points):
            a.log_metrics({"loss": 1.0 / (i + 1), "acc": i / points, "lr": 0.1, "grad": math.sin(i)}, step=i)
            if i % 500 == 0:
                a.set_tag("phase", f"step-{i}")
        a.log_metrics({f"layer{k:04d}/norm": k * 0.5 for k in range(big_keys)}, step=3)
        # Ties: (step, timestamp, value) equal, is_nan differs - the first logged stays latest.
        a.log_metric("tie", math.nan, step=10, timestamp=TS0)
        a.log_metric("tie", 0.0, step=10, timestamp=TS0)
        a.log_metric("tie", -0.0, step=10, timestamp=TS0)  # equal to 0.0 in the metric key: a duplicate
        a.log_metric("special", math.inf, step=9, timestamp=TS0 + 5)
        a.log_metric("special", -math.inf, step=11, timestamp=TS0)
        a.log_metric("special", math.nan, step=11, timestamp=TS0)  # (11, TS0, 0) beats (11, TS0, -max)
        a.log_metric("special", math.inf, step=11, timestamp=TS0)  # ... and +max beats NaN's 0
        a.log_metric("ooo", 3.0, step=5, timestamp=TS0)
        a.log_metric("ooo", 4.0, step=2, timestamp=TS0 + 10)  # a lower step logged later is not latest
        a.log_metric("ooo", 2.0, step=5, timestamp=TS0)  # same step and time, smaller value: not latest
        a.log_metric("ooo", 2.5, step=5, timestamp=TS0 + 1)  # same step, later: latest
        a.set_tag("phase", "done")
        a.set_tag("mlflow.runName", "alpha-renamed")
        a.log_artifact_reference("models/best.pt", "ab" * 32, 1234, store_uri="file:///store/ab",
                                 media_type="application/octet-stream")
        a.log_artifact_reference("reports/summary.json", "cd" * 32, 56)
        with tr.start_run("child-ok", nested=True) as c:
            ids["child-ok"] = c.run_id
            c.log_metric("m", 1.0, step=0)
        failed = tr.start_run("child-failed", nested=True)
        ids["child-failed"] = failed.run_id
        failed.log_metric("m", math.nan, step=0)
        failed.end("FAILED", error="Traceback (most recent call last): ... ValueError: boom")
        killed = tr.start_run("child-killed", nested=True)
        ids["child-killed"] = killed.run_id
        killed.set_tag("note", "interrupted")
        killed.end("KILLED")
        a.log_metric("dup", 1.5, step=1, timestamp=TS0)  # the duplicate again, many batches later
    segment = tr.attach_run(ids["alpha"], run_dir=a.run_dir)
    segment.log_param("lr", "0.1")  # the same value: a no-op
    segment.log_param("layers", "8")  # a conflict: reported, not applied
    segment.log_metrics({"loss": 0.001, "rank1/throughput": 99.5}, step=points + 1)
    segment.set_tag("rank", "1")
    segment.end()
    with tr.start_run(None, experiment_name="bulk-b") as b:
        ids["beta"] = b.run_id
        b.log_metric("x", 1.0, step=0)
        b.log_metric("x", 1.0, step=0, timestamp=TS0)
    subprocess.run([sys.executable, "-c", _DEAD_PRODUCER, str(project / "config" / "mlflow.yaml")], check=True,
                   env=subprocess_env(), cwd=project, timeout=60)
    return ids


# --------------------------------------------------------------------------- store dumps

def _token(value: float, is_nan: bool = False):
    if is_nan or math.isnan(value):
        return "NaN"
    return float(value).hex()


def _files(artifact_uri: str) -> dict[str, bytes]:
    root = Path(unquote(urlsplit(artifact_uri).path))
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def dump_store(uri: str) -> dict[str, dict]:
    """Everything a user sees in the store at ``uri``, keyed by producer run id (``ff.run_id``).

    Through ``MlflowClient``: every run (any lifecycle), its experiment, name, status, times,
    params, tags (``mlflow.parentRunId`` mapped to the parent's producer id), latest metrics
    (``get_run``) and every key's full metric history; the latest-metric rows (step and
    timestamp too) from MLflow's table; artifact files byte for byte. Asserts no orphan run
    (without ``ff.run_id``) and no producer run twice.
    """
    import sqlalchemy as sa
    from mlflow.entities import ViewType
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments(view_type=ViewType.ALL)}
    runs = client.search_runs(list(experiments), run_view_type=ViewType.ALL, max_results=50_000)
    orphans = [r.info.run_id for r in runs if "ff.run_id" not in r.data.tags]
    assert not orphans, f"MLflow runs without ff.run_id (orphans): {orphans}"
    pid_of = {r.info.run_id: r.data.tags["ff.run_id"] for r in runs}
    assert len(set(pid_of.values())) == len(pid_of), "a producer run has several MLflow runs"
    engine = sa.create_engine(uri.split("?")[0])
    try:
        with engine.connect() as conn:
            t = SqlLatestMetric.__table__
            latest_rows = conn.execute(sa.select(t.c.run_uuid, t.c.key, t.c.step, t.c.timestamp, t.c.value,
                                                 t.c.is_nan)).all()
    finally:
        engine.dispose()
    out: dict[str, dict] = {}
    for r in runs:
        mid = r.info.run_id
        run = client.get_run(mid)
        tags = dict(run.data.tags)
        if "mlflow.parentRunId" in tags:
            tags["mlflow.parentRunId"] = ("parent", pid_of.get(tags["mlflow.parentRunId"], "<not a run>"))
        out[pid_of[mid]] = {
            "experiment": experiments[run.info.experiment_id], "name": run.info.run_name,
            "status": run.info.status, "start_time": run.info.start_time, "end_time": run.info.end_time,
            "lifecycle": run.info.lifecycle_stage, "user": run.info.user_id,
            "params": dict(run.data.params), "tags": tags,
            "latest": {k: _token(v) for k, v in run.data.metrics.items()},
            "history": {k: sorted((m.step, m.timestamp, _token(m.value)) for m in client.get_metric_history(mid, k))
                        for k in run.data.metrics},
            "latest_rows": {}, "artifacts": _files(run.info.artifact_uri),
        }
    for run_uuid, key, step, timestamp, value, is_nan in latest_rows:
        out[pid_of[run_uuid]]["latest_rows"][key] = (step, timestamp, _token(value, bool(is_nan)))
    return out


def table_dump(uri: str) -> dict[str, list]:
    """Every row of the tables ingest writes (runs, tags, params, metrics, latest_metrics), all columns,
    with MLflow run ids replaced by producer run ids and experiment ids by names: two stores of the
    same journals compare with ``==`` row for row. Cheaper than :func:`dump_store` for big stores."""
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import (
        SqlExperiment,
        SqlLatestMetric,
        SqlMetric,
        SqlParam,
        SqlRun,
        SqlTag,
    )

    engine = sa.create_engine(uri.split("?")[0])
    try:
        with engine.connect() as conn:
            names = dict(conn.execute(sa.select(SqlExperiment.experiment_id, SqlExperiment.name)).all())
            tag = SqlTag.__table__
            pid = dict(conn.execute(sa.select(tag.c.run_uuid, tag.c.value).where(tag.c.key == "ff.run_id")).all())
            out: dict[str, list] = {}
            for model in (SqlRun, SqlTag, SqlParam, SqlMetric, SqlLatestMetric):
                table = model.__table__
                rows = []
                for row in conn.execute(sa.select(table)).mappings():
                    row = dict(row)
                    run = row.get("run_uuid")
                    for column, value in row.items():
                        if isinstance(value, str) and value in pid:
                            row[column] = ("run", pid[value])
                    if "artifact_uri" in row and run:
                        row["artifact_uri"] = (row["artifact_uri"] or "").rsplit(run, 1)[-1]
                    if "experiment_id" in row:
                        row["experiment_id"] = names.get(row["experiment_id"])
                    rows.append(tuple(sorted(row.items(), key=lambda kv: kv[0])))
                out[table.name] = sorted(rows, key=repr)
            return out
    finally:
        engine.dispose()


def row_counts(uri: str) -> dict[str, int]:
    """Rows per MLflow table that ingest writes."""
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import (
        SqlExperiment,
        SqlLatestMetric,
        SqlMetric,
        SqlParam,
        SqlRun,
        SqlTag,
    )

    engine = sa.create_engine(uri.split("?")[0])
    try:
        with engine.connect() as conn:
            return {m.__tablename__: conn.execute(sa.select(sa.func.count()).select_from(m.__table__)).scalar()
                    for m in (SqlMetric, SqlLatestMetric, SqlParam, SqlTag, SqlRun, SqlExperiment)}
    finally:
        engine.dispose()


def differences(a: dict, b: dict) -> list[str]:
    """Readable differences between two dumps (empty when equal)."""
    lines = []
    for pid in sorted(set(a) | set(b)):
        if pid not in a or pid not in b:
            lines.append(f"run {pid}: only in the {'second' if pid not in a else 'first'} store")
            continue
        for field in sorted(set(a[pid]) | set(b[pid])):
            left, right = a[pid].get(field), b[pid].get(field)
            if left == right:
                continue
            if isinstance(left, dict) and isinstance(right, dict):
                keys = [k for k in sorted(set(left) | set(right), key=str) if left.get(k) != right.get(k)][:3]
                lines.append(f"run {pid} {field}: " + "; ".join(
                    f"{k!r}: {str(left.get(k))[:150]} vs {str(right.get(k))[:150]}" for k in keys))
            else:
                lines.append(f"run {pid} {field}: {str(left)[:200]} vs {str(right)[:200]}")
    return lines


def child_env(**extra: str) -> dict[str, str]:
    env = subprocess_env(**extra)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env["PYTHONPATH"]
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


# --------------------------------------------------------------------------- crash injection

# Imports ff-ingest once, then forks one ingester per request (milliseconds instead of seconds of
# ``import mlflow`` per attempt); the tests SIGKILL the children. Protocol on stdin, one line each:
# ``run <json: [log path, args...]>`` -> pid; ``wait <pid>`` -> exit status.
_LAUNCHER = textwrap.dedent("""
    import json, os, sys
    from formula_foundry.tracking.ingest import cli, plan, replay  # noqa
    from formula_foundry.tracking.ingest.cli import app  # noqa
    from formula_foundry.tracking.ingest.stores import checkpoints, connect, mlflow_api  # noqa
    from formula_foundry.tracking.ingest.stores.bulk import sink as bulk_sink  # noqa
    import mlflow.store.tracking.sqlalchemy_store  # noqa: the slow part of a cold start
    import sqlalchemy.dialects.postgresql, sqlalchemy.dialects.sqlite  # noqa
    try:
        import psycopg  # noqa
    except ImportError:
        pass
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "run":
            log, *args = json.loads(arg)
            pid = os.fork()
            if pid == 0:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os._exit(cli.main(args))
            print(pid, flush=True)
        elif cmd == "wait":
            _, status = os.waitpid(int(arg), 0)
            print(os.waitstatus_to_exitcode(status), flush=True)
""")


class Launcher:
    """A pre-imported ``ff-ingest`` that forks ingesters on request."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER], env=child_env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self._ready = False

    def _ask(self, line: str) -> str:
        if not self._ready:
            assert self.proc.stdout.readline().strip() == "ready", "the launcher did not start"
            self._ready = True
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def start(self, args: list[str], log: Path) -> int:
        return int(self._ask("run " + json.dumps([str(log), *args])))

    def wait(self, pid: int) -> int:
        return int(self._ask(f"wait {pid}"))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def launcher():
    """One :class:`Launcher` for the session (it imports in the background while tests prepare)."""
    started = Launcher()
    yield started
    started.close()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def write_backfill(project: Path) -> int:
    """:func:`write_journals` plus six 5,000-point sweeps (many journals: checkpoints advance often);
    returns the number of journal records."""
    write_journals(project, points=300, big_keys=20)
    t = tracker(project)
    for n in range(6):
        with t.start_run(f"sweep-{n}", experiment_name="bulk-crash") as run:
            run.log_params({"n": str(n), "width": "128"})
            for i in range(500):
                run.log_metrics({f"k{j}": (i * 10 + j) * 0.125 for j in range(10)}, step=i)
                if i % 200 == 0:
                    run.set_tag("progress", str(i))
    return sum(sum(1 for _ in p.open("rb")) for p in project.glob("data/runs/*/tracking/*.jsonl"))


def kill_at_random_moments(launcher: Launcher, args: list[str], log: Path, progress, total: int,
                           rng: random.Random, *, pace: float, kills: int = 12) -> list[tuple[int, int]]:
    """Fork ``ff-ingest ARGS`` and SIGKILL it, again and again: every third at a random moment of its
    start (store opening, run lookup and creation), the others a random time after the checkpoints
    next advanced (inside an open group, at a commit). Delays scale with ``pace``, the seconds one
    clean ingest took here, so a fast machine still gets kills mid-ingest. Stops when an ingester
    finishes on its own. Returns (exit status, ``progress()`` after it) per attempt."""
    attempts: list[tuple[int, int]] = []
    step = max(pace / 16, 0.02)
    for k in range(kills):
        before = progress()
        pid = launcher.start(args, log)
        if k % 3 != 0:
            deadline = time.monotonic() + 60
            while _running(pid) and progress() <= before and time.monotonic() < deadline:
                time.sleep(0.005)
        time.sleep(rng.uniform(0.0, step))
        os.kill(pid, signal.SIGKILL)  # a no-op on a child that already exited (a zombie until reaped)
        status = launcher.wait(pid)
        attempts.append((status, progress()))
        if status != -signal.SIGKILL:
            assert status in (0, 1), f"ff-ingest exited {status}; see {log}"
            break
    return attempts


def assert_kills_landed(attempts: list[tuple[int, int]], total: int) -> None:
    """At least three ingesters died by SIGKILL before the backfill was complete, one of them after
    some progress (so kills hit store opening, run creation and the middle of ingesting)."""
    early = [p for status, p in attempts if status == -signal.SIGKILL and p < total]
    assert len(early) >= 3 and any(p > 0 for p in early), f"kills did not land while ingesting: {attempts}"
