"""Batching decisions (``ingest/plan.py``): journal records -> ``log_batch``-sized batches. Pure, no I/O."""

from __future__ import annotations

import math

import orjson
import pytest

from formula_foundry.tracking.ingest.plan import (
    ARTIFACT_REFS_DIR,
    MLFLOW_LIMITS,
    BatchBuilder,
    Limits,
    artifact_ref_document,
)
from formula_foundry.tracking.journal import ReadPosition

TS = 1_763_913_600_000


class Feed:
    """Feeds records to a builder with consecutive journal positions, collecting the batches."""

    def __init__(self, builder: BatchBuilder | None = None, start_seq: int = 0) -> None:
        self.builder = builder or BatchBuilder()
        self.seq = start_seq
        self.batches = []
        self.ends: list[ReadPosition] = []  # record boundaries

    def add(self, type_: str, **fields) -> None:
        record = {"v": 1, "seq": self.seq, "ts": fields.pop("ts", TS + self.seq), "type": type_, **fields}
        self.seq += 1
        end = ReadPosition(offset=self.seq * 100, line=self.seq + 1, seq=self.seq)
        self.ends.append(end)
        self.batches.extend(self.builder.add(record, end))

    def finish(self) -> list:
        tail = self.builder.flush()
        if tail is not None:
            self.batches.append(tail)
        return self.batches


def metric(i: int, key: str = "loss", step: int | None = None) -> dict:
    return {"key": key, "value": float(i), "step": i if step is None else step}


def test_1000_metrics_per_batch():
    """2500 single-metric records: batches of exactly 1000, 1000, 500, in journal order."""
    feed = Feed()
    for i in range(2500):
        feed.add("metric", **metric(i))
    batches = feed.finish()
    assert [len(b.metrics) for b in batches] == [1000, 1000, 500]
    assert [m.step for b in batches for m in b.metrics] == list(range(2500))
    assert sum(b.records for b in batches) == 2500
    assert batches[-1].position == feed.ends[-1]


def test_100_params_per_batch():
    """250 distinct params in one ``params`` record: 100, 100, 50 per batch."""
    feed = Feed()
    feed.add("params", values={f"p{i:03d}": str(i) for i in range(250)})
    batches = feed.finish()
    assert [len(b.params) for b in batches] == [100, 100, 50]
    assert {k for b in batches for k in b.params} == {f"p{i:03d}" for i in range(250)}


def test_100_tags_per_batch():
    """250 distinct tags: 100, 100, 50 per batch."""
    feed = Feed()
    for i in range(250):
        feed.add("tag", key=f"t{i:03d}", value="x")
    assert [len(b.tags) for b in feed.finish()] == [100, 100, 50]


def test_1000_entities_per_batch_in_all():
    """Metrics, params and tags together never exceed 1000 entities in one call."""
    feed = Feed()
    for i in range(950):
        feed.add("metric", **metric(i))
    for i in range(90):
        feed.add("param", key=f"p{i}", value="v")
    for i in range(90):
        feed.add("tag", key=f"t{i}", value="v")
    batches = feed.finish()
    assert all(len(b.metrics) + len(b.params) + len(b.tags) <= 1000 for b in batches)
    assert len(batches[0].metrics) + len(batches[0].params) + len(batches[0].tags) == 1000
    assert sum(len(b.metrics) for b in batches) == 950
    assert sum(len(b.params) for b in batches) == 90
    assert sum(len(b.tags) for b in batches) == 90


def test_payload_bytes_limit():
    """Long tag values cut a batch by payload size long before the count limits."""
    feed = Feed(BatchBuilder(Limits(payload_bytes=10_000)))
    for i in range(20):
        feed.add("tag", key=f"t{i}", value="x" * 2000)
    batches = feed.finish()
    assert len(batches) > 1
    assert all(sum(len(k) + len(v) for k, v in b.tags.items()) <= 10_000 for b in batches)
    assert sum(len(b.tags) for b in batches) == 20


