"""One shipping pass: every journal under the roots, from where its shipped chain ends to its last whole record.

For each journal (found by :func:`~..discover.discover`), in order:

1. **Where the remote chain ends.** The local state (:mod:`.state`) says so;
   once per process the last segment it names is checked with a HEAD (a
   destination wiped or restored is noticed). Without an entry, the host's
   segments are listed once per pass and the chain is read from the listing.
   The chain must start at 0 and have no gap; its end must be a record boundary
   of the local file.
2. **Continuity.** A file shorter than what was shipped (truncated), whose bytes
   before the shipped end changed (``tail_crc``), whose first record names another
   run or journal than its file name, or a copy of a journal shipped from another
   path that still exists: that journal's error, reported each pass and never
   shipped over. The other journals go on.
3. **The next segment.** :meth:`~formula_foundry.tracking.journal.JournalReader.chunks`
   from the shipped position, up to :data:`SEGMENT_BYTES`: only whole records that
   verify (checksum, sequence), never a torn tail. A corrupt line ends the journal's
   pass there (what precedes it ships; the line is the journal's error).
4. **Blobs first.** Every ``artifact`` record of the segment names a blob; each one
   is found on this host (the record's ``store_uri``, then ``journal.artifact_store``)
   and created at the destination unless there, its sha256 checked on the way
   (:meth:`~..objects.ObjectStore.put_new_file`; no HEAD first for a small blob: the
   conditional put decides). A blob missing or corrupt here and absent there cuts the
   segment before its record and is the journal's error (journal, line, digest).
5. **The segment**, created only if absent. If it exists (a shipper killed after its
   put and before its state write), its size says where the chain goes on, and the
   shipper continues from there. Then the state is written.

Never twice the same segment in one pass: every step of a journal's loop moves the end of its
chain forward (a put, or a segment found there), so a start tried a second time for one journal
in one pass can only be a bug; it is that journal's error (naming the key), never a loop that
re-sends one request for ever.

Resumable at any point: a kill leaves blobs (harmless: content addressed), or a
segment without its state entry (found on the next put), or a state entry one
segment behind. Never a segment naming a blob that is not there, never an overlap
or a gap: a segment is only created at the end of the chain, and only if absent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from formula_foundry.errors import BlobError, IngestError, JournalError
from formula_foundry.tracking.ingest.blobs import blob_candidates
from formula_foundry.tracking.ingest.continuity import mismatch
from formula_foundry.tracking.ingest.discover import discover, file_size, journal_id_of
from formula_foundry.tracking.ingest.objects import ContentMismatch, ObjectStore
from formula_foundry.tracking.ingest.ship.layout import (
    JOURNALS,
    LAYOUT,
    LAYOUT_KEY,
    blob_key,
    check_host,
    parse_segment_key,
    segment_key,
)
from formula_foundry.tracking.ingest.ship.state import JournalState, ShipState
from formula_foundry.tracking.journal import (
    COMPRESSED_SUFFIX,
    START,
    JournalReader,
    ReadPosition,
    open_journal_stream,
)

__all__ = ["SEGMENT_BYTES", "JournalShip", "ShipReport", "Shipper", "StatusRow", "ensure_layout", "rel_of",
           "ship_status"]

log = logging.getLogger("formula_foundry.ship")

SEGMENT_BYTES = 64 << 20  # the largest segment; a bigger backlog ships as several
BLOB_WORKERS = 8  # concurrent blob uploads, shared by the journals (many small files: latency-bound)
JOURNAL_WORKERS = 4  # journals shipped at once (each one's segments in order)
_TAIL = 256  # bytes before the shipped end whose crc32 the state keeps


def ensure_layout(objects: ObjectStore) -> str:
    """Create ``ff-ship.json`` in a new destination, or check an existing one's format and version.

    Returns the destination's id (a random one written with the file): a destination wiped and
    created again has another, so a shipper's local state of the old one is not trusted."""
    created = {**LAYOUT, "id": uuid.uuid4().hex}
    if objects.put_new(LAYOUT_KEY, json.dumps(created).encode()):
        return created["id"]
    try:
        found = json.loads(objects.get(LAYOUT_KEY))
    except (ValueError, FileNotFoundError):
        found = None
    if not isinstance(found, dict) or found.get("format") != LAYOUT["format"]:
        raise IngestError(f"{objects.display_uri}: {LAYOUT_KEY} is not an ff-ship layout file: not a ship destination")
    if not isinstance(found.get("version"), int) or found["version"] > LAYOUT["version"]:
        raise IngestError(f"{objects.display_uri}: ship layout version {found.get('version')!r}; this ff-ingest "
                          f"writes version {LAYOUT['version']}: upgrade formula-foundry")
    return str(found.get("id") or "")


