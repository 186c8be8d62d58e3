"""Content-addressed store: layout, dedupe, atomicity, streaming, verification, digest checks."""

from __future__ import annotations

import hashlib
import os
import re
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from formula_foundry.errors import ArtifactNotFoundError, DigestMismatchError, SubstrateError
from formula_foundry.substrate import ArtifactEntry, ArtifactStore
from formula_foundry.substrate import store as store_module

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _blobs(store: ArtifactStore) -> list[Path]:
    return sorted(p for p in store.objects_dir.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


def test_add_file_layout_and_read_back(store: ArtifactStore, tmp_path: Path) -> None:
    """add_file files the content at objects/sha256/<aa>/<hex> and reads back byte for byte."""
    src = tmp_path / "coupon.kicad_pcb"
    src.write_bytes(b"pcb data")
    digest = hashlib.sha256(b"pcb data").hexdigest()
    entry = store.add_file(src)
    assert (entry.path, entry.digest, entry.size_bytes) == ("coupon.kicad_pcb", digest, 8)
    assert entry.store_path == store.root / "objects" / "sha256" / digest[:2] / digest
    assert entry.uri == entry.store_path.as_uri()
    assert store.exists(digest) and store.read_bytes(digest) == b"pcb data"
    with store.open(digest) as fh:
        assert fh.read() == b"pcb data"


def test_add_bytes_with_logical_path(store: ArtifactStore) -> None:
    """add_bytes stores in-memory content under the logical path given."""
    entry = store.add_bytes(b"abc", logical_path="reports/summary.txt")
    assert entry.path == "reports/summary.txt"
    assert store.read_bytes(entry.digest) == b"abc"


def test_empty_content(store: ArtifactStore, tmp_path: Path) -> None:
    """An empty file is a valid artifact with the sha256 of the empty string."""
    (tmp_path / "empty").write_bytes(b"")
    entry = store.add_file(tmp_path / "empty", logical_path="e")
    assert (entry.digest, entry.size_bytes) == (EMPTY_SHA256, 0)
    assert store.verify(entry) == entry


def test_identical_content_stored_once(store: ArtifactStore, tmp_path: Path) -> None:
    """Two adds of identical content (different names) give one digest and one blob."""
    (tmp_path / "a").write_bytes(b"same")
    (tmp_path / "b").write_bytes(b"same")
    first = store.add_file(tmp_path / "a")
    second = store.add_file(tmp_path / "b", logical_path="copy")
    assert first.digest == second.digest and second.path == "copy"
    assert _blobs(store) == [first.store_path]


def test_no_temp_files_left(store: ArtifactStore) -> None:
    """After adds, new and deduplicated, the tmp dir is empty."""
    store.add_bytes(b"one", logical_path="1")
    store.add_bytes(b"one", logical_path="1")
    store.add_bytes(b"two", logical_path="2")
    assert list(store.tmp_dir.iterdir()) == []


def test_leftover_partial_temp_is_harmless(store: ArtifactStore) -> None:
    """A partial temp left by a crashed writer neither collides nor leaks into the store."""
    store.tmp_dir.mkdir(parents=True)
    leftover = store.tmp_dir / "blob-crashed.part"
    leftover.write_bytes(b"half a blo")
    entry = store.add_bytes(b"half a blob", logical_path="x")
    assert store.verify(entry.digest).size_bytes == 11
    assert list(store.tmp_dir.iterdir()) == [leftover]


def test_torn_blob_of_wrong_size_is_replaced(store: ArtifactStore) -> None:
    """A blob of the wrong size at the target path (torn legacy write) is replaced on re-add."""
    digest = hashlib.sha256(b"complete").hexdigest()
    blob = store.path_for(digest)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"comp")
    store.add_bytes(b"complete", logical_path="c")
    assert store.read_bytes(digest) == b"complete"


def test_unnamed_temp_is_linked_as_the_blob_deduplicated_or_over_a_torn_leftover(store: ArtifactStore) -> None:
    """Where the kernel has ``O_TMPFILE``: a file without a name becomes the blob (read-only, exact bytes);
    the same content again keeps the stored blob; a torn leftover of another size is replaced whole; no
    name is ever left in tmp/ or beside the blob."""
    probe = store.unnamed_temp()
    if probe is None:
        pytest.skip("no O_TMPFILE here")
    os.close(probe)

    def unnamed(data: bytes) -> int:
        fd = store.unnamed_temp()
        os.write(fd, data)
        os.fsync(fd)
        return fd

    data = b"field map\n" * 1000
    digest = hashlib.sha256(data).hexdigest()
    for attempt in range(2):  # the second is the same content: deduplicated
        fd = unnamed(data)
        try:
            entry = store.publish_unnamed(fd, digest=digest, size_bytes=len(data), logical_path="f.bin")
        finally:
            os.close(fd)
        assert entry is not None and entry.store_path == store.path_for(digest)
        assert store.read_bytes(digest) == data
        assert store.path_for(digest).stat().st_mode & 0o777 == 0o444
    blob = store.path_for(digest)
    os.chmod(blob, 0o644)
    blob.write_bytes(data[:100])  # torn: another size
    fd = unnamed(data)
    try:
        assert store.publish_unnamed(fd, digest=digest, size_bytes=len(data), logical_path="f.bin") is not None
    finally:
        os.close(fd)
    assert store.verify(digest).size_bytes == len(data)
    assert os.listdir(blob.parent) == [digest]
    assert list(store.tmp_dir.iterdir()) == []


