#!/usr/bin/env python3
"""Archived journals (issue 18): gzip levels against zstd, and ingest from compressed against plain.

    python tools/bench/bench_archive.py [--records 200000] [--runs 3]

One journal of metric records is written by the real producer. Compression: ratio, compress
and decompress speed for gzip levels 1/6/9 (``prune --archive`` writes level 6) and zstd levels
3/10 when the ``zstandard`` module is importable (it is not a dependency: the row says so
otherwise). Ingest: ``ff-ingest --sink bulk`` of the plain journal and of its ``.gz`` archive
into fresh SQLite stores (subprocesses; median of ``--runs``), and the reader alone
(``JournalReader.chunks`` over both). Prints one markdown table.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, child_env, template_store, write_project  # noqa: E402


def build_journal(folder: Path, records: int) -> Path:
    from formula_foundry.tracking import Tracker, load_config

    tracker = Tracker(load_config(write_project(folder, fsync="never")))
    with tracker.start_run("archive-bench", experiment_name="bench") as run:
        for i in range(records - 2):
            run.log_metric(f"m{i % 8}", i * 0.5, step=i)
    return run.journal_path


def timed(fn, runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def compression_rows(data: bytes, runs: int) -> list[tuple[str, str]]:
    rows = []
    mb = len(data) / 1e6
    for level in (1, 6, 9):
        packed = gzip.compress(data, compresslevel=level, mtime=0)
        c = timed(lambda level=level: gzip.compress(data, compresslevel=level, mtime=0), runs)
        d = timed(lambda packed=packed: gzip.decompress(packed), runs)
        rows.append((f"gzip -{level}{' (prune --archive)' if level == 6 else ''}",
                     f"ratio {len(data) / len(packed):.2f}; compress {mb / c:,.0f} MB/s; decompress {mb / d:,.0f} MB/s"))
    try:
        import zstandard
    except ImportError:
        rows.append(("zstd", "not measured: the zstandard module is not installed (not a dependency)"))
        return rows
    for level in (3, 10):
        comp = zstandard.ZstdCompressor(level=level)
        packed = comp.compress(data)
        c = timed(lambda comp=comp: comp.compress(data), runs)
        d = timed(lambda packed=packed: zstandard.ZstdDecompressor().decompress(packed), runs)
        rows.append((f"zstd -{level}",
                     f"ratio {len(data) / len(packed):.2f}; compress {mb / c:,.0f} MB/s; decompress {mb / d:,.0f} MB/s"))
    return rows


def ingest_seconds(journal: Path, work: Path, records: int) -> float:
    """One ``ff-ingest --sink bulk --root`` of the folder holding ``journal`` into a fresh store."""
    if work.exists():
        shutil.rmtree(work)
    root = work / "root" / "run" / "tracking"
    root.mkdir(parents=True)
    shutil.copy(journal, root / journal.name)
    db = work / "mlflow" / "mlruns.db"
    db.parent.mkdir(parents=True)
    shutil.copy(template_store(), db)
    config = write_project(work, store_db=db)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "formula_foundry.tracking.ingest.cli", "--sink", "bulk", "-q",
                    "--config", str(config), "--root", str(work / "root")], check=True, env=child_env())
    return time.perf_counter() - start


def read_seconds(journal: Path) -> float:
    from formula_foundry.tracking.journal import JournalReader

    start = time.perf_counter()
    for _chunk in JournalReader(journal).chunks():
        pass
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ff-bench-archive-") as tmp:
        folder = Path(tmp)
        plain = build_journal(folder / "producer", args.records)
        data = plain.read_bytes()
        packed = folder / "archive" / (plain.name + ".gz")
        packed.parent.mkdir()
        packed.write_bytes(gzip.compress(data, compresslevel=6, mtime=0))
        rows = [("journal", f"{args.records:,} records, {len(data) / 1e6:.1f} MB plain, "
                            f"{packed.stat().st_size / 1e6:.1f} MB gzip -6")]
        rows += compression_rows(data, args.runs)
        for name, path in (("plain", plain), ("gzip", packed)):
            seconds = statistics.median(read_seconds(path) for _ in range(args.runs))
            rows.append((f"read+verify, {name}", f"{args.records / seconds:,.0f} records/s ({seconds:.2f} s)"))
        for name, path in (("plain", plain), ("gzip", packed)):
            seconds = statistics.median(ingest_seconds(path, folder / f"ingest-{name}", args.records)
                                        for _ in range(args.runs))
            rows.append((f"ff-ingest --sink bulk, {name}", f"{args.records / seconds:,.0f} records/s "
                                                           f"({seconds:.2f} s, process start included)"))
    print("| option | result |\n|---|---|")
    for option, result in rows:
        print(f"| {option} | {result} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
