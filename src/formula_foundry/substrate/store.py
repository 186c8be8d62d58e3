"""Content-addressed artifact store: each distinct content is stored once, under its sha256.

On-disk layout under the store root::

    objects/sha256/<aa>/<digest>   one immutable, read-only blob per content; <digest> is the
                                   bare 64-char lowercase hex sha256, <aa> its first two chars
    tmp/<name>.part                in-flight writes; a leftover of a crashed writer is garbage
                                   (never read, never collides) and safe to delete when idle
                                   (where the kernel has O_TMPFILE, snapshots of files write
                                   unnamed files there instead, which a crash leaves nothing of)

A digest is always the bare 64-char lowercase hex string (no ``sha256:`` prefix). A
string that is not one raises :class:`SubstrateError` before any path is built from it.

Adding content is a single streaming pass: 1 MiB chunks are hashed while they are
copied to a temp file in ``tmp/`` (fsynced), which is then renamed into place unless an
identical blob is already there. Readers therefore never see a partial blob.
A writer that fills its own temp file in ``tmp/`` (a reflink, an in-kernel copy: see
``formula_foundry.tracking.artifacts``) hands it to :meth:`ArtifactStore.publish` for the
same dedupe-and-rename step.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from formula_foundry.errors import ArtifactNotFoundError, DigestMismatchError, SubstrateError
from formula_foundry.substrate._atomic import fsync_dir, replace_durably, write_temp

__all__ = ["CHUNK_SIZE", "ArtifactEntry", "ArtifactStore", "validate_digest"]

CHUNK_SIZE = 1 << 20  # 1 MiB
_DIGEST = re.compile(r"[0-9a-f]{64}")
_BLOB_MODE = 0o444
_HAS_UNNAMED = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")  # O_TMPFILE, linked via /proc


def validate_digest(digest: object) -> str:
    """Return ``digest`` if it is 64 lowercase hex characters, else raise SubstrateError."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise SubstrateError(
            f"malformed sha256 digest {digest!r}: expected 64 lowercase hex characters (no prefix)"
        )
    return digest


