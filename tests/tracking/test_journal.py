"""Journal files: the writer (locked, flushed, recoverable) and the streaming reader."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from formula_foundry.errors import (
    CorruptRecordError,
    JournalError,
    JournalLockedError,
    RunStateError,
    UnsupportedVersionError,
    ValidationError,
)
from formula_foundry.tracking import get_tracker
from formula_foundry.tracking.events import TYPES, decode_metric_value
from formula_foundry.tracking.framing import frame, unframe
import formula_foundry.tracking.journal as journal_module
from formula_foundry.tracking.journal import MAX_LINE_BYTES, JournalReader, JournalWriter, ReadPosition
from tests.conftest import subprocess_env

RUN_ID = "0123456789abcdef0123456789abcdef"

# One record of every type, with the members docs/journal-format.md lists.
EVERY_TYPE: list[tuple[str, dict]] = [
    ("run_start", {"run_id": RUN_ID, "journal_id": "0123456789abcdef", "experiment": "ff-m2-simulation",
                   "run_name": "sim-001", "parent_run_id": None, "tags": {"ff.run_id": RUN_ID},
                   "host": "node1", "pid": 1234}),
    ("param", {"key": "coupon_family", "value": "F1_SINGLE_ENDED_VIA"}),
    ("params", {"values": {"a": "1", "b": "two"}}),
    ("tag", {"key": "status", "value": "success"}),
    ("tags", {"values": {"x": "1", "y": ""}}),
    ("metric", {"key": "loss", "value": 0.25, "step": 3}),
    ("metric", {"key": "loss", "value": "NaN", "step": 4, "mts": 1763913600000}),
    ("metrics", {"values": {"a": 1.0, "b": "-Infinity"}, "step": 5}),
    ("manifest", {"manifest": {"git_sha": "unknown", "seeds": {"python": 42}, "manifest_version": 1}}),
    ("artifact_ref", {"logical_path": "coupon.kicad_pcb", "digest": "ab" * 32, "size_bytes": 12,
                      "store_uri": None, "media_type": None}),
    ("artifact", {"path": "plots/s21.png", "digest": "cd" * 32, "size_bytes": 2048,
                  "store_uri": "file:///srv/project/data/artifacts", "media_type": "image/png"}),
    ("console", {"stream": "stdout", "text": "solver: converged after 12 iterations\n"}),
    ("tag_delete", {"key": "obsolete"}),
    ("inputs", {"datasets": [{"name": "coupons", "digest": "1a2b3c", "source_type": "local",
                              "source": "{\"uri\": \"data/coupons.csv\"}", "schema": None, "profile": None,
                              "tags": {"mlflow.data.context": "training"}}]}),
    ("run_attach", {"run_id": RUN_ID, "journal_id": "fedcba9876543210", "host": "node2", "pid": 99}),
    ("segment_end", {}),
    ("run_end", {"status": "FAILED", "error": "RuntimeError: boom"}),
]


def _write(path: Path, items=EVERY_TYPE, **options) -> list[int]:
    writer = JournalWriter(path, fsync="never", **options)
    try:
        return [writer.append(type_, dict(fields)) for type_, fields in items]
    finally:
        writer.close()


def _line_ends(data: bytes) -> list[int]:
    return [i + 1 for i, byte in enumerate(data) if byte == 0x0A]


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    path = tmp_path / "tracking" / "j.jsonl"
    _write(path)
    return path


# --------------------------------------------------------------------------- round trips

def test_every_record_type_round_trips(journal: Path):
    """Each record type comes back with its members, envelope v/seq/ts/type added, crc removed."""
    assert {type_ for type_, _ in EVERY_TYPE} == TYPES
    records = list(JournalReader(journal).records())
    assert len(records) == len(EVERY_TYPE)
    for seq, (record, (type_, fields)) in enumerate(zip(records, EVERY_TYPE)):
        assert record["v"] == 1 and record["seq"] == seq and record["type"] == type_
        assert isinstance(record["ts"], int) and record["ts"] > 1_600_000_000_000
        assert "crc" not in record
        assert {k: v for k, v in record.items() if k not in ("v", "seq", "ts", "type")} == fields


def test_special_floats_round_trip_exactly(in_project: Path):
    """NaN, +inf, -inf, -0.0 and the float extremes survive log_metric -> journal -> reader."""
    values = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, 0.1 + 0.2, -1e-300]
    with get_tracker().start_run(run_name="floats") as run:
        for step, value in enumerate(values):
            run.log_metric("x", value, step=step)
        run.log_metrics({"n": math.nan, "p": math.inf, "m": -math.inf}, step=99)
    records = list(JournalReader(run.journal_path).records())
    got = [decode_metric_value(r["value"]) for r in records if r["type"] == "metric"]
    assert math.isnan(got[0])
    assert got[1:] == values[1:]
    assert math.copysign(1.0, got[3]) == -1.0  # -0.0 keeps its sign
    (batch,) = [r for r in records if r["type"] == "metrics"]
    assert batch["values"] == {"n": "NaN", "p": "Infinity", "m": "-Infinity"}


def test_awkward_strings_round_trip_exactly(in_project: Path):
    """Unicode (astral, combining, RTL), newlines, quotes, backslashes and controls come back unchanged."""
    texts = ["日本語 🚀 é\u0301 \u05e9\u05dc\u05d5\u05dd", "line1\nline2\r\n\tend", 'say "hi" \\ \'q\'',
             "\x01\x1f", "\x7f\x1b[0m", '{"v":2}', ',"crc":"00000000"}', ""]
    with get_tracker().start_run(run_name="strings 日本 \"q\"\n") as run:
        for i, text in enumerate(texts):
            run.set_tag(f"t{i}", text)
            run.log_param(f"p{i}", text)
    records = list(JournalReader(run.journal_path).records())
    assert records[0]["run_name"] == "strings 日本 \"q\"\n"
    tags = {r["key"]: r["value"] for r in records if r["type"] == "tag"}
    params = {r["key"]: r["value"] for r in records if r["type"] == "param"}
    assert [tags[f"t{i}"] for i in range(len(texts))] == texts
    assert [params[f"p{i}"] for i in range(len(texts))] == texts
    assert run.journal_path.read_bytes().count(b"\n") == len(records)  # one line per record


# --------------------------------------------------------------------------- torn tails and corruption

def test_truncation_at_every_byte_offset_yields_exactly_the_complete_prefix(journal: Path):
    """Cut the journal at every byte: the reader yields the complete lines, never a wrong record."""
    data = journal.read_bytes()
    full = list(JournalReader(journal).records())
    ends = _line_ends(data)
    for cut in range(len(data), -1, -1):
        os.truncate(journal, cut)
        reader = JournalReader(journal)
        got = list(reader.records())
        complete = sum(1 for end in ends if end <= cut)
        assert got == full[:complete], cut
        assert reader.pending_bytes == cut - (ends[complete - 1] if complete else 0), cut


def test_torn_tail_is_taken_once_complete(journal: Path):
    """A tail without its newline is pending; once the rest arrives, reading on from the last
    position yields it exactly once."""
    data = journal.read_bytes()
    ends = _line_ends(data)
    cut = ends[4] + 10
    journal.write_bytes(data[:cut])
    reader = JournalReader(journal)
    entries = list(reader.entries())
    assert len(entries) == 5 and reader.pending_bytes == 10
    with open(journal, "ab") as fh:
        fh.write(data[cut:])
    rest = list(reader.entries(entries[-1].end))
    assert [e.record["seq"] for e in rest] == list(range(5, len(ends)))
    assert reader.pending_bytes == 0


def test_flipped_byte_in_a_middle_line_is_reported_with_its_place(journal: Path):
    """Any single corrupted byte of line 5: CorruptRecordError names path, line 5 and its offset,
    after the four records before it were yielded."""
    data = journal.read_bytes()
    ends = _line_ends(data)
    start, end = ends[3], ends[4]  # line 5 (1-based), its "\n" included
    for pos in range(start, end):
        journal.write_bytes(data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1:])
        seen = []
        with pytest.raises(CorruptRecordError) as info:
            for record in JournalReader(journal).records():
                seen.append(record["seq"])
        assert seen == [0, 1, 2, 3], pos
        err = info.value
        assert (err.path, err.line, err.offset) == (journal, 5, start), pos
        assert f"{journal}:5 (byte offset {start})" in str(err)


def test_skip_corrupt_resumes_after_the_bad_line(journal: Path):
    """skip_corrupt=True: the bad line goes to on_skip, every other record is yielded."""
    data = bytearray(journal.read_bytes())
    ends = _line_ends(bytes(data))
    data[ends[3] + 20] ^= 0x04
    journal.write_bytes(bytes(data))
    skipped: list[CorruptRecordError] = []
    seqs = [e.record["seq"] for e in JournalReader(journal).entries(skip_corrupt=True, on_skip=skipped.append)]
    assert seqs == [s for s in range(len(ends)) if s != 4]
    assert len(skipped) == 1 and skipped[0].line == 5 and skipped[0].offset == ends[3]


def test_sequence_gap_is_detected(journal: Path):
    """A missing line (seq 3 deleted) is reported at the record after the gap."""
    data = journal.read_bytes()
    ends = _line_ends(data)
    journal.write_bytes(data[:ends[2]] + data[ends[3]:])
    with pytest.raises(CorruptRecordError, match="sequence gap: expected seq 3, found 4") as info:
        list(JournalReader(journal).records())
    assert info.value.line == 4 and info.value.offset == ends[2]


def test_newer_format_version_is_refused(tmp_path: Path):
    """A record with v: 2 raises UnsupportedVersionError (even with skip_corrupt): never guessed at."""
    path = tmp_path / "j.jsonl"
    _write(path, EVERY_TYPE[:2])
    with open(path, "ab") as fh:
        fh.write(frame({"v": 2, "seq": 2, "ts": 0, "type": "metric", "key": "k", "value": 1.0, "step": 0}))
    seen = []
    with pytest.raises(UnsupportedVersionError, match="version 2"):
        for entry in JournalReader(path).entries(skip_corrupt=True):
            seen.append(entry.record["seq"])
    assert seen == [0, 1]


def test_unknown_members_are_ignored(tmp_path: Path):
    """Forward compatibility: a v1 record with an extra member reads fine, the member kept."""
    path = tmp_path / "j.jsonl"
    path.write_bytes(frame({"v": 1, "seq": 0, "ts": 0, "type": "tag", "key": "k", "value": "v", "new": [1]}))
    assert next(JournalReader(path).records())["new"] == [1]


def test_read_position_resumes_exactly(journal: Path):
    """Reading from any entry's end position yields exactly the records after it, line numbers intact."""
    entries = list(JournalReader(journal).entries())
    for k, entry in enumerate(entries):
        rest = list(JournalReader(journal).entries(entry.end))
        assert [e.record for e in rest] == [e.record for e in entries[k + 1:]]
        assert [(e.offset, e.line) for e in rest] == [(e.offset, e.line) for e in entries[k + 1:]]
    assert entries[0].end == ReadPosition(offset=entries[1].offset, line=2, seq=1)


