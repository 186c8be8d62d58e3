"""Real artifacts at ingest (issue 15): ``artifact`` records become files in the run's artifacts,
uploaded from the content-addressed store byte for byte, exactly once.

Journals are written by the real producer; each file goes into the real
:class:`~formula_foundry.substrate.ArtifactStore` under ``journal.artifact_store`` before its
record names it (:func:`log_blob`). Stores are real MLflow SQLite stores with a local artifact
root; both sinks. The server and S3 round trips are in ``tests/server/test_artifacts_upload.py``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from formula_foundry.substrate import ArtifactStore
from formula_foundry.tracking.ingest.plan import BatchBuilder, Limits
from formula_foundry.tracking.journal import JournalReader, ReadPosition
from tests.conftest import mlflow_client, open_files_under, run_ff_ingest
from tests.ingest import (
    artifact_files,
    child_env,
    diff_dumps,
    dump_store,
    ingest_cmd,
    journals_of,
    reference_project,
    tracker,
)

MIB = 1 << 20
IN_FLIGHT = ".artifact.uploading."  # MLflow's local repository: a file being written


def blob_store(project: Path) -> ArtifactStore:
    """The project's content-addressed store (``journal.artifact_store``, default ``data/artifacts``)."""
    return ArtifactStore(project / "data" / "artifacts")


def log_blob(run, store: ArtifactStore, local_path: Path, artifact_path: str | None = None) -> dict:
    """What ``run.log_artifact(local_path, artifact_path)`` does: the file into the store, then one record."""
    entry = store.add_file(local_path)
    path = f"{artifact_path}/{local_path.name}" if artifact_path else local_path.name
    fields = {"path": path, "digest": entry.digest, "size_bytes": entry.size_bytes,
              "store_uri": store.root.as_uri(), "media_type": None}
    run._append("artifact", fields)
    return fields


def write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def sink_args(sink: str) -> tuple[str, ...]:
    return ("--sink", sink)


