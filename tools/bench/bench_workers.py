"""Parallel ingest (``ff-ingest --workers N``) into seed 003's team stores, against bare MLflow clients.

    python tools/bench/bench_workers.py                 # both parts, 3 rounds
    python tools/bench/bench_workers.py --quick         # smaller journals, 2 rounds
    python tools/bench/bench_workers.py --only server --json /tmp/workers.json

Needs a PostgreSQL server (``$FF_TEST_POSTGRES_URL``, an admin connection; default
``postgresql://postgres@127.0.0.1:5432/test``); without one every row says ``skipped``.
One MLflow store is migrated once into a template database; every store below is a
``CREATE DATABASE ... TEMPLATE`` copy of it.

**server** (section ``workers``): an ``mlflow server --workers 2`` over PostgreSQL with
proxied local artifacts, started once. Each measurement ingests a fresh set of journals
(8 runs, ``log_metrics`` records of 10 keys each, written by the real producer; new run
ids each time, so every measurement sends everything) and reports aggregate metric points/s:

* ``ff-ingest --workers N`` (N = 1, 2, 4): the CLI (``ff-ingest --tracking-uri http://...``,
  the API sink: ``log_batch`` of ≤ 1,000 points per call, a durable checkpoint after each),
  called in a child after its imports (and MLflow's migration head read once, as a bare
  client's first call checks the schema off the clock); the clock covers opening the store,
  planning, creating the runs and every batch;
* ``bare log_batch, K client(s)`` (K = 1, 4): K processes, each an ``MlflowClient`` that
  reads its share of the same journals with ``orjson`` (no checksum, no checkpoint) and
  sends ``log_batch`` calls of 1,000 ``Metric`` into runs it creates; started together,
  rate = all points / (last end - first start).

**bulk into PostgreSQL** (section ``bulk-pg``), a fresh database copy each:

* ``bulk``: ``ff-ingest --sink bulk`` straight into PostgreSQL (psycopg 3: each batch's
  metric rows COPYed into a temporary table, then one ``INSERT ... SELECT ... ON CONFLICT
  DO NOTHING``; latest metrics and checkpoints in the same transaction), one journal of N
  ``log_metric`` records (10 keys round-robin, as ``bench_bulk.py``);
* ``log_batch``: the same journal read bare and sent by ``MlflowClient("postgresql://...")``
  (MLflow's ``SqlAlchemyStore``) 1,000 points per ``log_batch``;
* ``bulk, 8 journals, --workers 1 / 4``: the server part's journals, bulk sink.

Rounds interleave the options (rotating their order); CPU seconds of the client(s), of the
server's processes and of PostgreSQL's backends are measured around each run (from
``/proc``), so a 2-core machine's ceiling shows. Target: bulk ≥ 10× log_batch (issue 17).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, REPO, Row, Stats, child_env, fmt_rate, machine_info, progress, table, write_project

SECTION_SERVER = "workers"
SECTION_BULK = "bulk-pg"
ADMIN_URL = os.environ.get("FF_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
KEYS = 10
LOG_BATCH = 1000
RUNS = 8
TARGET_VS_LOG_BATCH = 10.0
SERVER_MODES = ("ff-1", "ff-2", "ff-4", "bare-1", "bare-4")
BULK_MODES = ("bulk", "log_batch", "bulk-8x1", "bulk-8x4")
LABELS = {
    "ff-1": "ff-ingest --workers 1", "ff-2": "ff-ingest --workers 2", "ff-4": "ff-ingest --workers 4",
    "bare-1": "bare log_batch, 1 client", "bare-4": "bare log_batch, 4 clients",
    "bulk": "bulk sink → PostgreSQL", "log_batch": "log_batch → PostgreSQL (MLflow SqlAlchemyStore)",
    "bulk-8x1": "bulk, 8 journals, --workers 1", "bulk-8x4": "bulk, 8 journals, --workers 4",
}


# --------------------------------------------------------------------------- PostgreSQL

def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, connect_timeout=5, autocommit=True) as conn:
        conn.execute(sql)


def _url(database: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{database}"))


def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used here, or None."""
    try:
        _admin("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure: the rows say skipped, with the reason
        return f"PostgreSQL unreachable ({type(exc).__name__})"
    return None


class Databases:
    """A migrated template database and throw-away copies of it; everything dropped by :meth:`close`."""

    def __init__(self) -> None:
        self.template = f"ff_bench_tmpl_{uuid.uuid4().hex[:10]}"
        self.made: list[str] = []
        _admin(f'CREATE DATABASE "{self.template}"')
        code = "import sys; from mlflow.tracking import MlflowClient; MlflowClient(sys.argv[1]).search_experiments()"
        subprocess.run([sys.executable, "-c", code, _url(self.template)], check=True, env=child_env(),
                       capture_output=True, timeout=600)

    def copy(self) -> str:
        name = f"ff_bench_{uuid.uuid4().hex[:10]}"
        _admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.made.append(name)
        return _url(name)

    def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.made:
            self.made.remove(name)

    def close(self) -> None:
        for name in [*self.made, self.template]:
            with contextlib.suppress(Exception):
                _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------- CPU accounting (/proc)

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    comm_end = text.rindex(")")
    return [text[text.index("(") + 1:comm_end], *text[comm_end + 2:].split()]


def cpu_seconds(*, group: int | None = None, comm: str | None = None) -> float:
    """CPU seconds (user + system, with those of reaped children) of every process in process group
    ``group`` or named ``comm``."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fields = _stat(pid)
        if fields is None:
            continue
        # fields: comm, state, ppid, pgrp, session, tty, tpgid, flags, 4 fault counts, utime, stime, cutime, cstime
        if (group is not None and int(fields[3]) == group) or (comm is not None and fields[0] == comm):
            total += int(fields[12]) + int(fields[13]) + int(fields[14]) + int(fields[15])
    return total / _TICK


class BackendCpu:
    """CPU seconds of PostgreSQL's backends serving one database, sampled every 50 ms in a thread
    (a backend's title names its database; the machine's other databases are not counted). A backend
    that ends between two samples loses at most its last 50 ms."""

    def __init__(self, database: str) -> None:
        import threading

        self.needle = f" {database} ".encode()
        self.base: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self._stop = threading.Event()
        self._sample(first=True)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _sample(self, first: bool = False) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if self.needle not in fh.read():
                        continue
            except OSError:
                continue
            fields = _stat(pid)
            if fields is None or fields[0] != "postgres":
                continue
            seconds = (int(fields[12]) + int(fields[13])) / _TICK
            if first:
                self.base[pid] = seconds
            self.last[pid] = seconds

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._sample()
        return sum(v - self.base.get(pid, 0.0) for pid, v in self.last.items())


# --------------------------------------------------------------------------- journals

class Journals:
    """A project's journals: its config, their metric points and their records (the ingest's count)."""

    def __init__(self, config: Path, points: int, records: int) -> None:
        self.config, self.points, self.records = config, points, records

    @property
    def paths(self) -> list[str]:
        return [str(p) for p in sorted((self.config.parent.parent / "runs").glob("*/tracking/*.jsonl"))]


def make_journals(folder: Path, *, runs: int, records: int, keys_per_record: int = KEYS,
                  experiment: str = "bench-workers") -> Journals:
    """``runs`` runs of ``records`` ``log_metrics`` records (``keys_per_record`` keys each; 1: ``log_metric``)
    by the real producer into the journal root of a project at ``folder``."""
    from formula_foundry.tracking import get_tracker

    config = write_project(folder, fsync="never")
    tracker = get_tracker(config)
    for r in range(runs):
        with tracker.start_run(run_name=f"w-{r}", experiment_name=experiment) as run:
            run.log_param("r", r)
            for i in range(records):
                if keys_per_record == 1:
                    run.log_metric(f"m{i % KEYS}", (i % 997) * 0.5 + r, step=i // KEYS)
                else:
                    run.log_metrics({f"m{k}": (i * keys_per_record + k) * 0.25 + r for k in range(keys_per_record)},
                                    step=i)
    return Journals(config, runs * records * keys_per_record, runs * (records + 3))  # + run_start, param, run_end


# --------------------------------------------------------------------------- children

def _await_go() -> None:
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit(2)


def _child_ff(args: argparse.Namespace) -> dict:
    """``ff-ingest`` in this process, after its imports; the clock covers the whole command."""
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 - imports, off the clock

    from formula_foundry.tracking.ingest.cli import main
    from formula_foundry.tracking.ingest.stores import connect, mlflow_api  # noqa: F401
    from formula_foundry.tracking.ingest.stores.bulk import sink  # noqa: F401
    from formula_foundry.tracking.ingest.stores.bulk.schema import installed_head_revision

    installed_head_revision()  # once per process (alembic reads its scripts): as the bare client's schema check

    argv = ["--json", "--config", args.config, "--tracking-uri", args.uri, "--workers", str(args.workers),
            "--sink", args.sink]
    _await_go()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.time()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    t1 = time.time()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    if code != 0:
        raise RuntimeError(f"ff-ingest exited {code}: {out.getvalue()[-2000:]}")
    summary = json.loads(out.getvalue())
    return {"t0": t0, "t1": t1, "records": summary["records"], "workers": summary["workers"],
            "cpu": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)}


def _metric_rows(journal: Path):
    import orjson

    with open(journal, "rb") as fh:
        for line in fh:
            record = orjson.loads(line)
            kind = record["type"]
            if kind == "metric":
                yield record["key"], record["value"], record.get("mts", record["ts"]), record["step"]
            elif kind == "metrics":
                ts = record.get("mts", record["ts"])
                for key, value in record["values"].items():
                    yield key, value, ts, record["step"]


def _child_bare(args: argparse.Namespace) -> dict:
    """One bare MLflow client: its journals' points by ``log_batch`` of 1,000 into runs it creates."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=args.uri)
    client.search_experiments(max_results=1)  # connect (and for SQL: check the schema), off the clock
    _await_go()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.time()
    exp = client.get_experiment_by_name(args.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(args.experiment)
    count = 0
    for journal in args.journals:
        run_id = client.create_run(exp_id, run_name="bare").info.run_id
        batch: list = []
        for key, value, timestamp, step in _metric_rows(Path(journal)):
            batch.append(Metric(key, value, timestamp, step))
            if len(batch) == LOG_BATCH:
                client.log_batch(run_id, metrics=batch, synchronous=True)
                count += len(batch)
                batch = []
        if batch:
            client.log_batch(run_id, metrics=batch, synchronous=True)
            count += len(batch)
        client.set_terminated(run_id, "FINISHED")
    t1 = time.time()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"t0": t0, "t1": t1, "points": count,
            "cpu": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)}


