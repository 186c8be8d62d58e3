"""``ff-ingest`` into a real MLflow SQLite store: the round trip, idempotency and journal damage.

Journals come from the real producer (:class:`~formula_foundry.tracking.Tracker`); what
landed is read back through ``MlflowClient`` / ``mlflow.search_runs`` and, for whole-store
comparisons, through :func:`tests.ingest.dump_store` (every row of every table a user sees).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import orjson
import pytest

from formula_foundry.substrate import ArtifactStore, DeterminismConfig, Manifest, create_run
from formula_foundry.tracking.framing import frame
from formula_foundry.tracking.journal import JournalReader
from tests.conftest import mlflow_client
from tests.ingest import (
    artifact_files,
    child_env,
    diff_dumps,
    dump_store,
    ingest,
    ingest_json,
    journals_of,
    reference_project,
    store_db,
    tracker,
)

pytestmark = pytest.mark.usefixtures("_quiet_mlflow")

GIT_SHA = "0123456789abcdef0123456789abcdef01234567"
MTS = 1_700_000_000_000
BLOB = b"model weights \x00\x01" * 4096  # 64 KiB: must never be copied into MLflow


@pytest.fixture
def _quiet_mlflow(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("FF_GIT_SHA", GIT_SHA)


def records_of(path: Path) -> list[dict]:
    return list(JournalReader(path).records())


# --------------------------------------------------------------------------- the producer

ORPHAN = textwrap.dedent("""
    import os, sys
    from formula_foundry.tracking import Tracker, load_config
    run = Tracker(load_config(sys.argv[1])).start_run("orphan")
    run.log_metric("m", 1.0, step=0)
    run.log_param("p", "v")
    os._exit(0)  # the producer dies: no run_end
