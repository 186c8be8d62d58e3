"""Real artifacts, producer side: every call's record and blob equal what MLflow writes for the same call.

The MLflow side is MLflow itself: its fluent API (``mlflow.log_text``, ...) into a local SQLite
store with a local artifact root, one run for the module. Each comparison calls ours and
MLflow's with the same arguments and checks that the files MLflow wrote are exactly the
records we appended (path, size, sha256) and the blobs we stored (bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from formula_foundry.errors import ArtifactNotFoundError, RunStateError, ValidationError
from formula_foundry.substrate import ArtifactStore
from formula_foundry.tracking import get_tracker
from formula_foundry.tracking.journal import JournalReader
from tests.conftest import open_files_under, subprocess_env

MiB = 1 << 20


# --------------------------------------------------------------------------- helpers

def _records(journal: Path) -> list[dict]:
    return list(JournalReader(journal).records())


def _artifacts(journal: Path) -> list[dict]:
    return [r for r in _records(journal) if r["type"] == "artifact"]


def _blobs(store: ArtifactStore) -> list[Path]:
    return sorted(p for p in store.objects_dir.rglob("*") if p.is_file()) if store.objects_dir.exists() else []


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


class MlflowSide:
    """MLflow's own run: what its fluent API writes for a call, under ``root`` (the run's artifact dir)."""

    def __init__(self, mlflow: Any, root: Path) -> None:
        self.mlflow = mlflow
        self.root = root


@pytest.fixture(scope="module")
def ml(tmp_path_factory, template_store: Path) -> Iterator[MlflowSide]:
    mlflow = pytest.importorskip("mlflow")
    folder = tmp_path_factory.mktemp("mlflow-side")
    db = folder / "mlruns.db"
    shutil.copy(template_store, db)
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    try:
        experiment = mlflow.create_experiment("artifacts", artifact_location=(folder / "artifacts").as_uri())
        run = mlflow.start_run(experiment_id=experiment)
        root = Path(run.info.artifact_uri.removeprefix("file://"))
        root.mkdir(parents=True, exist_ok=True)
        yield MlflowSide(mlflow, root)
        mlflow.end_run()
    finally:
        mlflow.set_tracking_uri(None)


@pytest.fixture
def run(in_project: Path) -> Iterator[Any]:
    with get_tracker().start_run(run_name="artifacts") as r:
        yield r


@pytest.fixture
def store(in_project: Path) -> ArtifactStore:
    return ArtifactStore(get_tracker().config.journal.artifact_store)


def same_as_mlflow(run: Any, store: ArtifactStore, ml: MlflowSide, call: str, *args: Any, **kwargs: Any) -> list[dict]:
    """Call ``run.<call>`` and ``mlflow.<call>`` alike; ours must record exactly the files MLflow wrote."""
    seen = len(_artifacts(run.journal_path))
    before = _tree(ml.root)
    getattr(run, call)(*args, **kwargs)
    getattr(ml.mlflow, call)(*args, **kwargs)
    written = {path: data for path, data in _tree(ml.root).items() if before.get(path) != data}
    records = _artifacts(run.journal_path)[seen:]
    ours = {r["path"]: store.read_bytes(r["digest"]) for r in records}
    assert set(ours) == set(written), (sorted(ours), sorted(written))
    for path, data in written.items():
        assert ours[path] == data, f"{call} {path}: bytes differ from MLflow's"
    for record in records:
        data = ours[record["path"]]
        assert record["size_bytes"] == len(data)
        assert record["digest"] == hashlib.sha256(data).hexdigest()
        assert record["store_uri"] == store.root.as_uri()
        store.verify(record["digest"])
    return records


# --------------------------------------------------------------------------- files

def test_log_artifact_file_and_folder_as_mlflow(run, store, ml, tmp_path: Path):
    """log_artifact of a file (root and artifact_path) and of a folder; log_artifacts; an empty file."""
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "solver.log").write_text("iteration 1\niteration 2\n")
    (src / "sub" / "s21.bin").write_bytes(os.urandom(5 * MiB + 7))  # above the threaded-copy threshold
    (src / "sub" / "deeper" / "empty.txt").write_bytes(b"")
    (src / "top.json").write_text('{"a": 1}')
    recs = same_as_mlflow(run, store, ml, "log_artifact", str(src / "solver.log"))
    assert [(r["path"], r["media_type"]) for r in recs] == [("solver.log", "text/plain")]
    same_as_mlflow(run, store, ml, "log_artifact", src / "top.json", "f1/nested")
    same_as_mlflow(run, store, ml, "log_artifact", str(src / "sub"), "f2")  # a folder: f2/sub/...
    recs = same_as_mlflow(run, store, ml, "log_artifacts", str(src), "f3")
    assert sorted(r["path"] for r in recs) == ["f3/solver.log", "f3/sub/deeper/empty.txt", "f3/sub/s21.bin",
                                               "f3/top.json"]
    assert [r["size_bytes"] for r in recs if r["path"].endswith("empty.txt")] == [0]


def test_snapshot_survives_source_change_and_delete(run, store, tmp_path: Path):
    """The blob is a copy made at the call: overwriting or deleting the source changes nothing; never a hard link."""
    src = tmp_path / "field_map.bin"
    original = os.urandom(6 * MiB)
    src.write_bytes(original)
    small = tmp_path / "small.txt"
    small.write_text("v1")
    run.log_artifact(src, "maps")
    run.log_artifact(small)
    big, little = _artifacts(run.journal_path)
    blob = store.path_for(big["digest"])
    assert os.stat(blob).st_ino != os.stat(src).st_ino and os.stat(src).st_nlink == 1
    with open(src, "r+b") as fh:  # in place: a hard link or shared inode would see this
        fh.write(b"X" * 4096)
    small.write_text("v2")
    assert store.read_bytes(big["digest"]) == original and store.read_bytes(little["digest"]) == b"v1"
    src.unlink()
    small.unlink()
    assert store.verify(big["digest"]).size_bytes == len(original)
    assert oct(blob.stat().st_mode & 0o777) == "0o444"


def _hash_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "ff-artifact-hash"]


@pytest.mark.parametrize("size", [4 * MiB - 1, 4 * MiB, 16 * MiB + 1, 21 * MiB + 3])
def test_big_copies_store_and_hash_every_byte(tmp_path: Path, size: int):
    """Around the sizes where the copy changes shape (one thread below 4 MiB; above, 1 MiB buffers read once,
    hashed in a second thread while written, more buffers than the pool holds): the blob is the source
    byte for byte, the digest is its sha256, tmp/ is empty and no hashing thread is left. ``store_written``
    (figures, images, tables) hashes a big file it did not copy the same way."""
    from formula_foundry.tracking.artifacts import snapshot_file, store_written

    store = ArtifactStore(tmp_path / "store")
    src = tmp_path / "src.bin"
    data = os.urandom(size)
    src.write_bytes(data)
    entry = snapshot_file(store, src, logical_path="x/src.bin")
    assert (entry.digest, entry.size_bytes) == (hashlib.sha256(data).hexdigest(), size)
    assert store.read_bytes(entry.digest) == data
    assert list(store.tmp_dir.iterdir()) == [] and _hash_threads() == []
    written = store_written(store, "w.bin", lambda path: Path(path).write_bytes(data[::-1]), logical_path="w.bin")
    assert (written.digest, written.size_bytes) == (hashlib.sha256(data[::-1]).hexdigest(), size)
    assert store.verify(written.digest).size_bytes == size
    assert list(store.tmp_dir.iterdir()) == [] and _hash_threads() == []


REWRITER = r"""
import os, random, sys
path, size = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
fd = os.open(path, os.O_WRONLY)
print("ready", flush=True)
while True:  # rewrite random 64 KiB blocks in place, as fast as it can, until killed
    os.pwrite(fd, rng.randbytes(65536), rng.randrange(0, size - 65536))
