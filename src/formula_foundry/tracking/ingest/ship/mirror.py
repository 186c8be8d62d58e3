"""The central ingester's local mirror of a ship destination: shipped journals as plain journal files.

``ff-ingest --root s3://bucket/prefix`` (or a shipped folder) first brings the
destination's new segments and blobs into a folder of its own, then ingests
that folder with the exact code and checkpoint rules of local journals.

On-disk format (mirror format 1), under ``<ingest.state_dir>/mirror/<key>/``
(``<key>``: :func:`mirror_key` of the destination's URI)::

    ff-mirror.json                         {"format": "ff-mirror", "version": 1, "source": "<destination URI>"}
    sync.lock                              flock: one sync at a time
    journals/<host>/<rel>                  each shipped journal: the concatenation of its segments
                                           (``<rel>`` ends in ``tracking/<run_id>.<journal_id>.jsonl``,
                                           so discovery finds them as any journal)
    blobs/objects/sha256/<aa>/<digest>     the blobs their ``artifact`` records name
                                           (an :class:`~formula_foundry.substrate.ArtifactStore`,
                                           a blob root of the uploads: ``stores.connect.blob_roots``)

A sync (:meth:`Mirror.sync`), under the lock:

1. lists ``journals/`` once (a segment is listed only once its blobs are shipped);
2. for each journal (8 at a time), finds what the local file holds: the end of the last whole
   segment of the remote chain that fits in the file's size. Only segments that
   chain on from there (``start`` = that end) are fetched, in order; a gap in the
   remote chain stops that journal there;
3. for each fetched segment: its ``artifact`` records' blobs first (downloaded to a
   temp name, sha256 and size verified, renamed into place; present ones are kept),
   then the segment's bytes written at their offset (``pwrite``) and fsynced. So a
   record in the mirror never names a blob the mirror lacks, unless the destination
   lacks it too (reported; the ingest then reports that journal's blob as missing).

A sync killed anywhere leaves at most a torn local write of one segment: the next
sync finds the file between two segment ends and rewrites that segment from its
start (segments are immutable, so the bytes are the same). A reader meanwhile
sees only complete lines of the same journal.

The mirror is derived data: deleting it costs a download, nothing else (the
checkpoints are keyed by journal id, and the object checkpoints by the journal's
place in the destination).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from formula_foundry.errors import IngestError
from formula_foundry.substrate import ArtifactStore
from formula_foundry.substrate._atomic import atomic_write_bytes, fsync_dir
from formula_foundry.tracking.config import Config
from formula_foundry.tracking.framing import FrameError, unframe
from formula_foundry.tracking.ingest.objects import ObjectStore
from formula_foundry.tracking.ingest.ship.layout import (
    JOURNALS,
    LAYOUT,
    LAYOUT_KEY,
    blob_key,
    parse_segment_key,
    segment_key,
)

__all__ = ["MIRROR_MARKER", "Mirror", "MirrorBacklog", "MirrorInfo", "SyncReport", "mirror_key", "mirror_of",
           "read_layout"]

log = logging.getLogger("formula_foundry.ingest.mirror")

MIRROR_MARKER = "ff-mirror.json"
MIRROR_FORMAT = {"format": "ff-mirror", "version": 1}
_ARTIFACT = b'"type":"artifact"'  # how the producer's framing spells an artifact record's type
_READ = 1 << 20
FETCHERS = 8  # journals synced at once (each one's segments in order)


def mirror_key(source: str) -> str:
    """A readable, filesystem-safe folder name for the destination ``source`` (its display URI)."""
    identity = source.rstrip("/") or source
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", identity.split("://", 1)[-1]).strip("-.")[-40:] or "destination"
    return f"{label}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


def read_layout(objects: ObjectStore) -> None:
    """Check that ``objects`` is a ship destination of a layout this version reads; raise IngestError if not."""
    try:
        raw = json.loads(objects.get(LAYOUT_KEY))
    except FileNotFoundError:
        raise IngestError(f"{objects.display_uri}: not a ship destination (no {LAYOUT_KEY}); ship journals to it "
                          f"first: ff-ingest ship --to {objects.display_uri}") from None
    except ValueError:
        raise IngestError(f"{objects.display_uri}/{LAYOUT_KEY}: not a ship layout file (not JSON)") from None
    if not isinstance(raw, dict) or raw.get("format") != LAYOUT["format"] or not isinstance(raw.get("version"), int):
        raise IngestError(f"{objects.display_uri}/{LAYOUT_KEY}: not a ship layout file: {str(raw)[:100]}")
    if raw["version"] > LAYOUT["version"]:
        raise IngestError(f"{objects.display_uri}: ship layout version {raw['version']} is newer than this "
                          f"ff-ingest reads ({LAYOUT['version']}): upgrade formula-foundry")


@dataclass(frozen=True)
class MirrorInfo:
    """Where a mirror lies and which destination it mirrors (from its ``ff-mirror.json``)."""

    folder: Path
    source: str  # the destination's display URI

    @property
    def journal_root(self) -> Path:
        return self.folder / "journals"

    @property
    def blob_root(self) -> Path:
        return self.folder / "blobs"

    def config(self, cfg: Config) -> Config:
        """``cfg`` with the mirror's journals as its only journal root (what a central pass ingests)."""
        return replace(cfg, journal=replace(cfg.journal, root=self.journal_root),
                       ingest=replace(cfg.ingest, extra_roots=()))