def rel_of(path: Path, roots: Iterable[Path]) -> str | None:
    """``path``'s remote name: relative to the (deepest) root holding it, posix, ``.jsonl.gz`` as ``.jsonl``."""
    best: Path | None = None
    for root in roots:
        if path.is_relative_to(root) and (best is None or len(root.parts) > len(best.parts)):
            best = root
    if best is None:
        return None
    rel = path.relative_to(best).as_posix()
    return rel[: -len(COMPRESSED_SUFFIX)] if rel.endswith(COMPRESSED_SUFFIX) else rel


@dataclass
class JournalShip:
    """What one pass did with one journal."""

    path: str
    journal_id: str | None
    rel: str | None = None
    state: str = "shipped"  # shipped | pending (stopped early) | error
    size: int = 0  # the journal's bytes (uncompressed)
    shipped: int = 0  # where its remote chain ends after the pass
    bytes: int = 0  # segment bytes this pass sent
    segments: int = 0
    blobs: int = 0  # blobs this pass uploaded
    blob_bytes: int = 0
    error: str | None = None


@dataclass
class ShipReport:
    journals: list[JournalShip] = field(default_factory=list)
    seconds: float = 0.0
    stopped: bool = False  # asked to stop before every journal was done

    @property
    def ok(self) -> bool:
        return not any(j.state == "error" for j in self.journals)

    def totals(self) -> dict:
        sent = sum(j.bytes for j in self.journals) + sum(j.blob_bytes for j in self.journals)
        return {"journals": len(self.journals), "errors": sum(j.state == "error" for j in self.journals),
                "segments": sum(j.segments for j in self.journals), "bytes": sum(j.bytes for j in self.journals),
                "blobs": sum(j.blobs for j in self.journals), "blob_bytes": sum(j.blob_bytes for j in self.journals),
                "seconds": round(self.seconds, 3),
                "mb_per_s": round(sent / 1e6 / self.seconds, 2) if self.seconds > 0 else 0.0}

    def to_json(self) -> dict:
        return {"totals": self.totals(), "stopped": self.stopped, "journals": [asdict(j) for j in self.journals]}


class _JournalProblem(Exception):
    """This journal cannot go on this pass (its error, reported; the others go on)."""


@dataclass
class _Cut:
    """The next segment's extent: records from ``start`` to ``end``, its ``artifact`` records, the error after it."""

    start: ReadPosition
    end: ReadPosition
    artifacts: list[tuple[int, int, dict]]  # (offset, line, record)
    error: Exception | None = None


