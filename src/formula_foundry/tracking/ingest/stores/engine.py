"""SQLAlchemy engines on a store's database: the one place they are built.

* SQLite (read-write): a busy timeout, and ``BEGIN IMMEDIATE`` for every
  transaction that writes, so the write lock is taken up front (a read lock
  upgraded later can fail with "database is locked" without waiting); reads
  (:func:`reading`) begin a deferred transaction and take no write lock.
* SQLite (``read_only``): opened with ``mode=ro``: never creates or changes the file.
* Server databases (PostgreSQL, ...): a connect timeout where given, and a
  pre-ping so a connection dropped by the server is replaced, not used.
"""

from __future__ import annotations

import sqlalchemy as sa

from formula_foundry.errors import IngestError
from formula_foundry.tracking.config import sqlite_path_of
from formula_foundry.tracking.ingest.uri import redact, scheme

__all__ = ["dialect_insert", "make_engine", "reading"]

_CONNECT_TIMEOUT_DIALECTS = ("postgresql", "mysql")


def make_engine(uri: str, *, busy_timeout: float = 30.0, connect_timeout: float | None = None,
                read_only: bool = False) -> sa.Engine:
    """An engine on the database of ``uri`` (see the module docstring)."""
    if scheme(uri) != "sqlite":
        connect_args = {"connect_timeout": max(1, int(connect_timeout))} \
            if connect_timeout and scheme(uri) in _CONNECT_TIMEOUT_DIALECTS else {}
        if read_only:  # one-off looks (doctor, probes): no pool to keep
            return sa.create_engine(uri, connect_args=connect_args, poolclass=sa.pool.NullPool)
        return sa.create_engine(uri, connect_args=connect_args, pool_pre_ping=True)
    db = sqlite_path_of(uri)
    if db is None:
        raise IngestError(f"an SQLite store must be a file, not {redact(uri)}")
    if read_only:
        return sa.create_engine(f"sqlite:///file:{db}?mode=ro&uri=true", poolclass=sa.pool.NullPool,
                                connect_args={"timeout": busy_timeout})
    engine = sa.create_engine(f"sqlite:///{db}", connect_args={"timeout": busy_timeout})

    @sa.event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # the driver's own BEGIN handling off: we begin (below)

    @sa.event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("ff_read") else "BEGIN IMMEDIATE")

    return engine


def reading(engine: sa.Engine) -> sa.Connection:
    """A connection for reads only (on SQLite: a deferred transaction, no write lock)."""
    return engine.connect().execution_options(ff_read=True)


def dialect_insert(dialect: str):
    """The dialect's ``insert`` (with ``on_conflict_do_nothing`` / ``_do_update``): SQLite or PostgreSQL."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    return insert
