"""``ff-ingest --watch``: the Follower alone (MemorySink, fake clock), then the real daemon.

The daemon tests run it as a subprocess against a real MLflow SQLite store (or
a real ``mlflow server``), with producer subprocesses writing journals, and
real signals. Deadlines are generous for CI; the latency the first test
measures is printed (``pytest -s``) and bounded loosely.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from formula_foundry.errors import StoreUnavailableError
from formula_foundry.tracking.config import WatchConfig, load_config
from formula_foundry.tracking.ingest.plan import Limits
from formula_foundry.tracking.ingest.replay import Replayer
from tests.ingest.memory_sink import MemorySink
from formula_foundry.tracking.ingest.watch import Follower, format_event
from formula_foundry.tracking.tracker import Tracker
from tests.conftest import REPO, run_ff_ingest, subprocess_env

slow = pytest.mark.slow  # the daemon tests (subprocesses, seconds each); the Follower tests are instant

# --------------------------------------------------------------------------- helpers


class FakeClock:
    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


def write_run(cfg, *, steps: int, end: bool = True, name: str = "r"):
    run = Tracker(cfg).start_run(run_name=name, experiment_name="unit")
    run.log_params({"lr": 0.1})
    for s in range(steps):
        run.log_metric("loss", 1.0 / (s + 1), step=s)
    if end:
        run.end()
    return run


def memory_content(sink: MemorySink) -> dict:
    return {run["tags"]["ff.run_id"]: (run["status"], dict(run["params"]), sorted(run["metrics"]))
            for run in sink.runs.values()}


class FlakySink(MemorySink):
    """A MemorySink whose store is 'down' while ``down`` is True."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.status_down = False  # only set_status fails
        self.statuses: dict[str, str] = {}

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailableError("connection refused")

    def experiment_id(self, name):
        self._check()
        return super().experiment_id(name)

    def commit(self, mlflow_run_id, batch, checkpoint):
        self._check()
        return super().commit(mlflow_run_id, batch, checkpoint)

    def set_status(self, mlflow_run_id, status, end_time):
        self._check()
        if self.status_down:
            raise StoreUnavailableError("connection refused")
        self.runs[mlflow_run_id]["status"] = status
        self.statuses[mlflow_run_id] = status


# --------------------------------------------------------------------------- Follower (no threads)

def test_follower_catches_up_then_follows_appends(project):
    """The first step ingests what exists; a marked append is ingested at the next step."""
    cfg = load_config(project / "config" / "mlflow.yaml")
    write_run(cfg, steps=5)
    live = write_run(cfg, steps=2, end=False, name="live")
    sink = MemorySink()
    follower = Follower(Replayer(sink), roots=cfg.journal_roots, settings=WatchConfig(rescan_interval_seconds=60))
    report = follower.step()
    assert report.records == (2 + 5 + 1) + (2 + 2)  # start, param, 5 metrics, end; start, param, 2 metrics
    assert len(sink.runs) == 2
    live.log_metric("loss", 9.0, step=2)
    live.end()
    follower.mark(live.journal_path)
    assert follower.step().records == 2
    statuses = sorted(status for status, _, _ in memory_content(sink).values())
    assert statuses == ["FINISHED", "FINISHED"]


def test_follower_rescan_finds_what_no_event_announced(project):
    """An append nobody marked is found by the periodic rescan, not before it is due."""
    cfg = load_config(project / "config" / "mlflow.yaml")
    clock = FakeClock()
    sink = MemorySink()
    follower = Follower(Replayer(sink), roots=cfg.journal_roots, clock=clock,
                        settings=WatchConfig(rescan_interval_seconds=10))
    follower.step()
    assert sink.runs == {}
    write_run(cfg, steps=3)
    clock.now += 5
    assert follower.step().records == 0
    clock.now += 6
    assert follower.step().records == 6
    assert follower.rescans == 2


