"""Ingest throughput and peak memory: ``ff-ingest --sink api`` vs a bare ``MlflowClient.log_batch`` loop.

The journal: one run, N ``run.log_metric`` records written by the real
producer (10 keys round-robin, step = i // 10), plus its run_start/run_end.

* ``ff-ingest --sink api``: what ``ff-ingest --sink api`` runs per journal,
  called directly (``open_sink(cfg, sink="api")`` + ``Replayer.ingest``):
  header, run lookup and creation, checksummed read, batching (1,000 metrics
  per ``log_batch``), a durable checkpoint after every batch, run end.
* ``bare log_batch``: the same journal read line by line with ``orjson.loads``
  (no checksum, no checkpoint), ``Metric`` objects sent 1,000 per
  ``MlflowClient.log_batch``; the run created and terminated the same way.

Both write into a fresh copy of a migrated, empty SQLite store each run; the
store's engine is opened before the clock starts (MLflow's schema check is
setup, not ingest). Each option runs in its own child per journal size: a
warm-up on a small journal, then the timed runs; the child reports its peak
RSS (``VmHWM``) and its RSS when the first timed run started, so memory growth
with journal size is visible.
"""

from __future__ import annotations

import argparse
import resource
import shutil
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
    peak_rss_kib,
    progress,
    rss_kib,
    run_child,
    smoke,
    template_store,
    write_project,
)

KEYS = 10
BATCH = 1000
TARGET_FRACTION = 0.80
FLAT_MB = 16.0  # "flat": the 1M run peaks at most this much above the 100k run
WARMUP_RECORDS = 2_000

# size -> repeats. The 1M runs take ~2 minutes each through MLflow's API here, so fewer of them.
FULL = {100_000: 5, 1_000_000: 1}
QUICK = {20_000: 3}
SMOKE = {2_000: 1}  # run.py --smoke


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k"


# --------------------------------------------------------------------------- journals

