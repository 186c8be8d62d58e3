"""The shipper's local state: what this host shipped to one destination (a cache; the remote is the truth).

Folder ``<ingest.state_dir>/ship/<destination key>/`` (:func:`destination_key`:
a readable label and a hash of the destination's identity, no credentials)::

    destination.json          {"version": 1, "destination": "<redacted URI>", "id": "<id in its ff-ship.json>"}
    ship.lock                 flock of the one shipper per destination on this host; holds "pid N on HOST"
    journals/<journal_id>.json
        {"version": 1, "journal_id": ..., "path": "/abs/local/journal.jsonl",
         "host": ..., "rel": ...,                 # the journal's remote name (fixed at its first ship)
         "shipped": {"offset": B, "line": L, "seq": S},   # the remote chain ends at byte B
         "last_start": A | null,                  # the start of the segment ending at B
         "tail_crc": "8 hex" | null,              # crc32 of the (up to) 256 bytes before B: a rewritten file shows
         "error": "..." | null, "updated": <unix seconds>}

Every file is written atomically (temp + fsync + rename + fsync of the folder).
The shipper's journal threads share one :class:`ShipState`: reading the folder and
updating the in-memory entries happen under a lock (one journal's entry is only
written by the thread shipping that journal).
A journal's entry is written only after the segment ending at ``shipped`` exists
remotely, so the state is never ahead of the destination; it may be behind (a
shipper killed between a put and this write), which the next put finds out
(the segment exists: continue after it). Losing the folder loses nothing: the
shipper rebuilds a journal's position from the destination's listing; a destination
wiped and made again (another ``id`` in its ``ff-ship.json``) drops the state of the old one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO

from formula_foundry.errors import IngesterLockedError
from formula_foundry.substrate._atomic import atomic_write_bytes
from formula_foundry.tracking.journal import ReadPosition
from formula_foundry.tracking.ingest.objects import FolderObjects, ObjectStore, S3Objects, s3_endpoint
from formula_foundry.tracking.ingest.uri import redact

__all__ = ["LOCK_FILE", "JournalState", "ShipState", "destination_key"]

STATE_VERSION = 1
LOCK_FILE = "ship.lock"
_ID = re.compile(r"[A-Za-z0-9._-]+")


def destination_key(objects: ObjectStore) -> str:
    """A filesystem-safe folder name for ``objects``: the same for every spelling of one destination."""
    if isinstance(objects, S3Objects):
        identity = f"s3://{objects.bucket}/{objects.prefix}@{redact(s3_endpoint() or 'aws')}"
        label = f"s3-{objects.bucket}"
    elif isinstance(objects, FolderObjects):
        identity = f"folder:{os.path.realpath(objects.root)}"
        label = f"folder-{objects.root.name}"
    else:
        identity = objects.display_uri
        label = "objects"
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", label)[:40]
    return f"{label}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class JournalState:
    journal_id: str
    path: str
    host: str
    rel: str
    shipped: ReadPosition = ReadPosition()
    last_start: int | None = None
    tail_crc: str | None = None
    error: str | None = None
    updated: float = 0.0

    def to_json(self) -> dict:
        data = asdict(self)
        data["shipped"] = self.shipped._asdict()
        return {"version": STATE_VERSION, **data}

    @classmethod
    def from_json(cls, data: dict) -> JournalState:
        shipped = data.get("shipped") or {}
        return cls(journal_id=str(data["journal_id"]), path=str(data["path"]), host=str(data["host"]),
                   rel=str(data["rel"]),
                   shipped=ReadPosition(int(shipped.get("offset", 0)), int(shipped.get("line", 1)),
                                        int(shipped.get("seq", 0))),
                   last_start=None if data.get("last_start") is None else int(data["last_start"]),
                   tail_crc=data.get("tail_crc"), error=data.get("error"),
                   updated=float(data.get("updated") or 0.0))


class ShipState:
    """The state folder of one destination on this host (see the module docstring)."""

    def __init__(self, folder: Path, *, destination: str) -> None:
        self.folder = Path(folder)
        self.destination = destination  # redacted
        self._lock: IO[str] | None = None
        self._cache: dict[str, JournalState] | None = None
        self._cache_lock = threading.RLock()  # the journal threads of one pass share this state

    @classmethod
    def for_destination(cls, state_dir: Path, objects: ObjectStore) -> ShipState:
        return cls(Path(state_dir) / "ship" / destination_key(objects), destination=objects.display_uri)

    @property
    def journals_dir(self) -> Path:
        return self.folder / "journals"

    # ----------------------------------------------------------------- the lock

    def lock(self) -> ShipState:
        """Take the one-shipper lock of this destination on this host; :class:`IngesterLockedError` if held."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_FILE
        fh = open(path, "a+")  # noqa: SIM115 - held open while the lock is held
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise IngesterLockedError(f"another shipper ({holder}) is already shipping to {self.destination}; "
                                      f"only one may run per destination on a host (lock: {path})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
        fh.flush()
        self._lock = fh
        return self

    def bind(self, destination_id: str) -> bool:
        """Tie the state to the destination whose ``ff-ship.json`` carries ``destination_id``. A state of
        another one (a destination wiped and made again under the same URI) is dropped: every journal's
        position is then read from the destination itself.

        Returns whether this state already belonged to that destination (then a journal it does not
        know was never shipped from here; else the destination must be asked)."""
        about = self.folder / "destination.json"
        try:
            known = json.loads(about.read_bytes()).get("id")
        except (OSError, ValueError, AttributeError):
            known = None
        if known is not None and destination_id and known != destination_id:
            with self._cache_lock:
                for item in self.journals_dir.glob("*.json"):
                    item.unlink()
                self._cache = None
        if known != destination_id:
            atomic_write_bytes(about, json.dumps({"version": STATE_VERSION, "destination": self.destination,
                                                  "id": destination_id}, indent=2).encode())
        return bool(destination_id) and known == destination_id

    def unlock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock.close()
            self._lock = None

    def __enter__(self) -> ShipState:
        return self.lock()

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    # ----------------------------------------------------------------- journals

    def all(self) -> dict[str, JournalState]:
        """Every journal's entry, by journal id (read once, then kept up to date by :meth:`put`).

        Read under the lock: two threads asking first must not each read the folder, the later one
        replacing the entries the earlier one has put since (its stale ones would be written back)."""
        with self._cache_lock:
            if self._cache is None:
                found: dict[str, JournalState] = {}
                if self.journals_dir.is_dir():
                    for item in sorted(self.journals_dir.glob("*.json")):
                        try:
                            entry = JournalState.from_json(json.loads(item.read_bytes()))
                        except (OSError, ValueError, KeyError, TypeError):
                            continue  # a damaged cache entry: the destination is the truth, rebuilt from it
                        found[entry.journal_id] = entry
                self._cache = found
            return self._cache

    def get(self, journal_id: str) -> JournalState | None:
        with self._cache_lock:
            return self.all().get(journal_id)

    def put(self, entry: JournalState) -> JournalState:
        """Write ``entry`` durably (atomic replace) and return it as written."""
        if not _ID.fullmatch(entry.journal_id):
            raise ValueError(f"invalid journal id {entry.journal_id!r}")
        entry = replace(entry, updated=time.time())
        self.journals_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.journals_dir / f"{entry.journal_id}.json",
                           json.dumps(entry.to_json(), indent=1).encode())
        with self._cache_lock:
            self.all()[entry.journal_id] = entry
        return entry
