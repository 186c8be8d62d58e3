"""``ff-ingest --workers N``: independent journals replayed concurrently, each in order and exactly once.

One pass in two phases::

    plan + start (caller's thread, caller's sink)          stream (N threads, a sink each)
    headers -> order -> start_journal() each  ──units──►   worker 1: unit, unit, ...  ──► store
    (runs found or created, parents first)                  worker N: unit, ...        ──► store

1. **Start** (one thread, the caller's :class:`~.replay.Replayer` and sink): every
   header is read and ordered as in a sequential pass (parents before children,
   a run's own journal before its segments), and each journal is *started*
   (:meth:`~.replay.Replayer.start_journal`): checkpoint, continuity check, and its
   MLflow run found or created. So every run exists, with its ``ff.run_id`` and
   ``mlflow.parentRunId`` tags, before any record streams. A journal that ends
   there (up to date, waiting, an error) has its final report already.
2. **Stream** (N threads): the started journals are grouped into **units** that
   stay sequential: every journal of one producer run (its owning journal, then
   its segments, in plan order), because a run's params (conflict detection) and
   latest metrics are read-modify-write. Units are independent: N workers take
   them biggest first (pending bytes), so one large run does not end the pass
   alone. Each worker opens **its own sink** (``open_sink()``): engines, MLflow
   clients and checkpoint connections are never shared between threads; each
   streams with its own :class:`~.replay.Replayer`.

Exactly once holds per journal as in a sequential pass: each journal is in one
unit, streamed by one worker from its checkpoint, every batch committed with
its checkpoint (:mod:`.sink`'s contract), so a SIGKILL at any point leaves what
one more pass completes.

Stopping: the first exception of a worker (a
:class:`~formula_foundry.errors.StoreUnavailableError`, whatever a sink raises)
stops the others after their current batch and is raised in the caller's
thread, so exit codes are those of a sequential pass. Ctrl-C (in the caller's
thread) does the same, then raises :class:`KeyboardInterrupt`; a second Ctrl-C
stops waiting for the workers. Committed batches stay committed with their
checkpoints; each worker closes its own sink (which commits an open group).

The report lists journals in plan order, as a sequential pass does. The
progress callback of the caller's replayer (a ``tqdm`` bar) is called under a
lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from formula_foundry.tracking.ingest.replay import JournalReport, PassReport, Replayer, Started
from formula_foundry.tracking.ingest.sink import Sink
from formula_foundry.tracking.ingest.uri import scheme

__all__ = ["AUTO_WORKERS", "ingest_parallel", "workers_for"]

#: ``ingest.workers: 0`` (auto) on a server database or an HTTP store
AUTO_WORKERS = 4
_JOIN_POLL = 0.2  # seconds between checks of the workers (Ctrl-C is handled between them)


def workers_for(requested: int, tracking_uri: str) -> int:
    """The number of workers: ``requested`` (``--workers``, ``ingest.workers``) when above 0; for 0
    (auto) 1 on SQLite (one writer at a time anyway) and :data:`AUTO_WORKERS` on every other store."""
    if requested > 0:
        return requested
    return 1 if scheme(tracking_uri) == "sqlite" else AUTO_WORKERS


class _Cancelled(BaseException):
    """Raised in a worker (by its progress hook, after a commit) when the pass is stopping.

    A ``BaseException``: the replay's handlers of a journal's own errors must not take it."""


@dataclass
class _Unit:
    """The started journals of one producer run, streamed in order by one worker."""

    items: list[tuple[int, Started]]  # (slot in the report, the started journal)
    pending_bytes: int = 0


class _Pass:
    """The shared state of one parallel stream phase: the queue of units, the results, the first error."""

    def __init__(self, planner: Replayer, units: list[_Unit], results: list[JournalReport],
                 open_sink: Callable[[], Sink]) -> None:
        self.planner = planner
        self.units = units  # biggest last: workers pop from the end
        self.results = results
        self.open_sink = open_sink
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()  # the queue and the first error
        self._progress_lock = threading.Lock()

    def next_unit(self) -> _Unit | None:
        with self._lock:
            return self.units.pop() if self.units and not self.stop.is_set() else None

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = exc
        self.stop.set()

    def progress(self, nbytes: int) -> None:
        """Every worker's progress hook: stop after this batch when asked to; else the caller's callback."""
        if self.stop.is_set():
            raise _Cancelled
        update = self.planner.on_progress
        if update is not None:
            with self._progress_lock:
                update(nbytes)

    def work(self) -> None:
        """One worker: its own sink and replayer, units until none is left or the pass stops."""
        sink = None
        try:
            sink = self.open_sink()
            replayer = Replayer(sink, limits=self.planner.limits, skip_corrupt=self.planner.skip_corrupt,
                                on_progress=self.progress, clock=self.planner.clock)
            while (unit := self.next_unit()) is not None:
                for slot, started in unit.items:
                    if self.stop.is_set():
                        return
                    self.results[slot] = replayer.stream(started)
        except _Cancelled:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, which raises it
            self.fail(exc)
        finally:
            if sink is not None:
                try:
                    sink.close()
                except BaseException as exc:  # noqa: BLE001 - as above (a failed last commit)
                    self.fail(exc)


def ingest_parallel(replayer: Replayer, paths: Iterable[Path], *, workers: int,
                    open_sink: Callable[[], Sink]) -> PassReport:
    """One pass over ``paths`` with ``workers`` concurrent streams (see the module docstring).

    ``replayer`` plans and starts every journal on its own sink, in this thread;
    ``open_sink()`` opens one more sink on the same store for each worker.
    Raises what a worker raised (the first), or :class:`KeyboardInterrupt`.
    """
    started_at = replayer.clock()
    report = PassReport()
    slots: list[JournalReport] = []
    units: dict[str, _Unit] = {}
    for header in replayer.plan(paths, report):
        started = replayer.start_journal(header)
        if isinstance(started, JournalReport):
            slots.append(started)
            continue
        unit = units.setdefault(header.run_id, _Unit(items=[]))
        unit.items.append((len(slots), started))
        unit.pending_bytes += started.pending_bytes
        slots.append(started.report)
    queue = sorted(units.values(), key=lambda u: u.pending_bytes)  # biggest last (popped first)
    threads = min(workers, len(queue))
    if threads <= 1:  # nothing to share: stream here, on the caller's sink
        for unit in reversed(queue):
            for slot, started in unit.items:
                slots[slot] = replayer.stream(started)
    else:
        _run(_Pass(replayer, queue, slots, open_sink), threads)
    report.journals += slots
    report.elapsed = replayer.clock() - started_at
    return report


def _run(shared: _Pass, threads: int) -> None:
    """Run ``threads`` workers to the end; raise the first failure, or Ctrl-C once they stopped."""
    pool = [threading.Thread(target=shared.work, name=f"ff-ingest-worker-{i + 1}", daemon=True)
            for i in range(threads)]
    for thread in pool:
        thread.start()
    try:
        _join(pool)
    except KeyboardInterrupt:
        shared.stop.set()  # each worker stops after its current batch and closes its sink
        try:
            _join(pool)
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: stop waiting (daemon threads end with the process)
        raise
    if shared.error is not None:
        raise shared.error


def _join(pool: list[threading.Thread]) -> None:
    for thread in pool:
        while thread.is_alive():
            thread.join(_JOIN_POLL)
