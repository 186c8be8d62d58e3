"""``ff-ingest --workers N`` (``ingest/parallel.py``) into an SQLite store: the same store as one worker.

One backfill for the module, written by the real producer: 12 top-level runs in two experiments
(params, ``log_metrics`` histories, tags set over time, a FAILED and a KILLED end), children and
grandchildren of some (nested runs, created after their parents whatever the worker), one run with
two attached segments from "other ranks" (one unit: its journals stay in order on one worker) and a
run whose producer died (RUNNING). The reference is ``--workers 1`` into a copy of the store.

* ``--workers 4`` (bulk sink, the default on SQLite, and the API sink) gives the reference store run
  by run: params, every metric history row in MLflow's order, tags, status, times; a rerun adds
  nothing;
* an ingester with 4 workers SIGKILLed at random moments of the pass (a pre-imported launcher forks
  each), then run to completion: the reference again, no orphan or duplicate run on the way;
* Ctrl-C (SIGINT) in the middle of a 4-worker pass: exit 130 within seconds (the workers stop
  after their batch), and the next pass completes the reference;
* the core, on sinks in memory: journals are spread over several threads, each exactly once, and a
  store failure in one worker stops the others and is raised (no hang).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from formula_foundry.errors import StoreUnavailableError
from tests.bulk.conftest import Launcher, _running, assert_kills_landed, kill_at_random_moments
from tests.conftest import run_ff_ingest
from tests.ingest import diff_dumps, dump_store, journals_of, reference_project, store_db, tracker
from tests.ingest.memory_sink import MemorySink

pytestmark = pytest.mark.slow

TOPS = 12
STEPS = 400
SEED = 20261204


def _write_backfill(project: Path) -> dict[str, str]:
    """The module's journals (see the module docstring); returns {name: producer run id}."""
    rng = random.Random(SEED)
    t = tracker(project)
    ids: dict[str, str] = {}
    for n in range(TOPS):
        status = {4: "FAILED", 7: "KILLED"}.get(n, "FINISHED")
        run = t.start_run(f"top-{n}", experiment_name=f"workers-{n % 2}", tags={"n": str(n)})
        ids[f"top-{n}"] = run.run_id
        run.log_params({"n": n, "lr": 10 ** -rng.randint(2, 5), "width": 64 * (n + 1)})
        segments = [t.attach_run(run.run_id, run_dir=run.run_dir) for _ in range(2)] if n == 1 else []
        for i in range(STEPS):
            run.log_metrics({"loss": rng.random(), "acc": i / STEPS}, step=i)
            if i % 100 == 0:
                run.set_tag("phase", f"epoch-{i // 100}")
            for rank, segment in enumerate(segments, start=1):
                if i % 2 == 0:
                    segment.log_metric(f"rank{rank}/throughput", rng.random() * 100, step=i)
        run.log_metric("special", math.nan, step=STEPS)
        run.log_metric("special", -math.inf, step=STEPS + 1)
        for rank, segment in enumerate(segments, start=1):
            segment.log_param(f"rank{rank}.host", f"node-{rank}")
            segment.set_tag(f"rank{rank}", "done")
            segment.end()
        if n % 4 == 0:  # a child with a grandchild, and a second child
            child = t.start_run(f"top-{n}-child", experiment_name=f"workers-{n % 2}", nested=True)
            ids[f"top-{n}-child"] = child.run_id
            child.log_param("fold", n)
            for i in range(50):
                child.log_metric("val", rng.random(), step=i)
            with t.start_run(f"top-{n}-grandchild", nested=True) as grand:
                ids[f"top-{n}-grandchild"] = grand.run_id
                grand.log_metric("g", 2.0, step=0)
            child.end()
            with t.start_run(f"top-{n}-child-2", nested=True) as other:
                ids[f"top-{n}-child-2"] = other.run_id
                other.set_tag("stage", "test")
        run.set_tags({"phase": "done", "best": f"{rng.random():.6f}"})
        run.end(status, error=None if status == "FINISHED" else f"{status.lower()} on purpose")
    died = t.start_run("died", experiment_name="workers-0")
    ids["died"] = died.run_id
    died.log_metric("m", 1.0, step=0)  # never ended: stays RUNNING
    return ids


