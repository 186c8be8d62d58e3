"""The lease holder SIGKILLed mid-ingest, bulk sink straight into PostgreSQL from a shared folder
(the scenario of :mod:`tests.central.takeover`): the checkpoints are in the store, in the transaction
of their data; the advisory lock goes with the dead holder's connection, its lease runs out; the
waiting machine completes and the store equals one clean ingest."""

from __future__ import annotations

import uuid

import pytest

from tests.central import child_env, reference_snapshot
from tests.central.takeover import takeover


@pytest.mark.postgres
def test_holder_killed_mid_ingest_into_postgres(tmp_path, postgres_url, template_store):
    """Killed once the big run exists (the holder streams its points next); the waiter completes."""
    import psycopg
    from mlflow.tracking import MlflowClient

    from tests.server import snapshot

    exp = f"takeover-pg-{uuid.uuid4().hex[:6]}"
    share = tmp_path / "share"
    share.mkdir()

    def streaming(big: str, _journal_id: str) -> bool:  # the holder created the big run (its producer id)
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            try:
                return conn.execute("SELECT 1 FROM runs WHERE run_uuid = %s", (big,)).fetchone() is not None
            except psycopg.errors.UndefinedTable:  # A's MLflow is still creating the store
                return False

    host = takeover(tmp_path, str(share), postgres_url, child_env(), started=streaming, exp=exp, sink="bulk",
                    resumed=False, steps=30_000)
    assert snapshot(MlflowClient(postgres_url), [exp]) == reference_snapshot(tmp_path, [host], template_store, [exp])