""")


def produce_everything(project: Path) -> dict:
    """Every event type, through the real Tracker: a parent run with manifest and run_artifacts,
    children ending FINISHED / FAILED / KILLED, and (in a subprocess that dies) a RUNNING run."""
    t = tracker(project)
    store = ArtifactStore(project / "data" / "store")
    entry = store.add_bytes(BLOB, logical_path="outputs/model.bin")
    manifest = Manifest.from_environment(DeterminismConfig(seed=7, seeds={"python": 7, "numpy": 8}))
    ra = create_run(project / "data" / "runs", manifest=manifest)
    with t.start_run("parent", experiment_name="ingest-exp", manifest=manifest, run_artifacts=ra,
                     tags={"team": "ff"}, description="the parent") as run:
        run.log_param("lr", 0.001)
        run.log_params({"batch_size": 32, "optimizer": "adam"})
        run.log_param("lr", 0.001)  # same value again: a no-op
        run.log_metric("loss", 0.5, step=1, timestamp=MTS)
        run.log_metric("loss", 0.25, step=2)
        run.log_metric("loss", float("nan"), step=3)
        run.log_metric("grad", float("inf"), step=3)
        run.log_metric("grad", float("-inf"), step=4)
        run.log_metrics({"acc": 0.9, "f1": 0.75}, step=5, timestamp=MTS + 5)
        run.set_tag("phase", "train")
        run.set_tags({"phase": "done", "note": "x"})
        run.log_artifact_reference(entry.path, entry.digest, entry.size_bytes, store_uri=entry.uri,
                                   media_type="application/octet-stream")
        with t.start_run("child-ok", experiment_name="ingest-exp", nested=True) as ok:
            ok.log_metric("x", 1.0, step=0)
        with pytest.raises(ValueError), t.start_run("child-failed", experiment_name="ingest-exp",
                                                    nested=True) as failed:
            raise ValueError("boom")
        with pytest.raises(KeyboardInterrupt), t.start_run("child-killed", experiment_name="ingest-exp",
                                                           nested=True) as killed:
            raise KeyboardInterrupt
    subprocess.run([sys.executable, "-c", ORPHAN, str(project / "config" / "mlflow.yaml")], check=True,
                   env=child_env(), timeout=60)
    orphan = next(p for p in journals_of(project) if records_of(p)[0].get("run_name") == "orphan")
    return {"parent": run, "ok": ok, "failed": failed, "killed": killed, "orphan": orphan, "ra": ra,
            "entry": entry, "manifest": manifest}


@pytest.fixture
def everything(store_project: Path) -> tuple[Path, dict]:
    return store_project, produce_everything(store_project)


def run_by_ff_id(client, ff_id: str):
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.`ff.run_id` = '{ff_id}'")
    assert len(runs) == 1, f"{len(runs)} runs for {ff_id}"
    return runs[0]


# --------------------------------------------------------------------------- round trip

def test_round_trip_of_every_event_type(everything, monkeypatch):
    """Everything the producer logged is in MLflow as seed 001 says: experiment by name, run names,
    params, metric values/steps/timestamps, tags (last value), manifest and substrate tags, nested
    parents, statuses, start/end times equal to the journal's timestamps."""
    project, made = everything
    assert ingest(project) == 0
    client = mlflow_client(project)
    exp = client.get_experiment_by_name("ingest-exp")
    assert exp is not None and exp.lifecycle_stage == "active"
    assert client.get_experiment_by_name("formula-foundry") is not None  # the default experiment

    parent = run_by_ff_id(client, made["parent"].run_id)
    journal = records_of(made["parent"].journal_path)
    assert parent.info.experiment_id == exp.experiment_id
    assert parent.info.run_name == "parent"
    assert parent.info.status == "FINISHED"
    assert parent.info.start_time == journal[0]["ts"]
    assert parent.info.end_time == journal[-1]["ts"] and journal[-1]["type"] == "run_end"
    assert parent.data.params == {"lr": "0.001", "batch_size": "32", "optimizer": "adam"}

    tags = parent.data.tags
    assert tags["ff.run_id"] == made["parent"].run_id
    assert tags["phase"] == "done" and tags["note"] == "x" and tags["team"] == "ff"
    assert tags["mlflow.note.content"] == "the parent"
    assert tags["mlflow.runName"] == "parent"
    assert "mlflow.parentRunId" not in tags
    m = made["manifest"]
    assert tags["git_sha"] == GIT_SHA == m.git_sha
    assert tags["mlflow.source.git.commit"] == GIT_SHA
    assert tags["design_doc_sha256"] == m.design_doc_sha256
    assert tags["environment_fingerprint"] == m.environment_fingerprint
    assert tags["determinism_mode"] == "strict"
    assert tags["seed_python"] == "7" and tags["seed_numpy"] == "8"
    assert tags["substrate_run_id"] == made["ra"].run_id
    assert tags["substrate_run_dir"] == str(made["ra"].run_dir.resolve())

    loss = sorted(client.get_metric_history(parent.info.run_id, "loss"), key=lambda x: x.step)
    metric_ts = [r["ts"] for r in journal if r["type"] == "metric" and r["key"] == "loss"]
    assert [(x.step, x.timestamp) for x in loss] == [(1, MTS), (2, metric_ts[1]), (3, metric_ts[2])]
    assert loss[0].value == 0.5 and loss[1].value == 0.25 and math.isnan(loss[2].value)
    assert {(x.key, x.value, x.step, x.timestamp) for key in ("acc", "f1")
            for x in client.get_metric_history(parent.info.run_id, key)} == {
        ("acc", 0.9, 5, MTS + 5), ("f1", 0.75, 5, MTS + 5)}

    children = {c: run_by_ff_id(client, made[c].run_id) for c in ("ok", "failed", "killed")}
    assert {c: r.info.status for c, r in children.items()} == {
        "ok": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
    for c, r in children.items():
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        records = records_of(made[c].journal_path)
        assert (r.info.start_time, r.info.end_time) == (records[0]["ts"], records[-1]["ts"])
    assert children["failed"].data.tags["ff.run_error"] == "ValueError: boom"
    assert children["killed"].data.tags["ff.run_error"] == "KeyboardInterrupt"

    # the same through mlflow.search_runs (what a notebook user calls)
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store_db(project)}")
    df = mlflow.search_runs(experiment_names=["ingest-exp"])
    assert len(df) == 4
    row = df[df["tags.ff.run_id"] == made["parent"].run_id].iloc[0]
    assert row["params.lr"] == "0.001" and row["status"] == "FINISHED" and row["metrics.acc"] == 0.9
    assert set(df["tags.mlflow.parentRunId"].dropna()) == {parent.info.run_id}


