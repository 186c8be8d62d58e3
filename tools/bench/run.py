#!/usr/bin/env python3
"""Run every benchmark side by side with its alternative and print one table.

    python tools/bench/run.py                      # the full suite (~18 min on 2 cores, 11 without bulk)
    python tools/bench/run.py --quick              # small N, 3 runs each: about a minute (+40 s for bulk)
    python tools/bench/run.py --smoke --only producer,ingest   # tiny N, 1 run: does it run? (the tests)
    python tools/bench/run.py --only producer,watch --plot docs/img/producer_cost.png --json out.json

Sections: ``producer`` (cost per event and import cost, ``bench_producer.py``),
``ingest`` (``bench_ingest.py``), ``watch`` (``bench_watch.py``), ``bulk``
(``bench_bulk.py``, the bulk SQL sink's benchmark, run as a subprocess when it
exists), ``artifacts`` (``run.log_artifact`` vs ``cp`` vs ``mlflow.log_artifact`` of
1 MiB-1 GiB files, ``bench_artifacts_producer.py``), ``artifacts-ingest`` (``ff-ingest``
uploading 1,000 files of 100 KiB vs ``mlflow.log_artifacts``, ``bench_artifacts_ingest.py``),
``telemetry`` (system metrics sampler and console capture against their absence,
``bench_telemetry.py``), ``workers`` (``ff-ingest --workers 1/2/4`` into an ``mlflow server
--workers 2`` on PostgreSQL vs 1 and 4 bare ``log_batch`` clients) and ``bulk-pg`` (the bulk
sink straight into PostgreSQL vs ``log_batch`` through MLflow's SQL store), both
``bench_workers.py`` (they need PostgreSQL: ``$FF_TEST_POSTGRES_URL``, else skipped), ``ship``
(``ff-ingest ship`` to moto's S3 vs a plain boto3 ``upload_file`` of the same bytes, ``bench_ship.py``). Every option is repeated (≥ 5 runs after a warm-up; 3 with
``--quick``) and reported as median and min–max; the ``target`` rows give each
ratio from the same run with met/MISSED. Everything runs in this process tree,
one measurement at a time (the machine has 2 cores). The table goes to stdout
(markdown); progress goes to stderr. Exit status: 0, or 1 when a benchmark
failed to run (a missed target is not a failure).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BENCH_DIR,
    REPO,
    Row,
    Stats,
    child_env,
    machine_info,
    progress,
    set_smoke,
    table,
    template_store,
)

ALL = ("producer", "ingest", "watch", "bulk", "artifacts", "artifacts-ingest", "telemetry", "workers", "bulk-pg", "ship")
BULK_SCRIPT = BENCH_DIR / "bench_bulk.py"


# --------------------------------------------------------------------------- sections

def run_section(name: str, *, quick: bool, work: Path, template: Path | None) -> tuple[list[Row], str]:
    """Rows of one section, and any verbatim text to print after the table."""
    if name == "producer":
        import bench_producer

        return bench_producer.run(quick=quick, work=work / "producer", template=template), ""
    if name == "ingest":
        import bench_ingest

        return bench_ingest.run(quick=quick, work=work / "ingest", template=template), ""
    if name == "watch":
        import bench_watch

        return bench_watch.run(quick=quick, work=work / "watch", template=template), ""
    if name == "bulk":
        return run_bulk(quick=quick, work=work)
    if name == "artifacts":
        import bench_artifacts_producer

        return bench_artifacts_producer.run(quick=quick, work=work / "artifacts", template=template), ""
    if name == "artifacts-ingest":
        import bench_artifacts_ingest

        return bench_artifacts_ingest.run(quick=quick, work=work / "artifacts-ingest", template=template), ""
    if name == "telemetry":
        import bench_telemetry

        return bench_telemetry.run(quick=quick, work=work / "telemetry", template=template), ""
    if name == "workers":
        import bench_workers

        return bench_workers.run_server(quick=quick, work=work / "workers"), ""
    if name == "bulk-pg":
        import bench_workers

        return bench_workers.run_bulk_pg(quick=quick, work=work / "bulk-pg"), ""
    if name == "ship":
        import bench_ship

        return bench_ship.run(quick=quick, work=work / "ship"), ""
    raise ValueError(name)


def run_bulk(*, quick: bool, work: Path) -> tuple[list[Row], str]:
    """``bench_bulk.py`` is the bulk sink's own script: run it as a subprocess and merge its rows.

    Its rows come back through its ``--json`` file (the same :class:`Row` fields);
    a version without ``--json`` is shown verbatim after the table instead.
    ``--quick`` runs it on one 20k journal (its own ``--quick`` rounds).
    """
    option = "bulk SQL sink (tools/bench/bench_bulk.py)"
    if not BULK_SCRIPT.exists():
        return [Row("bulk", option, "skipped", note="tools/bench/bench_bulk.py is not there")], ""
    cmd = [sys.executable, str(BULK_SCRIPT)]
    helptext = subprocess.run([*cmd, "--help"], check=False, capture_output=True, text=True, env=child_env(),
                              cwd=REPO, timeout=120).stdout
    args: list[str] = []
    if quick and "--quick" in helptext:
        args += ["--quick"] + (["--records", "20000"] if "--records" in helptext else [])
    out = work / "bulk.json"
    use_json = "--json" in helptext
    if use_json:
        args += ["--json", str(out)]
    start = time.perf_counter()
    proc = subprocess.run([*cmd, *args], check=False, capture_output=True, text=True, env=child_env(), cwd=REPO,
                          timeout=7200)
    seconds = time.perf_counter() - start
    shown = " ".join(["python tools/bench/bench_bulk.py", *(a for a in args if a not in ("--json", str(out)))])
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return [Row("bulk", option, "failed", note=f"exit {proc.returncode}: {tail[0][:100]}")], ""
    if use_json and out.exists():
        rows = [Row(**{k: v for k, v in r.items() if k in Row.__dataclass_fields__})
                for r in json.loads(out.read_text())["rows"]]
        for r in rows:
            if r.section == "target" and not r.option.startswith("bulk"):
                r.option = f"bulk: {r.option}"
        progress(f"bulk: `{shown}` took {seconds:.0f} s")
        return rows, ""
    return ([Row("bulk", option, "see its table below", runs="1", note=f"`{shown}`: exit 0 in {seconds:.0f} s")],
            f"### bulk sink (`{shown}`, its own output)\n\n{proc.stdout.strip()}\n")


# --------------------------------------------------------------------------- the plot

def plot_producer(rows: list[Row], path: Path, *, title: str) -> bool:
    """Horizontal bars of producer cost per event (median, min–max whiskers), log scale. False if no data."""
    data = [(r.option, Stats.of(r.samples["s_per_event"])) for r in rows
            if r.section == "producer" and r.samples.get("s_per_event")]
    if not data:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data.sort(key=lambda item: item[1].median)
    labels = [name for name, _ in data]
    med = [st.median * 1e6 for _, st in data]
    err = [[m - st.lo * 1e6 for m, (_, st) in zip(med, data)], [st.hi * 1e6 - m for m, (_, st) in zip(med, data)]]
    colors = ["#2b7bba" if name.startswith("ff ") else "#999999" if name.startswith("bare") else "#d9534f"
              for name in labels]
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(data) + 1.6), dpi=120)
    ax.barh(range(len(data)), med, xerr=err, color=colors, capsize=3)
    ax.set_yticks(range(len(data)), labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("cost per event, µs (log scale; bar = median, whiskers = min–max)")
    for i, (m, (_, st)) in enumerate(zip(med, data, strict=True)):
        ax.text(st.hi * 1e6 * 1.25, i, f"{m:,.1f} µs" if m < 1000 else f"{m / 1000:,.1f} ms", va="center",
                fontsize=8)
    ax.set_xlim(min(st.lo for _, st in data) * 1e6 / 2, max(st.hi for _, st in data) * 1e6 * 10)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="small N and 3 runs each (about a minute)")
    parser.add_argument("--smoke", action="store_true",
                        help="--quick with tiny N and one run where a section knows it (producer, ingest): "
                             "checks that the benchmarks run; the numbers mean nothing")
    parser.add_argument("--only", default=",".join(ALL),
                        help=f"comma-separated sections to run (default: {','.join(ALL)})")
    parser.add_argument("--plot", type=Path, help="write a PNG of producer cost per event to this path")
    parser.add_argument("--json", type=Path, help="also write every row with its raw samples to this file")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temp dir, removed afterwards)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.quick = True
        set_smoke(True)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in sections if s not in ALL]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(ALL)}")
    if args.plot and "producer" not in sections:
        parser.error("--plot needs the producer section")

    info = machine_info()
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="ff-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    extra: list[str] = []
    failed = False
    template = None
    try:
        if any(s in sections for s in ("producer", "ingest", "watch", "artifacts", "artifacts-ingest")):
            progress("preparing an empty MLflow store (cached after the first run)")
            template = template_store()
        for name in sections:
            progress(f"{name} ...")
            t0 = time.perf_counter()
            try:
                got, text = run_section(name, quick=args.quick, work=work, template=template)
            except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
                failed = True
                traceback.print_exc(file=sys.stderr)
                note = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
                got, text = [Row(name, f"{name} benchmark", "failed", note=note)], ""
            rows += got
            if text:
                extra.append(text)
            progress(f"{name} done in {time.perf_counter() - t0:.0f} s")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started
    info["loadavg_end"] = machine_info()["loadavg"]

    command = "python tools/bench/run.py" + (" --smoke" if args.smoke else " --quick" if args.quick else "") + (
        f" --only {','.join(sections)}" if sections != list(ALL) else "")
    print(f"## Benchmarks ({'smoke' if args.smoke else 'quick' if args.quick else 'full'}): `{command}`\n")
    print(f"Machine: {info['cores']} cores, {info['cpu']}; Python {info['python']}; mlflow {info['mlflow']}, "
          f"orjson {info['orjson']}, SQLAlchemy {info['sqlalchemy']}, watchdog {info['watchdog']}; "
          f"load average {info['loadavg']} at start, {info['loadavg_end']} at end; {elapsed:.0f} s in all.\n")
    print(table(rows))
    for text in extra:
        print("\n" + text)
    if args.plot:
        title = (f"Producer cost per event ({info['cores']} cores, {info['cpu']}, Python {info['python']}, "
                 f"mlflow {info['mlflow']})")
        if plot_producer(rows, args.plot, title=title):
            progress(f"plot written to {args.plot}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": command, "machine": info, "elapsed_s": elapsed,
                                         "rows": [r.to_json() for r in rows]}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
