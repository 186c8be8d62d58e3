"""``ff-ingest --watch``: follow the journal roots and replay what is appended, as it is appended.

Three layers, so the logic runs without a thread, a signal or a file-system
watcher (and is unit-tested that way)::

    watchdog thread ──► Inbox (paths, new dirs; thread-safe) ──► main loop ──► Follower.step() ──► Replayer ──► Sink
       _Handler            mark / wake the loop                   debounce       dirty set, rescan,
                                                                   stop flag      backoff, stale runs

* :class:`Follower` (no thread, no signal) owns a :class:`~.replay.Replayer`
  and the set of *dirty* journals. ``mark(path)`` says "this journal changed";
  ``step()`` ingests every dirty journal from its checkpoint (the batch mode's
  exact code path, so exactly-once holds the same way), runs a full
  ``discover`` rescan every ``rescan_interval_seconds`` (a guard against
  missed file-system events; the first step is the start-up catch-up), backs
  off exponentially while the store is unreachable, and reports stale runs.
* :class:`Watcher` is the thin wrapper around watchdog's ``Observer``
  (inotify) or ``PollingObserver`` (``--polling``, for NFS): its handler marks
  ``*.jsonl`` files under ``tracking/`` folders and hands new directories to a
  targeted scan.
* :func:`run_daemon` takes the single-ingester lock, opens the sink, installs
  SIGTERM/SIGINT handlers that only set a flag, and loops: wait for an event
  (or the next timed job), wait ``debounce_seconds`` more so a burst of
  appends becomes one batch, hand the events to the follower, step.

Guarantees and their mechanisms
    * Exactly once: every step is a checkpointed replay (see :mod:`.replay`
      and :mod:`.sink`); a kill anywhere is recovered by the next start.
    * Shutdown: the signal handler sets a flag; the loop finishes the batch in
      flight (a ``log_batch`` and its checkpoint), stops the observer, closes
      the sink and returns 0.
    * Store down (:class:`~formula_foundry.errors.StoreUnavailableError`): the
      failed journals stay dirty, retries back off from 0.5 s doubling to
      ``$FF_WATCH_MAX_BACKOFF`` (default 30 s); one log line when the store
      goes away, one when it is back. Producers only append to files and never
      notice.
    * Stale runs: a journal whose run has not ended, with no append for
      ``stale_after_seconds`` and whose producer is not alive on this host, is
      reported once (``event=stale``); ``stale_action: fail|kill`` also marks
      the MLflow run FAILED/KILLED (owner journals only; a later ``run_end``
      still overwrites it).

Log lines are ``key=value`` (``event=ingested path=... run=... records=...``)
on stderr through :mod:`logging` (logger ``formula_foundry.ingest.watch``).
"""

from __future__ import annotations

import atexit
import faulthandler
import gc
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from formula_foundry.errors import JournalError, StoreUnavailableError
from formula_foundry.tracking.config import Config, WatchConfig
from formula_foundry.tracking.ingest.discover import discover, file_size, is_journal, skip_reason
from formula_foundry.tracking.ingest.replay import JournalReport, PassReport, Replayer
from formula_foundry.tracking.ingest.sink import Sink
from formula_foundry.tracking.ingest.stores.connect import open_sink, store_lock
from formula_foundry.tracking.ingest.stores.lock import StoreLock
from formula_foundry.tracking.ingest.stores.http import short_http_requests
from formula_foundry.tracking.ingest.uri import redact
from formula_foundry.tracking.journal import JournalReader

__all__ = ["Follower", "Inbox", "StaleRun", "Watcher", "format_event", "producer_alive", "run_daemon"]

log = logging.getLogger("formula_foundry.ingest.watch")

INITIAL_BACKOFF = 0.5
DEFAULT_MAX_BACKOFF = 30.0
CHUNK = 256  # journals per replay call: the stop flag is checked between chunks (and between batches)
_STATUS_OF_ACTION = {"fail": "FAILED", "kill": "KILLED"}


