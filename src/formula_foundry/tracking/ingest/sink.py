"""The narrow interface between replay and a tracking store, and the values that cross it.

Replay (``replay.py``) turns journal records into :class:`Batch` values and
hands them to a :class:`Sink` with the :class:`Checkpoint` that the batch
completes. Idempotency contract, decided here for every implementation:

* ``commit(run, batch, checkpoint)`` must be safe to repeat: the same batch
  applied twice leaves the store as applying it once (metrics carry the
  journal's own timestamps, so MLflow's primary key absorbs a repeat; params
  repeat with the same value; tags and the end status overwrite; artifact
  files are rewritten byte for byte).
* The checkpoint must never become durable before the batch it covers: it
  may claim less than the store holds (the next replay repeats a little),
  never more (that would lose data).
* ``create_run`` stores the producer run id as the tag ``ff.run_id`` in the
  same call that creates the run, so ``find_run`` recovers the mapping after
  a crash between any two calls: no orphan, no duplicate run.

Every method any caller uses is declared here; there is nothing to probe for.
Implementations: :class:`~.stores.mlflow_api.MlflowSink` (MLflow's client API;
any tracking URI) and :class:`~.stores.bulk.sink.BulkSink` (set-based SQL into
SQLite and PostgreSQL stores). Checkpoint stores: :mod:`.checkpoints`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import time
from dataclasses import dataclass, field, replace
from typing import ClassVar, NamedTuple

from formula_foundry.tracking.events import MetricPoint
from formula_foundry.tracking.journal import START, ReadPosition

__all__ = ["Batch", "Checkpoint", "CheckpointStore", "RunInfo", "Sink", "Upload"]


class Upload(NamedTuple):
    """One ``artifact`` record: a blob of the content-addressed store to put at ``path`` in the run's artifacts."""

    path: str  # the file's path inside the run's artifact location (posix, relative)
    digest: str  # sha256 of the blob, 64 lowercase hex digits
    size_bytes: int
    store_uri: str | None  # the store root the producer wrote the blob into
    line: int  # the record's line in its journal (for error messages)


@dataclass
class Batch:
    """Everything one commit sends for one run, in journal order within each kind."""

    # (key, value, timestamp, step) each: MetricPoint, or a plain tuple from the builder's fast path
    metrics: list[MetricPoint | tuple[str, float, int, int]] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)  # artifact path -> file content
    uploads: list[Upload] = field(default_factory=list)  # blobs to upload, in journal order
    # texts of the batch's ``console`` records, in journal order; the sink rewrites logs/console.txt
    # with the journal's whole console text up to the batch's end (console_text.ConsoleText)
    console: list[str] = field(default_factory=list)
    # tags to remove (``tag_delete``), applied before ``tags``: the builder keeps a key in one of the two
    deleted_tags: list[str] = field(default_factory=list)
    inputs: list[dict] = field(default_factory=list)  # ``inputs`` datasets (the record's objects), in order
    end: tuple[str, int] | None = None  # (status, end time ms)
    records: int = 0  # journal records completed by this batch
    position: ReadPosition | None = None  # journal position after the last completed record
    closes_journal: bool = False  # holds the journal's run_end / segment_end
    conflicts: list[tuple[str, str, str]] = field(default_factory=list)  # (param, kept, refused)

    def __bool__(self) -> bool:
        return bool(self.metrics or self.params or self.tags or self.artifacts or self.uploads or self.console
                    or self.deleted_tags or self.inputs or self.end or self.records)


@dataclass(frozen=True)
class Checkpoint:
    """How far one journal has been ingested, and into which MLflow run."""

    journal_id: str
    path: str
    run_id: str  # the producer's run id
    mlflow_run_id: str | None = None
    position: ReadPosition = START
    records: int = 0  # records ingested so far
    ended: bool = False  # the journal's last record (run_end / segment_end) is ingested
    last_error: str | None = None
    updated_ms: int = 0

    def advanced(self, position: ReadPosition, records: int, *, ended: bool = False,
                 mlflow_run_id: str | None = None, now_ms: int = 0) -> Checkpoint:
        return replace(self, position=position, records=self.records + records, ended=self.ended or ended,
                       mlflow_run_id=mlflow_run_id or self.mlflow_run_id, last_error=None, updated_ms=now_ms)


@dataclass(frozen=True)
class RunInfo:
    mlflow_run_id: str
    experiment_id: str


class CheckpointStore(ABC):
    """Where the checkpoints of one tracking store live (see :mod:`.checkpoints` for the kinds)."""

    #: where they are, for people (``status``, ``doctor``): a file, or a table in the store
    location: str

    @abstractmethod
    def get(self, journal_id: str) -> Checkpoint | None:
        """The checkpoint of one journal, or None if it was never ingested."""

    @abstractmethod
    def all(self) -> list[Checkpoint]:
        """Every checkpoint, ordered by journal path."""

    @abstractmethod
    def put(self, checkpoint: Checkpoint) -> None:
        """Make ``checkpoint`` durable (insert or replace the journal's row)."""

    def record_error(self, journal_id: str, path: str, run_id: str, error: str) -> None:
        """Remember why the last ingest of a journal stopped (its position is kept)."""
        old = self.get(journal_id) or Checkpoint(journal_id=journal_id, path=path, run_id=run_id)
        self.put(replace(old, last_error=error, updated_ms=now_ms()))

    def close(self) -> None:
        """Release connections and files (the default holds none)."""


class Sink(ABC):
    """A tracking store, seen through the operations replay and the watch daemon need."""

    #: ``api`` or ``bulk``: shown in summaries and the daemon's log
    kind: ClassVar[str]
    #: True when a repeated metric point inside one batch costs the sink nothing (replay then
    #: leaves repeats in); otherwise replay removes them first (MLflow's ``log_batch`` falls back
    #: to row-by-row inserts on a batch with a repeat)
    absorbs_repeated_metrics: ClassVar[bool] = False
    #: the store's URI with its secrets redacted (:func:`.uri.redact`), for every message
    display_uri: str
    checkpoints: CheckpointStore

    @abstractmethod
    def experiment_id(self, name: str) -> str:
        """The id of the experiment ``name``, created on demand."""

    @abstractmethod
    def find_run(self, run_id: str, experiment_id: str | None = None) -> RunInfo | None:
        """The MLflow run tagged ``ff.run_id = run_id`` (in one experiment, or in any)."""

    @abstractmethod
    def create_run(self, *, experiment_id: str, run_id: str, run_name: str | None, start_time: int,
                   tags: dict[str, str]) -> RunInfo:
        """Create the run with ``tags`` (which include ``ff.run_id``) in one atomic call."""

    @abstractmethod
    def existing_params(self, mlflow_run_id: str) -> dict[str, str]:
        """The params the run already has (for conflict detection across segments)."""

    @abstractmethod
    def commit(self, mlflow_run_id: str, batch: Batch, checkpoint: Checkpoint) -> None:
        """Apply ``batch`` idempotently, then make ``checkpoint`` durable."""

    def set_status(self, mlflow_run_id: str, status: str, end_time: int) -> None:
        """Mark a run ended outside any journal (the watch daemon's stale runs), as ``set_terminated``."""
        raise NotImplementedError(f"{type(self).__name__} cannot end runs on its own; "
                                  "set ingest.watch.on_stale to 'report'")

    def close(self) -> None:
        """Flush what is pending and release the store; the default closes the checkpoints."""
        self.checkpoints.close()


def now_ms() -> int:
    return int(time.time() * 1000)
