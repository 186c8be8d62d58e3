"""Crash injection: ``ff-ingest`` SIGKILLed at random moments of a large backfill, then rerun,
leaves the store identical to one clean ingest (issue 4's exactly-once outcome).

How it runs (under ~90 s on 2 cores):

* a backfill of 11 journals written by the real producer: three top-level runs in two
  experiments, with manifests, substrate run dirs, params, tags updated over time, artifact
  references, NaN/±inf metrics, a 2500-key ``log_metrics`` record, six nested children ending
  FINISHED / FAILED / KILLED, a segment attached from "another rank", and a run whose producer
  died (RUNNING) - ~30k records, ~33k metric points;
* the reference: one clean ``ff-ingest`` (a cold subprocess) into a second copy of the store;
* the crash store: ``ff-ingest`` processes SIGKILLed again and again - a cold subprocess
  killed right after it took the ingester lock (store opening, first run creation), then
  processes forked from a pre-imported launcher (so that each attempt costs milliseconds of
  startup instead of seconds of ``import mlflow``), each killed at a random moment before its
  first commit or after its 1st-6th checkpoint (8-14 kills spread over the backfill); then a
  last run to completion and a second, idempotent one;
* after every kill: no MLflow run without ``ff.run_id``, none twice; at the end the full dump
  (runs, statuses, times, params, every tag, every metric history row, latest metrics, artifact
  files byte for byte) equals the reference.

The seed is printed; ``FF_CRASH_SEED=<n>`` repeats a run's kill schedule.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from formula_foundry.substrate import ArtifactStore, DeterminismConfig, Manifest, create_run
from tests.ingest import (
    SINK,
    child_env,
    diff_dumps,
    dump_store,
    ingest_cmd,
    journals_of,
    reference_project,
    store_db,
    tracker,
)

SEED = int(os.environ.get("FF_CRASH_SEED") or 20261123)
MIN_KILLS, MAX_KILLS = 8, 14
CHILD_STATUSES = [("FINISHED", "FAILED"), ("KILLED", "FINISHED"), ("FINISHED", "FAILED")]
TIME_BUDGET = 40.0  # seconds of kill attempts (but at least MIN_KILLS kills); then a last run completes

ORPHAN = textwrap.dedent("""
    import os, sys
    from formula_foundry.tracking import Tracker, load_config
    run = Tracker(load_config(sys.argv[1])).start_run("orphan", experiment_name="crash-b")
    run.log_params({"p": "1"})
    for i in range(int(sys.argv[2])):
        run.log_metric("m", i * 0.5, step=i)
    os._exit(0)  # the producer dies: no run_end, the run stays RUNNING