def child(argv: list[str]) -> dict:
    import logging

    parser = argparse.ArgumentParser(prog="bench_workers.py child")
    parser.add_argument("kind", choices=["ff", "bare"])
    parser.add_argument("--uri", required=True)
    parser.add_argument("--config")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--sink", default="auto")
    parser.add_argument("--experiment", default="bench-bare")
    parser.add_argument("--journals", nargs="*", default=[])
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from formula_foundry.tracking.ingest.stores.mlflow_api import quiet_mlflow_logs

    quiet_mlflow_logs()
    logging.getLogger("formula_foundry").setLevel(logging.ERROR)
    return _child_ff(args) if args.kind == "ff" else _child_bare(args)


def run_together(arg_lists: list[list[str]], *, database: str, server_group: int | None = None,
                 timeout: float = 1800) -> dict:
    """Start one child per argument list, let them import, start them at once; returns the merged result:
    wall seconds (first start to last end), the children's answers, and CPU seconds of the children,
    the server's process group and PostgreSQL's backends over the run."""
    procs = [subprocess.Popen([sys.executable, str(BENCH_DIR / "bench_workers.py"), "child", *args],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=child_env(), cwd=REPO) for args in arg_lists]
    try:
        for proc in procs:
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"child did not start: {line!r} {proc.stderr.read()[-2000:]}")
        server0 = cpu_seconds(group=server_group) if server_group else 0.0
        backends = BackendCpu(database)
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        answers = []
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            lines = [text for text in out.splitlines() if text.startswith("{")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"child failed (exit {proc.returncode}): {err.strip()[-2000:]}")
            answers.append(json.loads(lines[-1]))
        server1 = cpu_seconds(group=server_group) if server_group else 0.0
        pg_cpu = backends.stop()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"seconds": max(a["t1"] for a in answers) - min(a["t0"] for a in answers), "answers": answers,
            "client_cpu": sum(a["cpu"] for a in answers), "server_cpu": server1 - server0, "pg_cpu": pg_cpu}


