"""The replay core (``ingest/replay.py``) against the in-memory sink: no MLflow, no threads.

Journals are written with the real framing (``frame``) so that each test picks its own
timestamps and file order; the reader and the batching are the real ones.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from formula_foundry.tracking.framing import frame
from formula_foundry.tracking.ingest.plan import Limits
from formula_foundry.tracking.ingest.replay import Replayer
from tests.ingest.memory_sink import MemorySink

T0 = 1_763_913_600_000
A, B, C = "a" * 32, "b" * 32, "c" * 32


def journal(root: Path, run_id: str, journal_id: str, records: list[tuple[str, dict]], *, ts: int = T0,
            torn: bytes = b"") -> Path:
    """Write ``records`` as a framed journal (seq from 0, ts from ``ts``, +1 ms each)."""
    path = root / run_id[:4] / "tracking" / f"{run_id}.{journal_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.writelines(frame({"v": 1, "seq": seq, "ts": ts + seq, "type": type_, **fields})
                      for seq, (type_, fields) in enumerate(records))
        fh.write(torn)
    return path


def start(run_id: str, journal_id: str, *, name: str | None = None, parent: str | None = None,
          experiment: str = "exp") -> tuple[str, dict]:
    return "run_start", {"run_id": run_id, "journal_id": journal_id, "experiment": experiment, "run_name": name,
                         "parent_run_id": parent, "tags": {"ff.run_id": run_id, "owner": "me"}}


def attach(run_id: str, journal_id: str) -> tuple[str, dict]:
    return "run_attach", {"run_id": run_id, "journal_id": journal_id, "host": "h", "pid": 1}


def metric(key: str, value, step: int) -> tuple[str, dict]:
    return "metric", {"key": key, "value": value, "step": step}


def by_ff_id(sink: MemorySink) -> dict[str, dict]:
    """The sink's runs keyed by producer run id, with the parent as a producer id too."""
    ids = {mid: run["tags"]["ff.run_id"] for mid, run in sink.runs.items()}
    out = {}
    for mid, run in sink.runs.items():
        run = copy.deepcopy(run)
        if "mlflow.parentRunId" in run["tags"]:
            run["tags"]["mlflow.parentRunId"] = ids[run["tags"]["mlflow.parentRunId"]]
        assert ids[mid] not in out, f"two runs for {ids[mid]}"
        out[ids[mid]] = run
    return out


@pytest.fixture
def family(tmp_path: Path) -> list[Path]:
    """A parent with two nested children (one FAILED), artifacts, params, tags and NaN metrics."""
    parent = journal(tmp_path, A, "ja", [
        start(A, "ja", name="parent"),
        ("params", {"values": {"lr": "0.1", "bs": "32"}}),
        *[metric("loss", 1.0 / (i + 1), i) for i in range(30)],
        metric("loss", "NaN", 30),
        ("tag", {"key": "phase", "value": "train"}),
        ("artifact_ref", {"logical_path": "out/m.bin", "digest": "ab" * 32, "size_bytes": 3, "store_uri": None,
                          "media_type": None}),
        ("tag", {"key": "phase", "value": "done"}),
        ("run_end", {"status": "FINISHED"}),
    ])
    child1 = journal(tmp_path, B, "jb", [
        start(B, "jb", name="child-1", parent=A),
        ("metrics", {"values": {f"k{i}": i for i in range(40)}, "step": 0}),
        ("run_end", {"status": "FAILED", "error": "ValueError: boom"}),
    ], ts=T0 + 100)
    child2 = journal(tmp_path, C, "jc", [
        start(C, "jc", parent=A),
        metric("acc", 0.5, 0),
    ], ts=T0 + 200)
    return [parent, child1, child2]


SMALL = Limits(metrics=7, params=2, tags=3, entities=9)  # many batches from small journals


def test_replay_twice_is_identical(family):
    """A second pass over fully ingested journals changes nothing and makes no store call."""
    sink = MemorySink()
    first = Replayer(sink, limits=SMALL).ingest(family)
    assert first.ok and first.runs_created == 3
    snapshot, calls = copy.deepcopy(sink.runs), sink.calls
    second = Replayer(sink, limits=SMALL).ingest(family)
    assert sink.runs == snapshot
    assert second.records == 0 and second.runs_created == 0
    assert {j.state for j in second.journals} == {"up-to-date"}
    # the child without run_end stays open: its journal is re-read, but nothing new is committed
    assert sink.calls == calls


def test_replay_without_checkpoints_finds_the_runs_again(family):
    """Checkpoints lost: the runs are found by their ``ff.run_id`` tag; no duplicate run, same content."""
    sink = MemorySink()
    Replayer(sink, limits=SMALL).ingest(family)
    snapshot = copy.deepcopy(sink.runs)
    sink.checkpoints.rows.clear()
    report = Replayer(sink, limits=SMALL).ingest(family)
    assert report.ok and report.runs_created == 0
    assert sink.runs == snapshot


