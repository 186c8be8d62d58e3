"""``ff-ingest prune``: what it takes, what it keeps and why, with real producers and ingesters."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from formula_foundry.tracking.ingest.prune import is_held, parse_duration
from formula_foundry.tracking.journal import JournalWriter
from tests.conftest import run_ff_ingest
from tests.ingest import child_env, dump_store, ingest, ingest_cmd, journals_of, store_db, tracker


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def one_run(project: Path, name: str, n: int = 3):
    with tracker(project).start_run(name, experiment_name="prune") as run:
        run.log_param("p", name)
        for i in range(n):
            run.log_metric("m", float(i), step=i)
    return run


def prune_json(project: Path, capsys, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = run_ff_ingest(project, "prune", "--json", *args)
    return code, json.loads(capsys.readouterr().out)


# A producer that opens a run, logs, says "ready", then waits (its journal open and flocked).
LIVE = textwrap.dedent("""
    import sys, time
    from formula_foundry.tracking import Tracker, load_config
    run = Tracker(load_config(sys.argv[1])).start_run(sys.argv[2], experiment_name="prune")
    run.log_metric("m", 1.0, step=0)
    print(run.journal_path, flush=True)
    time.sleep(120)
""")


def live_producer(project: Path, name: str) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", LIVE, str(project / "config" / "mlflow.yaml"), name],
                            stdout=subprocess.PIPE, text=True, env=child_env())
    return proc, Path(proc.stdout.readline().strip())


# Holds an exclusive flock on a file, as a producer does on its journal.
HOLDER = "import fcntl, sys, time; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); print('ok', flush=True); " \
         "time.sleep(120)"


def test_parse_duration():
    """The forms the docs name, and a clear error otherwise."""
    assert [parse_duration(t) for t in ("0", "90s", "15m", "12h", "7d")] == [0, 90, 900, 43200, 604800]
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("7 days")


def test_is_held_sees_a_writers_lock_without_blocking_it(tmp_path: Path):
    """A JournalWriter's flock is seen (by another open file description), and gone after close."""
    writer = JournalWriter(tmp_path / "tracking" / "a.b.jsonl")
    try:
        assert is_held(writer.path)
    finally:
        writer.close()
    assert not is_held(writer.path)


