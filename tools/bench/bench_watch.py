"""``ff-ingest --watch``: append→visible latency at a steady rate, and the highest sustained rate.

Setup: a fresh SQLite store; ``ff-ingest --watch --config CFG --log-level info``
started as a subprocess (its own sink choice, ``ingest.sink: auto``); one
producer process holding 10 runs (10 trackers) that logs round-robin at a
paced rate. Every event's value is its wall-clock send time
(``run.log_metric(key, time.time(), step=i)``), so for every row that appears in
MLflow's ``metrics`` table, latency = the time the poll saw it − its value.
The same process polls the store every 20 ms through a read-only ``sqlite3``
connection (``SELECT ... FROM metrics WHERE rowid > ?``): a latency sample is
late by at most one poll interval plus the query.

Phases
    warm-up: 1,000 events/s until the daemon's first rows are visible, then 1 s more (not counted);
    steady: 1,000 events/s across the 10 runs for 10 s (``--quick``: 4 s), split into 5
      windows by send time: p50/p95/p99 per window → median and min–max, plus the
      percentiles of all events together;
    steps: 2k, 4k, 8k, 16k events/s for 5 s each (``--quick``: 4k for 2 s), each drained
      before the next. A rate is *sustained* when the p95 latency of its second half stays
      under 1 s and every event is visible within 10 s after the step; the highest
      sustained rate is the last step that passes (the stepping stops at the first failure).
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Row,
    Stats,
    child_env,
    emit,
    fmt_num,
    fresh_store,
    percentile,
    progress,
    run_child,
    template_store,
    write_project,
)

RUNS = 10
STEADY_RATE = 1000
POLL_S = 0.020
DRAIN_S = 10.0
TARGET_P95_S = 1.0
WINDOWS = 5
FULL = {"steady_s": 10.0, "steps": (2000, 4000, 8000, 16000), "step_s": 5.0}
QUICK = {"steady_s": 4.0, "steps": (4000,), "step_s": 2.0}


class Daemon:
    """``ff-ingest --watch`` as a subprocess of this benchmark; stopped by pid with SIGTERM, then SIGKILL."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - held for the daemon's lifetime
        cmd = [sys.executable, "-m", "formula_foundry.tracking.ingest.cli", "--watch", "--config", str(config),
               "--log-level", "info"]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=child_env(),
                                     start_new_session=True)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"ff-ingest --watch exited with {self.proc.returncode}: {self.tail()}")

    def tail(self, n: int = 8) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-n:])
        except OSError:
            return ""

    def field(self, event: str, key: str) -> str | None:
        """A ``key=value`` field of the daemon's first ``event=...`` log line."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return None
        for line in text.splitlines():
            if f"event={event}" in line:
                for part in line.split():
                    if part.startswith(key + "="):
                        return part.split("=", 1)[1]
        return None

    def stop(self) -> float:
        """SIGTERM, wait; returns the seconds it took to exit (SIGKILL after 15 s)."""
        start = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return time.perf_counter() - start


class Poller:
    """New rows of MLflow's ``metrics`` table, read-only, with the wall-clock time they were seen."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self._conn: sqlite3.Connection | None = None
        self._rowid = 0
        self.seen: dict[str, list[tuple[float, float]]] = {}  # key -> [(send time, latency)]

    def poll(self) -> int:
        if self._conn is None:
            if not self.db.exists():
                return 0
            self._conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5,
                                         check_same_thread=False)
        try:
            rows = self._conn.execute("SELECT rowid, key, value FROM metrics WHERE rowid > ?",
                                      (self._rowid,)).fetchall()
        except sqlite3.OperationalError:  # locked for longer than the timeout, or not migrated yet
            return 0
        seen_at = time.time()
        for rowid, key, value in rows:
            self._rowid = max(self._rowid, rowid)
            self.seen.setdefault(key, []).append((value, seen_at - value))
        return len(rows)

    def count(self, key: str) -> int:
        return len(self.seen.get(key, ()))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def produce(runs: list, poller: Poller, daemon: Daemon, *, key: str, rate: float, seconds: float,
            until=None) -> int:
    """Log ``key`` at ``rate`` events/s round-robin over ``runs`` for ``seconds`` (or until ``until()``).

    Polls the store between events; returns the number of events sent.
    """
    start = time.time()
    total = int(rate * seconds)
    sent = 0
    next_poll = start
    clock = time.time
    while sent < total:
        now = clock()
        due = min(total, int((now - start) * rate) + 1)
        while sent < due:
            runs[sent % len(runs)].log_metric(key, clock(), step=sent)
            sent += 1
        if now >= next_poll:
            poller.poll()
            next_poll = now + POLL_S
            daemon.check()
            if until is not None and until():
                break
        else:
            time.sleep(min(0.001, max(0.0, min(next_poll, start + (sent + 1) / rate) - clock())))
    return sent


