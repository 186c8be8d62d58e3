"""Real artifacts on the producer side: MLflow's ``log_artifact`` family, snapshotted at the call.

Each call (1) validates the artifact path as MLflow does, (2) turns the content into the
exact bytes MLflow 3.17 would have written for the same call, (3) streams them into the
content-addressed substrate store (:class:`~formula_foundry.substrate.ArtifactStore`:
temp file in ``tmp/``, fsync, rename; deduplicated) and only then (4) appends one
``artifact`` record per file to the run's journal (format version 1)::

    {"v": 1, "seq": N, "ts": MS, "type": "artifact",
     "path": "plots/s21.png",        # the file's path in the run's artifact root: posix, relative,
                                     #   normalised, no '..', as MLflow would place it
     "digest": "<64 hex>",           # sha256 of the content
     "size_bytes": 12345,
     "store_uri": "file:///abs/project/data/artifacts",   # the store root holding the blob
     "media_type": "image/png"}      # or null

``ff-ingest`` uploads the blob to ``path`` in the run's MLflow artifact location.

Guarantees
    * A record never names a missing or partial blob: the blob is durable (fsynced and
      named) before the record is written. A process killed during the copy leaves no
      record and never a partial blob: where the kernel has ``O_TMPFILE`` the copy is a file
      without a name in ``tmp/`` until it is linked as the blob, so nothing at all; elsewhere
      at most a ``tmp/*.part`` file.
    * A snapshot: the source changed or deleted after the call does not change the run.
      Same file system: a reflink (``FICLONE``) where the file system has them, hashed from
      the clone; else the source is read once into our own buffers, and each buffer is both
      written to the copy and hashed (by a second thread, in parallel, for a file of 4 MiB or
      more; a smaller one is written with ``O_DIRECT`` where the file system takes it, so its
      fsync has no page cache to write back), so the digest is always that of the bytes
      stored. Never a hard link (the source could change under it). Memory stays flat: eight
      1 MiB buffers per copy (one set is kept for the next big copy).
    * ``log_artifacts`` of a folder stores its files on up to 4 threads and makes their names
      durable with one fsync per shard folder at the end instead of one per file (each file's
      content is still fsynced before its rename); its records are appended only once every
      file is stored, so a refused or failed file leaves the journal unchanged.
    * A refused call (bad path, unsupported object) raises before anything is stored or
      written: the journal is unchanged.

The producer never imports MLflow. numpy, PIL, matplotlib and plotly are imported only
when the caller hands over such an object (recognised by its type's module);
``log_table`` imports pandas, which writes MLflow's table format.

Path rules (``ValidationError.rule == "artifact-path"``), the union of what MLflow 3.17
refuses on any artifact repository, so an accepted path uploads anywhere:

* ``artifact_path`` (a folder) must be normalised (``verify_artifact_path``: no ``a//b``,
  ``./a``, ``a/``, ``..``, no leading ``/``); ``artifact_file`` is normalised as MLflow's
  ``_log_artifact_helper`` does (``posixpath.normpath``), but may not name a folder (``x/``).
* The whole path, percent-decoded as the tracking server decodes it
  (``validate_path_is_safe``), has no ``..`` component, is not absolute (posix or
  Windows, no drive letter, no ``file:`` URI), and has no ``#`` and no backslash.
* No control characters (the server would store them escaped, under another name); the
  recorded path is normalised (no empty or ``.`` segment, decoded or not), does not start
  with ``~``, and no segment is longer than 240 bytes (the ingester's record check); a file
  name may not start with ``.artifact.uploading.`` (the local artifact repository's
  staging names).
* ``log_table``: none of ``" ' , : [ ] { }`` and a ``.json`` or ``.parquet`` name, as MLflow.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import posixpath
import stat
import sys
import threading
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from formula_foundry.errors import ArtifactNotFoundError, SubstrateError, ValidationError
from formula_foundry.substrate import ArtifactEntry, ArtifactStore
from formula_foundry.substrate._atomic import fsync_dir
from formula_foundry.substrate._hashcopy import O_DIRECT, copy_hashed, set_direct, start_writeback
from formula_foundry.tracking.validation import artifact_path_problem

__all__ = [
    "ARTIFACT_RECORD",
    "TAG_LOGGED_ARTIFACTS",
    "ArtifactLog",
    "artifact_file_path",
    "artifact_folder",
    "dict_bytes",
    "media_type",
    "snapshot_file",
    "store_written",
    "text_bytes",
]

ARTIFACT_RECORD = "artifact"
TAG_LOGGED_ARTIFACTS = "mlflow.loggedArtifacts"  # MLflow's tag listing the run's tables

_CHUNK = 1 << 20  # read/hash buffer of a small file
_PIPE_CHUNK = 1 << 20  # one buffer of a big file's copy: read once, hashed and written from it (fits in L2)
_PIPE_BUFFERS = 8  # buffers in flight between the reading/writing thread and the hashing thread
_KICK_BYTES = 32 << 20  # start writeback of the stored copy every this many written bytes
_THREADED_MIN = 4 << 20  # below this a file is copied and hashed in one thread
_SNAPSHOT_WORKERS = 4  # files of one log_artifacts copied at a time
_SNAPSHOT_BATCH_MIN = 4  # fewer files than this: one after the other, each as log_artifact stores it
_CAN_FADVISE = hasattr(os, "posix_fadvise")
_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
_TABLE_FORBIDDEN = ('"', "'", ",", ":", "[", "]", "{", "}")  # MlflowClient._check_artifact_file_string
_PLOTLY_IMAGE_EXTENSIONS = (".png", ".jpeg", ".webp", ".svg", ".pdf")
_COMPRESSED_IMAGE_SIZE = 256  # mlflow/tracking/multimedia.py
# Errors after which a reflink is not possible here and a copy is: the file systems or the
# kernel do not support it.
_NOT_SUPPORTED = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP,
                            errno.ENOTTY, errno.EBADF, errno.EPERM, errno.ETXTBSY, errno.EIO})

_MEDIA_TYPES = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
    ".webp": "image/webp", ".svg": "image/svg+xml", ".bmp": "image/bmp", ".tif": "image/tiff",
    ".tiff": "image/tiff", ".pdf": "application/pdf", ".html": "text/html", ".htm": "text/html",
    ".json": "application/json", ".yaml": "application/yaml", ".yml": "application/yaml",
    ".txt": "text/plain", ".log": "text/plain", ".md": "text/markdown", ".csv": "text/csv",
    ".tsv": "text/tab-separated-values", ".xml": "application/xml",
    ".parquet": "application/vnd.apache.parquet", ".ipynb": "application/x-ipynb+json",
    ".zip": "application/zip", ".gz": "application/gzip", ".npy": "application/octet-stream",
}


def media_type(path: str) -> str | None:
    """The media type of an artifact path from its extension (a fixed table: the same on every machine)."""
    return _MEDIA_TYPES.get(posixpath.splitext(path)[1].lower())


# --------------------------------------------------------------------------- path validation

def _refuse(key: str, value: object, why: str) -> ValidationError:
    return ValidationError(f"{key} {value!r}: {why}", key=key, rule="artifact-path")


def _check_safe(path: str, key: str, shown: object, *, final: bool = True) -> None:
    """:func:`~.validation.artifact_path_problem`, the one rule for artifact paths, as a refusal.

    ``final``: ``path`` is what the record will carry, so it must also be normalised.
    """
    problem = artifact_path_problem(path, normalised=final)
    if problem:
        raise _refuse(key, shown, problem)


def artifact_folder(artifact_path: object, *, key: str = "artifact_path") -> str | None:
    """Validate ``artifact_path`` (a folder in the run's artifacts, or None/'' for the root).

    MLflow's ``verify_artifact_path``: the folder must be normalised (not change as a path).
    """
    if artifact_path is None:
        return None
    if isinstance(artifact_path, os.PathLike):
        artifact_path = os.fspath(artifact_path)
    if not isinstance(artifact_path, str):
        raise _refuse(key, artifact_path, f"must be a string, not {type(artifact_path).__name__}")
    if artifact_path == "":
        return None
    _check_safe(artifact_path, key, artifact_path, final=False)
    norm = posixpath.normpath(artifact_path)
    if norm != artifact_path or norm == "." or norm.startswith(("..", "/")):
        raise _refuse(key, artifact_path, f"must not resolve to another name as a path (it resolves to {norm!r})")
    _check_safe(artifact_path, key, artifact_path)
    return artifact_path


def _join(folder: str | None, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def artifact_file_path(artifact_file: object, *, key: str = "artifact_file") -> str:
    """Validate ``artifact_file`` (a file path in the run's artifacts) and return it normalised.

    As MLflow's ``_log_artifact_helper``: ``posixpath.normpath``, then folder + file name.
    """
    if isinstance(artifact_file, os.PathLike):
        artifact_file = os.fspath(artifact_file)
    if not isinstance(artifact_file, str):
        raise _refuse(key, artifact_file, f"must be a string, not {type(artifact_file).__name__}")
    if not artifact_file.strip("/") or artifact_file.endswith("/"):
        raise _refuse(key, artifact_file, "must name a file")
    _check_safe(artifact_file, key, artifact_file, final=False)
    norm = posixpath.normpath(artifact_file)
    name = posixpath.basename(norm)
    if name in ("", ".", ".."):
        raise _refuse(key, artifact_file, "must name a file")
    _check_safe(norm, key, artifact_file)
    return norm


# --------------------------------------------------------------------------- snapshots into the store

def snapshot_file(store: ArtifactStore, source: Path | str, *, logical_path: str) -> ArtifactEntry:
    """Copy a regular file into ``store`` as one durable blob, hashing the copy; never a hard link.

    A reflink where the file system can (hashed from the clone), else one read of the source into
    buffers that are written and hashed (in two threads for a big file; a small one written with
    ``O_DIRECT`` where the file system takes it). The digest is that of the stored bytes.
    """
    return _snapshot(store, source, logical_path=logical_path, sync_name=True)


def snapshot_files(store: ArtifactStore, items: Sequence[tuple[str, str]]) -> list[ArtifactEntry]:
    """:func:`snapshot_file` of each ``(source, logical_path)``, in order, with its guarantees, made cheap
    for many files (``log_artifacts`` of a folder): up to :data:`_SNAPSHOT_WORKERS` files at a time on
    threads (hashing and the system calls release the GIL), and each blob's name made durable by one
    fsync per shard folder at the end instead of one per file. Every blob's content is fsynced before
    its rename and every name before this returns, so before any record names it.

    The first failure in ``items`` order is raised once the threads stopped (they take no further
    file after it); blobs already stored stay (complete, and harmless: content-addressed).
    """
    if len(items) < _SNAPSHOT_BATCH_MIN:
        return [snapshot_file(store, source, logical_path=path) for source, path in items]
    from concurrent.futures import ThreadPoolExecutor  # deferred: keeps `import formula_foundry.tracking` cheap

    failed = threading.Event()

    def one(item: tuple[str, str]) -> ArtifactEntry | None:
        if failed.is_set():
            return None
        try:
            return _snapshot(store, item[0], logical_path=item[1], sync_name=False)
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(min(_SNAPSHOT_WORKERS, len(items)), thread_name_prefix="ff-snapshot") as pool:
        futures = [pool.submit(one, item) for item in items]
        entries = [future.result() for future in futures]  # the first failure in order (the rest wait)
    for folder in sorted({entry.store_path.parent for entry in entries} | {store.objects_dir}):
        fsync_dir(folder)  # the renames (and any new shard folder) durable
    return entries


def _snapshot(store: ArtifactStore, source: Path | str, *, logical_path: str, sync_name: bool) -> ArtifactEntry:
    """:func:`snapshot_file`; ``sync_name=False``: the blob's folder is not fsynced after the rename (the
    caller does it, :func:`snapshot_files`)."""
    src = Path(source)
    try:
        info = os.stat(src)
    except FileNotFoundError as exc:
        raise ArtifactNotFoundError(f"{src}: artifact source file not found") from exc
    except OSError as exc:
        raise SubstrateError(f"{src}: cannot read artifact source: {exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ValidationError(f"local_path {str(src)!r}: not a regular file (a FIFO, device or socket "
                              "cannot be snapshotted)", key="local_path", rule="artifact-source")
    try:
        src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise ArtifactNotFoundError(f"{src}: artifact source file not found") from exc
    except OSError as exc:
        raise SubstrateError(f"{src}: cannot read artifact source: {exc}") from exc
    try:
        unnamed = store.unnamed_temp()
        if unnamed is not None:  # a file without a name until it is the blob: a kill leaves nothing
            try:
                digest, size = _fill(src_fd, unnamed, info.st_size)
                os.fsync(unnamed)
                entry = store.publish_unnamed(unnamed, digest=digest, size_bytes=size, logical_path=logical_path,
                                              sync=sync_name)
            finally:
                os.close(unnamed)
            if entry is not None:
                return entry
            os.lseek(src_fd, 0, os.SEEK_SET)  # it could not be named here: the named way
        tmp_fd, tmp = _new_temp(store)
        try:
            digest, size = _fill(src_fd, tmp_fd, info.st_size)
            os.fsync(tmp_fd)
        except BaseException:
            os.close(tmp_fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        os.close(tmp_fd)
    finally:
        os.close(src_fd)
    return store.publish(tmp, digest=digest, size_bytes=size, logical_path=logical_path, sync=sync_name)


def store_written(store: ArtifactStore, filename: str, write: Callable[[str], None], *,
                  logical_path: str) -> ArtifactEntry:
    """Let ``write(path)`` create ``filename`` in a private folder of the store's ``tmp/``, then
    publish that file as a blob (no second copy). How MLflow's ``_log_artifact_helper`` writes a
    figure, image or table: through the library's own ``save`` to a file of that name.
    """
    import shutil  # deferred: keeps `import formula_foundry.tracking` cheap
    import tempfile

    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix="stage-", suffix=".part"))
    try:
        target = stage / filename
        write(str(target))
        if not target.is_file():
            made = sorted(p.name for p in stage.iterdir())
            raise ValidationError(f"artifact_file {logical_path!r}: saving wrote no file named {filename!r} "
                                  f"(it wrote {made}); give the file an extension its writer knows, or name "
                                  "the format in save_kwargs", key="artifact_file", rule="artifact-path")
        fd = os.open(target, os.O_RDWR | os.O_CLOEXEC)
        try:
            digest, size = _hash_fd(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        return store.publish(target, digest=digest, size_bytes=size, logical_path=logical_path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _new_temp(store: ArtifactStore) -> tuple[int, Path]:
    """A new, exclusive temp file in the store's ``tmp/`` (same naming as the store's own writes)."""
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    path = store.tmp_dir / f"blob-{uuid.uuid4().hex}.part"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    return fd, path


def _fill(src_fd: int, dst_fd: int, expected: int) -> tuple[str, int]:
    """Copy ``src_fd`` into the empty ``dst_fd``; returns (sha256 hex, size) of what ``dst_fd`` holds."""
    try:
        fcntl.ioctl(dst_fd, _FICLONE, src_fd)
    except OSError as exc:
        if exc.errno not in _NOT_SUPPORTED:
            raise
    else:
        return _hash_fd(dst_fd)  # the clone is ours alone: hash it, not the source
    if expected >= _THREADED_MIN:
        return _copy_pipelined(src_fd, dst_fd)
    if set_direct(dst_fd):
        try:
            hasher, size = copy_hashed(src_fd, dst_fd, direct=True)
            return hasher.hexdigest(), size
        except OSError as exc:  # direct writes refused after all (EINVAL): the same copy through the page cache
            if exc.errno != errno.EINVAL:
                raise
            fcntl.fcntl(dst_fd, fcntl.F_SETFL, fcntl.fcntl(dst_fd, fcntl.F_GETFL) & ~O_DIRECT)
            os.ftruncate(dst_fd, 0)
            os.lseek(src_fd, 0, os.SEEK_SET)
    hasher, size = copy_hashed(src_fd, dst_fd)
    return hasher.hexdigest(), size


def _hash_fd(fd: int) -> tuple[str, int]:
    """(sha256 hex, size) of what ``fd`` holds; a big file is read in one thread and hashed in another."""
    if os.fstat(fd).st_size >= _THREADED_MIN:
        return _pipeline(fd, None)
    hasher = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    offset = 0
    while n := os.preadv(fd, [view], offset):
        hasher.update(view[:n])
        offset += n
    return hasher.hexdigest(), offset


def _copy_pipelined(src_fd: int, dst_fd: int) -> tuple[str, int]:
    """The source read once, in :data:`_PIPE_CHUNK` buffers, each hashed by a second thread while this one
    writes it (what is hashed is exactly what is written); writeback of the copy starts as it grows."""
    return _pipeline(src_fd, dst_fd)


def _pipeline(src_fd: int, dst_fd: int | None) -> tuple[str, int]:
    """Read ``src_fd`` from its start in big buffers; a second thread hashes each buffer while this thread
    writes the same buffer to ``dst_fd`` (if any) and reads the next. Returns (sha256 hex, bytes read).

    sha256 is the critical path (about 1.6 GB/s with SHA-NI); reading, writing and starting writeback
    run beside it. A buffer is refilled only once it is both hashed and written. ``hashlib`` and the
    system calls release the GIL for buffers this size, so the two threads run in parallel.

    Every :data:`_KICK_BYTES` written, writeback of that window starts (the final fsync then has
    little left to do) and the window before it, written back meanwhile, leaves the page cache
    (``POSIX_FADV_DONTNEED``): a copy of any size holds a few windows of cache, not the whole file,
    so the next window's pages are ones just freed rather than fresh memory.
    """
    hashing = _HashThread()
    offset = kicked = dropped = 0
    try:
        while True:
            index = hashing.take()
            view = memoryview(hashing.buffers[index])
            n = os.preadv(src_fd, [view], offset)
            if n == 0:
                hashing.put_back(index)
                break
            hashing.give(index, n)
            if dst_fd is not None:
                chunk = view[:n]
                while chunk:
                    chunk = chunk[os.write(dst_fd, chunk):]
            offset += n
            if dst_fd is not None and offset - kicked >= _KICK_BYTES:
                start_writeback(dst_fd, kicked, offset - kicked)
                if kicked and _CAN_FADVISE:  # the window before is written back by now: its pages can go
                    os.posix_fadvise(dst_fd, dropped, kicked - dropped, os.POSIX_FADV_DONTNEED)
                dropped, kicked = kicked, offset
    except BaseException:
        hashing.abort()
        raise
    return hashing.finish(), offset


class _HashThread:
    """sha256 of buffers handed over in order, computed by a thread of its own.

    :attr:`buffers` is the pool the caller fills: :meth:`take` a free buffer, fill it, :meth:`give`
    it (index and byte count) to be hashed; it comes back free once hashed. :meth:`finish` or
    :meth:`abort` always joins the thread. An error in the thread is raised by the next
    :meth:`take` or by :meth:`finish`.
    """

    def __init__(self) -> None:
        import queue  # deferred: keeps `import formula_foundry.tracking` cheap

        self.buffers = _take_buffers()
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._todo: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        for index in range(_PIPE_BUFFERS):
            self._free.put(index)
        self._hasher = hashlib.sha256()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ff-artifact-hash", daemon=True)
        self._thread.start()

    def take(self) -> int:
        index = self._free.get()
        if self._error is not None:
            raise self._error
        return index

    def put_back(self, index: int) -> None:
        self._free.put(index)

    def give(self, index: int, size: int) -> None:
        self._todo.put((index, size))

    def finish(self) -> str:
        self._todo.put(None)
        self._thread.join()
        _keep_buffers(self.buffers)
        if self._error is not None:
            raise self._error
        return self._hasher.hexdigest()

    def abort(self) -> None:
        self._error = self._error or _Aborted()  # the thread drops what is still queued
        self._todo.put(None)
        self._thread.join()
        _keep_buffers(self.buffers)

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            index, size = item
            if self._error is None:
                try:
                    self._hasher.update(memoryview(self.buffers[index])[:size])
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread by take()/finish()
                    self._error = exc
            self._free.put(index)


_spare_lock = threading.Lock()
_spare: list[list[bytearray]] = []  # one set of pipeline buffers kept for the next big copy (8 MiB)


def _take_buffers() -> list[bytearray]:
    """The kept set of buffers, else a new one (a copy running meanwhile in another thread has the kept set):
    touching 8 MiB of fresh memory costs about 5 ms here, a twentieth of a 100 MiB copy."""
    with _spare_lock:
        if _spare:
            return _spare.pop()
    return [bytearray(_PIPE_CHUNK) for _ in range(_PIPE_BUFFERS)]


def _keep_buffers(buffers: list[bytearray]) -> None:
    with _spare_lock:
        if not _spare:
            _spare.append(buffers)


class _Aborted(Exception):
    """The copy stopped on the caller's side; the hash thread drops what is left."""


