"""Open a configured store: which one, which sink, where its checkpoints and lock live.

``auto`` (the default ``ingest.sink``) picks the bulk SQL sink where its schema
guard verifies the store and falls back to the API sink with a one-line
notice; ``api`` and ``bulk`` force one. Readers (``status``, ``doctor``,
``--dry-run``) open only the checkpoints, never the store itself.

MLflow is imported by the modules this one opens, inside the functions that
open them: ``status`` must work without MLflow installed.

A journal root that is the mirror of a ship destination (``ff-ingest --root
s3://...``, :mod:`..ship.mirror`) is ingested only under the central lease this
process holds (:func:`..lease.held`): every sink opened for it is a
:class:`~..lease.FencedSink`, the mirror's blobs are a blob root, and the API
sink keeps its checkpoints in the destination
(:class:`~.object_checkpoints.ObjectCheckpoints`), so that the next central
machine continues from them. The bulk sink keeps its own, in the store.
"""

from __future__ import annotations

import logging
from pathlib import Path

from formula_foundry.errors import IngestError
from formula_foundry.tracking.config import Config, sqlite_path_of
from formula_foundry.tracking.ingest.lease import FencedSink, Lease, held
from formula_foundry.tracking.ingest.objects import open_objects
from formula_foundry.tracking.ingest.ship.mirror import MirrorInfo, mirror_of
from formula_foundry.tracking.ingest.sink import CheckpointStore, Sink
from formula_foundry.tracking.ingest.store_errors import store_errors
from formula_foundry.tracking.ingest.stores.checkpoints import (
    CHECKPOINTS,
    MemoryCheckpoints,
    SqlCheckpoints,
    open_checkpoint_file,
    read_checkpoint_file,
)
from formula_foundry.tracking.ingest.stores.engine import make_engine, reading
from formula_foundry.tracking.ingest.stores.lock import StoreLock
from formula_foundry.tracking.ingest.stores.object_checkpoints import ObjectCheckpoints
from formula_foundry.tracking.ingest.uri import is_http, redact, scheme, store_key

__all__ = ["blob_roots", "central_lease", "open_bulk_sink", "open_checkpoints", "open_sink", "read_checkpoints",
           "state_dir", "store_lock"]

log = logging.getLogger("formula_foundry.ingest")
BULK_BACKENDS = ("sqlite", "postgresql")


def state_dir(config: Config, tracking_uri: str) -> Path:
    """``<ingest.state_dir>/<store key>``: the checkpoint file and the lock of one tracking store."""
    return config.ingest.state_dir / store_key(tracking_uri)


def store_lock(config: Config, tracking_uri: str) -> StoreLock:
    """The single-ingester lock of the store (not yet taken)."""
    return StoreLock(tracking_uri, state_dir(config, tracking_uri))


def open_sink(config: Config, *, tracking_uri: str | None = None, sink: str | None = None) -> Sink:
    """The sink for ``tracking_uri`` (default: the configured store); see the module docstring."""
    from formula_foundry.tracking.ingest.stores.mlflow_api import MlflowApi, MlflowSink, quiet_mlflow_logs

    quiet_mlflow_logs()
    uri = tracking_uri or config.tracking.backend_store_uri
    choice = sink or config.ingest.sink
    folder = state_dir(config, uri)
    mirror = mirror_of(config.journal.root)
    lease = None if mirror is None else central_lease(mirror, uri)
    config.ensure_dirs()
    if choice == "bulk" and is_http(uri):
        raise IngestError(f"--sink bulk needs a SQL store; {redact(uri)} is served over HTTP")
    opened: Sink | None = None
    if choice in ("auto", "bulk") and not is_http(uri):
        opened = open_bulk_sink(config, uri, folder, forced=choice == "bulk")
    if opened is None:
        api = MlflowApi.for_config(config, uri)
        checkpoints = open_checkpoint_file(folder) if lease is None else ObjectCheckpoints(
            lease.objects, store_key(uri), journal_root=mirror.journal_root, fence=lease.check)
        opened = MlflowSink(api, checkpoints, blob_roots=blob_roots(config))
    return opened if lease is None else FencedSink(opened, lease)


def central_lease(mirror: MirrorInfo, tracking_uri: str) -> Lease:
    """The lease this process holds to ingest ``mirror`` into the store; IngestError when it holds none
    (the mirror's folder was named as a root instead of its destination)."""
    lease = held(mirror.source, store_key(tracking_uri))
    if lease is None:
        raise IngestError(f"{mirror.journal_root} is the mirror of the ship destination {mirror.source}: ingest "
                          f"it with ff-ingest --root {mirror.source}, which holds the central lease")
    return lease


def blob_roots(config: Config) -> tuple[Path, ...]:
    """Where uploads look for a blob that is not in the store its record names (a project that moved):
    the configured content-addressed store, ``journal.artifact_store``; for a mirrored root, first
    the mirror's blobs (the producer's store is on another host)."""
    mirror = mirror_of(config.journal.root)
    return (config.journal.artifact_store,) if mirror is None else (mirror.blob_root, config.journal.artifact_store)


