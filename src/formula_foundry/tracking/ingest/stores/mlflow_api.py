"""MLflow's public client (``MlflowClient``): :class:`MlflowApi`, and the API sink built on it.

:class:`MlflowApi` is the store seen through MLflow's client (experiments,
runs, ``log_batch``, artifacts, end status); :class:`MlflowSink` is the
:class:`~..sink.Sink` that sends every batch through it and keeps its
checkpoints in a file of its own (:func:`~.checkpoints.open_checkpoint_file`).
The bulk sink uses the same :class:`MlflowApi` for runs and artifacts.

Works for every tracking URI MLflow knows: ``sqlite:///``, ``postgresql://``
(direct), ``http(s)://`` (an ``mlflow server``). Idempotency is the contract
of :mod:`.sink`; here is how each part of a commit meets it:

* metrics keep the journal's timestamps, so a repeated ``log_batch`` hits
  MLflow's primary key (key, timestamp, step, value, is_nan) and is absorbed;
* params repeat with the same value (MLflow accepts that); replay filters
  params the run already has before sending (see ``replay.py``);
* tags and the end status overwrite; artifact files are rewritten with the
  same bytes;
* uploads (``artifact`` records, :meth:`MlflowApi.upload_files`) put the same
  verified blob at the same path again: the file is replaced whole (local: a
  new file renamed over it; S3: one object; a server: the same), so a repeat
  is invisible;
* the checkpoint is written after all of the above returned.

Uploads: each blob is found in the content-addressed store its record names
(``store_uri``), else in the configured ``journal.artifact_store``, and its
sha256 and size are checked while it is read in 1 MiB chunks. Into a local
(``file:``) artifact location the same read is the copy: each chunk is hashed
and written (``O_DIRECT`` where the file system takes it) to a file that gets
its name only once the whole blob verified (see "local artifact locations"
below), :data:`LOCAL_UPLOAD_WORKERS` files at a time, and one ``syncfs`` per
batch makes them durable. Elsewhere a symlink
named like the file, in a temporary folder outside every artifact location,
goes to ``MlflowClient.log_artifact``, so nothing is copied on this side and
the repository streams the bytes (HTTP ``PUT`` of the file, S3
``upload_file``), :data:`UPLOAD_WORKERS` files at a time: MLflow's HTTP and S3
repositories keep no per-call state (a cached repository per run, a shared
``requests`` session, a cached thread-safe boto3 client) and use such pools
themselves; the first file of a batch goes alone, so that MLflow resolves and
caches the run's repository once. A missing or corrupt blob raises
:class:`~formula_foundry.errors.BlobError` (the journal's error) before any
byte of it is sent or named.

An ``mlflow-artifacts:`` location (an experiment the server itself created,
with proxied artifacts) is an address on an ``mlflow server``: MLflow resolves
it only against an http(s) tracking URI. Writing the database directly, the
ingester sends those files to the server named by
``tracking.artifacts_server_uri`` (one repository per run, built by MLflow's
``get_artifact_repository``); without one, the run's journal gets a
:class:`~formula_foundry.errors.StoreRejectedError` that says what to set.

Credentials come only from the environment (a password inside the tracking
URI, ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN``, ``AWS_*``). No message
this module raises carries them: :func:`~..uri.scrub` masks the URI's secrets and the
credential variables, and MLflow's "View run at <url>" lines (printed to
stdout by the REST client, URL credentials included) are switched off.

Opening a sink probes the store once with a short timeout
(:func:`probe_store`), so a stopped server or database is a prompt
:class:`StoreUnavailableError` instead of MLflow's minutes of retries.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import functools
import itertools
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import mlflow  # noqa: F401  - the ingest side is where mlflow lives
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from formula_foundry.errors import BlobError, StoreRejectedError, StoreUnavailableError
from formula_foundry.substrate import ArtifactStore
from formula_foundry.substrate._hashcopy import O_DIRECT, copy_hashed, start_writeback
from formula_foundry.tracking.ingest.blobs import store_root
from formula_foundry.substrate.store import validate_digest
from formula_foundry.tracking.config import Config, sqlite_path_of
from formula_foundry.tracking.events import TAG_RUN_ID
from formula_foundry.tracking.ingest.console_text import CONSOLE_ARTIFACT, ConsoleText
from formula_foundry.tracking.ingest.schema import MLFLOW_RESERVED_PREFIX
from formula_foundry.tracking.ingest.sink import Batch, Checkpoint, CheckpointStore, RunInfo, Sink, Upload
from formula_foundry.tracking.ingest.store_errors import store_errors
from formula_foundry.tracking.ingest.stores.engine import make_engine
from formula_foundry.tracking.ingest.stores.http import http_get
from formula_foundry.tracking.ingest.stores.store_init import ensure_sqlite_store
from formula_foundry.tracking.ingest.uri import is_http, redact, scheme

__all__ = ["LOCAL_UPLOAD_WORKERS", "UPLOAD_WORKERS", "MlflowApi", "MlflowSink", "locate_blob",
           "needs_artifacts_server", "probe_store", "quiet_mlflow_logs", "verify_blob"]

log = logging.getLogger("formula_foundry.ingest")

UPLOAD_WORKERS = 8  # concurrent uploads of one batch (many small files: latency-bound on HTTP and S3)
LOCAL_UPLOAD_WORKERS = 4  # ... into a local artifact location: unnamed files let their creation run in parallel
PROXIED_SCHEME = "mlflow-artifacts"  # an artifact location served by an mlflow server (--serve-artifacts)
SERVER_REPOS_CACHED = 1024  # runs whose server repository is kept (as MLflow's _artifact_repos_cache)


def needs_artifacts_server(artifact_uri: str, tracking_uri: str) -> bool:
    """True when ``artifact_uri`` is served by an ``mlflow server`` that ``tracking_uri`` is not (MLflow
    resolves ``mlflow-artifacts:`` only against an http(s) tracking URI): its files go to a server named
    otherwise."""
    return scheme(artifact_uri) == PROXIED_SCHEME and not is_http(tracking_uri)


def artifacts_server_missing(mlflow_run_id: str, artifact_uri: str) -> str:
    """What to say when a run's files need a server and none is configured."""
    return (f"MLflow run {mlflow_run_id}'s artifact location is {artifact_uri}, served by an MLflow server (an "
            "experiment the server created, with proxied artifacts) that an ingester writing the database "
            "directly must be told: set tracking.artifacts_server_uri (FF_ARTIFACTS_SERVER_URI) to that "
            "server's http URL, e.g. http://mlflow:5000")


