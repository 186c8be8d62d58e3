"""Checkpoints: one record, one table schema, one merge rule, wherever they are kept.

A :class:`~.sink.Checkpoint` says how far one journal has been ingested into
one store, and into which MLflow run. It is written only *after* the store
acknowledged the batch it covers (see :mod:`.sink`): after a crash it never
claims more than the store holds.

Kept in the table :data:`CHECKPOINTS` (SQLAlchemy Core, one definition)::

    journal_id VARCHAR(64) PK | path TEXT | run_id VARCHAR(64) | mlflow_run_id VARCHAR(32)
    byte_offset BIGINT | line BIGINT | seq BIGINT | records BIGINT | ended BOOLEAN
    last_error TEXT | updated_ms BIGINT

in one of two databases, both served by :class:`SqlCheckpoints`:

* a file of our own, ``<ingest.state_dir>/<store key>/checkpoints.sqlite``
  (:func:`open_checkpoint_file`), for the API sink: written with
  ``synchronous=FULL`` after each commit;
* the store's own database (the bulk sink), where the sink writes each row in
  the same transaction as the data it covers.

The merge rule (:func:`further`): where two rows exist for one journal (the
bulk sink's and an older API-sink file), the one that got further wins.
:class:`MemoryCheckpoints` holds rows in memory: a dry run's snapshot, or a
sink that keeps nothing (benchmarks of the replay alone).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import sqlalchemy as sa  # installed with mlflow: the ingest side's

from formula_foundry.tracking.ingest.sink import Checkpoint, CheckpointStore, now_ms
from formula_foundry.tracking.ingest.stores.engine import dialect_insert, reading
from formula_foundry.tracking.journal import ReadPosition

__all__ = [
    "CHECKPOINTS",
    "CHECKPOINT_FILE",
    "CHECKPOINT_TABLE",
    "MemoryCheckpoints",
    "SqlCheckpoints",
    "further",
    "merged",
    "open_checkpoint_file",
    "read_checkpoint_file",
]

CHECKPOINT_FILE = "checkpoints.sqlite"
CHECKPOINT_TABLE = "ff_ingest_checkpoints"
_META = sa.MetaData()
CHECKPOINTS = sa.Table(
    CHECKPOINT_TABLE, _META,
    sa.Column("journal_id", sa.String(64), primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("mlflow_run_id", sa.String(32)),
    sa.Column("byte_offset", sa.BigInteger, nullable=False),
    sa.Column("line", sa.BigInteger, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("records", sa.BigInteger, nullable=False),
    sa.Column("ended", sa.Boolean, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)
# Files written before this schema (table ``journals``, column ``offset``) are read and migrated.
_OLD_FILE_TABLE = "journals"


def to_row(cp: Checkpoint) -> dict:
    return {"journal_id": cp.journal_id, "path": cp.path, "run_id": cp.run_id,
            "mlflow_run_id": cp.mlflow_run_id, "byte_offset": cp.position.offset, "line": cp.position.line,
            "seq": cp.position.seq, "records": cp.records, "ended": bool(cp.ended), "last_error": cp.last_error,
            "updated_ms": cp.updated_ms or now_ms()}


def from_row(row) -> Checkpoint:
    return Checkpoint(journal_id=row.journal_id, path=row.path, run_id=row.run_id,
                      mlflow_run_id=row.mlflow_run_id,
                      position=ReadPosition(row.byte_offset, row.line, row.seq), records=row.records,
                      ended=bool(row.ended), last_error=row.last_error, updated_ms=row.updated_ms)


def further(a: Checkpoint | None, b: Checkpoint | None) -> Checkpoint | None:
    """The checkpoint that claims more (each claims no more than the store holds)."""
    if a is None or b is None:
        return a or b
    return b if (b.position.offset, b.ended) > (a.position.offset, a.ended) else a


def merged(*sources: Iterable[Checkpoint]) -> dict[str, Checkpoint]:
    """Per journal id, the row that got furthest among ``sources``."""
    out: dict[str, Checkpoint] = {}
    for source in sources:
        for cp in source:
            out[cp.journal_id] = further(out.get(cp.journal_id), cp)
    return out


def _upsert(dialect: str):
    stmt = dialect_insert(dialect)(CHECKPOINTS)
    return stmt.on_conflict_do_update(
        index_elements=[CHECKPOINTS.c.journal_id],
        set_={c.name: stmt.excluded[c.name] for c in CHECKPOINTS.columns if c.name != "journal_id"})


class SqlCheckpoints(CheckpointStore):
    """The rows of :data:`CHECKPOINTS` in one database; thread-safe.

    ``before``: called first by every method (the bulk sink commits its open
    group, so a reader sees what the store holds). ``fallback``: an older store
    of the same checkpoints (the API sink's file) merged in by :func:`further`;
    ``trust`` decides whether one of its rows may be used (its MLflow run exists).
    ``owns_engine``: :meth:`close` disposes the engine.
    """

    def __init__(self, engine: sa.Engine, *, location: str, before: Callable[[], None] | None = None,
                 fallback: CheckpointStore | None = None, trust: Callable[[Checkpoint], bool] | None = None,
                 create: bool = True, owns_engine: bool = False) -> None:
        self.engine = engine
        self.location = location
        self.upsert = _upsert(engine.dialect.name)
        self.before = before
        self._fallback = fallback
        self._trust = trust
        self._owns_engine = owns_engine  # close() disposes it (its own file; not the bulk sink's engine)
        self._lock = threading.RLock()
        if create:
            CHECKPOINTS.create(engine, checkfirst=True)

    def _fallback_row(self, cp: Checkpoint | None) -> Checkpoint | None:
        return cp if cp is None or self._trust is None or self._trust(cp) else None

    def get(self, journal_id: str) -> Checkpoint | None:
        with self._lock:
            if self.before:
                self.before()
            with reading(self.engine) as conn:
                row = conn.execute(sa.select(CHECKPOINTS).where(CHECKPOINTS.c.journal_id == journal_id)).first()
            own = from_row(row) if row is not None else None
            old = self._fallback.get(journal_id) if self._fallback is not None else None
            return further(own, self._fallback_row(old))

    def all(self) -> list[Checkpoint]:
        with self._lock:
            if self.before:
                self.before()
            with reading(self.engine) as conn:
                own = [from_row(r) for r in conn.execute(sa.select(CHECKPOINTS))]
            old = [cp for cp in (self._fallback.all() if self._fallback else ()) if self._fallback_row(cp)]
            return sorted(merged(own, old).values(), key=lambda cp: cp.path)

    def put(self, checkpoint: Checkpoint) -> None:
        with self._lock:
            if self.before:
                self.before()
            with self.engine.begin() as conn:
                conn.execute(self.upsert, [to_row(checkpoint)])

    def close(self) -> None:
        if self._fallback is not None:
            self._fallback.close()
        if self._owns_engine:
            self.engine.dispose()


class MemoryCheckpoints(CheckpointStore):
    """Checkpoints in a dictionary: a dry run's snapshot, or a sink that keeps nothing."""

    location = "memory"

    def __init__(self, rows: Iterable[Checkpoint] = ()) -> None:
        self.rows: dict[str, Checkpoint] = merged(rows)

    def get(self, journal_id: str) -> Checkpoint | None:
        return self.rows.get(journal_id)

    def all(self) -> list[Checkpoint]:
        return sorted(self.rows.values(), key=lambda cp: cp.path)

    def put(self, checkpoint: Checkpoint) -> None:
        self.rows[checkpoint.journal_id] = checkpoint


# --------------------------------------------------------------------------- the API sink's file

def _file_engine(path: Path, *, read_only: bool) -> sa.Engine:
    if read_only:
        # Without a -wal file every change is in the main file, which a writer (in WAL mode) only
        # touches at a checkpoint: read it as immutable, which creates no -shm file.
        wal = path.with_name(path.name + "-wal").exists()
        uri = f"{path.resolve().as_uri()}?{'mode=ro' if wal else 'immutable=1'}"
        return sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, timeout=30),
                                poolclass=sa.pool.NullPool)
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _durable(dbapi_connection, _record) -> None:
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=FULL")

    return engine


