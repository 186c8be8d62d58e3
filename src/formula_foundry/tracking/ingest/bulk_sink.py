"""The bulk sink: replay into an MLflow SQL store (SQLite, PostgreSQL) with set-based inserts.

What goes where
    * Experiments, runs (ids, names, defaults, artifact locations) and artifact
      files go through MLflow's client API (an inner :class:`~.mlflow_sink.MlflowSink`),
      so MLflow owns every id and default.
    * Metrics, latest metrics, params, tags and the run's end (status, end time)
      are written with SQL built from MLflow's own SQLAlchemy models
      (``SqlMetric``, ``SqlLatestMetric``, ``SqlParam``, ``SqlTag``, ``SqlRun`` in
      :mod:`mlflow.store.tracking.dbmodels.models`): no hand-written DDL, no column
      list of ours. The journal checkpoint is written in the **same database
      transaction** as the data it covers, into a table of our own in the same
      database, so no crash can separate the two.

Exactly once, decided here and nowhere else (the same outcome as MLflow's
``log_batch`` / ``set_terminated`` on the same batches, in the same order):

* metrics: ``INSERT ... ON CONFLICT DO NOTHING`` on MLflow's primary key
  (key, timestamp, step, run_uuid, value, is_nan); values sanitized exactly as
  ``SqlAlchemyStore.sanitize_metric_value`` does (NaN -> 0 with ``is_nan``,
  ±inf -> ±``sys.float_info.max``). A repeated point is a no-op, as in MLflow.
* latest_metrics: MLflow's rule from ``_update_latest_metrics_if_necessary``:
  a point replaces the current one only if ``(step, timestamp, value)`` is
  strictly greater (NaN compares as its stored 0), taken in batch order. A
  point replayed after a crash was already compared once, so it can never win
  again: recomputing over a replayed batch changes nothing.
* params: insert, ignoring a (key, run) that exists (replay has already
  filtered and reported conflicting values, see ``replay.py``).
* tags: upsert (last value wins, as ``_set_tags``); ``mlflow.runName`` also
  renames the run, as ``set_tag`` does.
* run end: ``status`` and ``end_time`` on the run row (lifecycle untouched).
* a run that is deleted (or missing) refuses data, as MLflow's
  ``_check_run_is_active`` does.

Group commit: consecutive commits of one journal share one open transaction,
committed when a batch is not full (a journal's tail), closes the journal,
ends within 64 KiB of the journal file's end, or when the group is 2 s old or
holds 500,000 rows; any other call (a checkpoint read, a run lookup, artifacts,
``close``) commits it first. Each checkpoint row still sits in the transaction
of its data: a SIGKILL loses the open group and its checkpoints together, and
replay repeats it. A failed statement or commit rolls the whole group back.

Stores: SQLite through our own engine on the same file (busy timeout
``ingest.sqlite_busy_timeout_seconds``; writes begin with ``BEGIN IMMEDIATE``,
reads take no write lock); PostgreSQL with psycopg 3 COPYs a batch's metric rows
into a temporary table made from ``SqlMetric``'s columns, then runs one
``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` (other drivers: executemany).
A daemon that wants its last full batch visible at once calls :meth:`BulkSink.flush`.

Schema guard: the store's alembic revision must be one this module was verified
on (:data:`VERIFIED_REVISIONS`, the head of mlflow 3.17.x's migrations) and the
installed MLflow's head. Otherwise ``auto`` falls back to the API sink with a
one-line notice and ``bulk`` raises :class:`~formula_foundry.errors.IngestError`
naming the revision.

On-disk format (table format 1): table ``ff_ingest_checkpoints`` in the
tracking store's database, created with SQLAlchemy Core from :data:`CHECKPOINTS`
(MLflow's schema check ignores tables it does not own)::

    journal_id VARCHAR(64) PK | path TEXT | run_id VARCHAR(64) | mlflow_run_id VARCHAR(32)
    byte_offset BIGINT | line BIGINT | seq BIGINT | records BIGINT | ended BOOLEAN
    last_error TEXT | updated_ms BIGINT

Checkpoints of the API sink (``<state dir>/checkpoints.sqlite``) are still read:
for each journal the furthest of the two rows is used (a row of the API file
only if its MLflow run exists in this store), so switching sinks never replays
from the start.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import operator
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import sqlalchemy as sa  # comes with mlflow, as does everything this module imports lazily

from formula_foundry.errors import IngestError, StoreRejectedError, StoreUnavailableError
from formula_foundry.tracking.ingest.checkpoints import redact_uri
from formula_foundry.tracking.ingest.plan import Limits
from formula_foundry.tracking.ingest.sink import Batch, Checkpoint, MemoryCheckpoints, RunInfo
from formula_foundry.tracking.journal import ReadPosition

__all__ = [
    "CHECKPOINTS",
    "CHECKPOINT_TABLE",
    "MODEL_COLUMNS",
    "VERIFIED_REVISIONS",
    "BulkCheckpoints",
    "BulkSink",
    "model_problem",
    "open_bulk_checkpoints",
    "open_bulk_sink",
    "revision_problem",
]

log = logging.getLogger("formula_foundry.ingest")

# Alembic revisions of MLflow's tracking schema this module was verified on (read against
# mlflow 3.17.2's models and sqlalchemy_store.py). dc11669786a5 is the single head of
# mlflow/store/db_migrations/versions in mlflow 3.17.x ("add job executor persistence model").
VERIFIED_REVISIONS: tuple[str, ...] = ("dc11669786a5",)

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

# Group limits. Fewer commits are cheaper (each rewrites the rollback journal of the pages it
# touches: 1 s groups cost ~17% more CPU per row than one transaction at 1M rows), but an SQLite
# group that outgrows the page cache holds the exclusive lock until it commits, and MLflow's
# readers (the UI) give up after their 5 s busy timeout: 2 s keeps well inside it.
GROUP_SECONDS = 2.0  # commit an open group at least this often
GROUP_ROWS = 500_000  # ... and after this many metric rows
TAIL_BYTES = 64 << 10  # a batch ending this close to the journal's end commits at once
_CHUNK = 5_000  # rows per executemany call
_RUN_NAME_TAG = "mlflow.runName"
_first = operator.itemgetter(0)
_value_of = operator.itemgetter(1)
_SUPPORTED = ("sqlite", "postgresql")


# --------------------------------------------------------------------------- schema guard (pure)

def revision_problem(revisions: list[str], installed_head: str | None) -> str | None:
    """Why the bulk sink must not write to a store at ``revisions`` (None: it may)."""
    if not revisions:
        return "the store has no alembic revision (not an MLflow store?)"
    if len(revisions) > 1:
        return f"the store has several alembic revisions ({', '.join(sorted(revisions))})"
    rev = revisions[0]
    if rev not in VERIFIED_REVISIONS:
        return (f"store schema revision {rev} is not one the bulk sink was verified on "
                f"({', '.join(VERIFIED_REVISIONS)})")
    if installed_head is not None and rev != installed_head:
        return f"store schema revision {rev} differs from the installed MLflow's {installed_head}"
    return None


# The columns the bulk sink writes, by MLflow table: the models must have exactly these (runs: at
# least these), or the sink is not used. A schema change comes with a new revision anyway; this
# also catches models that changed without one.
MODEL_COLUMNS: dict[str, tuple[str, ...]] = {
    "metrics": ("key", "value", "timestamp", "step", "is_nan", "run_uuid"),
    "latest_metrics": ("key", "value", "timestamp", "step", "is_nan", "run_uuid"),
    "params": ("key", "value", "run_uuid"),
    "tags": ("key", "value", "run_uuid"),
}
RUN_COLUMNS = ("run_uuid", "name", "status", "end_time", "lifecycle_stage")


def model_problem() -> str | None:
    """Why MLflow's installed models do not fit what the bulk sink writes (None: they do)."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag

    for model in (SqlMetric, SqlLatestMetric, SqlParam, SqlTag):
        have = {c.name for c in model.__table__.columns}
        want = set(MODEL_COLUMNS[model.__tablename__])
        if have != want:
            return f"MLflow's {model.__tablename__} table has columns {sorted(have)}, not {sorted(want)}"
    missing = set(RUN_COLUMNS) - {c.name for c in SqlRun.__table__.columns}
    if missing:
        return f"MLflow's runs table has no {', '.join(sorted(missing))}"
    return None


