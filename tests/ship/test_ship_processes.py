"""The shipper as a real process: SIGKILL at random points then rerun, ``--watch`` and SIGTERM,
and a shipper that runs where MLflow and SQLAlchemy cannot be imported."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import subprocess_env
from tests.ship import Remote, digests_in, journals_of, make_runs, run_ship, ship_argv, shipped_name, tracker

HOST = "node-k"


def check_invariants(dest: Remote) -> None:
    """Every segment present chains (no gap, no overlap) and names only blobs that are present."""
    blobs = dest.blobs()
    for name in dest.segments():
        data = dest.journal_bytes(name)  # asserts the chain
        missing = digests_in(data) - blobs
        assert not missing, f"{name}: a visible segment names blobs that are not there: {missing}"


def test_sigkill_at_random_points_then_rerun(project, s3_uri, moto_s3):
    """A multi-segment ship with blobs, SIGKILLed at random moments: after every kill the destination
    holds only chained segments whose blobs are there; a final run completes it byte for byte."""
    journals = make_runs(project, runs=3, metrics=2500, artifacts=12, artifact_bytes=2000)
    dest = Remote(s3_uri, s3=moto_s3)
    env = subprocess_env(**moto_s3.env, AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    argv = ship_argv(project, s3_uri, "--host", HOST, "--segment-bytes", "12000", "-q")
    rng = random.Random(1717)
    kills = 0
    for _ in range(6):
        # Kill once the destination holds a random number more objects than before, plus a random
        # delay: the kill lands mid-ship, in a blob upload, a segment put or a state write.
        target = len(dest.objects()) + rng.randint(2, 25)
        proc = subprocess.Popen(argv, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while proc.poll() is None and len(dest.objects()) < target:
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.05))
            if proc.poll() is not None:
                assert proc.returncode == 0, proc.stderr.read().decode()
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        finally:
            proc.stderr.close()
        check_invariants(dest)
    assert kills >= 3, f"only {kills} kills landed before the ship was done"
    done = run_ship(project, s3_uri, "--host", HOST, "--segment-bytes", "12000", "--json", env=env)
    assert done.returncode == 0, done.stderr
    check_invariants(dest)
    for journal in journals:
        assert dest.journal_bytes(shipped_name(project, journal, HOST)) == journal.read_bytes()
    assert dest.blobs() == set().union(*(digests_in(j.read_bytes()) for j in journals))
    assert sum(len(s) for s in dest.segments().values()) > 20


def test_watch_ships_a_growing_journal_and_exits_0_on_sigterm(project, tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    dest = Remote(str(share))
    t = tracker(project)
    run = t.start_run(run_name="live")
    run.log_metric("x", 0.0, step=0)
    (journal,) = journals_of(project)
    name = shipped_name(project, journal, HOST)
    proc = subprocess.Popen(ship_argv(project, str(share), "--host", HOST, "--watch", "--interval", "0.1"),
                            cwd=project, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)

    def arrived() -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if name in dest.segments() and dest.journal_bytes(name) == journal.read_bytes():
                return True
            time.sleep(0.05)
        return False

    try:
        assert arrived()
        for step in range(1, 4):
            for i in range(20):
                run.log_metric("x", float(i), step=step * 100 + i)
            assert arrived(), f"round {step}"
        run.end()
        assert arrived()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert len(dest.segments()[name]) >= 4  # each growth travelled on its own
    assert "shipped" in out


BLOCKER = textwrap.dedent('''\
    import sys

    BLOCKED = ("mlflow", "sqlalchemy", "alembic", "watchdog", "tqdm", "psutil")


    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"blocked: {name}", name=name)
            return None


    sys.meta_path.insert(0, Refuse())
    from formula_foundry.tracking.ingest.cli import main

    code = main(sys.argv[1:])
    leaked = sorted({m.partition(".")[0] for m in sys.modules} & set(BLOCKED))
    print("LEAKED", leaked, file=sys.stderr)
    sys.exit(code if not leaked else 99)
''')


@pytest.mark.parametrize("kind", ["folder", "s3"])
def test_ship_needs_neither_mlflow_nor_sqlalchemy(project, tmp_path, kind, request):
    """The compute-node install: ``ff-ingest ship`` (and ``--status``) work with MLflow, SQLAlchemy,
    watchdog and tqdm unimportable; an ingest command in the same install says what to install (exit 4)."""
    make_runs(project, runs=1, metrics=20, artifacts=1)
    if kind == "folder":
        (tmp_path / "share").mkdir()
        dest, env = str(tmp_path / "share"), subprocess_env()
    else:
        moto_s3 = request.getfixturevalue("moto_s3")
        dest = request.getfixturevalue("s3_uri")
        env = subprocess_env(**moto_s3.env, AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    config = ["--config", str(project / "config" / "mlflow.yaml")]
    for args in (["ship", "--to", dest, "--host", "node"], ["ship", "--to", dest, "--status"]):
        done = subprocess.run([sys.executable, "-c", BLOCKER, *args, *config], cwd=project, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "LEAKED []" in done.stderr
    (journal,) = journals_of(project)
    remote = Remote(dest, s3=request.getfixturevalue("moto_s3") if kind == "s3" else None)
    assert remote.journal_bytes(shipped_name(project, journal, "node")) == journal.read_bytes()
    assert remote.blobs() == digests_in(journal.read_bytes())
    done = subprocess.run([sys.executable, "-c", BLOCKER, "status", *config], cwd=project, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 4 and "pip install 'formula-foundry[tracking]'" in done.stderr