def test_mapping_of_the_family(family):
    """Names, parents, params, tag last-wins, end status and times, error tag, artifact document."""
    sink = MemorySink()
    Replayer(sink, limits=SMALL).ingest(family)
    runs = by_ff_id(sink)
    assert runs[A]["name"] == "parent" and runs[A]["status"] == "FINISHED"
    assert runs[A]["start_time"] == T0 and runs[A]["end_time"] == T0 + 36
    assert runs[A]["params"] == {"lr": "0.1", "bs": "32"}
    assert runs[A]["tags"]["phase"] == "done"
    assert len(runs[A]["metrics"]) == 31
    assert ("loss", T0 + 32, 30, 0.0, True) in runs[A]["metrics"]
    assert list(runs[A]["artifacts"]) == ["artifact_refs/out/m.bin.json"]
    assert runs[B]["tags"]["mlflow.parentRunId"] == A and runs[B]["status"] == "FAILED"
    assert runs[B]["tags"]["ff.run_error"] == "ValueError: boom"
    assert runs[C]["status"] == "RUNNING" and runs[C]["end_time"] is None
    assert runs[C]["name"] == f"run-{C[:8]}"  # unnamed: stable name, not MLflow's random one


def test_child_journal_first_creates_the_parent_first(tmp_path):
    """The child's journal is listed first and even has the earlier timestamp (another host's clock):
    the parent run is still created first and the child points at it."""
    child = journal(tmp_path, B, "jb", [start(B, "jb", name="child", parent=A), metric("x", 1.0, 0)], ts=T0)
    parent = journal(tmp_path, A, "ja", [start(A, "ja", name="parent"), metric("y", 1.0, 0)], ts=T0 + 5000)
    sink = MemorySink()
    report = Replayer(sink).ingest([child, parent])
    assert report.ok
    assert [run["name"] for run in sink.runs.values()] == ["parent", "child"]
    assert [j.run_id for j in report.journals] == [A, B]
    assert by_ff_id(sink)[B]["tags"]["mlflow.parentRunId"] == A


def test_grandchild_chain_in_reverse_order(tmp_path):
    """Grandchild, child, parent listed in that order: created parent, child, grandchild."""
    g = journal(tmp_path, C, "jc", [start(C, "jc", name="g", parent=B)], ts=T0)
    c = journal(tmp_path, B, "jb", [start(B, "jb", name="c", parent=A)], ts=T0 + 1)
    p = journal(tmp_path, A, "ja", [start(A, "ja", name="p")], ts=T0 + 2)
    sink = MemorySink()
    Replayer(sink).ingest([g, c, p])
    assert [run["name"] for run in sink.runs.values()] == ["p", "c", "g"]
    runs = by_ff_id(sink)
    assert runs[C]["tags"]["mlflow.parentRunId"] == B and runs[B]["tags"]["mlflow.parentRunId"] == A


def test_attach_segment_is_folded_into_the_same_run(tmp_path):
    """A ``run_attach`` segment (another process of the same run), listed before the owner's journal,
    adds to the owner's run: one run, both segments' metrics, the owner's end status."""
    seg = journal(tmp_path, A, "js", [attach(A, "js"), metric("rank1", 1.0, 0), metric("rank1", 2.0, 1),
                                      ("segment_end", {})], ts=T0 - 10)
    own = journal(tmp_path, A, "jo", [start(A, "jo", name="main"), metric("rank0", 1.0, 0),
                                      ("run_end", {"status": "KILLED"})])
    sink = MemorySink()
    report = Replayer(sink).ingest([seg, own])
    assert report.ok and len(sink.runs) == 1
    run = by_ff_id(sink)[A]
    assert {m[0] for m in run["metrics"]} == {"rank0", "rank1"} and len(run["metrics"]) == 3
    assert run["status"] == "KILLED"
    assert {j.state for j in report.journals} == {"ingested"}


def test_waiting_while_the_parent_is_missing(tmp_path):
    """A child whose parent is neither in this pass nor in the store waits (no run, not an error);
    once the parent's journal appears, both are ingested."""
    child = journal(tmp_path, B, "jb", [start(B, "jb", name="child", parent=A), metric("x", 1.0, 0)])
    sink = MemorySink()
    report = Replayer(sink).ingest([child])
    (jr,) = report.journals
    assert jr.state == "waiting" and report.ok and not sink.runs
    assert A in jr.warnings[0]
    parent = journal(tmp_path, A, "ja", [start(A, "ja", name="parent")])
    report = Replayer(sink).ingest([child, parent])
    assert report.ok and {j.state for j in report.journals} == {"ingested"}
    assert by_ff_id(sink)[B]["tags"]["mlflow.parentRunId"] == A


def test_attach_segment_waits_for_its_owner(tmp_path):
    """A segment of a run that is not in the store yet waits; nothing is created for it."""
    seg = journal(tmp_path, A, "js", [attach(A, "js"), metric("x", 1.0, 0)])
    sink = MemorySink()
    (jr,) = Replayer(sink).ingest([seg]).journals
    assert jr.state == "waiting" and not sink.runs