def probe_store(tracking_uri: str, *, timeout: float = 10.0) -> str:
    """Check once, quickly, that a server or database answers; returns a short description.

    HTTP(S): ``GET /health`` without retries. SQL (not SQLite, a local file): connect and
    ``SELECT 1`` with a connect timeout. Raises :class:`StoreUnavailableError` (credentials
    scrubbed) when it does not answer; other URIs are not probed.
    """
    with store_errors(f"{redact(tracking_uri)} does not answer", tracking_uri):
        try:
            if is_http(tracking_uri):
                response = http_get(tracking_uri, "/health", timeout=timeout)
                if response.status_code >= 500:
                    raise StoreUnavailableError(f"GET /health answered HTTP {response.status_code}")
                return f"HTTP {response.status_code} from /health"
            if scheme(tracking_uri) in ("postgresql", "mysql", "mssql"):
                import sqlalchemy as sa

                engine = make_engine(tracking_uri, connect_timeout=timeout, read_only=True)
                try:
                    with engine.connect() as connection:
                        connection.execute(sa.text("SELECT 1"))
                finally:
                    engine.dispose()
                return "SELECT 1 answered"
            return "not probed"
        except (StoreUnavailableError, StoreRejectedError):
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to answer is "unavailable", said with its cause
            raise StoreUnavailableError(f"{type(exc).__name__}: {exc}"[:500]) from None


def locate_blob(upload: Upload, blob_roots: Sequence[Path] = ()) -> Path:
    """The blob of ``upload``: in the store its record names, else in the first of ``blob_roots`` that has it.

    Raises :class:`BlobError` naming every place looked at when none has it.
    """
    candidates = [store.path_for(upload.digest) for store in _stores(upload.store_uri, tuple(blob_roots))]
    for blob in candidates:
        if blob.is_file():
            return blob
    where = ", ".join(str(c) for c in candidates) or "nowhere: the record names no local store and none is configured"
    raise BlobError(f"blob not found (looked in {where}); restore it, then ingest again", artifact_path=upload.path,
                    digest=upload.digest, line=upload.line)


def verify_blob(upload: Upload, blob: Path | str, *, copy_to: int | None = None) -> None:
    """Check that ``blob`` holds ``upload.size_bytes`` bytes hashing to ``upload.digest``, reading 1 MiB at a time
    (and writing each chunk to the file descriptor ``copy_to``, whose errors propagate as they are).

    Raises :class:`BlobError` (an unreadable blob included) otherwise. What is hashed is what is written.
    """
    try:
        fd = os.open(blob, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _unreadable(upload, blob, exc) from None
    try:
        _verify_open_blob(upload, blob, fd, copy_to)
    finally:
        os.close(fd)


def _open_blob(upload: Upload, blob_roots: tuple[Path, ...]) -> tuple[int, str]:
    """:func:`locate_blob` and open it, in one step per place looked at (no ``stat`` first): (fd, path)."""
    digest = validate_digest(upload.digest)  # (a path is built from it)
    for prefix in _blob_prefixes(upload.store_uri, blob_roots):
        path = f"{prefix}{digest[:2]}/{digest}"
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC), path
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise _unreadable(upload, path, exc) from None
    blob = locate_blob(upload, blob_roots)  # raises BlobError naming every place looked at (or it appeared since)
    try:
        return os.open(blob, os.O_RDONLY | os.O_CLOEXEC), str(blob)
    except OSError as exc:
        raise _unreadable(upload, blob, exc) from None