def test_one_item_larger_than_the_payload_limit_still_goes_alone():
    """An item bigger than the payload limit is sent in a batch of its own, never dropped or looped on."""
    feed = Feed(BatchBuilder(Limits(payload_bytes=100)))
    feed.add("tag", key="a", value="x" * 500)
    feed.add("tag", key="b", value="y" * 500)
    assert [list(b.tags) for b in feed.finish()] == [["a"], ["b"]]


def test_split_record_checkpoints_only_at_record_boundaries():
    """A ``metrics`` record with 2500 keys is split over three batches; only the batch that completes
    it carries its end position, the earlier parts carry the previous record's end (no advance)."""
    feed = Feed()
    feed.add("run_start", run_id="a" * 32, journal_id="j", experiment="e", run_name=None, parent_run_id=None,
             tags={})
    for i in range(10):
        feed.add("metric", **metric(i))
    feed.add("metrics", values={f"k{i:04d}": float(i) for i in range(2500)}, step=0)
    feed.add("metric", **metric(99))
    batches = feed.finish()
    assert [len(b.metrics) for b in batches] == [1000, 1000, 511]
    boundaries = set(feed.ends)
    assert all(b.position in boundaries for b in batches)
    before_big, after_big = feed.ends[10], feed.ends[11]
    assert [b.position for b in batches] == [before_big, before_big, feed.ends[12]]
    assert [b.records for b in batches] == [11, 0, 2]
    assert after_big not in [b.position for b in batches[:2]]
    keys = [m.key for b in batches for m in b.metrics if m.key.startswith("k")]
    assert keys == [f"k{i:04d}" for i in range(2500)]


def test_split_record_right_after_a_resume_keeps_every_point():
    """Resuming from a checkpoint straight into a 2500-key record: the first parts carry the resume
    position (regression: they had no position and replay dropped them)."""
    start = ReadPosition(offset=4242, line=43, seq=42)
    feed = Feed(BatchBuilder(start=start), start_seq=42)
    feed.add("metrics", values={f"k{i:04d}": float(i) for i in range(2500)}, step=3)
    batches = feed.finish()
    assert [b.position for b in batches] == [start, start, feed.ends[0]]
    assert sum(len(b.metrics) for b in batches) == 2500
    assert [b.records for b in batches] == [0, 0, 1]


def test_in_batch_metric_dedupe_on_mlflow_primary_key():
    """The same (key, timestamp, step, value) twice in a batch is sent once; a different value,
    step or timestamp is a different row."""
    feed = Feed()
    for _ in range(3):
        feed.add("metric", key="loss", value=0.5, step=1, mts=TS)
    feed.add("metric", key="loss", value=0.25, step=1, mts=TS)
    feed.add("metric", key="loss", value=0.5, step=2, mts=TS)
    feed.add("metric", key="loss", value=0.5, step=1, mts=TS + 1)
    (batch,) = feed.finish()
    assert [(m.value, m.step, m.timestamp) for m in batch.metrics] == [
        (0.5, 1, TS), (0.25, 1, TS), (0.5, 2, TS), (0.5, 1, TS + 1)]
    assert batch.records == 6


def test_in_batch_dedupe_of_nan():
    """NaN is not equal to itself, yet two NaN points with the same key/step/timestamp are one row
    in MLflow (stored as value 0, is_nan 1): sent once. A real 0.0 beside it is another row."""
    feed = Feed()
    feed.add("metric", key="loss", value="NaN", step=1, mts=TS)
    feed.add("metric", key="loss", value="NaN", step=1, mts=TS)
    feed.add("metric", key="loss", value=0.0, step=1, mts=TS)
    feed.add("metric", key="loss", value="Infinity", step=1, mts=TS)
    feed.add("metric", key="loss", value="Infinity", step=1, mts=TS)
    (batch,) = feed.finish()
    values = [m.value for m in batch.metrics]
    assert len(values) == 3
    assert math.isnan(values[0]) and values[1] == 0.0 and values[2] == math.inf


def test_dedupe_is_per_batch_only():
    """The seen-set is reset at every cut: a repeat in the next batch is sent (MLflow's key absorbs it)."""
    feed = Feed()
    for i in range(1000):
        feed.add("metric", **metric(i))
    feed.add("metric", **metric(0))
    batches = feed.finish()
    assert [len(b.metrics) for b in batches] == [1000, 1]