def test_prune_takes_only_ended_ingested_idle_unheld_journals(store_project, capsys):
    """Done (ended, ingested) goes; a live producer's, a SIGSTOPped producer's, a lagging, an errored and a
    locked (by a stopped process) journal stay, each with its reason; --dry-run changes nothing; the default
    7d keeps fresh ones."""
    done = one_run(store_project, "done")
    held = one_run(store_project, "held")
    bad = one_run(store_project, "bad")
    lines = bad.journal_path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"value":', b'"value":9', 1)
    bad.journal_path.write_bytes(b"".join(lines))
    live, live_path = live_producer(store_project, "live")
    stopped, stopped_path = live_producer(store_project, "stopped")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(held.journal_path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        os.kill(stopped.pid, signal.SIGSTOP)
        os.kill(holder.pid, signal.SIGSTOP)  # a stopped holder keeps its lock
        assert ingest(store_project) == 1  # the corrupt journal is an error
        lagging = one_run(store_project, "lagging")  # ended, but never ingested
        code, out = prune_json(store_project, capsys, "--older-than", "0", "--dry-run")
        assert code == 0 and [t["path"] for t in out["taken"]] == [str(done.journal_path)]
        assert done.journal_path.exists()
        code, out = prune_json(store_project, capsys)  # default 7d: nothing is that old
        assert code == 0 and out["taken"] == []
        assert any(k["reason"].startswith("recent") for k in out["kept"])
        code, out = prune_json(store_project, capsys, "--older-than", "0")
        assert code == 0 and [t["path"] for t in out["taken"]] == [str(done.journal_path)]
        reasons = {k["path"]: k["reason"] for k in out["kept"]}
        assert reasons[str(live_path)].startswith("not ended")
        assert reasons[str(stopped_path)].startswith("not ended")
        assert reasons[str(bad.journal_path)].startswith("error")
        assert reasons[str(lagging.journal_path)].startswith("not ingested")
        assert reasons[str(held.journal_path)].startswith("held")  # ended and ingested, but locked
        assert not done.journal_path.exists() and done.journal_path.parent.is_dir()  # folders stay
        for path in (live_path, stopped_path, bad.journal_path, lagging.journal_path, held.journal_path):
            assert path.exists()
    finally:
        for proc in (stopped, live, holder):
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()


def test_archive_then_reingest_into_a_fresh_store_equals_the_original(store_project, template_store, tmp_path,
                                                                      capsys):
    """prune --archive writes <archive>/<relative path>.gz atomically; ingesting the archive into a fresh
    store gives the same store, and a second ingest of the archive adds nothing."""
    for name in ("a", "b", "c"):
        one_run(store_project, name, n=50)
    originals = {p: p.read_bytes() for p in journals_of(store_project)}
    assert ingest(store_project) == 0
    archive = tmp_path / "archive"
    code, out = prune_json(store_project, capsys, "--older-than", "0", "--archive", str(archive))
    assert code == 0 and len(out["taken"]) == 3 and out["kept"] == []
    root = store_project / "data" / "runs"
    for path, data in originals.items():
        target = archive / (str(path.relative_to(root)) + ".gz")
        assert gzip.decompress(target.read_bytes()) == data and not path.exists()
    assert not list(archive.rglob("*.tmp"))
    fresh = tmp_path / "fresh"
    (fresh / "config").mkdir(parents=True)
    (fresh / "config" / "mlflow.yaml").write_bytes((store_project / "config" / "mlflow.yaml").read_bytes())
    store_db(fresh).parent.mkdir(parents=True)
    store_db(fresh).write_bytes(template_store.read_bytes())
    assert ingest(fresh, "--root", str(archive)) == 0
    assert ingest(fresh, "--root", str(archive)) == 0
    assert dump_store(fresh) == dump_store(store_project)
    # status reads the archive too: every journal finished
    capsys.readouterr()
    assert run_ff_ingest(fresh, "status", "--json", "--root", str(archive)) == 0
    states = [j["state"] for j in json.loads(capsys.readouterr().out)["journals"]]
    assert states == ["finished"] * 3


RACE_PRODUCER = textwrap.dedent("""
    import sys, time
    from formula_foundry.tracking import Tracker, load_config
    tracker = Tracker(load_config(sys.argv[1]))
    for r in range(int(sys.argv[2])):
        with tracker.start_run(f"r{r}", experiment_name="race") as run:
            for i in range(20):
                run.log_metric("m", float(i), step=i)
        time.sleep(0.02)
""")

LOOP = textwrap.dedent("""
    import sys, time
    from formula_foundry.tracking.ingest.cli import main
    deadline = time.monotonic() + float(sys.argv[1])
    codes = set()
    while time.monotonic() < deadline:
        codes.add(main(sys.argv[2:]))
        time.sleep(0.05)
    print(sorted(codes))
""")


def test_prune_racing_producers_and_an_ingester_loses_nothing(store_project, template_store, tmp_path):
    """A producer, an ingester and prune --archive run at once (three processes); after a final ingest
    and prune, the store equals one clean ingest of the archive into a fresh store."""
    cfg = str(store_project / "config" / "mlflow.yaml")
    archive = tmp_path / "archive"
    env = child_env()
    producer = subprocess.Popen([sys.executable, "-c", RACE_PRODUCER, cfg, "12"], env=env)
    ingester = subprocess.Popen([sys.executable, "-c", LOOP, "4", *ingest_cmd(store_project)[3:]], env=env,
                                stdout=subprocess.PIPE, text=True)
    pruner = subprocess.Popen([sys.executable, "-c", LOOP, "4", "prune", "--log-level", "error",
                               "--older-than", "0", "--archive", str(archive), "--config", cfg],
                              env=env, stdout=subprocess.PIPE, text=True)
    assert producer.wait(60) == 0
    ingested, pruned = ingester.communicate(timeout=60)[0], pruner.communicate(timeout=60)[0]
    assert ingester.returncode == 0 and ingested.splitlines()[-1] == "[0]"
    assert pruner.returncode == 0 and pruned.splitlines()[-1] == "[0]"
    assert "archived" in pruned  # it took journals while the others ran
    assert ingest(store_project) == 0
    assert run_ff_ingest(store_project, "prune", "--older-than", "0", "--archive", str(archive)) == 0
    assert journals_of(store_project) == []
    assert len(list(archive.rglob("*.jsonl.gz"))) == 12
    ref = tmp_path / "ref"
    (ref / "config").mkdir(parents=True)
    (ref / "config" / "mlflow.yaml").write_text(Path(cfg).read_text())
    store_db(ref).parent.mkdir(parents=True)
    store_db(ref).write_bytes(template_store.read_bytes())
    assert ingest(ref, "--root", str(archive)) == 0
    assert dump_store(ref) == dump_store(store_project)
    assert len(dump_store(ref)) == 12