@functools.lru_cache(maxsize=64)
def _blob_prefixes(store_uri: str | None, blob_roots: tuple[Path, ...]) -> tuple[str, ...]:
    """``<store>/objects/sha256/`` of every store :func:`locate_blob` looks in, in its order."""
    return tuple(f"{store.objects_dir}/" for store in _stores(store_uri, blob_roots))


def _unreadable(upload: Upload, blob: Path | str, exc: OSError) -> BlobError:
    return BlobError(f"cannot read blob {blob}: {exc.strerror or exc}", artifact_path=upload.path,
                     digest=upload.digest, line=upload.line)


def _verify_open_blob(upload: Upload, blob: Path | str, fd: int, copy_to: int | None, *,
                      direct: bool = False) -> None:
    """:func:`verify_blob` of the blob open as ``fd`` (``direct``: ``copy_to`` is ``O_DIRECT``; see
    :func:`~formula_foundry.substrate._hashcopy.copy_hashed`, whose write errors propagate)."""
    hasher, size = copy_hashed(fd, copy_to, direct=direct, on_read_error=lambda exc: _unreadable(upload, blob, exc))
    if size != upload.size_bytes:
        raise BlobError(f"blob {blob} holds {size} bytes, the record says {upload.size_bytes}: it is corrupt; "
                        "restore it, then ingest again", artifact_path=upload.path, digest=upload.digest,
                        line=upload.line)
    actual = hasher.hexdigest()
    if actual != upload.digest:
        raise BlobError(f"blob {blob} is corrupt: its content hashes to sha256 {actual}; restore it, then ingest "
                        "again", artifact_path=upload.path, digest=upload.digest, line=upload.line)


def sync_filesystem(path: Path) -> None:
    """Make everything written to the file system of ``path`` durable: ``syncfs(2)`` where the C library
    has it (Linux), else ``sync()``. One call covers every file and rename of a batch of uploads."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _SYNCFS is None:
            os.sync()
        elif _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def _syncfs():
    """``syncfs`` of the C library, or None where there is none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    return function


_SYNCFS = _syncfs()


