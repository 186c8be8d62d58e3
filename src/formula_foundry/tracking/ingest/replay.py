"""Replay journals into a sink, from each journal's checkpoint to its last complete record.

``Replayer.ingest(paths)`` is the whole batch backfill and one step of the
watch daemon: no threads, no signals, any :class:`~.sink.Sink`.

Order: every journal's header (its first record) is read first; runs are
created parents before children, and a run's own journal before the segments
that attach to it, whatever order the files were found in. A journal whose
parent (or owner) run is neither in this pass nor in the store waits.

Per journal, in two steps: :meth:`Replayer.start_journal` finds the MLflow run
(the checkpoint remembers it; after a crash, the ``ff.run_id`` tag finds it;
otherwise create it with that tag), then :meth:`Replayer.stream` streams records
through :class:`~.plan.BatchBuilder` and commits each batch with the checkpoint
it completes. (``ff-ingest --workers N``, :mod:`.parallel`, starts every journal
first, then streams independent ones concurrently.) A corrupt line, a sequence gap or a record that
does not match the schema of its type (:mod:`.schema`) stops that journal
after committing everything before it; the other journals go on.

What one journal holds never stops the pass: anything its content or its
file raises (an unreadable file, a run that is its own ancestor, a record of
the wrong shape, the missing or corrupt blob of an ``artifact`` record:
:class:`~formula_foundry.errors.BlobError`) becomes that journal's error. Only the store's own failures
(:class:`~formula_foundry.errors.StoreUnavailableError`, and whatever a sink
or the progress callback raises) leave :meth:`Replayer.ingest`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from formula_foundry.errors import (
    BlobError,
    CorruptRecordError,
    FormulaFoundryError,
    StoreRejectedError,
    UnsupportedVersionError,
)
from formula_foundry.tracking.ingest.continuity import mismatch
from formula_foundry.tracking.ingest.discover import file_size
from formula_foundry.tracking.ingest.plan import MLFLOW_LIMITS, BatchBuilder, Limits
from formula_foundry.tracking.ingest.schema import RecordChecker, RecordSchemaError
from formula_foundry.tracking.ingest.sink import Batch, Checkpoint, Sink
from formula_foundry.tracking.journal import JournalReader, ReadPosition

__all__ = ["Header", "JournalReport", "PassReport", "Replayer", "Started", "read_header"]

TAG_PARENT = "mlflow.parentRunId"


@dataclass(frozen=True)
class Header:
    path: Path
    kind: str  # run_start | run_attach
    run_id: str
    journal_id: str
    experiment: str | None
    run_name: str | None
    parent_run_id: str | None
    tags: dict
    ts: int


@dataclass
class JournalReport:
    path: Path
    journal_id: str | None = None
    run_id: str | None = None
    mlflow_run_id: str | None = None
    state: str = "pending"  # ingested | up-to-date | pending | waiting | error | skipped
    records: int = 0  # records committed in this pass
    batches: int = 0
    created_run: bool = False
    pending_bytes: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # corrupt lines passed over with --skip-corrupt
    uploads: list[tuple[str, int]] = field(default_factory=list)  # (artifact path, bytes) uploaded (dry run: to upload)


@dataclass(frozen=True)
class Started:
    """A journal ready to stream (:meth:`Replayer.start_journal`): its MLflow run exists."""

    header: Header
    report: JournalReport  # filled in by the stream
    base: Checkpoint  # where the stream begins (its ``mlflow_run_id`` set)

    @property
    def mlflow_run_id(self) -> str:
        return self.base.mlflow_run_id

    @property
    def pending_bytes(self) -> int:
        """Bytes of the journal beyond its checkpoint (what the stream reads)."""
        return max(0, (file_size(self.header.path) or 0) - self.base.position.offset)


@dataclass
class PassReport:
    journals: list[JournalReport] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def records(self) -> int:
        return sum(j.records for j in self.journals)

    @property
    def uploads(self) -> int:
        return sum(len(j.uploads) for j in self.journals)

    @property
    def upload_bytes(self) -> int:
        return sum(size for j in self.journals for _, size in j.uploads)

    @property
    def runs_created(self) -> int:
        return sum(j.created_run for j in self.journals)

    @property
    def runs_updated(self) -> int:
        """MLflow runs that existed before this pass and received records in it."""
        created = {j.mlflow_run_id for j in self.journals if j.created_run}
        return len({j.mlflow_run_id for j in self.journals
                    if j.records and j.mlflow_run_id and j.mlflow_run_id not in created})

    @property
    def failed(self) -> list[JournalReport]:
        return [j for j in self.journals if j.state == "error" or j.errors]

    @property
    def ok(self) -> bool:
        return not self.failed


def read_header(path: Path) -> Header | None:
    """The journal's first record as a :class:`Header`; None while it is not complete yet.

    Raises :class:`~formula_foundry.errors.CorruptRecordError` (line 1) for a first record that is
    not a ``run_start``/``run_attach`` matching its schema.
    """
    first = JournalReader(path).first_record()
    if first is None:
        return None
    if first["type"] not in ("run_start", "run_attach"):
        raise CorruptRecordError(f"first record is {first['type']!r}, not run_start/run_attach",
                                 path=path, line=1, offset=0)
    try:
        RecordChecker(header=first["type"]).check(first)
    except RecordSchemaError as exc:
        raise CorruptRecordError(f"record does not match its schema: {exc}", path=path, line=1,
                                 offset=0) from None
    return Header(path=path, kind=first["type"], run_id=first["run_id"], journal_id=first["journal_id"],
                  experiment=first.get("experiment"), run_name=first.get("run_name"),
                  parent_run_id=first.get("parent_run_id"), tags=first.get("tags") or {}, ts=first["ts"])


def parent_loops(headers: list[Header]) -> set[str]:
    """The run ids on a loop of ``parent_run_id`` links (a run that is its own ancestor). Such a run
    cannot be created after its parent; runs below a loop are not on it (they wait)."""
    parent = {h.run_id: h.parent_run_id for h in headers if h.kind == "run_start"}
    looped: set[str] = set()
    cleared: set[str] = set()
    for start in parent:
        path: list[str] = []
        index: dict[str, int] = {}
        node = start
        while node in parent and node not in cleared and node not in looped:
            if node in index:
                looped.update(path[index[node]:])
                break
            index[node] = len(path)
            path.append(node)
            node = parent[node]
        cleared.update(n for n in path if n not in looped)
    return looped


def order_headers(headers: list[Header]) -> list[Header]:
    """Parents before children; a run's own journal before its attached segments. Stable otherwise.

    Iterative, and safe on loops of ``parent_run_id`` links (see :func:`parent_loops`): a header
    already on the chain being placed is not visited again.
    """
    owners = {h.run_id: h for h in headers if h.kind == "run_start"}
    done: set[int] = set()
    out: list[Header] = []

    def before(h: Header) -> Header | None:
        if h.kind == "run_start":
            return owners.get(h.parent_run_id) if h.parent_run_id else None
        return owners.get(h.run_id)

    for h in sorted(headers, key=lambda h: (h.kind != "run_start", h.ts)):
        chain: list[Header] = []
        on_chain: set[int] = set()
        node: Header | None = h
        while node is not None and id(node) not in done and id(node) not in on_chain:
            chain.append(node)
            on_chain.add(id(node))
            node = before(node)
        for node in reversed(chain):
            done.add(id(node))
            out.append(node)
    return out


class Replayer:
    """Replays journals into one sink. Keeps the producer-run -> MLflow-run map of this process."""

    def __init__(self, sink: Sink, *, limits: Limits = MLFLOW_LIMITS, skip_corrupt: bool = False,
                 dry_run: bool = False, on_progress: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.sink = sink
        self.limits = limits
        self.skip_corrupt = skip_corrupt
        self.dry_run = dry_run
        self.on_progress = on_progress
        self.clock = clock
        self.run_map: dict[str, str] = {}  # producer run id -> MLflow run id
        self._params: dict[str, dict[str, str]] = {}  # MLflow run id -> params known to be stored
        self._looped: set[str] = set()  # runs on a loop of parent links (found by the last plan())

    # -- one pass -------------------------------------------------------------------

    def ingest(self, paths: Iterable[Path]) -> PassReport:
        started = self.clock()
        report = PassReport()
        for header in self.plan(paths, report):
            report.journals.append(self.ingest_journal(header))
        report.elapsed = self.clock() - started
        return report

    def plan(self, paths: Iterable[Path], report: PassReport) -> list[Header]:
        """The headers of ``paths`` in the order to ingest them (parents first, owners before segments).

        A journal that cannot be planned (its file unreadable, its first record incomplete or
        corrupt) gets its report in ``report`` now; a run on a loop of parent links is remembered
        (:meth:`start_journal` reports it).
        """
        headers: list[Header] = []
        for path in paths:
            try:
                header = read_header(path)
            except FileNotFoundError:
                continue  # vanished between discovery and reading (a moved run dir)
            except Exception as exc:  # noqa: BLE001 - this journal's content or file: its error, never the pass's
                report.journals.append(JournalReport(path=path, state="error", errors=[_describe(exc, path)]))
                continue
            if header is None:
                report.journals.append(JournalReport(path=path, state="pending",
                                                     pending_bytes=(file_size(path) or 0)))
                continue
            headers.append(header)
        self._looped = parent_loops(headers)
        return order_headers(headers)

    def pending_bytes(self, path: Path, journal_id: str | None) -> int:
        """Bytes of ``path`` beyond its checkpoint (what an ingest would read)."""
        cp = self.sink.checkpoints.get(journal_id) if journal_id else None
        return max(0, (file_size(path) or 0) - (cp.position.offset if cp else 0))

    # -- one journal ----------------------------------------------------------------

    def _resolve_run(self, header: Header, cp: Checkpoint | None, jr: JournalReport) -> str | None:
        if cp is not None and cp.mlflow_run_id:
            self.run_map[header.run_id] = cp.mlflow_run_id
            return cp.mlflow_run_id
        known = self.run_map.get(header.run_id)
        if known:
            return known
        if header.kind == "run_attach":
            info = self.sink.find_run(header.run_id)
            if info is None:
                jr.state = "waiting"
                jr.warnings.append(f"waiting for run {header.run_id}: its owning journal is not ingested yet")
                return None
            self.run_map[header.run_id] = info.mlflow_run_id
            return info.mlflow_run_id
        experiment_id = self.sink.experiment_id(header.experiment or "Default")
        info = self.sink.find_run(header.run_id, experiment_id)
        if info is None:
            tags = dict(header.tags)
            if header.parent_run_id:
                parent = self.run_map.get(header.parent_run_id)
                if parent is None:
                    found = self.sink.find_run(header.parent_run_id)
                    parent = found.mlflow_run_id if found else None
                if parent is None:
                    jr.state = "waiting"
                    jr.warnings.append(f"waiting for parent run {header.parent_run_id}")
                    return None
                self.run_map[header.parent_run_id] = parent
                tags[TAG_PARENT] = parent
            # An unnamed run gets a name derived from its id, not MLflow's random one, so that
            # every clean ingest of the same journals yields the same store.
            info = self.sink.create_run(experiment_id=experiment_id, run_id=header.run_id,
                                        run_name=(header.run_name or header.tags.get("mlflow.runName")
                                                  or f"run-{header.run_id[:8]}"),
                                        start_time=header.ts, tags=tags)
            jr.created_run = True
        self.run_map[header.run_id] = info.mlflow_run_id
        return info.mlflow_run_id

    def _filter_params(self, mlflow_run_id: str, batch: Batch, jr: JournalReport) -> None:
        """Same value again: drop (no-op). Different value: drop and report the conflict."""
        if not batch.params and not batch.conflicts:
            return
        known = self._params.get(mlflow_run_id)
        if known is None:
            known = self._params[mlflow_run_id] = self.sink.existing_params(mlflow_run_id)
        for key, value in list(batch.params.items()):
            old = known.get(key)
            if old is None:
                continue
            del batch.params[key]
            if old != value:
                jr.errors.append(f"param conflict: {key!r} is {old!r} in MLflow; the journal's {value!r} "
                                 "was not applied (a param has one value per run)")
        for key, kept, refused in batch.conflicts:
            stored = known.get(key, kept)  # what the run holds after this batch
            if refused != stored:  # (equal: that value was the stored one; its rival is reported above)
                jr.errors.append(f"param conflict: {key!r} is {stored!r}; the journal's later {refused!r} "
                                 "was not applied (a param has one value per run)")

    def ingest_journal(self, header: Header) -> JournalReport:
        """One journal, from its checkpoint to its last complete record: :meth:`start_journal`, then :meth:`stream`."""
        started = self.start_journal(header)
        return started if isinstance(started, JournalReport) else self.stream(started)

    def start_journal(self, header: Header) -> Started | JournalReport:
        """Everything before the first record: the checkpoint, the continuity check, the MLflow run
        (found, or created with its ``ff.run_id`` tag). Returns the journal's final report when it ends
        here (up to date, an impostor, waiting for its parent or owner, a dry run, an error)."""
        path = header.path
        jr = JournalReport(path=path, journal_id=header.journal_id, run_id=header.run_id)
        if header.kind == "run_start" and header.run_id in self._looped:
            jr.state = "error"
            jr.errors.append(f"{path}:1 (byte offset 0): parent_run_id {header.parent_run_id} makes run "
                             f"{header.run_id} its own ancestor (a loop of parent runs); it cannot be created")
            return jr
        cp = self.sink.checkpoints.get(header.journal_id)
        base = cp or Checkpoint(journal_id=header.journal_id, path=str(path), run_id=header.run_id)
        size = file_size(path) or 0
        drift = mismatch(path, size, header.run_id, header.journal_id, cp)
        if drift is not None:  # never ingest an impostor; the checkpoint of a copy's original stays clean
            if drift.kind == "copy":
                jr.state = "error"
                jr.errors.append(drift.message)
                return jr
            return self._fail(jr, base, drift.message)
        if cp is not None and cp.ended and cp.position.offset >= size:
            jr.state, jr.mlflow_run_id = "up-to-date", cp.mlflow_run_id
            if cp.mlflow_run_id:
                self.run_map[header.run_id] = cp.mlflow_run_id
            return jr
        if self.dry_run:
            return self._dry_run(header, cp, jr)
        try:
            mlflow_run_id = self._resolve_run(header, cp, jr)
        except StoreRejectedError as exc:
            return self._fail(jr, base, f"{path}: {exc}")
        if mlflow_run_id is None:
            return jr
        jr.mlflow_run_id = mlflow_run_id
        return Started(header=header, report=jr, base=replace(base, path=str(path), mlflow_run_id=mlflow_run_id))

    def stream(self, started: Started) -> JournalReport:
        """The records of a started journal from its checkpoint, committed batch by batch with the
        checkpoint each batch completes. Any :class:`Replayer` on the same store may stream a journal
        that another one started (see :mod:`.parallel`)."""
        header, jr, base = started.header, started.report, started.base
        path, mlflow_run_id = header.path, started.mlflow_run_id
        reader = JournalReader(path)
        builder = BatchBuilder(self.limits, start=base.position,
                               dedupe=not self.sink.absorbs_repeated_metrics,
                               header=header.kind, ended=base.ended, path=path,
                               on_skip=(lambda e: jr.skipped.append(str(e))) if self.skip_corrupt else None)
        position = base.position
        in_store = False  # True while a store call (or the progress callback) runs: its errors are not ours

        def commit(batch: Batch) -> None:
            nonlocal base, position, in_store
            in_store = True
            self._filter_params(mlflow_run_id, batch, jr)
            new = base.advanced(batch.position, batch.records, ended=batch.closes_journal,
                                mlflow_run_id=mlflow_run_id, now_ms=int(self.clock() * 1000))
            try:
                self.sink.commit(mlflow_run_id, batch, new)
            except StoreRejectedError as exc:
                raise _Rejected(f"{path}: records {position.seq}..{batch.position.seq - 1} "
                                f"(lines {position.line}..{batch.position.line - 1}): {exc}") from None
            except BlobError as exc:  # the journal's blob, not the store: this journal waits for it
                raise _Rejected(f"{path}:{exc.line}: {exc}") from None
            self._params.setdefault(mlflow_run_id, {}).update(batch.params)
            if self.on_progress:
                self.on_progress(batch.position.offset - position.offset)
            in_store = False
            base, position = new, batch.position
            jr.records += batch.records
            jr.batches += 1
            jr.uploads += [(u.path, u.size_bytes) for u in batch.uploads]

        try:
            for chunk in reader.chunks(base.position, skip_corrupt=self.skip_corrupt,
                                       on_skip=lambda e: jr.skipped.append(str(e))):
                for batch in builder.add_chunk(chunk):
                    commit(batch)
                if builder.error is not None:
                    raise builder.error
            tail = builder.flush()
            if tail is not None:
                commit(tail)
        except _Rejected as rejected:
            return self._fail(jr, base, str(rejected))
        except (CorruptRecordError, UnsupportedVersionError, OSError) as exc:
            if in_store:
                raise
            # The reader or the builder stopped cleanly before the bad line: keep what came before it.
            tail = builder.flush()
            try:
                if tail is not None:
                    commit(tail)
            except _Rejected as rejected:
                return self._fail(jr, base, str(rejected))
            return self._fail(jr, base, _describe(exc, path))
        except Exception as exc:  # noqa: BLE001 - anything else this journal's content raised
            if in_store:
                raise
            # Nothing of the open batch is committed (its builder may be half-way through a record);
            # the journal stays at its last checkpoint.
            return self._fail(jr, base, f"{path}: cannot ingest: {type(exc).__name__}: {exc}")
        jr.pending_bytes = reader.pending_bytes
        if jr.skipped:
            jr.warnings.extend(f"skipped corrupt line (--skip-corrupt): {s}" for s in jr.skipped)
        jr.state = "ingested" if jr.records else ("up-to-date" if not jr.pending_bytes else "pending")
        return jr

    def _fail(self, jr: JournalReport, base: Checkpoint, message: str) -> JournalReport:
        jr.state = "error"
        jr.errors.append(message)
        self.sink.checkpoints.record_error(base.journal_id, base.path, base.run_id, message)
        return jr

    def _dry_run(self, header: Header, cp: Checkpoint | None, jr: JournalReport) -> JournalReport:
        start = cp.position if cp else ReadPosition()
        builder = BatchBuilder(self.limits, header=header.kind, ended=cp is not None and cp.ended,
                               path=header.path,
                               on_skip=(lambda e: jr.skipped.append(str(e))) if self.skip_corrupt else None)
        reader = JournalReader(header.path)
        try:
            for chunk in reader.chunks(start, skip_corrupt=self.skip_corrupt):
                self._planned(builder.add_chunk(chunk), jr)
                if builder.error is not None:
                    raise builder.error
                jr.records += len(chunk)
            tail = builder.flush()
            self._planned([tail] if tail is not None else [], jr)
        except Exception as exc:  # noqa: BLE001 - this journal's content or file: its error
            jr.errors.append(_describe(exc, header.path))
            jr.state = "error"
            return jr
        jr.pending_bytes = reader.pending_bytes
        jr.created_run = cp is None or not cp.mlflow_run_id
        jr.state = "ingested" if jr.records else "up-to-date"
        return jr

    @staticmethod
    def _planned(batches: list[Batch], jr: JournalReport) -> None:
        """Count what a dry run would commit."""
        jr.batches += len(batches)
        for batch in batches:
            jr.uploads += [(u.path, u.size_bytes) for u in batch.uploads]


class _Rejected(Exception):
    pass


def _describe(exc: BaseException, path: Path) -> str:
    """One line naming the journal: the error's own text, prefixed with the path (and, for an error
    that is not one of ours, its type: ``PermissionError: [Errno 13] ...``)."""
    text = str(exc) if isinstance(exc, FormulaFoundryError) else f"{type(exc).__name__}: {exc}"
    return text if str(path) in text else f"{path}: {text}"