def format_event(event: str, **fields: object) -> str:
    """``event=NAME key=value ...``; values with spaces or quotes are double-quoted."""
    parts = [f"event={event}"]
    for key, value in fields.items():
        if value is None:
            continue
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        if not text or any(c in text for c in ' "=\n\t'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def producer_alive(record: dict | None, *, hostname: str | None = None) -> bool | None:
    """Whether the producer named in a journal header (``host``, ``pid``) still runs.

    True/False when the producer ran on this host; None when that cannot be told
    (another host, or no pid in the header).
    """
    if not record:
        return None
    host, pid = record.get("host"), record.get("pid")
    if not isinstance(pid, int) or host != (hostname or socket.gethostname()):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return None
    return True


@dataclass(frozen=True)
class StaleRun:
    """A journal reported stale: no end record, no append for ``idle_seconds``, producer gone."""

    journal_id: str
    path: Path
    run_id: str
    mlflow_run_id: str
    idle_seconds: float
    action: str  # report | fail | kill, as applied (report when the sink cannot set a status)


class _Interrupted(Exception):
    """Raised from the replayer's progress callback to stop right after a committed batch."""


# --------------------------------------------------------------------------- the logic (no threads)

class Follower:
    """Keeps MLflow up to date with a set of journals. Single-threaded; call ``step()`` from one loop.

    ``clock`` is wall-clock seconds (file mtimes are compared against it).
    """

    def __init__(self, replayer: Replayer, *, roots: Sequence[Path], paths: Sequence[Path] = (),
                 settings: WatchConfig | None = None, clock: Callable[[], float] = time.time,
                 max_backoff: float = DEFAULT_MAX_BACKOFF,
                 should_stop: Callable[[], bool] = lambda: False) -> None:
        self.replayer = replayer
        self.roots = tuple(Path(r) for r in roots)
        self.paths = tuple(Path(p) for p in paths)
        self.settings = settings or WatchConfig()
        self.clock = clock
        self.max_backoff = max(max_backoff, INITIAL_BACKOFF)
        self.should_stop = should_stop
        self.interrupted = False
        self.stale: dict[str, StaleRun] = {}  # journal id -> report (each reported once)
        self.rescans = 0
        self._dirty: set[Path] = set()
        self._scan_dirs: set[Path] = set()
        self._known: set[Path] = set()
        self._sizes: dict[Path, int] = {}  # size seen before the last ingest (-1: retry at the next rescan)
        self._waiting: set[Path] = set()
        self._errors: dict[Path, str] = {}  # last error logged per journal (logged again only when it changes)
        self._rescan_requested = True  # the first step is the catch-up
        self._next_rescan = 0.0
        self._next_stale_check = 0.0
        self._store_ok = True
        self._down_since = 0.0
        self._down_kind = "store"
        self._backoff = 0.0
        self._retry_at = 0.0
        self._stale_check_failing = False
        replayer.on_progress = self._after_commit

    # -- inputs -----------------------------------------------------------------

    def mark(self, path: Path | str) -> None:
        """A journal was created or appended to (a symlink or special file named like one is ignored)."""
        if skip_reason(path) is not None:
            return
        path = Path(path).resolve()
        self._dirty.add(path)
        self._known.add(path)

    def scan(self, folders: Iterable[Path | str]) -> None:
        """New directories appeared: look for journals in them at the next step."""
        self._scan_dirs.update(Path(f) for f in folders)

    def request_rescan(self) -> None:
        self._rescan_requested = True

    # -- state --------------------------------------------------------------------

    @property
    def store_ok(self) -> bool:
        return self._store_ok

    @property
    def dirty(self) -> frozenset[Path]:
        return frozenset(self._dirty)

    @property
    def known(self) -> frozenset[Path]:
        return frozenset(self._known)

    def next_due(self) -> float:
        """Clock time of the next timed job (rescan, retry, stale check); the loop sleeps until then."""
        if not self._store_ok:
            return self._retry_at
        due = [self._next_rescan, self._next_stale_check if self._stale_enabled else float("inf")]
        if self._dirty or self._scan_dirs or self._rescan_requested:
            due.append(self.clock())
        return min(due)

    @property
    def _stale_enabled(self) -> bool:
        return self.settings.stale_after_seconds > 0

    # -- one step ---------------------------------------------------------------

    def step(self) -> PassReport:
        """Do whatever is due: rescan, ingest dirty journals, check for stale runs."""
        now = self.clock()
        if not self._store_ok and now < self._retry_at:
            return PassReport()
        if self._rescan_requested or now >= self._next_rescan:
            self._rescan(now)
        if self._scan_dirs:
            dirs, self._scan_dirs = sorted(self._scan_dirs), set()
            for path in discover(dirs):
                self._dirty.add(path)
                self._known.add(path)
        report = PassReport()
        if self._dirty:
            report = self._ingest(now)
            if not self._store_ok or self.interrupted:
                return report
        if self._stale_enabled and now >= self._next_stale_check:
            self._next_stale_check = now + min(max(self.settings.stale_after_seconds / 4, 0.2), 5.0)
            try:
                self._check_stale(now)
            except Exception as exc:  # noqa: BLE001 - checkpoints in a store that is down (bulk sink): retry later
                if not self._stale_check_failing:
                    log.warning(format_event("stale_check_failed", error=f"{type(exc).__name__}: {exc}"[:300]))
                self._stale_check_failing = True
            else:
                self._stale_check_failing = False
        if not self._store_ok and now >= self._retry_at:
            # Down, and nothing was there to retry with: a later change (or stale check) tries the store.
            self._retry_at = now + self._backoff
        return report

    def _rescan(self, now: float) -> None:
        """Every journal under the roots whose size changed since it was last ingested becomes dirty."""
        self._rescan_requested = False
        self._next_rescan = now + max(self.settings.rescan_interval_seconds, 0.1)
        self.rescans += 1
        for path in discover(self.roots, self.paths):
            self._known.add(path)
            if self._sizes.get(path) != (-1 if (size := file_size(path)) is None else size):
                self._dirty.add(path)
        self._dirty |= self._waiting

    def _ingest(self, now: float) -> PassReport:
        paths = sorted(self._dirty)
        self._dirty.clear()
        sizes = {p: (-1 if (size := file_size(p)) is None else size) for p in paths}
        try:
            reports = self._replay(paths)
        except _Interrupted:
            self._dirty.update(paths)
            self.interrupted = True
            return PassReport()
        except StoreUnavailableError as exc:
            self._dirty.update(paths)
            self._went_down(now, str(exc))
            return PassReport()
        except Exception as exc:  # a daemon logs, backs off and retries; it does not die of one bad pass
            log.exception(format_event("step_failed", error_type=type(exc).__name__))
            self._dirty.update(paths)
            self._went_down(now, f"{type(exc).__name__}: {exc}", kind="error")
            return PassReport()
        self._came_up(now)
        for jr in reports:
            self._note(jr, sizes.get(jr.path, -1))
        return PassReport(journals=reports, elapsed=self.clock() - now)

    def _replay(self, paths: list[Path]) -> list[JournalReport]:
        """Replay ``paths`` in chunks. Journals waiting for a parent (or owning) run, from this pass or
        an earlier one, are retried at once whenever a pass created runs."""
        done: dict[Path, JournalReport] = {}
        earlier = sorted(self._waiting - set(paths))
        todo = paths
        for _ in range(16):
            created = 0
            for i in range(0, len(todo), CHUNK):
                if self.should_stop():
                    raise _Interrupted
                result = self.replayer.ingest(todo[i:i + CHUNK])
                created += result.runs_created
                for jr in result.journals:
                    done[jr.path] = jr
            waiting = [p for p in todo if p in done and done[p].state == "waiting"]
            if not created or not (waiting or earlier):
                break
            todo, earlier = waiting + earlier, []
        return list(done.values())

    def _after_commit(self, _nbytes: int) -> None:
        self._came_up(self.clock())  # the first commit that succeeds proves the store is back
        if self.should_stop():
            raise _Interrupted  # the batch and its checkpoint are durable: a clean place to stop

    def _note(self, jr: JournalReport, size: int) -> None:
        path = jr.path
        if jr.state == "waiting":
            self._sizes[path] = -1
            if path not in self._waiting:
                log.info(format_event("waiting", path=path, run=jr.run_id, reason="; ".join(jr.warnings)))
            self._waiting.add(path)
            return
        self._waiting.discard(path)
        self._sizes[path] = size
        if jr.records:
            log.info(format_event("ingested", path=path, run=jr.run_id, mlflow_run=jr.mlflow_run_id,
                                  records=jr.records, batches=jr.batches,
                                  created_run=jr.created_run or None))
            if jr.journal_id in self.stale:
                del self.stale[jr.journal_id]
                log.warning(format_event("resumed", path=path, run=jr.run_id,
                                         note="a run reported stale was appended to again"))
        for warning in jr.warnings:
            log.warning(format_event("journal_warning", path=path, run=jr.run_id, warning=warning))
        if jr.errors:
            message = "; ".join(jr.errors)
            if self._errors.get(path) != message:
                self._errors[path] = message
                log.error(format_event("journal_error", path=path, run=jr.run_id, error=message))
        elif jr.records:
            self._errors.pop(path, None)

    # -- the store going away and coming back -------------------------------------

    def _went_down(self, now: float, error: str, *, kind: str = "store") -> None:
        if self._store_ok:
            self._store_ok = False
            self._down_since = now
            self._down_kind = kind
            self._backoff = INITIAL_BACKOFF
            if kind == "store":
                log.warning(format_event("store_unavailable", error=error[:300], retry_in=self._backoff,
                                         note="journals keep everything; retrying with backoff"))
        else:
            self._backoff = min(self._backoff * 2, self.max_backoff)
            log.debug(format_event("store_retry_failed", error=error[:300], retry_in=self._backoff))
        self._retry_at = now + self._backoff

    def _came_up(self, now: float) -> None:
        if not self._store_ok:
            self._store_ok = True
            log.warning(format_event("store_available" if self._down_kind == "store" else "recovered",
                                     down_s=round(now - self._down_since, 1), note="catching up"))

    # -- stale runs -----------------------------------------------------------------

    def _check_stale(self, now: float) -> None:
        after = self.settings.stale_after_seconds
        for cp in self.replayer.sink.checkpoints.all():
            if cp.ended or not cp.mlflow_run_id or cp.last_error:
                continue
            path = Path(cp.path)
            if path not in self._known or path in self._dirty or cp.journal_id in self.stale:
                continue
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                continue
            idle = now - mtime
            if idle < after:
                continue
            try:
                header = JournalReader(path).first_record()
            except (JournalError, OSError) as exc:  # the ingest reports these
                log.debug(format_event("stale_check_skipped", path=path, error=exc))
                continue
            if producer_alive(header) is True:
                continue  # quiet, not dead: a long step without logging
            owner = bool(header) and header.get("type") == "run_start"
            action = self.settings.stale_action if owner else "report"
            if action in _STATUS_OF_ACTION:
                try:
                    self.replayer.sink.set_status(cp.mlflow_run_id, _STATUS_OF_ACTION[action], int(mtime * 1000))
                except NotImplementedError:
                    log.warning(format_event("stale_action_unsupported", path=path,
                                             sink=self.replayer.sink.kind, action=action))
                    action = "report"
                except StoreUnavailableError as exc:
                    self._went_down(now, str(exc))
                    self._next_stale_check = 0.0  # retry right after the backoff
                    return
                else:
                    self._came_up(now)
            stale = StaleRun(journal_id=cp.journal_id, path=path, run_id=cp.run_id,
                             mlflow_run_id=cp.mlflow_run_id, idle_seconds=idle, action=action)
            self.stale[cp.journal_id] = stale
            log.warning(format_event("stale", path=path, run=cp.run_id, mlflow_run=cp.mlflow_run_id,
                                     idle_s=round(idle, 1), action=action,
                                     marked=_STATUS_OF_ACTION.get(action),
                                     segment=None if owner else "attached"))


# --------------------------------------------------------------------------- the file-system side (threads)

class Inbox:
    """Hand-over from the watcher thread to the loop: changed journals, new directories, a wake-up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._paths: set[str] = set()
        self._dirs: set[str] = set()

    def put_path(self, path: str) -> None:
        with self._lock:
            self._paths.add(path)
        self._event.set()

    def put_dir(self, path: str) -> None:
        with self._lock:
            self._dirs.add(path)
        self._event.set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    def drain(self) -> tuple[set[str], set[str]]:
        with self._lock:
            self._event.clear()
            paths, self._paths = self._paths, set()
            dirs, self._dirs = self._dirs, set()
        return paths, dirs


def _handler(inbox: Inbox, explicit: frozenset[str]):
    from watchdog.events import (
        EVENT_TYPE_CLOSED,
        EVENT_TYPE_CREATED,
        EVENT_TYPE_MODIFIED,
        EVENT_TYPE_MOVED,
        FileSystemEventHandler,
    )

    wanted = {EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_MOVED, EVENT_TYPE_CLOSED}

    class _Handler(FileSystemEventHandler):
        """Runs on watchdog's thread: classify the event, put it in the inbox, nothing else."""

        def on_any_event(self, event) -> None:
            if event.event_type not in wanted:
                return
            targets = [os.fsdecode(event.src_path)]
            if event.event_type == EVENT_TYPE_MOVED:
                targets = [os.fsdecode(event.dest_path)]
            for raw in targets:
                if event.is_directory:
                    if event.event_type in (EVENT_TYPE_CREATED, EVENT_TYPE_MOVED):
                        inbox.put_dir(raw)
                elif raw in explicit or is_journal(Path(raw)):  # .jsonl, and archived .jsonl.gz
                    inbox.put_path(raw)

    return _Handler()


class Watcher:
    """watchdog's observer on the roots (recursive) and the explicit paths; feeds an :class:`Inbox`."""

    def __init__(self, inbox: Inbox, *, roots: Sequence[Path], paths: Sequence[Path] = (), polling: bool = False,
                 poll_interval: float = 0.5) -> None:
        self.inbox = inbox
        self.polling = polling
        self.poll_interval = poll_interval
        files = [Path(p).resolve() for p in paths if Path(p).is_file()]
        self._targets: dict[Path, bool] = {Path(r): True for r in roots}  # folder -> recursive
        self._targets.update({Path(p): True for p in paths if not Path(p).is_file()})
        for f in files:
            self._targets.setdefault(f.parent, False)
        self._handler = _handler(inbox, frozenset(str(f) for f in files))
        self._scheduled: set[Path] = set()
        self.observer = self._make_observer(polling)

    def _make_observer(self, polling: bool):
        if polling:
            from watchdog.observers.polling import PollingObserver

            return PollingObserver(timeout=self.poll_interval)
        from watchdog.observers import Observer

        return Observer()

    def start(self) -> None:
        self.ensure_scheduled()
        try:
            self.observer.start()
        except OSError as exc:  # inotify limits (max_user_watches / instances) on big trees
            if self.polling:
                raise
            log.warning(format_event("inotify_failed", error=exc, note="falling back to the polling observer"))
            self.polling = True
            self.observer = self._make_observer(True)
            self._scheduled.clear()
            self.ensure_scheduled()
            self.observer.start()

    def ensure_scheduled(self) -> None:
        """Watch every target folder that exists now (a root that appears later is picked up here)."""
        for folder, recursive in self._targets.items():
            if folder in self._scheduled or not folder.is_dir():
                continue
            try:
                self.observer.schedule(self._handler, str(folder), recursive=recursive)
            except OSError as exc:
                log.warning(format_event("watch_failed", path=folder, error=exc,
                                         note="relying on the periodic rescan for this folder"))
                continue
            self._scheduled.add(folder)
            log.debug(format_event("watching", path=folder, recursive=recursive))

    def stop(self) -> None:
        try:
            self.observer.stop()
            self.observer.join(timeout=5)
        except RuntimeError:  # never started
            pass


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


HTTP_TIMEOUT_SECONDS = 20  # one MLflow HTTP request; the daemon retries with its own backoff


def _max_backoff() -> float:
    try:
        return float(os.environ.get("FF_WATCH_MAX_BACKOFF", DEFAULT_MAX_BACKOFF))
    except ValueError:
        return DEFAULT_MAX_BACKOFF


def _open_sink(cfg: Config, uri: str, sink: str | None, lock: StoreLock, stop: _StopFlag,
               max_backoff: float) -> Sink | None:
    """The store's lock and sink, retried with backoff while the store is unavailable; None if stopped first."""
    import sqlite3

    delay, down = INITIAL_BACKOFF, False
    while not stop.is_set():
        try:
            lock.acquire_in_store()
            store = open_sink(cfg, tracking_uri=uri, sink=sink)
        except (StoreUnavailableError, sqlite3.OperationalError) as exc:
            if not down:
                log.warning(format_event("store_unavailable", store=redact(uri), error=str(exc)[:300],
                                         note="cannot open the store; retrying with backoff"))
                down = True
            else:
                log.debug(format_event("store_retry_failed", error=str(exc)[:300], retry_in=delay))
            _sleep(delay, stop)
            delay = min(delay * 2, max_backoff)
            continue
        if down:
            log.warning(format_event("store_available", store=redact(uri)))
        return store
    return None


def run_daemon(cfg: Config, *, tracking_uri: str | None = None, sink: str | None = None,
               polling: bool | None = None, skip_corrupt: bool = False,
               extra_paths: Sequence[Path] = ()) -> int:
    """Catch up, then follow the journals until SIGTERM/SIGINT; returns the exit code (0).

    Raises :class:`~formula_foundry.errors.IngesterLockedError` (exit 5) when
    another ingester serves the store.
    """
    uri = tracking_uri or cfg.tracking.backend_store_uri
    settings = cfg.ingest.watch
    use_polling = settings.polling if polling is None else bool(polling)
    paths = [Path(p).resolve() for p in extra_paths]
    roots = () if paths else cfg.journal_roots
    logging.getLogger("watchdog").setLevel(logging.WARNING)  # its debug output is one line per inotify event
    # Interpreter teardown with MLflow loaded spends seconds in the garbage collector (measured 2.5 s
    # of a 2.7 s shutdown); freezing the heap at exit keeps SIGTERM -> exit well under a second.
    atexit.register(gc.freeze)
    if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: stacks to stderr
    lock = store_lock(cfg, uri).acquire_local()
    stop = _StopFlag()
    previous = stop.install()
    try:
        with short_http_requests(HTTP_TIMEOUT_SECONDS):
            if not paths:
                cfg.journal.root.mkdir(parents=True, exist_ok=True)  # watch a fresh project's root from the start
            max_backoff = _max_backoff()
            store = _open_sink(cfg, uri, sink, lock, stop, max_backoff)
            if store is None:
                return 0
            try:
                replayer = Replayer(store, skip_corrupt=skip_corrupt)
                follower = Follower(replayer, roots=roots, paths=paths, settings=settings,
                                    max_backoff=max_backoff, should_stop=stop.is_set)
                inbox = Inbox()
                watcher = Watcher(inbox, roots=roots, paths=paths, polling=use_polling,
                                  poll_interval=settings.poll_interval_seconds)
                watcher.start()
                log.info(format_event("started", pid=os.getpid(), store=store.display_uri, sink=store.kind,
                                      observer="polling" if watcher.polling else "native",
                                      roots=",".join(str(p) for p in (paths or roots))))
                try:
                    _loop(follower, inbox, watcher, stop, settings.debounce_seconds)
                finally:
                    watcher.stop()
            finally:
                store.close()
    finally:
        lock.release()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info(format_event("stopped", signal=signal.Signals(stop.signal).name if stop.signal else None))
    return 0


def _loop(follower: Follower, inbox: Inbox, watcher: Watcher, stop: _StopFlag, debounce: float) -> None:
    """Wait for events or the next timed job; debounce bursts; step. Only the stop flag ends it."""
    ready = False
    while not stop.is_set():
        rescans = follower.rescans
        report = follower.step()
        if follower.interrupted:
            break
        if follower.rescans != rescans:
            watcher.ensure_scheduled()
        if not ready:
            ready = True
            log.info(format_event("ready", journals=len(follower.known), records=report.records,
                                  store="up" if follower.store_ok else "down"))
        timeout = min(max(follower.next_due() - follower.clock(), 0.0), 0.25)
        if inbox.wait(timeout) and debounce > 0 and not stop.is_set():
            time.sleep(debounce)  # let the rest of the burst arrive: one batch instead of many
        changed, dirs = inbox.drain()
        for path in changed:
            follower.mark(path)
        if dirs:
            follower.scan(dirs)