@functools.lru_cache(maxsize=1)
def installed_head_revision() -> str | None:
    """The head of the installed MLflow's tracking-store migrations (alembic reads ~100 scripts: cached)."""
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision
    except ImportError:  # pragma: no cover - a future MLflow that moved it: the pinned list still guards
        return None
    return _get_latest_schema_revision()


def store_revisions(engine: sa.Engine) -> list[str]:
    """The store's alembic revision(s); empty when it has none (an empty database)."""
    with _reading(engine) as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return []
        version = sa.table("alembic_version", sa.column("version_num"))
        return [row[0] for row in conn.execute(sa.select(version.c.version_num))]


# --------------------------------------------------------------------------- engines

def _backend(uri: str) -> str | None:
    try:
        return sa.engine.make_url(uri).get_backend_name()
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL at all
        return None


def _sqlite_file(uri: str) -> Path | None:
    from formula_foundry.tracking.config import sqlite_path_of

    return sqlite_path_of(uri)


def make_engine(uri: str, *, busy_timeout: float = 30.0) -> sa.Engine:
    """Our own engine on the store's database.

    SQLite: a busy timeout, and ``BEGIN IMMEDIATE`` for every transaction that
    writes, so the write lock is taken up front (a read lock upgraded later can
    fail with "database is locked" without waiting); reads (connections with the
    execution option ``ff_read=True``) begin a deferred transaction and take no
    write lock.
    """
    backend = _backend(uri)
    if backend != "sqlite":
        return sa.create_engine(uri, pool_pre_ping=True)
    db = _sqlite_file(uri)
    if db is None:
        raise IngestError(f"the bulk sink needs an SQLite file, not {redact_uri(uri)}")
    engine = sa.create_engine(f"sqlite:///{db}", connect_args={"timeout": busy_timeout})

    @sa.event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # the driver's own BEGIN handling off: we begin (below)

    @sa.event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("ff_read") else "BEGIN IMMEDIATE")

    return engine