def _old_rows(conn: sa.Connection) -> list[Checkpoint]:
    """Rows of a file written before :data:`CHECKPOINTS` (table ``journals``, column ``offset``)."""
    if not sa.inspect(conn).has_table(_OLD_FILE_TABLE):
        return []
    rows = conn.exec_driver_sql(f"SELECT journal_id, path, run_id, mlflow_run_id, offset AS byte_offset, line, "
                                f"seq, records, ended, last_error, updated_ms FROM {_OLD_FILE_TABLE}")
    return [from_row(r) for r in rows]


def open_checkpoint_file(folder: Path) -> SqlCheckpoints:
    """The API sink's checkpoint file of one store (created on first use; old files migrated)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT_FILE
    engine = _file_engine(path, read_only=False)
    store = SqlCheckpoints(engine, location=str(path), owns_engine=True)
    with engine.begin() as conn:
        old = _old_rows(conn)
        if old:
            current = {r.journal_id: from_row(r) for r in conn.execute(sa.select(CHECKPOINTS))}
            rows = merged(current.values(), old)
            conn.execute(store.upsert, [to_row(cp) for cp in rows.values()])
            conn.exec_driver_sql(f"DROP TABLE {_OLD_FILE_TABLE}")
    return store


def read_checkpoint_file(folder: Path) -> list[Checkpoint]:
    """The rows of the API sink's file in ``folder``, read without creating or changing anything."""
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        return []
    engine = _file_engine(path, read_only=True)
    try:
        with engine.connect() as conn:
            own = [from_row(r) for r in conn.execute(sa.select(CHECKPOINTS))] \
                if sa.inspect(conn).has_table(CHECKPOINT_TABLE) else []
            return sorted(merged(own, _old_rows(conn)).values(), key=lambda cp: cp.path)
    except sa.exc.OperationalError:  # being created right now
        return []
    finally:
        engine.dispose()