def test_follower_retries_a_waiting_segment_as_soon_as_its_run_exists(project):
    """A segment seen before its owning run waits; the step that creates the run also ingests it."""
    cfg = load_config(project / "config" / "mlflow.yaml")
    sink = MemorySink()
    follower = Follower(Replayer(sink), roots=cfg.journal_roots, settings=WatchConfig(rescan_interval_seconds=60))
    follower.step()
    owner = write_run(cfg, steps=1, end=False, name="owner")
    segment = Tracker(cfg).attach_run(owner.run_id, run_dir=owner.run_dir)
    segment.log_metric("other", 1.0, step=0)
    segment.end()
    follower.mark(segment.journal_path)
    report = follower.step()
    assert [j.state for j in report.journals] == ["waiting"] and not sink.runs
    follower.mark(owner.journal_path)
    report = follower.step()
    assert sorted(j.state for j in report.journals) == ["ingested", "ingested"]
    (run,) = sink.runs.values()
    assert {m[0] for m in run["metrics"]} == {"loss", "other"}


def test_follower_backs_off_while_the_store_is_down_and_logs_each_change_once(project, caplog):
    """Unavailable store: journals stay dirty, retries back off, one log line per state change."""
    caplog.set_level(logging.INFO, logger="formula_foundry.ingest.watch")
    cfg = load_config(project / "config" / "mlflow.yaml")
    write_run(cfg, steps=3)
    clock = FakeClock()
    sink = FlakySink()
    sink.down = True
    follower = Follower(Replayer(sink), roots=cfg.journal_roots, clock=clock, max_backoff=4,
                        settings=WatchConfig(rescan_interval_seconds=60))
    follower.step()
    assert not follower.store_ok and follower.dirty
    retries = []
    for _ in range(6):  # 0.5, 1, 2, 4, 4, 4
        retries.append(follower.next_due() - clock.now)
        clock.now = follower.next_due() - 0.01
        follower.step()  # too early: nothing happens
        clock.now += 0.01
        follower.step()
    assert retries == pytest.approx([0.5, 1, 2, 4, 4, 4])
    sink.down = False
    clock.now = follower.next_due()
    assert follower.step().records == 6
    assert follower.store_ok and not follower.dirty
    events = [r.getMessage().split()[0] for r in caplog.records]
    assert events.count("event=store_unavailable") == 1
    assert events.count("event=store_available") == 1


def test_follower_stops_after_the_batch_in_flight_and_a_new_one_resumes_exactly_once(project):
    """should_stop is honoured right after a committed batch; a restart yields the clean result."""
    cfg = load_config(project / "config" / "mlflow.yaml")
    for _ in range(3):
        write_run(cfg, steps=95)
    sink = MemorySink()
    commits = []
    first = Follower(Replayer(sink, limits=Limits(metrics=10)), roots=cfg.journal_roots,
                     should_stop=lambda: len(commits) >= 4)
    original = sink.commit

    def counting_commit(*args):
        original(*args)
        commits.append(1)

    sink.commit = counting_commit
    first.step()
    assert first.interrupted and len(commits) == 4
    second = Follower(Replayer(sink), roots=cfg.journal_roots)
    second.step()
    clean = MemorySink()
    Follower(Replayer(clean), roots=cfg.journal_roots).step()
    assert memory_content(sink) == memory_content(clean)
    assert all(len(metrics) == 95 for _, _, metrics in memory_content(sink).values())


