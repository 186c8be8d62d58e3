"""The takeover scenario of the central-ingest tests: two central machines, the lease holder SIGKILLed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from formula_foundry.tracking.ingest.lease import read_lease
from formula_foundry.tracking.ingest.objects import open_objects
from formula_foundry.tracking.ingest.uri import store_key
from tests.central import central_argv, machine, produce, ship

__all__ = ["TTL", "lease_holder", "takeover", "wait_for"]

TTL = 4.0  # seconds: short, with room for a loaded machine (renewals every 1.3 s, 1 s margin)


def big_run(host: Path, experiment: str, metrics: int) -> str:
    """One run with a long metric history (many batches to ingest); returns its run id."""
    from formula_foundry.tracking import Tracker, load_config

    with Tracker(load_config(host / "config" / "mlflow.yaml")).start_run("big", experiment_name=experiment) as run:
        for step in range(metrics):
            run.log_metric("loss", 1.0 / (step + 1), step=step)
            run.log_metric("lr", 0.001, step=step)
        return run.run_id


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the ingester exited with {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"{what}: not within {timeout} s")


def lease_holder(dest: str, uri: str) -> str | None:
    with open_objects(dest) as objects:
        info = read_lease(objects, store_key(uri))
    return None if info is None or info.free(int(time.time() * 1000)) else info.holder


def takeover(tmp_path: Path, dest: str, uri: str, env: dict, *, started, exp: str, sink: str,
             resumed: bool, steps: int = 15_000) -> Path:
    """Two central machines started at once, both with ``--wait-lease``: one takes the lease, the other
    waits. The holder is SIGKILLed once ``started(big run id, its journal id)``; the waiter takes over when
    the dead holder's lease runs out and completes. Returns the host.

    ``resumed``: the holder must have checkpointed, so the waiter ingests less than the whole big journal.
    """
    host = machine(tmp_path / "node-1")
    machines = [machine(tmp_path / name, lease_seconds=TTL, sink=sink) for name in ("central-a", "central-b")]
    big = big_run(host, exp, steps)
    (journal,) = (host / "data" / "runs").glob(f"*/tracking/{big}.*.jsonl")
    produce(host, exp)
    assert ship(host, dest) == 0
    procs = [subprocess.Popen(central_argv(m, dest, uri, "--json", "--wait-lease"), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for m in machines]
    try:
        def holding() -> int | None:
            holder = lease_holder(dest, uri) or ""
            return next((i for i, p in enumerate(procs) if f"pid {p.pid} " in holder), None)

        wait_for(lambda: holding() is not None and started(big, journal.name.split(".")[1]), 90,
                  "a central ingester takes the lease and writes")
        index = holding()
        first, second = procs[index], procs[1 - index]
        assert first.poll() is None, "the holder finished before it could be killed: make the backlog bigger"
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        with open_objects(dest) as objects:
            dead = read_lease(objects, store_key(uri))
        assert f"pid {first.pid} " in dead.holder and not dead.released  # a dead holder's lease stays
        shutil.rmtree(machines[index] / "data")  # its machine is gone, and its disk with it
        out, err = second.communicate(timeout=180)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert second.returncode == 0, err
    assert "waiting_for_lease" in err and f"pid {first.pid} " in err
    with open_objects(dest) as objects:
        taken = read_lease(objects, store_key(uri))
    assert f"pid {second.pid} " in taken.holder and taken.released  # released at its exit
    assert taken.acquired_ms >= dead.expires_ms  # not before the dead holder's lease ran out
    summary = json.loads(out)
    assert summary["errors"] == 0
    big_row = next(d for d in summary["details"] if d["run_id"] == big)
    total = 2 * steps + 2  # run_start, the points, run_end
    assert 0 < big_row["records"] <= total
    if resumed:
        assert big_row["records"] < total  # continued from the dead holder's checkpoint, not from the start
    return host