""")

# Imports ff-ingest once, then forks one ingester per request; the test kills the child with SIGKILL.
LAUNCHER = textwrap.dedent("""
    import json, os, sys, threading
    from formula_foundry.tracking.ingest import cli, plan, replay  # noqa
    from formula_foundry.tracking.ingest.cli import app  # noqa
    from formula_foundry.tracking.ingest.stores import checkpoints, connect, mlflow_api  # noqa
    import mlflow.store.tracking.sqlalchemy_store  # noqa: the slow part of a cold start
    args, log = json.loads(sys.argv[1]), sys.argv[2]
    print("ready", threading.active_count(), flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "run":
            pid = os.fork()
            if pid == 0:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os._exit(cli.main(list(args)))
            print(pid, flush=True)
        elif cmd == "wait":
            _, status = os.waitpid(int(arg), 0)
            print(os.waitstatus_to_exitcode(status), flush=True)
""")


def build_backfill(project: Path, rng: random.Random) -> dict[str, int]:
    """~30k records in 10 journals through the real producer; returns counts for the report."""
    t = tracker(project)
    blobs = ArtifactStore(project / "data" / "store")
    runs_root = project / "data" / "runs"
    for top in range(3):
        manifest = Manifest.from_environment(DeterminismConfig(seed=top))
        ra = create_run(runs_root, f"crash-{top}", manifest=manifest)
        with t.start_run(f"top-{top}", experiment_name="crash-a" if top < 2 else "crash-b", manifest=manifest,
                         run_artifacts=ra, tags={"top": str(top)}) as run:
            run.log_params({f"hp{i}": rng.choice(["a", "b", "c"]) + str(i) for i in range(25)})
            run.log_param("lr", 10 ** -rng.randint(2, 5))
            segment = t.attach_run(run.run_id) if top == 1 else None
            for step in range(5000):
                run.log_metric("loss", rng.random(), step=step)
                if step % 10 == 0:
                    run.log_metrics({"acc": rng.random(), "lr_now": 1.0 / (step + 1)}, step=step)
                if step % 200 == 0:
                    run.set_tag("phase", f"epoch-{step // 200}")
                    entry = blobs.add_bytes(rng.randbytes(64), logical_path=f"ckpt/epoch-{step // 200}.pt")
                    run.log_artifact_reference(entry.path, entry.digest, entry.size_bytes, store_uri=entry.uri)
                if step == 1234:
                    run.log_metric("grad", float("inf"), step=step)
                    run.log_metric("grad", float("-inf"), step=step + 1)
                    run.log_metric("grad", float("nan"), step=step + 2)
                if top == 0 and step == 2500:
                    run.log_metrics({f"layer{i:04d}.norm": rng.random() for i in range(2500)}, step=step)
                if segment is not None and step % 5 == 0:
                    segment.log_metric("rank1.loss", rng.random(), step=step)
            run.set_tags({"phase": "done", "best": f"{rng.random():.6f}"})
            if segment is not None:
                segment.end()
            for c, status in enumerate(CHILD_STATUSES[top]):
                child = t.start_run(f"top-{top}-child-{c}", experiment_name="crash-a", nested=True)
                child.log_param("child", str(c))
                for step in range(2000):
                    child.log_metric("x", rng.random(), step=step)
                child.end(status, error=None if status == "FINISHED" else f"{status.lower()} on purpose")
    subprocess.run([sys.executable, "-c", ORPHAN, str(project / "config" / "mlflow.yaml"), "1000"], check=True,
                   env=child_env(), timeout=120)
    paths = journals_of(project)
    lines = sum(p.read_bytes().count(b"\n") for p in paths)
    return {"journals": len(paths), "records": lines}


def duplicates_and_orphans(db: Path) -> tuple[list, list]:
    # Not mode=ro: a SIGKILLed writer may leave a hot rollback journal, which the next connection
    # must roll back (as MLflow's next connection would); a read-only one cannot.
    con = sqlite3.connect(db, timeout=30)
    try:
        dupes = con.execute("SELECT value, COUNT(*) FROM tags WHERE key = 'ff.run_id' GROUP BY value"
                            " HAVING COUNT(*) > 1").fetchall()
        orphans = con.execute("SELECT run_uuid FROM runs WHERE run_uuid NOT IN"
                              " (SELECT run_uuid FROM tags WHERE key = 'ff.run_id')").fetchall()
    finally:
        con.close()
    return dupes, orphans


class Checkpointed:
    """Records checkpointed so far, read through one long-lived connection (cheap to poll; opening
    and closing connections would checkpoint the WAL each time). Read-write, because the first
    reader after a SIGKILL may have to recover the killed writer's WAL."""

    def __init__(self, project: Path) -> None:
        self.folder = project / "data" / "mlflow" / "ingest"
        self.con: sqlite3.Connection | None = None

    def __call__(self) -> int:
        if self.con is None:
            files = list(self.folder.glob("*/checkpoints.sqlite"))
            if not files:
                return 0
            self.con = sqlite3.connect(files[0], timeout=30, isolation_level=None)
        try:
            return self.con.execute("SELECT COALESCE(SUM(records), 0) FROM ff_ingest_checkpoints").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            return 0

    def close(self) -> None:
        if self.con is not None:
            self.con.close()


def lock_holder_is(project: Path, pid: int) -> bool:
    for lock in (project / "data" / "mlflow" / "ingest").glob("*/ingester.lock"):
        try:
            return lock.read_text().split()[:2] == ["pid", str(pid)]
        except OSError:
            return False
    return False


class Launcher:
    """The pre-imported ff-ingest launcher: ``start()`` forks an ingester, ``wait(pid)`` reaps it.

    Construction returns at once (the imports run in the background); ``ready()`` waits for them.
    """

    def __init__(self, project: Path, log: Path) -> None:
        args = [*SINK, "-q", "--config", str(project / "config" / "mlflow.yaml")]
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, json.dumps(args), str(log)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env())

    def ready(self) -> None:
        ready = self.proc.stdout.readline().split()
        assert ready[:1] == ["ready"], f"launcher failed to start ({ready}); see {self.log}"
        assert ready[1] == "1", "the launcher must be single-threaded before it forks"

    def _ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def start(self) -> int:
        return int(self._ask("run"))

    def wait(self, pid: int) -> int:
        return int(self._ask(f"wait {pid}"))

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def running(pid: int) -> bool:
    """Whether ``pid`` still runs (an exited child stays a zombie until the launcher reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def until(predicate, pid: int, timeout: float = 120.0) -> bool:
    """Poll ``predicate`` while ``pid`` runs; True once it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if not running(pid):
            return predicate()
        time.sleep(0.01)
    return False