def test_follower_reports_a_stale_run_once_and_applies_the_action(project, monkeypatch, caplog):
    """No end record and no append for stale_after: reported once, run marked KILLED; the live one not."""
    caplog.set_level(logging.INFO, logger="formula_foundry.ingest.watch")
    from formula_foundry.tracking.ingest import watch

    monkeypatch.setattr(watch, "producer_alive", lambda record, **kw: None)  # as if on another host
    cfg = load_config(project / "config" / "mlflow.yaml")
    dead = write_run(cfg, steps=2, end=False, name="dead")
    os.utime(dead.journal_path, (time.time() - 100, time.time() - 100))
    live = write_run(cfg, steps=2, end=False, name="live")
    sink = FlakySink()
    follower = Follower(Replayer(sink), roots=cfg.journal_roots,
                        settings=WatchConfig(stale_after_seconds=50, stale_action="kill"))
    for _ in range(3):
        follower.step()
        follower._next_stale_check = 0  # check at every step
    assert list(sink.statuses.values()) == ["KILLED"]
    assert [s.run_id for s in follower.stale.values()] == [dead.run_id]
    stale_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=stale ")]
    assert len(stale_lines) == 1 and f"run={dead.run_id}" in stale_lines[0] and "action=kill" in stale_lines[0]
    assert live.run_id not in " ".join(stale_lines)


def test_follower_down_with_nothing_left_to_retry_does_not_spin(project, monkeypatch):
    """The store failed a stale-run update, then the run came back to life: the loop must still sleep."""
    from formula_foundry.tracking.ingest import watch

    monkeypatch.setattr(watch, "producer_alive", lambda record, **kw: None)
    cfg = load_config(project / "config" / "mlflow.yaml")
    run = write_run(cfg, steps=1, end=False)
    os.utime(run.journal_path, (time.time() - 100, time.time() - 100))
    clock = FakeClock()
    sink = FlakySink()
    follower = Follower(Replayer(sink), roots=cfg.journal_roots, clock=clock,
                        settings=WatchConfig(stale_after_seconds=50, stale_action="fail", rescan_interval_seconds=60))
    sink.status_down = True
    assert follower.step().records == 3  # ingested; then the stale run's update failed
    assert not follower.store_ok and not sink.statuses
    os.utime(run.journal_path)  # appended again: no longer stale
    clock.now = follower.next_due() + 0.1
    follower.step()
    assert follower.next_due() > clock.now  # backs off instead of busy-looping
    assert not follower.stale


def test_format_event_quotes_values_with_spaces():
    assert format_event("x", path="/a b", n=3, none=None, f=0.5) == 'event=x path="/a b" n=3 f=0.500'


# --------------------------------------------------------------------------- the daemon as a process

def configure(project: Path, **watch) -> Path:
    path = project / "config" / "mlflow.yaml"
    data = yaml.safe_load(path.read_text())
    data["ingest"]["watch"].update({"rescan_interval_seconds": 60, **watch})  # events, not rescans, must work
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Daemon:
    """``ff-ingest --watch`` as a subprocess; its stderr goes to a file we can read while it runs."""

    count = 0

    def __init__(self, project: Path, *args: str, env: dict[str, str] | None = None,
                 log_level: str = "info") -> None:
        Daemon.count += 1
        self.log_path = project / f"daemon-{Daemon.count}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open while the daemon runs; closed in cleanup()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "formula_foundry.tracking.ingest.cli", "--watch", "--config",
             str(project / "config" / "mlflow.yaml"), "--log-level", log_level, *args],
            stdout=subprocess.DEVNULL, stderr=self._log, cwd=project, env=subprocess_env(**(env or {})))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str) -> list[str]:
        return [line for line in self.log().splitlines() if f"event={name} " in line + " "]

    def wait_for(self, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited with {self.proc.returncode} before {text!r}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} within {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def wait_ready(self) -> Daemon:
        self.wait_for("event=ready")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"daemon did not exit within {timeout} s of {signal.Signals(sig).name}:\n{self.log()}")
        return rc, time.monotonic() - started

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def daemons():
    started: list[Daemon] = []

    def start(project: Path, *args: str, env: dict[str, str] | None = None, log_level: str = "info") -> Daemon:
        daemon = Daemon(project, *args, env=env, log_level=log_level)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.cleanup()