"""


def test_a_source_rewritten_during_the_copy_gives_a_blob_that_matches_its_digest(tmp_path: Path):
    """Another process rewrites the source in place while it is snapshotted (a solver still writing its
    output): each stored blob hashes to the digest recorded for it, whatever mix of old and new bytes it
    caught, because the bytes hashed are the bytes written."""
    from formula_foundry.tracking.artifacts import snapshot_file

    store = ArtifactStore(tmp_path / "store")
    src = tmp_path / "moving.bin"
    size = 24 * MiB
    src.write_bytes(os.urandom(size))
    writer = subprocess.Popen([sys.executable, "-c", REWRITER, str(src), str(size)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        entries = [snapshot_file(store, src, logical_path=f"m{i}.bin") for i in range(4)]
    finally:
        writer.kill()
        writer.wait(timeout=30)
    for entry in entries:
        assert entry.size_bytes == size
        assert hashlib.sha256(store.read_bytes(entry.digest)).hexdigest() == entry.digest
    assert len({e.digest for e in entries}) > 1  # the source did change under the copies


WRITE_FAILS = r"""
import json, os, resource, signal, sys, threading
from formula_foundry.substrate import ArtifactStore
from formula_foundry.tracking.artifacts import snapshot_file
store = ArtifactStore(sys.argv[2])
store.tmp_dir.mkdir(parents=True)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (6 << 20, resource.RLIM_INFINITY))
try:
    snapshot_file(store, sys.argv[1], logical_path="big.bin")
    error = None