def median(values: list[float], default: float) -> float:
    return sorted(values)[len(values) // 2] if values else default


def test_sigkill_at_random_moments_then_rerun_equals_one_clean_ingest(store_project, tmp_path, template_store,
                                                                      capsys):
    """SIGKILL ff-ingest again and again at random moments of a large backfill (run creation, between
    log_batch, artifacts, set_terminated and checkpoint writes), rerun to completion: exactly one MLflow
    run per producer run, and every row and artifact byte equal to a single clean ingest."""
    rng = random.Random(SEED)
    print(f"crash-injection seed: {SEED} (repeat with FF_CRASH_SEED={SEED})")
    t0 = time.monotonic()
    log = tmp_path / "ingesters.log"
    launcher = Launcher(store_project, log)  # imports in the background meanwhile
    checkpointed = Checkpointed(store_project)
    reference = None
    try:
        sizes = build_backfill(store_project, rng)
        print(f"backfill: {sizes['journals']} journals, {sizes['records']} records "
              f"({time.monotonic() - t0:.1f} s)")
        assert sizes["journals"] == 11 and sizes["records"] >= 30_000

        ref = reference_project(tmp_path, store_project, template_store)
        reference = subprocess.Popen(ingest_cmd(ref), env=child_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        kills: list[tuple[str, float, int]] = []  # (moment, delay s, records checkpointed after the kill)

        # 1. a cold process, killed right after it took the ingester lock (store opening, first runs)
        with open(log, "a") as out:
            proc = subprocess.Popen(ingest_cmd(store_project), env=child_env(), stdout=out, stderr=out)
        until(lambda: lock_holder_is(store_project, proc.pid), proc.pid)
        delay = rng.uniform(0.0, 0.5)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        kills.append(("cold start", round(delay, 3), checkpointed()))

        # 2. forked ingesters, each killed at a random moment: before its first commit (run lookup and
        #    creation, the first log_batch) or a random time after its 1st-6th checkpoint (inside a later
        #    commit: log_batch, artifacts, set_terminated, the checkpoint write). Timing follows the
        #    measured pace, so a busy machine still gets kills while ingesting.
        launcher.ready()
        first_commit: list[float] = []
        commit_gap: list[float] = []
        finished = False
        started = time.monotonic()
        while len(kills) < MIN_KILLS or (len(kills) < MAX_KILLS and time.monotonic() - started < TIME_BUDGET):
            pid = launcher.start()
            t_start = time.monotonic()
            if rng.random() < 0.3:
                moment, delay = "before 1st commit", rng.uniform(0.0, median(first_commit, 0.5))
                time.sleep(delay)
            else:
                seen = checkpointed()
                for n in range(rng.randint(1, 6)):
                    t_wait = time.monotonic()
                    if not until(lambda seen=seen: checkpointed() > seen, pid):
                        break
                    (commit_gap if n else first_commit).append(time.monotonic() - (t_wait if n else t_start))
                    seen = checkpointed()
                moment, delay = f"after commit {n + 1}", rng.uniform(0.0, median(commit_gap, 0.3))
                time.sleep(delay)
            os.kill(pid, signal.SIGKILL)  # a no-op on a child that already exited (a zombie until reaped)
            status = launcher.wait(pid)
            if status != -signal.SIGKILL:
                assert status == 0, f"ff-ingest exited {status} on its own; see {log}:\n{log.read_text()[-3000:]}"
                finished = True
                break
            kills.append((moment, round(delay, 3), checkpointed()))
            dupes, orphans = duplicates_and_orphans(store_db(store_project))
            assert not dupes and not orphans, f"after kill {len(kills)}: duplicates {dupes}, orphans {orphans}"

        # 3. the rerun to completion, and one more (nothing left to do)
        if not finished:
            assert launcher.wait(launcher.start()) == 0, log.read_text()[-3000:]
        assert launcher.wait(launcher.start()) == 0, log.read_text()[-3000:]
    except BaseException:
        if reference is not None:
            reference.kill()
        raise
    finally:
        launcher.close()
        checkpointed.close()
    progress = [k[2] for k in kills]
    print(f"{len(kills)} kills (moment, delay s, records checkpointed): {kills}")
    assert len(kills) >= MIN_KILLS, f"only {len(kills)} kills landed before the backfill completed"
    assert len({p for p in progress if 0 < p < sizes["records"]}) >= 4, f"kills not while ingesting: {progress}"

    out, _ = reference.communicate(timeout=240)
    assert reference.returncode == 0, out
    crashed, clean = dump_store(store_project), dump_store(ref)
    assert diff_dumps(crashed, clean) == []
    assert len(crashed) == 10  # 3 top-level runs, 6 children, the orphan
    assert sum(len(r["history"]) for r in crashed.values()) >= 30_000
    statuses = sorted(r["status"] for r in crashed.values())
    assert statuses.count("RUNNING") == 1 and {"FAILED", "KILLED", "FINISHED"} <= set(statuses)
    with capsys.disabled():
        print(f"\n[crash test] seed {SEED}: {len(kills)} kills, records checkpointed at each: {progress}; "
              f"{time.monotonic() - t0:.1f} s")