def test_tag_last_value_wins_within_a_batch():
    """A tag set three times in one batch is sent once, with the last value, in journal order."""
    feed = Feed()
    feed.add("tag", key="phase", value="warmup")
    feed.add("tag", key="other", value="x")
    feed.add("tags", values={"phase": "train"})
    feed.add("tag", key="phase", value="done")
    (batch,) = feed.finish()
    assert batch.tags == {"other": "x", "phase": "done"}
    assert list(batch.tags) == ["other", "phase"]


def test_param_same_value_twice_is_one_param_other_value_is_a_conflict():
    """Same param value again in a batch: once, no conflict. Another value: the first is kept and the
    conflict is recorded for replay to report."""
    feed = Feed()
    feed.add("param", key="lr", value="0.1")
    feed.add("params", values={"lr": "0.1", "bs": "32"})
    feed.add("param", key="lr", value="0.2")
    (batch,) = feed.finish()
    assert batch.params == {"lr": "0.1", "bs": "32"}
    assert batch.conflicts == [("lr", "0.1", "0.2")]


def test_run_end_closes_the_batch():
    """``run_end`` cuts the batch: it carries the end status and time, and nothing logged after it
    (a later segment) rides in the same batch."""
    feed = Feed()
    feed.add("metric", **metric(1))
    feed.add("run_end", status="FAILED", error="ValueError: boom", ts=TS + 999)
    feed.add("metric", **metric(2))
    batches = feed.finish()
    assert len(batches) == 2
    first = batches[0]
    assert first.end == ("FAILED", TS + 999)
    assert first.closes_journal and first.position == feed.ends[1]
    assert first.tags == {"ff.run_error": "ValueError: boom"}
    assert [m.step for m in batches[1].metrics] == [2]


def test_segment_end_closes_the_journal_without_ending_the_run():
    """``segment_end`` closes its journal's batch but sets no run status."""
    feed = Feed()
    feed.add("metric", **metric(1))
    feed.add("segment_end")
    (batch,) = feed.finish()
    assert batch.closes_journal and batch.end is None


def test_artifact_ref_becomes_a_json_document():
    """``artifact_ref`` -> ``artifact_refs/<logical path>.json`` with logical path, digest, size,
    store location and media type; never the artifact's bytes."""
    digest = "ab" * 32
    feed = Feed()
    feed.add("artifact_ref", logical_path="outputs/model.bin", digest=digest, size_bytes=1234,
             store_uri="file:///store/objects/sha256/ab/" + digest, media_type=None, ts=TS)
    (batch,) = feed.finish()
    assert list(batch.artifacts) == [f"{ARTIFACT_REFS_DIR}/outputs/model.bin.json"]
    doc = orjson.loads(batch.artifacts[f"{ARTIFACT_REFS_DIR}/outputs/model.bin.json"])
    assert doc == {
        "type": "formula_foundry.artifact_reference",
        "logical_path": "outputs/model.bin",
        "digest": {"algorithm": "sha256", "value": digest},
        "size_bytes": 1234,
        "store_uri": "file:///store/objects/sha256/ab/" + digest,
        "media_type": None,
        "logged_at_ms": TS,
    }


def test_artifact_ref_document_is_deterministic():
    """The same record always gives the same bytes (a replay rewrites an identical file)."""
    record = {"v": 1, "seq": 3, "ts": TS, "type": "artifact_ref", "logical_path": "a/b.txt", "digest": "cd" * 32,
              "size_bytes": 7, "store_uri": None, "media_type": "text/plain"}
    assert artifact_ref_document(record) == artifact_ref_document(dict(reversed(list(record.items()))))
    assert artifact_ref_document(record)[1].endswith(b"}\n")


def test_manifest_becomes_manifest_json():
    """``manifest`` -> ``manifest.json`` (sorted keys), alongside the batch's other content."""
    feed = Feed()
    feed.add("manifest", manifest={"git_sha": "abc", "seeds": {"python": 1}})
    (batch,) = feed.finish()
    assert orjson.loads(batch.artifacts["manifest.json"]) == {"git_sha": "abc", "seeds": {"python": 1}}