except OSError as exc:
    error = exc.errno
print(json.dumps({"errno": error, "threads": [t.name for t in threading.enumerate()],
                  "tmp": os.listdir(store.tmp_dir), "objects": store.objects_dir.exists()}))
"""


def test_a_write_that_fails_mid_copy_leaves_nothing(tmp_path: Path):
    """The copy of a 12 MiB file fails at 6 MiB (a file size limit: as a full disk would): the error reaches
    the caller, and there is no blob, no temp file and no hashing thread left."""
    import errno

    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(12 * MiB))
    proc = subprocess.run([sys.executable, "-c", WRITE_FAILS, str(src), str(tmp_path / "store")],
                          env=subprocess_env(), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result == {"errno": errno.EFBIG, "threads": ["MainThread"], "tmp": [], "objects": False}


def test_log_artifacts_of_many_files_as_mlflow(run, store, ml, tmp_path: Path):
    """A folder of many files (the threaded path): sizes around the 4 KiB blocks of direct writes and the
    1 MiB read chunk, an empty file, a big one, a duplicate; every record in walk order, each blob
    byte-exact and read-only, nothing left in tmp/."""
    rng = random.Random(4096)
    src = tmp_path / "many"
    sizes = [0, 1, 4095, 4096, 4097, 65543, MiB - 1, MiB, MiB + 1, 5 * MiB + 3] + [3000 + i for i in range(30)]
    for i, size in enumerate(sizes):
        folder = src / f"part{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:02d}.bin").write_bytes(rng.randbytes(size))
    (src / "part0" / "copy.bin").write_bytes((src / "part1" / "f01.bin").read_bytes())
    recs = same_as_mlflow(run, store, ml, "log_artifacts", str(src), "many")
    walked = [f"many/{p.relative_to(src).as_posix()}" for d in sorted(src.iterdir()) for p in sorted(d.iterdir())]
    assert [r["path"] for r in recs] == walked
    assert all(stat.S_IMODE(store.path_for(r["digest"]).stat().st_mode) == 0o444 for r in recs)
    assert list(store.tmp_dir.iterdir()) == []


def test_log_artifacts_refusing_one_file_records_none(run, store, tmp_path: Path):
    """One file of a folder cannot be stored (a FIFO among 20 files): log_artifacts raises, the journal is
    unchanged, no upload thread is left, and nothing is left in tmp/."""
    src = tmp_path / "some"
    src.mkdir()
    for i in range(20):
        (src / f"f{i:02d}.txt").write_text(f"file {i}\n")
    os.mkfifo(src / "f10.pipe")
    before = run.journal_path.read_bytes()
    with pytest.raises(ValidationError) as err:
        run.log_artifacts(src, "some")
    assert err.value.rule == "artifact-source"
    assert run.journal_path.read_bytes() == before
    assert not [t for t in threading.enumerate() if t.name.startswith("ff-snapshot")]
    assert list(store.tmp_dir.iterdir()) == []


def test_same_content_is_stored_once(run, store, tmp_path: Path):
    """Two paths with the same bytes: two records, one blob; nothing left in tmp/."""
    (tmp_path / "a.txt").write_text("same")
    run.log_artifact(tmp_path / "a.txt", "one")
    run.log_text("same", "two/a.txt")
    records = _artifacts(run.journal_path)
    assert [r["path"] for r in records] == ["one/a.txt", "two/a.txt"]
    assert records[0]["digest"] == records[1]["digest"]
    assert len(_blobs(store)) == 1
    assert list(store.tmp_dir.iterdir()) == []


def test_missing_source_and_special_files_are_refused(run, store, tmp_path: Path):
    """A missing file or folder raises FileNotFoundError (ArtifactNotFoundError); a FIFO is refused, not read."""
    before = run.journal_path.read_bytes()
    with pytest.raises(ArtifactNotFoundError):
        run.log_artifact(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError):
        run.log_artifacts(tmp_path / "nodir")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValidationError) as err:
        run.log_artifact(fifo)
    assert err.value.rule == "artifact-source"
    assert run.journal_path.read_bytes() == before
    assert _blobs(store) == []


# --------------------------------------------------------------------------- in-memory content

def test_log_dict_and_log_text_as_mlflow(run, store, ml):
    """JSON (indent 2, default=str), YAML for .yml/.yaml, JSON for any other name; text as UTF-8."""
    data = {"coupon": "F1", "freqs_ghz": [1.0, 2.5, 40], "nested": {"ok": True, "none": None},
            "path": Path("/x/y"), "unicode": "Ωmega é"}
    for name in ("d/cfg.json", "d/cfg.yaml", "d/cfg.yml", "d/cfg", "d/cfg.txt"):
        same_as_mlflow(run, store, ml, "log_dict", data if name.endswith(("json", "g", "txt")) else
                       {k: v for k, v in data.items() if k != "path"}, name)
    same_as_mlflow(run, store, ml, "log_dict", [1, {"b": 2}], "d/list.json")
    recs = same_as_mlflow(run, store, ml, "log_text", "solver: converged ✓\nline 2\r\n", "logs/solver.log")
    assert recs[0]["media_type"] == "text/plain"
    same_as_mlflow(run, store, ml, "log_text", "", "logs/empty.txt")
    same_as_mlflow(run, store, ml, "log_text", "<h1>x</h1>", "./logs//index.html")  # normalised as MLflow


def test_log_table_as_mlflow(run, store, ml):
    """Dict of columns, DataFrame, scalars; logging the same file again appends rows; mlflow.loggedArtifacts."""
    pd = pytest.importorskip("pandas")
    same_as_mlflow(run, store, ml, "log_table", {"freq": [1.0, 2.0], "s21_db": [-0.5, -1.25], "name": ["a", "b"]},
                   "tables/results.json")
    same_as_mlflow(run, store, ml, "log_table", pd.DataFrame({"freq": [3.0], "s21_db": [-2.0], "name": ["c"]}),
                   "tables/results.json")  # appended: the file now has three rows
    same_as_mlflow(run, store, ml, "log_table", {"inputs": "What is MLflow?", "n": 1}, "tables/one.json")
    same_as_mlflow(run, store, ml, "log_table",
                   pd.DataFrame({"t": pd.to_datetime(["2026-01-02T03:04:05"]), "v": [float("nan")]}),
                   "tables/dates.json")
    pytest.importorskip("pyarrow")
    same_as_mlflow(run, store, ml, "log_table", {"a": [1, 2], "b": ["x", "y"]}, "tables/p.parquet")
    tags = [r for r in _records(run.journal_path) if r["type"] == "tag" and r["key"] == "mlflow.loggedArtifacts"]
    expected = ml.mlflow.get_run(ml.mlflow.active_run().info.run_id).data.tags["mlflow.loggedArtifacts"]
    assert tags[-1]["value"] == expected


def test_log_table_image_column_as_mlflow(run, store, ml):
    """A column of images: a PNG and a 256-pixel WebP per cell under table_images/, the cell names them."""
    pil = pytest.importorskip("PIL.Image")
    pytest.importorskip("pandas")
    images = [pil.new("RGB", (300, 120), (10 * i, 80, 200)) for i in range(2)]
    seen = len(_artifacts(run.journal_path))
    before = _tree(ml.root)
    run.log_table({"prompt": ["a", "b"], "image": images}, "gen/images.json")
    ml.mlflow.log_table({"prompt": ["a", "b"], "image": images}, "gen/images.json")
    theirs = {p: d for p, d in _tree(ml.root).items() if p not in before}
    ours = {r["path"]: store.read_bytes(r["digest"]) for r in _artifacts(run.journal_path)[seen:]}
    ours_table, their_table = json.loads(ours.pop("gen/images.json")), json.loads(theirs.pop("gen/images.json"))
    assert ours_table["columns"] == their_table["columns"] == ["prompt", "image"]
    assert len(ours) == len(theirs) == 4
    for mine, other in zip(ours_table["data"], their_table["data"], strict=True):
        assert mine[0] == other[0]
        for key in ("filepath", "compressed_filepath"):
            assert mine[1][key].startswith("table_images/gen/images/")
            assert ours[mine[1][key]] == theirs[other[1][key]]


def test_log_image_as_mlflow(run, store, ml):
    """numpy arrays of every dtype and shape MLflow takes, converted as MLflow converts them; PIL images."""
    np = pytest.importorskip("numpy")
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(7)
    cases = {
        "rgb.png": rng.integers(0, 256, (20, 30, 3), dtype=np.uint8),
        "gray.png": rng.integers(0, 256, (20, 30), dtype=np.int64),
        "gray1.png": rng.integers(0, 256, (20, 30, 1), dtype=np.uint8),
        "rgba.png": rng.integers(0, 256, (8, 8, 4), dtype=np.uint8),
        "float.png": rng.random((16, 16, 3)),
        "mask.png": rng.random((16, 16)) > 0.5,
        "photo.jpg": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "pil.png": pil.new("RGB", (40, 20), (200, 10, 10)),
    }
    for name, image in cases.items():
        recs = same_as_mlflow(run, store, ml, "log_image", image, f"images/{name}")
        assert recs[0]["media_type"] == ("image/jpeg" if name.endswith(".jpg") else "image/png")
    scaled = rng.random((10, 10)) * 5 - 1  # out of [0, 1]: rescaled with a warning, as MLflow does
    with pytest.warns(UserWarning, match="Rescaling"):
        same_as_mlflow(run, store, ml, "log_image", scaled, "images/scaled.png")


def test_log_image_refusals_leave_the_journal_unchanged(run, store):
    """Integers outside [0, 255], complex arrays, 4-D arrays, 2 channels, other objects: refused before storing."""
    np = pytest.importorskip("numpy")
    before = run.journal_path.read_bytes()
    for image, rule in ((np.full((4, 4), 256), "image-array"), (np.zeros((4, 4), dtype=complex), "image-array"),
                        (np.zeros((2, 2, 2, 2)), "image-array"), (np.zeros((4, 4, 2)), "image-array"),
                        ([[0, 1]], "artifact-type")):
        with pytest.raises(ValidationError) as err:
            run.log_image(image, "bad.png")
        assert err.value.rule == rule
    assert run.journal_path.read_bytes() == before
    assert _blobs(store) == []


def test_log_figure_matplotlib_as_mlflow(run, store, ml):
    """matplotlib: savefig with MLflow's (no) defaults and the caller's save_kwargs; other objects refused."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([1, 2, 3], [-0.5, -1.0, -3.2], label="S21")
    ax.legend()
    try:
        recs = same_as_mlflow(run, store, ml, "log_figure", fig, "plots/s21.png")
        assert recs[0]["media_type"] == "image/png"
        same_as_mlflow(run, store, ml, "log_figure", fig, "plots/s21_small.png", save_kwargs={"dpi": 40})
    finally:
        plt.close(fig)
    with pytest.raises(ValidationError) as err:
        run.log_figure(object(), "plots/x.png")
    assert (err.value.rule, err.value.key) == ("artifact-type", "figure")