# --------------------------------------------------------------------------- MLflow's serialisations

def dict_bytes(dictionary: Any, artifact_file: str) -> bytes:
    """``MlflowClient.log_dict``: YAML for a ``.yml``/``.yaml`` name, else JSON (``indent=2``,
    ``default=str``); both are ASCII (escaped), so the bytes are the same in any locale."""
    extension = os.path.splitext(artifact_file)[1]
    if extension in (".yml", ".yaml"):
        import yaml  # deferred: only log_dict to YAML needs it

        refused: tuple[type[BaseException], ...] = (yaml.YAMLError, TypeError, ValueError, RecursionError)
        try:
            text = yaml.dump(dictionary, indent=2, default_flow_style=False)
        except refused as exc:
            raise ValidationError(f"log_dict {artifact_file!r}: cannot serialise the dictionary as YAML: {exc}",
                                  key="dictionary", rule="value-type") from None
    else:
        try:
            text = json.dumps(dictionary, indent=2, default=str)
        except (TypeError, ValueError, RecursionError) as exc:  # non-string keys, a circular reference
            raise ValidationError(f"log_dict {artifact_file!r}: cannot serialise the dictionary as JSON: {exc}",
                                  key="dictionary", rule="value-type") from None
    return text.encode("utf-8")


def text_bytes(text: object, artifact_file: str) -> bytes:
    """``MlflowClient.log_text``: the text, UTF-8."""
    if not isinstance(text, str):
        raise ValidationError(f"log_text {artifact_file!r}: text must be a str, not {type(text).__name__}",
                              key="text", rule="value-type")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"log_text {artifact_file!r}: text is not valid Unicode (lone surrogate)",
                              key="text", rule="value-type") from None


