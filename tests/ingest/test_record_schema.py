"""The record schema (``ingest/schema.py``): every record type checked before anything reaches a store. Pure."""

from __future__ import annotations

import math
import random

import pytest

from formula_foundry.tracking.framing import frame, unframe
from formula_foundry.tracking.ingest.plan import BatchBuilder
from formula_foundry.tracking.ingest.schema import RecordChecker, RecordSchemaError, check_record
from formula_foundry.tracking.journal import JournalReader, ReadPosition
from tests.conftest import imported_names
from tests.ingest import tracker

TS = 1_763_913_600_000
RID = "a" * 32


def rec(type_: str, seq: int = 3, **fields) -> dict:
    return {"v": 1, "seq": seq, "ts": TS + seq, "type": type_, **fields}


def refused(record: dict, **checker) -> RecordSchemaError:
    with pytest.raises(RecordSchemaError) as info:
        RecordChecker(**checker).check(record)
    return info.value


def test_the_pure_core_imports_no_mlflow():
    """The schema is pure: no MLflow, no I/O modules."""
    import formula_foundry.tracking.ingest.schema as schema

    assert not [n for n in imported_names(schema) if n.split(".")[0] in ("mlflow", "sqlalchemy", "os", "pathlib")]


@pytest.mark.parametrize("record, field", [
    (rec("metric", value=1.0, step=0), "key"),
    (rec("metric", key="loss", value=[1.0], step=0), "value"),
    (rec("metric", key="loss", value={"a": 1}, step=0), "value"),
    (rec("metric", key="loss", value="nan", step=0), "value"),
    (rec("metric", key="loss", value=True, step=0), "value"),
    (rec("metric", key="loss", step=0), "value"),
    (rec("tags", values=["a", "b"]), "values"),
    (rec("tags", values={"a": 1}), "values['a']"),
    (rec("metric", key=7, value=1.0, step=0), "key"),
    (rec("metric", key="a\x00b", value=1.0, step=0), "key"),
    (rec("metric", key="loss", value=1.0, step=float(2**70)), "step"),
    (rec("metric", key="loss", value=1.0, step=2**63), "step"),
    (rec("metric", key="loss", value=1.0, step=True), "step"),
    (rec("metric", key="loss", value=1.0, step=0, mts=-1), "mts"),
    (rec("metric", key="loss", value=1.0, step=0, mts="1763913600000"), "mts"),
    ({**rec("metric", key="loss", value=1.0, step=0), "ts": "1763913600000"}, "ts"),
    (rec("metrics", values={"loss": "Infinity", "acc": "inf"}, step=0), "values['acc']"),
    (rec("param", key="lr", value=0.1), "value"),
    (rec("param", key="lr", value="x" * 6001), "value"),
    (rec("tag", key="t", value="a\x00b"), "value"),
    (rec("params", values={"../x": "1"}), "values"),
    (rec("artifact_ref", logical_path="a\x00b", digest="0" * 64, size_bytes=1), "logical_path"),
    (rec("artifact_ref", logical_path="a//b", digest="0" * 64, size_bytes=1), "logical_path"),
    (rec("artifact_ref", logical_path="%2e%2e/b", digest="0" * 64, size_bytes=1), "logical_path"),
    (rec("artifact_ref", logical_path="a", digest="md5:00", size_bytes=1), "digest"),
    (rec("artifact_ref", logical_path="a", digest="0" * 64, size_bytes=10**19), "size_bytes"),
    (rec("manifest", manifest=["a"]), "manifest"),
    (rec("run_end", status="DONE"), "status"),
    (rec("run_end", status="FAILED", error=3), "error"),
    (rec("run_start", seq=0, run_id=RID, journal_id="j", parent_run_id=RID), "parent_run_id"),
    (rec("run_start", seq=0, run_id="not-hex", journal_id="j"), "run_id"),
    (rec("run_start", seq=0, run_id=RID, journal_id="j", tags="a=b"), "tags"),
    (rec("run_start", seq=0, run_id=RID, journal_id="j", experiment="e\x00"), "experiment"),
    (rec("run_attach", seq=0, run_id=RID), "journal_id"),
])
def test_each_wrong_shape_is_refused_naming_its_member(record, field):
    """The shapes of issue 14 (and their siblings): refused with the member (and key) named."""
    error = refused(record)
    assert error.field == field
    assert field.split("[")[0] in str(error) and record["type"] in str(error)


