"""A journal whose chain does not move on is that journal's error, never a loop re-sending one request.

Seen once (issue 17): an in-process ``ff-ingest ship`` put segment 0 of each journal, then
re-sent the same ``PutObject`` (412: it exists) and two ``HEAD`` of that key for 15 minutes:
the state was written after the put, but the loop went on from the position it had, trying the
same start again and again. The code that did it was a mutant: a mutation run had rewritten
``shipper.py`` in place while that test imported it (its log also shows segments sent before
their blobs, which the shipper never does). This test gives the shipper the same fault.
The guard: a segment start is tried at most once per journal and pass; a second try is the
journal's error naming the journal and the key, and the next (sound) pass ships it whole.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from formula_foundry.tracking import load_config
from formula_foundry.tracking.ingest.objects import open_objects
from formula_foundry.tracking.ingest.ship.shipper import Shipper
from formula_foundry.tracking.ingest.ship.state import ShipState
from tests.ship import Remote, cli, make_runs, shipped_name

HOST = "node-g"


@pytest.fixture(params=["s3", "folder"])
def dest(request, tmp_path, moto_s3) -> Remote:  # moto_s3 named here: the session's server pool starts it
    if request.param == "folder":
        root = tmp_path / "share"
        root.mkdir()
        return Remote(str(root))
    return Remote(request.getfixturevalue("s3_uri"), s3=moto_s3)


def test_a_chain_that_does_not_move_is_an_error_naming_the_key_not_a_loop(project, dest, monkeypatch):
    journals = make_runs(project, runs=2, metrics=100, artifacts=1)
    # The fault of the hang: the segment is put and its state written, and the loop is handed back
    # the entry it had (its position still at the segment's start).
    real_put_segment = Shipper._put_segment

    def stuck(self, path, entry, pos, end, js):
        real_put_segment(self, path, entry, pos, end, js)
        return entry

    monkeypatch.setattr(Shipper, "_put_segment", stuck)
    objects = open_objects(dest.dest)
    puts: Counter[str] = Counter()
    real_put_new = objects.put_new

    def counted(key: str, data: bytes) -> bool:
        puts[key] += 1
        return real_put_new(key, data)

    objects.put_new = counted
    deadline = time.monotonic() + 10  # without the guard: stop the spin here, and fail below
    cfg = load_config(project / "config" / "mlflow.yaml")
    state = ShipState.for_destination(cfg.ingest.state_dir, objects)  # the one ``ff-ingest ship`` uses
    try:
        with state, Shipper(objects, state, host=HOST, roots=cfg.journal_roots,
                            blob_roots=(cfg.journal.artifact_store,),
                            should_stop=lambda: time.monotonic() > deadline) as shipper:
            report = shipper.ship_pass()
    finally:
        objects.close()
    assert not report.stopped and time.monotonic() < deadline, "the pass spun until it was stopped"
    segment_puts = {key: n for key, n in puts.items() if key.endswith(".seg")}
    # one put of each journal's segment 0; the second try is refused before it is sent
    assert len(segment_puts) == 2 and set(segment_puts.values()) == {1}, segment_puts
    assert {j.state for j in report.journals} == {"error"}
    for js in report.journals:
        key = f"journals/{shipped_name(project, Path(js.path), HOST)}/{0:020d}.seg"
        assert js.journal_id in js.error and key in js.error, js.error
        assert "already tried in this pass" in js.error
    monkeypatch.setattr(Shipper, "_put_segment", real_put_segment)
    # A sound pass continues from the state the faulty one wrote: every journal arrives whole, no error left.
    assert cli(project, "ship", "--to", dest.dest, "--host", HOST, "-q") == 0
    for journal in journals:
        assert dest.journal_bytes(shipped_name(project, journal, HOST)) == journal.read_bytes()
