"""Durable per-journal checkpoints for the API sink, in a small SQLite file of our own.

One state folder per tracking store (``<ingest.state_dir>/<store key>/``), so
the same journals can be ingested into several stores independently. The
file is written only *after* the store acknowledged the batch it covers
(see :mod:`.sink`), with ``synchronous=FULL``: after a crash it never claims
more than the store holds.

Table ``journals`` (one row per journal file, keyed by its journal id, so a
run directory moved to another volume is not ingested twice)::

    journal_id TEXT PK | path | run_id | mlflow_run_id | offset | line | seq
    records | ended | last_error | updated_ms
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from formula_foundry.tracking.ingest.sink import Checkpoint
from formula_foundry.tracking.journal import ReadPosition

__all__ = ["SqliteCheckpoints", "read_checkpoints", "redact_uri", "store_key"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journals (
    journal_id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    run_id TEXT NOT NULL,
    mlflow_run_id TEXT,
    offset INTEGER NOT NULL DEFAULT 0,
    line INTEGER NOT NULL DEFAULT 1,
    seq INTEGER NOT NULL DEFAULT 0,
    records INTEGER NOT NULL DEFAULT 0,
    ended INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    updated_ms INTEGER NOT NULL DEFAULT 0
)
"""


def redact_uri(uri: str) -> str:
    """The URI with any password replaced by ``***`` (for logs and reports)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def store_key(uri: str) -> str:
    """A readable, filesystem-safe name for a tracking store (no credentials in it)."""
    parts = urlsplit(uri)
    label = parts.hostname or Path(parts.path).name or parts.scheme
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{parts.scheme}-{label}")[:40]
    # Without the password, but with the port: two servers on one host are two stores.
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    bare = parts._replace(netloc=host if parts.password else parts.netloc).geturl()
    return f"{label}-{hashlib.sha256(bare.encode()).hexdigest()[:10]}"


def _row_to_checkpoint(row: sqlite3.Row) -> Checkpoint:
    return Checkpoint(journal_id=row["journal_id"], path=row["path"], run_id=row["run_id"],
                      mlflow_run_id=row["mlflow_run_id"],
                      position=ReadPosition(row["offset"], row["line"], row["seq"]),
                      records=row["records"], ended=bool(row["ended"]), last_error=row["last_error"],
                      updated_ms=row["updated_ms"])


class SqliteCheckpoints:
    """Checkpoints in ``<folder>/checkpoints.sqlite``; thread-safe."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "checkpoints.sqlite"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

    def get(self, journal_id: str) -> Checkpoint | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM journals WHERE journal_id = ?", (journal_id,)).fetchone()
        return _row_to_checkpoint(row) if row else None

    def all(self) -> list[Checkpoint]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM journals ORDER BY path").fetchall()
        return [_row_to_checkpoint(r) for r in rows]

    def put(self, cp: Checkpoint) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO journals (journal_id, path, run_id, mlflow_run_id, offset, line, seq, records, ended,"
                " last_error, updated_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(journal_id) DO UPDATE SET path=excluded.path, run_id=excluded.run_id,"
                " mlflow_run_id=excluded.mlflow_run_id, offset=excluded.offset, line=excluded.line,"
                " seq=excluded.seq, records=excluded.records, ended=excluded.ended,"
                " last_error=excluded.last_error, updated_ms=excluded.updated_ms",
                (cp.journal_id, cp.path, cp.run_id, cp.mlflow_run_id, cp.position.offset, cp.position.line,
                 cp.position.seq, cp.records, int(cp.ended), cp.last_error, cp.updated_ms or _now_ms()))

    def record_error(self, journal_id: str, path: str, run_id: str, error: str) -> None:
        old = self.get(journal_id) or Checkpoint(journal_id=journal_id, path=path, run_id=run_id)
        self.put(replace(old, last_error=error, updated_ms=_now_ms()))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _now_ms() -> int:
    return int(time.time() * 1000)


class CheckpointFileReader:
    """The API sink's checkpoint file of one store, for readers (``ff-ingest status``, ``doctor``).

    Never creates the file or its folder, never writes: a store that was never
    ingested has no checkpoints, and looking must not change that.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "checkpoints.sqlite"

    def get(self, journal_id: str) -> Checkpoint | None:
        return next((cp for cp in read_checkpoints(self.folder) if cp.journal_id == journal_id), None)

    def all(self) -> list[Checkpoint]:
        return sorted(read_checkpoints(self.folder), key=lambda cp: cp.path)

    def close(self) -> None:
        pass


def read_checkpoints(folder: Path) -> list[Checkpoint]:
    """The checkpoints in ``folder``, read without creating or changing anything (for ``--dry-run``)."""
    path = folder / "checkpoints.sqlite"
    if not path.is_file():
        return []
    # Without a -wal file every change is in the main file, which a writer (in WAL mode) only touches
    # at a checkpoint: read it as immutable, which creates no -shm file. Otherwise read through the WAL.
    wal = path.with_name(path.name + "-wal").exists()
    db = sqlite3.connect(f"{path.resolve().as_uri()}?{'mode=ro' if wal else 'immutable=1'}", uri=True, timeout=30)
    try:
        db.row_factory = sqlite3.Row
        return [_row_to_checkpoint(r) for r in db.execute("SELECT * FROM journals").fetchall()]
    except sqlite3.OperationalError:  # no table yet
        return []
    finally:
        db.close()
