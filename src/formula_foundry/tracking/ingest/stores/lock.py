"""One ingester per store, whatever the spelling of its URI, and for SQL stores even across hosts.

:class:`StoreLock` takes, in this order, and holds until released:

1. an exclusive ``flock`` on ``<state dir>/ingester.lock``; the state folder is
   named after the store's canonical identity (:func:`~..uri.store_identity`),
   so ``./`` segments, query strings or symlinked folders name the same lock;
2. for an SQLite store, an exclusive ``flock`` on ``<database>.ff-ingest.lock``
   beside the resolved database file: a second project (another state folder)
   writing into the same file is refused too;
3. for a PostgreSQL store, a session-level advisory lock
   (``pg_try_advisory_lock``) in the store's database, on a connection held
   open for the lock's life: two ingesters on two hosts cannot both hold it.
   When a holder dies its connection closes and the server frees the lock.

HTTP stores get (1) only: the server offers no lock to an outside client, so
two hosts writing to one server through HTTP are not prevented (each host's
journals are its own; see docs/operations.md).

A lock already held raises :class:`IngesterLockedError` (exit 5) naming the
holder (pid, host, program) as far as it can be known.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path
from typing import IO

import sqlalchemy as sa

from formula_foundry.errors import IngesterLockedError
from formula_foundry.tracking.config import sqlite_path_of
from formula_foundry.tracking.ingest.store_errors import store_errors
from formula_foundry.tracking.ingest.stores.engine import make_engine
from formula_foundry.tracking.ingest.uri import redact, scheme

__all__ = ["LOCK_FILE", "PG_LOCK_KEY", "StoreLock"]

LOCK_FILE = "ingester.lock"
# The advisory lock key of "an ff-ingest writes into this database" (a fixed 63-bit number:
# the database is the store, so one key per database is one lock per store).
PG_LOCK_KEY = 0x0FF1_6E57_0000_0001


def _holder_text() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


class StoreLock:
    """The single-ingester lock of one store (see the module docstring)."""

    def __init__(self, uri: str, state_folder: Path) -> None:
        self.uri = uri
        self.what = redact(uri)
        self.path = state_folder / LOCK_FILE
        self._files: list[IO[str]] = []
        self._pg = None  # (engine, connection) holding the advisory lock

    def _flock(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")  # noqa: SIM115 - held open while the lock is held
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise IngesterLockedError(f"another ingester ({holder}) is already writing to {self.what}; "
                                      f"only one may run per store (lock: {path})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(_holder_text())
        fh.flush()
        self._files.append(fh)

    def _pg_lock(self) -> None:
        engine = make_engine(self.uri, connect_timeout=10, read_only=True)
        with store_errors("take the ingester lock in the database", self.uri):
            conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                conn.execute(sa.text("SELECT set_config('application_name', :name, false)"),
                             {"name": f"ff-ingest {_holder_text()}"[:63]})
                got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": PG_LOCK_KEY}).scalar()
                holder = None if got else conn.execute(sa.text(
                    "SELECT a.application_name, a.client_addr, a.pid FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                    "AND l.classid = :hi AND l.objid = :lo AND l.database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"),
                    {"hi": PG_LOCK_KEY >> 32, "lo": PG_LOCK_KEY & 0xFFFFFFFF}).first()
            except BaseException:
                conn.close()
                engine.dispose()
                raise
        if not got:
            conn.close()
            engine.dispose()
            who = (f"{holder.application_name or 'a client'} (server backend {holder.pid}"
                   f"{f', from {holder.client_addr}' if holder.client_addr else ''})") if holder else "another client"
            raise IngesterLockedError(f"another ingester ({who}) is already writing to {self.what}; only one "
                                      "may run per store (PostgreSQL advisory lock)")
        self._pg = (engine, conn)

    def acquire(self) -> StoreLock:
        """Take every part of the lock (raises StoreUnavailableError when a database does not answer)."""
        self.acquire_local()
        self.acquire_in_store()
        return self

    def acquire_local(self) -> StoreLock:
        """The file locks (1 and 2): needs no store, so a daemon can hold them while its store is down."""
        try:
            if not self._files:
                self._flock(self.path)
                db = sqlite_path_of(self.uri)
                if db is not None:
                    real = Path(os.path.realpath(db))
                    self._flock(real.with_name(real.name + ".ff-ingest.lock"))
        except BaseException:
            self.release()
            raise
        return self

    def acquire_in_store(self) -> StoreLock:
        """The lock held in the store's database (3), where the store offers one."""
        if self._pg is None and scheme(self.uri) == "postgresql":
            self._pg_lock()
        return self

    def release(self) -> None:
        if self._pg is not None:
            engine, conn = self._pg
            self._pg = None
            with contextlib.suppress(Exception):  # closing the session frees the lock anyway
                conn.close()
            engine.dispose()
        while self._files:
            self._files.pop().close()

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