def drain(poller: Poller, daemon: Daemon, key: str, sent: int, timeout: float = DRAIN_S) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        poller.poll()
        if poller.count(key) >= sent:
            return True
        daemon.check()
        time.sleep(POLL_S)
    return poller.count(key) >= sent


def child_watch(args: argparse.Namespace) -> dict:
    from formula_foundry.tracking import get_tracker
    from formula_foundry.tracking.config import load_config

    cfg_plan = QUICK if args.quick else FULL
    work = Path(args.work)
    store = fresh_store(Path(args.template), work / "mlflow" / "mlruns.db")
    config_path = write_project(work, store_db=store)
    daemon = Daemon(config_path, work / "daemon.log")
    poller = Poller(store)
    result: dict = {"steps": []}
    try:
        cfg = load_config(config_path)
        trackers = [get_tracker(cfg) for _ in range(RUNS)]  # a Config gives a new Tracker: 10 top-level runs
        runs = [t.start_run(run_name=f"watch-{i}") for i, t in enumerate(trackers)]
        started = time.time()
        sent = produce(runs, poller, daemon, key="warm", rate=STEADY_RATE, seconds=120,
                       until=lambda: poller.count("warm") > 0)
        result["first_visible_s"] = time.time() - started
        sent += produce(runs, poller, daemon, key="warm", rate=STEADY_RATE, seconds=1.0)
        drain(poller, daemon, "warm", sent)

        sent = produce(runs, poller, daemon, key="lat", rate=STEADY_RATE, seconds=cfg_plan["steady_s"])
        result["steady"] = {"sent": sent, "drained": drain(poller, daemon, "lat", sent),
                            "seen": poller.seen.get("lat", []), "seconds": cfg_plan["steady_s"]}

        for rate in cfg_plan["steps"]:
            key = f"r{rate}"
            t0 = time.time()
            sent = produce(runs, poller, daemon, key=key, rate=rate, seconds=cfg_plan["step_s"])
            produced_in = time.time() - t0
            drained = drain(poller, daemon, key, sent)
            half = t0 + cfg_plan["step_s"] / 2
            second_half = sorted(lat for sent_at, lat in poller.seen.get(key, []) if sent_at >= half)
            p95 = percentile(second_half, 95)
            step = {"rate": rate, "sent": sent, "seen": poller.count(key), "drained": drained,
                    "p95_second_half_s": p95, "producer_rate": sent / produced_in,
                    "sustained": bool(drained and p95 < TARGET_P95_S)}
            result["steps"].append(step)
            if not step["sustained"]:
                break
        for r in runs:
            r.end()
        result["sink"] = daemon.field("started", "sink") or "?"
        result["step_s"] = cfg_plan["step_s"]
    finally:
        poller.close()
        result["stop_s"] = daemon.stop()
        result["daemon_tail"] = daemon.tail(4)
    return result


# --------------------------------------------------------------------------- the benchmark (parent side)

def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("formula_foundry.tracking.ingest.watch") is not None