def test_failed_source_read_leaves_no_temp(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If reading the source fails mid-stream, the temp file is removed and nothing is stored."""

    def failing_chunks(fh: object) -> Iterator[bytes]:
        yield b"first chunk"
        raise OSError("disk gone")

    monkeypatch.setattr(store_module, "_read_chunks", failing_chunks)
    (tmp_path / "src").write_bytes(b"whatever")
    with pytest.raises(OSError, match="disk gone"):
        store.add_file(tmp_path / "src")
    assert list(store.tmp_dir.iterdir()) == []
    assert not store.objects_dir.exists()


def test_large_file_is_streamed(store: ArtifactStore, tmp_path: Path) -> None:
    """A ~50 MB file is added with a Python heap peak far below its size (single streaming pass)."""
    size = 50 * 1024 * 1024
    src = tmp_path / "big.bin"
    with open(src, "wb") as fh:  # sparse-ish: holes with a few marked pages
        for offset in range(0, size, 7 * 1024 * 1024):
            fh.seek(offset)
            fh.write(b"marker%d" % offset)
        fh.truncate(size)
    tracemalloc.start()
    try:
        entry = store.add_file(src)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert entry.size_bytes == size
    assert peak < size // 10, f"peak {peak} bytes"
    assert store.path_for(entry.digest).stat().st_size == size


def test_verify_detects_corruption(store: ArtifactStore) -> None:
    """Overwriting a blob's bytes makes verify raise DigestMismatchError naming file and digests."""
    entry = store.add_bytes(b"original", logical_path="x")
    blob = store.path_for(entry.digest)
    os.chmod(blob, 0o644)  # blobs are stored read-only
    blob.write_bytes(b"tampered")
    actual = hashlib.sha256(b"tampered").hexdigest()
    with pytest.raises(DigestMismatchError) as info:
        store.verify(entry)
    message = str(info.value)
    assert str(blob) in message and entry.digest in message and actual in message


def test_blobs_are_read_only(store: ArtifactStore) -> None:
    """Stored blobs carry no write permission bits."""
    entry = store.add_bytes(b"x", logical_path="x")
    assert entry.store_path is not None
    assert entry.store_path.stat().st_mode & 0o222 == 0


def test_missing_source_names_path(store: ArtifactStore, tmp_path: Path) -> None:
    """Adding a file that does not exist raises ArtifactNotFoundError naming the path."""
    missing = tmp_path / "nope.bin"
    with pytest.raises(ArtifactNotFoundError, match=r"nope\.bin"):
        store.add_file(missing)


def test_directory_source_rejected(store: ArtifactStore, tmp_path: Path) -> None:
    """A directory is not an artifact: SubstrateError naming it."""
    with pytest.raises(SubstrateError, match=re.escape(str(tmp_path))):
        store.add_file(tmp_path)


def test_missing_blob(store: ArtifactStore) -> None:
    """Reading a well-formed digest that is not stored raises ArtifactNotFoundError."""
    digest = "0" * 64
    assert not store.exists(digest)
    with pytest.raises(ArtifactNotFoundError, match=digest):
        store.read_bytes(digest)
    with pytest.raises(ArtifactNotFoundError):
        store.verify(digest)


@pytest.mark.parametrize(
    "digest",
    ["", "A" * 64, "a" * 63, "a" * 65, "sha256:" + "a" * 64, "../" + "a" * 61, "a" * 63 + "\n", None],
    ids=repr,
)
def test_malformed_digest_rejected(store: ArtifactStore, digest: object) -> None:
    """A malformed digest is a SubstrateError from every entry point and never becomes a path."""
    for call in (store.path_for, store.exists, store.open, store.read_bytes, store.verify):
        with pytest.raises(SubstrateError, match="malformed sha256 digest"):
            call(digest)  # type: ignore[arg-type]
    assert not store.root.exists()


def test_entry_dict_round_trip(store: ArtifactStore) -> None:
    """ArtifactEntry.to_dict/from_dict round-trip exactly, with and without store_path."""
    entry = store.add_bytes(b"x", logical_path="x.txt")
    assert ArtifactEntry.from_dict(entry.to_dict()) == entry
    bare = ArtifactEntry(path="x.txt", digest=entry.digest, size_bytes=1)
    assert ArtifactEntry.from_dict(bare.to_dict()) == bare and bare.uri is None


def test_entry_rejects_bad_fields() -> None:
    """An entry with a malformed digest, negative size or unknown key is a SubstrateError."""
    with pytest.raises(SubstrateError, match="digest"):
        ArtifactEntry(path="x", digest="abc", size_bytes=1)
    with pytest.raises(SubstrateError, match="size_bytes"):
        ArtifactEntry(path="x", digest=EMPTY_SHA256, size_bytes=-1)
    with pytest.raises(SubstrateError, match="'extra'"):
        ArtifactEntry.from_dict({"path": "x", "digest": EMPTY_SHA256, "size_bytes": 0, "extra": 1})