# --------------------------------------------------------------------------- paths

BAD_FILES = ["../escape.txt", "/abs/file.txt", "a/../../b.txt", "a/../b.txt", "x#y.txt", "a\\b.txt",
             "%2e%2e/x.txt", "C:/x.txt", "dir/", "", "file:///etc/passwd", "~/x.txt", "a\nb.txt",
             ".artifact.uploading.x", "d/" + "n" * 241]
BAD_FOLDERS = ["a//b", "./a", "a/", "..", "/x", "../x", "a/../b", "x#y", "a\\b", "C:", "%2e%2e"]


@pytest.mark.parametrize("artifact_file", BAD_FILES)
def test_bad_artifact_files_are_refused(run, store, artifact_file: str):
    """Each bad artifact_file is refused for every call that takes one, naming the argument; nothing written."""
    before = run.journal_path.read_bytes()
    for call, arg in (("log_text", "x"), ("log_dict", {"a": 1})):
        with pytest.raises(ValidationError) as err:
            getattr(run, call)(arg, artifact_file)
        assert (err.value.rule, err.value.key) == ("artifact-path", "artifact_file")
        assert "artifact_file" in str(err.value)
    assert run.journal_path.read_bytes() == before
    assert _blobs(store) == []


@pytest.mark.parametrize("artifact_path", BAD_FOLDERS)
def test_bad_artifact_paths_are_refused(run, store, tmp_path: Path, artifact_path: str):
    """A bad artifact_path (folder) is refused for log_artifact and log_artifacts before anything is copied."""
    (tmp_path / "f.txt").write_text("x")
    before = run.journal_path.read_bytes()
    for call, arg in (("log_artifact", tmp_path / "f.txt"), ("log_artifacts", tmp_path)):
        with pytest.raises(ValidationError) as err:
            getattr(run, call)(arg, artifact_path)
        assert (err.value.rule, err.value.key) == ("artifact-path", "artifact_path")
    assert run.journal_path.read_bytes() == before
    assert _blobs(store) == []