def _reading(engine: sa.Engine) -> sa.Connection:
    return engine.connect().execution_options(ff_read=True)


def _classify(exc: BaseException, uri: str, what: str) -> Exception:
    from formula_foundry.tracking.ingest.mlflow_sink import classify, scrub

    if isinstance(exc, (StoreRejectedError, StoreUnavailableError)):
        return exc
    err = classify(exc)
    return type(err)(scrub(f"{what}: {err}", uri))


def _dialect_insert(dialect: str):
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    return insert


# --------------------------------------------------------------------------- checkpoints

def _row_to_checkpoint(row) -> Checkpoint:
    return Checkpoint(journal_id=row.journal_id, path=row.path, run_id=row.run_id,
                      mlflow_run_id=row.mlflow_run_id,
                      position=ReadPosition(row.byte_offset, row.line, row.seq), records=row.records,
                      ended=bool(row.ended), last_error=row.last_error, updated_ms=row.updated_ms)


def _checkpoint_row(cp: Checkpoint) -> dict:
    return {"journal_id": cp.journal_id, "path": cp.path, "run_id": cp.run_id,
            "mlflow_run_id": cp.mlflow_run_id, "byte_offset": cp.position.offset, "line": cp.position.line,
            "seq": cp.position.seq, "records": cp.records, "ended": bool(cp.ended), "last_error": cp.last_error,
            "updated_ms": cp.updated_ms or int(time.time() * 1000)}


def _further(a: Checkpoint | None, b: Checkpoint | None) -> Checkpoint | None:
    """The checkpoint that claims more (both claim no more than the store holds)."""
    if a is None or b is None:
        return a or b
    return b if (b.position.offset, b.ended) > (a.position.offset, a.ended) else a