class Shipper:
    """Ships the journals under ``roots`` to ``objects`` as host ``host``; ``state`` must be locked by the caller.

    Holds a pool of blob threads: :meth:`close` it (or use it as a context manager)."""

    def __enter__(self) -> Shipper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __init__(self, objects: ObjectStore, state: ShipState, *, host: str, roots: Iterable[Path],
                 blob_roots: Iterable[Path] = (), segment_bytes: int = SEGMENT_BYTES,
                 journal_workers: int = JOURNAL_WORKERS, should_stop: Callable[[], bool] = lambda: False,
                 on_progress: Callable[[int], None] | None = None) -> None:
        self.objects = objects
        self.state = state
        self.host = check_host(host)
        self.roots = tuple(Path(os.path.realpath(r)) for r in roots)
        self.blob_roots = tuple(Path(r) for r in blob_roots)
        self.segment_bytes = max(1, int(segment_bytes))
        self.should_stop = should_stop
        self.on_progress = on_progress
        self._checked: set[str] = set()  # journal ids whose remote chain end this process has confirmed
        self._blobs_present: set[str] = set()  # digests known to be at the destination
        self._listing: dict[str, list[tuple[int, int]]] | None = None  # rel -> [(start, size)], once per pass
        self._layout_checked = False
        self._state_trusted = False  # the state knew this destination before this process: no listing needed
        self._listing_lock = threading.Lock()
        self._attempted: dict[str, set[int]] = {}  # journal id -> segment starts tried this pass
        self._attempted_lock = threading.Lock()
        self.journal_workers = max(1, int(journal_workers))
        self._blob_pool = ThreadPoolExecutor(max_workers=BLOB_WORKERS, thread_name_prefix="ff-ship-blob")

    # ----------------------------------------------------------------- a pass

    def ship_pass(self) -> ShipReport:
        """One pass over every journal; :class:`~..objects.ObjectStoreError` (the destination) ends it."""
        began = time.monotonic()
        report = ShipReport()
        if not self._layout_checked:
            self._state_trusted = self.state.bind(ensure_layout(self.objects))
            self._layout_checked = True
        self._listing = None
        with self._attempted_lock:
            self._attempted = {}
        self.state.all()  # read the state once, before the journal threads share it
        # One task per journal id (a copy of a journal goes after its original, in the same task);
        # tasks run on up to ``journal_workers`` threads: one journal's network waits overlap
        # another's reading. Each journal's segments stay in order, one at a time.
        tasks: dict[str | None, list[Path]] = {}
        for path in discover(self.roots):
            tasks.setdefault(journal_id_of(path) or str(path), []).append(path)

        def task(paths: list[Path]) -> list[JournalShip]:
            done = []
            for path in paths:
                if self.should_stop():
                    report.stopped = True
                    break
                done.append(self.ship_journal(path))
            return done

        try:
            if self.journal_workers <= 1 or len(tasks) <= 1:
                results = [task(paths) for paths in tasks.values()]
            else:
                with ThreadPoolExecutor(max_workers=min(self.journal_workers, len(tasks)),
                                        thread_name_prefix="ff-ship-journal") as pool:
                    results = list(pool.map(task, tasks.values()))
            report.journals = sorted((js for done in results for js in done), key=lambda js: js.path)
        finally:
            report.seconds = time.monotonic() - began
        return report

    def close(self) -> None:
        """Stop the blob threads."""
        self._blob_pool.shutdown(wait=True)

    def ship_journal(self, path: Path) -> JournalShip:
        """Ship what is new in one journal; its problems are its report's error, never an exception."""
        jid = journal_id_of(path)
        js = JournalShip(path=str(path), journal_id=jid)
        try:
            self._ship(path, js)
        except (_JournalProblem, JournalError, BlobError) as exc:
            js.state, js.error = "error", str(exc)
        except OSError as exc:  # the local journal (or a blob) could not be read
            js.state, js.error = "error", f"{path}: cannot read: {exc.strerror or exc}"
        if jid is not None:
            entry = self.state.get(jid)
            if entry is not None and entry.path == str(path) and entry.error != js.error:
                self.state.put(replace(entry, error=js.error))
        return js

    def _ship(self, path: Path, js: JournalShip) -> None:
        jid = js.journal_id
        if jid is None:
            raise _JournalProblem(f"{path}: no journal id in its name")
        size = file_size(path)
        if size is None:
            raise _JournalProblem(f"{path}: cannot stat the journal")
        js.size = size
        entry = self.state.get(jid)
        if entry is not None and entry.path != str(path):
            old = Path(entry.path)
            if old.exists() and not _same_file(old, path):
                raise _JournalProblem(f"{path}: a copy of journal {jid}, which is shipped from {entry.path}; "
                                      "not shipped (remove one of the two)")
            entry = self.state.put(replace(entry, path=str(path)))  # moved: its remote name stays
        ask = entry is None and not self._state_trusted  # a state made afresh: what is there already?
        if entry is not None and entry.last_start is None and entry.error is not None:
            entry, ask = None, True  # its chain could not be read last time: read it again (never put over it)
        if entry is None:
            rel = rel_of(path, self.roots)
            if rel is None:
                raise _JournalProblem(f"{path}: not under a journal root")
            entry = self._from_remote(path, jid, rel, ask=ask)
        js.rel = entry.rel
        js.shipped = entry.shipped.offset
        if size < entry.shipped.offset:
            raise _JournalProblem(
                f"{path}: truncated to {size} bytes, below the {entry.shipped.offset} bytes already shipped "
                f"(line {entry.shipped.line}): not shipped further (restore the journal)")
        if size == entry.shipped.offset:
            return
        self._check_tail(path, entry)
        if jid not in self._checked:
            entry = self._confirm_remote(path, entry)
            js.shipped = entry.shipped.offset
        pos = entry.shipped
        while True:
            if self.should_stop():
                js.state = "pending"
                return
            cut = self._next_cut(path, pos)
            if cut.end.offset == pos.offset:  # nothing whole and verified beyond pos (a torn tail waits)
                if cut.error is not None:
                    raise cut.error
                return
            if pos.offset == 0:
                self._check_header(path, size)
            end, blob_error = self._ship_blobs(path, cut, js)
            if end.offset > pos.offset:
                self._attempt(path, jid, entry, pos)
                entry = self._put_segment(path, entry, pos, end, js)
                pos = entry.shipped
                js.shipped = pos.offset
            if blob_error is not None:
                raise blob_error
            # a corrupt line after the cut: the next cut stops before it again and raises it

    def _attempt(self, path: Path, jid: str, entry: JournalState, pos: ReadPosition) -> None:
        """Note that this pass tries ``jid``'s segment at ``pos``; a second try is a bug: raised, not looped."""
        with self._attempted_lock:
            starts = self._attempted.setdefault(jid, set())
            again = pos.offset in starts
            starts.add(pos.offset)
        if again:
            self._checked.discard(jid)  # the next pass checks the chain against the destination
            key = segment_key(entry.host, entry.rel, pos.offset)
            raise _JournalProblem(
                f"{path}: journal {jid}: segment {key} was already tried in this pass: its chain did not move "
                "on; not shipped further (a shipper bug: please report it)")

    # ----------------------------------------------------------------- where the chain ends

    def _from_remote(self, path: Path, jid: str, rel: str, *, ask: bool) -> JournalState:
        """A new state entry for a journal this state does not know: its chain as the destination lists it
        (``ask``), or none (a state that knew this destination before never shipped it)."""
        chain = self._host_listing().get(rel, []) if ask else []
        entry = JournalState(journal_id=jid, path=str(path), host=self.host, rel=rel)
        self._checked.add(jid)
        if not chain:
            return self.state.put(entry)
        try:
            end, last_start = _chain_end(chain, rel)
            position = self._position_at(path, START, end)
        except _JournalProblem as exc:
            self.state.put(replace(entry, error=str(exc)))
            raise
        return self.state.put(replace(entry, shipped=position, last_start=last_start,
                                      tail_crc=_tail_crc(path, end, last_start)))

    def _host_listing(self) -> dict[str, list[tuple[int, int]]]:
        with self._listing_lock:
            return self._host_listing_locked()

    def _host_listing_locked(self) -> dict[str, list[tuple[int, int]]]:
        if self._listing is None:
            listing: dict[str, list[tuple[int, int]]] = {}
            for info in self.objects.list(f"{JOURNALS}{self.host}/"):
                parsed = parse_segment_key(info.key)
                if parsed is not None and parsed[0] == self.host:
                    listing.setdefault(parsed[1], []).append((parsed[2], info.size))
            self._listing = listing
        return self._listing

    def _confirm_remote(self, path: Path, entry: JournalState) -> JournalState:
        """Once per process: the segment the state says ends the chain is there, with that size."""
        if entry.last_start is None:
            self._checked.add(entry.journal_id)
            return entry  # nothing shipped yet: a segment already at 0 is found by the put
        info = self.objects.head(segment_key(entry.host, entry.rel, entry.last_start))
        if info is not None and entry.last_start + info.size == entry.shipped.offset:
            self._checked.add(entry.journal_id)
            return entry
        log.warning("%s: the destination does not hold the chain the local state says; reading it from the "
                    "destination", path)
        chain = self._list_journal(entry)
        if not chain:
            entry = self.state.put(replace(entry, shipped=START, last_start=None, tail_crc=None))
        else:
            end, last_start = _chain_end(chain, entry.rel)
            position = self._position_at(path, START, end)
            entry = self.state.put(replace(entry, shipped=position, last_start=last_start,
                                           tail_crc=_tail_crc(path, end, last_start)))
        self._checked.add(entry.journal_id)
        return entry

    def _list_journal(self, entry: JournalState) -> list[tuple[int, int]]:
        prefix = segment_key(entry.host, entry.rel, 0).rpartition("/")[0] + "/"
        return [(parsed[2], info.size) for info in self.objects.list(prefix)
                if (parsed := parse_segment_key(info.key)) is not None and parsed[1] == entry.rel]

    def _position_at(self, path: Path, start: ReadPosition, target: int) -> ReadPosition:
        """The read position of the record boundary at byte ``target`` (from ``start``); a journal error if none."""
        if target == start.offset:
            return start
        with contextlib.closing(JournalReader(path).chunks(start)) as chunks:
            for chunk in chunks:
                last = chunk.end(-1)
                if last.offset < target:
                    continue
                for i in range(len(chunk)):
                    end = chunk.end(i)
                    if end.offset == target:
                        return end
                    if end.offset > target:
                        break
                break
        raise _JournalProblem(
            f"{path}: the destination's chain for it ends at byte {target}, which is not the end of a whole, "
            "verified record of this file: the destination holds other bytes under this journal's name "
            "(another host shipping with the same --host?); not shipped")

    def _check_tail(self, path: Path, entry: JournalState) -> None:
        if entry.tail_crc is None or entry.last_start is None:
            return
        if _tail_crc(path, entry.shipped.offset, entry.last_start) != entry.tail_crc:
            raise _JournalProblem(
                f"{path}: replaced: the bytes before byte {entry.shipped.offset}, already shipped, have changed; "
                "not shipped further (restore the journal, or give the new one its own name)")

    @staticmethod
    def _check_header(path: Path, size: int) -> None:
        first = JournalReader(path).first_record()
        if first is None:
            return
        drift = mismatch(path, size, first.get("run_id"), first.get("journal_id"), None)
        if drift is not None:
            raise _JournalProblem(drift.message.replace("not ingested", "not shipped"))

    # ----------------------------------------------------------------- one segment

    def _next_cut(self, path: Path, pos: ReadPosition) -> _Cut:
        """Whole verified records from ``pos``, at most :attr:`segment_bytes` of them (at least one)."""
        cut = _Cut(start=pos, end=pos, artifacts=[])
        limit = pos.offset + self.segment_bytes
        try:
            with contextlib.closing(JournalReader(path).chunks(pos)) as chunks:
                for chunk in chunks:
                    n = len(chunk)
                    if chunk.end(-1).offset > limit:
                        n = 0
                        while n < len(chunk) and chunk.end(n).offset <= limit:
                            n += 1
                        if n == 0 and cut.end.offset == pos.offset:
                            n = 1  # one record longer than the cap still ships (alone)
                    kinds = chunk.kinds
                    for i in range(n):
                        if kinds[i] == "artifact":
                            cut.artifacts.append((chunk.offset(i), chunk.line(i), chunk.records[i]))
                    if n:
                        cut.end = chunk.end(n - 1)
                    if n < len(chunk):
                        break
        except (JournalError, OSError) as exc:  # a corrupt line, a newer format: what precedes it ships
            cut.error = exc if isinstance(exc, JournalError) else _JournalProblem(
                f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}")
        return cut

    def _ship_blobs(self, path: Path, cut: _Cut, js: JournalShip) -> tuple[ReadPosition, Exception | None]:
        """Upload the blobs the cut names; returns how far the segment may go (before a failed blob) and its error."""
        wanted: dict[str, tuple[int, int, dict]] = {}
        for offset, line, record in cut.artifacts:
            digest = record.get("digest")
            try:
                blob_key(digest)
            except ValueError:
                continue  # an invalid record names no blob; the ingester reports the record itself
            if digest not in self._blobs_present and digest not in wanted:
                wanted[digest] = (offset, line, record)
        if not wanted:
            return cut.end, None
        results: dict[str, Exception | int | None] = {}

        def one(digest: str) -> Exception | int | None:
            offset, line, record = wanted[digest]
            key = blob_key(digest)
            candidates = blob_candidates(digest, record.get("store_uri"), self.blob_roots)
            blob = next((c for c in candidates if c.is_file()), None)
            where = f"{path}:{line}"
            if blob is None:
                if self.objects.head(key) is not None:
                    return None  # not on this host (any more), but already at the destination
                looked = ", ".join(str(c) for c in candidates) or "nowhere: no store is named or configured"
                return BlobError(f"{where}: blob not found (looked in {looked}); restore it, then ship again",
                                 artifact_path=str(record.get("path")), digest=digest, line=line)
            try:
                if not self.objects.put_new_file(key, blob, sha256=digest):
                    return None  # already there (create-if-absent: content addressed, the same bytes)
            except ContentMismatch as exc:
                if self.objects.head(key) is not None:
                    return None  # the destination holds the good bytes already
                return BlobError(f"{where}: blob {blob} is corrupt: its content hashes to sha256 {exc.actual}; "
                                 "restore it, then ship again", artifact_path=str(record.get("path")),
                                 digest=digest, line=line)
            except OSError as exc:
                return BlobError(f"{where}: cannot read blob {blob}: {exc.strerror or exc}",
                                 artifact_path=str(record.get("path")), digest=digest, line=line)
            return blob.stat().st_size

        digests = list(wanted)
        if len(digests) == 1:
            results[digests[0]] = one(digests[0])
        else:
            for digest, result in zip(digests, self._blob_pool.map(one, digests)):
                results[digest] = result
        first_error: tuple[int, int, dict, Exception] | None = None
        for digest, result in results.items():
            if isinstance(result, Exception):
                offset, line, record = wanted[digest]
                if first_error is None or offset < first_error[0]:
                    first_error = (offset, line, record, result)
                continue
            self._blobs_present.add(digest)
            if result is not None:
                js.blobs += 1
                js.blob_bytes += result
                if self.on_progress is not None:
                    self.on_progress(result)
        if first_error is None:
            return cut.end, None
        offset, line, record, error = first_error
        return ReadPosition(offset, line, int(record["seq"])), error

    def _put_segment(self, path: Path, entry: JournalState, pos: ReadPosition, end: ReadPosition,
                     js: JournalShip) -> JournalState:
        """Create the segment [pos, end) unless one starts there; the state entry after it."""
        data = _read_range(path, pos.offset, end.offset)
        if len(data) != end.offset - pos.offset or not data.endswith(b"\n"):
            raise _JournalProblem(f"{path}: changed while it was read (bytes {pos.offset}-{end.offset}); "
                                  "not shipped")
        key = segment_key(entry.host, entry.rel, pos.offset)
        if self.objects.put_new(key, data):
            log.info("%s: shipped bytes %d-%d (lines %d-%d)", path, pos.offset, end.offset, pos.line, end.line - 1)
            js.segments += 1
            js.bytes += len(data)
            if self.on_progress is not None:
                self.on_progress(len(data))
            new_end = end
        else:  # an earlier shipper put it and died before its state write: continue after it
            info = self.objects.head(key)
            if info is None or info.size <= 0:
                raise _JournalProblem(f"{path}: segment {key} exists and vanished again: the destination "
                                      "is being changed by someone else")
            new_end = end if pos.offset + info.size == end.offset else self._position_at(path, pos,
                                                                                         pos.offset + info.size)
        return self.state.put(replace(entry, shipped=new_end, last_start=pos.offset, error=None,
                                      tail_crc=_tail_crc(path, new_end.offset, pos.offset, data=data
                                                         if new_end.offset == end.offset else None)))