# --------------------------------------------------------------------------- the MLflow server

class Server:
    """``mlflow server --workers 2`` over ``backend`` in its own process group."""

    def __init__(self, backend: str, work: Path, workers: int = 2) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        work.mkdir(parents=True, exist_ok=True)
        self.log = work / "server.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--artifacts-destination",
                 str(work / "artifacts"), "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port),
                 "--workers", str(workers)],
                env=child_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


# --------------------------------------------------------------------------- the two parts

def _check(mode: str, res: dict, journals: Journals) -> None:
    """Everything was sent: every point by the bare clients, every record by ff-ingest."""
    if mode in ("log_batch",) or mode.startswith("bare"):
        got, want, what = sum(a["points"] for a in res["answers"]), journals.points, "points"
    else:
        got, want, what = res["answers"][0]["records"], journals.records, "records"
    if got != want:
        raise RuntimeError(f"{mode}: {got} {what} sent, not {want}")


def _rate_rows(section: str, samples: dict[str, list[dict]], points: int, modes: tuple[str, ...]) -> list[Row]:
    rows = []
    for mode in modes:
        got = samples.get(mode)
        if not got:
            continue
        rate = Stats.of([points / s["seconds"] for s in got])
        cpu = {k: statistics.median(s[k] for s in got) for k in ("client_cpu", "server_cpu", "pg_cpu")}
        parts = [f"CPU-s per run: client {cpu['client_cpu']:.1f}"]
        if section == SECTION_SERVER:
            parts.append(f"server {cpu['server_cpu']:.1f}")
        parts.append(f"PostgreSQL {cpu['pg_cpu']:.1f}")
        rows.append(Row(section, LABELS[mode], fmt_rate(rate.median, "pts/s"),
                        f"{rate.lo:,.0f} – {rate.hi:,.0f}", f"{rate.runs} × {points:,}", ", ".join(parts),
                        samples={"points_per_s": list(rate.values)}))
    return rows


