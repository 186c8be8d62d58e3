"""Which journals ``ff-ingest prune`` may take, and why it keeps the others (decisions pure; probes apart).

A journal may go only when every one of these holds (the first that fails is the
reason it is kept, in this order):

===============  ==============================================================
``error``        the last ingest stopped at an error (or its header or name is
                 wrong): it is evidence, and not ingested
``not ingested`` no checkpoint in the configured store names it
``not ended``    its end record (run_end / segment_end) is not ingested: a live,
                 crashed or lagging run
``lagging``      bytes beyond the checkpoint (the file is longer than what was
                 ingested; an archived ``.gz`` has no such check: it is immutable)
``held``         a process holds the journal's ``flock`` (its producer, even a
                 stopped one)
``recent``       appended to (mtime) less than ``--older-than`` ago
===============  ==============================================================

On a host that ships its journals (``--shipped-to URI``: ``ff-ingest ship --to URI``, no
tracking store here) the ship destination is the truth, and the first four rows read
(:mod:`.ship.shipped` gathers these facts; ``held`` and ``recent`` stay as above):

=================  ============================================================
``error``          its header or name is wrong, or its last ship pass ended in an
                   error (the local ship state says so); or the destination holds
                   more of it than the file has (truncated or replaced)
``not shipped``    this host's ship state has no entry for it at that destination,
                   or the destination was made again since (another id in its
                   ``ff-ship.json``), or the destination's segments of it do not
                   chain from byte 0 (none, a gap, an overlap)
``not ended``      its last complete record is not run_end / segment_end
``lagging``        the destination's chain ends before the file does
=================  ============================================================

Prune touches journal files only: never a substrate artifact, never a blob of the
content-addressed artifact store, never a folder, never the ship destination or the ship
state. It does not write the store and takes no ingester or shipper lock: a journal it
removes is ended and fully ingested (or shipped), so an ingester (or shipper) that has it
open still reads it to the end (Linux keeps an unlinked file's data while it is open) and
has nothing left to do with it.

Archive layout (``--archive DIR``): ``DIR/<path relative to its journal root>.gz``,
one gzip member of the journal's bytes, written to a temporary name in the same
folder, fsynced, renamed, the folder fsynced; only then is the original removed.
An archive is a journal root: ``ff-ingest --root DIR`` reads it.
"""

from __future__ import annotations

import fcntl
import gzip
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from formula_foundry.errors import JournalError
from formula_foundry.tracking.framing import FrameError, unframe
from formula_foundry.tracking.ingest.schema import END_TYPES
from formula_foundry.tracking.ingest.sink import Checkpoint
from formula_foundry.tracking.journal import COMPRESSED_SUFFIX, MAX_LINE_BYTES, open_journal, open_journal_stream

__all__ = ["DEFAULT_OLDER_THAN", "Facts", "ShipFacts", "archive_path", "archive_to", "is_held", "keep_reason",
           "last_record", "parse_duration", "shipped_keep_reason"]

DEFAULT_OLDER_THAN = "7d"
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(text: str) -> float:
    """``'0'``, ``'90s'``, ``'15m'``, ``'12h'``, ``'7d'``, ``'2w'`` -> seconds; ValueError otherwise."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration (a number with s, m, h, d or w: 0, 90s, 12h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class Facts:
    """What prune knows of one journal file at one moment."""

    path: Path
    size: int
    mtime: float
    checkpoint: Checkpoint | None
    error: str | None  # a header/name problem, or None (the checkpoint's last_error counts too)
    held: bool


def keep_reason(f: Facts, *, older_than: float, now: float) -> str | None:
    """Why ``f``'s journal must stay (see the module docstring), or None when prune may take it."""
    cp = f.checkpoint
    error = f.error or (cp.last_error if cp else None)
    if error:
        return f"error: {error}"
    if cp is None:
        return "not ingested: no checkpoint in this store"
    if not cp.ended:
        return "not ended: its end record is not ingested (running, crashed or lagging)"
    if not f.path.name.endswith(".gz") and cp.position.offset != f.size:
        return f"lagging: checkpoint at byte {cp.position.offset} of {f.size}"
    return _held_or_recent(f.held, f.mtime, older_than=older_than, now=now)


@dataclass(frozen=True)
class ShipFacts:
    """What prune knows of one journal and one ship destination at one moment (``--shipped-to``)."""

    path: Path
    size: int  # bytes on disk
    content_size: int  # the journal's bytes (an archived ``.gz``: uncompressed), what a chain must reach
    mtime: float
    error: str | None  # a header/name problem, or the error its ship state records
    not_shipped: str | None  # why the destination holds nothing of it as this journal's, or None
    shipped: int  # where its chain of segments from byte 0 ends at the destination
    last_type: str | None  # the type of its last complete record (None: none, or unreadable)
    held: bool


