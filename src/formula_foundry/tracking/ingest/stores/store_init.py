"""Create an MLflow SQLite store safely: once, under a lock, never half-built in place.

Measured on mlflow 3.17: two processes creating the same empty store at once
break its schema migration, and a process killed during creation leaves a file
MLflow can never open again ("table _alembic_tmp_experiments already exists").
So a new store is built under a temporary name, its engine disposed, and only
then renamed into place, all while holding an exclusive ``flock`` on
``<db>.lock``. An existing file is left alone.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from formula_foundry.substrate._atomic import fsync_dir

__all__ = ["ensure_sqlite_store"]


def ensure_sqlite_store(db: Path, artifact_root_uri: str | None) -> bool:
    """Make sure ``db`` is a complete MLflow store; returns True when this call created it."""
    if db.exists() and db.stat().st_size > 0:
        return False
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if db.exists() and db.stat().st_size > 0:
            return False
        tmp = db.with_name(f".{db.name}.creating-{os.getpid()}")
        for leftover in db.parent.glob(f".{db.name}.creating-*"):
            leftover.unlink(missing_ok=True)  # a creator killed mid-way; we hold the lock, so it is dead
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # mlflow: deferred (see stores/__init__)

        root = artifact_root_uri or db.parent.joinpath("artifacts").resolve().as_uri()
        store = SqlAlchemyStore(f"sqlite:///{tmp}", root)
        store.engine.dispose()
        SqlAlchemyStore._engine_map.pop(f"sqlite:///{tmp}", None) if hasattr(SqlAlchemyStore, "_engine_map") \
            else None
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, db)
        fsync_dir(db.parent)
        return True
