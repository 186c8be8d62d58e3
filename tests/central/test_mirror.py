"""The central mirror (``ship/mirror.py``) of a shipped folder: byte-exact, incremental, repaired after a
kill, blobs verified. Journals come from the real producer, shipped by ``ff-ingest ship``."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from formula_foundry.tracking.ingest.objects import open_objects
from formula_foundry.tracking.ingest.ship.mirror import Mirror, mirror_of
from tests.central import child_env, machine, produce, ship


def _setup(tmp_path: Path, *, runs: int = 1, metrics: int = 30, segment_bytes: int | None = None):
    share = tmp_path / "share"
    share.mkdir()
    host = machine(tmp_path / "node-1")
    produce(host, "mirror", runs=runs, metrics=metrics)
    extra = ("--segment-bytes", str(segment_bytes)) if segment_bytes else ()
    assert ship(host, str(share), *extra) == 0
    return share, host


def _journals(host: Path) -> dict[str, bytes]:
    root = host / "data" / "runs"
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.jsonl")}


def _mirrored(mirror: Mirror, host: str) -> dict[str, bytes]:
    root = mirror.journal_root / host
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.jsonl")}


def test_mirror_is_byte_exact_and_incremental(tmp_path):
    """Every journal equals the host's; blobs land in an ArtifactStore layout; a second sync fetches
    nothing; after more runs are shipped, only their segments (and blobs) are fetched."""
    share, host = _setup(tmp_path, runs=2, metrics=300, segment_bytes=4000)
    with open_objects(str(share)) as objects:
        mirror = Mirror.open(objects, tmp_path / "state")
        first = mirror.sync()
        assert first.problems == [] and first.journals == 4 and first.segments > 4 and first.blobs == 2
        assert _mirrored(mirror, host.name) == _journals(host)
        assert mirror_of(mirror.journal_root).source == objects.display_uri
        for blob in (host / "data" / "artifacts" / "objects" / "sha256").rglob("*"):
            if blob.is_file():
                assert mirror.blobs.path_for(blob.name).read_bytes() == blob.read_bytes()
        assert mirror.sync().segments == 0

        produce(host, "mirror", runs=1, metrics=20, tag="b")
        assert ship(host, str(share)) == 0
        more = mirror.sync()
        assert more.segments == 2 and more.blobs == 1 and more.journals == 6  # two new journals
        assert _mirrored(mirror, host.name) == _journals(host)
        assert mirror.backlog().unmirrored_bytes == 0


def test_a_sync_killed_anywhere_is_completed_by_the_next(tmp_path):
    """SIGKILL a sync (a child process) at random points, five times; the next sync repairs any torn
    write and the mirror ends byte-exact."""
    share, host = _setup(tmp_path, metrics=40_000, segment_bytes=20_000)
    state = tmp_path / "state"
    code = (f"from formula_foundry.tracking.ingest.objects import open_objects\n"
            f"from formula_foundry.tracking.ingest.ship.mirror import Mirror\n"
            f"mirror = Mirror.open(open_objects({str(share)!r}), __import__('pathlib').Path({str(state)!r}))\n"
            f"print('go', flush=True)\n"
            f"mirror.sync()\n")
    rng = random.Random(17)
    killed = 0
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", code], env=child_env(), stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "go\n"
        time.sleep(rng.uniform(0.0, 0.08))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
    assert killed  # at least one kill landed mid-sync
    with open_objects(str(share)) as objects:
        mirror = Mirror.open(objects, state)
        report = mirror.sync()
        assert report.problems == []
        assert _mirrored(mirror, host.name) == _journals(host)


def test_a_torn_local_write_is_rewritten_from_its_segment_start(tmp_path):
    """A mirror file cut inside a segment (a torn write of a killed sync) is repaired by rewriting
    that segment from its start."""
    share, _host = _setup(tmp_path, metrics=400, segment_bytes=5000)
    with open_objects(str(share)) as objects:
        mirror = Mirror.open(objects, tmp_path / "state")
        mirror.sync()
        big = max(mirror.journal_root.rglob("*.jsonl"), key=lambda p: p.stat().st_size)
        whole = big.read_bytes()
        with open(big, "r+b") as fh:
            fh.truncate(7_500)  # in the second segment
        report = mirror.sync()
        assert report.repaired == 1 and report.segments >= 2 and big.read_bytes() == whole


def test_blobs_are_verified_and_gaps_reported(tmp_path):
    """A blob whose bytes do not hash to its digest is not mirrored (reported); a missing blob and a
    missing segment are reported, and the journal is mirrored up to the gap only."""
    share, host = _setup(tmp_path, runs=2, metrics=400, segment_bytes=5000)
    blobs = sorted(p for p in (share / "blobs").rglob("*") if p.is_file())
    assert len(blobs) == 2
    os.chmod(blobs[0], 0o644)
    blobs[0].write_bytes(b"tampered")
    blobs[1].unlink()
    with open_objects(str(share)) as objects:
        report = Mirror.open(objects, tmp_path / "state").sync()
        text = "\n".join(report.problems)
        assert "hashing to sha256" in text and blobs[0].name in text
        assert "is not in" in text and blobs[1].name in text
        mirror = Mirror.open(objects, tmp_path / "state")
        assert not mirror.blobs.exists(blobs[0].name) and not mirror.blobs.exists(blobs[1].name)
        assert _mirrored(mirror, host.name) == _journals(host)  # the journals themselves arrive

        segments = sorted(max((p.parent for p in (share / "journals").rglob("*.seg")),
                              key=lambda d: len(list(d.iterdir()))).iterdir())
        segments[1].unlink()
        gap = Mirror.open(objects, tmp_path / "state-2")
        report = gap.sync()
    assert "no segment starts at byte" in "\n".join(report.problems)
    cut = gap.journal_root / host.name / segments[0].parent.relative_to(share / "journals" / host.name)
    assert cut.stat().st_size == segments[0].stat().st_size  # up to the gap
