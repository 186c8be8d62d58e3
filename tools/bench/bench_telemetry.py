"""Telemetry cost (issue 19): system metrics sampler and console capture, each against its absence.

Options, each in a fresh child interpreter:

* ``run.log_metric`` with the sampler off and on (``interval_seconds: 0.1``,
  100x MLflow's default, so that a run of N calls sees many samples), in one
  child, rounds alternating the order; goal: no measurable difference.
* The sampler's CPU cost: a run that only sleeps for ``--seconds`` (20 s; 5 s
  with ``--quick``) with the sampler at 0.1 s intervals, against the same
  sleep without it: process CPU time (``time.process_time``, every thread)
  per sample, and scaled to one minute at MLflow's default 10 s interval and
  at 1 s.
* Console capture: a program printing 100k lines (``print`` to a pipe, Python's
  block buffering; and ``print(..., flush=True)``, one ``write`` per line, the
  worst case) inside a run with ``capture_console`` on and off; wall time from
  the run's start to its end (which waits until every captured byte is in
  the journal); the output goes to a pipe the parent drains.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Row, Stats, child_env, emit, fmt_num, fmt_us, progress, run_child, write_project

FULL = {"n": 500_000, "repeats": 5, "seconds": 20.0, "lines": 100_000}
QUICK = {"n": 200_000, "repeats": 3, "seconds": 5.0, "lines": 100_000}
FAST_INTERVAL = 0.1


def _config(folder: Path, interval: float = FAST_INTERVAL) -> Path:
    path = write_project(folder)
    text = path.read_text().replace(
        "tracking:\n", f"tracking:\n  system_metrics:\n    interval_seconds: {interval}\n", 1)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- children

def child_metric(args: argparse.Namespace) -> dict:
    from formula_foundry.tracking import get_tracker

    tracker = get_tracker(_config(Path(args.work) / "metric"))
    out: dict[str, list[float]] = {"off": [], "on": []}
    samples: list[int] = []

    def one(option: str, n: int) -> float:
        with tracker.start_run(run_name=f"bench-{option}", log_system_metrics=option == "on") as run:
            log_metric = run.log_metric
            start = time.perf_counter()
            for i in range(n):
                log_metric("loss", i * 0.001, step=i)
            cost = (time.perf_counter() - start) / n
        if option == "on":
            from formula_foundry.tracking.journal import JournalReader

            samples.append(sum(1 for r in JournalReader(run.journal_path).records() if r["type"] == "metrics"))
        return cost

    one("off", args.n // 10)
    one("on", args.n // 10)
    for r in range(args.repeats):
        for option in (("off", "on") if r % 2 == 0 else ("on", "off")):
            out[option].append(one(option, args.n))
    return {"samples": out, "points": samples[1:]}


def child_idle(args: argparse.Namespace) -> dict:
    from formula_foundry.tracking import get_tracker

    tracker = get_tracker(_config(Path(args.work) / f"idle-{args.option}"))
    with tracker.start_run(run_name="idle", log_system_metrics=args.option == "on") as run:
        time.sleep(1.0)  # warm-up: the thread started, its imports and sources opened (one-time costs)
        cpu0, t0 = time.process_time(), time.time() * 1000
        time.sleep(args.seconds)
        cpu, t1 = time.process_time() - cpu0, time.time() * 1000
    from formula_foundry.tracking.journal import JournalReader

    points = sum(1 for r in JournalReader(run.journal_path).records() if r["type"] == "metrics" and t0 <= r["ts"] < t1)
    return {"cpu": cpu, "points": points}


PRINTER = r"""
import json, resource, sys, time
from formula_foundry.tracking import get_tracker

