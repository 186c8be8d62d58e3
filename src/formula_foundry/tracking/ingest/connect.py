"""Open the sink for a configuration: which store, which implementation, where its state lives."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from formula_foundry.errors import IngesterLockedError
from formula_foundry.tracking.config import Config
from formula_foundry.tracking.ingest.checkpoints import (
    CheckpointFileReader,
    SqliteCheckpoints,
    redact_uri,
    store_key,
)

__all__ = ["IngesterLock", "open_sink", "state_dir"]


def state_dir(config: Config, tracking_uri: str) -> Path:
    """``<ingest.state_dir>/<store key>``: checkpoints and the lock of one tracking store."""
    return config.ingest.state_dir / store_key(tracking_uri)


def open_sink(config: Config, *, tracking_uri: str | None = None, sink: str | None = None):
    """The sink for ``tracking_uri`` (default: the configured store).

    ``sink``: ``auto`` (default from config) picks the bulk SQL sink where it is
    verified safe and falls back to the API sink; ``api`` and ``bulk`` force one.
    """
    from formula_foundry.tracking.ingest.mlflow_sink import MlflowSink, quiet_mlflow_logs

    quiet_mlflow_logs()
    uri = tracking_uri or config.tracking.backend_store_uri
    choice = sink or config.ingest.sink
    folder = state_dir(config, uri)
    config.ensure_dirs()
    if choice in ("auto", "bulk") and not uri.startswith(("http://", "https://")):
        try:
            from formula_foundry.tracking.ingest import bulk_sink
        except ImportError:
            bulk_sink = None
        if bulk_sink is not None:
            opened = bulk_sink.open_bulk_sink(config, uri, folder, forced=choice == "bulk")
            if opened is not None:
                return opened
    elif choice == "bulk":
        from formula_foundry.errors import IngestError

        raise IngestError(f"the bulk sink needs a SQL store; {redact_uri(uri)} is served over HTTP")
    return MlflowSink(uri, artifact_root_uri=config.tracking.artifact_root_uri,
                      checkpoints=SqliteCheckpoints(folder),
                      sqlite_busy_timeout=config.ingest.sqlite_busy_timeout_seconds)


class IngesterLock:
    """One ingester per store: an exclusive ``flock`` on ``<state dir>/ingester.lock``."""

    def __init__(self, folder: Path, *, what: str) -> None:
        self.path = folder / "ingester.lock"
        self.what = what
        self._fh = None

    def acquire(self) -> IngesterLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held open while the lock is held
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise IngesterLockedError(
                f"another ingester ({holder}) is already writing to {self.what}; "
                f"only one may run per store (lock: {self.path})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> IngesterLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def open_checkpoints(config: Config, tracking_uri: str | None = None):
    """The checkpoint store of one tracking store, opened without touching the store itself.

    For readers such as ``ff-ingest status`` (which must work while the store is
    down). Today every sink keeps its checkpoints in ``state_dir(config, uri)``;
    a sink that keeps them elsewhere answers here.

    The bulk sink keeps them in the store's own database (table
    ``ff_ingest_checkpoints``, merged with any rows of the API sink's file); they
    are read there when that table exists and the database answers, else from
    the file. Creates nothing: a store never ingested has no checkpoint file.
    """
    uri = tracking_uri or config.tracking.backend_store_uri
    if not uri.startswith(("http://", "https://")):
        try:
            from formula_foundry.tracking.ingest import bulk_sink
        except ImportError:  # no SQLAlchemy (MLflow not installed): only the file can exist
            bulk_sink = None
        if bulk_sink is not None:
            store = bulk_sink.open_bulk_checkpoints(config, uri, state_dir(config, uri))
            if store is not None:
                return store
    return CheckpointFileReader(state_dir(config, uri))
