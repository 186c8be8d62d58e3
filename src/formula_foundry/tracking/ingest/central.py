"""Central ingest of shipped journals: mirror, lease, then the same replay as local journals.

``ff-ingest --root s3://bucket/prefix`` (or a shipped folder) on a central machine::

    ship destination ──sync──► local mirror (ship/mirror.py) ──Replayer──► store
      (S3, a share)             plain journal files + blobs          (FencedSink: the lease checked
                                                                       before every write)

* :func:`central_pass` (the batch): take the lease (:mod:`.lease`; exit 5 when
  another central ingester holds it, or wait for it), sync the mirror, run the
  caller's batch pass over the mirror's journals, release the lease. The pass is
  ``cli/ingest.py``'s ``run_batch``, unchanged: same checkpoints, same
  ``--workers``, same summary.
* :func:`run_central_daemon` (``--watch``): the daemon of shipped roots. There is
  nothing to watch with inotify on S3, so it polls: sync, replay what changed
  (a :class:`~.watch.Follower`, so backoff while the store is down, waiting
  children and stale runs behave as in ``--watch``), sleep
  ``ingest.watch.rescan_interval_seconds``; SIGTERM/SIGINT end it after the batch
  in flight (exit 0). The lease is renewed in the background; losing it ends the
  daemon with exit 5. With ``wait_lease`` it is a standby: it waits for the lease
  and takes over when the holder releases it or dies.

The local single-ingester lock (:mod:`.stores.lock`) is taken too, as for any
ingest: the lease orders machines, the lock processes on one machine (and the
PostgreSQL advisory lock, machines on one database).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from formula_foundry.errors import StoreUnavailableError
from formula_foundry.tracking.config import Config
from formula_foundry.tracking.ingest.lease import Lease, LeaseHeldError
from formula_foundry.tracking.ingest.objects import ObjectStore, ObjectStoreError
from formula_foundry.tracking.ingest.replay import Replayer
from formula_foundry.tracking.ingest.ship.mirror import Mirror, SyncReport
from formula_foundry.tracking.ingest.sink import Sink
from formula_foundry.tracking.ingest.stores.connect import open_sink, store_lock
from formula_foundry.tracking.ingest.stores.http import short_http_requests
from formula_foundry.tracking.ingest.stores.lock import StoreLock
from formula_foundry.tracking.ingest.uri import redact, store_key
from formula_foundry.tracking.ingest.watch import (
    HTTP_TIMEOUT_SECONDS,
    INITIAL_BACKOFF,
    Follower,
    format_event,
)

__all__ = ["MIN_INTERVAL", "central_pass", "lease_for", "run_central_daemon"]

log = logging.getLogger("formula_foundry.ingest.central")

MIN_INTERVAL = 0.5  # the daemon lists the destination at most this often


def lease_for(cfg: Config, objects: ObjectStore, tracking_uri: str) -> Lease:
    """The (not yet taken) lease of ``tracking_uri``'s store in the destination ``objects``."""
    return Lease(objects, store_key(tracking_uri), store=redact(tracking_uri), ttl=cfg.ingest.lease_seconds)


def _waiting(exc: LeaseHeldError) -> None:
    log.warning(format_event("waiting_for_lease", holder=exc.info.holder,
                             expires_in_s=round(max(exc.info.expires_ms / 1000 - time.time(), 0.0), 1)))


def central_pass(cfg: Config, objects: ObjectStore, *, tracking_uri: str, batch: Callable[[Config], int],
                 dry_run: bool = False, wait_lease: bool = False,
                 on_sync: Callable[[SyncReport, Mirror], None] | None = None) -> int:
    """One central batch pass: lease, sync, ``batch(mirror config)``, release; returns ``batch``'s exit code.

    A dry run syncs the mirror (a local cache) and reads checkpoints only: no lease.
    """
    mirror = Mirror.open(objects, cfg.ingest.state_dir)
    if dry_run:
        report = mirror.sync()
        if on_sync is not None:
            on_sync(report, mirror)
        return batch(mirror.info.config(cfg))
    lease = lease_for(cfg, objects, tracking_uri)
    lease.acquire(wait=wait_lease, on_wait=_waiting)
    try:
        lease.start_renewing()
        report = mirror.sync()
        if on_sync is not None:
            on_sync(report, mirror)
        code = batch(mirror.info.config(cfg))
        lease.check()  # a loss during the pass without a commit after it still ends with exit 5
        return code
    finally:
        lease.release()


# --------------------------------------------------------------------------- the daemon