def _top_module(obj: object) -> str:
    return type(obj).__module__.split(".")[0]


def _figure_writer(figure: Any, artifact_file: str, save_kwargs: Mapping[str, Any] | None) -> Callable[[str], None]:
    """``MlflowClient.log_figure``: matplotlib ``savefig(path, **save_kwargs)``; plotly ``write_html``
    (``include_plotlyjs="cdn"``, ``auto_open=False`` unless given) or ``write_image``."""
    kwargs = dict(save_kwargs or {})
    top = _top_module(figure)
    if top == "matplotlib" and "matplotlib" in sys.modules:
        import matplotlib.figure  # already imported by whoever made the figure

        if isinstance(figure, matplotlib.figure.Figure):
            return lambda path: figure.savefig(path, **kwargs)
    if top == "plotly" and "plotly" in sys.modules:
        import plotly.graph_objects  # already imported by whoever made the figure

        if isinstance(figure, plotly.graph_objects.Figure):
            extension = os.path.splitext(artifact_file)[1]
            if extension == ".html":
                kwargs.setdefault("include_plotlyjs", "cdn")
                kwargs.setdefault("auto_open", False)
                return lambda path: figure.write_html(path, **kwargs)
            if extension in _PLOTLY_IMAGE_EXTENSIONS:
                return lambda path: figure.write_image(path, **kwargs)
            raise ValidationError(f"log_figure {artifact_file!r}: unsupported file extension for a plotly "
                                  f"figure: {extension!r} (use .html or one of {', '.join(_PLOTLY_IMAGE_EXTENSIONS)})",
                                  key="artifact_file", rule="artifact-type")
    raise ValidationError(f"log_figure {artifact_file!r}: unsupported figure object type {type(figure)!r} "
                          "(a matplotlib.figure.Figure or plotly.graph_objects.Figure)",
                          key="figure", rule="artifact-type")


