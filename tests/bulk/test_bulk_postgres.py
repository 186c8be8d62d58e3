"""The bulk SQL sink on PostgreSQL: the same store as the API sink, exactly once under SIGKILL.

Needs the machine's PostgreSQL server (see ``postgres_admin`` in conftest): skipped with the
reason when none answers, failed under ``FF_REQUIRE_POSTGRES=1``. Each test works in databases
of its own (``ff_test_<random>``), dropped at the end.
"""

from __future__ import annotations

import json
import os
import random
import time

import pytest

from tests.bulk.conftest import (
    assert_kills_landed,
    differences,
    dump_store,
    kill_at_random_moments,
    row_counts,
    sibling_project,
    table_dump,
    write_backfill,
    write_journals,
)
from tests.conftest import run_ff_ingest

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("_quiet_mlflow")]

SEED = int(os.environ.get("FF_CRASH_SEED") or 8)


@pytest.fixture
def _quiet_mlflow(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def checkpointed(url: str) -> int:
    """Records the bulk sink's checkpoints claim, summed over journals (0 before its table exists)."""
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        try:
            return int(conn.execute("SELECT coalesce(sum(records), 0) FROM ff_ingest_checkpoints").fetchone()[0])
        except psycopg.errors.UndefinedTable:
            return 0


def test_api_and_bulk_sinks_give_identical_stores_on_postgres(project, tmp_path, postgres_url_factory,
                                                              postgres_template, capsys):
    """The equivalence test of test_bulk_sink.py on PostgreSQL; the bulk store starts as an empty
    database, so MLflow creates it (every migration) through the bulk sink's opening."""
    write_journals(project)
    api_url = postgres_url_factory(template=postgres_template)
    bulk_url = postgres_url_factory()  # empty
    bulk = sibling_project(tmp_path, project, "bulk")
    summaries = []
    for proj, url, sink in ((project, api_url, "api"), (bulk, bulk_url, "bulk")):
        capsys.readouterr()
        code = run_ff_ingest(proj, "--tracking-uri", url, "--sink", sink, "--json")
        summary = json.loads(capsys.readouterr().out)
        assert code == 1 and summary["sink"] == sink  # the conflicting param, reported by both
        summaries.append(summary)
    assert summaries[0]["records"] == summaries[1]["records"]
    a, b = dump_store(api_url), dump_store(bulk_url)
    assert differences(a, b) == []
    assert row_counts(api_url) == row_counts(bulk_url)
    alpha = next(r for r in a.values() if r["name"] == "alpha-renamed")
    assert alpha["latest_rows"]["tie"] == (10, 1_700_000_000_000, "NaN")
    assert len(a) == 6


def test_sigkill_at_random_moments_on_postgres_then_rerun_equals_one_clean_ingest(
        project, tmp_path, postgres_url_factory, postgres_template, launcher):
    """SIGKILL the bulk ingester writing to PostgreSQL at random moments, rerun: every row equals
    one clean ingest (the open transaction dies with the connection, checkpoints with it)."""
    rng = random.Random(SEED)
    crash_url = postgres_url_factory(template=postgres_template)
    reference_url = postgres_url_factory(template=postgres_template)
    total = write_backfill(project)
    reference = sibling_project(tmp_path, project, "reference")
    started = time.monotonic()
    assert run_ff_ingest(reference, "--tracking-uri", reference_url, "--sink", "bulk", "-q") == 1
    pace = time.monotonic() - started
    assert checkpointed(reference_url) == total

    args = ["--tracking-uri", crash_url, "--sink", "bulk", "-q", "--config", str(project / "config" / "mlflow.yaml")]
    attempts = kill_at_random_moments(launcher, args, tmp_path / "ingesters.log", lambda: checkpointed(crash_url),
                                      total, rng, pace=pace)
    print(f"postgres bulk crash test (seed {SEED}): (exit status, records checkpointed) per attempt {attempts}, "
          f"of {total}")
    assert_kills_landed(attempts, total)
    config = ("--config", str(project / "config" / "mlflow.yaml"))
    from formula_foundry.tracking.ingest.cli import main

    assert main(["--tracking-uri", crash_url, "--sink", "bulk", "-q", *config]) in (0, 1)
    assert main(["--tracking-uri", crash_url, "--sink", "bulk", "-q", *config]) == 0
    assert table_dump(crash_url) == table_dump(reference_url)