@functools.lru_cache(maxsize=64)
def _stores(store_uri: str | None, blob_roots: tuple[Path, ...]) -> tuple[ArtifactStore, ...]:
    """The stores to look in for a blob of a record naming ``store_uri``, in order (cached: one per batch)."""
    roots: list[Path] = []
    named = store_root(store_uri)
    if named is not None:
        roots.append(named)
    roots += [Path(r) for r in blob_roots if Path(r) not in roots]
    return tuple(ArtifactStore(root) for root in roots)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _upload_pool() -> ThreadPoolExecutor:
    """The process's upload threads (:data:`UPLOAD_WORKERS` at most), started on first use and kept: starting
    them for every batch of 100 files cost about 3 ms a batch. Idle threads cost nothing and end with the
    process; a forked child starts its own."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max(UPLOAD_WORKERS, LOCAL_UPLOAD_WORKERS), thread_name_prefix="ff-upload")
        return _pool


def _forget_pool() -> None:
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


_HAS_UNNAMED_FILES = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")  # O_TMPFILE, linked via /proc


class _Folder:
    """A destination folder of local uploads, open (``fd``) while a batch writes into it."""

    __slots__ = ("fd", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def unnamed_file(self, mode: int, *, direct: bool = False) -> int | None:
        """A new file without a name in this folder (``O_TMPFILE``), open for writing (``direct``: with
        ``O_DIRECT``); None where the file system or the kernel has none (or refuses ``O_DIRECT`` on it)."""
        flags = os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC | (O_DIRECT if direct else 0)
        try:
            return os.open(".", flags, mode, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EISDIR, errno.EINVAL):
                return None
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "experiment"


class MlflowApi:
    """One tracking store through ``MlflowClient``: experiments, runs, batches, artifacts, end status.

    Every call goes through :func:`~..store_errors.store_errors`. Opening probes a
    server or database once (:func:`probe_store`) and creates a missing SQLite
    store safely (:func:`~.store_init.ensure_sqlite_store`).
    """

    def __init__(self, tracking_uri: str, *, artifact_root_uri: str | None,
                 sqlite_busy_timeout: float = 30.0, artifacts_server_uri: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.display_uri = redact(tracking_uri)
        self.artifact_root_uri = artifact_root_uri
        self.artifacts_server_uri = artifacts_server_uri or None  # serves mlflow-artifacts: (see the module doc)
        self._is_http = is_http(tracking_uri)
        self._console = ConsoleText()  # the console text of the journal being committed, read on as it grows
        # The REST client prints "View run <name> at: <url>" to stdout on set_terminated: noise in
        # --json output, an extra request per run, and the URL carries any password in the URI.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        uri = tracking_uri
        db = sqlite_path_of(tracking_uri)
        if db is not None:
            ensure_sqlite_store(db, artifact_root_uri)
            if "timeout=" not in uri:
                uri += ("&" if "?" in uri else "?") + f"timeout={sqlite_busy_timeout:g}"
        else:
            probe_store(tracking_uri)  # a stopped server: fail now, not after MLflow's retries
        with store_errors("open the store", tracking_uri):
            self.client = MlflowClient(tracking_uri=uri)
        self._experiments: dict[str, str] = {}
        self._artifact_uris: dict[str, str] = {}  # MLflow run id -> its artifact location (it never changes)
        self._server_repos: collections.OrderedDict = collections.OrderedDict()  # run id -> repository on it
        self._server_repos_lock = threading.Lock()  # (uploads run on threads)
        self._server_probed = False
        self._opened = time.time()  # a file MLflow left in flight before this is a killed ingester's
        self._file_mode = 0o666  # as open() creates files (the umask applies), as MLflow leaves them
        self._temp_names = itertools.count()  # next() is atomic: unique names across upload threads
        self._swept: set[Path] = set()  # local artifact folders already cleared of earlier ingesters' leftovers
        self._unnamed_files = _HAS_UNNAMED_FILES  # False once the artifact location's file system refuses them
        self._direct = bool(O_DIRECT)  # ... and O_DIRECT with them (see "local artifact locations")

    @classmethod
    def for_config(cls, config: Config, uri: str) -> MlflowApi:
        """The store at ``uri`` with ``config``'s artifact root, SQLite busy timeout and artifacts server."""
        return cls(uri, artifact_root_uri=config.tracking.artifact_root_uri,
                   sqlite_busy_timeout=config.ingest.sqlite_busy_timeout_seconds,
                   artifacts_server_uri=config.tracking.artifacts_server_uri)

    def _call(self, what: str, fn, *args, **kwargs):
        with store_errors(what, self.tracking_uri):
            return fn(*args, **kwargs)

    def experiment_id(self, name: str) -> str:
        cached = self._experiments.get(name)
        if cached:
            return cached
        exp = self._call(f"get experiment {name!r}", self.client.get_experiment_by_name, name)
        if exp is None:
            location = None
            if not self._is_http and self.artifact_root_uri:
                location = f"{self.artifact_root_uri.rstrip('/')}/{_slug(name)}"
            with store_errors(f"create experiment {name!r}", self.tracking_uri):
                try:
                    exp_id = self.client.create_experiment(name, artifact_location=location)
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # else: created meanwhile by another
                        raise
                    exp_id = self.client.get_experiment_by_name(name).experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                raise StoreRejectedError(f"experiment {name!r} (id {exp.experiment_id}) is deleted in MLflow; "
                                         "restore it (mlflow experiments restore) or remove it for good")
            exp_id = exp.experiment_id
        self._experiments[name] = exp_id
        return exp_id

    def find_run(self, run_id: str, experiment_id: str | None = None) -> RunInfo | None:
        if experiment_id is not None:
            experiment_ids = [experiment_id]
        else:
            experiments = self._call("list experiments", self.client.search_experiments, view_type=ViewType.ALL)
            experiment_ids = [e.experiment_id for e in experiments]
        if not experiment_ids:
            return None
        runs = self._call("search runs", self.client.search_runs, experiment_ids,
                          filter_string=f"tags.`{TAG_RUN_ID}` = '{run_id}'", run_view_type=ViewType.ALL,
                          max_results=2)
        if not runs:
            return None
        run = runs[0]
        if run.info.lifecycle_stage == "deleted":
            raise StoreRejectedError(f"MLflow run {run.info.run_id} (ff.run_id {run_id}) is deleted; restore it "
                                     "or delete it permanently (mlflow gc) to ingest again")
        self._note_artifact_uri(run.info.run_id, run.info.artifact_uri)
        return RunInfo(run.info.run_id, run.info.experiment_id)

    def create_run(self, *, experiment_id: str, run_id: str, run_name: str | None, start_time: int,
                   tags: dict[str, str]) -> RunInfo:
        run = self._call(f"create run {run_id}", self.client.create_run, experiment_id, start_time=start_time,
                         tags=tags, run_name=run_name)
        self._note_artifact_uri(run.info.run_id, run.info.artifact_uri)
        return RunInfo(run.info.run_id, run.info.experiment_id)

    def existing_params(self, mlflow_run_id: str) -> dict[str, str]:
        return dict(self._call("get run", self.client.get_run, mlflow_run_id).data.params)

    def log_batch(self, mlflow_run_id: str, batch: Batch) -> None:
        """The batch's metrics, params and tags in one ``log_batch`` (repeat-safe: see :mod:`..sink`)."""
        if batch.metrics or batch.params or batch.tags:
            self._call("log_batch", self.client.log_batch, mlflow_run_id,
                       metrics=[Metric(key, value, timestamp, step) for key, value, timestamp, step in batch.metrics],
                       params=[Param(k, v) for k, v in batch.params.items()],
                       tags=[RunTag(k, v) for k, v in batch.tags.items()], synchronous=True)

    def delete_tags(self, mlflow_run_id: str, keys: Sequence[str]) -> None:
        """Remove tags (``tag_delete`` records); a tag the run does not have is already removed (a replay)."""
        present = self._call("get run", self.client.get_run, mlflow_run_id).data.tags
        for key in keys:
            if key in present:
                self._call(f"delete tag {key!r}", self.client.delete_tag, mlflow_run_id, key)

    def log_inputs(self, mlflow_run_id: str, datasets: Sequence[dict]) -> None:
        """The run's dataset inputs (``inputs`` records); MLflow's stores keep a (dataset, run) input once."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = [DatasetInput(Dataset(d["name"], d["digest"], d["source_type"], d["source"], d.get("schema"),
                                       d.get("profile")),
                               tags=[InputTag(k, v) for k, v in (d.get("tags") or {}).items()])
                  for d in datasets]
        self._call("log inputs", self.client.log_inputs, mlflow_run_id, datasets=inputs)

    def write_console(self, mlflow_run_id: str, checkpoint: Checkpoint) -> None:
        """Rewrite ``logs/console.txt`` whole (artifact stores cannot append): the journal's console text
        up to the checkpoint's position, so a repeat writes the same bytes."""
        content = self._console.text(checkpoint.journal_id, checkpoint.path, checkpoint.position.offset)
        self.write_artifacts(mlflow_run_id, {CONSOLE_ARTIFACT: content})

    def write_artifacts(self, mlflow_run_id: str, artifacts: dict[str, bytes]) -> None:
        """Write small files (artifact path -> content) into the run's artifact location."""
        with tempfile.TemporaryDirectory(prefix="ff-ingest-") as tmp:
            for number, (artifact_path, content) in enumerate(artifacts.items()):
                folder, _, name = artifact_path.rpartition("/")
                local = Path(tmp) / str(number) / name  # one folder per file: any depth of path fits
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(content)
                self._log_artifact(mlflow_run_id, str(local), folder or None, f"log artifact {artifact_path}")

    def upload_files(self, mlflow_run_id: str, uploads: Sequence[Upload], *,
                     blob_roots: Sequence[Path] = ()) -> None:
        """Put blobs of the content-addressed store at their paths in the run's artifacts (see the module doc).

        Repeat-safe: the same blob lands at the same path again, whole (never a partial file under its
        name). A path twice in ``uploads`` gets its last blob (journal order). Returns once every file is
        durable: on a local artifact location, after the file system's ``syncfs``; elsewhere when the
        server or S3 acknowledged it. Raises :class:`BlobError` for a missing or corrupt blob (nothing
        of it is published; other files of the batch may be), store errors as every call does.
        """
        todo = list({u.path: u for u in uploads}.values())  # a path logged twice: its last content
        if not todo:
            return
        root = self._local_artifact_dir(mlflow_run_id)
        if root is not None:
            self._sweep_in_flight(root, todo)
            folders = self._local_folders(root, todo)
            try:
                self._each(todo, lambda _i, item: self._write_local(folders[item.path.rpartition("/")[0]], item,
                                                                    blob_roots), workers=LOCAL_UPLOAD_WORKERS)
            finally:
                for folder in folders.values():
                    folder.close()
            with store_errors(f"sync the artifact location {root}", self.tracking_uri):
                sync_filesystem(root)
            return
        with tempfile.TemporaryDirectory(prefix="ff-ingest-upload-") as tmp:

            def upload(i: int, item: Upload) -> None:
                blob = locate_blob(item, blob_roots)
                verify_blob(item, blob)
                folder, _, name = item.path.rpartition("/")
                link = Path(tmp) / str(i) / name
                link.parent.mkdir()
                link.symlink_to(blob)
                self._log_artifact(mlflow_run_id, str(link), folder or None, f"upload artifact {item.path}")

            upload(0, todo[0])  # alone: MLflow resolves and caches the run's artifact repository
            self._each(todo[1:], lambda i, item: upload(i + 1, item), workers=UPLOAD_WORKERS)

    def _log_artifact(self, mlflow_run_id: str, local: str, folder: str | None, what: str) -> None:
        """One file into the run's artifact location, at ``folder`` (every write but the local uploads): through
        :meth:`_server_repository` where the run needs one, else MLflow's client (which caches the run's
        repository)."""
        repo = self._server_repository(mlflow_run_id)
        if repo is None:
            self._call(what, self.client.log_artifact, mlflow_run_id, local, folder)
            return
        with store_errors(f"{what} to {redact(self.artifacts_server_uri)}", self.artifacts_server_uri):
            repo.log_artifact(local, folder)

    def _server_repository(self, mlflow_run_id: str):
        """The run's artifact repository on ``artifacts_server_uri`` when its location is ``mlflow-artifacts:``
        and the tracking URI is no server (:func:`needs_artifacts_server`), else None. One per run, built
        once (MLflow's ``get_artifact_repository``), the server probed before the first. Raises
        :class:`StoreRejectedError` when the run needs a server and none is configured."""
        if self._is_http:
            return None
        artifact_uri = self._artifact_uri(mlflow_run_id)
        if not needs_artifacts_server(artifact_uri, self.tracking_uri):
            return None
        with self._server_repos_lock:
            repo = self._server_repos.get(mlflow_run_id)
            if repo is not None:
                return repo
            server = self.artifacts_server_uri
            if not server:
                raise StoreRejectedError(artifacts_server_missing(mlflow_run_id, artifact_uri))
            if not self._server_probed:
                probe_store(server)  # a stopped server: StoreUnavailableError now, not after MLflow's retries
                self._server_probed = True
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            with store_errors(f"open the artifact location {artifact_uri} on {redact(server)}", server):
                repo = get_artifact_repository(artifact_uri, tracking_uri=server)
            if len(self._server_repos) >= SERVER_REPOS_CACHED:
                self._server_repos.popitem(last=False)
            self._server_repos[mlflow_run_id] = repo
            return repo

    def _artifact_uri(self, mlflow_run_id: str) -> str:
        """The run's artifact location: as :meth:`find_run` or :meth:`create_run` saw it, else one ``get_run``."""
        uri = self._artifact_uris.get(mlflow_run_id)
        if uri is None:
            run = self._call("get run", self.client.get_run, mlflow_run_id)
            uri = self._artifact_uris[mlflow_run_id] = run.info.artifact_uri or ""
        return uri

    @staticmethod
    def _each(items: list[Upload], fn: Callable[[int, Upload], None], *, workers: int) -> None:
        """``fn(i, item)`` for every item, ``workers`` at a time; the first failure in order is raised (the
        threads take no further item after a failure)."""
        if len(items) <= 1 or workers <= 1:
            for i, item in enumerate(items):
                fn(i, item)
            return
        pending = iter(list(enumerate(items)))
        lock = threading.Lock()
        errors: dict[int, BaseException] = {}

        def work() -> None:
            while True:
                with lock:
                    if errors:
                        return
                    nxt = next(pending, None)
                if nxt is None:
                    return
                try:
                    fn(*nxt)
                except BaseException as exc:  # noqa: BLE001 - raised below in the caller's thread, the first in order
                    with lock:
                        errors[nxt[0]] = exc
                    return

        futures = [_upload_pool().submit(work) for _ in range(min(workers, len(items)))]
        try:
            for future in futures:
                future.result()
        except BaseException as exc:  # interrupted here (Ctrl-C): the threads take no further item
            with lock:
                errors.setdefault(-1, exc)
            raise
        if errors:
            raise errors[min(errors)]

    # -- local artifact locations ---------------------------------------------------------
    #
    # A ``file:`` artifact location is written as MLflow's LocalArtifactRepository.log_artifact would write
    # it, with the same guarantee (no partial file ever under the file's name), without its per-call path
    # resolution (about 0.7 ms of CPU per file), with the sha256 checked in the same pass as the copy, on
    # several threads, and with the file system synced before the checkpoint may move:
    #
    # * where the kernel has O_TMPFILE (Linux: ext4, xfs, btrfs, tmpfs), the copy is an unnamed file in
    #   the destination folder, linked under its name once complete and verified: a process killed
    #   before that leaves nothing at all; a name already there (a repeat) is replaced by linking the
    #   file under MLflow's in-flight name (``.artifact.uploading.*``) and renaming that over it;
    # * elsewhere, MLflow's way: the copy is written under the in-flight name, then renamed.
    #
    # The unnamed file is written with O_DIRECT where the file system takes it: each verified 1 MiB chunk
    # goes from the (page-aligned) read buffer straight to the disk, its last block zero-padded and the
    # file cut to size. Buffered, the copy first fills new page cache that the batch's ``syncfs`` must
    # then write back: on this project's VMs that costs more CPU than the copy and the sha256 together
    # (1,000 files of 100 KiB: 0.25-0.35 s of system time buffered, ~0.1 s direct). Durability is
    # unchanged: the file's size, its name and the disk's cache still wait for ``syncfs``. A file system
    # that refuses O_DIRECT (at the open, or EINVAL at a write) gets buffered copies from then on.
    #
    # A file left under the in-flight name by a killed ingester is removed by the next upload into its
    # folder (:meth:`_sweep_in_flight`); MLflow's listing hides such files meanwhile.

    def _local_artifact_dir(self, mlflow_run_id: str) -> Path | None:
        """The run's artifact folder when its artifact location is local (``file:``), else None."""
        parts = urlsplit(self._artifact_uri(mlflow_run_id))
        local = parts.scheme in ("", "file") and parts.netloc in ("", "localhost") and parts.path
        return Path(url2pathname(parts.path)) if local else None

    def _note_artifact_uri(self, mlflow_run_id: str, artifact_uri: str | None) -> None:
        """Remember a run's artifact location (as :meth:`find_run` and :meth:`create_run` saw it): no ``get_run``
        before its first upload."""
        if artifact_uri:
            self._artifact_uris[mlflow_run_id] = artifact_uri

    def _local_folders(self, root: Path, uploads: list[Upload]) -> dict[str, _Folder]:
        """The destination folder of every upload, created, checked to lie inside ``root`` (as MLflow checks
        it: no symlink inside the artifact location may lead a write out of it), and opened; the caller
        closes them."""
        folders: dict[str, _Folder] = {}
        try:
            with store_errors(f"create folders in the artifact location {root}", self.tracking_uri):
                real_root = root.resolve()
                for folder in {u.path.rpartition("/")[0] for u in uploads}:
                    target = root / folder
                    target.mkdir(parents=True, exist_ok=True)
                    real = target.resolve()
                    if not real.is_relative_to(real_root):
                        raise StoreRejectedError(f"artifact folder {folder!r} of {root} leads outside it "
                                                 f"(to {real}); refusing to write there")
                    folders[folder] = _Folder(real)
        except BaseException:
            for opened in folders.values():
                opened.close()
            raise
        return folders

    def _write_local(self, folder: _Folder, upload: Upload, blob_roots: Sequence[Path]) -> None:
        """Copy the blob into ``folder`` while hashing it, and publish it under its name only if its digest and
        size match (else :class:`BlobError`, and nothing of the copy is left)."""
        blob_fd, blob = _open_blob(upload, tuple(blob_roots))
        name = upload.path.rpartition("/")[2]
        mismatch: BlobError | None = None
        try:
            with store_errors(f"write artifact {upload.path}", self.tracking_uri):
                linked = False
                while True:
                    fd, direct = self._unnamed_file(folder)
                    if fd is None:
                        break
                    try:
                        try:
                            _verify_open_blob(upload, blob, blob_fd, fd, direct=direct)
                        except BlobError as exc:  # the blob's fault, not the store's: raised below, untranslated
                            mismatch = exc
                        except OSError as exc:
                            if not direct or exc.errno != errno.EINVAL:
                                raise
                            self._direct = False  # O_DIRECT opened, but its writes refused here: buffered from now
                            os.lseek(blob_fd, 0, os.SEEK_SET)
                            continue  # (the unnamed file is closed, and with it gone)
                        else:
                            if not direct:
                                start_writeback(fd)
                            linked = self._link(folder, fd, name)
                    finally:
                        os.close(fd)
                    break
                if mismatch is None and not linked:  # no unnamed files here, or they cannot be linked
                    self._unnamed_files = False
                    os.lseek(blob_fd, 0, os.SEEK_SET)
                    mismatch = self._write_named(folder, upload, blob, blob_fd, name)
        finally:
            os.close(blob_fd)
        if mismatch is not None:
            raise mismatch

    def _unnamed_file(self, folder: _Folder) -> tuple[int | None, bool]:
        """(an unnamed file in ``folder``, whether it is ``O_DIRECT``); (None, False) where there are none."""
        if not self._unnamed_files:
            return None, False
        if self._direct:
            fd = folder.unnamed_file(self._file_mode, direct=True)
            if fd is not None:
                return fd, True
            self._direct = False  # refused: unnamed files without O_DIRECT (or none, found out next)
        return folder.unnamed_file(self._file_mode), False

    def _link(self, folder: _Folder, fd: int, name: str) -> bool:
        """Give the complete unnamed file ``fd`` its name in ``folder``: a new name directly; a name already
        there through the in-flight name and a rename over it (a file is replaced whole, never emptied).
        False (nothing named) where files cannot be linked through ``/proc/self/fd`` (a restricted /proc)."""
        source = f"/proc/self/fd/{fd}"
        try:
            os.link(source, name, dst_dir_fd=folder.fd, follow_symlinks=True)
            return True
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EPERM, errno.EACCES, errno.EXDEV, errno.EOPNOTSUPP):
                return False  # (a folder that vanished fails again, and for good, the named way)
            raise
        temp = self._in_flight_name()
        os.link(source, temp, dst_dir_fd=folder.fd, follow_symlinks=True)
        try:
            os.replace(temp, name, src_dir_fd=folder.fd, dst_dir_fd=folder.fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=folder.fd)
            raise
        return True

    def _write_named(self, folder: _Folder, upload: Upload, blob: str, blob_fd: int, name: str) -> BlobError | None:
        """MLflow's way: the copy under the in-flight name, renamed over ``name`` once verified. Returns the
        blob's error (the in-flight file removed), if any."""
        temp: str | None = self._in_flight_name()
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self._file_mode,
                         dir_fd=folder.fd)
            try:
                _verify_open_blob(upload, blob, blob_fd, fd)
                start_writeback(fd)
            except BlobError as exc:
                return exc
            finally:
                os.close(fd)
            os.replace(temp, name, src_dir_fd=folder.fd, dst_dir_fd=folder.fd)
            temp = None
            return None
        finally:
            if temp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp, dir_fd=folder.fd)

    def _in_flight_name(self) -> str:
        return f"{MLFLOW_RESERVED_PREFIX}{os.getpid()}.{next(self._temp_names)}"

    def _sweep_in_flight(self, root: Path, uploads: list[Upload]) -> None:
        """Remove files left in flight (``.artifact.uploading.*``) in the folders about to receive ``uploads``.

        An ingester killed between creating such a file and renaming it leaves it behind (hidden by
        MLflow's listing, but a file among the run's artifacts). This pass repeats the killed upload
        into the same folder, so its leftovers are removed there first: files of that name older than
        this process's store connection (one ingester per store: they are no one else's), once per
        folder and process (none can appear later). A server or S3 leaves no partial file behind.
        """
        for folder in {u.path.rpartition("/")[0] for u in uploads}:
            target = root / folder
            if target in self._swept:
                continue
            try:
                entries = list(os.scandir(target))
            except OSError:
                entries = []  # not there yet: nothing was left in it
            for entry in entries:
                try:
                    if entry.name.startswith(MLFLOW_RESERVED_PREFIX) and entry.is_file(follow_symlinks=False) \
                            and entry.stat(follow_symlinks=False).st_mtime < self._opened:
                        os.unlink(entry.path)
                        log.info("removed %s, left in flight by an earlier ingester", entry.path)
                except FileNotFoundError:
                    pass
            self._swept.add(target)

    def set_status(self, mlflow_run_id: str, status: str, end_time: int) -> None:
        self._call("set_terminated", self.client.set_terminated, mlflow_run_id, status, end_time)