def mirror_of(journal_root: Path) -> MirrorInfo | None:
    """The mirror whose ``journals`` folder is ``journal_root``, or None when it is no mirror's."""
    root = Path(journal_root)
    if root.name != "journals":
        return None
    try:
        raw = json.loads((root.parent / MIRROR_MARKER).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("format") != MIRROR_FORMAT["format"] or not raw.get("source"):
        return None
    return MirrorInfo(folder=root.parent, source=str(raw["source"]))


@dataclass(frozen=True)
class _Segment:
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass
class SyncReport:
    """What one sync did."""

    journals: int = 0  # journals in the destination
    segments: int = 0  # segments fetched
    bytes: int = 0  # ... their bytes
    blobs: int = 0  # blobs fetched
    blob_bytes: int = 0
    repaired: int = 0  # torn local writes rewritten
    problems: list[str] = field(default_factory=list)  # gaps, missing or corrupt blobs, a mirror ahead of its source
    elapsed: float = 0.0

    def summary(self, source: str, folder: Path) -> str:
        text = (f"mirrored {self.segments} segments ({self.bytes} bytes) and {self.blobs} blobs "
                f"({self.blob_bytes} bytes) of {self.journals} shipped journals from {source} into {folder} "
                f"in {self.elapsed:.2f} s")
        return text + (f"; {self.repaired} torn local writes repaired" if self.repaired else "")


@dataclass(frozen=True)
class MirrorBacklog:
    """What the destination holds beyond the mirror (for ``status``), from one listing."""

    journals: int  # journals in the destination
    unmirrored_journals: int  # ... with bytes the mirror lacks
    unmirrored_bytes: int


class Mirror:
    """The local mirror of one destination (``objects``) in ``folder`` (see the module docstring)."""

    def __init__(self, objects: ObjectStore, folder: Path) -> None:
        self.objects = objects
        self.info = MirrorInfo(folder=Path(folder), source=objects.display_uri)
        self.folder = self.info.folder
        self.journal_root = self.info.journal_root
        self.blobs = ArtifactStore(self.info.blob_root)

    @classmethod
    def open(cls, objects: ObjectStore, state_dir: Path) -> Mirror:
        """The mirror of ``objects`` under ``<state_dir>/mirror/`` (created on first use). Checks that
        ``objects`` is a ship destination (:func:`read_layout`)."""
        read_layout(objects)
        mirror = cls(objects, Path(state_dir) / "mirror" / mirror_key(objects.display_uri))
        marker = mirror.folder / MIRROR_MARKER
        if mirror_of(mirror.journal_root) is None:
            mirror.journal_root.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(marker, json.dumps({**MIRROR_FORMAT, "source": objects.display_uri}).encode() + b"\n")
        return mirror

    # -- the remote side ------------------------------------------------------------

    def _remote(self) -> dict[tuple[str, str], list[_Segment]]:
        """Every shipped journal's segments, in start order (one listing of ``journals/``)."""
        out: dict[tuple[str, str], list[_Segment]] = {}
        for info in self.objects.list(JOURNALS):
            parsed = parse_segment_key(info.key)
            if parsed is None:
                continue
            host, rel, start = parsed
            out.setdefault((host, rel), []).append(_Segment(start, info.size))
        for segments in out.values():
            segments.sort(key=lambda s: s.start)
        return out

    def local_path(self, host: str, rel: str) -> Path:
        return self.journal_root / host / rel

    @staticmethod
    def _held(segments: list[_Segment], size: int) -> tuple[int, int, str | None]:
        """(bytes the local file holds in whole segments, index of the next segment, a gap's description)."""
        end = 0
        for i, seg in enumerate(segments):
            if seg.start != end:
                return end, i, f"no segment starts at byte {end} (the next one starts at {seg.start})"
            if seg.end > size:
                return end, i, None
            end = seg.end
        return end, len(segments), None

    def backlog(self) -> MirrorBacklog:
        """Bytes shipped but not mirrored yet, per one listing (reads nothing else)."""
        remote = self._remote()
        behind = missing = 0
        for (host, rel), segments in remote.items():
            local = _size(self.local_path(host, rel))
            held, _, _ = self._held(segments, local)
            total = self._held(segments, 1 << 62)[0]
            if total > held:
                behind += 1
                missing += total - held
        return MirrorBacklog(journals=len(remote), unmirrored_journals=behind, unmirrored_bytes=missing)

    # -- one sync -------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "sync.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def sync(self) -> SyncReport:
        """Bring every shipped journal's new segments (and their blobs) into the mirror; see the module docstring.

        Raises :class:`~..objects.ObjectStoreError` (exit 3) when the destination cannot be read; what
        was fetched before stays (the next sync goes on from there).
        """
        started = time.monotonic()
        report = SyncReport()
        with self._locked():
            remote = self._remote()
            report.journals = len(remote)
            behind = [(host, rel, segments) for (host, rel), segments in sorted(remote.items())
                      if _size(self.local_path(host, rel)) != self._held(segments, 1 << 62)[0]]
            with ThreadPoolExecutor(max_workers=FETCHERS, thread_name_prefix="ff-mirror") as pool:
                parts = list(pool.map(lambda job: self._sync_journal(*job), behind))
        for part in parts:
            report.segments += part.segments
            report.bytes += part.bytes
            report.blobs += part.blobs
            report.blob_bytes += part.blob_bytes
            report.repaired += part.repaired
            report.problems += part.problems
        report.elapsed = time.monotonic() - started
        for problem in report.problems:
            log.warning("mirror: %s", problem)
        return report

    def _sync_journal(self, host: str, rel: str, segments: list[_Segment]) -> SyncReport:
        """One journal's new segments (and their blobs), in order; what it did, as a partial report."""
        report = SyncReport()
        path = self.local_path(host, rel)
        local = _size(path)
        held, index, gap = self._held(segments, local)
        if index == len(segments) and local > held:
            report.problems.append(f"{path}: the mirror holds {local} bytes, the destination's segments only "
                                   f"{held}: left as it is (was the destination emptied?)")
            return report
        todo = segments[index:]
        if todo and todo[0].start == held and local > held:
            report.repaired += 1  # a torn write of todo[0] by a killed sync: rewritten from its start below
        fd = None
        try:
            for seg in todo:
                if seg.start != held:
                    gap = f"no segment starts at byte {held} (the next one starts at {seg.start})"
                    break
                data = self.objects.get(segment_key(host, rel, seg.start))
                if len(data) != seg.size:
                    report.problems.append(f"{self.objects.display_uri}/{segment_key(host, rel, seg.start)}: "
                                           f"{len(data)} bytes, listed with {seg.size}: not mirrored")
                    return report
                self._fetch_blobs(data, path, seg.start, report)
                if fd is None:
                    new = not path.exists()
                    path.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
                    if new:
                        fsync_dir(path.parent)
                _pwrite_all(fd, data, seg.start)
                os.fsync(fd)
                held = seg.end
                report.segments += 1
                report.bytes += seg.size
        finally:
            if fd is not None:
                os.close(fd)
        if gap is not None and held < segments[-1].end:
            report.problems.append(f"{self.objects.display_uri}/{JOURNALS}{host}/{rel}/: {gap}; mirrored up to byte "
                                   f"{held} (a segment deleted from the destination?)")
        return report

    def _fetch_blobs(self, data: bytes, path: Path, start: int, report: SyncReport) -> None:
        """Download the blobs named by the ``artifact`` records of one segment that the mirror lacks."""
        at = data.find(_ARTIFACT)
        while at != -1:
            first = data.rfind(b"\n", 0, at) + 1
            end = data.find(b"\n", at)
            end = len(data) if end == -1 else end
            try:
                record = unframe(data[first:end])
            except FrameError:
                record = {}
            digest, size = record.get("digest"), record.get("size_bytes")
            if record.get("type") == "artifact" and isinstance(digest, str) and type(size) is int:
                self._fetch_blob(digest, size, f"{path} (byte {start + first})", report)
            at = data.find(_ARTIFACT, end)

    def _fetch_blob(self, digest: str, size: int, where: str, report: SyncReport) -> None:
        try:
            key = blob_key(digest)
        except ValueError:
            return  # the ingest reports the malformed record
        target = self.blobs.path_for(digest)
        if target.is_file() and target.stat().st_size == size:
            return
        self.blobs.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.blobs.tmp_dir, prefix="blob-", suffix=".part")
        os.close(fd)
        tmp = Path(name)
        try:
            try:
                self.objects.get_to_file(key, tmp)
            except FileNotFoundError:
                report.problems.append(f"{where}: blob {digest} is not in {self.objects.display_uri}; that "
                                       "record's upload waits for it (restore it there from its host's "
                                       "artifact store)")
                return
            actual, length = _sha256(tmp)
            if (actual, length) != (digest, size):
                report.problems.append(f"{self.objects.display_uri}/{key}: holds {length} bytes hashing to "
                                       f"sha256 {actual}, the record says {size} bytes, {digest}: not mirrored")
                return
            self.blobs.publish(tmp, digest=digest, size_bytes=size, logical_path=digest)
            report.blobs += 1
            report.blob_bytes += size
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _sha256(path: Path) -> tuple[str, int]:
    """(sha256, size) of a file, read 1 MiB at a time; the file is fsynced (publish wants it durable)."""
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb+") as fh:
        while chunk := fh.read(_READ):
            hasher.update(chunk)
            size += len(chunk)
        os.fsync(fh.fileno())
    return hasher.hexdigest(), size
