"""Producer cost of real artifacts: ``run.log_artifact`` of 1 MiB, 100 MiB and 1 GiB files vs ``cp`` vs MLflow.

Per size, one file of random bytes in the scratch folder; every copy goes to the same
file system (the scratch folder: ``/tmp`` by default). Options:

* ``ff run.log_artifact``: ``get_tracker(cfg).start_run()`` then ``run.log_artifact(src)``
  (path checks, snapshot into the content-addressed store: reflink where the file system
  has them, else the source read once in 1 MiB buffers, each written to the copy while a
  second thread hashes it, writeback started as the copy grows, fsync, rename, fsync of the
  folder; then one journal record). A child process does every repeat.
* ``cp``: ``subprocess.run(["cp", src, dst])`` (coreutils: in-kernel copy, reflink where
  possible, no fsync, no hash): the goal's baseline.
* ``cp + sync FILE``: the same, then ``sync dst`` (fsync of the copy): as durable as ours.
* ``sha256 alone``: ``hashlib.sha256`` of the file, read in 4 MiB buffers, in this process: no
  copy, no fsync. The floor of any copy that must hash every byte on this CPU.
* ``mlflow.log_artifact``: into a local artifact root with a SQLite store, in its own child
  (``shutil.copyfileobj`` to a temp file + rename + copystat; no fsync, no hash).

And one folder of 1,000 files of 100 KiB (200 with ``--quick``): ``run.log_artifacts`` (files
stored on 4 threads, each fsynced, one fsync per shard folder at the end, then the records) vs
``mlflow.log_artifacts`` (``shutil.copytree``: no fsync, no hash) vs ``cp -r`` (no fsync).

Between repeats the previous copy (our blob; the store's folders stay) is deleted and
``os.sync()`` runs (not timed), so no option pays for another's writeback. Peak RSS is each child's ``VmHWM`` (the MLflow
child's includes ``import mlflow``). The ``target`` rows give ours / ``cp`` per size
(goal: at most 1.5x), ours / ``cp + sync`` and sha256 alone / ``cp``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Row,
    Stats,
    emit,
    fmt_mb,
    fmt_num,
    fresh_store,
    peak_rss_kib,
    progress,
    run_child,
    template_store,
    write_project,
)

SECTION = "artifacts"
MiB = 1 << 20
FULL = {"sizes": (1 * MiB, 100 * MiB, 1024 * MiB), "repeats": {MiB: 20, 100 * MiB: 7, 1024 * MiB: 5}}
QUICK = {"sizes": (1 * MiB, 100 * MiB), "repeats": {MiB: 5, 100 * MiB: 3}}
FOLDER = {"files": 1000, "repeats": 5}  # log_artifacts of a folder of files of FOLDER_FILE_BYTES
FOLDER_QUICK = {"files": 200, "repeats": 3}
FOLDER_FILE_BYTES = 100 << 10
TARGET_VS_CP = 1.5


def _label(size: int) -> str:
    gib = 1024 * MiB
    return f"{size // gib} GiB" if size >= gib and size % gib == 0 else f"{size // MiB} MiB"


def _settle() -> None:
    os.sync()


# --------------------------------------------------------------------------- children

def child_ff(args: argparse.Namespace) -> dict:
    from formula_foundry.substrate import ArtifactStore
    from formula_foundry.tracking import get_tracker

    tracker = get_tracker(Path(args.config))
    store = ArtifactStore(tracker.config.journal.artifact_store)
    seconds = []
    with tracker.start_run(run_name="bench-artifacts") as run:
        for i in range(args.repeats + 1):  # the first is a warm-up (it also creates the store's folders)
            _drop_blobs(store)
            _settle()
            start = time.perf_counter()
            (run.log_artifacts if args.folder else run.log_artifact)(args.src, "bench")
            elapsed = time.perf_counter() - start
            if i:
                seconds.append(elapsed)
    shutil.rmtree(store.root, ignore_errors=True)
    return {"seconds": seconds, "hwm_kib": peak_rss_kib()}


def _drop_blobs(store) -> None:
    """Delete the stored blobs, keep the folders: each repeat stores its file anew, as a new content would."""
    if store.objects_dir.exists():
        for blob in store.objects_dir.glob("*/*"):
            blob.unlink()


def child_mlflow(args: argparse.Namespace) -> dict:
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    work = Path(args.work)
    db = fresh_store(Path(args.template), work / "mlflow-artifacts" / "mlruns.db")
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    experiment = mlflow.create_experiment("bench-artifacts", artifact_location=(work / "ml-artifacts").as_uri())
    seconds = []
    with mlflow.start_run(experiment_id=experiment) as run:
        root = Path(run.info.artifact_uri.removeprefix("file://"))
        for i in range(args.repeats + 1):
            shutil.rmtree(root / "bench", ignore_errors=True)
            _settle()
            start = time.perf_counter()
            (mlflow.log_artifacts if args.folder else mlflow.log_artifact)(args.src, "bench")
            elapsed = time.perf_counter() - start
            if i:
                seconds.append(elapsed)
        shutil.rmtree(root, ignore_errors=True)
    return {"seconds": seconds, "hwm_kib": peak_rss_kib()}


# --------------------------------------------------------------------------- parent side

def _make_file(path: Path, size: int) -> None:
    block = os.urandom(MiB)
    with open(path, "wb") as fh:
        for i in range(size // MiB):
            fh.write(i.to_bytes(8, "little") + block[8:])  # every MiB distinct


def _time_cp(src: Path, dst: Path, repeats: int, *, sync: bool) -> list[float]:
    seconds = []
    for i in range(repeats + 1):
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink(missing_ok=True)
        _settle()
        start = time.perf_counter()
        subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
        if sync:
            subprocess.run(["sync", str(dst)], check=True)
        elapsed = time.perf_counter() - start
        if i:
            seconds.append(elapsed)
    shutil.rmtree(dst) if dst.is_dir() else dst.unlink(missing_ok=True)
    return seconds


def _time_sha256(src: Path, repeats: int) -> list[float]:
    import hashlib

    seconds = []
    buffer = bytearray(4 * MiB)
    view = memoryview(buffer)
    for i in range(repeats + 1):
        start = time.perf_counter()
        hasher = hashlib.sha256()
        fd = os.open(src, os.O_RDONLY)
        try:
            while n := os.readv(fd, [view]):
                hasher.update(view[:n])
        finally:
            os.close(fd)
        hasher.hexdigest()
        elapsed = time.perf_counter() - start
        if i:
            seconds.append(elapsed)
    return seconds


def _row(option: str, size: int, st: Stats, note: str, samples: dict) -> Row:
    rate = size / st.median / MiB
    return Row(SECTION, f"{option}, {_label(size)}", f"{fmt_num(st.median * 1000)} ms ({fmt_num(rate)} MiB/s)",
               f"{fmt_num(st.lo * 1000)} – {fmt_num(st.hi * 1000)} ms", f"{st.runs} × 1", note, samples=samples)


def run(*, quick: bool, work: Path, template: Path | None = None) -> list[Row]:
    cfg = QUICK if quick else FULL
    work.mkdir(parents=True, exist_ok=True)
    config = write_project(work / "project")
    template = template or template_store()
    rows: list[Row] = []
    targets: list[Row] = []
    for size in cfg["sizes"]:
        repeats = cfg["repeats"][size]
        label = _label(size)
        src = work / f"src-{label.replace(' ', '')}.bin"
        progress(f"artifacts: {label} file, {repeats} repeats per option")
        _make_file(src, size)
        try:
            common = ["--src", str(src), "--repeats", str(repeats), "--work", str(work)]
            ff = run_child("bench_artifacts_producer", ["ff", *common, "--config", str(config)])
            cp = _time_cp(src, work / "cp-dst.bin", repeats, sync=False)
            cps = _time_cp(src, work / "cp-dst.bin", repeats, sync=True)
            sha = _time_sha256(src, repeats)
            ml = run_child("bench_artifacts_producer", ["mlflow", *common, "--template", str(template)])
        finally:
            src.unlink(missing_ok=True)
        ours, plain, durable, floor, theirs = (Stats.of(x) for x in (ff["seconds"], cp, cps, sha, ml["seconds"]))
        rows.append(_row("ff run.log_artifact", size, ours, f"copy + sha256 + fsync + record; peak RSS "
                         f"{fmt_mb(ff['hwm_kib'])}", {"seconds": ff["seconds"], "hwm_kib": [ff["hwm_kib"]]}))
        rows.append(_row("cp", size, plain, "no fsync, no hash", {"seconds": cp}))
        rows.append(_row("cp + sync FILE", size, durable, "fsync of the copy", {"seconds": cps}))
        rows.append(_row("sha256 alone", size, floor, "hashlib, the file read once; no copy, no fsync",
                         {"seconds": sha}))
        rows.append(_row("mlflow.log_artifact (local root)", size, theirs,
                         f"no fsync, no hash; peak RSS {fmt_mb(ml['hwm_kib'])} (with import mlflow)",
                         {"seconds": ml["seconds"], "hwm_kib": [ml["hwm_kib"]]}))
        ratio = ours.median / plain.median
        targets.append(Row("target", f"artifacts: log_artifact {label} vs cp (goal ≤ {TARGET_VS_CP}×)",
                           f"{ratio:.2f}×", runs=f"{ours.runs}",
                           note=("met" if ratio <= TARGET_VS_CP else "MISSED")
                           + f"; vs cp + sync {ours.median / durable.median:.2f}×"
                           f"; vs mlflow.log_artifact {ours.median / theirs.median:.2f}×"
                           f"; sha256 alone is {floor.median / plain.median:.2f}× cp"))
    rows += _folder_rows(FOLDER_QUICK if quick else FOLDER, work, config, template)
    return rows + targets


def _folder_rows(cfg: dict, work: Path, config: Path, template: Path) -> list[Row]:
    """``log_artifacts`` of a folder of many small files: ours vs MLflow's vs ``cp -r``."""
    files, repeats = cfg["files"], cfg["repeats"]
    label = f"{files:,} × {FOLDER_FILE_BYTES >> 10} KiB"
    progress(f"artifacts: a folder of {label}, {repeats} repeats per option")
    src = work / "src-folder"
    src.mkdir()
    for i in range(files):
        (src / f"f{i:04d}.bin").write_bytes(os.urandom(FOLDER_FILE_BYTES))
    try:
        common = ["--src", str(src), "--repeats", str(repeats), "--work", str(work), "--folder"]
        ff = run_child("bench_artifacts_producer", ["ff", *common, "--config", str(config)])
        cp = _time_cp(src, work / "cp-dst", repeats, sync=False)
        ml = run_child("bench_artifacts_producer", ["mlflow", *common, "--template", str(template)])
    finally:
        shutil.rmtree(src, ignore_errors=True)
    ours, plain, theirs = (Stats.of(x) for x in (ff["seconds"], cp, ml["seconds"]))

    def row(option: str, st: Stats, note: str, samples: dict) -> Row:
        return Row(SECTION, f"{option}, {label}", f"{fmt_num(st.median * 1000)} ms",
                   f"{fmt_num(st.lo * 1000)} – {fmt_num(st.hi * 1000)} ms", f"{st.runs} × 1", note, samples=samples)

    return [row("ff run.log_artifacts", ours, f"copies + sha256 + fsyncs + records; peak RSS {fmt_mb(ff['hwm_kib'])}",
                {"seconds": ff["seconds"]}),
            row("cp -r", plain, "no fsync, no hash", {"seconds": cp}),
            row("mlflow.log_artifacts (local root)", theirs, "no fsync, no hash", {"seconds": ml["seconds"]}),
            Row(SECTION, f"ff run.log_artifacts vs mlflow.log_artifacts, {label}",
                f"{ours.median / theirs.median:.2f}×", runs=f"{ours.runs}",
                note=f"vs cp -r {ours.median / plain.median:.2f}× (time ratio: lower is faster)")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    sub = parser.add_subparsers(dest="cmd")
    child = sub.add_parser("child")
    child.add_argument("which", choices=("ff", "mlflow"))
    child.add_argument("--src", required=True)
    child.add_argument("--repeats", type=int, required=True)
    child.add_argument("--work", required=True)
    child.add_argument("--config")
    child.add_argument("--template")
    child.add_argument("--folder", action="store_true", help="src is a folder: log_artifacts")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "child":
        emit(child_ff(args) if args.which == "ff" else child_mlflow(args))
        return 0
    import tempfile

    from common import table

    work = args.work or Path(tempfile.mkdtemp(prefix="ff-bench-artifacts-"))
    try:
        print(table(run(quick=args.quick, work=work)))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