def _histories(project: Path) -> dict[str, dict[str, list]]:
    """Every metric history through MLflow (``get_metric_history``, its own order), by producer run id."""
    from tests.conftest import mlflow_client

    client = mlflow_client(project)
    out: dict[str, dict[str, list]] = {}
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000):
        out[run.data.tags["ff.run_id"]] = {
            key: [(m.step, m.timestamp, "NaN" if math.isnan(m.value) else m.value)
                  for m in client.get_metric_history(run.info.run_id, key)]
            for key in run.data.metrics}
    return out


def _ingest(project: Path, capsys, *args: str) -> dict:
    capsys.readouterr()
    code = run_ff_ingest(project, "--json", *args)
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary
    return summary


@pytest.fixture(scope="module")
def backfill(tmp_path_factory, template_store):
    """(source project with the journals, reference project ingested with ``--workers 1``, its dump,
    its histories, the number of journal records, the producer ids)."""
    tmp = tmp_path_factory.mktemp("workers")
    source = tmp / "source"
    (source / "config").mkdir(parents=True)
    from tests.conftest import REPO

    shutil.copy(REPO / "config" / "mlflow.yaml", source / "config" / "mlflow.yaml")
    ids = _write_backfill(source)
    records = sum(p.read_bytes().count(b"\n") for p in journals_of(source))
    ref = reference_project(tmp, source, template_store, "ref")
    assert run_ff_ingest(ref, "-q", "--workers", "1") == 0
    return source, ref, dump_store(ref), _histories(ref), records, ids


@pytest.mark.parametrize("sink", ["bulk", "api"])
def test_four_workers_give_the_store_of_one(backfill, tmp_path, template_store, capsys, sink):
    """``--workers 4`` into a fresh store equals ``--workers 1``: every run (nested and segmented ones
    too) with its params, metric histories in MLflow's order, tags, status and times; a rerun adds nothing."""
    source, _, reference, histories, records, ids = backfill
    project = reference_project(tmp_path, source, template_store, f"w4-{sink}")
    first = _ingest(project, capsys, "--workers", "4", "--sink", sink)
    assert first["workers"] == 4 and first["sink"] == sink
    assert first["records"] == records and first["errors"] == 0
    assert first["runs_created"] == len(ids)
    got = dump_store(project)
    assert not diff_dumps(reference, got), "\n".join(diff_dumps(reference, got))
    assert _histories(project) == histories
    top1 = got[ids["top-1"]]
    assert {"rank1.host", "rank2.host"} <= set(top1["params"]) and top1["tags"]["rank2"] == "done"
    grand = got[ids["top-4-grandchild"]]
    assert grand["tags"]["mlflow.parentRunId"] == ("parent", ids["top-4-child"])
    assert got[ids["top-4"]]["status"] == "FAILED" and got[ids["died"]]["status"] == "RUNNING"

    again = _ingest(project, capsys, "--workers", "4", "--sink", sink)
    assert again["records"] == 0 and again["runs_created"] == 0
    assert dump_store(project) == got


def test_workers_default_from_config_and_auto(backfill, tmp_path, template_store, capsys):
    """``ingest.workers: 3`` is used without ``--workers``; auto (0) on SQLite is one worker."""
    source = backfill[0]
    project = reference_project(tmp_path, source, template_store, "cfg")
    cfg = project / "config" / "mlflow.yaml"
    text = cfg.read_text()
    assert "\n  workers: 0\n" in text  # the shipped config states the default
    cfg.write_text(text.replace("\n  workers: 0\n", "\n  workers: 3\n", 1))
    assert _ingest(project, capsys, "--dry-run")["workers"] == 1  # a dry run reads with one
    assert _ingest(project, capsys)["workers"] == 3
    assert _ingest(project, capsys, "--workers", "0")["workers"] == 1


# --------------------------------------------------------------------------- crashes