def test_bad_file_names_and_table_names_are_refused(run, store, tmp_path: Path):
    """A source file whose name MLflow refuses ('#'); a table name with MLflow's forbidden characters."""
    bad = tmp_path / "s21#1.txt"
    bad.write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "ok.txt").write_text("ok")
    (folder / "bad#.txt").write_text("bad")
    before = run.journal_path.read_bytes()
    with pytest.raises(ValidationError) as err:
        run.log_artifact(bad)
    assert err.value.key == "local_path"
    with pytest.raises(ValidationError) as err:  # one bad file refuses the whole folder, before any copy
        run.log_artifacts(folder)
    assert err.value.key == "local_dir"
    for name in ("t:1.json", "t.csv", "t[0].json"):
        with pytest.raises(ValidationError) as err:
            run.log_table({"a": [1]}, name)
        assert (err.value.rule, err.value.key) == ("artifact-path", "artifact_file")
    assert run.journal_path.read_bytes() == before
    assert _blobs(store) == []


def test_artifact_calls_after_end_are_refused(in_project: Path, tmp_path: Path):
    """An ended run takes no artifacts, and nothing is stored for the refused call."""
    with get_tracker().start_run() as run:
        pass
    with pytest.raises(RunStateError):
        run.log_text("x", "a.txt")
    assert not (in_project / "data" / "artifacts" / "objects").exists()