def _to_pil(image: Any, artifact_file: str) -> Any:
    """``MlflowClient.log_image``'s conversion: numpy array -> PIL image (``convert_to_pil_image``),
    ``mlflow.Image`` -> ``to_pil()``, PIL image as is."""
    top = _top_module(image)
    if top == "numpy":
        import numpy as np  # already imported by whoever made the array

        if isinstance(image, np.ndarray):
            return _numpy_to_pil(image, artifact_file)
    elif top == "PIL":
        import PIL.Image  # already imported by whoever made the image

        if isinstance(image, PIL.Image.Image):
            return image
    elif top == "mlflow" and type(image).__name__ == "Image" and callable(getattr(image, "to_pil", None)):
        return image.to_pil()  # mlflow.Image: the caller imported mlflow; we never do
    raise ValidationError(f"log_image {artifact_file!r}: unsupported image object type {type(image)!r}; "
                          "image must be one of numpy.ndarray, PIL.Image.Image and mlflow.Image",
                          key="image", rule="artifact-type")


def _numpy_to_pil(image: Any, artifact_file: str) -> Any:
    """``mlflow.tracking.multimedia.convert_to_pil_image``, rule for rule."""
    import numpy as np

    from PIL import Image

    def refuse(why: str) -> ValidationError:
        return ValidationError(f"log_image {artifact_file!r}: {why}", key="image", rule="image-array")

    kinds = {"b": "bool", "i": "signed integer", "u": "unsigned integer", "f": "floating"}
    if image.dtype.kind not in kinds:
        raise refuse(f"invalid array data type: '{image.dtype}'. Must be one of {list(kinds.values())}")
    if image.ndim not in (2, 3):
        raise refuse(f"`image` must be a 2D or 3D array but got image shape: {image.shape}")
    if image.ndim == 3 and image.shape[2] not in (1, 3, 4):
        raise refuse(f"invalid channel length: {image.shape[2]}. Must be one of [1, 3, 4]")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]  # Image.fromarray refuses a 3D grayscale image
    is_int = np.issubdtype(image.dtype, np.integer)
    high = 255 if is_int else 1
    if image.min() < 0 or image.max() > high:
        if is_int:
            raise refuse("Integer pixel values out of acceptable range [0, 255]. "
                         f"Found minimum value {image.min()} and maximum value {image.max()}. "
                         "Ensure all pixel values are within the specified range.")
        warnings.warn("Float pixel values out of acceptable range [0.0, 1.0]. "
                      f"Found minimum value {image.min()} and maximum value {image.max()}. "
                      "Rescaling values to [0.0, 1.0] with min/max scaler.", stacklevel=5)
        image = (image - image.min()) / (image.max() - image.min())
    if not is_int:  # float or bool
        image = image * 255
    return Image.fromarray(image.astype(np.uint8))