def _progress(project: Path) -> int:
    """Records the bulk sink's checkpoints claim (0 before its table exists)."""
    try:
        con = sqlite3.connect(f"file:{store_db(project)}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return 0
    try:
        return con.execute("SELECT coalesce(sum(records), 0) FROM ff_ingest_checkpoints").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        con.close()


@pytest.fixture(scope="module")
def launcher():
    started = Launcher()
    yield started
    started.close()


def test_sigkill_with_four_workers_then_rerun_equals_a_clean_ingest(backfill, tmp_path, template_store, launcher):
    """4 workers SIGKILLed at random moments (at start, and just after checkpoints advanced), again and
    again; the last ingester runs to completion: the store equals the clean ``--workers 1`` ingest."""
    source, _, reference, histories, records, _ = backfill
    project = reference_project(tmp_path, source, template_store, "killed")
    args = ["--workers", "4", "-q", "--config", str(project / "config" / "mlflow.yaml")]
    log = tmp_path / "ingest.log"
    timing = reference_project(tmp_path, source, template_store, "timing")
    started = time.monotonic()
    assert launcher.wait(launcher.start(["--workers", "4", "-q", "--config",
                                         str(timing / "config" / "mlflow.yaml")], log)) == 0
    pace = time.monotonic() - started
    rng = random.Random(SEED)
    attempts = kill_at_random_moments(launcher, args, log, lambda: _progress(project), records, rng, pace=pace,
                                      kills=9)
    assert_kills_landed(attempts, records)
    assert launcher.wait(launcher.start(args, log)) == 0, log.read_text()[-3000:]
    assert _progress(project) == records
    got = dump_store(project)
    assert not diff_dumps(reference, got), "\n".join(diff_dumps(reference, got))
    assert _histories(project) == histories


def test_ctrl_c_stops_every_worker_and_the_next_pass_completes(backfill, tmp_path, template_store, launcher):
    """SIGINT while 4 workers stream: exit 130 within seconds, checkpoints consistent; the next pass
    completes the reference store."""
    source, _, reference, _, records, _ = backfill
    project = reference_project(tmp_path, source, template_store, "interrupted")
    args = ["--workers", "4", "-q", "--config", str(project / "config" / "mlflow.yaml")]
    log = tmp_path / "ingest.log"
    pid = launcher.start(args, log)
    deadline = time.monotonic() + 60
    while _running(pid) and _progress(project) == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    import os

    os.kill(pid, signal.SIGINT)
    sent = time.monotonic()
    status = launcher.wait(pid)
    assert time.monotonic() - sent < 15
    assert status == 130, log.read_text()[-3000:]
    assert "interrupted" in log.read_text()
    assert 0 < _progress(project) < records, "the interrupt landed outside the pass: make the backfill bigger"
    assert launcher.wait(launcher.start(args, log)) == 0
    got = dump_store(project)
    assert not diff_dumps(reference, got), "\n".join(diff_dumps(reference, got))


# --------------------------------------------------------------------------- the core, in memory

class _SharedStore:
    """One store in memory behind a lock; each :class:`_Sink` is one connection to it."""

    def __init__(self) -> None:
        self.store = MemorySink()
        self.lock = threading.Lock()
        self.threads: set[str] = set()
        self.closed: list[str] = []
        self.fail_after: int | None = None  # commits before one connection breaks (the next committer's)
        self.broken: str | None = None  # the thread whose connection broke: each of its commits fails
        self.commits = 0
        self.log: list[tuple[str, str]] = []  # (thread, journal id) of each commit, in order


class _Sink(MemorySink):
    def __init__(self, shared: _SharedStore) -> None:
        self.shared = shared
        self.checkpoints = shared.store.checkpoints

    def experiment_id(self, name):
        with self.shared.lock:
            return self.shared.store.experiment_id(name)

    def find_run(self, run_id, experiment_id=None):
        with self.shared.lock:
            return self.shared.store.find_run(run_id, experiment_id)

    def create_run(self, **kwargs):
        with self.shared.lock:
            return self.shared.store.create_run(**kwargs)

    def existing_params(self, mlflow_run_id):
        with self.shared.lock:
            return self.shared.store.existing_params(mlflow_run_id)

    def commit(self, mlflow_run_id, batch, checkpoint):
        time.sleep(0.002)  # a store round trip: lets the threads interleave
        with self.shared.lock:
            self.shared.commits += 1
            me = threading.current_thread().name
            if self.shared.fail_after is not None and self.shared.commits > self.shared.fail_after \
                    and self.shared.broken in (None, me):
                self.shared.broken = me
                raise StoreUnavailableError("connection reset by peer")
            self.shared.threads.add(me)
            self.shared.log.append((me, checkpoint.journal_id))
            self.shared.store.commit(mlflow_run_id, batch, checkpoint)

    def close(self):
        self.shared.closed.append(threading.current_thread().name)


def _parallel(paths, shared: _SharedStore, workers: int, on_progress=None):
    from formula_foundry.tracking.ingest.parallel import ingest_parallel
    from formula_foundry.tracking.ingest.plan import Limits
    from formula_foundry.tracking.ingest.replay import Replayer

    limits = Limits(metrics=50)  # many small batches: many chances to interleave and to stop
    planner = Replayer(_Sink(shared), limits=limits, on_progress=on_progress)
    return ingest_parallel(planner, paths, workers=workers, open_sink=lambda: _Sink(shared))


def test_core_spreads_journals_over_threads_each_once(backfill):
    """In memory: several worker threads commit; every journal is ingested once, completely; the
    journals of one run (an owner and its two segments) go through one thread, the owner's first;
    the progress bar (tqdm, as ``run_batch``'s) counts every byte of every worker."""
    import io

    from tqdm import tqdm

    source, _, _, _, records, ids = backfill
    shared = _SharedStore()
    total = sum(p.stat().st_size for p in journals_of(source))
    bar = tqdm(total=total, file=io.StringIO(), mininterval=0)  # as run_batch's, on a terminal
    report = _parallel(journals_of(source), shared, workers=4, on_progress=bar.update)
    assert bar.n == total, "the progress bar lost updates of concurrent workers"
    bar.close()
    assert report.ok and report.records == records
    assert len(shared.threads) > 1, shared.threads
    assert len(shared.closed) == 4 and shared.threads <= set(shared.closed)
    assert len(shared.store.runs) == len(ids)
    assert sorted(j.journal_id for j in report.journals) == sorted(p.name.split(".")[1] for p in journals_of(source))
    top1 = [j.journal_id for j in report.journals if j.run_id == ids["top-1"]]  # plan order: the owner first
    assert len(top1) == 3
    commits = [(thread, jid) for thread, jid in shared.log if jid in top1]
    assert len({thread for thread, _ in commits}) == 1, "one run's journals were streamed by several workers"
    order = [jid for _, jid in commits]
    assert order == sorted(order, key=top1.index), "a segment was streamed before its owner's journal ended"
    again = _parallel(journals_of(source), shared, workers=4)
    assert again.records == 0


def test_core_store_failure_in_one_worker_stops_all_and_is_raised(backfill):
    """A :class:`StoreUnavailableError` in one worker (its connection broke; the others' still work):
    every worker stops after its batch and closes its sink, the error is raised in the caller's
    thread, promptly; what was committed stays with its checkpoints, the rest is left for later."""
    source = backfill[0]
    shared = _SharedStore()
    shared.fail_after = 40
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            _parallel(journals_of(source), shared, workers=4)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            outcome.append(exc)

    caller = threading.Thread(target=run)
    started = time.monotonic()
    caller.start()
    caller.join(30)
    assert not caller.is_alive(), "ingest_parallel hangs after a worker failed"
    assert time.monotonic() - started < 10
    assert isinstance(outcome[0], StoreUnavailableError)
    assert len(shared.closed) == 4
    assert not [t for t in threading.enumerate() if t.name.startswith("ff-ingest-worker")]
    checkpoints = shared.store.checkpoints.all()
    assert 0 < sum(cp.records for cp in checkpoints) < backfill[4]
    untouched = len(journals_of(source)) - len(checkpoints)
    assert untouched >= len(journals_of(source)) // 2, "the other workers went on after the failure"