class _StopFlag:
    """Set by SIGTERM/SIGINT; the handler does nothing else."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum, _frame) -> None:
        self.signal = signum

    def is_set(self) -> bool:
        return self.signal is not None

    def install(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self) for sig in (signal.SIGTERM, signal.SIGINT)}


def _sleep(seconds: float, stop: _StopFlag) -> None:
    end = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < end:
        time.sleep(min(0.1, max(0.0, end - time.monotonic())))


def _open_store(cfg: Config, uri: str, sink: str | None, lock: StoreLock, lease: Lease, stop: _StopFlag) -> Sink | None:
    """The store's lock and (fenced) sink, retried with backoff while the store is down; None if stopped first."""
    import sqlite3

    delay, down = INITIAL_BACKOFF, False
    while not stop.is_set():
        lease.check()
        try:
            lock.acquire_in_store()
            store = open_sink(cfg, tracking_uri=uri, sink=sink)
        except (StoreUnavailableError, sqlite3.OperationalError) as exc:
            if not down:
                log.warning(format_event("store_unavailable", store=redact(uri), error=str(exc)[:300],
                                         note="cannot open the store; retrying with backoff"))
                down = True
            _sleep(delay, stop)
            delay = min(delay * 2, 30.0)
            continue
        if down:
            log.warning(format_event("store_available", store=redact(uri)))
        return store
    return None


def run_central_daemon(cfg: Config, objects: ObjectStore, *, tracking_uri: str | None = None,
                       sink: str | None = None, skip_corrupt: bool = False, wait_lease: bool = False) -> int:
    """Follow a ship destination until SIGTERM/SIGINT (exit 0); see the module docstring.

    Raises :class:`~.lease.LeaseHeldError` (exit 5) when another central ingester holds the lease
    (unless ``wait_lease``), :class:`~.lease.LeaseLostError` (exit 5) when the lease is lost.
    """
    uri = tracking_uri or cfg.tracking.backend_store_uri
    mirror = Mirror.open(objects, cfg.ingest.state_dir)
    mcfg = mirror.info.config(cfg)
    interval = max(cfg.ingest.watch.rescan_interval_seconds, MIN_INTERVAL)
    logging.getLogger("watchdog").setLevel(logging.WARNING)
    lock = store_lock(mcfg, uri).acquire_local()
    stop = _StopFlag()
    previous = stop.install()
    lease = lease_for(cfg, objects, uri)
    try:
        if not lease.acquire(wait=wait_lease, should_stop=stop.is_set, on_wait=_waiting):
            return 0
        lease.start_renewing()
        log.info(format_event("lease_acquired", lease=lease.where, holder=lease.holder, ttl_s=lease.ttl))
        with short_http_requests(HTTP_TIMEOUT_SECONDS):
            store = _open_store(mcfg, uri, sink, lock, lease, stop)
            if store is None:
                return 0
            try:
                follower = Follower(Replayer(store, skip_corrupt=skip_corrupt), roots=[mirror.journal_root],
                                    settings=mcfg.ingest.watch, should_stop=stop.is_set)
                log.info(format_event("started", pid=os.getpid(), store=store.display_uri, sink=store.kind,
                                      source=objects.display_uri, mirror=mirror.folder, interval_s=interval))
                _loop(follower, mirror, lease, stop, interval)
            finally:
                store.close()
    finally:
        lease.release()
        lock.release()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info(format_event("stopped", signal=signal.Signals(stop.signal).name if stop.signal else None))
    return 0


def _loop(follower: Follower, mirror: Mirror, lease: Lease, stop: _StopFlag, interval: float) -> None:
    """Sync, step, sleep; until stopped. The lease is checked around every step."""
    source_ok = True
    next_sync = 0.0
    while not stop.is_set():
        lease.check()
        now = time.monotonic()
        if now >= next_sync:
            next_sync = now + interval
            try:
                report = mirror.sync()
            except ObjectStoreError as exc:
                if source_ok:
                    log.warning(format_event("source_unavailable", source=mirror.objects.display_uri,
                                             error=str(exc)[:300], note="retrying at every interval"))
                source_ok = False
            else:
                if not source_ok:
                    log.warning(format_event("source_available", source=mirror.objects.display_uri))
                source_ok = True
                if report.segments or report.blobs:
                    log.info(format_event("mirrored", segments=report.segments, bytes=report.bytes,
                                          blobs=report.blobs, blob_bytes=report.blob_bytes,
                                          elapsed_s=report.elapsed))
                follower.request_rescan()
        follower.step()
        lease.check()
        if follower.interrupted:
            return
        wake = min(next_sync - time.monotonic(), max(follower.next_due() - follower.clock(), 0.0))
        _sleep(max(wake, 0.05), stop)