def shipped_keep_reason(f: ShipFacts, *, older_than: float, now: float) -> str | None:
    """Why ``f``'s journal must stay on a shipping host (see the module docstring), or None when it may go."""
    if f.error:
        return f"error: {f.error}"
    if f.shipped > f.content_size:
        return (f"error: the destination holds {f.shipped} bytes of it, the file {f.content_size}: "
                "truncated or replaced since it was shipped")
    if f.not_shipped:
        return f"not shipped: {f.not_shipped}"
    if f.last_type not in END_TYPES:
        last = f"its last record is {f.last_type}" if f.last_type else "its last line is no whole, valid record"
        return f"not ended: {last}, not run_end/segment_end (running or crashed)"
    if f.shipped < f.content_size:
        return f"lagging: shipped to byte {f.shipped} of {f.content_size}"
    return _held_or_recent(f.held, f.mtime, older_than=older_than, now=now)


def _held_or_recent(held: bool, mtime: float, *, older_than: float, now: float) -> str | None:
    if held:
        return "held: a process holds the journal's lock (its producer)"
    idle = now - mtime
    if idle < older_than:
        return f"recent: idle {idle:.0f}s, less than {older_than:.0f}s"
    return None


_TAIL_READ = 64 << 10


def last_record(path: Path) -> dict | None:
    """``path``'s last complete record, checksum verified; None when it has none, or that line is bad.

    A plain journal is read backwards from its end (64 KiB, more while the line is longer);
    an archived ``.gz`` one is read through (it has no random access). An incomplete last
    line (a write in progress, a torn tail) is not a record: the one before it is the last.
    """
    try:
        line = _last_line_streamed(path) if path.name.endswith(COMPRESSED_SUFFIX) else _last_line(path)
        return None if line is None else unframe(line)
    except (OSError, JournalError, FrameError):
        return None


def _last_line(path: Path) -> bytes | None:
    with open_journal(path) as fh:
        size = fh.seek(0, os.SEEK_END)
        window = _TAIL_READ
        while True:
            start = max(0, size - window)
            fh.seek(start)
            data = fh.read(size - start)
            end = data.rfind(b"\n")
            if end >= 0:
                begin = data.rfind(b"\n", 0, end) + 1
                if begin > 0 or start == 0:
                    return data[begin:end]
            if start == 0 or window > 2 * (MAX_LINE_BYTES + 1):  # longer than a record can be: corrupt
                return None
            window *= 4


def _last_line_streamed(path: Path) -> bytes | None:
    tail = b""  # from the start of the last complete line seen so far (exactly one newline once there is one)
    with open_journal_stream(path) as fh:
        while chunk := fh.read(1 << 20):
            data = tail + chunk
            end = data.rfind(b"\n")
            tail = data if end < 0 else data[data.rfind(b"\n", 0, end) + 1:]
            if len(tail) > 2 * (MAX_LINE_BYTES + 1):
                return None
    end = tail.find(b"\n")
    return None if end < 0 else tail[:end]


def _proc_locks_inodes() -> set[int] | None:
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    out = set()
    for line in table.splitlines():  # "1: FLOCK  ADVISORY  WRITE 8833 fe:00:2146407 0 EOF"; waiters: "->"
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[4].isdigit():
            ino = parts[5].rsplit(":", 1)[-1]
            if ino.isdigit():
                out.add(int(ino))
    return out


def is_held(path: Path) -> bool:
    """Does a process hold ``path``'s ``flock``? Never blocks, never delays a writer.

    ``/proc/locks`` first (the lock is not touched); then a shared non-blocking
    ``flock`` attempt, released at once (a writer holds its lock exclusively from the
    moment it creates the file, and no writer ever opens an existing journal).
    A file that cannot be opened counts as held (keep it).
    """
    try:
        ino = os.stat(path).st_ino
    except OSError:
        return True
    inodes = _proc_locks_inodes()
    if inodes is not None and ino in inodes:
        return True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def archive_path(path: Path, root: Path, archive: Path) -> Path:
    """``<archive>/<path relative to root>.gz`` (an already compressed journal keeps its name)."""
    rel = path.relative_to(root)
    return archive / (rel.as_posix() if path.name.endswith(".gz") else rel.as_posix() + ".gz")


def archive_to(path: Path, target: Path) -> int:
    """Write ``path`` gzip-compressed to ``target`` atomically (temp, fsync, rename, dir fsync); its size.

    The archive keeps the journal's mtime. An already compressed journal is copied as is.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    st = os.stat(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, open_journal(path) as src:
            if path.name.endswith(".gz"):
                shutil.copyfileobj(src, out, 1 << 20)
            else:
                with gzip.GzipFile(filename=path.name, mode="wb", fileobj=out, compresslevel=6,
                                   mtime=int(st.st_mtime)) as gz:
                    shutil.copyfileobj(src, gz, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.utime(tmp, (st.st_atime, st.st_mtime))
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return target.stat().st_size