capture, flush, lines = sys.argv[1] == "on", sys.argv[2] == "flush", int(sys.argv[3])
tracker = get_tracker(sys.argv[4])
start = time.perf_counter()
with tracker.start_run(run_name="printer", capture_console=capture):
    for i in range(lines):
        print(f"step {i:6d}: residual 1.234567e-04, dt 0.001", flush=flush)
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
sys.stderr.write(json.dumps({"seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime}) + "\n")
"""


def console_once(work: Path, capture: bool, flush: bool, lines: int) -> tuple[float, float]:
    """(wall seconds from run start to run end, process CPU seconds) of one printer child; its stdout goes
    to a file (the "terminal": no reader on the other side to wait for)."""
    import json

    config = _config(work / "console")
    script = work / "printer.py"
    script.write_text(PRINTER)
    with open(work / "terminal.txt", "wb") as terminal:
        proc = subprocess.run([sys.executable, str(script), "on" if capture else "off",
                               "flush" if flush else "buffer", str(lines), str(config)], stdout=terminal,
                              stderr=subprocess.PIPE, env=child_env(), timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode()[-2000:])
    result = json.loads(proc.stderr.decode().strip().splitlines()[-1])
    return result["seconds"], result["cpu"]


# --------------------------------------------------------------------------- the section

def run(*, quick: bool, work: Path, template: Path | None = None) -> list[Row]:
    cfg = QUICK if quick else FULL
    rows: list[Row] = []
    work.mkdir(parents=True, exist_ok=True)

    progress(f"telemetry: run.log_metric with the sampler off and on ({cfg['repeats']} rounds of {cfg['n']:,})")
    res = run_child("bench_telemetry", ["metric", "--work", str(work), "--n", str(cfg["n"]),
                                        "--repeats", str(cfg["repeats"])])
    off, on = Stats.of(res["samples"]["off"]), Stats.of(res["samples"]["on"])
    for name, st, note in (("run.log_metric, sampler off", off, ""),
                           (f"run.log_metric, sampler on ({FAST_INTERVAL} s)", on,
                            f"{fmt_num(statistics.median(res['points']))} sample points during each run; "
                            f"ratio on/off {on.median / off.median:.2f}")):
        rows.append(Row("telemetry", name, fmt_us(st.median), f"{fmt_us(st.lo)} – {fmt_us(st.hi)}",
                        f"{st.runs} × {cfg['n']:,}", note, samples={"s_per_event": list(st.values)}))

    progress(f"telemetry: sampler CPU over {cfg['seconds']:.0f} s idle runs, on and off")
    idle = {opt: run_child("bench_telemetry", ["idle", "--work", str(work), "--option", opt,
                                               "--seconds", str(cfg["seconds"])]) for opt in ("off", "on")}
    extra = max(idle["on"]["cpu"] - idle["off"]["cpu"], 0.0)
    points = max(idle["on"]["points"], 1)
    per_sample = extra / points
    rows.append(Row("telemetry", "sampler CPU per sample", fmt_us(per_sample), "", f"1 × {points} samples",
                    f"process CPU on {idle['on']['cpu'] * 1000:.0f} ms vs off {idle['off']['cpu'] * 1000:.0f} ms "
                    f"over {cfg['seconds']:.0f} s at {FAST_INTERVAL} s intervals",
                    samples={"cpu_s_per_sample": [per_sample]}))
    for interval in (10.0, 1.0):
        per_minute = per_sample * 60 / interval
        rows.append(Row("telemetry", f"sampler CPU per minute, interval {interval:g} s",
                        f"{fmt_num(per_minute * 1000)} ms", "", "", f"{per_minute / 60 * 100:.4f} % of one core",
                        samples={"cpu_s_per_minute": [per_minute]}))

    for flush in (False, True):
        mode = "print(..., flush=True)" if flush else "print (block-buffered pipe)"
        progress(f"telemetry: console capture, {cfg['lines']:,} lines, {mode}")
        times: dict[bool, list[float]] = {False: [], True: []}
        cpus: dict[bool, list[float]] = {False: [], True: []}
        for r in range(cfg["repeats"]):
            for capture in ((False, True) if r % 2 == 0 else (True, False)):
                wall, cpu = console_once(work, capture, flush, cfg["lines"])
                times[capture].append(wall)
                cpus[capture].append(cpu)
        base, cap = Stats.of(times[False]), Stats.of(times[True])
        for capture, st in ((False, base), (True, cap)):
            cpu_note = f"process CPU {statistics.median(cpus[capture]) * 1000:.0f} ms"
            note = (f"{(cap.median - base.median) * 1000:+.0f} ms, ratio {cap.median / base.median:.2f}; "
                    if capture else "") + cpu_note
            rows.append(Row("telemetry", f"{cfg['lines'] // 1000}k lines, {mode}, capture "
                            f"{'on' if capture else 'off'}", f"{fmt_num(st.median * 1000)} ms",
                            f"{fmt_num(st.lo * 1000)} – {fmt_num(st.hi * 1000)} ms", f"{st.runs}", note,
                            samples={"seconds": list(st.values)}))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd")
    child = sub.add_parser("child", help="internal: one measurement in a fresh interpreter")
    child.add_argument("what", choices=["metric", "idle"])
    child.add_argument("--work", required=True)
    child.add_argument("--n", type=int, default=FULL["n"])
    child.add_argument("--repeats", type=int, default=FULL["repeats"])
    child.add_argument("--seconds", type=float, default=FULL["seconds"])
    child.add_argument("--option", choices=["on", "off"], default="off")
    standalone = sub.add_parser("run", help="run this benchmark alone and print its rows")
    standalone.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "child":
        emit({"metric": child_metric, "idle": child_idle}[args.what](args))
        return 0
    from common import table

    with tempfile.TemporaryDirectory(prefix="ff-bench-") as tmp:
        print(table(run(quick=bool(getattr(args, "quick", False)), work=Path(tmp))))
    return 0



if __name__ == "__main__":
    sys.exit(main())