class BulkCheckpoints:
    """Checkpoints in the store's own database (table :data:`CHECKPOINTS`); thread-safe.

    Standalone (``ff-ingest status``) it reads and writes on its own. Inside a
    :class:`BulkSink`, every call first commits the sink's open group, and the
    sink writes checkpoints itself, inside the transaction of their data.
    """

    def __init__(self, engine: sa.Engine, dialect: str, *, display_uri: str, legacy=None,
                 run_exists=None) -> None:
        self.engine = engine
        self.path = f"{display_uri} (table {CHECKPOINT_TABLE})"  # where they live, for status
        self._insert = _dialect_insert(dialect)
        self._legacy = legacy  # the API sink's SqliteCheckpoints of this store, if any
        self._run_exists = run_exists  # mlflow run id -> bool, to trust a legacy row
        self._before = None  # set by BulkSink: commit its open group first
        self._lock = threading.RLock()
        stmt = self._insert(CHECKPOINTS)
        self.upsert = stmt.on_conflict_do_update(
            index_elements=[CHECKPOINTS.c.journal_id],
            set_={c.name: stmt.excluded[c.name] for c in CHECKPOINTS.columns if c.name != "journal_id"})

    def _sync(self) -> None:
        if self._before is not None:
            self._before()

    def _trusted(self, cp: Checkpoint | None) -> Checkpoint | None:
        if cp is None or self._run_exists is None:
            return cp
        return cp if cp.mlflow_run_id and self._run_exists(cp.mlflow_run_id) else None

    def get(self, journal_id: str) -> Checkpoint | None:
        with self._lock:
            self._sync()
            with _reading(self.engine) as conn:
                row = conn.execute(sa.select(CHECKPOINTS).where(CHECKPOINTS.c.journal_id == journal_id)).first()
            own = _row_to_checkpoint(row) if row is not None else None
            legacy = self._legacy.get(journal_id) if self._legacy is not None else None
            return _further(own, self._trusted(legacy))

    def all(self) -> list[Checkpoint]:
        with self._lock:
            self._sync()
            with _reading(self.engine) as conn:
                rows = {r.journal_id: _row_to_checkpoint(r) for r in conn.execute(sa.select(CHECKPOINTS))}
            for cp in self._legacy.all() if self._legacy is not None else ():
                rows[cp.journal_id] = _further(rows.get(cp.journal_id), self._trusted(cp))
            return sorted((cp for cp in rows.values() if cp is not None), key=lambda cp: cp.path)

    def put(self, checkpoint: Checkpoint) -> None:
        with self._lock:
            self._sync()
            with self.engine.begin() as conn:
                conn.execute(self.upsert, [_checkpoint_row(checkpoint)])

    def record_error(self, journal_id: str, path: str, run_id: str, error: str) -> None:
        with self._lock:
            old = self.get(journal_id) or Checkpoint(journal_id=journal_id, path=path, run_id=run_id)
            self.put(replace(old, last_error=error, updated_ms=int(time.time() * 1000)))

    def close(self) -> None:
        if self._legacy is not None:
            self._legacy.close()


def _legacy_checkpoints(state_folder: Path | None):
    if state_folder is None or not (state_folder / "checkpoints.sqlite").is_file():
        return None
    from formula_foundry.tracking.ingest.checkpoints import SqliteCheckpoints

    return SqliteCheckpoints(state_folder)


def open_bulk_checkpoints(config, uri: str, state_folder: Path | None) -> BulkCheckpoints | None:
    """The bulk sink's checkpoints of ``uri`` for readers (``ff-ingest status``), or None.

    None when this store has none: not a SQLite/PostgreSQL store, ``ingest.sink: api``,
    no such database file, no checkpoint table, or the database does not answer.
    Creates nothing and needs no MLflow.
    """
    backend = _backend(uri)
    if config.ingest.sink == "api" or backend not in _SUPPORTED:
        return None
    if backend == "sqlite":
        db = _sqlite_file(uri)
        if db is None or not db.is_file():
            return None
    try:
        engine = make_engine(uri, busy_timeout=config.ingest.sqlite_busy_timeout_seconds)
        with _reading(engine) as conn:
            found = sa.inspect(conn).has_table(CHECKPOINT_TABLE)
    except Exception as exc:  # noqa: BLE001 - a reader falls back to the API sink's file
        log.warning("cannot read the bulk sink's checkpoints in %s: %s", redact_uri(uri), str(exc)[:300])
        return None
    if not found:
        engine.dispose()
        return None
    return BulkCheckpoints(engine, backend, display_uri=redact_uri(uri),
                           legacy=_legacy_checkpoints(state_folder))


# --------------------------------------------------------------------------- the sink

