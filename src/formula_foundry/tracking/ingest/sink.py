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

Implementations: :class:`~.mlflow_sink.MlflowSink` (MLflow's client API; any
tracking URI) and :class:`MemorySink` below (for unit tests of the core).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Protocol

from formula_foundry.tracking.events import MetricPoint
from formula_foundry.tracking.journal import START, ReadPosition

__all__ = ["Batch", "Checkpoint", "CheckpointStore", "MemorySink", "RunInfo", "Sink"]


@dataclass
class Batch:
    """Everything one commit sends for one run, in journal order within each kind."""

    # (key, value, timestamp, step) each: MetricPoint, or a plain tuple from the builder's fast path
    metrics: list[MetricPoint | tuple[str, float, int, int]] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)  # artifact path -> file content
    end: tuple[str, int] | None = None  # (status, end time ms)
    records: int = 0  # journal records completed by this batch
    position: ReadPosition | None = None  # journal position after the last completed record
    closes_journal: bool = False  # holds the journal's run_end / segment_end
    conflicts: list[tuple[str, str, str]] = field(default_factory=list)  # (param, kept, refused)

    def __bool__(self) -> bool:
        return bool(self.metrics or self.params or self.tags or self.artifacts or self.end or self.records)


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


class CheckpointStore(Protocol):
    def get(self, journal_id: str) -> Checkpoint | None: ...
    def put(self, checkpoint: Checkpoint) -> None: ...
    def all(self) -> list[Checkpoint]: ...
    def record_error(self, journal_id: str, path: str, run_id: str, error: str) -> None: ...


class Sink(Protocol):
    """A tracking store, seen through the four operations replay needs.

    A sink may also set ``absorbs_repeated_metrics = True`` when a repeated
    metric point inside one batch costs it nothing (replay then leaves repeats
    in); without it, replay removes them first (MLflow's ``log_batch`` falls back
    to row-by-row inserts on a batch with a repeat).
    """

    checkpoints: CheckpointStore

    def experiment_id(self, name: str) -> str:
        """The id of the experiment ``name``, created on demand."""

    def find_run(self, run_id: str, experiment_id: str | None = None) -> RunInfo | None:
        """The MLflow run tagged ``ff.run_id = run_id`` (in one experiment, or in any)."""

    def create_run(self, *, experiment_id: str, run_id: str, run_name: str | None, start_time: int,
                   tags: dict[str, str]) -> RunInfo:
        """Create the run with ``tags`` (which include ``ff.run_id``) in one atomic call."""

    def existing_params(self, mlflow_run_id: str) -> dict[str, str]:
        """The params the run already has (for conflict detection across segments)."""

    def commit(self, mlflow_run_id: str, batch: Batch, checkpoint: Checkpoint) -> None:
        """Apply ``batch`` idempotently, then make ``checkpoint`` durable."""


# --------------------------------------------------------------------------- in-memory fake

class MemoryCheckpoints:
    def __init__(self) -> None:
        self.rows: dict[str, Checkpoint] = {}

    def get(self, journal_id: str) -> Checkpoint | None:
        return self.rows.get(journal_id)

    def put(self, checkpoint: Checkpoint) -> None:
        self.rows[checkpoint.journal_id] = checkpoint

    def all(self) -> list[Checkpoint]:
        return list(self.rows.values())

    def record_error(self, journal_id: str, path: str, run_id: str, error: str) -> None:
        old = self.rows.get(journal_id) or Checkpoint(journal_id=journal_id, path=path, run_id=run_id)
        self.rows[journal_id] = replace(old, last_error=error)


class MemorySink:
    """A store in dictionaries with MLflow's semantics (metric primary key, param rule, tag overwrite)."""

    def __init__(self) -> None:
        self.checkpoints = MemoryCheckpoints()
        self.experiments: dict[str, str] = {}
        self.runs: dict[str, dict] = {}
        self.calls = 0

    def experiment_id(self, name: str) -> str:
        return self.experiments.setdefault(name, str(len(self.experiments) + 1))

    def find_run(self, run_id: str, experiment_id: str | None = None) -> RunInfo | None:
        for mid, run in self.runs.items():
            if run["tags"].get("ff.run_id") == run_id and experiment_id in (None, run["experiment_id"]):
                return RunInfo(mid, run["experiment_id"])
        return None

    def create_run(self, *, experiment_id: str, run_id: str, run_name: str | None, start_time: int,
                   tags: dict[str, str]) -> RunInfo:
        self.calls += 1
        mid = f"m{len(self.runs):031d}"
        self.runs[mid] = {"experiment_id": experiment_id, "name": run_name, "start_time": start_time,
                          "tags": dict(tags), "params": {}, "metrics": set(), "artifacts": {},
                          "status": "RUNNING", "end_time": None}
        return RunInfo(mid, experiment_id)

    def existing_params(self, mlflow_run_id: str) -> dict[str, str]:
        return dict(self.runs[mlflow_run_id]["params"])

    def commit(self, mlflow_run_id: str, batch: Batch, checkpoint: Checkpoint) -> None:
        self.calls += 1
        run = self.runs[mlflow_run_id]
        for key, value in batch.params.items():
            if run["params"].setdefault(key, value) != value:
                raise ValueError(f"param {key} conflict")
        run["tags"].update(batch.tags)
        for key, value, timestamp, step in batch.metrics:
            nan = math.isnan(value)
            run["metrics"].add((key, timestamp, step, 0.0 if nan else value, nan))
        run["artifacts"].update(batch.artifacts)
        if batch.end:
            run["status"], run["end_time"] = batch.end
        self.checkpoints.put(checkpoint)