PRODUCER = r"""
import json, os, sys, threading, time
from formula_foundry.tracking.config import load_config
from formula_foundry.tracking.tracker import Tracker

cfg = load_config(sys.argv[1])
runs, steps, pause, experiment, mode = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
ids, lock, started = [], threading.Lock(), threading.Barrier(runs + 1)

def work(i):
    run = Tracker(cfg).start_run(run_name=f"{experiment}-{os.getpid()}-{i}", experiment_name=experiment)
    with lock:
        ids.append(run.run_id)
    run.log_params({"i": i, "steps": steps})
    run.set_tag("producer", "test")
    started.wait()
    for s in range(steps):
        run.log_metrics({"loss": 1.0 / (s + 1), "acc": s / steps}, step=s)
        if pause:
            time.sleep(pause)
    if mode == "end":
        run.end("FINISHED")

threads = [threading.Thread(target=work, args=(i,)) for i in range(runs)]
for t in threads:
    t.start()
started.wait()
print(json.dumps(ids), flush=True)  # every run has started; the burst begins now
for t in threads:
    t.join()
if mode == "die":
    os._exit(0)
if mode == "hang":
    time.sleep(60)
"""


_producers: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _reap_producers():
    """Every producer a test started is finished (or killed) and reaped when the test ends."""
    yield
    while _producers:
        proc = _producers.pop()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def produce(project: Path, *, runs: int = 1, steps: int = 20, pause: float = 0.0, experiment: str = "watch",
            mode: str = "end") -> subprocess.Popen:
    """A producer process: ``runs`` threads, each its own run logging 2 metrics per step.

    It prints its run ids (read them with :func:`run_ids`) once every run has started, before the burst.
    """
    proc = subprocess.Popen([sys.executable, "-c", PRODUCER, str(project / "config" / "mlflow.yaml"), str(runs),
                             str(steps), str(pause), experiment, mode], stdout=subprocess.PIPE, text=True,
                            env=subprocess_env(), cwd=project)
    _producers.append(proc)
    return proc


def run_ids(proc: subprocess.Popen, timeout: float = 120) -> list[str]:
    out = proc.stdout.readline()
    if not out:
        proc.wait(timeout)
        pytest.fail(f"producer failed with {proc.returncode}")
    return json.loads(out)


def db_of(project: Path) -> Path:
    return project / "data" / "mlflow" / "mlruns.db"


def query(db: Path, sql: str, *args) -> list[tuple]:
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def summary(db: Path) -> dict[str, tuple[str, int]]:
    """ff.run_id -> (status, metric rows), straight from the store's tables."""
    rows = query(db, "SELECT t.value, r.status, (SELECT count(*) FROM metrics m WHERE m.run_uuid = r.run_uuid) "
                     "FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'ff.run_id'")
    return {ff: (status, n) for ff, status, n in rows}


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def all_finished(db: Path, ids: list[str], metrics_each: int):
    def check():
        s = summary(db)
        return all(s.get(i) == ("FINISHED", metrics_each) for i in ids)
    return check


def dump(db: Path) -> dict:
    """The whole store's content, keyed by producer run id, free of MLflow's own ids."""
    experiments = dict(query(db, "SELECT experiment_id, name FROM experiments"))
    out: dict[str, dict] = {}
    for uuid, name, status, start, end, exp, stage in query(
            db, "SELECT run_uuid, name, status, start_time, end_time, experiment_id, lifecycle_stage FROM runs"):
        tags = dict(query(db, "SELECT key, value FROM tags WHERE run_uuid = ?", uuid))
        tags.pop("mlflow.parentRunId", None)
        ff = tags.get("ff.run_id")
        assert ff not in out, f"two MLflow runs for producer run {ff}"
        out[ff] = {
            "name": name, "status": status, "start": start, "end": end, "experiment": experiments[exp],
            "stage": stage, "tags": tags, "params": dict(query(db, "SELECT key, value FROM params WHERE run_uuid = ?",
                                                                 uuid)),
            "metrics": sorted(query(db, "SELECT key, value, timestamp, step, is_nan FROM metrics "
                                        "WHERE run_uuid = ?", uuid)),
            "latest": sorted(query(db, "SELECT key, value, timestamp, step, is_nan FROM latest_metrics "
                                       "WHERE run_uuid = ?", uuid)),
        }
    return out