def ingest_summary(project: Path, capsys, sink: str = "api", *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = run_ff_ingest(project, *sink_args(sink), "--json", *args)
    return code, json.loads(capsys.readouterr().out)


def run_artifacts(project: Path, run_id: str) -> tuple[Path, dict[str, bytes]]:
    """The local artifact folder of the MLflow run of producer run ``run_id``, and its files."""
    client = mlflow_client(project)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.`ff.run_id` = '{run_id}'")
    assert len(runs) == 1, runs
    uri = runs[0].info.artifact_uri
    return Path(uri.removeprefix("file://")), artifact_files(uri)


def in_flight_files(project: Path) -> list[Path]:
    return [p for p in (project / "data" / "mlflow" / "artifacts").rglob(f"{IN_FLIGHT}*")]


def writing_unnamed(pid: int, project: Path) -> bool:
    """Whether process ``pid`` holds a file without a name open in the artifact location (``O_TMPFILE``: the
    ingester's copy before it is linked under its name); /proc shows it as ``<folder>/#<inode> (deleted)``."""
    return any(target.endswith(" (deleted)") and "/#" in target
               for target in open_files_under(pid, project / "data" / "mlflow" / "artifacts"))


# --------------------------------------------------------------------------- the round trip

@pytest.mark.parametrize("sink", ["api", "bulk"])
def test_round_trip_is_byte_exact(store_project, tmp_path, capsys, sink):
    """Nested paths, an empty file, a 5 MiB file, a file at the root, one path logged twice: every
    file lands at MLflow's path with the producer's bytes (the later of the two), next to the
    metrics; the summary counts the uploads."""
    store = blob_store(store_project)
    src = tmp_path / "src"
    rng = random.Random(15)
    files = {
        "plots/s21.png": rng.randbytes(3000),
        "plots/deep/er/field map.csv": b"x,y\n1,2\n",
        "empty.txt": b"",
        "logs/solver.log": rng.randbytes(5 * MIB),
        "notes.md": "h\u00e9llo \u2713\n".encode(),
    }
    t = tracker(store_project)
    with t.start_run("artifacts", experiment_name="real-artifacts") as run:
        run.log_metric("loss", 0.5, step=0)
        for i, (path, data) in enumerate(files.items()):
            folder, _, name = path.rpartition("/")
            log_blob(run, store, write(src / str(i), name, data), folder or None)
        log_blob(run, store, write(src / "old", "s21.png", b"first version"), "plots")  # replaced below
        log_blob(run, store, write(src / "new", "s21.png", files["plots/s21.png"]), "plots")
        run.log_metric("loss", 0.25, step=1)
    code, summary = ingest_summary(store_project, capsys, sink)
    assert code == 0, summary
    assert summary["uploads"] == len(files) + 2
    assert summary["upload_bytes"] == sum(map(len, files.values())) + len(b"first version") + 3000
    folder, stored = run_artifacts(store_project, run.run_id)
    assert stored == files
    assert in_flight_files(store_project) == []
    history = mlflow_client(store_project).get_metric_history(folder.parent.name, "loss")
    assert [m.value for m in history] == [0.5, 0.25]


def test_reingest_uploads_nothing_and_later_records_only_theirs(store_project, tmp_path, capsys):
    """A second ingest uploads nothing (every artifact file keeps its inode) and the store is the same;
    records appended later upload only their own files."""
    store = blob_store(store_project)
    t = tracker(store_project)
    run = t.start_run("again", experiment_name="real-artifacts")
    for i in range(30):
        log_blob(run, store, write(tmp_path / "a", f"f{i:02d}.bin", os.urandom(1000 + i)), "batch1")
    assert ingest_summary(store_project, capsys)[0] == 0
    folder, first = run_artifacts(store_project, run.run_id)
    inodes = {p: p.stat().st_ino for p in folder.rglob("*") if p.is_file()}
    before = dump_store(store_project)

    code, summary = ingest_summary(store_project, capsys)
    assert (code, summary["uploads"], summary["records"]) == (0, 0, 0)
    assert dump_store(store_project) == before
    assert {p: p.stat().st_ino for p in folder.rglob("*") if p.is_file()} == inodes

    log_blob(run, store, write(tmp_path / "b", "late.bin", b"late"), "batch2")
    run.end()
    code, summary = ingest_summary(store_project, capsys)
    assert (code, summary["uploads"], summary["upload_bytes"]) == (0, 1, 4)
    assert {p: p.stat().st_ino for p in folder.rglob("*") if p.is_file() and p.name != "late.bin"} == inodes
    assert run_artifacts(store_project, run.run_id)[1] == {**first, "batch2/late.bin": b"late"}


def test_uploads_are_cut_into_bounded_batches():
    """At most ``Limits.uploads`` files and ``Limits.upload_bytes`` bytes per batch (a larger file alone),
    so a checkpoint follows every bounded chunk of uploads; every upload names its line."""
    builder = BatchBuilder(Limits(uploads=3, upload_bytes=100), dedupe=False)
    batches = []
    for i, size in enumerate([10, 10, 10, 10, 90, 20, 500, 1]):
        record = {"v": 1, "seq": i, "ts": 1, "type": "artifact", "path": f"f{i}", "digest": "a" * 64,
                  "size_bytes": size, "store_uri": None, "media_type": None}
        batches += builder.add(record, ReadPosition(offset=(i + 1) * 100, line=i + 2, seq=i + 1))
    batches.append(builder.flush())
    assert [[u.size_bytes for u in b.uploads] for b in batches] == [[10, 10, 10], [10, 90], [20], [500], [1]]
    assert [u.line for b in batches for u in b.uploads] == list(range(1, 9))
    assert [b.position.line for b in batches] == [4, 6, 7, 8, 9]


WRITE_WAYS = {"direct": (True, True), "unnamed-file": (True, False), "in-flight-name": (False, False)}


def local_api(project: Path, way: str):
    """An :class:`MlflowApi` on the project's SQLite store that writes local uploads ``way`` (see
    :data:`WRITE_WAYS`): an unnamed file written with ``O_DIRECT``, an unnamed file through the page cache,
    or MLflow's in-flight name; skips where this kernel or file system has no such way."""
    from formula_foundry.tracking.ingest.stores import mlflow_api

    unnamed, direct = WRITE_WAYS[way]
    if unnamed and not mlflow_api._HAS_UNNAMED_FILES:
        pytest.skip("no O_TMPFILE here")
    if direct and not mlflow_api.O_DIRECT:
        pytest.skip("no O_DIRECT here")
    root = project / "data" / "mlflow" / "artifacts"
    api = mlflow_api.MlflowApi(f"sqlite:///{project / 'data' / 'mlflow' / 'mlruns.db'}",
                               artifact_root_uri=root.as_uri())
    api._unnamed_files, api._direct = unnamed, direct
    return api


@pytest.mark.parametrize("way", list(WRITE_WAYS))
def test_local_uploads_of_every_size_around_the_block_and_chunk_edges_are_byte_exact(store_project, way):
    """Sizes around the 4 KiB alignment of direct writes and the 1 MiB read chunk (and 0): every file has
    exactly the blob's bytes and size (no padding left), on each way of writing local uploads."""
    from formula_foundry.tracking.ingest.sink import Upload

    api = local_api(store_project, way)
    store = blob_store(store_project)
    rng = random.Random(4096)
    sizes = (0, 1, 4095, 4096, 4097, 65536 + 7, MIB - 1, MIB, MIB + 1, 3 * MIB + 123)
    files = {f"sizes/{n}.bin": rng.randbytes(n) for n in sizes}
    uploads = []
    for path, data in files.items():
        entry = store.add_bytes(data, logical_path=path)
        uploads.append(Upload(path, entry.digest, entry.size_bytes, store.root.as_uri(), 1))
    run = api.create_run(experiment_id=api.experiment_id("sizes"), run_id=f"sizes-{way}", run_name="sizes",
                         start_time=1, tags={})
    api.upload_files(run.mlflow_run_id, uploads)
    uri = mlflow_client(store_project).get_run(run.mlflow_run_id).info.artifact_uri
    assert artifact_files(uri) == files
    assert api._direct == WRITE_WAYS[way][1]  # the way asked for was the way taken (no silent fallback here)
    assert in_flight_files(store_project) == []


@pytest.mark.parametrize("way", list(WRITE_WAYS))
def test_local_upload_replaces_a_file_whole_and_leaves_nothing_in_flight(store_project, way):
    """Local uploads, every way of writing them (where the kernel has ``O_TMPFILE``: a file without a name,
    written with ``O_DIRECT`` or through the page cache, linked under its name once verified; else MLflow's
    in-flight name, renamed): new paths (on several
    threads), the same paths again (the file replaced whole: a reader of the old one keeps its bytes), a
    corrupt blob (nothing of it published, the file already there untouched); never a file left in flight,
    files created with the mode MLflow gives them, and no more upload threads than the pool holds, however
    many calls."""
    from formula_foundry.errors import BlobError
    from formula_foundry.tracking.ingest.sink import Upload
    from formula_foundry.tracking.ingest.stores import mlflow_api

    api = local_api(store_project, way)
    store = blob_store(store_project)

    def upload(path: str, data: bytes) -> Upload:
        entry = store.add_bytes(data, logical_path=path)
        return Upload(path, entry.digest, entry.size_bytes, store.root.as_uri(), 1)

    run = api.create_run(experiment_id=api.experiment_id("direct"), run_id="direct-1", run_name="direct",
                         start_time=1, tags={})
    uri = mlflow_client(store_project).get_run(run.mlflow_run_id).info.artifact_uri
    first = {f"d/f{i}.bin": os.urandom(3000 + i) for i in range(12)} | {"top.bin": b"top"}
    api.upload_files(run.mlflow_run_id, [upload(p, b) for p, b in first.items()])
    assert artifact_files(uri) == first
    assert [t for t in threading.enumerate() if t.name.startswith("ff-upload")]  # the threads of the upload
    folder = Path(uri.removeprefix("file://"))
    umask = os.umask(0)
    os.umask(umask)
    assert {(folder / p).stat().st_mode & 0o777 for p in first} == {0o666 & ~umask}

    with open(folder / "d" / "f0.bin", "rb") as old:  # a reader of the file being replaced
        api.upload_files(run.mlflow_run_id, [upload("d/f0.bin", b"second version"),
                                             upload("d/f1.bin", first["d/f1.bin"])])
        assert old.read() == first["d/f0.bin"]
    assert artifact_files(uri) == {**first, "d/f0.bin": b"second version"}

    corrupt = upload("d/f2.bin", b"x" * 5000)
    blob = store.path_for(corrupt.digest)
    os.chmod(blob, 0o644)
    blob.write_bytes(b"y" * 5000)
    with pytest.raises(BlobError, match="corrupt"):
        api.upload_files(run.mlflow_run_id, [corrupt])
    with pytest.raises(BlobError, match="corrupt"):
        api.upload_files(run.mlflow_run_id, [upload("d/ok.bin", b"fine"), corrupt._replace(path="d/new.bin")])
    assert artifact_files(uri) == {**first, "d/f0.bin": b"second version", "d/ok.bin": b"fine"}
    assert in_flight_files(store_project) == []
    pool = max(mlflow_api.UPLOAD_WORKERS, mlflow_api.LOCAL_UPLOAD_WORKERS)
    assert len([t for t in threading.enumerate() if t.name.startswith("ff-upload")]) <= pool  # bounded, reused


# --------------------------------------------------------------------------- a blob missing or corrupt

def _two_runs(project: Path, tmp_path: Path) -> tuple[object, object, dict, Path]:
    store = blob_store(project)
    t = tracker(project)
    with t.start_run("broken", experiment_name="blobs") as broken:
        broken.log_param("p", "1")
        ok_fields = log_blob(broken, store, write(tmp_path / "b", "ok.txt", b"fine"), "out")
        fields = log_blob(broken, store, write(tmp_path / "b", "plot.png", os.urandom(2048)), "figs")
        broken.log_metric("after", 1.0, step=0)
    with t.start_run("healthy", experiment_name="blobs") as healthy:
        log_blob(healthy, store, write(tmp_path / "h", "table.json", b'{"a": 1}'), "tables")
    assert ok_fields["digest"] != fields["digest"]
    return broken, healthy, fields, store.path_for(fields["digest"])


def _line_of(journal: Path, digest: str) -> int:
    for entry in JournalReader(journal).entries():
        if entry.record.get("digest") == digest:
            return entry.line
    raise AssertionError(digest)


def test_missing_blob_is_the_journals_error_and_it_completes_once_restored(store_project, tmp_path, capsys):
    """The blob of one record is gone: exit 1 naming journal, line, artifact path and digest; the other
    journal is ingested; ``status`` shows the journal in error with its pending upload; once the blob is
    back, the next pass completes it."""
    broken, healthy, fields, blob = _two_runs(store_project, tmp_path)
    saved = blob.read_bytes()
    blob.unlink()
    journal = next(p for p in journals_of(store_project) if broken.run_id in p.name)
    line = _line_of(journal, fields["digest"])

    code, summary = ingest_summary(store_project, capsys, "api")
    assert code == 1
    by_path = {d["path"]: d for d in summary["details"]}
    error = " ".join(by_path[str(journal)]["errors"])
    assert f"{journal}:{line}:" in error and "'figs/plot.png'" in error and fields["digest"] in error, error
    assert "not found" in error and str(blob) in error
    assert run_artifacts(store_project, healthy.run_id)[1] == {"tables/table.json": b'{"a": 1}'}
    # the file before it in the same batch may be there; the missing one is not, nor anything after it
    folder, partial = run_artifacts(store_project, broken.run_id)
    assert "figs/plot.png" not in partial
    assert mlflow_client(store_project).get_run(folder.parent.name).data.metrics == {}

    capsys.readouterr()
    assert run_ff_ingest(store_project, "status", "--json") == 1
    status = {j["path"]: j for j in json.loads(capsys.readouterr().out)["journals"]}[str(journal)]
    assert status["state"] == "error" and fields["digest"] in status["last_error"]
    assert (status["artifacts_pending"], status["artifact_bytes_pending"]) == (2, 4 + 2048)

    # still missing: the same error again, nothing else changes
    assert ingest_summary(store_project, capsys, "api")[0] == 1
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(saved)
    code, summary = ingest_summary(store_project, capsys, "api")
    assert code == 0, summary
    assert run_artifacts(store_project, broken.run_id)[1] == {"out/ok.txt": b"fine", "figs/plot.png": saved}
    assert mlflow_client(store_project).get_run(folder.parent.name).data.metrics == {"after": 1.0}


@pytest.mark.parametrize("damage", ["bytes changed", "truncated"])
def test_corrupt_blob_is_refused_and_nothing_of_it_is_uploaded(store_project, tmp_path, capsys, damage):
    """A blob whose bytes no longer hash to its digest (or whose size changed) is the journal's error
    (exit 1, with the digest it should have), never uploaded; bulk sink."""
    broken, healthy, fields, blob = _two_runs(store_project, tmp_path)
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    if damage == "truncated":
        del data[-10:]
    else:
        data[100] ^= 0xFF
    blob.write_bytes(bytes(data))

    code, summary = ingest_summary(store_project, capsys, "bulk")
    assert code == 1
    error = " ".join(e for d in summary["details"] for e in d["errors"])
    assert "corrupt" in error and fields["digest"] in error and "'figs/plot.png'" in error, error
    assert "figs/plot.png" not in run_artifacts(store_project, broken.run_id)[1]
    assert run_artifacts(store_project, healthy.run_id)[1] == {"tables/table.json": b'{"a": 1}'}


def test_blob_found_in_the_configured_store_when_its_own_moved(store_project, tmp_path, capsys):
    """A record whose ``store_uri`` names a folder that is gone (a project that moved): the blob is taken
    from ``journal.artifact_store``."""
    store = blob_store(store_project)
    t = tracker(store_project)
    with t.start_run("moved", experiment_name="blobs") as run:
        entry = store.add_bytes(b"moved bytes", logical_path="x")
        run._append("artifact", {"path": "m/x.bin", "digest": entry.digest, "size_bytes": entry.size_bytes,
                                 "store_uri": (tmp_path / "old-project" / "data" / "artifacts").as_uri(),
                                 "media_type": "application/octet-stream"})
    assert ingest_summary(store_project, capsys)[0] == 0
    assert run_artifacts(store_project, run.run_id)[1] == {"m/x.bin": b"moved bytes"}


# --------------------------------------------------------------------------- reporting

def test_status_view_doctor_and_dry_run_show_the_artifact_backlog(store_project, tmp_path, capsys):
    """Before an ingest: ``status`` counts the files and bytes to upload per journal and in total,
    ``--dry-run`` lists them (JSON) and counts them (text), ``view`` prints the record readably,
    ``doctor`` names the bytes; after it, nothing is pending."""
    store = blob_store(store_project)
    t = tracker(store_project)
    with t.start_run("report", experiment_name="blobs") as run:
        for i in range(3):
            log_blob(run, store, write(tmp_path, f"r{i}.bin", b"x" * (1000 * (i + 1))), "r")
        run.log_artifact_reference("refs/big.h5", "b" * 64, 10**9)  # a reference is not an upload
    journal = journals_of(store_project)[0]

    capsys.readouterr()
    assert run_ff_ingest(store_project, "status", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["artifacts_pending"], report["artifact_bytes_pending"]) == (3, 6000)
    assert (report["journals"][0]["artifacts_pending"], report["journals"][0]["artifact_bytes_pending"]) == (3, 6000)
    assert run_ff_ingest(store_project, "status") == 0
    text = capsys.readouterr().out
    assert "UPLOADS" in text and "3 (6.0 kB)" in text and "3 artifact files (6.0 kB) to upload" in text

    code, summary = ingest_summary(store_project, capsys, "api", "--dry-run")
    assert code == 0 and summary["dry_run"]
    assert summary["details"][0]["uploads"] == [{"path": f"r/r{i}.bin", "size_bytes": 1000 * (i + 1)}
                                                for i in range(3)]
    assert (summary["uploads"], summary["upload_bytes"]) == (3, 6000)
    assert run_ff_ingest(store_project, "--sink", "api", "--dry-run") == 0
    assert "3 artifact files (6.0 kB) to upload" in capsys.readouterr().out

    assert run_ff_ingest(store_project, "view", str(journal)) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " artifact " in ln]
    assert len(lines) == 3 and 'path="r/r0.bin"' in lines[0] and "size_bytes=1000" in lines[0], lines

    assert run_ff_ingest(store_project, "doctor", "--json", "--no-write") in (0, 3)
    backlog = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}["backlog"]
    assert backlog["data"]["artifacts_pending"] == 3 and backlog["data"]["artifact_bytes_pending"] == 6000
    assert "3 artifact files (6.0 kB) to upload" in backlog["detail"]

    assert ingest_summary(store_project, capsys)[0] == 0
    assert run_ff_ingest(store_project, "status", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["artifacts_pending"], report["artifact_bytes_pending"]) == (0, 0)