def make_journal(folder: Path, n: int) -> Path:
    """Write a journal of ``n`` metric records through the real producer; returns its path."""
    from formula_foundry.tracking import get_tracker

    tracker = get_tracker(write_project(folder, fsync="never"))
    with tracker.start_run(run_name=f"ingest-{label(n)}") as run:
        run.log_param("records", n)
        log_metric = run.log_metric
        for i in range(n):
            log_metric(f"m{i % KEYS}", (i % 997) * 0.5 + 0.25, step=i // KEYS)
    return run.journal_path


# --------------------------------------------------------------------------- children

def _ingest_ours(journal: Path, store: Path, work: Path) -> tuple[float, int]:
    from formula_foundry.tracking.config import load_config
    from formula_foundry.tracking.ingest.stores.connect import open_sink
    from formula_foundry.tracking.ingest.replay import Replayer

    cfg = load_config(write_project(work, store_db=store))
    sink = open_sink(cfg, sink="api")
    try:
        sink.api.client.search_experiments(max_results=1)  # open the engine and check the schema: setup
        start = time.perf_counter()
        report = Replayer(sink).ingest([journal])
        seconds = time.perf_counter() - start
    finally:
        sink.close()
    if not report.ok or report.records == 0:
        raise RuntimeError(f"ingest failed: {[j.errors for j in report.journals]}")
    return seconds, report.records - 3  # all records minus run_start, the param and run_end


def _ingest_bare(journal: Path, store: Path, work: Path) -> tuple[float, int]:
    import orjson
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    client.search_experiments(max_results=1)
    start = time.perf_counter()
    experiment = client.get_experiment_by_name("bench")
    exp_id = experiment.experiment_id if experiment else client.create_experiment(
        "bench", artifact_location=(work / "artifacts").as_uri())
    run_id = client.create_run(exp_id, run_name="bare").info.run_id
    count = 0
    batch: list = []
    with open(journal, "rb") as fh:
        for line in fh:
            record = orjson.loads(line)
            if record["type"] != "metric":
                continue
            batch.append(Metric(record["key"], record["value"], record.get("mts", record["ts"]), record["step"]))
            if len(batch) == BATCH:
                client.log_batch(run_id, metrics=batch, synchronous=True)
                count += len(batch)
                batch = []
    if batch:
        client.log_batch(run_id, metrics=batch, synchronous=True)
        count += len(batch)
    client.set_terminated(run_id, "FINISHED")
    return time.perf_counter() - start, count


def child_ingest(args: argparse.Namespace) -> dict:
    import logging

    from formula_foundry.tracking.ingest.stores.mlflow_api import quiet_mlflow_logs

    quiet_mlflow_logs()
    logging.getLogger("formula_foundry").setLevel(logging.ERROR)
    fn = _ingest_ours if args.mode == "ours" else _ingest_bare
    work = Path(args.work)
    template = Path(args.template)

    def one(journal: Path, tag: str) -> tuple[float, int]:
        folder = work / f"{args.mode}-{tag}"
        store = fresh_store(template, folder / "mlruns.db")
        try:
            return fn(Path(journal), store, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    one(Path(args.warmup_journal), "warmup")
    rss_start = rss_kib()
    samples = []
    for r in range(args.repeats):
        cpu = _cpu_seconds()
        seconds, count = one(Path(args.journal), f"run{r}")
        samples.append({"seconds": seconds, "cpu_seconds": _cpu_seconds() - cpu, "records": count})
    return {"samples": samples, "rss_start_kib": rss_start, "peak_rss_kib": peak_rss_kib()}


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads; SQLite runs in-process)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- the benchmark (parent side)

def run(*, quick: bool, work: Path, template: Path | None = None, sizes: dict[int, int] | None = None) -> list[Row]:
    plan = sizes or (SMOKE if smoke() else QUICK if quick else FULL)
    template = template or template_store()
    warm = make_journal(work / "journal-warmup", WARMUP_RECORDS)
    rows: list[Row] = []
    peaks: dict[tuple[str, int], int] = {}
    for n, repeats in plan.items():
        progress(f"ingest: writing a {label(n)}-record journal")
        journal = make_journal(work / f"journal-{label(n)}", n)
        results: dict[str, list[dict]] = {"ours": [], "bare": []}
        # One child per run, alternating which goes first, so load drift hits both alike. --quick runs
        # all of a mode's runs in one child instead: MLflow's import (seconds) once per mode, not per run.
        rounds, per_child = (1, repeats) if quick else (repeats, 1)
        for r in range(rounds):
            for mode in (("ours", "bare") if r % 2 == 0 else ("bare", "ours")):
                progress(f"ingest: {label(n)} records, {mode}, "
                         + (f"{per_child} runs" if per_child > 1 else f"run {r + 1} of {rounds}"))
                res = run_child("bench_ingest", ["ingest", "--mode", mode, "--journal", str(journal),
                                                 "--warmup-journal", str(warm), "--template", str(template),
                                                 "--work", str(work / f"ingest-{mode}"),
                                                 "--repeats", str(per_child)])
                if any(s["records"] != n for s in res["samples"]):
                    raise RuntimeError(f"{mode}: ingested {[s['records'] for s in res['samples']]} metrics, not {n}")
                results[mode].append(res)
        journal.unlink()
        rates: dict[str, Stats] = {}
        cpu_rates: dict[str, Stats] = {}
        for mode in ("ours", "bare"):
            samples = [s for res in results[mode] for s in res["samples"]]
            rate = rates[mode] = Stats.of([n / s["seconds"] for s in samples])
            cpu_rates[mode] = Stats.of([n / s["cpu_seconds"] for s in samples])
            peak = peaks[(mode, n)] = max(res["peak_rss_kib"] for res in results[mode])
            growth = max(res["peak_rss_kib"] - res["rss_start_kib"] for res in results[mode])
            option = f"ff-ingest --sink api, {label(n)}" if mode == "ours" else f"bare log_batch ×{BATCH}, {label(n)}"
            note = (f"peak RSS {fmt_mb(peak)} (+{fmt_mb(growth)} over the start); "
                    f"per CPU-second {fmt_rate(cpu_rates[mode].median, 'rec')}")
            if repeats < 5 and not quick:
                note += f"; {repeats} run{'s' if repeats > 1 else ''} only (slow through MLflow's API)"
            rows.append(Row("ingest", option, fmt_rate(rate.median, "rec/s"), f"{rate.lo:,.0f} – {rate.hi:,.0f} rec/s",
                            f"{rate.runs} × {n:,}", note,
                            samples={"records_per_s": list(rate.values),
                                     "records_per_cpu_s": list(cpu_rates[mode].values),
                                     "peak_rss_kib": [res["peak_rss_kib"] for res in results[mode]],
                                     "rss_start_kib": [res["rss_start_kib"] for res in results[mode]]}))
        # Paired: run i of ours against run i of bare (back to back, except with --quick).
        paired = Stats.of([o / b for o, b in zip(rates["ours"].values, rates["bare"].values, strict=True)])
        cpu_fraction = cpu_rates["ours"].median / cpu_rates["bare"].median
        fraction = paired.median
        verdict = (f"met ({(fraction - TARGET_FRACTION) * 100:.0f} points above)" if fraction >= TARGET_FRACTION
                   else f"MISSED (short by {(TARGET_FRACTION - fraction) * 100:.0f} points)")
        rows.append(Row("target", f"ingest vs bare log_batch, {label(n)}", f"{fraction * 100:.0f}% of bare",
                        f"{paired.lo * 100:.0f} – {paired.hi * 100:.0f}% (paired runs)", "",
                        f"target ≥ {TARGET_FRACTION * 100:.0f}%: {verdict}; per CPU-second {cpu_fraction * 100:.0f}%",
                        samples={"fraction": list(paired.values), "cpu_fraction": [cpu_fraction]}))
    sizes_run = sorted(plan)
    if len(sizes_run) >= 2:
        small, big = sizes_run[0], sizes_run[-1]
        for mode, name in (("ours", "ff-ingest"), ("bare", "bare log_batch")):
            grow_mb = (peaks[(mode, big)] - peaks[(mode, small)]) / 1024
            ok = grow_mb <= FLAT_MB
            rows.append(Row("target", f"{name} peak memory {label(small)} → {label(big)}",
                            f"{grow_mb:+,.1f} MB", f"{fmt_mb(peaks[(mode, small)])} → {fmt_mb(peaks[(mode, big)])}",
                            "", (f"flat (≤ +{FLAT_MB:.0f} MB for {big // small}× the records): "
                                 + ("met" if ok else "MISSED")) if mode == "ours" else "for reference",
                            samples={"growth_mb": [grow_mb]}))
    return rows


# --------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd")
    child = sub.add_parser("child", help="internal: timed ingests in a fresh interpreter")
    child.add_argument("what", choices=["ingest"])
    child.add_argument("--mode", choices=["ours", "bare"], required=True)
    child.add_argument("--journal", required=True)
    child.add_argument("--warmup-journal", required=True)
    child.add_argument("--template", required=True)
    child.add_argument("--work", required=True)
    child.add_argument("--repeats", type=int, default=5)
    standalone = sub.add_parser("run", help="run this benchmark alone and print its rows")
    standalone.add_argument("--quick", action="store_true")
    standalone.add_argument("--records", type=int, nargs="*", help="journal sizes (default: 100k and 1M)")
    standalone.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    if args.cmd == "child":
        emit(child_ingest(args))
        return 0
    from common import table

    sizes = None
    if getattr(args, "records", None):
        sizes = {n: args.repeats or (1 if n >= 1_000_000 else 5) for n in args.records}
    with tempfile.TemporaryDirectory(prefix="ff-bench-") as tmp:
        print(table(run(quick=bool(getattr(args, "quick", False)), work=Path(tmp), sizes=sizes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
