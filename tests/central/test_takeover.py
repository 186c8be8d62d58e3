"""Never two writers across machines: two central ingesters (two state folders, as two machines have)
on one destination and one store. Real subprocesses, real SIGKILL, a 4 s lease.

* two at once: the second exits 5 naming the first (its pid, host) and when its lease runs out;
* the holder SIGKILLed mid-ingest: the second (``--wait-lease``) waits for the lease to run out,
  takes it over, continues from the checkpoints (in the destination, for the API sink into an
  ``mlflow server``) and the server ends equal to one clean ingest of the same journals. (The same
  into PostgreSQL with the bulk sink: ``test_takeover_postgres.py``.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

from formula_foundry.tracking.ingest.uri import store_key
from tests.central import central_argv, child_env, machine, produce, reference_snapshot, ship
from tests.central.takeover import TTL, lease_holder, takeover, wait_for


def test_two_central_ingesters_at_once_one_proceeds_the_other_exits_5(tmp_path, mlflow_server, s3_client_env):
    """A daemon on machine A holds the lease; a batch on machine B exits 5 naming A; A keeps ingesting
    what is shipped; after A's SIGTERM (exit 0, lease released) B runs at once and finds nothing to do:
    A's checkpoints (in the destination) are B's."""
    from mlflow.tracking import MlflowClient

    exp = f"two-at-once-{uuid.uuid4().hex[:6]}"
    dest = f"s3://{s3_client_env.bucket}/two-{uuid.uuid4().hex[:8]}"
    env = child_env(**s3_client_env.env, AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    host = machine(tmp_path / "node-1")
    a, b = machine(tmp_path / "central-a", lease_seconds=TTL, rescan=0.5), machine(tmp_path / "central-b")
    ids = produce(host, exp)
    assert ship(host, dest) == 0
    daemon = subprocess.Popen(central_argv(a, dest, mlflow_server.url, "--watch", "--log-level", "info"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        client = MlflowClient(mlflow_server.url)

        def ingested(run_ids) -> bool:
            found = client.get_experiment_by_name(exp)
            return found is not None and {r.data.tags.get("ff.run_id") for r in client.search_runs(
                [found.experiment_id])} >= set(run_ids)

        wait_for(lambda: ingested(ids), 90, "daemon A ingests the shipped runs", daemon)
        holder = lease_holder(dest, mlflow_server.url)
        assert holder is not None and f"pid {daemon.pid} " in holder

        second = subprocess.run(central_argv(b, dest, mlflow_server.url), env=env, capture_output=True, text=True,
                                timeout=120, check=False)
        assert second.returncode == 5, second.stderr
        assert f"pid {daemon.pid} on" in second.stderr and "--wait-lease" in second.stderr
        assert not (b / "data" / "mlflow" / "ingest" / "mirror").exists() or not any(
            (b / "data" / "mlflow" / "ingest" / "mirror").rglob("*.jsonl"))  # refused before syncing

        more = produce(host, exp, tag="b")
        assert ship(host, dest) == 0
        wait_for(lambda: ingested(ids + more), 60, "daemon A ingests what is shipped later", daemon)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0, daemon.stderr.read()[-3000:]
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert lease_holder(dest, mlflow_server.url) is None  # released on exit
    started = time.monotonic()
    again = subprocess.run(central_argv(b, dest, mlflow_server.url, "--json"), env=env, capture_output=True,
                           text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["records"] == 0 and summary["runs_created"] == 0
    assert time.monotonic() - started < 60 and "waiting_for_lease" not in again.stderr


def test_holder_killed_mid_ingest_into_an_mlflow_server(tmp_path, mlflow_server, s3_client_env, template_store):
    """API sink into ``mlflow server`` (HTTP): the checkpoints live in the destination; B continues
    from A's and the server's runs equal one clean ingest."""
    from mlflow.tracking import MlflowClient

    from tests.server import snapshot

    exp = f"takeover-http-{uuid.uuid4().hex[:6]}"
    dest = f"s3://{s3_client_env.bucket}/kill-{uuid.uuid4().hex[:8]}"
    env = child_env(**s3_client_env.env, AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    prefix = dest.split("/", 3)[3]

    def checkpointed(_big: str, journal_id: str) -> bool:  # A has committed a batch of the big journal
        return bool(s3_client_env.keys(f"{prefix}/checkpoints/{store_key(mlflow_server.url)}/{journal_id}.json"))

    host = takeover(tmp_path, dest, mlflow_server.url, env, started=checkpointed, exp=exp, sink="api",
                    resumed=True, steps=5_000)
    assert snapshot(MlflowClient(mlflow_server.url), [exp]) == reference_snapshot(tmp_path, [host], template_store,
                                                                                  [exp])