def test_running_while_no_end_record(everything):
    """A producer that died without run_end leaves its run RUNNING with no end time; what it logged is in."""
    project, made = everything
    assert ingest(project) == 0
    client = mlflow_client(project)
    header = records_of(made["orphan"])[0]
    run = run_by_ff_id(client, header["run_id"])
    assert run.info.status == "RUNNING" and run.info.end_time is None
    assert run.info.start_time == header["ts"]
    assert run.data.params == {"p": "v"} and run.data.metrics == {"m": 1.0}
    assert client.get_experiment(run.info.experiment_id).name == "formula-foundry"


def test_infinities_saturate_in_mlflow_but_the_journal_keeps_them(everything):
    """MLflow's SQL store saturates ±inf to ±sys.float_info.max (NaN stays NaN); the journal still
    carries the exact values."""
    project, made = everything
    assert ingest(project) == 0
    client = mlflow_client(project)
    run = run_by_ff_id(client, made["parent"].run_id)
    grad = sorted(client.get_metric_history(run.info.run_id, "grad"), key=lambda x: x.step)
    assert [x.value for x in grad] == [sys.float_info.max, -sys.float_info.max]
    assert run.data.metrics["grad"] == -sys.float_info.max  # latest (step 4)
    journal = [r for r in records_of(made["parent"].journal_path) if r.get("key") in ("grad", "loss")]
    assert [r["value"] for r in journal if r["key"] == "grad"] == ["Infinity", "-Infinity"]
    assert "NaN" in [r["value"] for r in journal if r["key"] == "loss"]


def test_artifact_reference_is_a_small_json_file_not_a_copy(everything):
    """The reference becomes ``artifact_refs/<logical path>.json`` in the run's artifact location under
    the configured artifact root, holding logical path, digest, size and store location; the 64 KiB
    artifact itself is nowhere in MLflow's artifacts. The manifest is ``manifest.json``."""
    project, made = everything
    assert ingest(project) == 0
    client = mlflow_client(project)
    run = run_by_ff_id(client, made["parent"].run_id)
    root = (project / "data" / "mlflow" / "artifacts").resolve()
    assert run.info.artifact_uri.startswith(root.as_uri())
    files = artifact_files(run.info.artifact_uri)
    assert set(files) == {"manifest.json", "artifact_refs/outputs/model.bin.json"}
    entry = made["entry"]
    doc = json.loads(files["artifact_refs/outputs/model.bin.json"])
    assert doc["logical_path"] == "outputs/model.bin"
    assert doc["digest"] == {"algorithm": "sha256", "value": entry.digest}
    assert doc["size_bytes"] == len(BLOB) == entry.size_bytes
    assert doc["store_uri"] == entry.uri and Path(entry.uri.removeprefix("file://")).read_bytes() == BLOB
    assert doc["media_type"] == "application/octet-stream"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "artifact_refs/outputs")] == [
        "artifact_refs/outputs/model.bin.json"]
    every_file = [p for p in root.rglob("*") if p.is_file()]
    assert all(len(p.read_bytes()) < 8192 and BLOB[:64] not in p.read_bytes() for p in every_file)
    assert orjson.loads(files["manifest.json"]) == made["manifest"].to_dict()


# --------------------------------------------------------------------------- idempotency

def test_replay_twice_gives_identical_tables(everything, capsys):
    """A second ingest of the same journals changes no row of any table (runs, params, tags, every
    metric history row, latest metrics) and no artifact byte, and reports nothing new."""
    project, _ = everything
    assert ingest(project) == 0
    first = dump_store(project)
    code, summary = ingest_json(project, capsys)
    assert code == 0 and summary["records"] == 0 and summary["runs_created"] == 0
    assert diff_dumps(first, dump_store(project)) == []
    assert len(first) == 5 and sum(len(r["history"]) for r in first.values()) == 9


