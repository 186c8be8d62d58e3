"""The central ingester's lease: one writer per store across machines, kept in the ship destination.

Central ingest (``ff-ingest --root s3://bucket/prefix``) may run on any machine
that reaches the destination and the store; the file and PostgreSQL locks of
:mod:`.stores.lock` cannot see another machine writing through HTTP. The lease
can: one small object in the destination, changed only by compare-and-swap
(:meth:`~.objects.ObjectStore.write_versioned`: S3 ``IfNoneMatch``/``IfMatch``,
a folder's flock-guarded compare and rename).

On-disk format (object ``leases/<name>.json``, ``<name>`` the store's
:func:`~.uri.store_key`; format 1)::

    {"format": "ff-lease", "version": 1, "store": "<redacted tracking URI>",
     "holder": "ff-ingest pid 4242 on central-a", "token": "<uuid4 hex, one per tenure>",
     "acquired_ms": 1700000000000, "renewed_ms": 1700000020000, "expires_ms": 1700000050000,
     "ttl_seconds": 30.0, "released": false}

Rules
    * **Acquire**: absent -> create (``etag=None``); held (not released, ``expires_ms``
      in the future) -> :class:`LeaseHeldError` (an ``IngesterLockedError``, exit 5)
      naming the holder and when the lease runs out; expired or released -> take it
      over with ``IfMatch`` on the etag just read: of two takers one wins, the other
      reads again and finds it held.
    * **Renew**: a thread rewrites the object every ``ttl/3`` with the etag of our last
      write. A precondition that fails means someone took the lease over: it is
      **lost**. Renewals that fail for another reason (the destination unreachable)
      are retried; once our own deadline passes the lease counts as lost too.
    * **Fence**: :meth:`Lease.check` raises :class:`LeaseLostError` (exit 5) once the
      lease is lost or past our deadline; :class:`FencedSink` calls it before every
      store write (run creation, each batch commit), and the central checkpoints
      (:mod:`.stores.object_checkpoints`) before every put. Nothing is committed after
      the loss is known.
    * **Release** (normal exit, SIGTERM, an error): the object is rewritten as
      released and expired, so the next central ingester starts at once.

Time
    ``expires_ms`` is the holder's wall clock at renewal + ttl; a taker compares it with
    its own wall clock. Hosts' clocks must agree within ``ttl/10`` (at least 1 s):
    NTP does far better. The holder stops on its own monotonic clock at
    ``last successful renewal sent + ttl - max(ttl/10, 1 s)``, before any taker
    with a clock that close can see the lease expired.

When a holder dies (SIGKILL, a machine lost), its lease stays until it runs out
(at most ``ttl`` after its last renewal); then the next central ingester takes
it over and continues from the checkpoints: in the store for the bulk sink, in
the destination for the API sink. A holder that was only cut off (a network
partition) stops writing at its deadline; a commit already in flight when it
stops is repeated by the next holder, which replay makes harmless (see
:mod:`.sink`).

The leases this process holds are registered (:func:`held`), so that
:func:`~.stores.connect.open_sink` fences every sink opened for a mirrored root,
including those of ``--workers`` threads.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone

from formula_foundry.errors import IngesterLockedError, IngestError
from formula_foundry.tracking.ingest.objects import ObjectStore, PreconditionFailed
from formula_foundry.tracking.ingest.ship.layout import lease_key
from formula_foundry.tracking.ingest.sink import Batch, Checkpoint, RunInfo, Sink

__all__ = ["LEASE_FORMAT", "FencedSink", "Lease", "LeaseHeldError", "LeaseInfo", "LeaseLostError", "held",
           "read_lease"]

log = logging.getLogger("formula_foundry.ingest.lease")

LEASE_FORMAT = {"format": "ff-lease", "version": 1}
_RETRY_SECONDS = 1.0  # a failed renewal is retried this often (at most ttl/10)


class LeaseHeldError(IngesterLockedError):
    """Another central ingester holds the lease (exit 5); ``info`` says who and until when."""

    def __init__(self, message: str, info: LeaseInfo) -> None:
        super().__init__(message)
        self.info = info


class LeaseLostError(IngesterLockedError):
    """This process no longer holds its lease (taken over, or not renewed in time): exit 5."""


@dataclass(frozen=True)
class LeaseInfo:
    """The content of a lease object (see the module docstring for the format)."""

    store: str
    holder: str
    token: str
    acquired_ms: int
    renewed_ms: int
    expires_ms: int
    ttl_seconds: float
    released: bool = False

    def encode(self) -> bytes:
        return json.dumps({**LEASE_FORMAT, **asdict(self)}, indent=1).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes, where: str) -> LeaseInfo:
        try:
            raw = json.loads(data)
            if raw.get("format") != LEASE_FORMAT["format"] or not isinstance(raw.get("version"), int):
                raise ValueError("not an ff-lease object")
            if raw["version"] > LEASE_FORMAT["version"]:
                raise IngestError(f"{where}: lease format version {raw['version']} is newer than this "
                                  f"ff-ingest knows ({LEASE_FORMAT['version']}): upgrade formula-foundry")
            return cls(store=str(raw["store"]), holder=str(raw["holder"]), token=str(raw["token"]),
                       acquired_ms=int(raw["acquired_ms"]), renewed_ms=int(raw["renewed_ms"]),
                       expires_ms=int(raw["expires_ms"]), ttl_seconds=float(raw["ttl_seconds"]),
                       released=bool(raw.get("released", False)))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # A lease nobody can read is taken over like an expired one (it was never ours to keep).
            log.warning("%s: unreadable lease object (%s); it counts as expired", where, exc)
            return cls(store="?", holder="an unreadable lease object", token="", acquired_ms=0, renewed_ms=0,
                       expires_ms=0, ttl_seconds=0.0, released=True)

    def free(self, now_ms: int) -> bool:
        """Whether another ingester may take this lease now (released, or run out)."""
        return self.released or now_ms >= self.expires_ms


def read_lease(objects: ObjectStore, name: str) -> LeaseInfo | None:
    """The lease ``name`` as it is now in ``objects`` (None: nobody ever held it); for ``status``."""
    found = objects.read_versioned(lease_key(name))
    return None if found is None else LeaseInfo.decode(found[0], f"{objects.display_uri}/{lease_key(name)}")


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def holder_text(program: str = "ff-ingest") -> str:
    return f"{program} pid {os.getpid()} on {socket.gethostname()}"


# --------------------------------------------------------------------------- leases held by this process

_HELD: dict[tuple[str, str], Lease] = {}
_HELD_LOCK = threading.Lock()


def held(source: str, name: str) -> Lease | None:
    """The lease ``name`` in the destination ``source`` (its display URI) if this process holds it."""
    with _HELD_LOCK:
        return _HELD.get((source, name))


# --------------------------------------------------------------------------- the lease

class Lease:
    """One tenure of the lease ``name`` in ``objects`` (see the module docstring).

    ``clock`` (wall, seconds) stamps the object; ``monotonic`` times our own deadline.
    """

    def __init__(self, objects: ObjectStore, name: str, *, store: str, ttl: float, holder: str | None = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl!r}")
        self.objects = objects
        self.name = name
        self.key = lease_key(name)
        self.where = f"{objects.display_uri}/{self.key}"
        self.store = store
        self.ttl = float(ttl)
        self.margin = min(max(self.ttl / 10, 1.0), self.ttl / 3)  # our deadline is this much before theirs
        self.holder = holder or holder_text()
        self.clock = clock
        self.monotonic = monotonic
        self.info: LeaseInfo | None = None  # what we last wrote
        self._etag: str | None = None
        self._deadline = 0.0  # monotonic: we hold the lease until then, unless renewed
        self._lost: str | None = None  # why the lease was lost, once it was
        self._lock = threading.Lock()  # one write at a time (renew thread, release)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- state ----------------------------------------------------------------------

    @property
    def lost(self) -> str | None:
        """Why this process no longer holds the lease, or None while it does."""
        if self._lost is None and self.info is not None and self.monotonic() >= self._deadline:
            self._lost = (f"not renewed in time (the last renewal that succeeded was more than "
                          f"{self.ttl - self.margin:.1f} s ago)")
        return self._lost

    def check(self) -> None:
        """Raise :class:`LeaseLostError` unless this process still holds the lease (the fence)."""
        if self.info is None:
            raise LeaseLostError(f"the central lease {self.where} is not held by this process")
        reason = self.lost
        if reason is not None:
            raise LeaseLostError(f"lost the central lease of {self.store} ({self.where}): {reason}; stopped, "
                                 "nothing was committed after the loss (the next holder continues from the "
                                 "checkpoints)")

    # -- acquire ----------------------------------------------------------------------

    def _fresh(self, now_ms: int, acquired_ms: int | None = None) -> LeaseInfo:
        return LeaseInfo(store=self.store, holder=self.holder, token=uuid.uuid4().hex,
                         acquired_ms=acquired_ms or now_ms, renewed_ms=now_ms,
                         expires_ms=now_ms + int(self.ttl * 1000), ttl_seconds=self.ttl)

    def try_acquire(self) -> None:
        """Take the lease now, or raise :class:`LeaseHeldError` naming its holder (see the rules)."""
        for _ in range(5):  # a lost race re-reads: the winner's lease is then held
            sent = self.monotonic()
            now_ms = int(self.clock() * 1000)
            found = self.objects.read_versioned(self.key)
            etag = None
            if found is not None:
                current = LeaseInfo.decode(found[0], self.where)
                if not current.free(now_ms):
                    raise LeaseHeldError(self._held_message(current, now_ms), current)
                etag = found[1]
            info = self._fresh(now_ms)
            try:
                new_etag = self.objects.write_versioned(self.key, info.encode(), etag=etag)
            except PreconditionFailed:
                continue
            with self._lock:
                self.info, self._etag, self._lost = info, new_etag, None
                self._deadline = sent + self.ttl - self.margin
            with _HELD_LOCK:
                _HELD[(self.objects.display_uri, self.name)] = self
            if found is not None:
                log.info("took over the central lease %s from %s (%s)", self.where, current.holder,
                         "released" if current.released else f"expired at {_when(current.expires_ms)}")
            return
        raise IngesterLockedError(f"the central lease {self.where} keeps changing hands; try again")

    def acquire(self, *, wait: bool = False, should_stop: Callable[[], bool] = lambda: False,
                on_wait: Callable[[LeaseHeldError], None] | None = None) -> bool:
        """Take the lease; with ``wait``, wait for it (until ``should_stop()``). False: stopped while waiting."""
        seen = None  # the tenure last reported to on_wait (reported once each)
        while True:
            try:
                self.try_acquire()
                return True
            except LeaseHeldError as exc:
                if not wait:
                    raise
                if on_wait is not None and exc.info.token != seen:
                    on_wait(exc)
                seen = exc.info.token
                left = exc.info.expires_ms / 1000 - self.clock()
                end = self.monotonic() + min(max(left, 0.0) + 0.05, max(self.ttl / 3, 0.2))
                while self.monotonic() < end:
                    if should_stop():
                        return False
                    time.sleep(min(0.1, max(end - self.monotonic(), 0.0)))

    def _held_message(self, current: LeaseInfo, now_ms: int) -> str:
        left = (current.expires_ms - now_ms) / 1000
        return (f"another central ingester ({current.holder}) holds the lease of {self.store} in {self.where} "
                f"until {_when(current.expires_ms)} ({left:.0f} s from now, unless it renews it); only one may "
                "write a store from a ship destination: stop it, or run with --wait-lease to take over when it "
                "is released or runs out")

    # -- renew ------------------------------------------------------------------------

    def renew(self) -> bool:
        """Extend the lease once; False when it could not be written (lost, or the destination failed)."""
        with self._lock:
            if self.info is None or self._lost is not None:
                return False
            sent = self.monotonic()
            now_ms = int(self.clock() * 1000)
            info = replace(self.info, renewed_ms=now_ms, expires_ms=now_ms + int(self.ttl * 1000))
            try:
                etag = self.objects.write_versioned(self.key, info.encode(), etag=self._etag)
            except PreconditionFailed:
                self._lost = "another central ingester took it over (its renewal found the object changed)"
                log.error("lost the central lease %s: %s", self.where, self._lost)
                return False
            except Exception as exc:  # noqa: BLE001 - the destination is down: retried until our deadline
                log.warning("cannot renew the central lease %s: %s", self.where, str(exc)[:300])
                return False
            self.info, self._etag = info, etag
            self._deadline = sent + self.ttl - self.margin
            return True

    def start_renewing(self) -> None:
        """Renew every ``ttl/3`` on a daemon thread (retrying failures sooner) until released."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="ff-lease-renew", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        delay = self.ttl / 3
        while not self._stop.wait(delay):
            ok = self.renew()
            if self.lost is not None:
                return
            delay = self.ttl / 3 if ok else min(_RETRY_SECONDS, self.ttl / 10)

    # -- release ----------------------------------------------------------------------

    def release(self) -> None:
        """Stop renewing and write the lease released (ignored when it is not ours any more)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with _HELD_LOCK:
            if _HELD.get((self.objects.display_uri, self.name)) is self:
                del _HELD[(self.objects.display_uri, self.name)]
        with self._lock:
            if self.info is None:
                return
            info, etag, lost = self.info, self._etag, self._lost
            self.info = None
        if lost is not None:
            return
        now_ms = int(self.clock() * 1000)
        try:
            self.objects.write_versioned(self.key, replace(info, renewed_ms=now_ms, expires_ms=now_ms,
                                                           released=True).encode(), etag=etag)
        except PreconditionFailed:
            pass  # taken over meanwhile: it is not ours to release
        except Exception as exc:  # noqa: BLE001 - it runs out on its own
            log.warning("cannot release the central lease %s (it runs out by itself within %.0f s): %s",
                        self.where, self.ttl, str(exc)[:300])


# --------------------------------------------------------------------------- the fence around a sink

class FencedSink(Sink):
    """A sink that checks the lease before every write; reads and ``close`` pass straight through."""

    def __init__(self, inner: Sink, lease: Lease) -> None:
        self.inner = inner
        self.lease = lease
        self.kind = inner.kind  # (instance attributes shadowing the class constants: the inner sink's)
        self.absorbs_repeated_metrics = inner.absorbs_repeated_metrics
        self.display_uri = inner.display_uri
        self.checkpoints = inner.checkpoints

    def experiment_id(self, name: str) -> str:
        self.lease.check()
        return self.inner.experiment_id(name)

    def find_run(self, run_id: str, experiment_id: str | None = None) -> RunInfo | None:
        return self.inner.find_run(run_id, experiment_id)

    def create_run(self, *, experiment_id: str, run_id: str, run_name: str | None, start_time: int,
                   tags: dict[str, str]) -> RunInfo:
        self.lease.check()
        return self.inner.create_run(experiment_id=experiment_id, run_id=run_id, run_name=run_name,
                                     start_time=start_time, tags=tags)

    def existing_params(self, mlflow_run_id: str) -> dict[str, str]:
        return self.inner.existing_params(mlflow_run_id)

    def commit(self, mlflow_run_id: str, batch: Batch, checkpoint: Checkpoint) -> None:
        self.lease.check()
        self.inner.commit(mlflow_run_id, batch, checkpoint)

    def set_status(self, mlflow_run_id: str, status: str, end_time: int) -> None:
        self.lease.check()
        self.inner.set_status(mlflow_run_id, status, end_time)

    def close(self) -> None:
        self.inner.close()
