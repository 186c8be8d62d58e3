"""Object stores: a key/value view of ``s3://bucket/prefix`` or of a folder (a mounted share).

The narrow interface the shipper (``ff-ingest ship``) and the central ingester
(``ff-ingest --root s3://...``) share. Keys are ``/``-separated, relative to the
store's prefix, without ``..`` or empty segments. Two kinds of writes:

* **Create if absent** (:meth:`ObjectStore.put_new`, :meth:`~ObjectStore.put_new_file`):
  immutable objects (journal segments, blobs). Atomic: a reader sees nothing or the
  whole object; a second writer of the same key writes nothing and learns so
  (``False``). S3: ``PutObject`` with ``IfNoneMatch="*"``; a large file goes up as a
  multipart upload completed with ``IfNoneMatch="*"`` (after a HEAD: it saves sending
  a large file that is there). Folder: temp
  file + fsync, then ``os.link`` to the final name, which fails if it exists.
* **Compare and swap** (:meth:`~ObjectStore.read_versioned`,
  :meth:`~ObjectStore.write_versioned`): small mutable objects (leases,
  checkpoints). S3: ``IfNoneMatch="*"`` / ``IfMatch=etag``; folder: an ``flock`` on a
  sidecar lock file around compare, temp file, rename.

Idempotency of each method (a caller retries after a crash or an outage):
``put_new*`` idempotent (a repeat returns False); ``get*``/``head``/``list``/
``read_versioned`` read only; ``write_versioned`` not (a repeat with a spent etag
raises :class:`PreconditionFailed`: read again); ``delete`` idempotent.

Errors::

    StoreUnavailableError
    └── ObjectStoreError     unreachable, denied, no such bucket/folder, out of space (exit 3);
                             its message names the redacted URI, never a credential
    PreconditionFailed       a conditional write lost: someone else wrote the key
    ContentMismatch          put_new_file(sha256=...): the file does not hash to it (nothing written)

S3 needs boto3 (``pip install 'formula-foundry[s3]'``), imported when an S3 store
is opened. Endpoint: ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, else MLflow's
``MLFLOW_S3_ENDPOINT_URL`` (path-style addressing with a custom endpoint, as MinIO
wants); credentials from boto3's standard chain (environment, files, roles).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from formula_foundry.errors import IngestError, StoreUnavailableError
from formula_foundry.substrate._atomic import fsync_dir
from formula_foundry.tracking.ingest.uri import redact, scrub

__all__ = ["ContentMismatch", "FolderObjects", "ObjectInfo", "ObjectStore", "ObjectStoreError",
           "PreconditionFailed", "S3Objects", "S3_INSTALL_HINT", "is_object_uri", "open_objects"]

S3_INSTALL_HINT = "S3 needs boto3: pip install 'formula-foundry[s3]'"
READ_CHUNK = 1 << 20
PART_SIZE = 16 << 20  # multipart part size of put_new_file; a file up to this size goes in one PUT
PARTS_IN_FLIGHT = 4  # memory bound of a multipart upload: this many parts (64 MiB)
_BAD_KEY = re.compile(r"(^|/)\.{0,2}(/|$)|^/|\\|[\x00-\x1f]")


class ObjectStoreError(StoreUnavailableError):
    """The object store cannot be reached or refuses us (denied, no bucket, out of space): exit 3."""


class PreconditionFailed(Exception):
    """A conditional write lost: the key exists (create) or holds another version (replace)."""


class ContentMismatch(Exception):
    """A file to store does not hold the bytes its digest says; nothing was written."""

    def __init__(self, key: str, *, expected: str, actual: str, size: int) -> None:
        super().__init__(f"{key}: content hashes to sha256 {actual} ({size} bytes), expected {expected}")
        self.key = key
        self.expected = expected
        self.actual = actual
        self.size = size


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store's prefix
    size: int
    etag: str  # an opaque version tag (S3: the ETag without quotes; folder: inode-mtime-size)


def check_key(key: str) -> str:
    """``key`` if it is a clean relative key (no ``..``, ``.``, empty segment, backslash or control character)."""
    if not isinstance(key, str) or not key or _BAD_KEY.search(key):
        raise ValueError(f"invalid object key {key!r}")
    return key


class ObjectStore(ABC):
    """A flat key space under one prefix; see the module docstring for each method's guarantees."""

    display_uri: str  # redacted, safe to print

    @abstractmethod
    def put_new(self, key: str, data: bytes) -> bool:
        """Create ``key`` holding ``data`` unless it exists; False (nothing written) if it does."""

    @abstractmethod
    def put_new_file(self, key: str, path: Path, *, sha256: str | None = None) -> bool:
        """:meth:`put_new` of a file's content, streamed. With ``sha256``, the bytes read are hashed on
        the way and the object appears only if they match (else :class:`ContentMismatch`)."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError if absent."""

    @abstractmethod
    def get_to_file(self, key: str, path: Path) -> None:
        """Download ``key`` to ``path`` (replaced atomically); FileNotFoundError if absent."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Size and etag of ``key``, or None if absent."""

    @abstractmethod
    def list(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix`` and sorts after ``start_after``, in key order."""

    @abstractmethod
    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """(content, etag) of ``key``, or None if absent."""

    @abstractmethod
    def write_versioned(self, key: str, data: bytes, *, etag: str | None) -> str:
        """Create ``key`` (``etag=None``: only if absent) or replace it (only if its etag is still ``etag``).

        Returns the new etag; raises :class:`PreconditionFailed` when the condition does not hold."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; no error if it is absent."""

    def close(self) -> None:  # noqa: B027 - optional: nothing to release by default
        """Release connections."""

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_object_uri(text: str) -> bool:
    """Whether ``text`` names an object store by URI (``s3://...``, ``file://...``), not a plain path."""
    return isinstance(text, str) and text.lower().startswith(("s3://", "file://"))


def open_objects(uri: str) -> ObjectStore:
    """The object store named by ``uri``: ``s3://bucket/prefix``, ``file:///abs/folder`` or a folder path."""
    text = str(uri)
    if text.lower().startswith("s3://"):
        parts = urlsplit(text)
        if not parts.netloc or parts.query or parts.fragment:
            raise IngestError(f"{redact(text)}: not an S3 URI of the form s3://bucket/prefix")
        return S3Objects(parts.netloc, parts.path.strip("/"))
    if text.lower().startswith("file://"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise IngestError(f"{redact(text)}: a file:// URI names a local folder (file:///abs/path)")
        return FolderObjects(Path(url2pathname(parts.path)))
    if "://" in text:
        raise IngestError(f"{redact(text)}: not an object store URI (s3://bucket/prefix, file:///folder or a folder)")
    return FolderObjects(Path(text))


# --------------------------------------------------------------------------- folder

_TMP = ".ff-tmp"  # temp files and lock files, at the root of a folder store (never listed)


def _folder_conflict(key: str) -> ValueError:
    return ValueError(f"{key}: a folder store cannot hold an object and keys below it under one name")


class FolderObjects(ObjectStore):
    """An object store in a folder: one file per key. The folder must exist (a share that is not mounted
    is an :class:`ObjectStoreError`, never a silent write to the local disk)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self.display_uri = str(self.root)

    # ----------------------------------------------------------------- helpers

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def _fail(self, what: str, exc: OSError) -> ObjectStoreError:
        return ObjectStoreError(scrub(f"{self.display_uri}: {what}: {exc.strerror or exc}"))

    def _tmp_dir(self) -> Path:
        if not self.root.is_dir():
            raise ObjectStoreError(f"{self.display_uri}: no such folder (mount the share or create the folder)")
        tmp = self.root / _TMP
        try:
            tmp.mkdir(exist_ok=True)
        except OSError as exc:
            raise self._fail("cannot create its temp folder", exc) from None
        return tmp

    @staticmethod
    def _etag(st: os.stat_result) -> str:
        return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"

    def _publish(self, tmp: Path, key: str) -> bool:
        """Link the complete temp file to ``key``'s name unless that exists; the temp file is gone after."""
        final = self._path(key)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(tmp, final)
            except FileExistsError:
                if final.is_dir():
                    raise _folder_conflict(key) from None
                return False
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise ObjectStoreError(f"{self.display_uri}: its file system cannot hard-link ({exc.strerror}):"
                                           " atomic create-if-absent needs hard links") from None
                raise
            fsync_dir(final.parent)
            return True
        except OSError as exc:
            raise self._fail(f"cannot write {key}", exc) from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _write_temp(self, key: str, chunks: Iterator[bytes]) -> Path:
        tmp_dir = self._tmp_dir()
        try:
            fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="obj-", suffix=".part")
        except OSError as exc:
            raise self._fail(f"cannot write {key}", exc) from None
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
                raise self._fail(f"cannot write {key}", exc) from None
            raise
        return tmp

    # ----------------------------------------------------------------- interface

    def _exists(self, key: str) -> bool:
        path = self._path(key)
        if path.is_dir():
            raise _folder_conflict(key)
        return path.exists()

    def put_new(self, key: str, data: bytes) -> bool:
        if self._exists(key):
            return False
        return self._publish(self._write_temp(key, iter((data,))), key)

    def put_new_file(self, key: str, path: Path, *, sha256: str | None = None) -> bool:
        if self._exists(key):
            return False
        hasher = hashlib.sha256()
        size = 0

        def chunks() -> Iterator[bytes]:
            nonlocal size
            with open(path, "rb") as fh:  # its errors are the source's, not the store's
                while chunk := fh.read(READ_CHUNK):
                    hasher.update(chunk)
                    size += len(chunk)
                    yield chunk

        tmp = self._write_temp(key, chunks())
        if sha256 is not None and hasher.hexdigest() != sha256:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise ContentMismatch(key, expected=sha256, actual=hasher.hexdigest(), size=size)
        return self._publish(tmp, key)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.display_uri}: no object {key}") from None
        except OSError as exc:
            raise self._fail(f"cannot read {key}", exc) from None

    def get_to_file(self, key: str, path: Path) -> None:
        source = self._path(key)
        target = Path(path)
        try:
            with open(source, "rb") as src:
                fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
                try:
                    with os.fdopen(fd, "wb") as dst:
                        while chunk := src.read(READ_CHUNK):
                            dst.write(chunk)
                    os.replace(name, target)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(name)
                    raise
        except FileNotFoundError:
            if not source.exists():
                raise FileNotFoundError(f"{self.display_uri}: no object {key}") from None
            raise

    def head(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._fail(f"cannot stat {key}", exc) from None
        return ObjectInfo(key, st.st_size, self._etag(st))

    def list(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            raise ObjectStoreError(f"{self.display_uri}: no such folder (mount the share or create the folder)")
        folder = prefix.rpartition("/")[0]
        top = self._path(folder) if folder else self.root
        found: list[ObjectInfo] = []
        for dirpath, dirs, files in os.walk(top, followlinks=False):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            rel = "" if rel == "." else rel + "/"
            if not rel:
                dirs[:] = [d for d in dirs if d != _TMP]
            for name in files:
                key = rel + name
                if key.startswith(prefix) and key > start_after:
                    try:
                        st = os.stat(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        continue  # deleted meanwhile
                    found.append(ObjectInfo(key, st.st_size, self._etag(st)))
        found.sort(key=lambda info: info.key)
        yield from found

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            with open(self._path(key), "rb") as fh:
                st = os.fstat(fh.fileno())
                return fh.read(), self._etag(st)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._fail(f"cannot read {key}", exc) from None

    def write_versioned(self, key: str, data: bytes, *, etag: str | None) -> str:
        final = self._path(key)
        lock_path = self._tmp_dir() / ("lock-" + hashlib.sha256(key.encode()).hexdigest()[:32])
        try:
            lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise self._fail(f"cannot lock {key}", exc) from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            current = self.head(key)
            if etag is None and current is not None:
                raise PreconditionFailed(f"{self.display_uri}: {key} exists")
            if etag is not None and (current is None or current.etag != etag):
                raise PreconditionFailed(f"{self.display_uri}: {key} is not at version {etag}")
            tmp = self._write_temp(key, iter((data,)))
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)
                fsync_dir(final.parent)
                return self._etag(final.stat())
            except OSError as exc:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise self._fail(f"cannot write {key}", exc) from None
        finally:
            os.close(lock_fd)  # releases the flock

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._fail(f"cannot delete {key}", exc) from None


# --------------------------------------------------------------------------- S3

# Error codes that say the request itself lost a condition, or that the object is absent.
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_ABSENT = {"NoSuchKey", "404", "NotFound"}


def s3_endpoint() -> str | None:
    """The S3 endpoint from the environment (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, ``MLFLOW_S3_ENDPOINT_URL``)."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        if value := os.environ.get(name, "").strip():
            return value
    return None


class S3Objects(ObjectStore):
    """An object store under ``s3://bucket/prefix`` through boto3 (one thread-safe client)."""

    def __init__(self, bucket: str, prefix: str = "") -> None:
        try:
            import boto3
            import botocore.config
        except ImportError as exc:
            if (exc.name or "").split(".")[0] not in ("boto3", "botocore"):
                raise
            raise IngestError(S3_INSTALL_HINT) from None
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.display_uri = redact(f"s3://{bucket}/{self.prefix}".rstrip("/"))
        endpoint = s3_endpoint()
        config = botocore.config.Config(
            retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60,
            max_pool_connections=16, s3={"addressing_style": "path"} if endpoint else None)
        try:
            self._client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
        except Exception as exc:  # noqa: BLE001 - a bad endpoint or region: the store cannot be used
            raise ObjectStoreError(scrub(f"{self.display_uri}: cannot create an S3 client: {exc}")) from None
        self._lock = threading.Lock()

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    @staticmethod
    def _code(exc: Exception) -> str:
        response = getattr(exc, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code or str(status or "")

    def _fail(self, what: str, exc: Exception) -> ObjectStoreError:
        text = f"{type(exc).__name__}: {exc}"
        return ObjectStoreError(scrub(f"{self.display_uri}: {what}: {text}")[:600])

    def _call(self, what: str, fn, /, **kwargs):
        """One client call; anything but an absent key or a lost condition becomes :class:`ObjectStoreError`."""
        from botocore.exceptions import ClientError

        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = self._code(exc)
            if code in _ABSENT:
                raise FileNotFoundError(f"{self.display_uri}: no object {self._rel(kwargs.get('Key', ''))}") from None
            if code in _PRECONDITION:
                raise PreconditionFailed(f"{self.display_uri}: {what}: {code}") from None
            raise self._fail(what, exc) from None
        except Exception as exc:  # noqa: BLE001 - connection, credentials, timeouts: the store is unusable
            raise self._fail(what, exc) from None

    # ----------------------------------------------------------------- interface

    def put_new(self, key: str, data: bytes) -> bool:
        full = self._full(key)
        for attempt in range(5):
            try:
                self._call(f"put {key}", self._client.put_object, Bucket=self.bucket, Key=full, Body=data,
                           IfNoneMatch="*")
                return True
            except PreconditionFailed:
                if self.head(key) is not None:
                    return False
                time.sleep(0.05 * (attempt + 1))  # 409: a concurrent conditional write still in flight
        raise ObjectStoreError(f"{self.display_uri}: put {key}: conditional write kept conflicting")

    def put_new_file(self, key: str, path: Path, *, sha256: str | None = None) -> bool:
        size = Path(path).stat().st_size
        if size > PART_SIZE and self.head(key) is not None:
            return False  # a large file: a HEAD saves sending it (a small one: the conditional PUT decides)
        if size <= PART_SIZE:
            with open(path, "rb") as fh:
                data = fh.read()
            if sha256 is not None:
                actual = hashlib.sha256(data).hexdigest()
                if actual != sha256:
                    raise ContentMismatch(key, expected=sha256, actual=actual, size=len(data))
            return self.put_new(key, data)
        return self._multipart(key, Path(path), sha256)

    def _multipart(self, key: str, path: Path, sha256: str | None) -> bool:
        """Upload ``path`` in parts read (and hashed) in order, several in flight; complete only if it matches."""
        full = self._full(key)
        upload = self._call(f"put {key}", self._client.create_multipart_upload, Bucket=self.bucket, Key=full)
        upload_id = upload["UploadId"]
        hasher = hashlib.sha256()
        size = 0
        parts: dict[int, str] = {}
        completed = False
        pool = ThreadPoolExecutor(max_workers=PARTS_IN_FLIGHT, thread_name_prefix="ff-s3-part")
        try:
            pending: set[Future] = set()

            def send(number: int, body: bytes) -> None:
                answer = self._call(f"put {key} (part {number})", self._client.upload_part, Bucket=self.bucket,
                                    Key=full, UploadId=upload_id, PartNumber=number, Body=body)
                parts[number] = answer["ETag"]

            with open(path, "rb") as fh:
                number = 0
                while body := fh.read(PART_SIZE):
                    hasher.update(body)
                    size += len(body)
                    number += 1
                    while len(pending) >= PARTS_IN_FLIGHT:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            future.result()
                    pending.add(pool.submit(send, number, body))
            for future in pending:
                future.result()
            if sha256 is not None and hasher.hexdigest() != sha256:
                raise ContentMismatch(key, expected=sha256, actual=hasher.hexdigest(), size=size)
            manifest = {"Parts": [{"PartNumber": n, "ETag": parts[n]} for n in sorted(parts)]}
            try:
                self._call(f"put {key}", self._client.complete_multipart_upload, Bucket=self.bucket, Key=full,
                           UploadId=upload_id, MultipartUpload=manifest, IfNoneMatch="*")
            except PreconditionFailed:
                completed = True  # S3 drops the upload when its completion loses the condition
                return False
            completed = True
            return True
        finally:
            pool.shutdown(wait=True)
            if not completed:
                with contextlib.suppress(Exception):
                    self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)

    def get(self, key: str) -> bytes:
        answer = self._call(f"get {key}", self._client.get_object, Bucket=self.bucket, Key=self._full(key))
        try:
            return answer["Body"].read()
        except Exception as exc:  # noqa: BLE001 - the connection broke mid-body
            raise self._fail(f"get {key}", exc) from None

    def get_to_file(self, key: str, path: Path) -> None:
        target = Path(path)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        os.close(fd)
        try:
            self._call(f"get {key}", self._client.download_file, Bucket=self.bucket, Key=self._full(key),
                       Filename=name)
            os.replace(name, target)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(name)

    def head(self, key: str) -> ObjectInfo | None:
        try:
            answer = self._call(f"head {key}", self._client.head_object, Bucket=self.bucket, Key=self._full(key))
        except FileNotFoundError:
            return None
        return ObjectInfo(key, int(answer["ContentLength"]), answer.get("ETag", "").strip('"'))

    def list(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        kwargs = {"Bucket": self.bucket, "Prefix": full_prefix}
        if start_after:
            kwargs["StartAfter"] = f"{self.prefix}/{start_after}" if self.prefix else start_after
        seen: set[str] = set()  # a server handing back a token twice would page for ever
        while True:
            page = self._call(f"list {prefix or '/'}", self._client.list_objects_v2, **kwargs)
            for item in page.get("Contents", []):
                yield ObjectInfo(self._rel(item["Key"]), int(item["Size"]), item.get("ETag", "").strip('"'))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            if token in seen:
                raise ObjectStoreError(f"{self.display_uri}: list {prefix or '/'}: the server returned the same "
                                       "continuation token twice")
            seen.add(token)
            kwargs.pop("StartAfter", None)
            kwargs["ContinuationToken"] = token

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            answer = self._call(f"get {key}", self._client.get_object, Bucket=self.bucket, Key=self._full(key))
        except FileNotFoundError:
            return None
        try:
            data = answer["Body"].read()
        except Exception as exc:  # noqa: BLE001
            raise self._fail(f"get {key}", exc) from None
        return data, answer.get("ETag", "").strip('"')

    def write_versioned(self, key: str, data: bytes, *, etag: str | None) -> str:
        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": f'"{etag}"'}
        try:
            answer = self._call(f"put {key}", self._client.put_object, Bucket=self.bucket, Key=self._full(key),
                                Body=data, **condition)
        except FileNotFoundError:  # IfMatch on an absent key
            raise PreconditionFailed(f"{self.display_uri}: {key} is absent") from None
        return answer.get("ETag", "").strip('"')

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", self._client.delete_object, Bucket=self.bucket, Key=self._full(key))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()
