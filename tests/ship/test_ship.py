"""``ff-ingest ship --to URI``: what arrives, and what never does.

Journals are written by the real producer (real artifacts in the real content-addressed
store); destinations are a real folder and moto's S3 server. What arrived is read back
without the code under test (:class:`tests.ship.Remote`: plain files, raw boto3).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from formula_foundry.tracking.framing import frame
from tests.ship import Remote, cli, cli_json, digests_in, journals_of, make_runs, shipped_name, tracker

HOST = "node-a"


@pytest.fixture(params=["folder", "s3"])
def dest(request, tmp_path) -> Remote:
    if request.param == "folder":
        root = tmp_path / "share"
        root.mkdir()
        return Remote(str(root))
    uri = request.getfixturevalue("s3_uri")
    return Remote(uri, s3=request.getfixturevalue("moto_s3"))


def ship(project: Path, dest: Remote, *args: str) -> int:
    return cli(project, "ship", "--to", dest.dest, "--host", HOST, *args)


def ship_json(project: Path, dest: Remote, capsys, *args: str) -> tuple[int, dict]:
    return cli_json(project, capsys, "ship", "--to", dest.dest, "--host", HOST, *args)


def test_journals_and_blobs_arrive_byte_exact(project, dest, capsys):
    """Each journal is the concatenation of its segments; every blob its records name is there, same bytes."""
    journals = make_runs(project, runs=2, metrics=400, artifacts=3)
    code, out = ship_json(project, dest, capsys, "--segment-bytes", "20000")
    assert code == 0, out
    assert out["totals"]["journals"] == 2 and out["totals"]["errors"] == 0
    assert out["totals"]["segments"] > 2  # a backlog over the cap ships as several segments
    layout = json.loads(dest.get("ff-ship.json"))
    assert (layout["format"], layout["version"], len(layout["id"])) == ("ff-ship", 1, 32)
    for journal in journals:
        data = journal.read_bytes()
        assert dest.journal_bytes(shipped_name(project, journal, HOST)) == data
        for digest in digests_in(data):
            blob = dest.get(f"blobs/sha256/{digest[:2]}/{digest}")
            assert blob == (project / "data" / "artifacts" / "objects" / "sha256" / digest[:2] / digest).read_bytes()
    named = set().union(*(digests_in(j.read_bytes()) for j in journals))
    assert len(named) == 8 and dest.blobs() == named and out["totals"]["blobs"] == 8
    assert all(size <= 20000 for segs in dest.segments().values() for _, size in segs)
    # a second pass sends nothing
    code, again = ship_json(project, dest, capsys)
    assert code == 0 and again["totals"]["segments"] == 0 and again["totals"]["blobs"] == 0


def test_a_torn_tail_is_never_shipped(project, dest):
    """A last line without its newline stays home; once complete, it ships (and only it)."""
    (journal,) = make_runs(project, runs=1, metrics=50, artifacts=0)
    whole = journal.read_bytes()
    last = json.loads(whole.splitlines()[-1])
    line = frame({**last, "seq": last["seq"] + 1, "type": "tag", "key": "k", "value": "v"})
    with open(journal, "ab") as fh:
        fh.write(line[:-9])  # torn: no newline, no checksum
    assert ship(project, dest) == 0
    name = shipped_name(project, journal, HOST)
    assert dest.journal_bytes(name) == whole
    with open(journal, "ab") as fh:
        fh.write(line[-9:])
    assert ship(project, dest) == 0
    assert dest.journal_bytes(name) == whole + line
    assert [start for start, _ in dest.segments()[name]] == [0, len(whole)]


def test_only_the_new_byte_range_travels(project, dest, capsys):
    """More records, ship again: one new segment holding exactly the appended bytes; nothing else is written."""
    t = tracker(project)
    run = t.start_run(run_name="growing")
    for i in range(200):
        run.log_metric("x", i, step=i)
    (journal,) = journals_of(project)
    assert ship(project, dest) == 0
    before = dest.objects()
    size_before = journal.stat().st_size
    for i in range(200, 260):
        run.log_metric("x", i, step=i)
    code, out = ship_json(project, dest, capsys)
    after = dest.objects()
    new = {k: v for k, v in after.items() if k not in before}
    assert code == 0
    assert out["totals"]["segments"] == 1 and out["totals"]["bytes"] == journal.stat().st_size - size_before
    assert list(new.values()) == [journal.stat().st_size - size_before]
    assert all(after[k] == v for k, v in before.items())  # nothing rewritten
    run.end()
    assert ship(project, dest) == 0
    assert dest.journal_bytes(shipped_name(project, journal, HOST)) == journal.read_bytes()


def test_status_numbers(project, dest, capsys):
    """--status: shipped and pending bytes per journal and in total, from the local state; uploads nothing."""
    journals = make_runs(project, runs=2, metrics=100, artifacts=0)
    code, status = cli_json(project, capsys, "ship", "--to", dest.dest, "--status")
    assert code == 0
    assert status["totals"]["pending_bytes"] == sum(j.stat().st_size for j in journals)
    assert {r["state"] for r in status["journals"]} == {"pending"}
    assert dest.objects() == {}  # nothing uploaded, not even the layout file
    assert ship(project, dest) == 0
    with open(journals[0], "ab") as fh:
        fh.write(b'{"v":1,"seq":')  # a tail still being written
    code, status = cli_json(project, capsys, "ship", "--to", dest.dest, "--status")
    rows = {Path(r["path"]).name: r for r in status["journals"]}
    first, second = rows[journals[0].name], rows[journals[1].name]
    assert (first["shipped"], first["pending"], first["state"]) == (journals[0].stat().st_size - 13, 13, "pending")
    assert (second["shipped"], second["pending"], second["state"]) == (journals[1].stat().st_size, 0, "shipped")
    assert status["totals"]["shipped_bytes"] == sum(j.stat().st_size for j in journals) - 13
    assert status["totals"]["pending_bytes"] == 13


def test_a_missing_or_corrupt_blob_is_that_journals_error(project, dest, capsys):
    """The segment stops before the record naming it; the error names journal, line and digest;
    the other journal ships whole; exit 1. Restored, the rest ships."""
    journals = make_runs(project, runs=2, metrics=60, artifacts=2)
    victim = journals[0]
    lines = victim.read_bytes().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if b'"type":"artifact"' in line)
    digest = json.loads(lines[index])["digest"]
    blob = project / "data" / "artifacts" / "objects" / "sha256" / digest[:2] / digest
    saved = blob.read_bytes()
    blob.write_bytes(b"not the bytes")
    code, out = ship_json(project, dest, capsys)
    assert code == 1
    rows = {Path(j["path"]).name: j for j in out["journals"]}
    error = rows[victim.name]["error"]
    assert f"{victim}:{index + 1}" in error and digest in error and "corrupt" in error
    assert dest.journal_bytes(shipped_name(project, victim, HOST)) == b"".join(lines[:index])
    assert dest.journal_bytes(shipped_name(project, journals[1], HOST)) == journals[1].read_bytes()
    assert digest not in dest.blobs()
    blob.unlink()
    code, out = ship_json(project, dest, capsys)
    assert code == 1 and "blob not found" in out["journals"][0]["error"]
    blob.write_bytes(saved)
    assert ship(project, dest) == 0
    assert dest.journal_bytes(shipped_name(project, victim, HOST)) == victim.read_bytes()
    assert digest in dest.blobs()


def test_truncated_or_replaced_journals_are_never_shipped_over(project, dest, capsys):
    journals = make_runs(project, runs=2, metrics=80, artifacts=0)
    assert ship(project, dest) == 0
    shipped = {j: j.read_bytes() for j in journals}
    # truncated below what was shipped
    journals[0].write_bytes(shipped[journals[0]][:100])
    # replaced: same size and more, other bytes before the shipped end
    other = bytearray(shipped[journals[1]])
    other[50:60] = b"XXXXXXXXXX"
    journals[1].write_bytes(bytes(other) + b"more\n")
    code, out = ship_json(project, dest, capsys)
    assert code == 1
    errors = {Path(j["path"]).name: j["error"] for j in out["journals"]}
    assert "truncated" in errors[journals[0].name] and "replaced" in errors[journals[1].name]
    for journal in journals:
        assert dest.journal_bytes(shipped_name(project, journal, HOST)) == shipped[journal]
    code, status = cli_json(project, capsys, "ship", "--to", dest.dest, "--status")
    assert code == 1 and status["totals"]["error"] == 2


def test_lost_local_state_is_rebuilt_from_the_destination(project, dest, capsys):
    """The remote is the truth: without its state the shipper re-sends nothing, then only what is new."""
    t = tracker(project)
    run = t.start_run(run_name="r")
    for i in range(100):
        run.log_metric("x", i, step=i)
    assert ship(project, dest, "--segment-bytes", "3000") == 0
    shutil.rmtree(project / "data" / "mlflow" / "ingest" / "ship")
    before = dest.objects()
    code, out = ship_json(project, dest, capsys)
    assert code == 0 and out["totals"]["segments"] == 0 and dest.objects() == before
    shutil.rmtree(project / "data" / "mlflow" / "ingest" / "ship")
    run.log_metric("x", 1000, step=1000)
    run.end()
    code, out = ship_json(project, dest, capsys)
    (journal,) = journals_of(project)
    assert code == 0 and out["totals"]["segments"] == 1
    assert dest.journal_bytes(shipped_name(project, journal, HOST)) == journal.read_bytes()


def test_a_state_behind_the_destination_continues_after_the_existing_segment(project, dest, capsys):
    """A shipper killed after its put, before its state write: the next one finds the segment and goes on."""
    t = tracker(project)
    run = t.start_run(run_name="r")
    for i in range(50):
        run.log_metric("x", i, step=i)
    assert ship(project, dest) == 0
    state_dir = project / "data" / "mlflow" / "ingest" / "ship"
    saved = {p: p.read_bytes() for p in state_dir.rglob("journals/*.json")}
    for i in range(50, 90):
        run.log_metric("x", i, step=i)
    assert ship(project, dest) == 0
    for path, data in saved.items():  # the state as it was before the second put
        path.write_bytes(data)
    for i in range(90, 120):
        run.log_metric("x", i, step=i)
    run.end()
    code, out = ship_json(project, dest, capsys)
    (journal,) = journals_of(project)
    assert code == 0 and out["totals"]["segments"] == 1
    assert dest.journal_bytes(shipped_name(project, journal, HOST)) == journal.read_bytes()
    assert len(dest.segments()[shipped_name(project, journal, HOST)]) == 3


def test_credentials_never_appear(project, s3_uri, moto_s3, monkeypatch, capsys):
    """A recognisable secret: not in stdout, stderr (debug logging included), --json, --status or state files,
    whether the ship succeeds or the destination is unreachable."""
    secret = "CANARY-secret-5b1e9c0d7a"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    make_runs(project, runs=1, metrics=30, artifacts=1)
    seen = []
    for args in (("--json",), ("--log-level", "debug"), ("--status",), ("--status", "--json")):
        capsys.readouterr()
        assert cli(project, "ship", "--to", s3_uri, *args) == 0
        seen.append(capsys.readouterr())
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    for args in (("--json",), ("--log-level", "debug")):
        assert cli(project, "ship", "--to", s3_uri, *args) == 3
        seen.append(capsys.readouterr())
    text = "".join(c.out + c.err for c in seen)
    assert "shipped" in text and "object store unavailable" in text
    assert secret not in text
    for path in (project / "data" / "mlflow").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_unreachable_destination_exits_3_with_one_line(project, monkeypatch, capsys, tmp_path):
    make_runs(project, runs=1, metrics=10, artifacts=0)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-value")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    capsys.readouterr()
    assert cli(project, "ship", "--to", "s3://bucket/p") == 3
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "s3://bucket/p" in err
    assert cli(project, "ship", "--to", str(tmp_path / "unmounted")) == 3
    assert "no such folder" in capsys.readouterr().err
    code, out = cli_json(project, capsys, "ship", "--to", "s3://bucket/p")
    assert code == 3 and out["error"]["exit_code"] == 3


def test_a_second_shipper_to_one_destination_exits_5(project, tmp_path, capsys):
    from formula_foundry.tracking.ingest.objects import open_objects
    from formula_foundry.tracking.ingest.ship.state import ShipState
    from formula_foundry.tracking import load_config

    (tmp_path / "share").mkdir()
    make_runs(project, runs=1, metrics=10, artifacts=0)
    cfg = load_config(project / "config" / "mlflow.yaml")
    with ShipState.for_destination(cfg.ingest.state_dir, open_objects(str(tmp_path / "share"))):
        capsys.readouterr()
        assert cli(project, "ship", "--to", str(tmp_path / "share") + "/") == 5  # another spelling, one lock
        assert f"pid {os.getpid()}" in capsys.readouterr().err
    assert cli(project, "ship", "--to", str(tmp_path / "share")) == 0


def test_archived_journals_ship_their_plain_bytes(project, dest):
    """A ``.jsonl.gz`` journal (``prune --archive``) ships under its ``.jsonl`` name, decompressed."""
    import gzip

    (journal,) = make_runs(project, runs=1, metrics=40, artifacts=0)
    data = journal.read_bytes()
    with gzip.open(journal.with_name(journal.name + ".gz"), "wb") as fh:
        fh.write(data)
    journal.unlink()
    assert ship(project, dest) == 0
    assert dest.journal_bytes(shipped_name(project, journal, HOST)) == data


def test_a_destination_made_again_gets_everything_again(project, tmp_path, capsys):
    """The local state belongs to one destination (the id in its ff-ship.json): wiped and made again under
    the same name, it receives every journal again, though nothing is new."""
    share = tmp_path / "share"
    share.mkdir()
    dest = Remote(str(share))
    journals = make_runs(project, runs=2, metrics=30, artifacts=1)
    assert ship(project, dest) == 0
    shutil.rmtree(share)
    share.mkdir()
    code, out = ship_json(project, dest, capsys)
    assert code == 0 and out["totals"]["segments"] == 2 and out["totals"]["blobs"] == 2
    for journal in journals:
        assert dest.journal_bytes(shipped_name(project, journal, HOST)) == journal.read_bytes()


def test_a_corrupt_line_stops_that_journal_just_before_it(project, dest, capsys):
    journals = make_runs(project, runs=2, metrics=50, artifacts=0)
    lines = journals[0].read_bytes().splitlines(keepends=True)
    bad = lines[20].replace(b'"loss"', b'"lost"')  # same length, checksum now wrong
    journals[0].write_bytes(b"".join(lines[:20] + [bad] + lines[21:]))
    code, out = ship_json(project, dest, capsys)
    assert code == 1
    error = {Path(j["path"]).name: j["error"] for j in out["journals"]}[journals[0].name]
    assert f"{journals[0]}:21 (byte offset {len(b''.join(lines[:20]))})" in error and "checksum" in error
    assert dest.journal_bytes(shipped_name(project, journals[0], HOST)) == b"".join(lines[:20])
    assert dest.journal_bytes(shipped_name(project, journals[1], HOST)) == journals[1].read_bytes()


def test_a_copied_run_folder_is_not_shipped_twice(project, dest, capsys):
    """A copy of a shipped journal (same journal id, another path, the original still there) is an error;
    the original's remote name stays the only one. Moved instead, it keeps its remote name."""
    (journal,) = make_runs(project, runs=1, metrics=20, artifacts=0)
    assert ship(project, dest) == 0
    run_dir = journal.parent.parent
    copy = run_dir.with_name(run_dir.name + "-copy")
    shutil.copytree(run_dir, copy)
    code, out = ship_json(project, dest, capsys)
    assert code == 1
    (failed,) = [j for j in out["journals"] if j["error"]]
    assert failed["path"].startswith(str(copy)) and "a copy of journal" in failed["error"]
    assert list(dest.segments()) == [shipped_name(project, journal, HOST)]
    shipped = journal.read_bytes()
    shutil.rmtree(run_dir)  # now the "copy" is the journal, moved
    assert ship(project, dest) == 0
    assert dest.journal_bytes(shipped_name(project, journal, HOST)) == shipped
    assert list(dest.segments()) == [shipped_name(project, journal, HOST)]