class MlflowSink(Sink):
    """The API sink: every batch through :class:`MlflowApi`, then its checkpoint into ``checkpoints``."""

    kind = "api"

    def __init__(self, api: MlflowApi, checkpoints: CheckpointStore, *, blob_roots: Sequence[Path] = ()) -> None:
        self.api = api
        self.display_uri = api.display_uri
        self.checkpoints = checkpoints
        self.blob_roots = tuple(blob_roots)  # where blobs are looked for when the record's store lacks them

    def experiment_id(self, name: str) -> str:
        return self.api.experiment_id(name)

    def find_run(self, run_id: str, experiment_id: str | None = None) -> RunInfo | None:
        return self.api.find_run(run_id, experiment_id)

    def create_run(self, *, experiment_id: str, run_id: str, run_name: str | None, start_time: int,
                   tags: dict[str, str]) -> RunInfo:
        return self.api.create_run(experiment_id=experiment_id, run_id=run_id, run_name=run_name,
                                   start_time=start_time, tags=tags)

    def existing_params(self, mlflow_run_id: str) -> dict[str, str]:
        return self.api.existing_params(mlflow_run_id)

    def commit(self, mlflow_run_id: str, batch: Batch, checkpoint: Checkpoint) -> None:
        if batch.uploads:
            self.api.upload_files(mlflow_run_id, batch.uploads, blob_roots=self.blob_roots)
        if batch.deleted_tags:  # (a key is never both deleted and set in one batch: see plan.py)
            self.api.delete_tags(mlflow_run_id, batch.deleted_tags)
        self.api.log_batch(mlflow_run_id, batch)
        if batch.inputs:
            self.api.log_inputs(mlflow_run_id, batch.inputs)
        if batch.artifacts:
            self.api.write_artifacts(mlflow_run_id, batch.artifacts)
        if batch.console:
            self.api.write_console(mlflow_run_id, checkpoint)
        if batch.end is not None:
            self.api.set_status(mlflow_run_id, *batch.end)
        self.checkpoints.put(checkpoint)

    def set_status(self, mlflow_run_id: str, status: str, end_time: int) -> None:
        self.api.set_status(mlflow_run_id, status, end_time)


def quiet_mlflow_logs() -> None:
    """MLflow and alembic log INFO chatter on every store open; the ingester reports for itself."""
    for name in ("mlflow", "alembic", "alembic.runtime.migration", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The SQL store logs a full traceback at ERROR before raising (e.g. "database is locked");
    # the ingester classifies the exception and reports it in one line, so keep stderr readable.
    logging.getLogger("mlflow.store").setLevel(logging.CRITICAL)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