def _compressed(image: Any) -> Any:
    """``mlflow.tracking.multimedia.compress_image_size``: fit in 256 x 256, aspect kept."""
    width, height = image.size
    if width > height:
        new_width = _COMPRESSED_IMAGE_SIZE
        new_height = int(height * (new_width / width))
    else:
        new_height = _COMPRESSED_IMAGE_SIZE
        new_width = int(width * (new_height / height))
    return image.resize((new_width, new_height))


def _is_image_object(obj: object) -> bool:
    """MLflow's ``check_is_image_object`` for table cells."""
    return (hasattr(obj, "save") and callable(obj.save) and hasattr(obj, "resize")
            and callable(obj.resize) and hasattr(obj, "size"))


# --------------------------------------------------------------------------- one run's artifact calls

@dataclass(frozen=True)
class _Stored:
    path: str
    entry: ArtifactEntry


class ArtifactLog:
    """The artifact calls of one run segment (MLflow 3.17's names, arguments and bytes).

    ``append(type, fields)`` writes one journal record; ``set_tag(key, value)`` sets a
    run tag (``log_table`` maintains ``mlflow.loggedArtifacts`` as MLflow does). Every
    call validates first, stores every blob next, and appends its records last.
    """

    def __init__(self, store: ArtifactStore, append: Callable[[str, dict], object],
                 set_tag: Callable[[str, str], None]) -> None:
        self.store = store
        self.store_uri = store.root.as_uri()
        self._append = append
        self._set_tag = set_tag
        self._lock = threading.Lock()
        self._tables: dict[str, ArtifactEntry] = {}  # tables this segment logged, for appending rows
        self._logged_tables: list[dict[str, str]] = []  # the mlflow.loggedArtifacts value

    # -- files ----------------------------------------------------------------------

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """``mlflow.log_artifact``: a file to ``artifact_path/<name>``; a folder to
        ``artifact_path/<folder name>/...`` (as ``log_artifacts``)."""
        folder = artifact_folder(artifact_path)
        source = os.fspath(local_path)
        if os.path.isdir(source):
            dir_name = os.path.basename(os.path.normpath(source))
            self.log_artifacts(source, _join(folder, dir_name))
            return
        name = os.path.basename(source)
        path = _join(folder, name)
        _check_safe(path, "local_path", source)
        self._record([_Stored(path, snapshot_file(self.store, source, logical_path=path))])

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        """``mlflow.log_artifacts``: every file under ``local_dir``, its relative path kept under
        ``artifact_path`` (symlinked files followed, symlinked folders not, as ``os.walk``)."""
        folder = artifact_folder(artifact_path)
        root = os.fspath(local_dir)
        if not os.path.isdir(root):
            if os.path.exists(root):
                raise ValidationError(f"local_dir {root!r}: not a directory (log_artifact takes a file)",
                                      key="local_dir", rule="artifact-source")
            raise ArtifactNotFoundError(f"{root}: artifact source directory not found")
        files: list[tuple[str, str]] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for filename in sorted(filenames):
                source = os.path.join(dirpath, filename)
                rel = os.path.relpath(source, root).replace(os.sep, "/")
                path = _join(folder, rel)
                _check_safe(path, "local_dir", source)
                files.append((source, path))
        self._record([_Stored(path, entry) for (_source, path), entry in zip(files, snapshot_files(self.store, files),
                                                                           strict=True)])

    # -- in-memory content ----------------------------------------------------------

    def log_dict(self, dictionary: Any, artifact_file: str) -> None:
        """``mlflow.log_dict``: JSON, or YAML for ``.yml``/``.yaml``."""
        path = artifact_file_path(artifact_file)
        self._record([_Stored(path, self.store.add_bytes(dict_bytes(dictionary, artifact_file), logical_path=path))])

    def log_text(self, text: str, artifact_file: str) -> None:
        """``mlflow.log_text``: the text as UTF-8."""
        path = artifact_file_path(artifact_file)
        self._record([_Stored(path, self.store.add_bytes(text_bytes(text, artifact_file), logical_path=path))])

    def log_figure(self, figure: Any, artifact_file: str, *, save_kwargs: Mapping[str, Any] | None = None) -> None:
        """``mlflow.log_figure``: matplotlib or plotly, saved as MLflow saves it."""
        path = artifact_file_path(artifact_file)
        write = _figure_writer(figure, artifact_file, save_kwargs)
        self._record([self._written(path, write)])

    def log_image(self, image: Any, artifact_file: str) -> None:
        """``mlflow.log_image(image, artifact_file)``: numpy array, PIL image or ``mlflow.Image``,
        converted as MLflow converts it, saved by PIL in the format the extension names."""
        path = artifact_file_path(artifact_file)
        pil = _to_pil(image, artifact_file)
        self._record([self._written(path, pil.save)])

    def log_table(self, data: Any, artifact_file: str) -> None:
        """``mlflow.log_table``: a dict of columns or a pandas DataFrame, as MLflow's table JSON
        (``orient="split"``) or parquet; image cells saved under ``table_images/``. Logging the
        same file again in this run segment appends the rows, as MLflow does."""
        if isinstance(artifact_file, str):
            for char in _TABLE_FORBIDDEN:
                if char in artifact_file:
                    raise _refuse("artifact_file", artifact_file, f"contains the character {char!r}, which "
                                  "MLflow forbids in table names")
            if not artifact_file.endswith((".json", ".parquet")):
                raise _refuse("artifact_file", artifact_file, "a table's file name must end with '.json' or "
                              "'.parquet'")
        path = artifact_file_path(artifact_file)
        import pandas as pd  # deferred: MLflow's table format is pandas' own output

        if not isinstance(data, (pd.DataFrame, dict)):
            raise ValidationError(f"log_table {artifact_file!r}: data must be a pandas.DataFrame or a dictionary, "
                                  f"not {type(data).__name__}", key="data", rule="artifact-type")
        if isinstance(data, dict):
            try:
                data = pd.DataFrame(data)
            except ValueError:  # all scalars: one row, as MLflow does
                data = pd.DataFrame([data])
        else:
            data = data.copy(deep=False)  # MLflow rewrites image columns in place; we leave the caller's frame
        stored: list[_Stored] = []
        table_name = os.path.splitext(artifact_file)[0]
        for column in data.columns:
            if data[column].dtype == object:  # MLflow: the object columns (images are objects)
                is_image = data[column].map(_is_image_object)
                if any(is_image) and not all(is_image):
                    raise ValidationError(f"log_table {artifact_file!r}: column `{column}` contains a mix of "
                                          "images and non-images", key="data", rule="value-type")
                if len(is_image) and all(is_image):
                    data[column] = data[column].map(lambda img: self._table_image(img, table_name, stored))
        with self._lock:
            previous = self._tables.get(path)
            if previous is not None:
                data = pd.concat([self._read_table(previous, path), data], ignore_index=True)

            def write(target: str) -> None:
                try:
                    if path.endswith(".json"):
                        data.to_json(target, orient="split", index=False, date_format="iso")
                    else:
                        data.to_parquet(target, index=False)
                except (TypeError, ValueError, OverflowError) as exc:
                    raise ValidationError(f"log_table {artifact_file!r}: the data cannot be saved as a table "
                                          f"(not JSON serialisable?): {exc}", key="data", rule="value-type") from None

            table = self._written(path, write)
            self._record([*stored, table])
            self._tables[path] = table.entry
            entry = {"path": artifact_file, "type": "table"}
            if entry not in self._logged_tables:
                self._logged_tables.append(entry)
                self._set_tag(TAG_LOGGED_ARTIFACTS, json.dumps(self._logged_tables))

    # -- internals ------------------------------------------------------------------

    def _written(self, path: str, write: Callable[[str], None]) -> _Stored:
        return _Stored(path, store_written(self.store, posixpath.basename(path), write, logical_path=path))

    def _table_image(self, image: Any, table_name: str, stored: list[_Stored]) -> dict[str, str]:
        """MLflow's ``process_image``: a PNG and a 256-pixel WebP under ``table_images/<table>/<uuid>``."""
        base = posixpath.join("table_images", table_name, str(uuid.uuid4()))
        png, webp = base + ".png", base + ".webp"
        stored.append(self._written(png, image.save))
        stored.append(self._written(webp, _compressed(image).save))
        return {"type": "image", "filepath": png, "compressed_filepath": webp}

    def _read_table(self, entry: ArtifactEntry, path: str) -> Any:
        import pandas as pd

        blob = str(self.store.path_for(entry.digest))
        return pd.read_json(blob, orient="split") if path.endswith(".json") else pd.read_parquet(blob)

    def _record(self, stored: list[_Stored]) -> None:
        """One ``artifact`` record per stored file; every blob is already durable."""
        for item in stored:
            self._append(ARTIFACT_RECORD, {
                "path": item.path, "digest": item.entry.digest, "size_bytes": item.entry.size_bytes,
                "store_uri": self.store_uri, "media_type": media_type(item.path),
            })