def test_attached_segment_and_noop_run(in_project: Path, monkeypatch):
    """An attached segment records artifacts in its own journal; a disabled tracker writes nothing."""
    with get_tracker().start_run(run_name="owner") as run:
        with get_tracker().attach_run(run.run_id) as seg:
            seg.log_text("from rank 1", "ranks/1.txt")
        assert [r["path"] for r in _artifacts(seg.journal_path)] == ["ranks/1.txt"]
    monkeypatch.setenv("FF_TRACKING_ENABLED", "0")
    with get_tracker().start_run() as noop:
        for call, args in (("log_artifact", ("x",)), ("log_artifacts", ("x",)), ("log_dict", ({}, "a.json")),
                           ("log_text", ("t", "a.txt")), ("log_figure", (None, "f.png")),
                           ("log_image", (None, "i.png")), ("log_table", ({}, "t.json"))):
            assert getattr(noop, call)(*args) is None


def test_store_root_follows_the_config(project: Path, tmp_path: Path, monkeypatch):
    """journal.artifact_store (here via FF_ARTIFACT_STORE) is where blobs go and what store_uri names."""
    other = tmp_path / "elsewhere" / "store"
    monkeypatch.setenv("FF_ARTIFACT_STORE", str(other))
    monkeypatch.chdir(project)
    with get_tracker().start_run() as run:
        run.log_text("hello", "h.txt")
    (record,) = _artifacts(run.journal_path)
    assert record["store_uri"] == other.as_uri()
    assert ArtifactStore(other).read_bytes(record["digest"]) == b"hello"


# --------------------------------------------------------------------------- processes

PURITY = r"""
import sys
import formula_foundry.tracking
heavy = ("mlflow", "numpy", "matplotlib", "PIL", "pandas", "plotly")
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(heavy))
assert not loaded, ("at import", loaded)
from pathlib import Path
Path("f.txt").write_text("x")
with formula_foundry.tracking.get_tracker().start_run() as run:
    run.log_artifact("f.txt")
    run.log_artifacts(".", "all")
    run.log_dict({"a": 1}, "a.json")
    run.log_text("t", "t.txt")
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(heavy))
assert not loaded, ("after logging", loaded)
print("ok")
"""


