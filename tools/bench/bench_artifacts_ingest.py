"""Upload of real artifacts at ingest: ``ff-ingest`` vs ``mlflow.log_artifacts`` of the same folder.

The data: one folder of 1,000 files of 100 KiB (random bytes). The producer
logs each file (``Run.log_artifact`` where it exists, else the same two steps:
``ArtifactStore.add_file`` then one ``artifact`` record) into one run's
journal; that is not timed here.

* ``ff-ingest --sink api``: what ``ff-ingest`` runs per journal, called
  directly (``open_sink`` + ``Replayer.ingest``): run lookup and creation,
  checksummed read, batches of at most 100 uploads, for each file the blob
  found and copied into the run's local artifact folder while its sha256 and
  size are verified (4 threads; the copy named only once verified), one
  ``syncfs`` and a durable checkpoint after every batch, run end.
* ``mlflow.log_artifacts``: ``mlflow.start_run()``, ``mlflow.log_artifacts(folder)``,
  ``mlflow.end_run()`` (MLflow's own recursive upload, sequential, no digest, no fsync).
* ``mlflow.log_artifacts + syncfs``: the same, then one ``syncfs`` of the artifact location inside
  the clock: what MLflow's upload costs once it is as durable as ours when it returns (the kernel
  would otherwise write its ~100 MB back after the clock stops; on this VM that write-back is
  CPU time, ~130 ms per 100 MB, that ``ff-ingest`` pays inside its run).

Both write into a fresh copy of a migrated, empty SQLite store and a fresh
local artifact root each run; the store is opened, the experiment created and
``os.sync()`` run before the clock starts, on both sides (``ff-ingest``'s
``syncfs`` would otherwise also write back what the previous run, ours or
MLflow's, left dirty). Each run is a child process
(alternating which goes first) after a warm-up on 50 files in the same child;
the child reports its peak RSS (``VmHWM``) and its RSS when the timed run
started. Nothing is deleted until the section ends: this file system (ext4
without a journal) makes every file created within a minute of many deletions
pay for skipping the recently freed inodes, which would charge one option for
the other's clean-up.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
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
    fresh_store,
    peak_rss_kib,
    progress,
    rss_kib,
    run_child,
    template_store,
    write_project,
)

SECTION = "artifacts-ingest"
FILES = 1000
FILE_BYTES = 100 << 10
WARMUP_FILES = 50
REPEATS = 5
QUICK_REPEATS = 3
TARGET_RATIO = 1.0  # the goal: at least as fast as mlflow.log_artifacts


# --------------------------------------------------------------------------- data

def _project(folder: Path, blobs: Path, **kwargs) -> Path:
    """:func:`write_project` with ``journal.artifact_store`` at ``blobs``; returns the config path."""
    config = write_project(folder, **kwargs)
    config.write_text(config.read_text().replace("journal:\n", f"journal:\n  artifact_store: \"{blobs}\"\n", 1))
    return config


def make_files(folder: Path, n: int, size: int, seed: int) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"file-{i:04d}.bin").write_bytes(rng.randbytes(size))
    return folder


def make_journal(project: Path, files: Path) -> Path:
    """One run whose journal names every file of ``files`` (the blobs in the project's store)."""
    from formula_foundry.substrate import ArtifactStore
    from formula_foundry.tracking import get_tracker

    tracker = get_tracker(_project(project, project / "artifacts", fsync="never"))
    store = ArtifactStore(project / "artifacts")
    with tracker.start_run(run_name=f"uploads-{files.name}") as run:
        for path in sorted(files.iterdir()):
            if hasattr(run, "log_artifact"):
                run.log_artifact(str(path), "files")
            else:
                entry = store.add_file(path)
                run._append("artifact", {"path": f"files/{path.name}", "digest": entry.digest,
                                         "size_bytes": entry.size_bytes, "store_uri": store.root.as_uri(),
                                         "media_type": None})
    return run.journal_path


# --------------------------------------------------------------------------- children

def _ours(journal: Path, files: Path, store: Path, work: Path, blobs: Path) -> float:
    from formula_foundry.tracking.config import load_config
    from formula_foundry.tracking.ingest.replay import Replayer
    from formula_foundry.tracking.ingest.stores.connect import open_sink

    from formula_foundry.tracking.journal import JournalReader

    cfg = load_config(_project(work, blobs, store_db=store))
    sink = open_sink(cfg, sink="api")
    try:
        sink.api.client.search_experiments(max_results=1)  # open the engine and check the schema: setup
        header = next(iter(JournalReader(journal).records()))
        sink.experiment_id(header.get("experiment") or "Default")  # as the MLflow side: experiment made first
        os.sync()  # start clean: no run pays for writing back what an earlier one left dirty
        start = time.perf_counter()
        report = Replayer(sink).ingest([journal])
        seconds = time.perf_counter() - start
    finally:
        sink.close()
    if not report.ok or report.uploads != len(list(files.iterdir())):
        raise RuntimeError(f"ingest failed: {[j.errors for j in report.journals]}, {report.uploads} uploads")
    return seconds


def _mlflow(journal: Path, files: Path, store: Path, work: Path, blobs: Path, *, durable: bool = False) -> float:
    import mlflow

    from formula_foundry.tracking.ingest.stores.mlflow_api import sync_filesystem

    mlflow.set_tracking_uri(f"sqlite:///{store}")
    client = mlflow.MlflowClient()
    client.search_experiments(max_results=1)
    exp_id = client.create_experiment("bench", artifact_location=(work / "artifacts").as_uri())
    os.sync()  # start clean, as ours
    start = time.perf_counter()
    with mlflow.start_run(experiment_id=exp_id):
        mlflow.log_artifacts(str(files), "files")
    if durable:
        sync_filesystem(work / "artifacts")
    return time.perf_counter() - start


def _check(work: Path, files: Path) -> None:
    """Every file arrived, byte for byte (outside the clock)."""
    roots = [p for p in work.rglob("files") if p.is_dir() and p.parent.name == "artifacts"]
    if len(roots) != 1:
        raise RuntimeError(f"uploaded files not found under {work}: {roots}")
    root = roots[0]
    for path in files.iterdir():
        if (root / path.name).read_bytes() != path.read_bytes():
            raise RuntimeError(f"{path.name}: bytes differ after upload")


def child_upload(args: argparse.Namespace) -> dict:
    import logging

    from formula_foundry.tracking.ingest.stores.mlflow_api import quiet_mlflow_logs

    quiet_mlflow_logs()
    logging.getLogger("formula_foundry").setLevel(logging.ERROR)
    fn = {"ours": _ours, "mlflow": _mlflow,
          "mlflow-durable": lambda *a: _mlflow(*a, durable=True)}[args.mode]
    work = Path(args.work)

    def one(journal: Path, files: Path, blobs: Path, tag: str) -> float:
        folder = work / f"{args.mode}-{os.getpid()}-{tag}"  # kept until the section ends (see the module doc)
        store = fresh_store(Path(args.template), folder / "mlruns.db")
        seconds = fn(journal, files, store, folder, blobs)
        _check(folder, files)
        return seconds

    one(Path(args.warmup_journal), Path(args.warmup_files), Path(args.warmup_blobs), "warmup")
    rss_start = rss_kib()
    seconds = [one(Path(args.journal), Path(args.files), Path(args.blobs), f"run{r}") for r in range(args.repeats)]
    return {"seconds": seconds, "rss_start_kib": rss_start, "peak_rss_kib": peak_rss_kib()}


# --------------------------------------------------------------------------- the benchmark (parent side)

def run(*, quick: bool, work: Path, template: Path | None = None, files: int = FILES,
        repeats: int | None = None) -> list[Row]:
    repeats = repeats or (QUICK_REPEATS if quick else REPEATS)
    template = template or template_store()
    progress(f"{SECTION}: writing {files:,} files of {FILE_BYTES >> 10} KiB and their journal")
    data = make_files(work / "files", files, FILE_BYTES, seed=15)
    journal = make_journal(work / "producer", data)
    warm_data = make_files(work / "warmup-files", WARMUP_FILES, FILE_BYTES, seed=16)
    warm_journal = make_journal(work / "warmup-producer", warm_data)
    results: dict[str, list[dict]] = {"ours": [], "mlflow": [], "mlflow-durable": []}
    modes = list(results)
    for r in range(repeats):
        for mode in modes[r % 3:] + modes[:r % 3]:  # each option first in turn
            progress(f"{SECTION}: {mode}, run {r + 1} of {repeats}")
            results[mode].append(run_child("bench_artifacts_ingest", [
                "upload", "--mode", mode, "--journal", str(journal), "--files", str(data),
                "--blobs", str(work / "producer" / "artifacts"), "--warmup-journal", str(warm_journal),
                "--warmup-files", str(warm_data), "--warmup-blobs", str(work / "warmup-producer" / "artifacts"),
                "--template", str(template), "--work", str(work / f"upload-{mode}"), "--repeats", "1"]))
    for mode in results:
        shutil.rmtree(work / f"upload-{mode}", ignore_errors=True)  # every run's files, now that none is timed
    total_mb = files * FILE_BYTES / 1e6
    rows: list[Row] = []
    rates: dict[str, Stats] = {}
    for mode, option in (("ours", "ff-ingest --sink api (upload, verified)"), ("mlflow", "mlflow.log_artifacts"),
                         ("mlflow-durable", "mlflow.log_artifacts + syncfs")):
        seconds = Stats.of([s for res in results[mode] for s in res["seconds"]])
        rate = rates[mode] = Stats.of([files / s for s in seconds.values])
        peak = max(res["peak_rss_kib"] for res in results[mode])
        growth = max(res["peak_rss_kib"] - res["rss_start_kib"] for res in results[mode])
        rows.append(Row(SECTION, f"{option}, {files:,} × {FILE_BYTES >> 10} KiB",
                        f"{seconds.median:.2f} s", f"{seconds.lo:.2f} – {seconds.hi:.2f} s",
                        f"{seconds.runs} × {files:,}",
                        f"{rate.median:,.0f} files/s, {total_mb / seconds.median:,.0f} MB/s; peak RSS {fmt_mb(peak)} "
                        f"(+{fmt_mb(growth)} over the start)",
                        samples={"seconds": list(seconds.values),
                                 "peak_rss_kib": [res["peak_rss_kib"] for res in results[mode]],
                                 "rss_start_kib": [res["rss_start_kib"] for res in results[mode]]}))
    paired = Stats.of([o / m for o, m in zip(rates["ours"].values, rates["mlflow"].values, strict=True)])
    verdict = "met" if paired.median >= TARGET_RATIO else "MISSED"
    rows.append(Row("target", "ingest upload vs mlflow.log_artifacts", f"{paired.median:.2f}× as fast",
                    f"{paired.lo:.2f} – {paired.hi:.2f}× (paired runs)", "",
                    f"target ≥ {TARGET_RATIO:.1f}×: {verdict}", samples={"ratio": list(paired.values)}))
    durable = Stats.of([o / m for o, m in zip(rates["ours"].values, rates["mlflow-durable"].values, strict=True)])
    rows.append(Row(SECTION, "ingest upload vs mlflow.log_artifacts + syncfs", f"{durable.median:.2f}× as fast",
                    f"{durable.lo:.2f} – {durable.hi:.2f}× (paired runs)", "",
                    "both durable when the clock stops", samples={"ratio": list(durable.values)}))
    return rows


# --------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd")
    child = sub.add_parser("child", help="internal: timed uploads in a fresh interpreter")
    child.add_argument("what", choices=["upload"])
    child.add_argument("--mode", choices=["ours", "mlflow", "mlflow-durable"], required=True)
    for name in ("journal", "files", "blobs", "warmup-journal", "warmup-files", "warmup-blobs", "template",
                 "work"):
        child.add_argument(f"--{name}", required=True)
    child.add_argument("--repeats", type=int, default=1)
    standalone = sub.add_parser("run", help="run this benchmark alone and print its rows")
    standalone.add_argument("--quick", action="store_true")
    standalone.add_argument("--files", type=int, default=FILES)
    standalone.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    if args.cmd == "child":
        emit(child_upload(args))
        return 0
    import tempfile

    from common import table

    with tempfile.TemporaryDirectory(prefix="ff-bench-artifacts-") as tmp:
        rows = run(quick=getattr(args, "quick", False), work=Path(tmp), files=getattr(args, "files", FILES),
                   repeats=getattr(args, "repeats", None))
    print(table(rows))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.exit(main())
