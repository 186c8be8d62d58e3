"""The bulk sink: replay into an MLflow SQL store (SQLite, PostgreSQL) with set-based inserts.

What goes where
    * Runs are inserted with the journal's own run id (``create_run``, with the
      defaults of MLflow's ``SqlAlchemyStore.create_run``), so producer run ids
      (``run.run_id``, ``mlflow.start_run()`` through ``ff-journal:``) survive.
    * Experiments, a run whose id the store already holds (MLflow picks one), dataset
      inputs, artifact files and uploads (``artifact`` records) go through MLflow's
      client API (an inner :class:`~.mlflow_sink.MlflowSink`), so MLflow owns those ids and defaults.
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
* tag deletions (``tag_delete``): ``DELETE`` of the (key, run) rows; a missing tag is a no-op.
* dataset inputs (``inputs``): MLflow's ``log_inputs``, which keeps a (dataset, run) input once.
* a run that is deleted (or missing) refuses data, as MLflow's
  ``_check_run_is_active`` does.

Group commit: consecutive commits of one journal share one open transaction,
committed when a batch is not full (a journal's tail), closes the journal,
ends within 64 KiB of the journal file's end, or when the group is 2 s old or
holds 500,000 rows; any other call (a checkpoint read, a run lookup, artifacts,
``close``) commits it first. The group's checkpoint row (its last batch's: it
covers every batch before it) is written at that commit, in the transaction of
its data: a SIGKILL loses the open group and its checkpoint together, and
replay repeats it. A failed statement or commit rolls the whole group back.

Stores: SQLite through our own engine on the same file (busy timeout
``ingest.sqlite_busy_timeout_seconds``; writes begin with ``BEGIN IMMEDIATE``,
reads take no write lock); PostgreSQL with psycopg 3 COPYs the group's metric
rows (:data:`COPY_ROWS` at a time, each in a thread of its own so that PostgreSQL
inserts while replay reads on, and the rest at the group's commit: few round trips)
straight into ``metrics`` inside a savepoint: new points (the common case) cost
PostgreSQL one pass. A chunk holding a point the store already has (a replay
whose checkpoint was lost, a point logged twice) makes that COPY fail on
MLflow's primary key; it is rolled back to the savepoint and sent again the
idempotent way: COPY into a temporary table made from ``SqlMetric``'s columns,
then one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``, for the rest of the
group. A group holds at most :data:`GROUP_SAVEPOINTS` savepoints, so that
PostgreSQL's per-backend cache of subtransactions never overflows (which would
slow every other session's snapshots). Other drivers: executemany.
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
import operator
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa  # comes with mlflow, as does everything this module imports lazily

from formula_foundry.errors import StoreRejectedError
from formula_foundry.tracking.ingest.discover import file_size
from formula_foundry.tracking.ingest.plan import Limits
from formula_foundry.tracking.ingest.sink import Batch, Checkpoint, CheckpointStore, RunInfo, Sink
from formula_foundry.tracking.ingest.store_errors import store_errors, translate
from formula_foundry.tracking.ingest.stores.bulk.schema import MODEL_COLUMNS
from formula_foundry.tracking.ingest.stores.checkpoints import CHECKPOINTS, SqlCheckpoints, to_row
from formula_foundry.tracking.ingest.stores.engine import dialect_insert, reading
from formula_foundry.tracking.ingest.stores.mlflow_api import MlflowApi
from formula_foundry.tracking.ingest.uri import redact

__all__ = ["BulkSink"]

# Group limits. Fewer commits are cheaper (each rewrites the rollback journal of the pages it
# touches: 1 s groups cost ~17% more CPU per row than one transaction at 1M rows), but an SQLite
# group that outgrows the page cache holds the exclusive lock until it commits, and MLflow's
# readers (the UI) give up after their 5 s busy timeout: 2 s keeps well inside it.
GROUP_SECONDS = 2.0  # commit an open group at least this often
GROUP_ROWS = 500_000  # ... and after this many metric rows
TAIL_BYTES = 64 << 10  # a batch ending this close to the journal's end commits at once
GROUP_SAVEPOINTS = 60  # PostgreSQL: direct COPYs (one savepoint each) per group; its backends cache 64 subxacts
COPY_ROWS = 10_000  # PostgreSQL: metric rows of a group's batches sent in one COPY (few round trips)
_CHUNK = 5_000  # rows per executemany call
_RUN_NAME_TAG = "mlflow.runName"
_first = operator.itemgetter(0)
_value_of = operator.itemgetter(1)


class BulkSink(Sink):
    """The :class:`~.sink.Sink` for SQL stores: MLflow's API for runs, SQL for the bulk of the data."""

    kind = "bulk"
    absorbs_repeated_metrics = True  # INSERT ... ON CONFLICT DO NOTHING

    def __init__(self, uri: str, *, engine: sa.Engine, api: MlflowApi, fallback: CheckpointStore | None = None,
                 limits: Limits | None = None, blob_roots: Sequence[Path] = ()) -> None:
        from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        # MLflow's own rule (NaN -> 0 + is_nan, ±inf -> ±float max); it does not use its instance.
        self._sanitize = SqlAlchemyStore.sanitize_metric_value

        self.uri = uri
        self.display_uri = redact(uri)
        self.engine = engine
        self.api = api  # MlflowSink: experiments, runs, artifacts
        self.blob_roots = tuple(blob_roots)  # where uploads look for a blob the record's store lacks
        self.limits = limits or Limits()  # what a full batch looks like (see _group_done)
        self.dialect = engine.dialect.name
        insert = self._dialect_insert = dialect_insert(self.dialect)
        self._runs = SqlRun.__table__
        self._metrics = SqlMetric.__table__
        self._latest_table = SqlLatestMetric.__table__
        self._params = SqlParam.__table__
        self._tags = SqlTag.__table__

        # metrics: MLflow's primary key absorbs repeats. Rows are tuples in this order; the
        # statement's column list comes from the model (model_problem() checked they match).
        self._metric_cols = MODEL_COLUMNS["metrics"]
        self._metric_insert = insert(self._metrics).on_conflict_do_nothing()
        compiled = self._metric_insert.compile(dialect=engine.dialect, column_keys=list(self._metric_cols))
        order = compiled.positiontup
        # SQLite: hand the driver plain tuples (SQLAlchemy's per-row processing costs ~50% more).
        self._metric_sql = str(compiled) if self.dialect == "sqlite" and order is not None \
            and tuple(order) == self._metric_cols else None
        # PostgreSQL (psycopg 3): COPY straight into metrics in a savepoint (new points: one pass, ~40%
        # less of PostgreSQL's CPU); on a primary-key clash, COPY into a temporary table shaped like
        # MLflow's (its columns, from the model), then one INSERT ... SELECT ... ON CONFLICT DO NOTHING
        # (~2x executemany). See the module docstring.
        self._staging = None
        if self.dialect == "postgresql" and engine.dialect.driver == "psycopg":
            self._staging = sa.Table("ff_ingest_metrics_in", sa.MetaData(),
                                     *[sa.Column(c.name, c.type) for c in self._metrics.columns],
                                     prefixes=["TEMPORARY"], postgresql_on_commit="DROP")
            quote = engine.dialect.identifier_preparer.quote
            self._copy_sql = (f"COPY {quote(self._staging.name)} ({', '.join(map(quote, self._metric_cols))}) "
                              "FROM STDIN")
            self._truncate_staging = f"TRUNCATE {quote(self._staging.name)}"
            self._copy_metrics_sql = (f"COPY {quote(self._metrics.name)} ({', '.join(map(quote, self._metric_cols))}) "
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

        # Checkpoints in the store's own database, written in the transaction of their data (commit);
        # a reader first commits the open group. An API-sink file of the same store is merged in, a row
        # of it trusted only if its MLflow run exists here.
        self.checkpoints = SqlCheckpoints(
            engine, location=f"{self.display_uri} (table {CHECKPOINTS.name})", before=self.flush,
            fallback=fallback, trust=lambda cp: bool(cp.mlflow_run_id) and self._run_exists(cp.mlflow_run_id))
        self._lock = threading.RLock()
        # The open group: one transaction across consecutive commits of one journal.
        self._conn: sa.Connection | None = None
        self._trans = None
        self._group_journal: str | None = None
        self._group_run: str | None = None
        self._group_started = 0.0
        self._group_rows = 0
        self._group_checked = False  # the run is known to be active in this group
        self._group_savepoints = 0  # direct COPYs into metrics in this group (PostgreSQL)
        self._staged = False  # this group sends metrics through the staging table (it created it)
        self._rows: list[tuple] = []  # PostgreSQL: the group's metric rows not sent yet (< COPY_ROWS)
        self._sender: threading.Thread | None = None  # PostgreSQL: the COPY in flight (_send_rows)
        self._sender_error: BaseException | None = None
        self._group_checkpoint: Checkpoint | None = None  # the group's last checkpoint, written at its commit
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
            self._group_savepoints, self._staged = 0, False
            self._rows, self._group_checkpoint = [], None
        return self._conn

    def _abort(self) -> None:
        """Roll the open group back: its data and its checkpoints go together."""
        with contextlib.suppress(BaseException):  # its error is this group's, being rolled back anyway
            self._join_sender()
        conn, trans = self._conn, self._trans
        self._conn = self._trans = None
        self._latest, self._stored_latest = {}, {}
        self._rows, self._group_checkpoint = [], None
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
                self._join_sender()
                if self._rows:
                    self._send_rows(self._conn, wait=True)
                if self._group_checkpoint is not None:  # the last one of the group: each covers all before it
                    self._conn.execute(self.checkpoints.upsert, [to_row(self._group_checkpoint)])
                self._write_latest(self._conn)
                self._trans.commit()
            except BaseException as exc:
                self._abort()
                if isinstance(exc, Exception):
                    raise translate(exc, "commit", self.uri) from None
                raise
            conn = self._conn
            self._conn = self._trans = None
            self._latest, self._stored_latest = {}, {}
            self._group_checkpoint = None
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
        """Create the MLflow run **with the journal's run id** (32 hex: MLflow's own format), so that the
        id the producer handed out (``run.run_id``, ``mlflow.start_run()`` through ``ff-journal:``)
        names the MLflow run too. Falls back to MLflow's API (which picks an id) when the store
        already holds that id, or the experiment is not one this can insert into."""
        with self._lock:
            self.flush()
            info = self._insert_run(experiment_id, run_id, run_name, start_time, tags)
            if info is not None:
                return info
            return self.api.create_run(experiment_id=experiment_id, run_id=run_id, run_name=run_name,
                                       start_time=start_time, tags=tags)

    def _insert_run(self, experiment_id: str, run_id: str, run_name: str | None, start_time: int,
                    tags: dict[str, str]) -> RunInfo | None:
        """MLflow's ``SqlAlchemyStore.create_run`` with our id: the run row with its defaults and its tags
        (``ff.run_id`` among them, so ``find_run`` recovers it after a crash) in one transaction."""
        from mlflow.entities import LifecycleStage, RunStatus, SourceType
        from mlflow.store.tracking.dbmodels.models import SqlExperiment
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
        from mlflow.utils.name_utils import _generate_random_name
        from mlflow.utils.uri import append_to_uri_path

        if not experiment_id.isdigit() or len(run_id) != 32:
            return None
        e, r = SqlExperiment.__table__, self._runs
        tags = dict(tags)
        name = run_name or tags.get(MLFLOW_RUN_NAME) or _generate_random_name()
        tags.setdefault(MLFLOW_RUN_NAME, name)
        with store_errors(f"create run {run_id}", self.uri), self.engine.begin() as conn:
            experiment = conn.execute(sa.select(e.c.artifact_location, e.c.lifecycle_stage)
                                      .where(e.c.experiment_id == int(experiment_id))).first()
            if experiment is None or experiment.lifecycle_stage != LifecycleStage.ACTIVE:
                return None  # MLflow's API says why
            if conn.execute(sa.select(r.c.run_uuid).where(r.c.run_uuid == run_id)).first() is not None:
                return None  # that id is another run's here: MLflow picks a new one (ff.run_id links)
            conn.execute(sa.insert(r).values(
                run_uuid=run_id, name=name, experiment_id=int(experiment_id),
                artifact_uri=append_to_uri_path(experiment.artifact_location, run_id, "artifacts"),
                source_type=SourceType.to_string(SourceType.UNKNOWN), source_name="", entry_point_name="",
                user_id=tags.get(MLFLOW_USER, "unknown"), status=RunStatus.to_string(RunStatus.RUNNING),
                start_time=start_time, end_time=None, deleted_time=None, source_version="",
                lifecycle_stage=LifecycleStage.ACTIVE))
            conn.execute(sa.insert(self._tags),
                         [{"key": k, "value": v, "run_uuid": run_id} for k, v in tags.items()])
        return RunInfo(run_id, experiment_id)

    # -- Sink: the SQL side ---------------------------------------------------------

    def existing_params(self, mlflow_run_id: str) -> dict[str, str]:
        with self._lock:
            self.flush()
            p = self._params
            with store_errors("read params", self.uri), reading(self.engine) as conn:
                rows = conn.execute(sa.select(p.c.key, p.c.value).where(p.c.run_uuid == mlflow_run_id))
                return {key: value for key, value in rows}

    def _run_exists(self, mlflow_run_id: str) -> bool:
        r = self._runs
        with reading(self.engine) as conn:
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
            if batch.uploads or batch.artifacts or batch.console:
                # Files first, through MLflow (which reads the run: no write lock of ours may be open).
                self.flush()
            if batch.uploads:
                self.api.upload_files(mlflow_run_id, batch.uploads, blob_roots=self.blob_roots)
            if batch.artifacts:
                self.api.write_artifacts(mlflow_run_id, batch.artifacts)
            if batch.inputs:  # datasets through MLflow's log_inputs (it keeps a dataset input once)
                self.flush()
                self.api.log_inputs(mlflow_run_id, batch.inputs)
            if batch.console:  # logs/console.txt rewritten whole, up to this batch's end
                self.api.write_console(mlflow_run_id, checkpoint)
            try:
                conn = self._open(checkpoint.journal_id, mlflow_run_id)
                check = not self._group_checked and bool(batch.metrics or batch.params or batch.tags
                                                         or batch.deleted_tags or batch.end)
                if check or batch.params or batch.deleted_tags or batch.tags or batch.end is not None:
                    self._join_sender()  # statements below: the connection must be ours again
                if check:
                    self._check_active(conn, mlflow_run_id)  # as log_batch / set_terminated check
                    self._group_checked = True
                if batch.params:
                    conn.execute(self._param_insert, [{"key": k, "value": v, "run_uuid": mlflow_run_id}
                                                      for k, v in batch.params.items()])
                if batch.metrics:
                    self._write_metrics(conn, mlflow_run_id, batch.metrics)
                if batch.deleted_tags:  # a key is never both deleted and set in one batch (plan.py)
                    t = self._tags
                    conn.execute(sa.delete(t).where(t.c.run_uuid == mlflow_run_id,
                                                    t.c.key.in_(batch.deleted_tags)))
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
                self._group_checkpoint = checkpoint  # written by flush(), in this transaction
            except BaseException as exc:
                self._abort()
                if isinstance(exc, Exception):
                    raise translate(exc, f"records up to line {checkpoint.position.line - 1}", self.uri) \
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
        if self._group_savepoints >= GROUP_SAVEPOINTS:
            return True
        size = file_size(Path(checkpoint.path))  # uncompressed, for an archived journal too
        return size is None or size - checkpoint.position.offset < TAIL_BYTES

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
        if self._staging is not None:  # sent COPY_ROWS at a time, and by flush()
            self._rows += rows
            if len(self._rows) >= COPY_ROWS:
                self._send_rows(conn, wait=False)  # while replay reads on
            return
        for i in range(0, len(rows), _CHUNK):
            chunk = rows[i:i + _CHUNK]
            if self._metric_sql is not None:
                conn.exec_driver_sql(self._metric_sql, chunk)
            else:
                cols = self._metric_cols
                conn.execute(self._metric_insert, [dict(zip(cols, row)) for row in chunk])

    def _send_rows(self, conn: sa.Connection, *, wait: bool) -> None:
        """PostgreSQL: send the group's pending metric rows; ``wait=False``: in a thread of its own, so
        that PostgreSQL inserts them while replay reads the next records (one COPY in flight; every
        other use of the connection first joins it: :meth:`_join_sender`)."""
        self._join_sender()
        rows, self._rows = self._rows, []
        if wait:
            self._copy_rows(conn, rows)
            return

        def send() -> None:
            try:
                self._copy_rows(conn, rows)
            except BaseException as exc:  # noqa: BLE001 - raised in the sink's thread by _join_sender
                self._sender_error = exc

        self._sender = threading.Thread(target=send, name="ff-bulk-copy", daemon=True)
        self._sender.start()

    def _join_sender(self) -> None:
        """Wait for the COPY in flight, if any; raise what it raised."""
        sender, self._sender = self._sender, None
        if sender is None:
            return
        sender.join()
        error, self._sender_error = self._sender_error, None
        if error is not None:
            raise error

    def _copy_rows(self, conn: sa.Connection, rows: list[tuple]) -> None:
        """``rows`` straight into ``metrics`` while no row of the group clashed, else through the staging
        table (see the module docstring)."""
        if not self._staged:
            if self._copy_direct(conn, rows):
                return
            self._staging.create(conn)  # dropped at the group's commit (or rollback)
            self._staged = True
        with conn.connection.driver_connection.cursor() as cursor, cursor.copy(self._copy_sql) as copy:
            for row in rows:
                copy.write_row(row)
        conn.execute(self._from_staging)
        # TRUNCATE, not DELETE: deleted rows stay in the table's heap until the transaction ends, and
        # every INSERT ... SELECT of the group would scan them again.
        conn.exec_driver_sql(self._truncate_staging)

    def _copy_direct(self, conn: sa.Connection, rows: list[tuple]) -> bool:
        """PostgreSQL: COPY ``rows`` straight into ``metrics`` inside a savepoint. False (nothing written,
        rolled back to the savepoint) when one of them is a point the store holds, or a repeat."""
        from psycopg.errors import UniqueViolation

        self._group_savepoints += 1
        try:
            with conn.begin_nested(), conn.connection.driver_connection.cursor() as cursor, \
                    cursor.copy(self._copy_metrics_sql) as copy:
                for row in rows:
                    copy.write_row(row)
        except UniqueViolation:
            return False
        return True

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
            self._join_sender()  # a query: the connection must be ours again
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
            with store_errors("set status", self.uri), self.engine.begin() as conn:
                self._check_active(conn, mlflow_run_id)
                conn.execute(sa.update(self._runs).where(self._runs.c.run_uuid == mlflow_run_id)
                             .values(status=status, end_time=end_time))

    def close(self) -> None:
        with self._lock:
            try:
                self.flush()
            finally:
                self.checkpoints.close()
                self.engine.dispose()


