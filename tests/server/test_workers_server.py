"""``ff-ingest --workers 4`` into seed 003's team stores: exactly once.

* an ``mlflow server --workers 2`` over PostgreSQL (``pg_mlflow_server``), through MLflow's REST
  API (the API sink): four workers, each with its own client;
* the same PostgreSQL straight (the bulk sink: runs inserted with the journals' ids, metrics
  COPYed), four workers, each with its own engine.

The journals (real producer): 8 top-level runs in two experiments, nested children and a
grandchild, one run with two attached segments, a FAILED end. Each store is compared, run by run
(params, tags, every metric history row, latest values, status, times, artifact listing), with a
``--workers 1`` ingest of the same journals into SQLite; a second pass sends nothing; a pass
that forgot every checkpoint re-sends every record and changes nothing.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from tests.conftest import run_ff_ingest
from tests.server import snapshot, wipe_state

pytestmark = pytest.mark.postgres

EXPERIMENTS = ["workers-srv-a", "workers-srv-b"]
TOPS = 8
STEPS = 150


def _tracker(project: Path):
    from formula_foundry.tracking import Tracker, load_config

    return Tracker(load_config(project / "config" / "mlflow.yaml"))


def _produce(project: Path) -> dict[str, str]:
    rng = random.Random(17)
    t = _tracker(project)
    ids: dict[str, str] = {}
    for n in range(TOPS):
        run = t.start_run(f"top-{n}", experiment_name=EXPERIMENTS[n % 2], tags={"n": str(n)})
        ids[f"top-{n}"] = run.run_id
        run.log_params({"n": n, "width": 32 * (n + 1)})
        segments = [t.attach_run(run.run_id, run_dir=run.run_dir) for _ in range(2)] if n == 1 else []
        for i in range(STEPS):
            run.log_metrics({"loss": rng.random(), "acc": i / STEPS}, step=i)
            for rank, segment in enumerate(segments, start=1):
                segment.log_metric(f"rank{rank}/throughput", rng.random(), step=i)
        run.log_metric("special", math.nan, step=STEPS)
        for rank, segment in enumerate(segments, start=1):
            segment.log_param(f"rank{rank}.host", f"node-{rank}")
            segment.end()
        if n % 3 == 0:
            with t.start_run(f"top-{n}-child", nested=True) as child:
                ids[f"top-{n}-child"] = child.run_id
                child.log_metric("val", 0.5, step=0)
                with t.start_run(f"top-{n}-grandchild", nested=True) as grand:
                    ids[f"top-{n}-grandchild"] = grand.run_id
                    grand.set_tag("depth", "2")
        run.set_tag("phase", "done")
        run.end("FAILED" if n == 5 else "FINISHED", error="on purpose" if n == 5 else None)
    return ids


def _ingest(project: Path, capsys, *args: str) -> dict:
    capsys.readouterr()
    code = run_ff_ingest(project, "--json", *args)
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary
    return summary


@pytest.fixture(scope="module")
def journals(tmp_path_factory, template_store):
    """(project with the journals and its SQLite store ingested with ``--workers 1``, that store's
    snapshot, the journals' record count, producer ids)."""
    import shutil

    from mlflow.tracking import MlflowClient

    from tests.conftest import REPO

    project = tmp_path_factory.mktemp("workers-srv") / "proj"
    (project / "config").mkdir(parents=True)
    shutil.copy(REPO / "config" / "mlflow.yaml", project / "config" / "mlflow.yaml")
    db = project / "data" / "mlflow" / "mlruns.db"
    db.parent.mkdir(parents=True)
    shutil.copy(template_store, db)
    ids = _produce(project)
    records = sum(p.read_bytes().count(b"\n") for p in (project / "data" / "runs").glob("*/tracking/*.jsonl"))
    assert run_ff_ingest(project, "-q", "--workers", "1") == 0
    return project, snapshot(MlflowClient(f"sqlite:///{db}"), EXPERIMENTS), records, ids


def test_four_workers_into_a_postgres_backed_server_exactly_once(journals, pg_mlflow_server, capsys):
    """``--tracking-uri http://server --workers 4``: every record once (the SQLite reference, run by
    run); again: nothing; again without checkpoints: every record re-sent, the server unchanged."""
    from mlflow.tracking import MlflowClient

    project, reference, records, ids = journals
    uri = pg_mlflow_server.url
    first = _ingest(project, capsys, "--tracking-uri", uri, "--workers", "4")
    assert (first["workers"], first["sink"], first["records"], first["runs_created"], first["errors"]) == \
        (4, "api", records, len(ids), 0)
    client = MlflowClient(uri)
    got = snapshot(client, EXPERIMENTS)
    assert got == reference
    assert got[ids["top-3-grandchild"]]["tags"]["mlflow.parentRunId"] == ("parent", ids["top-3-child"])

    assert _ingest(project, capsys, "--tracking-uri", uri)["records"] == 0  # auto: 4 workers on HTTP
    wipe_state(project)  # the API sink's checkpoints live in the state folder
    again = _ingest(project, capsys, "--tracking-uri", uri, "--workers", "4")
    assert again["records"] == records and again["runs_created"] == 0
    assert snapshot(client, EXPERIMENTS) == got


def test_four_workers_with_the_bulk_sink_into_postgres_exactly_once(journals, postgres_url, capsys):
    """``--sink bulk --tracking-uri postgresql://... --workers 4``: the SQLite reference with the
    journals' own run ids; again: nothing; with its checkpoint rows deleted: every record again,
    no metric row more."""
    import sqlalchemy as sa
    from mlflow.tracking import MlflowClient

    project, reference, records, ids = journals
    first = _ingest(project, capsys, "--sink", "bulk", "--tracking-uri", postgres_url, "--workers", "4")
    assert (first["workers"], first["sink"], first["records"], first["runs_created"], first["errors"]) == \
        (4, "bulk", records, len(ids), 0)
    client = MlflowClient(postgres_url)
    got = snapshot(client, EXPERIMENTS)
    assert got == reference
    assert client.get_run(ids["top-1"]).data.tags["ff.run_id"] == ids["top-1"]  # the producer's id survived

    engine = sa.create_engine(postgres_url)
    try:
        def metric_rows() -> int:
            with engine.connect() as conn:
                return conn.execute(sa.text("SELECT count(*) FROM metrics WHERE run_uuid = ANY(:ids)"),
                                    {"ids": list(ids.values())}).scalar()

        rows = metric_rows()
        assert _ingest(project, capsys, "--sink", "bulk", "--tracking-uri", postgres_url)["records"] == 0
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM ff_ingest_checkpoints WHERE run_id = ANY(:ids)"),
                         {"ids": list(ids.values())})
        again = _ingest(project, capsys, "--sink", "bulk", "--tracking-uri", postgres_url, "--workers", "4")
        assert again["records"] == records and again["runs_created"] == 0
        assert metric_rows() == rows
    finally:
        engine.dispose()
    assert snapshot(client, EXPERIMENTS) == got