def test_checkpoints_lost_then_replay_gives_identical_tables(everything, capsys):
    """The checkpoint folder deleted: replay finds every run again by its ``ff.run_id`` tag, creates
    none, and the store stays identical (no duplicate run, no duplicate metric row)."""
    project, _ = everything
    assert ingest(project) == 0
    first = dump_store(project)
    shutil.rmtree(project / "data" / "mlflow" / "ingest")
    code, summary = ingest_json(project, capsys)
    assert code == 0 and summary["runs_created"] == 0 and summary["runs_updated"] == 5
    assert summary["records"] == sum(len(records_of(p)) for p in journals_of(project))
    assert diff_dumps(first, dump_store(project)) == []


def test_reference_store_from_the_same_journals_is_identical(everything, tmp_path, template_store):
    """Two clean ingests of the same journals into two stores agree row for row (including the name
    of an unnamed run: derived from its id, not MLflow's random name)."""
    project, _ = everything
    t = tracker(project)
    with t.start_run(experiment_name="ingest-exp") as unnamed:
        unnamed.log_metric("u", 1.0)
    ref = reference_project(tmp_path, project, template_store)
    assert ingest(project) == 0 and ingest(ref) == 0
    mine, theirs = dump_store(project), dump_store(ref)
    assert diff_dumps(mine, theirs) == []
    assert mine[unnamed.run_id]["name"] == f"run-{unnamed.run_id[:8]}"


# --------------------------------------------------------------------------- journal damage

def two_runs(project: Path, n: int = 20):
    t = tracker(project)
    runs = []
    for name in ("damaged", "healthy"):
        with t.start_run(name, experiment_name="damage") as run:
            for i in range(n):
                run.log_metric("m", float(i), step=i)
        runs.append(run)
    return runs


def line_offsets(path: Path) -> list[int]:
    data = path.read_bytes()
    offsets, pos = [], 0
    for line in data.splitlines(keepends=True):
        offsets.append(pos)
        pos += len(line)
    return offsets


def steps(client, run) -> list[int]:
    mid = run_by_ff_id(client, run.run_id).info.run_id
    return sorted(x.step for x in client.get_metric_history(mid, "m"))


def test_torn_tail_is_pending_then_ingested(store_project, capsys):
    """An incomplete last line: exit 0, reported pending (bytes), the complete records are in; once the
    line is complete the next ingest takes it."""
    damaged, _ = two_runs(store_project)
    path = damaged.journal_path
    whole = path.read_bytes()
    last_line_at = line_offsets(path)[-1]
    path.write_bytes(whole[:last_line_at + 10])  # run_end cut in the middle
    code, summary = ingest_json(store_project, capsys)
    assert code == 0 and summary["errors"] == 0 and summary["pending"] == 1
    detail = next(d for d in summary["details"] if d["path"] == str(path))
    assert detail["pending_bytes"] == 10 and detail["errors"] == []
    client = mlflow_client(store_project)
    assert run_by_ff_id(client, damaged.run_id).info.status == "RUNNING"
    assert steps(client, damaged) == list(range(20))
    path.write_bytes(whole)
    code, summary = ingest_json(store_project, capsys)
    assert code == 0 and summary["pending"] == 0 and summary["records"] == 1
    assert run_by_ff_id(client, damaged.run_id).info.status == "FINISHED"


def corrupt_line(path: Path, line_no: int) -> int:
    """Flip one character of line ``line_no`` (1-based) inside a value; returns the line's offset."""
    data = bytearray(path.read_bytes())
    offset = line_offsets(path)[line_no - 1]
    i = data.index(b'"value":', offset) + len(b'"value":')
    data[i] = ord("7") if data[i] != ord("7") else ord("8")
    path.write_bytes(bytes(data))
    return offset