# --------------------------------------------------------------------------- SIGKILL mid-upload

def _upload_backfill(project: Path, tmp_path: Path, rng: random.Random) -> int:
    """Two runs: 400 small files (4 batches of 100) and 3 large ones, with metrics between them."""
    store = blob_store(project)
    t = tracker(project)
    count = 0
    with t.start_run("many", experiment_name="kill-uploads") as run:
        for i in range(400):
            log_blob(run, store, write(tmp_path / "many" / str(i % 7), f"f{i:03d}.bin", rng.randbytes(16 << 10)),
                     f"part{i % 7}")
            if i % 50 == 0:
                run.log_metric("progress", i, step=i)
            count += 1
    with t.start_run("large", experiment_name="kill-uploads") as run:
        for i in range(3):
            log_blob(run, store, write(tmp_path / "large", f"big{i}.bin", rng.randbytes(24 * MIB)), "big")
            run.log_metric("big", i, step=i)
            count += 1
    return count


def test_sigkill_mid_upload_then_rerun_equals_one_clean_ingest(store_project, tmp_path, template_store):
    """SIGKILL ff-ingest at random moments while it uploads (some kills the moment it writes a file: not yet
    named, or under MLflow's in-flight name), then rerun: no kill leaves a partial file under its name, the
    store and every artifact byte equal one clean ingest, and no file in flight is left among the run's
    artifacts."""
    seed = int(os.environ.get("FF_CRASH_SEED") or 1515)
    rng = random.Random(seed)
    print(f"seed {seed}")
    files = _upload_backfill(store_project, tmp_path, rng)
    ref = reference_project(tmp_path, store_project, template_store)
    reference = subprocess.Popen(ingest_cmd(ref), env=child_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "ingesters.log"
    kills: list[tuple[str, int, int]] = []  # (moment, artifact files present, files left in flight)
    try:
        for attempt in range(8):
            seen_in_flight = set(in_flight_files(store_project))
            present = _uploaded(store_project)
            with open(log, "a") as out:
                proc = subprocess.Popen(ingest_cmd(store_project), env=child_env(), stdout=out, stderr=out)
            in_flight = attempt % 2 == 0
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                if in_flight and (set(in_flight_files(store_project)) - seen_in_flight
                                  or writing_unnamed(proc.pid, store_project)):
                    break  # this process is writing a file (named in flight, or not yet named): kill it now
                if not in_flight and _uploaded(store_project) > present:
                    time.sleep(rng.uniform(0.0, 0.03))  # this process uploads: kill it a moment later
                    break
                time.sleep(0.001)
            proc.send_signal(signal.SIGKILL)
            status = proc.wait(timeout=30)
            if status != -signal.SIGKILL:
                assert status == 0, log.read_text()[-3000:]
                break
            kills.append(("in flight" if in_flight else "random", _uploaded(store_project),
                          len(in_flight_files(store_project))))
            _no_partial_file_under_its_name(store_project)
        final = subprocess.run(ingest_cmd(store_project), env=child_env(), capture_output=True, text=True,
                               timeout=300)
        assert final.returncode == 0, final.stdout + final.stderr
        again = subprocess.run(ingest_cmd(store_project), env=child_env(), capture_output=True, text=True,
                               timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        out, _ = reference.communicate(timeout=300)
    print(f"kills (moment, artifact files present, files in flight): {kills}")
    assert reference.returncode == 0, out
    assert len({present for _, present, _ in kills if 0 < present < files}) >= 2, kills  # at several stages
    assert any(moment == "in flight" for moment, _, _ in kills), kills  # at least one kill while a file was written
    crashed, clean = dump_store(store_project), dump_store(ref)
    assert diff_dumps(crashed, clean) == []
    assert sum(len(r["artifacts"]) for r in crashed.values()) == files
    assert in_flight_files(store_project) == []


def _no_partial_file_under_its_name(project: Path) -> None:
    """Every file under its own name in the artifact location is whole (the test's files are 16 KiB, or
    24 MiB for ``big*``); only MLflow's in-flight names may hold anything else."""
    root = project / "data" / "mlflow" / "artifacts"
    for path in root.rglob("*.bin") if root.is_dir() else ():
        if not path.name.startswith(IN_FLIGHT):
            expected = 24 * MIB if path.name.startswith("big") else 16 << 10
            assert path.stat().st_size == expected, f"{path}: a partial file under its name"


def _uploaded(project: Path) -> int:
    root = project / "data" / "mlflow" / "artifacts"
    return sum(1 for p in root.rglob("*.bin")) if root.is_dir() else 0
