#!/usr/bin/env python3
"""``mlflow.log_metric`` through the MLflow drop-in (``ff-journal:``) vs MLflow's own stores, side by side.

    python tools/bench/bench_dropin.py              # N=20,000 (SQLite: 300), 5 runs each
    python tools/bench/bench_dropin.py --quick      # N=2,000 (SQLite: 50), 3 runs each

Options, each in a fresh subprocess (MLflow keeps global state), timed over the same
fluent loop ``mlflow.log_metric("loss", v, step=i)`` inside ``mlflow.start_run()``
after a warm-up:

* ``ff-journal:`` -- the drop-in: one journal record per call (fsync=interval),
  registry URI set by the plugin to the configured store.
* ``sqlite`` -- MLflow straight into a SQLite store (one transaction per call).
* ``sqlite async, until flushed`` -- ``synchronous=False``, then
  ``mlflow.flush_async_logging()``; cost = time until flushed / N.
* ``floor`` -- a tracking store whose writes do nothing: what MLflow's fluent API
  costs before any store work. ``floor, no registry URI`` is the same without a
  registry URI (MLflow then tries a Spark session on every call: a failed
  ``import pyspark``); ``floor, registry URI set`` is what the drop-in runs with.

Printed: a markdown table (median and min-max per call) and the target rows
(goal: ``ff-journal:`` >= 100x faster per call than SQLite; acceptance floor 50x).
``--json FILE`` writes the samples.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FULL = {"n": 20_000, "n_sqlite": 300, "repeats": 5}
QUICK = {"n": 2_000, "n_sqlite": 50, "repeats": 3}
OPTIONS = ("ff-journal:", "sqlite", "sqlite async, until flushed", "floor, registry URI set",
           "floor, no registry URI")


# --------------------------------------------------------------------------- child: one timed loop

def child(option: str, n: int, work: Path) -> dict:
    import mlflow

    if option.startswith("floor"):
        from mlflow.store.tracking.abstract_store import AbstractStore
        from mlflow.tracking._tracking_service import utils

        class NoopStore(AbstractStore):
            """Writes do nothing; create_run hands back a run (what fluent start_run needs)."""

            def __init__(self, store_uri=None, artifact_uri=None):
                super().__init__()
                self._runs = {}

            def create_run(self, experiment_id, user_id, start_time, tags, run_name):
                import uuid

                from mlflow.entities import Run, RunData, RunInfo, RunInputs

                run_id = uuid.uuid4().hex
                run = Run(RunInfo(run_id, experiment_id, user_id, "RUNNING", start_time, None, "active",
                                  "file:///dev/null", run_name or "noop"), RunData(), RunInputs([]))
                self._runs[run_id] = run
                return run

            def get_run(self, run_id):
                return self._runs[run_id]

            def get_experiment(self, experiment_id):
                from mlflow.entities import Experiment

                return Experiment(experiment_id, "Default", "file:///dev/null", "active")

            def log_metric(self, run_id, metric):
                pass

            def log_batch(self, run_id, metrics, params, tags):
                pass

            def update_run_info(self, run_id, run_status, end_time, run_name):
                return self._runs[run_id].info

        utils._register("noop", NoopStore)
        mlflow.set_tracking_uri("noop:")
        if option == "floor, registry URI set":
            mlflow.set_registry_uri(f"sqlite:///{work / 'registry.db'}")
    elif option.startswith("sqlite"):
        mlflow.set_tracking_uri(f"sqlite:///{work / 'mlruns.db'}")
    else:
        mlflow.set_tracking_uri(f"ff-journal:{work}")
    synchronous = "async" not in option
    with mlflow.start_run():
        for i in range(20):  # warm-up: store built, first records written
            mlflow.log_metric("warm", float(i), step=i, synchronous=synchronous)
        if not synchronous:
            mlflow.flush_async_logging()
        start = time.perf_counter()
        for i in range(n):
            mlflow.log_metric("loss", 0.5 + i, step=i, synchronous=synchronous)
        returned = time.perf_counter()
        if not synchronous:
            mlflow.flush_async_logging()
        done = time.perf_counter()
    return {"per_call": (done - start) / n, "call_returns": (returned - start) / n,
            "registry_uri": mlflow.get_registry_uri()}


# --------------------------------------------------------------------------- parent: the table

def project(root: Path) -> Path:
    (root / "config").mkdir(parents=True)
    shutil.copy(REPO / "config" / "mlflow.yaml", root / "config" / "mlflow.yaml")
    return root


def measure(option: str, n: int, work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FF_"))}
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    proc = subprocess.run([sys.executable, __file__, "--child", option, "--n", str(n), "--work", str(work)],
                          capture_output=True, text=True, env=env, cwd=work, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{option}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:,.2f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", choices=OPTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.n, args.work)))
        return 0
    cfg = QUICK if args.quick else FULL
    samples: dict[str, list[dict]] = {option: [] for option in OPTIONS}
    with tempfile.TemporaryDirectory(prefix="ff-bench-dropin-") as tmp:
        for repeat in range(cfg["repeats"]):
            for option in OPTIONS:  # interleaved: load drifts hit every option alike
                work = project(Path(tmp) / f"{repeat}-{OPTIONS.index(option)}")
                n = cfg["n_sqlite"] if option.startswith("sqlite") else cfg["n"]
                print(f"[{repeat + 1}/{cfg['repeats']}] {option} x {n}", file=sys.stderr, flush=True)
                samples[option].append(measure(option, n, work))
    med = {o: statistics.median(s["per_call"] for s in samples[o]) for o in OPTIONS}
    print(f"`mlflow.log_metric` per call, median of {cfg['repeats']} runs (min-max); N = {cfg['n']:,} "
          f"({cfg['n_sqlite']:,} for SQLite); mlflow {__import__('mlflow').__version__}, "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")
    print("| option | per call | min-max | note |\n| --- | --- | --- | --- |")
    for option in OPTIONS:
        values = [s["per_call"] for s in samples[option]]
        note = ""
        if "async" in option:
            note = f"call returns in {fmt(statistics.median(s['call_returns'] for s in samples[option]))}"
        elif option == "ff-journal:":
            note = "registry URI set by the plugin (the configured store)"
        print(f"| {option} | {fmt(med[option])} | {fmt(min(values))}-{fmt(max(values))} | {note} |")
    ratio = med["sqlite"] / med["ff-journal:"]
    verdict = "met" if ratio >= 100 else ("floor met (>= 50x), goal MISSED" if ratio >= 50 else "MISSED")
    print(f"| target: SQLite / ff-journal: >= 100x (floor 50x) | {ratio:,.0f}x | | {verdict} |")
    print(f"| SQLite async until flushed / ff-journal: | {med['sqlite async, until flushed'] / med['ff-journal:']:,.1f}x "
          "| | |")
    print(f"| ff-journal: minus floor (registry set): the journal's own cost | "
          f"{fmt(med['ff-journal:'] - med['floor, registry URI set'])} | | |")
    print(f"| floor without / with a registry URI | "
          f"{med['floor, no registry URI'] / med['floor, registry URI set']:,.1f}x | | |")
    if args.json:
        args.json.write_text(json.dumps({"config": cfg, "samples": samples}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