def test_corrupt_middle_record_stops_that_journal_only(store_project, capsys):
    """A checksum failure on line 8: that journal stops right before it (lines 1-7 ingested), the error
    names journal, line and byte offset, exit 1; the other journal is fully ingested. A rerun reports
    the same and changes nothing."""
    damaged, healthy = two_runs(store_project)
    offset = corrupt_line(damaged.journal_path, 8)  # metric step 6 (line 1 is run_start)
    code, summary = ingest_json(store_project, capsys)
    assert code == 1 and summary["errors"] == 1
    (bad,) = [d for d in summary["details"] if d["errors"]]
    assert bad["path"] == str(damaged.journal_path) and bad["state"] == "error"
    message = bad["errors"][0]
    assert f"{damaged.journal_path}:8 " in message and f"byte offset {offset}" in message
    assert "checksum" in message
    client = mlflow_client(store_project)
    assert steps(client, damaged) == list(range(6))
    assert run_by_ff_id(client, damaged.run_id).info.status == "RUNNING"
    assert steps(client, healthy) == list(range(20))
    assert run_by_ff_id(client, healthy.run_id).info.status == "FINISHED"
    before = dump_store(store_project)
    assert ingest(store_project) == 1
    assert diff_dumps(before, dump_store(store_project)) == []
    capsys.readouterr()
    assert ingest(store_project) == 1
    assert f"{damaged.journal_path}:8 (byte offset {offset})" in capsys.readouterr().err


def test_skip_corrupt_passes_over_the_bad_line_and_reports_it(store_project, capsys):
    """``--skip-corrupt``: the corrupt line is skipped and reported (journal, line, offset), everything
    after it is ingested, exit 0; later plain ingests are clean."""
    damaged, _ = two_runs(store_project)
    offset = corrupt_line(damaged.journal_path, 8)
    assert ingest(store_project) == 1
    code, summary = ingest_json(store_project, capsys, "--skip-corrupt")
    assert code == 0 and summary["errors"] == 0
    (detail,) = [d for d in summary["details"] if d["path"] == str(damaged.journal_path)]
    assert len(detail["warnings"]) == 1
    assert "--skip-corrupt" in detail["warnings"][0] and f":8 (byte offset {offset})" in detail["warnings"][0]
    client = mlflow_client(store_project)
    assert steps(client, damaged) == [s for s in range(20) if s != 6]
    assert run_by_ff_id(client, damaged.run_id).info.status == "FINISHED"
    assert ingest(store_project) == 0


def remove_line(path: Path, line_no: int) -> int:
    data = path.read_bytes()
    offsets = line_offsets(path)
    path.write_bytes(data[:offsets[line_no - 1]] + data[offsets[line_no]:])
    return offsets[line_no - 1]


def test_sequence_gap_stops_that_journal(store_project, capsys):
    """A missing line (seq 6 gone): the journal stops at the gap, named with line and offset, exit 1."""
    damaged, healthy = two_runs(store_project)
    offset = remove_line(damaged.journal_path, 7)  # seq 6 = metric step 5
    code, summary = ingest_json(store_project, capsys)
    assert code == 1
    (bad,) = [d for d in summary["details"] if d["errors"]]
    assert "sequence gap: expected seq 6, found 7" in bad["errors"][0]
    assert f"{damaged.journal_path}:7 (byte offset {offset})" in bad["errors"][0]
    client = mlflow_client(store_project)
    assert steps(client, damaged) == list(range(5))
    assert steps(client, healthy) == list(range(20))


def test_skip_corrupt_over_a_gap_keeps_the_record_after_it(store_project):
    """A gap is not a bad line: ``--skip-corrupt`` should resume *at* the record after the gap (its
    checksum is fine), losing only what is really missing."""
    damaged, _ = two_runs(store_project)
    remove_line(damaged.journal_path, 7)
    assert ingest(store_project, "--skip-corrupt") == 0
    assert steps(mlflow_client(store_project), damaged) == [s for s in range(20) if s != 5]