def test_empty_journal_reads_as_nothing(tmp_path: Path):
    """A journal created but not yet written to (a crash right after open) yields nothing."""
    writer = JournalWriter(tmp_path / "j.jsonl")
    reader = JournalReader(writer.path)
    assert list(reader.records()) == [] and reader.pending_bytes == 0
    assert reader.first_record() is None
    writer.close()


def test_reader_memory_is_flat_in_file_size(tmp_path: Path):
    """A 30 MB journal of 10k large records reads with a traced-memory peak under 20 MB."""
    path = tmp_path / "big.jsonl"
    value = "x" * 3000
    with open(path, "wb") as fh:
        fh.writelines(frame({"v": 1, "seq": i, "ts": 0, "type": "tag", "key": "k", "value": value})
                      for i in range(10_000))
    assert path.stat().st_size > 30_000_000
    reader = JournalReader(path)
    tracemalloc.start()
    try:
        count = sum(1 for _entry in reader.entries())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 10_000
    assert peak < 20_000_000, peak


# Reads a journal in a fresh interpreter and reports its peak RSS growth (KiB) over the read.
RSS_CHILD = r"""
import resource, sys
from formula_foundry.tracking.journal import JournalReader
reader = JournalReader(sys.argv[1])
for _ in zip(range(10), reader.entries()):
    pass  # warm up: chunk buffers, code paths
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
count = sum(1 for _ in reader.entries())
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(count, after - before)
"""