@dataclass(frozen=True)
class ArtifactEntry:
    """One stored artifact: its logical path, content digest, size and blob location.

    ``digest`` is the bare 64-char lowercase hex sha256 of the content. ``store_path``
    is the blob's absolute path in the store that produced the entry (``None`` when the
    entry was rebuilt from a reference that did not carry it).
    """

    path: str
    digest: str
    size_bytes: int
    store_path: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise SubstrateError(f"artifact logical path must be a non-empty string, got {self.path!r}")
        validate_digest(self.digest)
        if isinstance(self.size_bytes, bool) or not isinstance(self.size_bytes, int) or self.size_bytes < 0:
            raise SubstrateError(f"artifact size_bytes must be a non-negative int, got {self.size_bytes!r}")
        if self.store_path is not None:
            object.__setattr__(self, "store_path", Path(self.store_path))

    @property
    def uri(self) -> str | None:
        """``file://`` URI of the blob, or ``None`` if the store location is unknown."""
        return self.store_path.absolute().as_uri() if self.store_path is not None else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: path, digest, size_bytes, store_path (string or null)."""
        return {
            "path": self.path,
            "digest": self.digest,
            "size_bytes": self.size_bytes,
            "store_path": str(self.store_path) if self.store_path is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArtifactEntry:
        """Inverse of :meth:`to_dict`; ``store_path`` may be absent."""
        unknown = sorted(set(data) - {"path", "digest", "size_bytes", "store_path"})
        if unknown:
            raise SubstrateError(f"artifact entry key {unknown[0]!r}: unknown key")
        missing = [key for key in ("path", "digest", "size_bytes") if key not in data]
        if missing:
            raise SubstrateError(f"artifact entry key {missing[0]!r}: missing")
        store_path = data.get("store_path")
        return cls(
            path=data["path"],
            digest=data["digest"],
            size_bytes=data["size_bytes"],
            store_path=Path(store_path) if store_path is not None else None,
        )


@dataclass(frozen=True)
class ArtifactStore:
    """A sha256 content-addressed blob store rooted at ``root`` (made absolute).

    Directories are created on the first write; reading an empty store is fine.
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).absolute())

    @property
    def objects_dir(self) -> Path:
        return self.root / "objects" / "sha256"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def path_for(self, digest: str) -> Path:
        """Where the blob of ``digest`` lives (whether or not it exists)."""
        digest = validate_digest(digest)
        return self.objects_dir / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def add_file(self, path: Path | str, *, logical_path: str | None = None) -> ArtifactEntry:
        """Store a file's content; ``logical_path`` defaults to the file name."""
        source = Path(path)
        try:
            fh = open(source, "rb")  # noqa: SIM115 - closed below, after the streaming pass
        except FileNotFoundError as exc:
            raise ArtifactNotFoundError(f"{source}: artifact source file not found") from exc
        except OSError as exc:
            raise SubstrateError(f"{source}: cannot read artifact source: {exc}") from exc
        with fh:
            return self._add(_read_chunks(fh), logical_path or source.name)

    def add_bytes(self, data: bytes, *, logical_path: str) -> ArtifactEntry:
        """Store in-memory content under ``logical_path``."""
        view = memoryview(data)
        chunks = (view[i : i + CHUNK_SIZE] for i in range(0, len(view), CHUNK_SIZE))
        return self._add(chunks, logical_path)

    def open(self, digest: str) -> BinaryIO:
        """Open a stored blob for binary reading."""
        blob = self.path_for(digest)
        try:
            return open(blob, "rb")  # the caller owns (and closes) the file object
        except FileNotFoundError as exc:
            raise ArtifactNotFoundError(f"{blob}: blob {digest} not found in store {self.root}") from exc

    def read_bytes(self, digest: str) -> bytes:
        with self.open(digest) as fh:
            return fh.read()

    def verify(self, ref: str | ArtifactEntry) -> ArtifactEntry:
        """Re-hash a blob (streaming) and return its entry; raise DigestMismatchError if it changed.

        ``ref`` is a digest or an entry; the returned entry keeps an entry's logical path,
        and uses the digest as the path when only a digest is given.
        """
        digest = ref.digest if isinstance(ref, ArtifactEntry) else validate_digest(ref)
        blob = self.path_for(digest)
        hasher = hashlib.sha256()
        size = 0
        with self.open(digest) as fh:
            for chunk in _read_chunks(fh):
                hasher.update(chunk)
                size += len(chunk)
        actual = hasher.hexdigest()
        if actual != digest:
            raise DigestMismatchError(f"{blob}: content corrupted: expected sha256 {digest}, actual {actual}")
        logical = ref.path if isinstance(ref, ArtifactEntry) else digest
        return ArtifactEntry(path=logical, digest=digest, size_bytes=size, store_path=blob)

    def _add(self, chunks: Iterable[bytes], logical_path: str) -> ArtifactEntry:
        """Hash while copying to a temp file, then publish it; identical content is stored once."""
        if not isinstance(logical_path, str) or not logical_path:
            raise SubstrateError(f"artifact logical path must be a non-empty string, got {logical_path!r}")
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        hasher = hashlib.sha256()
        size = 0

        def hashing() -> Iterator[bytes]:
            nonlocal size
            for chunk in chunks:
                hasher.update(chunk)
                size += len(chunk)
                yield chunk

        tmp = write_temp(self.tmp_dir, hashing(), prefix="blob-")
        return self.publish(tmp, digest=hasher.hexdigest(), size_bytes=size, logical_path=logical_path)

    def unnamed_temp(self) -> int | None:
        """A new file without a name in :attr:`tmp_dir` (``O_TMPFILE``), open for reading and writing, to be
        given its blob's name by :meth:`publish_unnamed`: a writer killed before that leaves nothing
        behind. None where the kernel or the file system has no such files."""
        if not _HAS_UNNAMED:
            return None
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        try:
            return os.open(self.tmp_dir, os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EISDIR, errno.EINVAL):
                return None
            raise

    def publish_unnamed(self, fd: int, *, digest: str, size_bytes: int, logical_path: str,
                        sync: bool = True) -> ArtifactEntry | None:
        """:meth:`publish` for a complete, fsynced :meth:`unnamed_temp` file: linked under the blob's name
        (a new name directly; over a torn leftover of another size through a temp name and a rename).
        None, and nothing named, where it cannot be linked (``/proc`` restricted); the caller closes ``fd``."""
        blob = self.path_for(digest)
        entry = ArtifactEntry(path=logical_path, digest=digest, size_bytes=size_bytes, store_path=blob)
        if not _make_room(blob, size_bytes, sync=sync):
            return entry  # dedupe: the stored blob is kept, ours vanishes with its descriptor
        os.fchmod(fd, _BLOB_MODE)
        source = f"/proc/self/fd/{fd}"  # linked with a folder descriptor: linkat(AT_SYMLINK_FOLLOW) follows it
        folder = os.open(blob.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                os.link(source, blob.name, dst_dir_fd=folder, follow_symlinks=True)
            except FileExistsError:  # a torn leftover (or a racing writer's identical blob): replaced whole
                temp = f".blob-{os.urandom(16).hex()}.part"
                os.link(source, temp, dst_dir_fd=folder, follow_symlinks=True)
                try:
                    os.replace(temp, blob.name, src_dir_fd=folder, dst_dir_fd=folder)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(temp, dir_fd=folder)
                    raise
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.EPERM, errno.EACCES, errno.EXDEV, errno.EOPNOTSUPP):
                    return None
                raise
            if sync:
                os.fsync(folder)
        finally:
            os.close(folder)
        return entry

    def publish(self, tmp: Path, *, digest: str, size_bytes: int, logical_path: str,
                sync: bool = True) -> ArtifactEntry:
        """Move a complete temp file into place as the blob of ``digest``; the temp file is gone after.

        For writers that fill a temp file themselves (a reflink, an in-kernel copy): ``tmp``
        must lie in :attr:`tmp_dir` (the same file system), be fsynced, and hash to ``digest``
        with ``size_bytes`` bytes; the caller computed both from the temp file's own content.
        ``sync=False``: the rename is not made durable here; the caller fsyncs the blob's folder and
        :attr:`objects_dir` (a new shard folder) before relying on the name (many blobs, one fsync
        per folder).
        """
        try:
            blob = self.path_for(digest)
            # Dedupe: an existing blob of the right size is kept and our copy dropped. A blob of
            # another size is a torn leftover of an older writer and is replaced. Two writers
            # racing on the same content both rename identical bytes, which is harmless.
            if not _make_room(blob, size_bytes, sync=sync):
                tmp.unlink()
            else:
                os.chmod(tmp, _BLOB_MODE)
                if sync:
                    replace_durably(tmp, blob)
                else:
                    os.replace(tmp, blob)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return ArtifactEntry(path=logical_path, digest=digest, size_bytes=size_bytes, store_path=blob)


def _make_room(blob: Path, size_bytes: int, *, sync: bool) -> bool:
    """False when ``blob`` is already stored whole (dedupe: an existing blob of the right size is kept; one of
    another size is a torn leftover of an older writer, to be replaced); else its shard folder exists (made
    durable where new, with ``sync``) and True."""
    if blob.is_file() and blob.stat().st_size == size_bytes:
        return False
    shard_is_new = not blob.parent.is_dir()
    blob.parent.mkdir(parents=True, exist_ok=True)
    if shard_is_new and sync:
        fsync_dir(blob.parent.parent)
    return True


def _read_chunks(fh: BinaryIO) -> Iterator[bytes]:
    while chunk := fh.read(CHUNK_SIZE):
        yield chunk