def test_producer_imports_no_heavy_library(project: Path):
    """`import formula_foundry.tracking` and file/dict/text artifacts import none of mlflow, numpy,
    matplotlib, PIL, pandas, plotly (checked in a fresh interpreter)."""
    proc = subprocess.run([sys.executable, "-c", PURITY], cwd=project, env=subprocess_env(), capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok"]


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> Iterator[Path]:
    """400 MiB of random bytes on /tmp, removed after the module."""
    folder = tmp_path_factory.mktemp("big")
    path = folder / "big.bin"
    block = os.urandom(MiB)
    with open(path, "wb") as fh:
        for i in range(400):
            fh.write(i.to_bytes(8, "little") + block[8:])  # every MiB distinct
    yield path
    shutil.rmtree(folder, ignore_errors=True)


MEMORY = r"""
import resource, sys
from formula_foundry.tracking import get_tracker
with get_tracker().start_run() as run:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run.log_artifact(sys.argv[1], "big")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(before, after, hwm)
"""


def test_peak_memory_of_a_400_mib_file_stays_flat(project: Path, big_file: Path):
    """Producer peak RSS while snapshotting a 400 MiB file: far under 200 MiB (the file never sits in memory).

    ``VmHWM`` is this interpreter's own peak; ``ru_maxrss`` also counts the forked copy of a big
    parent (pytest with MLflow loaded) before ``exec``, so the call must not raise it at all.
    """
    proc = subprocess.run([sys.executable, "-c", MEMORY, str(big_file)], cwd=project, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    before, after, hwm = (int(v) / 1024 for v in proc.stdout.split()[-3:])
    assert hwm < 100, f"peak RSS {hwm:.0f} MiB"
    assert after < max(before, hwm) + 16, f"getrusage peak {before:.0f} -> {after:.0f} MiB"
    store = ArtifactStore(project / "data" / "artifacts")
    (blob,) = _blobs(store)
    assert blob.stat().st_size == big_file.stat().st_size


KILL_TARGET = r"""
import sys, time
from formula_foundry.tracking import get_tracker
with get_tracker().start_run() as run:
    print(run.journal_path, flush=True)
    run.log_artifact(sys.argv[1], "big")
    print("logged", flush=True)
    time.sleep(60)
"""


def _copying(pid: int, store: ArtifactStore) -> bool:
    """Whether process ``pid`` holds a file open in the store's tmp/ (its copy in progress: a named
    ``*.part``, or a file without a name, which /proc shows as ``tmp/#<inode> (deleted)``)."""
    return bool(open_files_under(pid, store.tmp_dir))


def test_sigkill_during_the_copy_leaves_no_record_or_a_complete_one(project: Path, big_file: Path):
    """SIGKILL at random moments of a 400 MiB snapshot (some while the copy is being written): afterwards the
    journal has no artifact record, or one whose blob exists and verifies; objects/ never holds a partial
    blob; tmp/ holds nothing where the kernel has O_TMPFILE (the copy had no name), else only *.part files."""
    rng = random.Random(20260515)
    store = ArtifactStore(project / "data" / "artifacts")
    probe = store.unnamed_temp()
    unnamed = probe is not None
    if unnamed:
        os.close(probe)
    outcomes = []
    for trial in range(6):
        shutil.rmtree(store.root, ignore_errors=True)
        proc = subprocess.Popen([sys.executable, "-c", KILL_TARGET, str(big_file)], cwd=project,
                                env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        journal = Path(proc.stdout.readline().strip())
        mid_copy = False
        if trial == 5:
            assert proc.stdout.readline().strip() == "logged"  # one kill after the call returned
        elif trial % 2:
            deadline = time.monotonic() + 30
            while not _copying(proc.pid, store) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.1))
            mid_copy = _copying(proc.pid, store)
        else:
            time.sleep(rng.uniform(0.0, 0.6))
        proc.kill()
        proc.communicate(timeout=30)
        records = _artifacts(journal)
        for blob in _blobs(store):  # no visible partial blob, whatever the moment
            assert store.verify(blob.name).size_bytes == big_file.stat().st_size
        if records:
            (record,) = records
            assert (record["path"], record["size_bytes"]) == ("big/big.bin", big_file.stat().st_size)
            assert store.verify(record["digest"])
        leftovers = [p.name for p in store.tmp_dir.iterdir()] if store.tmp_dir.exists() else []
        assert leftovers == [] if unnamed else all(name.endswith(".part") for name in leftovers), leftovers
        outcomes.append("record" if records else "mid-copy" if mid_copy else "none")
    assert outcomes[-1] == "record"
    assert "mid-copy" in outcomes, outcomes  # at least one kill landed while the copy was written