def test_reader_memory_is_flat_in_record_count(tmp_path: Path):
    """~300k records (~35 MB): the reading process's peak RSS grows by less than 20 MB.

    (Peak RSS in a child rather than tracemalloc: tracing 300k records' allocations takes ~20 s.)
    """
    path = tmp_path / "big.jsonl"
    n = 300_000
    with open(path, "wb") as fh:
        fh.writelines(frame({"v": 1, "seq": i, "ts": 1763913600123, "type": "metric", "key": "loss",
                             "value": i * 0.5, "step": i}) for i in range(n))
    assert path.stat().st_size > 30_000_000
    proc = subprocess.run([sys.executable, "-c", RSS_CHILD, str(path)], env=subprocess_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    count, growth_kib = map(int, proc.stdout.split())
    assert count == n
    assert growth_kib < 20 * 1024, growth_kib


# --------------------------------------------------------------------------- writer

def test_threads_logging_to_one_run_write_every_event_once(in_project: Path):
    """8 threads x 5,000 log_metric on one run: valid journal, seq contiguous, each (thread, i) once."""
    threads_n, per_thread = 8, 5_000
    with get_tracker().start_run(run_name="threads") as run:
        barrier = threading.Barrier(threads_n)

        def work(t: int) -> None:
            barrier.wait()
            for i in range(per_thread):
                run.log_metric(f"thread_{t}", float(i), step=i)

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    records = list(JournalReader(run.journal_path).records())  # checks seq contiguity itself
    assert [r["seq"] for r in records] == list(range(len(records)))
    points = [(r["key"], r["step"]) for r in records if r["type"] == "metric"]
    assert len(points) == threads_n * per_thread
    assert set(points) == {(f"thread_{t}", i) for t in range(threads_n) for i in range(per_thread)}
    assert records[-1]["type"] == "run_end"


def test_second_writer_in_same_process_is_refused(tmp_path: Path):
    """One writer per file: a second JournalWriter on the same path raises JournalLockedError."""
    path = tmp_path / "j.jsonl"
    writer = JournalWriter(path)
    writer.append("segment_end", {})
    with pytest.raises(JournalLockedError):
        JournalWriter(path)
    writer.close()
    assert len(list(JournalReader(path).records())) == 1  # the refused opener changed nothing


def test_second_writer_in_another_process_is_refused(tmp_path: Path):
    """Another process gets JournalLockedError, and finds the file flock-ed while its writer lives."""
    path = tmp_path / "j.jsonl"
    writer = JournalWriter(path)
    script = textwrap.dedent(f"""
        import fcntl, os, sys
        from formula_foundry.errors import JournalLockedError
        from formula_foundry.tracking.journal import JournalWriter
        try:
            JournalWriter({str(path)!r})
        except JournalLockedError:
            print("locked-error")
        fd = os.open({str(path)!r}, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            print("flock-free")
        except BlockingIOError:
            print("flock-held")
    """)

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", script], env=subprocess_env(), capture_output=True,
                              text=True, timeout=60, check=False)

    alive = run()
    assert alive.stdout.split() == ["locked-error", "flock-held"], alive.stderr
    writer.close()
    dead = run()
    assert dead.stdout.split() == ["locked-error", "flock-free"], dead.stderr  # a journal is never reopened


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_fsync_policies(tmp_path: Path, monkeypatch, policy: str):
    """always: fsync per append; interval: at most once per interval; never: none. close fsyncs; close twice is fine."""
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd))[1])
    writer = JournalWriter(tmp_path / "j.jsonl", fsync=policy, fsync_interval=3600.0)
    calls.clear()  # opening fsyncs the directory
    for i in range(5):
        writer.append("metric", {"key": "k", "value": float(i), "step": i})
    assert len(calls) == {"always": 5, "interval": 0, "never": 0}[policy]
    writer.close()
    assert len(calls) >= {"always": 6, "interval": 1, "never": 1}[policy]
    writer.close()
    assert writer.closed
    with pytest.raises(RunStateError):
        writer.append("segment_end", {})
    assert len(list(JournalReader(writer.path).records())) == 5