# --------------------------------------------------------------------------- status (local only)

@dataclass(frozen=True)
class StatusRow:
    path: str
    journal_id: str | None
    rel: str | None
    size: int
    shipped: int
    pending: int
    state: str  # shipped | pending | error
    error: str | None = None


def ship_status(state: ShipState, roots: Iterable[Path]) -> list[StatusRow]:
    """Per journal under ``roots``: bytes shipped (per the local state), pending, state. No network."""
    rows: list[StatusRow] = []
    for path in discover([Path(os.path.realpath(r)) for r in roots]):
        jid = journal_id_of(path)
        entry = state.get(jid) if jid else None
        size = file_size(path) or 0
        error = None
        if entry is not None and entry.path != str(path):
            if Path(entry.path).exists() and not _same_file(Path(entry.path), path):
                error = f"{path}: a copy of journal {jid}, which is shipped from {entry.path}; not shipped"
            entry = None if error else entry
        shipped = entry.shipped.offset if entry is not None else 0
        pending = max(0, size - shipped)
        error = error or (entry.error if entry is not None else None)
        if entry is not None and size < shipped:
            error = error or f"{path}: truncated to {size} bytes, below the {shipped} bytes already shipped"
        row_state = "error" if error else "pending" if pending else "shipped"
        rows.append(StatusRow(path=str(path), journal_id=jid, rel=entry.rel if entry else None, size=size,
                              shipped=shipped, pending=pending, state=row_state, error=error))
    return rows


# --------------------------------------------------------------------------- helpers

def _chain_end(chain: list[tuple[int, int]], rel: str) -> tuple[int, int]:
    """(end, start of the last segment) of a journal's segments; a gap or overlap is that journal's error."""
    chain = sorted(chain)
    expected = 0
    for start, size in chain:
        if start != expected:
            raise _JournalProblem(f"the destination's segments of {rel} do not chain: a segment starts at byte "
                                  f"{start}, the one before ends at {expected}; not shipped (repair the destination)")
        expected = start + size
    return expected, chain[-1][0]


def _read_range(path: Path, start: int, end: int) -> bytes:
    with open_journal_stream(path) as fh:
        fh.seek(start)
        return fh.read(end - start)


def _tail_crc(path: Path, end: int, last_start: int | None, *, data: bytes | None = None) -> str | None:
    """crc32 of the (up to) :data:`_TAIL` bytes before ``end`` within the segment starting at ``last_start``."""
    if last_start is None or end <= last_start:
        return None
    n = min(_TAIL, end - last_start)
    tail = data[-n:] if data is not None else _read_range(path, end - n, end)
    if len(tail) != n:
        return "gone"
    return f"{zlib.crc32(tail):08x}"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False

