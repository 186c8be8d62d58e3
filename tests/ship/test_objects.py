"""The object-store layer (``ingest/objects.py``) against a real folder and moto's S3 server, and the
pure key layout of a ship destination (``ship/layout.py``)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from formula_foundry.tracking.ingest import objects as objects_module
from formula_foundry.tracking.ingest.objects import (
    ContentMismatch,
    ObjectStoreError,
    PreconditionFailed,
    is_object_uri,
    open_objects,
)
from formula_foundry.tracking.ingest.ship import layout


@pytest.fixture(params=["folder", "s3"])
def store(request, tmp_path, moto_s3):  # moto_s3 named here: the session's server pool starts it
    if request.param == "folder":
        root = tmp_path / "dest"
        root.mkdir()
        s = open_objects(str(root))
    else:
        s = open_objects(request.getfixturevalue("s3_uri"))
    yield s
    s.close()


def test_create_if_absent_keeps_the_first_writer(store):
    assert store.put_new("a/b.seg", b"first") is True
    assert store.put_new("a/b.seg", b"second") is False
    assert store.get("a/b.seg") == b"first"
    assert store.head("a/b.seg").size == 5
    assert store.head("a/none") is None
    with pytest.raises(FileNotFoundError):
        store.get("a/none")


def test_racing_creators_exactly_one_wins(store):
    """Eight threads create one key with different bytes: one True, the object holds its bytes whole."""
    results: dict[int, bool] = {}

    def put(i: int) -> None:
        results[i] = store.put_new("race/key", bytes([i]) * 100_000)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, won in results.items() if won]
    assert len(winners) == 1
    assert store.get("race/key") == bytes([winners[0]]) * 100_000


def test_list_is_in_key_order_with_start_after(store):
    for key in ("j/b", "j-x", "j/a/c", "j/a.txt", "k"):
        assert store.put_new(key, key.encode()) is True
    # byte order of whole keys ("." < "/"), not the order of a walk through folders
    assert [i.key for i in store.list("j")] == ["j-x", "j/a.txt", "j/a/c", "j/b"]
    assert [i.key for i in store.list("j/", start_after="j/a.txt")] == ["j/a/c", "j/b"]
    assert [(i.key, i.size) for i in store.list("k")] == [("k", 1)]
    assert list(store.list("nothing/")) == []


def test_versioned_writes_are_compare_and_swap(store):
    assert store.read_versioned("lease.json") is None
    v1 = store.write_versioned("lease.json", b"1", etag=None)
    with pytest.raises(PreconditionFailed):
        store.write_versioned("lease.json", b"x", etag=None)  # exists
    v2 = store.write_versioned("lease.json", b"2", etag=v1)
    assert v2 != v1
    with pytest.raises(PreconditionFailed):
        store.write_versioned("lease.json", b"3", etag=v1)  # spent version
    with pytest.raises(PreconditionFailed):
        store.write_versioned("absent.json", b"3", etag=v1)
    assert store.read_versioned("lease.json") == (b"2", v2)
    store.delete("lease.json")
    store.delete("lease.json")  # idempotent
    assert store.read_versioned("lease.json") is None


def test_files_are_verified_while_streamed(store, tmp_path, monkeypatch):
    """A file whose bytes do not hash to the digest given never appears; a multipart upload too."""
    monkeypatch.setattr(objects_module, "PART_SIZE", 5 << 20)  # S3's smallest part: 3 parts
    big = tmp_path / "big"
    big.write_bytes(os.urandom(11 << 20))
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    with pytest.raises(ContentMismatch) as caught:
        store.put_new_file("blobs/bad", big, sha256="0" * 64)
    assert caught.value.actual == digest and caught.value.size == 11 << 20
    assert store.head("blobs/bad") is None
    assert store.put_new_file("blobs/good", big, sha256=digest) is True
    assert store.put_new_file("blobs/good", big, sha256=digest) is False
    back = tmp_path / "back"
    store.get_to_file("blobs/good", back)
    assert back.read_bytes() == big.read_bytes()
    small = tmp_path / "small"
    small.write_bytes(b"tiny")
    assert store.put_new_file("blobs/small", small) is True
    assert store.get("blobs/small") == b"tiny"


def test_keys_are_checked(store):
    for bad in ("", "/abs", "a//b", "a/../b", "./a", "a/", "a\\b"):
        with pytest.raises(ValueError):
            store.put_new(bad, b"x")


def test_a_missing_folder_is_unavailable_not_created(tmp_path):
    store = open_objects(f"file://{tmp_path}/not-mounted")
    with pytest.raises(ObjectStoreError, match="no such folder"):
        store.put_new("k", b"x")
    assert not (tmp_path / "not-mounted").exists()


def test_an_unreachable_endpoint_is_an_object_store_error(monkeypatch):
    pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: refused at once
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-secret-9f8e7d")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(ObjectStoreError) as caught:
        open_objects("s3://bucket/prefix").head("k")
    assert "s3://bucket/prefix" in str(caught.value)
    assert "canary-secret-9f8e7d" not in str(caught.value)


def test_uris():
    assert is_object_uri("s3://b/p") and is_object_uri("file:///x") and not is_object_uri("/x")
    assert open_objects("file:///tmp/x").display_uri == "/tmp/x"


def test_layout_keys_round_trip():
    key = layout.segment_key("node-1.lab", "20260101T000000-r-1/tracking/r1.j1.jsonl", 12345)
    assert key == "journals/node-1.lab/20260101T000000-r-1/tracking/r1.j1.jsonl/00000000000000012345.seg"
    assert layout.parse_segment_key(key) == ("node-1.lab", "20260101T000000-r-1/tracking/r1.j1.jsonl", 12345)
    # zero padding: key order is start order
    assert layout.segment_key("h", "tracking/a.b.jsonl", 9) < layout.segment_key("h", "tracking/a.b.jsonl", 10)
    for bad in ("journals/h/x.jsonl/00000000000000000000.seg", "journals/h/tracking/a.b.jsonl/12.seg",
                "blobs/sha256/aa/aa", "journals/h/../tracking/a.b.jsonl/00000000000000000000.seg"):
        assert layout.parse_segment_key(bad) is None
    digest = "ab" + "0" * 62
    assert layout.blob_key(digest) == f"blobs/sha256/ab/{digest}"
    assert layout.lease_key("central") == "leases/central.json"
    assert layout.checkpoint_key("central", "j1") == "checkpoints/central/j1.json"
    for call in (lambda: layout.blob_key("AB"), lambda: layout.check_host("a/b"), lambda: layout.check_host(".."),
                 lambda: layout.segment_key("h", "../tracking/a.b.jsonl", 0), lambda: layout.segment_key("h", "x", -1)):
        with pytest.raises(ValueError):
            call()


def test_is_shipped_folder(tmp_path: Path):
    assert not layout.is_shipped_folder(tmp_path)
    (tmp_path / layout.LAYOUT_KEY).write_text("{}")
    assert layout.is_shipped_folder(tmp_path)