def test_newer_format_version_is_refused(store_project, capsys):
    """A journal whose header says ``v: 2`` is refused with a message naming the journal and the
    versions; a v2 record in the middle of a v1 journal stops it there. Exit 1; others go on."""
    damaged, healthy = two_runs(store_project)
    folder = damaged.journal_path.parent
    v2 = folder / f"{'e' * 32}.{'f' * 16}.jsonl"
    v2.write_bytes(frame({"v": 2, "seq": 0, "ts": MTS, "type": "run_start", "run_id": "e" * 32,
                          "journal_id": "f" * 16, "experiment": "x", "run_name": "future", "parent_run_id": None,
                          "tags": {}}))
    with open(damaged.journal_path, "r+b") as fh:  # replace run_end by a v2 record
        fh.truncate(line_offsets(damaged.journal_path)[-1])
        fh.seek(0, os.SEEK_END)
        fh.write(frame({"v": 2, "seq": 21, "ts": MTS, "type": "metric", "key": "m", "value": 1.0, "step": 99}))
    code, summary = ingest_json(store_project, capsys)
    assert code == 1 and summary["errors"] == 2
    errors = {d["path"]: d["errors"][0] for d in summary["details"] if d["errors"]}
    for path in (v2, damaged.journal_path):
        assert str(path) in errors[str(path)]
        assert "format version 2" in errors[str(path)] and "upgrade formula-foundry" in errors[str(path)]
    client = mlflow_client(store_project)
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string="tags.`ff.run_id` = '" + "e" * 32 + "'")
    assert steps(client, damaged) == list(range(20))
    assert steps(client, healthy) == list(range(20))


def test_mlflow_rejection_names_journal_records_and_reason(store_project, capsys):
    """A batch the store refuses (its run was deleted in MLflow after the first ingest; a record of the
    wrong shape is refused earlier, by the schema: see test_bad_records.py): that journal stops at the
    batch, the error names the journal, the records (seq and lines) and MLflow's reason; exit 1; the
    other journals are ingested."""
    _, healthy = two_runs(store_project)
    doomed = tracker(store_project).start_run("doomed", experiment_name="damage")
    doomed.log_metric("fine", 1.0, step=0)
    assert ingest(store_project) == 0
    client = mlflow_client(store_project)
    client.delete_run(run_by_ff_id(client, doomed.run_id).info.run_id)
    doomed.log_metric("fine", 2.0, step=1)
    doomed.end()
    code, summary = ingest_json(store_project, capsys)
    assert code == 1
    (detail,) = [d for d in summary["details"] if d["errors"]]
    message = detail["errors"][0]
    path = doomed.journal_path
    assert detail["path"] == str(path) and message.startswith(f"{path}: records 2..3 (lines 3..4): ")
    assert "active" in message
    assert steps(client, healthy) == list(range(20))


# --------------------------------------------------------------------------- live journals, size, dry run

PRODUCER = textwrap.dedent("""
    import sys, time
    from formula_foundry.tracking import Tracker, load_config
    t = Tracker(load_config(sys.argv[1]))
    with t.start_run("live", experiment_name="live") as run:
        run.log_params({"a": 1, "b": 2})
        for step in range(400):
            run.log_metric("loss", 1.0 / (step + 1), step=step)
            run.log_metrics({"acc": step / 400, "f1": float("nan") if step % 50 == 0 else 0.5}, step=step)
            if step % 40 == 0:
                run.set_tag("phase", f"epoch-{step // 40}")
            if step == 200:
                run.log_metrics({f"k{i}": float(i) for i in range(2500)}, step=step)
            if step % 100 == 0:
                with t.start_run(f"child-{step}", experiment_name="live", nested=True) as child:
                    child.log_metric("x", float(step), step=0)
            time.sleep(0.004)
""")


def test_journal_ingested_while_being_appended_ends_identical(store_project, tmp_path, template_store):
    """A producer subprocess appends (params, metrics, a 2500-key record, tags, nested runs) while
    ff-ingest runs again and again; after the producer ends, one more ingest leaves the store identical
    to a clean ingest of the finished journals."""
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER, str(store_project / "config" / "mlflow.yaml")],
                                env=child_env())
    passes = 0
    try:
        deadline = time.monotonic() + 60
        while not journals_of(store_project) and time.monotonic() < deadline:
            time.sleep(0.02)
        while producer.poll() is None and time.monotonic() < deadline:
            assert ingest(store_project) == 0
            passes += 1
    finally:
        producer.wait(timeout=60)
    assert producer.returncode == 0
    assert passes >= 2, "the producer finished before ff-ingest could overlap with it"
    assert ingest(store_project) == 0
    ref = reference_project(tmp_path, store_project, template_store)
    assert ingest(ref) == 0
    mine, clean = dump_store(store_project), dump_store(ref)
    assert diff_dumps(mine, clean) == []
    live = next(r for r in mine.values() if r["name"] == "live")
    assert len(live["history"]) == 400 * 3 + 2500 and live["status"] == "FINISHED"


