"""The central lease (``ingest/lease.py``) on real destinations: a folder and moto's S3 server.

Each test is one rule of the lease: create when absent, refuse while held (naming the holder),
take over when expired or released, one winner among racing takers, the loss seen by the
holder's renewal and enforced by the fence before any write.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from formula_foundry.errors import IngesterLockedError
from formula_foundry.tracking.ingest.lease import (
    FencedSink,
    Lease,
    LeaseHeldError,
    LeaseLostError,
    held,
    read_lease,
)
from formula_foundry.tracking.ingest.objects import open_objects
from formula_foundry.tracking.ingest.sink import Batch, Checkpoint
from tests.ingest.memory_sink import MemorySink

NAME = "store-under-test"


@pytest.fixture(params=["folder", "s3"])
def objects(request, tmp_path, s3_client_env):
    if request.param == "folder":
        store = open_objects(str(tmp_path))
    else:
        store = open_objects(f"s3://{s3_client_env.bucket}/lease-{uuid.uuid4().hex[:8]}")
    yield store
    store.close()


def lease(objects, ttl: float = 3.0, holder: str | None = None, **kwargs) -> Lease:
    return Lease(objects, NAME, store="postgresql://db:5432/mlflow", ttl=ttl, holder=holder, **kwargs)


def test_held_lease_refuses_a_second_taker_naming_the_holder(objects):
    """Absent: created. Held: exit 5 (IngesterLockedError) naming the holder and the expiry.
    Released: the next taker gets it at once."""
    first = lease(objects, ttl=30, holder="ff-ingest pid 1 on central-a")
    first.try_acquire()
    assert held(objects.display_uri, NAME) is first
    with pytest.raises(LeaseHeldError) as refused:
        lease(objects, ttl=30, holder="ff-ingest pid 2 on central-b").try_acquire()
    assert isinstance(refused.value, IngesterLockedError)
    text = str(refused.value)
    assert "ff-ingest pid 1 on central-a" in text and "UTC" in text and "--wait-lease" in text
    assert f"leases/{NAME}.json" in text
    first.release()
    info = read_lease(objects, NAME)
    assert info.released and info.holder == "ff-ingest pid 1 on central-a"
    assert held(objects.display_uri, NAME) is None
    second = lease(objects, ttl=30, holder="b")
    second.try_acquire()
    assert read_lease(objects, NAME).holder == "b" and not read_lease(objects, NAME).released
    second.release()


def test_an_expired_lease_is_taken_over_and_its_holder_finds_out(objects):
    """A holder that stopped renewing (a dead process, a partition): once it has run out, another
    ingester takes it over; the old holder's next renewal fails its precondition: lost, and the
    fence refuses every write after that."""
    now = [1000.0]
    old = lease(objects, ttl=3, holder="old", clock=lambda: now[0])
    old.try_acquire()
    with pytest.raises(LeaseHeldError):
        lease(objects, ttl=3, holder="new", clock=lambda: now[0] + 2.9).try_acquire()
    new = lease(objects, ttl=3, holder="new", clock=lambda: now[0] + 3.0)
    new.try_acquire()  # expired at 1003.0: taken over
    assert read_lease(objects, NAME).holder == "new"
    assert old.lost is None  # it cannot know yet
    assert old.renew() is False
    assert "took it over" in old.lost
    inner = MemorySink()
    sink = FencedSink(inner, old)
    cp = Checkpoint(journal_id="j", path="p", run_id="r")
    with pytest.raises(LeaseLostError, match="nothing was committed after the loss"):
        sink.commit("run", Batch(records=1), cp)
    with pytest.raises(LeaseLostError):
        sink.create_run(experiment_id="0", run_id="r", run_name=None, start_time=0, tags={})
    assert inner.calls == 0 and inner.checkpoints.all() == []
    old.release()  # not ours any more: the new holder's lease stays
    assert read_lease(objects, NAME).holder == "new" and not read_lease(objects, NAME).released
    new.release()


def test_racing_takers_of_an_expired_lease_one_wins(objects):
    """Eight takers at once on an expired lease: exactly one holds it (conditional writes)."""
    lease(objects, ttl=1, holder="dead", clock=lambda: 0.0).try_acquire()  # expired long ago
    barrier = threading.Barrier(8)
    won, refused = [], []

    def take(i: int) -> None:
        mine = lease(objects, ttl=30, holder=f"taker-{i}")
        barrier.wait()
        try:
            mine.try_acquire()
            won.append(mine)
        except IngesterLockedError:
            refused.append(i)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 1 and len(refused) == 7
    assert read_lease(objects, NAME).holder == won[0].holder
    won[0].release()


def test_renewals_keep_the_lease_and_a_silent_holder_loses_it_by_its_deadline(objects):
    """The renew thread keeps a 1.5 s lease alive for 3 s; a holder whose renewals stop (here: not
    started) counts it lost before a taker with the same clock may take it over."""
    keeper = lease(objects, ttl=1.5, holder="keeper")
    keeper.try_acquire()
    keeper.start_renewing()
    time.sleep(3.0)
    keeper.check()
    with pytest.raises(LeaseHeldError):
        lease(objects, ttl=1.5, holder="other").try_acquire()
    keeper.release()

    silent = lease(objects, ttl=1.5, holder="silent")
    silent.try_acquire()
    written = read_lease(objects, NAME)
    while time.time() * 1000 < written.expires_ms:
        if silent.lost is not None:
            break
        time.sleep(0.02)
    assert silent.lost is not None and time.time() * 1000 < written.expires_ms  # it stopped first
    with pytest.raises(LeaseLostError, match="not renewed in time"):
        silent.check()
    silent.release()


def test_a_daemon_that_loses_its_lease_stops_with_exit_5(tmp_path, template_store):
    """``ff-ingest --watch --root SHARE``: another machine takes the lease over (as after a partition that
    outlasted it); the daemon's next renewal sees it and it exits 5, naming the loss."""
    import json
    import shutil
    import subprocess

    from tests.central import central_argv, child_env, machine, produce, ship

    share = tmp_path / "share"
    share.mkdir()
    host, hub = machine(tmp_path / "node-1"), machine(tmp_path / "hub", lease_seconds=3, rescan=0.5)
    db = hub / "data" / "mlflow" / "mlruns.db"
    db.parent.mkdir(parents=True)
    shutil.copy(template_store, db)
    uri = f"sqlite:///{db}"
    produce(host, "lease-lost")
    assert ship(host, str(share)) == 0
    daemon = subprocess.Popen(central_argv(hub, str(share), uri, "--watch"), env=child_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        from formula_foundry.tracking.ingest.uri import store_key

        key = f"leases/{store_key(uri)}.json"
        with open_objects(str(share)) as objects:
            deadline = time.monotonic() + 60
            while (found := objects.read_versioned(key)) is None or f"pid {daemon.pid} " not in found[0].decode():
                assert time.monotonic() < deadline and daemon.poll() is None, daemon.stderr.read()
                time.sleep(0.05)
            raw = json.loads(found[0])
            raw.update(holder="ff-ingest pid 1 on central-b", token="other")
            objects.write_versioned(key, json.dumps(raw).encode(), etag=found[1])
        assert daemon.wait(timeout=30) == 5
        err = daemon.stderr.read()
        assert "lost the central lease" in err and "took it over" in err
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    with open_objects(str(share)) as objects:
        assert read_lease(objects, store_key(uri)).holder == "ff-ingest pid 1 on central-b"  # left alone