def run(*, quick: bool, work: Path, template: Path | None = None) -> list[Row]:
    if not available():
        return [Row("watch", "ff-ingest --watch", "skipped", note="formula_foundry.tracking.ingest.watch not found")]
    template = template or template_store()
    progress("watch: daemon + 10 producer runs + poller")
    res = run_child("bench_watch", ["watch", "--work", str(work / "watch"), "--template", str(template)]
                    + (["--quick"] if quick else []), timeout=900)
    steady = res["steady"]
    seen = steady["seen"]
    lats = sorted(lat for _, lat in seen)
    t_first = min((s for s, _ in seen), default=0.0)
    width = steady["seconds"] / WINDOWS
    windows: list[list[float]] = [[] for _ in range(WINDOWS)]
    for sent_at, lat in seen:
        windows[min(WINDOWS - 1, int((sent_at - t_first) / width))].append(lat)
    windows = [sorted(w) for w in windows if w]
    rows = []
    lost = steady["sent"] - len(seen)
    where = f"{STEADY_RATE:,} ev/s × {RUNS} runs"
    for q in (50, 95, 99):
        st = Stats.of([percentile(w, q) for w in windows])
        note = f"all {len(lats):,} events: p{q} {fmt_num(percentile(lats, q) * 1000)} ms"
        if q == 50:
            note += f"; sink: {res.get('sink', '?')}; first row visible {res['first_visible_s']:.1f} s after start"
        if q == 99 and lost:
            note += f"; {lost} events NOT visible after {DRAIN_S:.0f} s"
        rows.append(Row("watch", f"append→visible p{q} @ {where}", f"{fmt_num(st.median * 1000)} ms",
                        f"{fmt_num(st.lo * 1000)} – {fmt_num(st.hi * 1000)} ms",
                        f"{st.runs} windows × {width:g} s", note,
                        samples={"latency_s": list(st.values)}))
    steps = res["steps"]
    passed = [s["rate"] for s in steps if s["sustained"]]
    best = max([STEADY_RATE if lats and percentile(lats, 95) < TARGET_P95_S and not lost else 0, *passed])
    detail = "; ".join(
        f"{s['rate'] // 1000}k: p95 {fmt_num(s['p95_second_half_s'] * 1000)} ms"
        + ("" if s["drained"] else f", {s['sent'] - s['seen']} not visible") for s in steps)
    capped = steps and steps[-1]["sustained"]
    rows.append(Row("watch", "highest sustained rate (p95 < 1 s, no backlog)",
                    f"{'≥ ' if capped else ''}{best:,} ev/s", "",
                    f"{len(steps)} step{'s' if len(steps) != 1 else ''} × {res['step_s']:g} s",
                    detail + (" (highest step tried)" if capped else ""),
                    samples={"rate": [float(best)]}))
    rows.append(Row("watch", "daemon stop (SIGTERM → exit)", f"{res['stop_s']:.2f} s", "", "1", ""))
    p95_all = percentile(lats, 95)
    ok = p95_all < TARGET_P95_S and not lost
    rows.append(Row("target", f"watch p95 @ {STEADY_RATE:,} ev/s", f"{fmt_num(p95_all * 1000)} ms", "", "",
                    f"target < {TARGET_P95_S * 1000:.0f} ms: " + (
                        f"met ({p95_all / TARGET_P95_S * 100:.0f}% of the budget)" if ok else
                        f"MISSED ({'events lost' if lost else f'over by {(p95_all / TARGET_P95_S - 1) * 100:.0f}%'})"),
                    samples={"p95_s": [p95_all]}))
    return rows


# --------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd")
    child = sub.add_parser("child", help="internal: daemon + producer + poller")
    child.add_argument("what", choices=["watch"])
    child.add_argument("--work", required=True)
    child.add_argument("--template", required=True)
    child.add_argument("--quick", action="store_true")
    standalone = sub.add_parser("run", help="run this benchmark alone and print its rows")
    standalone.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "child":
        os.makedirs(args.work, exist_ok=True)
        emit(child_watch(args))
        return 0
    from common import table

    with tempfile.TemporaryDirectory(prefix="ff-bench-") as tmp:
        print(table(run(quick=bool(getattr(args, "quick", False)), work=Path(tmp))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