def _paired_ratio(a: list[dict], b: list[dict], points_a: int, points_b: int) -> tuple[float, float, float]:
    """Median, min and max of per-round ratios of rate a / rate b."""
    by_round = {s["round"]: points_b / s["seconds"] for s in b}
    ratios = [(points_a / s["seconds"]) / by_round[s["round"]] for s in a if s["round"] in by_round]
    return statistics.median(ratios), min(ratios), max(ratios)


def run_server(*, quick: bool, work: Path, repeats: int | None = None) -> list[Row]:
    """Section ``workers``: aggregate ingest rate into ``mlflow server --workers 2`` on PostgreSQL."""
    problem = postgres_problem()
    if problem:
        return [Row(SECTION_SERVER, "ff-ingest --workers N → mlflow server on PostgreSQL", "skipped", note=problem)]
    records = 500 if quick else 1500
    repeats = repeats or (2 if quick else 3)
    dbs = Databases()
    server = None
    try:
        backend = dbs.copy()
        server = Server(backend, work / "server")
        progress(f"workers: mlflow server --workers 2 on PostgreSQL at {server.url}")
        samples: dict[str, list[dict]] = {m: [] for m in SERVER_MODES}
        points = 0
        for r in range(repeats):
            order = SERVER_MODES[r % len(SERVER_MODES):] + SERVER_MODES[:r % len(SERVER_MODES)]
            for mode in order:
                journals = make_journals(work / f"r{r}-{mode}", runs=RUNS, records=records)  # new run ids
                points = journals.points
                if mode.startswith("ff-"):
                    arg_lists = [["ff", "--uri", server.url, "--config", str(journals.config), "--workers", mode[3:],
                                  "--sink", "api"]]
                else:
                    clients = int(mode[5:])
                    arg_lists = [["bare", "--uri", server.url, "--experiment", f"bare-{r}-{mode}-{c}",
                                  "--journals", *journals.paths[c::clients]] for c in range(clients)]
                progress(f"workers: round {r + 1}/{repeats}, {LABELS[mode]}")
                res = run_together(arg_lists, database=backend.rsplit("/", 1)[1], server_group=server.proc.pid)
                _check(mode, res, journals)
                res["round"] = r
                samples[mode].append(res)
                progress(f"workers:   {points / res['seconds']:,.0f} points/s ({res['seconds']:.1f} s; CPU-s client "
                         f"{res['client_cpu']:.1f}, server {res['server_cpu']:.1f}, PostgreSQL {res['pg_cpu']:.1f})")
        rows = _rate_rows(SECTION_SERVER, samples, points, SERVER_MODES)
        for ours, other in (("ff-4", "ff-1"), ("ff-4", "bare-1"), ("bare-4", "bare-1"), ("ff-1", "bare-1")):
            med, lo, hi = _paired_ratio(samples[ours], samples[other], points, points)
            rows.append(Row("target", f"{LABELS[ours]} vs {LABELS[other]} (server)", f"{med:.2f}×",
                            f"{lo:.2f} – {hi:.2f}", "", "for reference (no target: 2 cores shared by client, "
                            "server and PostgreSQL)", samples={"ratio": [med]}))
        return rows
    finally:
        if server is not None:
            server.stop()
        dbs.close()