def clean_ingest(tmp_path: Path, template_store: Path, runs_root: Path) -> dict:
    """The reference: one batch ingest of the same journals into a fresh store."""
    clean = tmp_path / "clean"
    (clean / "config").mkdir(parents=True)
    shutil.copy(REPO / "config" / "mlflow.yaml", clean / "config" / "mlflow.yaml")
    db_of(clean).parent.mkdir(parents=True)
    shutil.copy(template_store, db_of(clean))
    assert run_ff_ingest(clean, "--root", str(runs_root), "--quiet") == 0
    return dump(db_of(clean))


# --------------------------------------------------------------------------- daemon tests

@slow
def test_producer_output_appears_in_mlflow_and_latency(store_project, daemons):
    """Catch-up at start, then a producer process's run appears; then append->visible latency."""
    cfg_path = configure(store_project)
    cfg = load_config(cfg_path)
    before = write_run(cfg, steps=3)  # exists before the daemon starts: the catch-up takes it
    daemon = daemons(store_project).wait_ready()
    db = db_of(store_project)
    assert summary(db)[before.run_id] == ("FINISHED", 3)
    ids = run_ids(produce(store_project, steps=20, pause=0.01))
    wait_until(all_finished(db, ids, 40), 30, "the producer's run")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    run = client.search_runs([client.get_experiment_by_name("watch").experiment_id])[0]
    assert run.data.params == {"i": "0", "steps": "20"} and run.data.tags["producer"] == "test"
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 20

    # Latency: one append at a time, timed until its row is in the store.
    live = Tracker(cfg).start_run(run_name="latency", experiment_name="watch")
    mlflow_id = wait_until(lambda: query(db, "SELECT run_uuid FROM tags WHERE key = 'ff.run_id' AND value = ?",
                                         live.run_id), 20, "the latency run")[0][0]
    latencies = []
    for step in range(30):
        t0 = time.perf_counter()
        live.log_metric("lat", float(step), step=step)
        wait_until(lambda step=step: query(db, "SELECT 1 FROM metrics WHERE run_uuid = ? AND key = 'lat' "
                                               "AND step = ?", mlflow_id, step), 20, f"step {step}", interval=0.005)
        latencies.append(time.perf_counter() - t0)
        time.sleep(0.05)
    live.end()
    latencies.sort()
    p50, p95 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.95)]
    print(f"\nappend->visible latency over {len(latencies)} appends: p50 {p50 * 1000:.0f} ms, "
          f"p95 {p95 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms")
    assert p95 < 3.0  # the 1 s p95 target is measured by tools/bench; this bound is for slow CI machines
    assert daemon.events("ingested") and "mlflow_run=" in daemon.events("ingested")[-1]
    rc, _ = daemon.stop()
    assert rc == 0 and daemon.events("stopped")


@slow
def test_half_line_is_ingested_once_and_only_when_complete(store_project, daemons, tmp_path):
    """A record written in two raw writes is taken only after its newline, exactly once."""
    configure(store_project)
    cfg = load_config(store_project / "config" / "mlflow.yaml")
    scratch = load_config(store_project / "config" / "mlflow.yaml")
    from dataclasses import replace

    scratch = replace(scratch, journal=replace(scratch.journal, root=tmp_path / "scratch"))
    src = write_run(scratch, steps=3)  # a finished journal outside the watched root, copied in by hand
    lines = src.journal_path.read_bytes().splitlines(keepends=True)
    metric_lines = [i for i, line in enumerate(lines) if b'"type":"metric"' in line]
    torn = metric_lines[-1]  # the step-2 metric
    daemon = daemons(store_project).wait_ready()
    target = cfg.journal.root / "handmade" / "tracking" / src.journal_path.name
    target.parent.mkdir(parents=True)
    db = db_of(store_project)
    with open(target, "ab", buffering=0) as fh:
        fh.writelines(lines[:torn])
        half = len(lines[torn]) // 2
        fh.write(lines[torn][:half])
        wait_until(lambda: summary(db).get(src.run_id, (None, 0))[1] == 2, 30, "the first two metrics")
        time.sleep(1.0)  # the daemon saw the half line (inotify) and must have left it alone
        assert summary(db)[src.run_id] == ("RUNNING", 2)
        fh.write(lines[torn][half:])
        wait_until(lambda: summary(db)[src.run_id][1] == 3, 30, "the completed metric")
        fh.writelines(lines[torn + 1:])
    wait_until(lambda: summary(db)[src.run_id] == ("FINISHED", 3), 30, "the run end")
    assert query(db, "SELECT count(*) FROM metrics m JOIN tags t ON t.run_uuid = m.run_uuid "
                     "WHERE t.key = 'ff.run_id' AND t.value = ? AND m.step = 2", src.run_id) == [(1,)]
    assert daemon.stop()[0] == 0


@slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_signal_mid_burst_then_restart_is_exactly_once(store_project, daemons, tmp_path, template_store, sig):
    """Stop the daemon mid-burst (cleanly or not), restart it: the store equals one clean ingest."""
    configure(store_project)
    db = db_of(store_project)
    first = daemons(store_project).wait_ready()
    producer = produce(store_project, runs=5, steps=300, pause=0.004)
    ids = run_ids(producer)
    wait_until(lambda: sum(summary(db).get(i, ("", 0))[1] for i in ids) > 0, 60, "a first ingested batch")
    rc, took = first.stop(sig)
    if sig == signal.SIGTERM:
        assert rc == 0, first.log()
        assert took < 10, f"SIGTERM took {took:.1f} s"
        assert first.events("stopped")
    else:
        assert rc == -signal.SIGKILL
    assert producer.wait(120) == 0
    partial = sum(summary(db).get(i, ("", 0))[1] for i in ids)
    second = daemons(store_project).wait_ready()
    wait_until(all_finished(db, ids, 600), 90, "every run after the restart")
    assert second.stop()[0] == 0
    print(f"\n{signal.Signals(sig).name} after {partial} of 3000 metric rows; stop took {took:.2f} s")
    assert dump(db) == clean_ingest(tmp_path, template_store, load_config(
        store_project / "config" / "mlflow.yaml").journal.root)


@slow
def test_fifty_producers_at_once(store_project, daemons):
    """10 processes x 5 threads, 50 runs logging at the same time: all of it arrives."""
    configure(store_project)
    db = db_of(store_project)
    daemon = daemons(store_project).wait_ready()
    producers = [produce(store_project, runs=5, steps=40, pause=0.005, experiment="fifty") for _ in range(10)]
    ids = [i for p in producers for i in run_ids(p)]
    assert len(set(ids)) == 50
    wait_until(all_finished(db, ids, 80), 120, "50 finished runs")
    assert len(summary(db)) == 50
    assert all(p.wait(30) == 0 for p in producers)
    assert daemon.stop()[0] == 0