def test_20k_metrics_take_at_most_25_log_batch_calls(store_project, capsys):
    """20 000 single-metric records (plus header and end) ingest in ~20 ``log_batch`` calls, not 20 000."""
    t = tracker(store_project)
    with t.start_run("big", experiment_name="big") as run:
        for i in range(20_000):
            run.log_metric("loss", float(i), step=i)
    code, summary = ingest_json(store_project, capsys)
    assert code == 0
    (detail,) = summary["details"]
    assert detail["records"] == 20_002 and 20 <= detail["batches"] <= 25
    client = mlflow_client(store_project)
    mid = run_by_ff_id(client, run.run_id).info.run_id
    assert len(client.get_metric_history(mid, "loss")) == 20_000


def test_dry_run_writes_nothing(project, capsys):
    """``--dry-run`` on a project without a store creates no store (no migration), no checkpoint, no
    folder, and reports what an ingest would do."""
    t = tracker(project)
    with t.start_run("dry", experiment_name="dry") as run:
        run.log_metric("m", 1.0)
    mlflow_dir = project / "data" / "mlflow"
    assert not mlflow_dir.exists()
    before = sorted(p for p in project.rglob("*"))
    code, summary = ingest_json(project, capsys, "--dry-run")
    assert code == 0 and summary["dry_run"] is True
    assert summary["records"] == 3 and summary["runs_created"] == 1
    assert sorted(p for p in project.rglob("*")) == before
    assert not mlflow_dir.exists()


def test_dry_run_on_an_existing_store_changes_nothing(store_project, capsys):
    """After a partial ingest, ``--dry-run`` reports the remaining records and leaves the store, the
    checkpoints and the artifact root byte for byte as they were."""
    t = tracker(store_project)
    with t.start_run("first", experiment_name="dry") as run:
        run.log_metric("m", 1.0)
    assert ingest(store_project) == 0
    with t.start_run("second", experiment_name="dry") as run2:
        run2.log_metric("m", 2.0)
    state = store_project / "data" / "mlflow"
    snapshot = {p: p.read_bytes() for p in state.rglob("*") if p.is_file()}
    code, summary = ingest_json(store_project, capsys, "--dry-run")
    assert code == 0 and summary["records"] == 3 and summary["runs_created"] == 1
    assert {p: p.read_bytes() for p in state.rglob("*") if p.is_file()} == snapshot
    assert ingest(store_project) == 0
    assert run_by_ff_id(mlflow_client(store_project), run2.run_id).info.status == "FINISHED"


# --------------------------------------------------------------------------- a busy store

def test_sqlite_busy_timeout_waits_for_another_writer(store_project):
    """Another connection holds a write lock (``BEGIN IMMEDIATE``) on mlruns.db for 2 s, as an MLflow UI
    or a script could: ff-ingest waits for it and completes with exit 0."""
    t = tracker(store_project)
    with t.start_run("busy", experiment_name="busy") as run:
        run.log_metric("m", 1.0)
    holder = sqlite3.connect(store_db(store_project), isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO experiment_tags (key, value, experiment_id) VALUES ('probe', 'x', '0')")
    released = threading.Event()

    def release() -> None:
        time.sleep(2.0)
        holder.execute("ROLLBACK")
        released.set()

    threading.Thread(target=release, daemon=True).start()
    started = time.monotonic()
    try:
        assert ingest(store_project) == 0
    finally:
        released.wait(10)
        holder.close()
    assert time.monotonic() - started >= 1.0
    assert run_by_ff_id(mlflow_client(store_project), run.run_id).info.status == "FINISHED"