def test_fsync_interval_zero_syncs_every_append(tmp_path: Path, monkeypatch):
    """interval with fsync_interval=0 fsyncs on every append."""
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd))[1])
    writer = JournalWriter(tmp_path / "j.jsonl", fsync="interval", fsync_interval=0.0)
    calls.clear()
    for i in range(3):
        writer.append("segment_end", {})
    assert len(calls) == 3
    writer.close()


def test_invalid_writer_options_are_refused(tmp_path: Path):
    """An unknown fsync policy or on_error choice is a ValueError, and creates no file."""
    with pytest.raises(ValueError, match="fsync policy"):
        JournalWriter(tmp_path / "a.jsonl", fsync="sometimes")
    with pytest.raises(ValueError, match="on_error"):
        JournalWriter(tmp_path / "b.jsonl", on_error="ignore")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("portion", ["whole", "half"])
def test_ctrl_c_during_an_append_keeps_the_journal_consistent(tmp_path: Path, monkeypatch, portion: str):
    """SIGINT arriving while a line is written (whole or half of it on disk when KeyboardInterrupt
    surfaces): the line counts once or not at all, and the next record gets the next seq."""
    monkeypatch.setattr(signal, "signal", signal.signal)  # restore whatever handler pytest had
    signal.signal(signal.SIGINT, signal.default_int_handler)
    writer = JournalWriter(tmp_path / "j.jsonl", fsync="never")
    writer.append("metric", {"key": "k", "value": 0.0, "step": 0})
    real_write = os.write

    def write_then_interrupt(fd: int, data) -> int:
        written = real_write(fd, data if portion == "whole" else data[: len(data) // 2])
        signal.raise_signal(signal.SIGINT)  # the handler raises KeyboardInterrupt right after the syscall
        return written

    monkeypatch.setattr(os, "write", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        writer.append("metric", {"key": "k", "value": 1.0, "step": 1})
    monkeypatch.setattr(os, "write", real_write)
    writer.append("run_end", {"status": "KILLED"})
    writer.close()
    records = list(JournalReader(writer.path).records())
    expected = ["metric", "metric", "run_end"] if portion == "whole" else ["metric", "run_end"]
    assert [r["type"] for r in records] == expected
    assert [r["seq"] for r in records] == list(range(len(expected)))


# A child that hits RLIMIT_FSIZE mid-line: os.write writes part of the line, then fails with EFBIG.
FSIZE_CHILD = r"""
import json, os, resource, signal, sys, warnings
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from formula_foundry.errors import JournalWriteError
from formula_foundry.tracking.journal import JournalWriter

path, mode, break_truncate = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
writer = JournalWriter(path, fsync="never", on_error=mode)
for i in range(5):
    writer.append("metric", {"key": "before", "value": float(i), "step": i})
good_size = os.path.getsize(path)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (good_size + 40, hard))  # room for 40 bytes of a ~90-byte line
if break_truncate:
    def ftruncate(fd, size):
        raise OSError(5, "Input/output error")
    os.ftruncate = ftruncate
out = {"good_size": good_size, "errors": [], "returns": []}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for i in range(3):
        try:
            out["returns"].append(writer.append("metric", {"key": "during", "value": float(i), "step": i}))
        except JournalWriteError as exc:
            out["errors"].append({"errno": exc.errno, "message": str(exc),
                                  "size": os.path.getsize(path)})
out["warnings"] = [str(w.message) for w in caught]
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
out["after"] = writer.append("metric", {"key": "after", "value": 1.0, "step": 0})
writer.close()
print(json.dumps(out))
"""


def _fsize_child(tmp_path: Path, mode: str, break_truncate: bool = False) -> tuple[dict, Path]:
    path = tmp_path / "j.jsonl"
    proc = subprocess.run([sys.executable, "-c", FSIZE_CHILD, str(path), mode, "1" if break_truncate else "0"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), path


def test_failed_write_raises_and_leaves_no_partial_line(tmp_path: Path):
    """EFBIG mid-line (on_error=raise): JournalWriteError each time, the file cut back to whole lines,
    and the next append after the limit is lifted is a clean line with the next seq."""
    out, path = _fsize_child(tmp_path, "raise")
    assert len(out["errors"]) == 3
    for error in out["errors"]:
        assert error["errno"] == 27  # EFBIG
        assert str(path) in error["message"] and "append failed" in error["message"]
        assert error["size"] == out["good_size"]  # no fragment left behind
    assert out["after"] == 5
    records = list(JournalReader(path).records())
    assert [(r["key"], r["seq"]) for r in records] == [("before", i) for i in range(5)] + [("after", 5)]


def test_failed_write_under_warn_warns_once_and_carries_on(tmp_path: Path):
    """on_error=warn: one warning for several failures, the calls return -1, later appends are not glued."""
    out, path = _fsize_child(tmp_path, "warn")
    assert out["errors"] == []
    assert out["returns"] == [-1, -1, -1]
    assert len(out["warnings"]) == 1 and "append failed" in out["warnings"][0]
    assert out["after"] == 5
    records = list(JournalReader(path).records())
    assert [r["key"] for r in records] == ["before"] * 5 + ["after"]


def test_failed_write_that_cannot_be_cut_back_is_fenced_off(tmp_path: Path):
    """If truncating the fragment fails too, the next good line starts on a fresh line: the fragment
    reads as one corrupt line (reported, skippable), never as part of a record."""
    out, path = _fsize_child(tmp_path, "raise", break_truncate=True)
    assert out["errors"] and out["after"] == 5
    skipped: list[CorruptRecordError] = []
    records = [e.record for e in JournalReader(path).entries(skip_corrupt=True, on_skip=skipped.append)]
    assert [(r["key"], r["seq"]) for r in records] == [("before", i) for i in range(5)] + [("after", 5)]
    assert len(skipped) >= 1 and skipped[0].line == 6


def test_forked_child_cannot_log_to_the_parents_run(in_project: Path):
    """After fork, the child's copy of the run refuses to write (RunStateError); the parent goes on."""
    with get_tracker().start_run(run_name="forked") as run:
        run.log_metric("before", 1.0)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then leave without running any cleanup
            os.close(read_end)
            try:
                run.log_metric("from_child", 1.0)
                verdict = b"wrote"
            except RunStateError as exc:
                verdict = b"RunStateError:" + str(exc).encode()[:2000]
            except BaseException as exc:  # noqa: BLE001
                verdict = repr(exc).encode()[:200]
            os.write(write_end, verdict)
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as fh:
            verdict = fh.read()
        os.waitpid(pid, 0)
        run.log_metric("after", 2.0)
    assert verdict.startswith(b"RunStateError:") and b"attach" in verdict
    keys = [r.get("key") for r in JournalReader(run.journal_path).records()]
    assert "from_child" not in keys and keys.count("after") == 1


# --------------------------------------------------------------------------- docs/journal-format.md

FORMAT_DOC = Path(__file__).resolve().parents[2] / "docs" / "journal-format.md"


def test_format_doc_examples_are_valid_lines():
    """Every example line in docs/journal-format.md verifies, and together they cover every record type."""
    lines = [ln for ln in FORMAT_DOC.read_text(encoding="utf-8").splitlines() if ln.startswith('{"v":1,')]
    records = [unframe(ln.encode()) for ln in lines]
    assert all(r["v"] == 1 and isinstance(r["seq"], int) and isinstance(r["ts"], int) for r in records)
    assert {r["type"] for r in records} == TYPES


def test_format_doc_stdlib_checker_agrees_with_the_reader():
    """The standard-library read_line() in the docs accepts the good lines and refuses torn/tampered ones."""
    text = FORMAT_DOC.read_text(encoding="utf-8")
    code = text.split("```python\nimport json\nimport zlib\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec("import json\nimport zlib\n" + code, namespace)  # noqa: S102 - the documented snippet
    read_line = namespace["read_line"]
    for type_, fields in EVERY_TYPE:
        line = frame({"v": 1, "seq": 0, "ts": 1, "type": type_, **fields})
        assert read_line(line) == unframe(line[:-1])
        with pytest.raises(ValueError):
            read_line(line[:-5])
        with pytest.raises(ValueError):
            read_line(line.replace(b'"v":1', b'"v":3'))


# --------------------------------------------------------------------------- special files (issue 14, item 4)

# Reads the journal in a fresh interpreter: a reader that blocks on a FIFO cannot hang the test suite.
READ_CHILD = r"""
import sys
from formula_foundry.errors import JournalError
from formula_foundry.tracking.journal import JournalReader
try:
    print(len(list(JournalReader(sys.argv[1]).entries())))
except JournalError as exc:
    print(f"{type(exc).__name__}: {exc}")
"""


def _special(kind: str, path: Path):
    """Make ``path`` a special file of ``kind``; returns what must stay open while it exists (a socket)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        return sock
    elif kind == "folder":
        path.mkdir()
    elif kind == "device":
        path.symlink_to("/dev/zero")  # endless: read whole, it would never end
    return None


@pytest.mark.parametrize("kind, words", [("fifo", "a FIFO"), ("socket", "a socket"), ("folder", "a folder"),
                                         ("device", "a character device")])
def test_reader_refuses_a_special_file_at_once(tmp_path: Path, kind: str, words: str):
    """A FIFO (no writer), socket, folder or device is refused with JournalError naming it, without waiting."""
    path = tmp_path / "tracking" / "r.j.jsonl"
    held = _special(kind, path)
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-c", READ_CHILD, str(path)], env=subprocess_env(),
                              capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading {kind} did not return within 30 s")
    finally:
        if held is not None:
            held.close()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"JournalError: {path}: not a regular file ({words}): journals are regular files"
    assert time.monotonic() - started < 20


def test_reader_refuses_a_fifo_in_process(tmp_path: Path):
    """The same in process, for every way in: entries(), chunks(), first_record()."""
    path = tmp_path / "r.j.jsonl"
    os.mkfifo(path)
    reader = JournalReader(path)
    for read in (lambda: list(reader.entries()), lambda: list(reader.chunks()), reader.first_record):
        outcome: list[BaseException | None] = []

        def attempt(read=read, outcome=outcome) -> None:
            try:
                read()
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome.append(exc)
            else:
                outcome.append(None)

        thread = threading.Thread(target=attempt, daemon=True)
        thread.start()
        thread.join(10)
        if thread.is_alive():  # blocked in open(): let it go (a writer end opens it), then fail
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(10)
            pytest.fail("reading a FIFO blocked")
        assert isinstance(outcome[0], JournalError) and "not a regular file (a FIFO)" in str(outcome[0])


# --------------------------------------------------------------------------- the line limit (issue 14, item 10)

def _good(seq: int, value: str = "v") -> bytes:
    return frame({"v": 1, "seq": seq, "ts": 0, "type": "tag", "key": "k", "value": value})


@pytest.fixture
def small_limit(monkeypatch):
    """A 1000-byte line limit, with reads of 64 bytes: the limit is crossed in the middle of a read."""
    monkeypatch.setattr(journal_module, "MAX_LINE_BYTES", 1000)
    monkeypatch.setattr(journal_module, "_CHUNK", 64)
    return 1000


def test_max_line_bytes_is_documented_and_above_what_validation_allows():
    """16 MiB, documented, and more than three times the largest record validation bounds (a tags batch)."""
    from formula_foundry.tracking.validation import MAX_BATCH_PARAMS_TAGS, MAX_KEY_LENGTH, MAX_TAG_VALUE_LENGTH

    assert MAX_LINE_BYTES == 16 << 20
    assert MAX_LINE_BYTES > 3 * MAX_BATCH_PARAMS_TAGS * (MAX_KEY_LENGTH + MAX_TAG_VALUE_LENGTH) * 6
    assert f"{MAX_LINE_BYTES:,}" in FORMAT_DOC.read_text(encoding="utf-8")


@pytest.mark.parametrize("complete", [True, False], ids=["complete", "no-newline"])
def test_a_line_over_the_limit_is_corrupt_with_its_place(tmp_path: Path, small_limit: int, complete: bool):
    """A line longer than the limit, ended or not, is a CorruptRecordError naming journal, line and offset,
    after the good records before it."""
    head = _good(0) + _good(1)
    long_line = _good(2, "x" * 2000)
    path = tmp_path / "j.jsonl"
    path.write_bytes(head + (long_line + _good(3) if complete else long_line[:-1]))
    got = []
    with pytest.raises(CorruptRecordError) as caught:
        got.extend(entry.record["seq"] for entry in JournalReader(path).entries())
    assert got == [0, 1]
    assert (caught.value.path, caught.value.line, caught.value.offset) == (path, 3, len(head))
    assert "longer than the limit of 1000 bytes" in str(caught.value)


def test_a_line_at_the_limit_is_read(tmp_path: Path, small_limit: int):
    line = _good(0, "y" * 1000)
    line = _good(0, "y" * (1000 - (len(line) - 1 - 1000)))
    assert len(line) - 1 == small_limit
    path = tmp_path / "j.jsonl"
    path.write_bytes(line + _good(1))
    assert [e.record["seq"] for e in JournalReader(path).entries()] == [0, 1]


def test_skip_corrupt_goes_on_after_a_line_over_the_limit(tmp_path: Path, small_limit: int):
    """With skip_corrupt the long line is reported and skipped; reading resumes at the next line."""
    data = _good(0) + _good(1, "z" * 5000) + _good(2) + _good(3)
    path = tmp_path / "j.jsonl"
    path.write_bytes(data)
    skipped: list[CorruptRecordError] = []
    entries = list(JournalReader(path).entries(skip_corrupt=True, on_skip=skipped.append))
    assert [(e.record["seq"], e.line, e.offset) for e in entries] == [
        (0, 1, 0), (2, 3, len(_good(0) + _good(1, "z" * 5000))), (3, 4, len(data) - len(_good(3)))]
    assert [(e.line, e.offset) for e in skipped] == [(2, len(_good(0)))]
    assert entries[-1].end == ReadPosition(len(data), 5, 4)


def test_skip_corrupt_stops_at_an_unended_line_over_the_limit(tmp_path: Path, small_limit: int):
    """An over-long last line without its newline is reported, and counted as pending bytes, not read past."""
    path = tmp_path / "j.jsonl"
    path.write_bytes(_good(0) + b"w" * 3000)
    skipped: list[CorruptRecordError] = []
    reader = JournalReader(path)
    assert [e.record["seq"] for e in reader.entries(skip_corrupt=True, on_skip=skipped.append)] == [0]
    assert [(e.line, e.offset) for e in skipped] == [(2, len(_good(0)))]
    assert reader.pending_bytes == 3000


def test_writer_refuses_a_record_over_the_line_limit(tmp_path: Path):
    """The writer never writes a line the reader would refuse: ValidationError, nothing written, seq unchanged."""
    path = tmp_path / "j.jsonl"
    writer = JournalWriter(path, fsync="never")
    try:
        writer.append("tag", {"key": "a", "value": "b"})
        with pytest.raises(ValidationError) as caught:
            writer.append("tag", {"key": "big", "value": "x" * MAX_LINE_BYTES})
        assert caught.value.rule == "line-length"
        assert writer.append("tag", {"key": "c", "value": "d"}) == 1
    finally:
        writer.close()
    assert [e.record["key"] for e in JournalReader(path).entries()] == ["a", "c"]


# Reads a journal with a 200 MB line in a fresh interpreter; prints what it read, the error's place and
# the peak RSS growth (KiB) over the read.
LONG_LINE_CHILD = r"""
import resource, sys
from formula_foundry.errors import CorruptRecordError
from formula_foundry.tracking.journal import JournalReader
path, skip = sys.argv[1], sys.argv[2] == "skip"
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
seqs, errors = [], []
try:
    for entry in JournalReader(path).entries(skip_corrupt=skip, on_skip=errors.append):
        seqs.append(entry.record["seq"])
except CorruptRecordError as exc:
    errors.append(exc)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(seqs, [(e.line, e.offset) for e in errors], after - before)
"""


@pytest.mark.parametrize("ended", [False, True], ids=["no-newline", "ended-then-records"])
def test_a_200_mb_line_is_refused_in_bounded_memory(tmp_path: Path, ended: bool):
    """A 200 MB line: an error at its line and offset after at most the limit was read into memory (the
    process grows by well under 200 MB, let alone the 400 MB a join of the pieces would cost); with
    skip_corrupt the records after an ended one are read."""
    path = tmp_path / "j.jsonl"
    head = _good(0) + _good(1)
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(len(head) + 200_000_000)  # 200 MB of NUL bytes, sparse: cheap to make, costly to hold
        if ended:
            fh.seek(0, os.SEEK_END)
            fh.write(b"\n" + _good(3))
    proc = subprocess.run([sys.executable, "-c", LONG_LINE_CHILD, str(path), "skip" if ended else "raise"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    seqs, errors, growth_kib = proc.stdout.rsplit(" ", 1)[0], None, int(proc.stdout.split()[-1])
    assert seqs == ("[0, 1, 3] [(3, %d)]" % len(head) if ended else "[0, 1] [(3, %d)]" % len(head)), proc.stdout
    assert growth_kib < 3 * MAX_LINE_BYTES // 1024, growth_kib  # 48 MiB; a 200 MB line held once is 195,000 KiB