def test_order_rules():
    """One header, first; nothing after the end record; run_end only in an owning journal."""
    start = rec("run_start", seq=0, run_id=RID, journal_id="j")
    checker = RecordChecker(header="run_start")
    checker.check(start)
    checker.check(rec("metric", seq=1, key="a", value=1.0, step=0))
    assert "second header" in str(refused(rec("run_start", seq=2, run_id=RID, journal_id="j"), header="run_start"))
    assert "segment" in str(refused(rec("run_end", seq=2, status="FINISHED"), header="run_attach"))
    assert "run_end" in str(refused(rec("segment_end", seq=2), header="run_start"))
    checker.check(rec("run_end", seq=2, status="FINISHED"))
    with pytest.raises(RecordSchemaError, match="after the journal's end record"):
        checker.check(rec("metric", seq=3, key="a", value=1.0, step=0))
    assert "after" in str(refused(rec("tag", seq=5, key="a", value="b"), header="run_start", ended=True))


def test_valid_records_pass_and_extra_members_are_ignored():
    """Optional members may be absent; unknown members are ignored (forward compatibility)."""
    for record in (rec("metric", key="loss", value=-0.0, step=-5, mts=0, future=[1]),
                   rec("metric", key="loss", value=3), rec("metrics", values={"a": "NaN", "b": 1}, step=2),
                   rec("artifact_ref", logical_path="a/b c/100%.txt", digest="0" * 64, size_bytes=0),
                   rec("run_end", status="KILLED", error=None), rec("segment_end"),
                   rec("run_start", seq=0, run_id=RID, journal_id="j", run_name=None, experiment=None, tags=None)):
        check_record(record)


# --------------------------------------------------------------------------- generated: a real journal, mutated

_BAD_VALUES = [None, True, False, 0, -1, 1.5, float(2**70), 2**63, 2**64 - 1, -(2**63), "", "x", "nan", "NaN",
               "Infinity", "a\x00b", "../x", "a//b", "k" * 300, [], [1.0], {}, {"a": 1}, {"a": "b"}, {"a\x00": "b"}]