def run_bulk_pg(*, quick: bool, work: Path, repeats: int | None = None) -> list[Row]:
    """Section ``bulk-pg``: the bulk sink straight into PostgreSQL vs ``log_batch`` through MLflow's SQL store."""
    problem = postgres_problem()
    if problem:
        return [Row(SECTION_BULK, "bulk sink → PostgreSQL", "skipped", note=problem)]
    n = 30_000 if quick else 100_000
    per_run = 300 if quick else 1000
    repeats = repeats or (2 if quick else 3)
    one = make_journals(work / "one", runs=1, records=n, keys_per_record=1, experiment="bench-bulk-pg")
    many = make_journals(work / "many", runs=RUNS, records=per_run, experiment="bench-bulk-pg")
    points_one, points_many = one.points, many.points
    journals_of = {"bulk": one, "log_batch": one, "bulk-8x1": many, "bulk-8x4": many}
    points_of = {mode: journals.points for mode, journals in journals_of.items()}
    dbs = Databases()
    try:
        samples: dict[str, list[dict]] = {m: [] for m in BULK_MODES}
        for r in range(repeats):
            order = BULK_MODES[r % len(BULK_MODES):] + BULK_MODES[:r % len(BULK_MODES)]
            for mode in order:
                url = dbs.copy()
                try:
                    if mode == "log_batch":
                        args = ["bare", "--uri", url, "--journals", *one.paths]
                    else:
                        config = journals_of[mode].config
                        project = write_project(work / f"p-{r}-{mode}")  # its own state folder
                        project.write_text(project.read_text().replace(
                            f"  root: \"{work / f'p-{r}-{mode}' / 'runs'}\"",
                            f"  root: \"{config.parent.parent / 'runs'}\""))
                        args = ["ff", "--uri", url, "--config", str(project), "--sink", "bulk",
                                "--workers", "4" if mode == "bulk-8x4" else "1"]
                    progress(f"bulk-pg: round {r + 1}/{repeats}, {LABELS[mode]}")
                    res = run_together([args], database=url.rsplit("/", 1)[1])
                finally:
                    dbs.drop(url)
                _check(mode, res, journals_of[mode])
                res["round"] = r
                samples[mode].append(res)
                progress(f"bulk-pg:   {points_of[mode] / res['seconds']:,.0f} points/s ({res['seconds']:.1f} s)")
        rows = []
        for mode in BULK_MODES:
            rows += _rate_rows(SECTION_BULK, {mode: samples[mode]}, points_of[mode], (mode,))
        med, lo, hi = _paired_ratio(samples["bulk"], samples["log_batch"], points_one, points_one)
        ok = med >= TARGET_VS_LOG_BATCH

        def cpu(mode: str) -> float:  # CPU-seconds of client and PostgreSQL per run (median)
            return statistics.median(s["client_cpu"] + s["pg_cpu"] for s in samples[mode])

        cpu_ratio = cpu("log_batch") / cpu("bulk")
        rows.append(Row("target", "bulk vs log_batch, PostgreSQL", f"{med:.2f}×", f"{lo:.2f} – {hi:.2f}", "",
                        f"target ≥ {TARGET_VS_LOG_BATCH:g}×: " + ("met" if ok else
                                                                 f"MISSED ({med / TARGET_VS_LOG_BATCH * 100:.0f}% of it)")
                        + f"; per CPU-second (client + PostgreSQL) {cpu_ratio:.2f}×",
                        samples={"ratio": [med], "cpu_ratio": [cpu_ratio]}))
        med, lo, hi = _paired_ratio(samples["bulk-8x4"], samples["bulk-8x1"], points_many, points_many)
        rows.append(Row("target", "bulk --workers 4 vs 1, PostgreSQL", f"{med:.2f}×", f"{lo:.2f} – {hi:.2f}", "",
                        "for reference", samples={"ratio": [med]}))
        return rows
    finally:
        dbs.close()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["child"]:
        print(json.dumps(child(argv[1:])), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller journals, 2 rounds")
    parser.add_argument("--only", default="server,bulk-pg", help="comma-separated: server, bulk-pg")
    parser.add_argument("--repeats", type=int, help="rounds (default 3; --quick 2)")
    parser.add_argument("--json", help="write every row here")
    parser.add_argument("--work", help="scratch folder (default: a removed temp dir)")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ff-bench-workers-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        if "server" in parts:
            rows += run_server(quick=args.quick, work=work / "server", repeats=args.repeats)
        if "bulk-pg" in parts:
            rows += run_bulk_pg(quick=args.quick, work=work / "bulk-pg", repeats=args.repeats)
    info = machine_info()
    print(f"parallel ingest benchmark: {info['cores']} cores ({info['cpu']}), Python {info['python']}, "
          f"mlflow {info['mlflow']}, load average {info['loadavg']}, {time.perf_counter() - started:,.0f} s\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [r.to_json() for r in rows], "machine": info}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