@slow
def test_polling_observer_and_the_single_daemon_lock(store_project, daemons):
    """--polling (for NFS) finds appends by stat polling (rescans are 60 s off); a second daemon on the
    same store exits 5 naming the first one's pid, and the first one carries on."""
    configure(store_project, poll_interval_seconds=0.2)
    db = db_of(store_project)
    daemon = daemons(store_project, "--polling").wait_ready()
    assert "observer=polling" in daemon.events("started")[0]
    producer = produce(store_project, runs=2, steps=20, pause=0.01)
    second = subprocess.run([sys.executable, "-m", "formula_foundry.tracking.ingest.cli", "--watch", "--config",
                             str(store_project / "config" / "mlflow.yaml")], capture_output=True, text=True,
                            env=subprocess_env(), cwd=store_project, timeout=120, check=False)
    assert second.returncode == 5, second.stderr
    assert "another ingester" in second.stderr and f"pid {daemon.pid}" in second.stderr
    ids = run_ids(producer)
    wait_until(all_finished(db, ids, 40), 30, "runs seen through the polling observer")
    assert daemon.proc.poll() is None
    assert daemon.stop()[0] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        self.log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - open while the server runs
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlruns.db'}",
             "--artifacts-destination", (self.folder / "artifacts").as_uri(), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=self.log, stderr=self.log, env=subprocess_env(MLFLOW_DISABLE_TELEMETRY="true"),
            start_new_session=True)

        def healthy():
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(self.folder / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        wait_until(healthy, timeout, "the mlflow server", interval=0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None:
            self.log.close()
        self.proc = None


@slow
def test_store_unreachable_then_back_loses_nothing(store_project, daemons, tmp_path, template_store):
    """Daemon -> mlflow server, down at the daemon's start, then up; stopped while producers log, then
    restarted on the same port: everything arrives, exactly once, with one log line per outage."""
    configure(store_project)
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    shutil.copy(template_store, server_dir / "mlruns.db")
    server = MlflowServer(server_dir, _free_port())
    phases, t0 = [], time.monotonic()

    def phase(name: str) -> None:
        phases.append(f"{name} {time.monotonic() - t0:.1f}s")

    try:
        # The store is down when the daemon starts: it waits for it, then starts following.
        daemon = daemons(store_project, "--tracking-uri", server.url, env={"FF_WATCH_MAX_BACKOFF": "1"},
                         log_level="debug")
        daemon.wait_for("event=store_unavailable")
        server.start()
        phase("server up")
        daemon.wait_ready()
        phase("daemon ready")
        assert len(daemon.events("store_unavailable")) == len(daemon.events("store_available")) == 1
        db = server_dir / "mlruns.db"
        before = run_ids(produce(store_project, runs=2, steps=30))
        wait_until(all_finished(db, before, 60), 60, "runs logged while the server is up")
        phase("first runs in")
        server.stop()
        phase("server stopped")
        during = run_ids(produce(store_project, runs=2, steps=30))
        daemon.wait_for("event=store_unavailable", 60)
        server.start()  # takes seconds: the daemon retries (backoff capped at 1 s) and must log once
        phase("server up again")
        wait_until(all_finished(db, before + during, 60), 90, "runs logged while the server was down")
        daemon.wait_for("event=store_available", 10)
        phase("caught up")
        assert len(daemon.events("store_retry_failed")) >= 2, daemon.log()  # it retried while down...
        assert len(daemon.events("store_unavailable")) == 2, daemon.log()  # ...and said so once per outage
        assert len(daemon.events("store_available")) == 2, daemon.log()
        assert daemon.stop()[0] == 0
        reference = clean_ingest(tmp_path, template_store, load_config(
            store_project / "config" / "mlflow.yaml").journal.root)
        assert dump(db) == reference
        phase("compared")
        print("\nstore down/up phases: " + ", ".join(phases))
    finally:
        server.stop()


@slow
def test_stale_run_is_reported_once_and_killed(store_project, daemons):
    """A producer that died without run_end: reported once and KILLED; a live idle producer is left alone."""
    configure(store_project, stale_after_seconds=1.5, stale_action="kill")
    db = db_of(store_project)
    daemon = daemons(store_project).wait_ready()
    dead = produce(store_project, steps=3, mode="die", experiment="stale")
    idle = produce(store_project, steps=3, mode="hang", experiment="stale")
    try:
        [dead_id], [idle_id] = run_ids(dead), run_ids(idle)
        assert dead.wait(30) == 0
        wait_until(lambda: summary(db).get(dead_id, ("",))[0] == "KILLED", 30, "the dead run KILLED")
        time.sleep(2.0)  # more stale checks: still one report
        lines = daemon.events("stale")
        assert len(lines) == 1 and f"run={dead_id}" in lines[0] and "action=kill" in lines[0], daemon.log()
        assert summary(db)[idle_id] == ("RUNNING", 6)  # idle, but its producer is alive
    finally:
        idle.kill()
        idle.wait()
    assert daemon.stop()[0] == 0
