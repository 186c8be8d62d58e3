"""Checkpoints kept in a ship destination: the API sink's, when a central ingester ingests shipped journals.

The API sink (an ``mlflow server`` over HTTP, or ``--sink api``) cannot keep its
checkpoints in the store, and a local file would stay on the machine that wrote
it: a second central machine taking over after a lease expiry (see
:mod:`..lease`) would start from nothing and create nothing twice only thanks to
the ``ff.run_id`` tag, while resending every metric. Kept in the destination, next
to the lease, the checkpoints travel with the lease: exactly once across machines.

On-disk format (object ``checkpoints/<name>/<journal_id>.json``, ``<name>`` the
store's :func:`~..uri.store_key`; format 1)::

    {"format": "ff-checkpoint", "version": 1, "journal_id": "...", "run_id": "...",
     "mlflow_run_id": "..." | null, "shipped_path": "<host>/<rel>" | null, "path": "<this machine's path>",
     "byte_offset": 0, "line": 1, "seq": 0, "records": 0, "ended": false,
     "last_error": null | "...", "updated_ms": 0}

``shipped_path`` is the journal's place in the destination (``journals/<host>/<rel>``
without the prefix and segment): each machine maps it onto its own mirror
(:mod:`..ship.mirror`), so a checkpoint written on one machine names the same
journal on the next one. The row's meaning is that of :mod:`.checkpoints` (the
same :class:`~..sink.Checkpoint`, the same merge rule :func:`~.checkpoints.further`).

Writes are compare-and-swap (``write_versioned``): a put never replaces a row that
claims more than it does (a holder that lost its lease cannot move a checkpoint
back). Every put first calls ``fence`` (the lease's check). While the lease is held
nobody else writes these objects, so rows read once are kept in memory: a pass
reads the folder once (one LIST, then the objects 16 at a time).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from formula_foundry.tracking.ingest.objects import ObjectStore, PreconditionFailed
from formula_foundry.tracking.ingest.ship.layout import checkpoint_key
from formula_foundry.tracking.ingest.sink import Checkpoint, CheckpointStore, now_ms
from formula_foundry.tracking.ingest.stores.checkpoints import further
from formula_foundry.tracking.journal import ReadPosition

__all__ = ["CHECKPOINT_FORMAT", "ObjectCheckpoints"]

CHECKPOINT_FORMAT = {"format": "ff-checkpoint", "version": 1}
_FETCHERS = 16  # objects read at once when the folder is loaded


class ObjectCheckpoints(CheckpointStore):
    """The checkpoints of one store (``name``) in a ship destination; thread-safe.

    ``journal_root``: this machine's mirror of the destination's journals (``shipped_path``
    is resolved against it). ``fence``: called before every put (raises when the lease is lost);
    None for readers (``status``, ``--dry-run``), which never put. ``owns_objects``: :meth:`close`
    closes ``objects``.
    """

    def __init__(self, objects: ObjectStore, name: str, *, journal_root: Path | None,
                 fence: Callable[[], None] | None = None, owns_objects: bool = False) -> None:
        self.objects = objects
        self.name = name
        self.prefix = checkpoint_key(name, "x")[: -len("x.json")]
        self.location = f"{objects.display_uri}/{self.prefix}"
        self.journal_root = Path(journal_root) if journal_root is not None else None
        self.fence = fence
        self._owns_objects = owns_objects
        self._rows: dict[str, Checkpoint] = {}
        self._etags: dict[str, str] = {}
        self._loaded = False
        self._lock = threading.RLock()

    # -- encoding -------------------------------------------------------------------

    def _shipped_path(self, path: str) -> str | None:
        if self.journal_root is None:
            return None
        try:
            return Path(path).relative_to(self.journal_root).as_posix()
        except ValueError:
            return None

    def encode(self, cp: Checkpoint) -> bytes:
        return json.dumps({
            **CHECKPOINT_FORMAT, "journal_id": cp.journal_id, "run_id": cp.run_id, "mlflow_run_id": cp.mlflow_run_id,
            "shipped_path": self._shipped_path(cp.path), "path": cp.path, "byte_offset": cp.position.offset,
            "line": cp.position.line, "seq": cp.position.seq, "records": cp.records, "ended": bool(cp.ended),
            "last_error": cp.last_error, "updated_ms": cp.updated_ms or now_ms()}, indent=1).encode() + b"\n"

    def decode(self, data: bytes, key: str) -> Checkpoint | None:
        """The checkpoint in ``data``, or None for an object that is not one (ignored, as a missing row)."""
        try:
            raw = json.loads(data)
            if raw.get("format") != CHECKPOINT_FORMAT["format"] or raw.get("version") != 1:
                return None
            shipped = raw.get("shipped_path")
            path = str(self.journal_root / shipped) if shipped and self.journal_root is not None else raw["path"]
            return Checkpoint(journal_id=str(raw["journal_id"]), path=path, run_id=str(raw["run_id"]),
                              mlflow_run_id=raw.get("mlflow_run_id"),
                              position=ReadPosition(int(raw["byte_offset"]), int(raw["line"]), int(raw["seq"])),
                              records=int(raw["records"]), ended=bool(raw["ended"]),
                              last_error=raw.get("last_error"), updated_ms=int(raw.get("updated_ms") or 0))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    # -- reading --------------------------------------------------------------------

    def _fetch(self, key: str) -> tuple[Checkpoint | None, str | None]:
        found = self.objects.read_versioned(key)
        if found is None:
            return None, None
        return self.decode(found[0], key), found[1]

    def _load(self) -> None:
        """Every row of the folder, once (one LIST, then the objects in parallel)."""
        if self._loaded:
            return
        keys = [info.key for info in self.objects.list(self.prefix) if info.key.endswith(".json")]
        with ThreadPoolExecutor(max_workers=_FETCHERS, thread_name_prefix="ff-checkpoints") as pool:
            fetched = list(pool.map(self._fetch, keys))
        for cp, etag in fetched:
            if cp is not None and etag is not None:
                self._rows[cp.journal_id] = further(self._rows.get(cp.journal_id), cp)
                self._etags[cp.journal_id] = etag
        self._loaded = True

    def get(self, journal_id: str) -> Checkpoint | None:
        with self._lock:
            self._load()
            return self._rows.get(journal_id)

    def all(self) -> list[Checkpoint]:
        with self._lock:
            self._load()
            return sorted(self._rows.values(), key=lambda cp: cp.path)

    # -- writing --------------------------------------------------------------------

    def put(self, checkpoint: Checkpoint) -> None:
        if self.fence is None:
            raise NotImplementedError(f"{self.location}: these checkpoints were opened for reading only")
        self.fence()
        key = checkpoint_key(self.name, checkpoint.journal_id)
        data = self.encode(checkpoint)
        with self._lock:
            if checkpoint.journal_id in self._etags or self._loaded:
                etag = self._etags.get(checkpoint.journal_id)
            else:  # a worker's store that never read this row: learn its version
                etag = self._fetch(key)[1]
            for _ in range(10):
                try:
                    self._etags[checkpoint.journal_id] = self.objects.write_versioned(key, data, etag=etag)
                    self._rows[checkpoint.journal_id] = checkpoint
                    return
                except PreconditionFailed:
                    current, etag = self._fetch(key)
                if current is not None and _claim(current) > _claim(checkpoint):
                    # Someone got further (a holder that lost the lease, just before it knew): never
                    # move a checkpoint back; that row, too, claims no more than the store holds.
                    self._rows[checkpoint.journal_id] = current
                    self._etags[checkpoint.journal_id] = etag
                    return
                self.fence()
            raise PreconditionFailed(f"{self.objects.display_uri}/{key}: kept changing while it was written")

    def close(self) -> None:
        if self._owns_objects:
            self.objects.close()


def _claim(cp: Checkpoint) -> tuple[int, bool]:
    """How much a checkpoint claims (the order of :func:`~.checkpoints.further`)."""
    return cp.position.offset, cp.ended