def test_metric_timestamp_is_the_journals_never_now():
    """A metric without ``mts`` takes the record's ``ts``; with ``mts`` that one (replay-stable keys)."""
    feed = Feed()
    feed.add("metric", key="a", value=1.0, step=0, ts=TS)
    feed.add("metric", key="b", value=1.0, step=0, ts=TS + 5, mts=1_000)
    feed.add("metrics", values={"c": 1.0}, step=0, ts=TS + 7)
    (batch,) = feed.finish()
    assert [(m.key, m.timestamp) for m in batch.metrics] == [("a", TS), ("b", 1_000), ("c", TS + 7)]


# --------------------------------------------------------------------------- add_chunk == add, record by record

def _journal_for_chunks(tmp_path, rng, n: int):
    from formula_foundry.tracking.framing import frame

    lines = []
    last = None
    for seq in range(n):
        kind = rng.choice(["metric"] * 12 + ["metrics", "param", "tag", "artifact_ref"])
        record = {"v": 1, "seq": seq, "ts": TS + seq // 3, "type": kind}
        if kind == "metric":
            if last is not None and rng.random() < 0.1:
                record.update(last)  # a repeated point (same key, value, step and timestamp)
                record["ts"] = TS + (seq - 1) // 3
            else:
                record.update(key=rng.choice(["loss", "acc", "k" * rng.choice([1, 200])]),
                              value=rng.choice([seq * 0.5] * 30 + ["NaN", "-Infinity", 3]), step=seq // 2)
                if rng.random() < 0.05:
                    record["mts"] = TS - seq
            last = {k: record[k] for k in ("key", "value", "step") if k in record}
        elif kind == "metrics":
            record.update(values={f"v{i}": float(i) for i in range(rng.choice([1, 20]))}, step=seq)
        elif kind in ("param", "tag"):
            record.update(key=f"{kind}{rng.randrange(30)}", value=rng.choice(["a", "b" * 300]))
        else:
            record.update(logical_path=f"f{seq}.bin", digest="0" * 64, size_bytes=seq)
        lines.append(frame(record))
    lines.append(frame({"v": 1, "seq": n, "ts": TS + n, "type": "run_end", "status": "FAILED", "error": "boom"}))
    path = tmp_path / "j.jsonl"
    path.write_bytes(b"".join(lines))
    return path


def _shape(batch) -> tuple:
    return (list(map(tuple, batch.metrics)), list(batch.params.items()), list(batch.tags.items()),
            dict(batch.artifacts), batch.end, batch.records, batch.position, batch.closes_journal,
            list(batch.conflicts))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dedupe", [True, False])
@pytest.mark.parametrize("limits", [MLFLOW_LIMITS, Limits(metrics=7, params=3, tags=4, entities=9, payload_bytes=900)],
                         ids=["mlflow", "tiny"])
def test_add_chunk_makes_the_batches_add_makes(tmp_path, monkeypatch, seed, dedupe, limits):
    import random

    import formula_foundry.tracking.journal as journal_module
    from formula_foundry.tracking.journal import JournalReader

    monkeypatch.setattr(journal_module, "_CHUNK", 2048)  # many chunks, runs of metrics across their edges
    path = _journal_for_chunks(tmp_path, random.Random(seed), 1500)
    start = ReadPosition()
    one = BatchBuilder(limits, start=start, dedupe=dedupe)
    by_record = [b for entry in JournalReader(path).entries() for b in one.add(entry.record, entry.end)]
    by_record.append(one.flush())
    many = BatchBuilder(limits, start=start, dedupe=dedupe)
    chunks = list(JournalReader(path).chunks())
    assert len(chunks) > 20 and any(not c.metric_timestamps for c in chunks)
    by_chunk = [b for chunk in chunks for b in many.add_chunk(chunk)]
    by_chunk.append(many.flush())
    assert [_shape(b) for b in by_chunk if b is not None] == [_shape(b) for b in by_record if b is not None]
    assert many.position == one.position
