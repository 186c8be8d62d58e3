"""The bulk sink's PostgreSQL metric path on groups larger than one COPY (``COPY_ROWS``).

A group's metric rows go straight into ``metrics`` by COPY, ``COPY_ROWS`` at a time in a
thread of their own while replay reads on, inside a savepoint; a chunk holding a point the
store already has falls back to the staging table with ``ON CONFLICT DO NOTHING`` (see
``stores/bulk/sink.py``). Journals: two runs of 36k and 24k points, one of them logging an
exact repeat of an early point far later (a clash in a chunk after clean ones). Checked
against the same journals ingested into SQLite: every metric row, latest metrics, checkpoints;
a replay with every checkpoint deleted (every chunk clashes) adds no row; SIGKILLs in the
middle of big groups, then a rerun, leave the clean ingest's rows.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest

from formula_foundry.tracking.ingest.stores.bulk.sink import COPY_ROWS
from tests.bulk.conftest import (
    _running,
    sibling_project,
    store_uri,
    table_dump,
    tracker,
)
from tests.bulk.test_bulk_postgres import checkpointed
from tests.conftest import run_ff_ingest

pytestmark = [pytest.mark.postgres]

SEED = int(os.environ.get("FF_CRASH_SEED") or 17)
TS0 = 1_700_000_000_000


def _write(project) -> int:
    """Two big runs (one with a far repeat of an early point); returns the metric points."""
    t = tracker(project)
    with t.start_run("big", experiment_name="copy") as run:
        run.log_metric("dup", 1.5, step=0, timestamp=TS0)
        for i in range(3600):
            run.log_metrics({f"k{j}": (i * 10 + j) * 0.125 for j in range(10)}, step=i)
            if i == 2500:
                run.log_metric("dup", 1.5, step=0, timestamp=TS0)  # the same point again: 25k rows later
    with t.start_run("other", experiment_name="copy") as run:
        for i in range(2400):
            run.log_metrics({f"k{j}": -(i * 10 + j) * 0.5 for j in range(10)}, step=i)
    return 2 + 36_000 + 24_000


def _ingest(project, url: str, capsys) -> dict:
    capsys.readouterr()
    code = run_ff_ingest(project, "--tracking-uri", url, "--sink", "bulk", "--json")
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary
    return summary


def test_big_groups_copy_exactly_once_and_replay_adds_nothing(project, tmp_path, template_store,
                                                              postgres_url_factory, postgres_template, capsys):
    """More than three COPY chunks per run, one clashing: PostgreSQL holds the rows SQLite holds;
    with every checkpoint deleted, the replay (every chunk clashes) adds none."""
    points = _write(project)
    assert points > 3 * COPY_ROWS
    url = postgres_url_factory(template=postgres_template)
    first = _ingest(project, url, capsys)
    reference = sibling_project(tmp_path, project, "sqlite", template_store=template_store)
    assert _ingest(reference, store_uri(reference), capsys)["records"] == first["records"]
    want = table_dump(store_uri(reference))
    assert len(want["metrics"]) == points - 1  # the repeat is one row
    assert table_dump(url) == want

    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM ff_ingest_checkpoints"))
    finally:
        engine.dispose()
    again = _ingest(project, url, capsys)
    assert again["records"] == first["records"] and again["runs_created"] == 0
    assert table_dump(url) == want


def test_sigkill_inside_big_groups_then_rerun_equals_one_clean_ingest(project, tmp_path, postgres_url_factory,
                                                                      postgres_template, launcher):
    """SIGKILL at random moments of a pass (a group spans a whole 24k-36k point journal here: the kills
    land while COPY chunks are in flight), again and again; a rerun leaves the rows of one clean ingest."""
    _write(project)
    total = sum(p.read_bytes().count(b"\n") for p in project.glob("data/runs/*/tracking/*.jsonl"))
    reference_url = postgres_url_factory(template=postgres_template)
    crash_url = postgres_url_factory(template=postgres_template)
    reference = sibling_project(tmp_path, project, "reference")
    args = ["--tracking-uri", crash_url, "--sink", "bulk", "-q", "--config", str(project / "config" / "mlflow.yaml")]
    log = tmp_path / "ingesters.log"
    assert launcher.wait(launcher.start(["--version"], log)) == 0  # the launcher's imports: not in the pace
    started = time.monotonic()
    assert launcher.wait(launcher.start(["--tracking-uri", reference_url, "--sink", "bulk", "-q", "--config",
                                         str(reference / "config" / "mlflow.yaml")], log)) == 0
    pace = time.monotonic() - started
    rng = random.Random(SEED)
    landed = []
    for _ in range(10):
        left = 1 - checkpointed(crash_url) / total  # a rerun resumes: aim inside what is left
        pid = launcher.start(args, log)
        time.sleep(rng.uniform(0.2, 0.8) * pace * left)  # inside the pass, even on a loaded machine
        alive = _running(pid)
        os.kill(pid, signal.SIGKILL)
        status = launcher.wait(pid)
        assert status in (0, -signal.SIGKILL), log.read_text()[-3000:]
        if status == 0:
            break
        landed.append(checkpointed(crash_url) if alive else None)
    print(f"copy crash test (seed {SEED}): checkpointed after each kill {landed} of {total}")
    assert len([p for p in landed if p is not None and p < total]) >= 2, landed
    from formula_foundry.tracking.ingest.cli import main

    assert main([*args]) == 0
    assert checkpointed(crash_url) == total
    assert table_dump(crash_url) == table_dump(reference_url)
