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

Prune touches journal files only: never a substrate artifact, never a blob of the
content-addressed artifact store, never a folder. It does not write the store and
takes no ingester lock: a journal it removes is ended and fully ingested, so an
ingester that has it open still reads it to the end (Linux keeps an unlinked file's
data while it is open) and has nothing left to do with it.

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

from formula_foundry.tracking.ingest.sink import Checkpoint
from formula_foundry.tracking.journal import open_journal

__all__ = ["DEFAULT_OLDER_THAN", "Facts", "archive_path", "archive_to", "is_held", "keep_reason",
           "parse_duration"]

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
    if f.held:
        return "held: a process holds the journal's lock (its producer)"
    idle = now - f.mtime
    if idle < older_than:
        return f"recent: idle {idle:.0f}s, less than {older_than:.0f}s"
    return None


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