def open_bulk_sink(config: Config, uri: str, state_folder: Path, forced: bool) -> Sink | None:
    """The bulk sink for ``uri``, or None (with a one-line notice) to use the API sink.

    ``forced`` (``--sink bulk``): raise :class:`IngestError` instead of falling back.
    """
    from formula_foundry.tracking.ingest.stores.bulk.schema import (
        installed_head_revision,
        model_problem,
        revision_problem,
        store_revisions,
    )
    from formula_foundry.tracking.ingest.stores.bulk.sink import BulkSink
    from formula_foundry.tracking.ingest.stores.mlflow_api import MlflowApi

    def decline(reason: str) -> None:
        if forced:
            raise IngestError(f"--sink bulk: {reason}")
        log.warning("notice: bulk sink not used for %s: %s; using MLflow's client API", redact(uri), reason)

    backend = scheme(uri)
    if backend not in BULK_BACKENDS:
        decline(f"it writes to SQLite and PostgreSQL stores only, not {backend or uri}")
        return None
    db = sqlite_path_of(uri)
    if backend == "sqlite" and db is None:
        decline("an in-memory SQLite store cannot be shared with MLflow")
        return None
    busy = config.ingest.sqlite_busy_timeout_seconds

    def mlflow_api() -> MlflowApi:  # experiments, runs, artifacts: through MLflow, which owns ids and defaults
        return MlflowApi.for_config(config, uri)

    api = None
    if db is not None and (not db.is_file() or db.stat().st_size == 0):
        api = mlflow_api()  # MLflow creates the SQLite store (safely: see store_init) before we open it
    engine = make_engine(uri, busy_timeout=busy)
    try:
        with store_errors("read the store's schema revision", uri):
            revisions = store_revisions(engine)
            if not revisions and api is None:  # an empty database: MLflow creates the store, then we look again
                api = mlflow_api()
                api.client.search_experiments(max_results=1)
                revisions = store_revisions(engine)
        problem = revision_problem(revisions, installed_head_revision()) or model_problem()
        if problem is not None:
            engine.dispose()
            decline(problem)
            return None
        fallback = open_checkpoint_file(state_folder) if (state_folder / "checkpoints.sqlite").is_file() else None
        return BulkSink(uri, engine=engine, api=api or mlflow_api(), fallback=fallback,
                        blob_roots=blob_roots(config))
    except BaseException:
        engine.dispose()
        raise


def read_checkpoints(config: Config, tracking_uri: str | None = None) -> list:
    """Every checkpoint of one store, from wherever the sinks keep them; creates and changes nothing.

    For readers (``status``, ``doctor``, ``--dry-run``) that must work while the
    store is down: the bulk sink's table in the store's database (when it
    exists and the database answers) merged with the API sink's file.
    """
    store = open_checkpoints(config, tracking_uri)
    try:
        return store.all()
    finally:
        store.close()


def open_checkpoints(config: Config, tracking_uri: str | None = None) -> CheckpointStore:
    """The checkpoints of one store for readers (see :func:`read_checkpoints`); creates nothing."""
    uri = tracking_uri or config.tracking.backend_store_uri
    folder = state_dir(config, uri)
    mirror = mirror_of(config.journal.root)
    if mirror is None:
        in_file = MemoryCheckpoints(read_checkpoint_file(folder))
        in_file.location = str(folder / "checkpoints.sqlite")
    else:  # the API sink's checkpoints of a mirrored root are in its destination (exit 3 when unreachable)
        remote = ObjectCheckpoints(open_objects(mirror.source), store_key(uri), journal_root=mirror.journal_root,
                                   owns_objects=True)
        try:
            in_file = MemoryCheckpoints(remote.all())
            in_file.location = remote.location
        finally:
            remote.close()
    if config.ingest.sink == "api" or scheme(uri) not in BULK_BACKENDS:
        return in_file
    db = sqlite_path_of(uri)
    if scheme(uri) == "sqlite" and (db is None or not db.is_file()):
        return in_file
    import sqlalchemy as sa  # deferred: comes with mlflow; without it only the file can exist

    try:
        engine = make_engine(uri, busy_timeout=config.ingest.sqlite_busy_timeout_seconds, connect_timeout=10,
                             read_only=True)
        with reading(engine) as conn:
            found = sa.inspect(conn).has_table(CHECKPOINTS.name)
    except Exception as exc:  # noqa: BLE001 - a reader falls back to the API sink's file
        log.warning("cannot read the bulk sink's checkpoints in %s: %s", redact(uri), str(exc)[:300])
        return in_file
    if not found:
        engine.dispose()
        return in_file
    return SqlCheckpoints(engine, location=f"{redact(uri)} (table {CHECKPOINTS.name})", fallback=in_file,
                          create=False, owns_engine=True)