class BulkSink:
    """The :class:`~.sink.Sink` for SQL stores: MLflow's API for runs, SQL for the bulk of the data."""

    kind = "bulk"
    absorbs_repeated_metrics = True  # INSERT ... ON CONFLICT DO NOTHING

    def __init__(self, uri: str, *, engine: sa.Engine, api, state_folder: Path | None = None,
                 limits: Limits | None = None) -> None:
        from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        # MLflow's own rule (NaN -> 0 + is_nan, ±inf -> ±float max); it does not use its instance.
        self._sanitize = SqlAlchemyStore.sanitize_metric_value

        self.uri = uri
        self.display_uri = redact_uri(uri)
        self.engine = engine
        self.api = api  # MlflowSink: experiments, runs, artifacts
        self.limits = limits or Limits()  # what a full batch looks like (see _group_done)
        self.dialect = engine.dialect.name
        insert = self._dialect_insert = _dialect_insert(self.dialect)
        self._runs = SqlRun.__table__
        self._metrics = SqlMetric.__table__
        self._latest_table = SqlLatestMetric.__table__
        self._params = SqlParam.__table__

        # metrics: MLflow's primary key absorbs repeats. Rows are tuples in this order; the
        # statement's column list comes from the model (model_problem() checked they match).
        self._metric_cols = MODEL_COLUMNS["metrics"]
        self._metric_insert = insert(self._metrics).on_conflict_do_nothing()
        compiled = self._metric_insert.compile(dialect=engine.dialect, column_keys=list(self._metric_cols))
        order = compiled.positiontup
        # SQLite: hand the driver plain tuples (SQLAlchemy's per-row processing costs ~50% more).
        self._metric_sql = str(compiled) if self.dialect == "sqlite" and order is not None \
            and tuple(order) == self._metric_cols else None
        # PostgreSQL (psycopg 3): COPY into a temporary table shaped like MLflow's (its columns, from
        # the model), then one INSERT ... SELECT ... ON CONFLICT DO NOTHING: ~2x executemany.
        self._staging = None
        if self.dialect == "postgresql" and engine.dialect.driver == "psycopg":
            self._staging = sa.Table("ff_ingest_metrics_in", sa.MetaData(),
                                     *[sa.Column(c.name, c.type) for c in self._metrics.columns],
                                     prefixes=["TEMPORARY"], postgresql_on_commit="DROP")
            quote = engine.dialect.identifier_preparer.quote
            self._copy_sql = (f"COPY {quote(self._staging.name)} ({', '.join(map(quote, self._metric_cols))}) "
                              "FROM STDIN")
            self._from_staging = insert(self._metrics).from_select(
                list(self._metric_cols), sa.select(*[self._staging.c[c] for c in self._metric_cols])
            ).on_conflict_do_nothing()
        # SQLite, every value finite (the common case): the batch's (key, value, timestamp, step)
        # points go to the driver untouched; is_nan and the run id are literals of the statement.
        self._points_sql_of: tuple[str, str] | None = None  # (run, its statement)
        self._plain_points = self._metric_sql is not None and self._point_statement("0" * 32) is not None
        self._param_insert = insert(self._params).on_conflict_do_nothing()
        tag = insert(SqlTag.__table__)
        self._tag_upsert = tag.on_conflict_do_update(index_elements=["key", "run_uuid"],
                                                     set_={"value": tag.excluded.value})
        latest = insert(self._latest_table)
        self._latest_upsert = latest.on_conflict_do_update(
            index_elements=["key", "run_uuid"],
            set_={c: latest.excluded[c] for c in ("value", "timestamp", "step", "is_nan")})

        CHECKPOINTS.create(engine, checkfirst=True)
        self.checkpoints = BulkCheckpoints(engine, self.dialect, display_uri=self.display_uri,
                                           legacy=_legacy_checkpoints(state_folder), run_exists=self._run_exists)
        self.checkpoints._before = self.flush
        self._lock = threading.RLock()
        # The open group: one transaction across consecutive commits of one journal.
        self._conn: sa.Connection | None = None
        self._trans = None
        self._group_journal: str | None = None
        self._group_run: str | None = None
        self._group_started = 0.0
        self._group_rows = 0
        self._group_checked = False  # the run is known to be active in this group
        # Latest metrics of the group's run: key -> its latest row (key, value, timestamp, step[, is_nan]);
        # _stored_latest holds the rows read from the store: a row not among them is to be written.
        self._latest: dict[str, tuple] = {}
        self._stored_latest: dict[str, tuple] = {}

    # -- the open group -----------------------------------------------------------

    def _open(self, journal_id: str, run: str) -> sa.Connection:
        if self._conn is not None and (self._group_journal != journal_id or self._group_run != run):
            self.flush()
        if self._conn is None:
            conn = self.engine.connect()
            try:
                self._trans = conn.begin()
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            self._group_journal, self._group_run = journal_id, run
            self._group_started, self._group_rows = time.monotonic(), 0
            self._latest, self._stored_latest = {}, {}
            self._group_checked = False
            if self._staging is not None:
                self._staging.create(conn)  # dropped at the group's commit (or rollback)
        return self._conn

    def _abort(self) -> None:
        """Roll the open group back: its data and its checkpoints go together."""
        conn, trans = self._conn, self._trans
        self._conn = self._trans = None
        self._latest, self._stored_latest = {}, {}
        if conn is None:
            return
        with contextlib.suppress(Exception):  # the connection is being dropped anyway
            if trans is not None and trans.is_active:
                trans.rollback()
        with contextlib.suppress(Exception):
            conn.close()

    def flush(self) -> None:
        """Commit the open group (data, latest metrics, checkpoints) if there is one."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self._write_latest(self._conn)
                self._trans.commit()
            except BaseException as exc:
                self._abort()
                if isinstance(exc, Exception):
                    raise _classify(exc, self.uri, "commit") from None
                raise
            conn = self._conn
            self._conn = self._trans = None
            self._latest, self._stored_latest = {}, {}
            conn.close()

    # -- Sink: the API side --------------------------------------------------------

    def experiment_id(self, name: str) -> str:
        with self._lock:
            self.flush()
            return self.api.experiment_id(name)

    def find_run(self, run_id: str, experiment_id: str | None = None) -> RunInfo | None:
        with self._lock:
            self.flush()
            return self.api.find_run(run_id, experiment_id)

    def create_run(self, *, experiment_id: str, run_id: str, run_name: str | None, start_time: int,
                   tags: dict[str, str]) -> RunInfo:
        with self._lock:
            self.flush()
            return self.api.create_run(experiment_id=experiment_id, run_id=run_id, run_name=run_name,
                                       start_time=start_time, tags=tags)

    # -- Sink: the SQL side ---------------------------------------------------------

    def existing_params(self, mlflow_run_id: str) -> dict[str, str]:
        with self._lock:
            self.flush()
            p = self._params
            try:
                with _reading(self.engine) as conn:
                    rows = conn.execute(sa.select(p.c.key, p.c.value).where(p.c.run_uuid == mlflow_run_id))
                    return {key: value for key, value in rows}
            except Exception as exc:  # noqa: BLE001 - classified
                raise _classify(exc, self.uri, "read params") from None

    def _run_exists(self, mlflow_run_id: str) -> bool:
        r = self._runs
        with _reading(self.engine) as conn:
            return conn.execute(sa.select(r.c.run_uuid).where(r.c.run_uuid == mlflow_run_id)).first() is not None

    def _check_active(self, conn: sa.Connection, run: str) -> None:
        """MLflow's ``_check_run_is_active``: no data into a deleted or missing run."""
        r = self._runs
        stage = conn.execute(sa.select(r.c.lifecycle_stage).where(r.c.run_uuid == run)).scalar()
        if stage is None:
            raise StoreRejectedError(f"MLflow run {run} does not exist in {self.display_uri}")
        if stage != "active":
            raise StoreRejectedError(f"MLflow run {run} is {stage}: it must be in the 'active' state to "
                                     "receive data (restore it, or delete it permanently with mlflow gc)")

    def commit(self, mlflow_run_id: str, batch: Batch, checkpoint: Checkpoint) -> None:
        """Apply ``batch`` and its ``checkpoint`` in the open group's transaction (see the module doc)."""
        with self._lock:
            if batch.artifacts:
                # Files first, through MLflow (which reads the run: no write lock of ours may be open).
                self.flush()
                self.api._write_artifacts(mlflow_run_id, batch.artifacts)
            try:
                conn = self._open(checkpoint.journal_id, mlflow_run_id)
                if not self._group_checked and (batch.metrics or batch.params or batch.tags or batch.end):
                    self._check_active(conn, mlflow_run_id)  # as log_batch / set_terminated check
                    self._group_checked = True
                if batch.params:
                    conn.execute(self._param_insert, [{"key": k, "value": v, "run_uuid": mlflow_run_id}
                                                      for k, v in batch.params.items()])
                if batch.metrics:
                    self._write_metrics(conn, mlflow_run_id, batch.metrics)
                if batch.tags:
                    conn.execute(self._tag_upsert, [{"key": k, "value": v, "run_uuid": mlflow_run_id}
                                                    for k, v in batch.tags.items()])
                    if _RUN_NAME_TAG in batch.tags:  # as MLflow's set_tag -> update_run_info
                        conn.execute(sa.update(self._runs).where(self._runs.c.run_uuid == mlflow_run_id)
                                     .values(name=batch.tags[_RUN_NAME_TAG]))
                if batch.end is not None:
                    status, end_time = batch.end
                    conn.execute(sa.update(self._runs).where(self._runs.c.run_uuid == mlflow_run_id)
                                 .values(status=status, end_time=end_time))
                conn.execute(self.checkpoints.upsert, [_checkpoint_row(checkpoint)])
            except BaseException as exc:
                self._abort()
                if isinstance(exc, Exception):
                    raise _classify(exc, self.uri, f"records up to line {checkpoint.position.line - 1}") \
                        from None
                raise
            self._group_rows += len(batch.metrics)
            if self._group_done(batch, checkpoint):
                self.flush()

    def _group_done(self, batch: Batch, checkpoint: Checkpoint) -> bool:
        lim = self.limits
        full = (len(batch.metrics) >= lim.metrics or len(batch.params) >= lim.params
                or len(batch.tags) >= lim.tags
                or len(batch.metrics) + len(batch.params) + len(batch.tags) >= lim.entities)
        if not full or batch.closes_journal or batch.end is not None:
            return True
        if self._group_rows >= GROUP_ROWS or time.monotonic() - self._group_started >= GROUP_SECONDS:
            return True
        try:
            left = os.stat(checkpoint.path).st_size - checkpoint.position.offset
        except OSError:
            return True
        return left < TAIL_BYTES

    def _write_metrics(self, conn: sa.Connection, run: str, metrics) -> None:
        """Insert a batch's points (``(key, value, timestamp, step)`` tuples) and track latest metrics."""
        total = sum(map(_value_of, metrics))
        if total - total == 0.0 and self._plain_points:
            # Every value finite (a sum that overflows only sends us down the general path): the
            # points go to the driver as they are, the run id and is_nan are in the statement.
            self._update_latest(conn, run, metrics)
            sql = self._points_sql(run)
            for i in range(0, len(metrics), _CHUNK):
                conn.exec_driver_sql(sql, metrics[i:i + _CHUNK])
            return
        sanitize = self._sanitize  # MLflow's: NaN -> 0 with is_nan, ±inf -> ±float max
        rows = []
        for key, value, timestamp, step in metrics:
            is_nan = False
            if value - value != 0.0:
                is_nan, value = sanitize(None, value)
            rows.append((key, value, timestamp, step, is_nan, run))
        self._update_latest(conn, run, [row[:5] for row in rows])
        if self._staging is not None:
            with conn.connection.driver_connection.cursor() as cursor, cursor.copy(self._copy_sql) as copy:
                for row in rows:
                    copy.write_row(row)
            conn.execute(self._from_staging)
            conn.execute(sa.delete(self._staging))
            return
        for i in range(0, len(rows), _CHUNK):
            chunk = rows[i:i + _CHUNK]
            if self._metric_sql is not None:
                conn.exec_driver_sql(self._metric_sql, chunk)
            else:
                cols = self._metric_cols
                conn.execute(self._metric_insert, [dict(zip(cols, row)) for row in chunk])

    def _point_statement(self, run: str) -> str | None:
        """``INSERT INTO metrics ... VALUES (?, ?, ?, ?, false, '<run>') ON CONFLICT DO NOTHING`` from the model."""
        dialect = self.engine.dialect
        run_literal = sa.literal(run, sa.String()).compile(dialect=dialect, compile_kwargs={"literal_binds": True})
        stmt = self._dialect_insert(self._metrics).inline().values(  # inline: no RETURNING of the literals
            {"key": sa.bindparam("key"), "value": sa.bindparam("value"), "timestamp": sa.bindparam("timestamp"),
             "step": sa.bindparam("step"), "is_nan": sa.false(), "run_uuid": sa.literal_column(str(run_literal))}
        ).on_conflict_do_nothing()
        compiled = stmt.compile(dialect=dialect)
        sql = str(compiled)
        if tuple(compiled.positiontup or ()) != ("key", "value", "timestamp", "step") or "RETURNING" in sql:
            return None
        return sql

    def _points_sql(self, run: str) -> str:
        if self._points_sql_of is None or self._points_sql_of[0] != run:
            self._points_sql_of = (run, self._point_statement(run))
        return self._points_sql_of[1]

    def _update_latest(self, conn: sa.Connection, run: str, rows) -> None:
        """MLflow's ``_update_latest_metrics_if_necessary``, over the group's cached view of the run.

        ``rows``: ``(key, value, timestamp, step[, is_nan])`` in batch order, values as stored. A
        row replaces the current latest point of its key only if ``(step, timestamp, value)`` is
        strictly greater (MLflow's ``_compare_metrics``; NaN compares as its stored 0). The
        winning row itself is kept (no new objects per row on this hot path).
        """
        latest = self._latest
        missing = set(map(_first, rows)) - latest.keys()
        if missing:
            t = self._latest_table
            names = sorted(missing)
            for i in range(0, len(names), 500):
                query = sa.select(t.c.key, t.c.value, t.c.timestamp, t.c.step, t.c.is_nan).where(
                    t.c.run_uuid == run, t.c.key.in_(names[i:i + 500]))
                for key, value, timestamp, step, is_nan in conn.execute(query):
                    latest[key] = self._stored_latest[key] = (key, value, timestamp, step, bool(is_nan))
        get = latest.get
        for row in rows:
            cur = get(row[0])
            if cur is None or row[3] > cur[3] or (row[3] == cur[3] and (row[2] > cur[2] or (
                    row[2] == cur[2] and row[1] > cur[1]))):  # (step, timestamp, value) > current
                latest[row[0]] = row

    def _write_latest(self, conn: sa.Connection) -> None:
        stored = self._stored_latest
        dirty = [{"key": row[0], "run_uuid": self._group_run, "value": row[1], "timestamp": row[2],
                  "step": row[3], "is_nan": len(row) > 4 and row[4]}
                 for key, row in self._latest.items() if row is not stored.get(key)]
        if dirty:
            conn.execute(self._latest_upsert, dirty)

    def set_status(self, mlflow_run_id: str, status: str, end_time: int) -> None:
        """Mark a run ended (the watch daemon's stale runs), as MLflow's ``set_terminated``."""
        with self._lock:
            self.flush()
            try:
                with self.engine.begin() as conn:
                    self._check_active(conn, mlflow_run_id)
                    conn.execute(sa.update(self._runs).where(self._runs.c.run_uuid == mlflow_run_id)
                                 .values(status=status, end_time=end_time))
            except Exception as exc:  # noqa: BLE001 - classified
                raise _classify(exc, self.uri, "set status") from None

    def close(self) -> None:
        with self._lock:
            try:
                self.flush()
            finally:
                self.checkpoints.close()
                self.api.close()
                self.engine.dispose()