def _real_records(tmp_path) -> list[dict]:
    """Every record type the producer writes, from a real Tracker run (and a segment of it)."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "mlflow.yaml").write_text("tracking: {}\n")
    t = tracker(tmp_path)
    with t.start_run("gen", experiment_name="gen", manifest={"git_sha": "abc", "seeds": {"python": 1}},
                     tags={"stage": "fit"}, description="d") as run:
        run.log_param("lr", 0.1)
        run.log_params({"bs": 32, "opt": "adam"})
        run.set_tag("t", "v")
        run.set_tags({"a": "1", "b": "2"})
        run.log_metric("loss", 0.5, step=1)
        run.log_metric("loss", float("nan"), step=2, timestamp=TS)
        run.log_metrics({"a": 1.0, "b": float("-inf")}, step=3, timestamp=TS)
        run.log_artifact_reference("out/model.bin", "ab" * 32, 12, store_uri="file:///s", media_type="x/y")
        run.log_manifest({"git_sha": "def"})
        with t.start_run("child", nested=True) as child:
            child.log_metric("c", 1.0)
    with t.attach_run(run.run_id) as segment:
        segment.log_metric("rank1", 2.0, step=4)
    records = []
    for path in sorted((tmp_path / "data" / "runs").glob("*/tracking/*.jsonl")):
        records += list(JournalReader(path).records())
    assert {r["type"] for r in records} == {"run_start", "run_attach", "param", "params", "tag", "tags", "metric",
                                            "metrics", "manifest", "artifact_ref", "run_end", "segment_end"}
    return records


def _mutate(record: dict, rng: random.Random) -> dict:
    out = dict(record)
    members = [k for k in out if k not in ("v", "seq", "type")]  # the envelope's v/seq/type are the reader's
    if not members:
        out["extra"] = rng.choice(_BAD_VALUES)
        return out
    name = rng.choice(members)
    action = rng.random()
    if action < 0.25:
        del out[name]
    elif action < 0.45 and isinstance(out[name], dict) and out[name]:
        inner = dict(out[name])
        key = rng.choice(list(inner))
        if rng.random() < 0.5:
            inner[key] = rng.choice(_BAD_VALUES)
        else:
            inner[rng.choice(["", "a\x00b", "../x", "k" * 300, "a b", "mlflow.x"])] = inner.pop(key)
        out[name] = inner
    else:
        out[name] = rng.choice(_BAD_VALUES)
    return out


def _reframed(record: dict) -> dict | None:
    """The record as a reader gets it from a line with a valid checksum (None: JSON cannot hold it)."""
    try:
        line = frame(record)
    except TypeError:  # an int beyond 64 bits: orjson refuses; a hand-made journal would hold a float
        return None
    return unframe(line[:-1])


def _store_safe(record: dict) -> None:
    """What MLflow's SQL stores (SQLite, PostgreSQL) take without error or silent change: the batch the
    builder makes of an accepted record, checked with MLflow's own validators plus BIGINT and NUL rules."""
    from mlflow.utils.validation import _validate_metric, _validate_param, _validate_tag

    builder = BatchBuilder()
    batches = builder.add(record, ReadPosition(100, 2, record["seq"] + 1))
    tail = builder.flush()
    for batch in batches + ([tail] if tail else []):
        for key, value, timestamp, step in batch.metrics:
            _validate_metric(key, value, timestamp, step)
            assert type(value) is float and type(timestamp) is int and type(step) is int
            assert 0 <= timestamp < 2**63 and -(2**63) <= step < 2**63 and "\x00" not in key
        for key, value in batch.params.items():
            _validate_param(key, value)
            assert len(value) <= 6000 and "\x00" not in key + value
        for key, value in batch.tags.items():
            _validate_tag(key, value)
            assert len(value) <= 8000 and "\x00" not in key + value
        for path in batch.artifacts:
            assert "\x00" not in path and "//" not in path and "/../" not in f"/{path}/"
        if batch.end:
            assert batch.end[0] in ("FINISHED", "FAILED", "KILLED") and type(batch.end[1]) is int


def test_generated_mutations_never_crash_and_never_pass_what_the_store_refuses(tmp_path):
    """Records of every type from a real journal, mutated at random (missing members, wrong types, bools
    for ints, huge ints, NaN strings, NUL, bad keys) and re-framed with a valid checksum: the checker
    raises nothing but RecordSchemaError, and a record it accepts makes batches that MLflow's own
    validators, BIGINT and NUL rules accept. The list-level metric check never accepts what the
    record-by-record check refuses. Bounded: a fixed seed, 4000 mutants."""
    originals = _real_records(tmp_path)
    for record in originals:
        check_record(record)
        _store_safe(record)
    rng = random.Random(14)
    accepted = refused_count = 0
    metrics_pool: list[dict] = []
    for _ in range(4000):
        mutant = _reframed(_mutate(rng.choice(originals), rng))
        if mutant is None:
            continue
        try:
            check_record(mutant)
        except RecordSchemaError:
            refused_count += 1
        else:
            accepted += 1
            _store_safe(mutant)
        if mutant["type"] == "metric":
            metrics_pool.append(mutant)
    assert accepted > 100 and refused_count > 1000
    good = [r for r in originals if r["type"] == "metric"]
    for _ in range(300):
        part = [rng.choice(good) for _ in range(rng.randrange(1, 6))]
        if rng.random() < 0.7:
            part.insert(rng.randrange(len(part) + 1), rng.choice(metrics_pool))
        points = RecordChecker().metric_points(part)
        verdicts = []
        for record in part:
            try:
                check_record(record)
                verdicts.append(True)
            except RecordSchemaError:
                verdicts.append(False)
        if points is not None:
            assert all(verdicts), part
            expected = [(r["key"], float(r["value"]) if type(r["value"]) is not str else
                         {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[r["value"]],
                         r.get("mts", r["ts"]), r.get("step", 0)) for r in part]
            assert [(k, repr(v), t, s) for k, v, t, s in points] == [(k, repr(v), t, s) for k, v, t, s in expected]
        first_bad = RecordChecker().first_bad(part)
        assert (first_bad is None) == all(verdicts)
