"""Bulk sink throughput and memory: ``ff-ingest --sink bulk`` vs bare ``log_batch`` vs bare ``executemany``.

    python tools/bench/bench_bulk.py            # 100k and 1M records, 3 rounds (log_batch at 1M: 1 round)
    python tools/bench/bench_bulk.py --quick    # 10k and 50k records, 2 rounds: about two minutes
    python tools/bench/bench_bulk.py --records 200000 --repeats 5 --json /tmp/bulk.json

The journal: one run, N ``run.log_metric`` records written by the real producer
(10 keys round-robin, step = i // 10), plus run_start, one param and run_end.
Every measurement runs in a fresh child interpreter (``bench_bulk.py child``)
on a fresh copy of a migrated, empty MLflow SQLite store; the clock starts after
the imports, and a 5k-record warm-up ingest runs first in the same child.

* ``bulk``: what ``ff-ingest --sink bulk`` runs: ``open_sink(cfg, sink="bulk")``
  (schema guard, run creation through MLflow's API) and ``Replayer.ingest``
  (checksummed read, batching, SQL inserts, latest metrics, checkpoints in the
  same transactions), then ``close`` (the last commit).
* ``log_batch``: the journal read with ``orjson.loads`` line by line (no
  checksum, no checkpoint), ``Metric`` objects sent 1,000 per
  ``MlflowClient.log_batch`` into a run created by the client.
* ``executemany``: the journal read and parsed the same way, rows inserted with
  ``sqlite3``'s ``executemany`` (10,000 per call) into the store's own
  ``metrics`` table (MLflow's definition: its primary key and indexes) in one
  transaction: the floor of what any SQL path can cost.
* ``replay-null`` (with ``--modes``): ``Replayer.ingest`` into a sink that
  discards everything (batched as for the bulk sink): the cost of reading,
  verifying and batching alone.

Rounds interleave the modes (rotating their order) so load drift on a shared
machine hits all alike; ratios are medians of per-round ratios. Each child
reports its CPU time and its peak RSS (``VmHWM``, i.e. ``ru_maxrss``).
Targets (issue 8): bulk ≥ 10× log_batch, bulk ≥ 0.5× executemany, peak RSS
flat from the smallest to the largest journal (≤ +16 MB).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Row,
    Stats,
    emit,
    fmt_mb,
    fmt_rate,
    fresh_store,
    machine_info,
    peak_rss_kib,
    progress,
    rss_kib,
    run_child,
    table,
    template_store,
    write_project,
)

KEYS = 10
LOG_BATCH = 1000
EXEC_CHUNK = 10_000
WARMUP_RECORDS = 5_000
FLAT_MB = 16.0
TARGET_VS_LOG_BATCH = 10.0
TARGET_VS_EXECUTEMANY = 0.5
MODES = ("bulk", "log_batch", "executemany")
EXTRA_MODES = ("replay-null", "api")


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k"


# --------------------------------------------------------------------------- journals

def make_journal(folder: Path, n: int) -> Path:
    """A journal of ``n`` metric records through the real producer; returns its path."""
    from formula_foundry.tracking import get_tracker

    tracker = get_tracker(write_project(folder, fsync="never"))
    with tracker.start_run(run_name=f"bulk-{label(n)}", experiment_name="bench") as run:
        run.log_param("records", n)
        log_metric = run.log_metric
        for i in range(n):
            log_metric(f"m{i % KEYS}", (i % 997) * 0.5 + 0.25, step=i // KEYS)
    return run.journal_path


# --------------------------------------------------------------------------- children: one ingest each

def _metric_rows(journal: Path):
    """(key, value, timestamp, step) of every metric record, read and parsed bare."""
    import orjson

    with open(journal, "rb") as fh:
        for line in fh:
            record = orjson.loads(line)
            if record["type"] == "metric":
                yield record["key"], record["value"], record.get("mts", record["ts"]), record["step"]


def _ingest_replay(journal: Path, store: Path, work: Path, sink_kind: str) -> tuple[float, int]:
    from formula_foundry.tracking.config import load_config
    from formula_foundry.tracking.ingest.stores.connect import open_sink
    from formula_foundry.tracking.ingest.replay import Replayer

    cfg = load_config(write_project(work, store_db=store))
    start = time.perf_counter()
    sink = open_sink(cfg, sink=sink_kind)
    if getattr(sink, "kind", "api") != sink_kind:
        raise RuntimeError(f"asked for the {sink_kind} sink, got {sink.kind}")
    try:
        report = Replayer(sink).ingest([journal])
    finally:
        sink.close()
    seconds = time.perf_counter() - start
    if not report.ok:
        raise RuntimeError(f"ingest failed: {[j.errors for j in report.journals]}")
    return seconds, report.records - 3  # minus run_start, the param and run_end


def _null_sink():
    """A sink that discards everything: what reading, verifying and batching cost on their own."""
    from formula_foundry.tracking.ingest.sink import RunInfo, Sink
    from formula_foundry.tracking.ingest.stores.checkpoints import MemoryCheckpoints

    class NullSink(Sink):
        kind = "null"
        display_uri = "null:"
        absorbs_repeated_metrics = True  # batch as for the bulk sink (no in-batch dedupe)

        def __init__(self) -> None:
            self.checkpoints = MemoryCheckpoints()
            self._info = RunInfo("0" * 32, "1")

        def experiment_id(self, name):
            return "1"

        def find_run(self, run_id, experiment_id=None):
            return None

        def create_run(self, **kwargs):
            return self._info

        def existing_params(self, mlflow_run_id):
            return {}

        def commit(self, mlflow_run_id, batch, checkpoint) -> None:
            self.checkpoints.put(checkpoint)

    return NullSink()


def _ingest_null(journal: Path, store: Path, work: Path) -> tuple[float, int]:
    from formula_foundry.tracking.ingest.replay import Replayer

    start = time.perf_counter()
    report = Replayer(_null_sink()).ingest([journal])
    return time.perf_counter() - start, report.records - 3


def _ingest_log_batch(journal: Path, store: Path, work: Path) -> tuple[float, int]:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    client.search_experiments(max_results=1)  # open the engine, check the schema: setup
    start = time.perf_counter()
    exp_id = client.create_experiment("bench-bare", artifact_location=(work / "artifacts").as_uri())
    run_id = client.create_run(exp_id, run_name="bare").info.run_id
    count = 0
    batch: list = []
    for key, value, timestamp, step in _metric_rows(journal):
        batch.append(Metric(key, value, timestamp, step))
        if len(batch) == LOG_BATCH:
            client.log_batch(run_id, metrics=batch, synchronous=True)
            count += len(batch)
            batch = []
    if batch:
        client.log_batch(run_id, metrics=batch, synchronous=True)
        count += len(batch)
    client.set_terminated(run_id, "FINISHED")
    return time.perf_counter() - start, count


def _ingest_executemany(journal: Path, store: Path, work: Path) -> tuple[float, int]:
    import sqlite3

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")  # setup: a real run row to point at
    run_id = client.create_run(client.create_experiment("bench-bare")).info.run_id
    start = time.perf_counter()
    db = sqlite3.connect(store, isolation_level=None)
    sql = "INSERT INTO metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?, ?, ?, ?, ?, ?)"
    count = 0
    rows: list[tuple] = []
    db.execute("BEGIN IMMEDIATE")
    for key, value, timestamp, step in _metric_rows(journal):
        rows.append((key, value, timestamp, step, 0, run_id))
        if len(rows) == EXEC_CHUNK:
            db.executemany(sql, rows)
            count += len(rows)
            rows = []
    db.executemany(sql, rows)
    count += len(rows)
    db.execute("COMMIT")
    db.close()
    return time.perf_counter() - start, count


INGESTERS = {
    "bulk": lambda j, s, w: _ingest_replay(j, s, w, "bulk"),
    "api": lambda j, s, w: _ingest_replay(j, s, w, "api"),
    "log_batch": _ingest_log_batch,
    "executemany": _ingest_executemany,
    "replay-null": _ingest_null,
}


def child(argv: list[str]) -> dict:
    import logging

    parser = argparse.ArgumentParser(prog="bench_bulk.py child")
    parser.add_argument("--mode", choices=sorted(INGESTERS), required=True)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--warmup-journal", required=True)
    parser.add_argument("--template", required=True)
    parser.add_argument("--work", required=True)
    args = parser.parse_args(argv)
    from formula_foundry.tracking.ingest.stores.mlflow_api import quiet_mlflow_logs

    quiet_mlflow_logs()
    logging.getLogger("formula_foundry").setLevel(logging.ERROR)
    ingest = INGESTERS[args.mode]
    work = Path(args.work)

    def one(journal: Path, tag: str) -> tuple[float, int]:
        folder = work / f"{args.mode}-{tag}"
        store = fresh_store(Path(args.template), folder / "mlruns.db")
        try:
            return ingest(journal, store, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    one(Path(args.warmup_journal), "warmup")
    rss_start = rss_kib()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    seconds, count = one(Path(args.journal), "timed")
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"seconds": seconds, "records": count, "cpu_seconds": cpu, "rss_start_kib": rss_start,
            "peak_rss_kib": peak_rss_kib(), "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


# --------------------------------------------------------------------------- the benchmark (parent side)

def run(*, sizes: dict[int, int], modes: tuple[str, ...], work: Path, log_batch_repeats: int | None = None,
        template: Path | None = None) -> tuple[list[Row], dict]:
    template = template or template_store()
    warm = make_journal(work / "journal-warmup", WARMUP_RECORDS)
    rows: list[Row] = []
    raw: dict = {"machine": machine_info(), "sizes": {}}
    for n, repeats in sizes.items():
        progress(f"bulk: writing a {label(n)}-record journal")
        journal = make_journal(work / f"journal-{label(n)}", n)
        samples: dict[str, list[dict]] = {m: [] for m in modes}
        for r in range(repeats):
            order = modes[r % len(modes):] + modes[:r % len(modes)]
            for mode in order:
                if mode in ("log_batch", "api") and log_batch_repeats is not None and r >= log_batch_repeats:
                    continue
                progress(f"bulk: {label(n)} records, round {r + 1}/{repeats}, {mode}")
                res = run_child("bench_bulk", ["--mode", mode, "--journal", str(journal), "--warmup-journal",
                                               str(warm), "--template", str(template), "--work",
                                               str(work / f"w-{mode}")], timeout=7200)
                if res["records"] != n:
                    raise RuntimeError(f"{mode}: ingested {res['records']} metrics, not {n}")
                res["round"] = r
                samples[mode].append(res)
                progress(f"bulk:   {n / res['seconds']:,.0f} records/s, peak RSS {fmt_mb(res['peak_rss_kib'])}")
        journal.unlink()
        raw["sizes"][n] = samples
        rates = {m: Stats.of([n / s["seconds"] for s in samples[m]]) for m in modes if samples[m]}
        for mode in modes:
            if not samples[mode]:
                continue
            rate = rates[mode]
            peak = max(s["peak_rss_kib"] for s in samples[mode])
            cpu = _cpu_rate(samples[mode], n)
            rows.append(Row("bulk", f"{mode}, {label(n)}", fmt_rate(rate.median, "rec/s"),
                            f"{rate.lo:,.0f} – {rate.hi:,.0f} rec/s", f"{rate.runs} × {n:,}",
                            f"{cpu:,.0f} rec per CPU-s; peak RSS {fmt_mb(peak)} "
                            f"(+{fmt_mb(peak - min(s['rss_start_kib'] for s in samples[mode]))} over the start)",
                            samples={"records_per_s": list(rate.values)}))
        for other, target, word in (("log_batch", TARGET_VS_LOG_BATCH, "×"),
                                    ("executemany", TARGET_VS_EXECUTEMANY, "×")):
            if "bulk" not in rates or other not in rates:
                continue
            ratio = _ratio(samples["bulk"], samples[other], n)
            cpu_ratio = _cpu_rate(samples["bulk"], n) / _cpu_rate(samples[other], n)
            ok = ratio >= target
            rows.append(Row("target", f"bulk vs {other}, {label(n)}", f"{ratio:.2f}{word}",
                            f"{rates['bulk'].lo / rates[other].hi:.2f} – {rates['bulk'].hi / rates[other].lo:.2f}",
                            "", f"target ≥ {target:g}{word}: " + ("met" if ok else
                                                                   f"MISSED ({ratio / target * 100:.0f}% of it)")
                            + f"; per CPU-second {cpu_ratio:.2f}{word}",
                            samples={"ratio": [ratio], "cpu_ratio": [cpu_ratio]}))
    return rows, raw


def _cpu_rate(samples: list[dict], n: int) -> float:
    return statistics.median(n / s["cpu_seconds"] for s in samples if s["cpu_seconds"] > 0)


def _ratio(ours: list[dict], other: list[dict], n: int) -> float:
    """Median of per-round ratios where both ran in a round; else the ratio of the medians."""
    by_round = {s["round"]: n / s["seconds"] for s in other}
    paired = [(n / s["seconds"]) / by_round[s["round"]] for s in ours if s["round"] in by_round]
    if paired:
        return statistics.median(paired)
    return statistics.median(n / s["seconds"] for s in ours) / statistics.median(n / s["seconds"] for s in other)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["child"]:
        emit(child(argv[1:]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 50k records, 2 rounds")
    parser.add_argument("--records", type=int, nargs="+", help="journal sizes (default: 100000 1000000)")
    parser.add_argument("--repeats", type=int, help="rounds per size (default 3; --quick 2)")
    parser.add_argument("--log-batch-repeats", type=int,
                        help="rounds of log_batch (slow: ~5 min per 1M here); default 1 for 1M+, else all")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated, from {', '.join(MODES + EXTRA_MODES)} (default: {','.join(MODES)})")
    parser.add_argument("--json", help="write every sample here")
    parser.add_argument("--work", help="scratch folder (default: a removed temp dir)")
    args = parser.parse_args(argv)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = set(modes) - set(INGESTERS)
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    records = args.records or ([10_000, 50_000] if args.quick else [100_000, 1_000_000])
    repeats = args.repeats or (2 if args.quick else 3)
    sizes = {n: repeats for n in sorted(records)}
    with tempfile.TemporaryDirectory(prefix="ff-bench-bulk-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        started = time.perf_counter()
        all_rows: list[Row] = []
        raw: dict = {"sizes": {}}
        for n, rounds in sizes.items():
            per_size = args.log_batch_repeats or (1 if n >= 1_000_000 else None)
            rows, part = run(sizes={n: rounds}, modes=modes, work=work, log_batch_repeats=per_size)
            all_rows += rows
            raw["machine"] = part["machine"]
            raw["sizes"].update(part["sizes"])
        if len(sizes) >= 2:
            all_rows += _flat_rows(raw, modes)
    info = raw["machine"]
    print(f"bulk sink benchmark: {info['cores']} cores ({info['cpu']}), Python {info['python']}, "
          f"mlflow {info['mlflow']}, SQLAlchemy {info['sqlalchemy']}, load average {info['loadavg']}, "
          f"{time.perf_counter() - started:,.0f} s\n")
    print(table(all_rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [r.to_json() for r in all_rows], "raw": raw}, indent=1))
    return 0


def _flat_rows(raw: dict, modes: tuple[str, ...]) -> list[Row]:
    sizes = sorted(raw["sizes"])
    small, big = sizes[0], sizes[-1]
    rows = []
    for mode in modes:
        a, b = raw["sizes"][small].get(mode), raw["sizes"][big].get(mode)
        if not a or not b:
            continue
        pa, pb = max(s["peak_rss_kib"] for s in a), max(s["peak_rss_kib"] for s in b)
        grow = (pb - pa) / 1024
        note = (f"flat (≤ +{FLAT_MB:.0f} MB for {big // small}× the records): "
                + ("met" if grow <= FLAT_MB else "MISSED")) if mode == "bulk" else "for reference"
        rows.append(Row("target", f"{mode} peak RSS {label(small)} → {label(big)}", f"{grow:+,.1f} MB",
                        f"{fmt_mb(pa)} → {fmt_mb(pb)}", "", note, samples={"growth_mb": [grow]}))
    return rows


if __name__ == "__main__":
    sys.exit(main())