def test_param_conflict_across_segments_is_reported_not_applied(tmp_path):
    """The owner logged lr=0.1, a segment logs lr=0.2: reported (journal, key, both values), the stored
    value stays 0.1, and everything else in the segment is still ingested."""
    own = journal(tmp_path, A, "jo", [start(A, "jo", name="main"), ("param", {"key": "lr", "value": "0.1"})])
    seg = journal(tmp_path, A, "js", [attach(A, "js"), ("params", {"values": {"lr": "0.2", "seed": "1"}}),
                                      ("param", {"key": "lr", "value": "0.1"}), metric("x", 1.0, 0)],
                  ts=T0 + 50)
    sink = MemorySink()
    report = Replayer(sink).ingest([own, seg])
    assert not report.ok
    (bad,) = report.failed
    assert bad.path == seg and len(bad.errors) == 1
    assert "'lr'" in bad.errors[0] and "0.1" in bad.errors[0] and "0.2" in bad.errors[0]
    run = by_ff_id(sink)[A]
    assert run["params"] == {"lr": "0.1", "seed": "1"}
    assert len(run["metrics"]) == 1
    # the conflict was a record of the past: the next pass is clean
    assert Replayer(sink).ingest([own, seg]).ok


def test_torn_tail_is_pending_and_taken_once_complete(tmp_path):
    """An incomplete last line is left for later (pending, not an error), then ingested once whole."""
    line = frame({"v": 1, "seq": 2, "ts": T0 + 2, "type": "metric", "key": "x", "value": 3.0, "step": 2})
    path = journal(tmp_path, A, "ja", [start(A, "ja"), metric("x", 1.0, 0)], torn=line[:25])
    sink = MemorySink()
    report = Replayer(sink).ingest([path])
    (jr,) = report.journals
    assert report.ok and jr.pending_bytes == 25 and jr.records == 2
    with open(path, "ab") as fh:
        fh.write(line[25:])
    (jr,) = Replayer(sink).ingest([path]).journals
    assert jr.records == 1 and jr.pending_bytes == 0
    assert len(by_ff_id(sink)[A]["metrics"]) == 2


def test_big_record_appended_after_a_checkpoint_is_ingested_whole(tmp_path):
    """Regression: a journal ingested, then a 2500-key ``metrics`` record appended (a live run); the
    next pass starts at the checkpoint with that record and must send all 2500 points, not 500."""
    path = journal(tmp_path, A, "ja", [start(A, "ja"), metric("x", 1.0, 0)])
    sink = MemorySink()
    Replayer(sink).ingest([path])
    with open(path, "ab") as fh:
        fh.write(frame({"v": 1, "seq": 2, "ts": T0 + 2, "type": "metrics",
                        "values": {f"k{i}": float(i) for i in range(2500)}, "step": 1}))
    (jr,) = Replayer(sink).ingest([path]).journals
    assert jr.records == 1 and jr.batches == 3
    assert len(by_ff_id(sink)[A]["metrics"]) == 2501


# --------------------------------------------------------------------------- crashes between calls

class Crash(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing in replay can catch it."""


class CrashingSink(MemorySink):
    """Crashes at the n-th store call, before it (``when="before"``) or after it took effect but before
    it returned (``when="after"``: the checkpoint of a commit is then written, or not, per ``cp``)."""

    def __init__(self, n: int, when: str) -> None:
        super().__init__()
        self.n, self.when, self.count = n, when, 0

    def _tick(self) -> bool:
        self.count += 1
        if self.count == self.n and self.when == "before":
            raise Crash
        return self.count == self.n

    def create_run(self, **kwargs):
        hit = self._tick()
        info = super().create_run(**kwargs)
        if hit:
            raise Crash
        return info

    def commit(self, mlflow_run_id, batch, checkpoint):
        hit = self._tick()
        if hit:  # applied, checkpoint not yet durable
            real_put, self.checkpoints.put = self.checkpoints.put, lambda cp: None
            super().commit(mlflow_run_id, batch, checkpoint)
            self.checkpoints.put = real_put
            raise Crash
        super().commit(mlflow_run_id, batch, checkpoint)


def test_crash_between_any_two_store_calls_then_rerun_equals_one_clean_pass(family):
    """For every store call of a whole backfill, crash right before it and right after it (checkpoint
    not yet written), then replay with a fresh replayer: the store equals one clean pass."""
    clean = MemorySink()
    Replayer(clean, limits=SMALL).ingest(family)
    expected = by_ff_id(clean)
    total = clean.calls
    assert total > 10
    for n in range(1, total + 1):
        for when in ("before", "after"):
            sink = CrashingSink(n, when)
            with pytest.raises(Crash):
                Replayer(sink, limits=SMALL).ingest(family)
            sink.n = 0  # no more crashes
            report = Replayer(sink, limits=SMALL).ingest(family)
            assert report.ok, (n, when, [j.errors for j in report.failed])
            assert by_ff_id(sink) == expected, (n, when)