# --------------------------------------------------------------------------- opening

def open_bulk_sink(config, uri: str, state_folder: Path, forced: bool) -> BulkSink | None:
    """The bulk sink for ``uri``, or None (with a one-line notice) to use the API sink.

    ``forced`` (``--sink bulk``): raise :class:`IngestError` instead of falling back.
    """
    def decline(reason: str) -> None:
        if forced:
            raise IngestError(f"--sink bulk: {reason}")
        log.warning("notice: bulk sink not used for %s: %s; using MLflow's client API", redact_uri(uri), reason)

    backend = _backend(uri)
    if backend not in _SUPPORTED:
        decline(f"it writes to SQLite and PostgreSQL stores only, not {backend or uri.split(':')[0]}")
        return None
    if backend == "sqlite" and _sqlite_file(uri) is None:
        decline("an in-memory SQLite store cannot be shared with MLflow")
        return None
    from formula_foundry.tracking.ingest.mlflow_sink import MlflowSink

    busy = config.ingest.sqlite_busy_timeout_seconds
    api = None

    def api_sink() -> MlflowSink:
        # Checkpoints are ours (in the store); the API sink only creates runs and writes artifacts.
        return MlflowSink(uri, artifact_root_uri=config.tracking.artifact_root_uri,
                          checkpoints=MemoryCheckpoints(), sqlite_busy_timeout=busy)

    db = _sqlite_file(uri)
    if db is not None and (not db.is_file() or db.stat().st_size == 0):
        api = api_sink()  # MLflow creates the SQLite store (safely: see store_init) before we open it
    engine = make_engine(uri, busy_timeout=busy)
    try:
        try:
            revisions = store_revisions(engine)
            if not revisions and api is None:  # an empty database: MLflow creates the store, then we look again
                api = api_sink()
                api.client.search_experiments(max_results=1)
                revisions = store_revisions(engine)
        except (StoreRejectedError, StoreUnavailableError):
            raise
        except Exception as exc:  # noqa: BLE001 - an unreachable store is an error, not a fallback
            raise _classify(exc, uri, "read the store's schema revision") from None
        problem = revision_problem(revisions, installed_head_revision()) or model_problem()
        if problem is not None:
            engine.dispose()
            decline(problem)
            return None
        return BulkSink(uri, engine=engine, api=api or api_sink(), state_folder=state_folder)
    except BaseException:
        engine.dispose()
        raise
