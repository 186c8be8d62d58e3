"""``ff-ingest --root s3://bucket/prefix``: shipped journals of several hosts, ingested centrally.

Two hosts (two project folders, each with its own state) write runs with the real producer and
ship them with ``ff-ingest ship``; a central machine (a third folder) ingests the destination
while the hosts' folders are moved away. Stores: PostgreSQL (bulk sink, run ids kept) and a
local SQLite store; destinations: moto's S3 server and a shared folder.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from formula_foundry.tracking.ingest.lease import read_lease
from formula_foundry.tracking.ingest.objects import open_objects
from formula_foundry.tracking.ingest.uri import store_key
from tests.central import central, central_json, machine, offline, produce, reference_snapshot, ship
from tests.services import free_port


@pytest.mark.postgres
def test_central_ingest_into_postgres_equals_a_direct_ingest(tmp_path, postgres_url, s3_client_env,
                                                             template_store, capsys):
    """Central ingest of two hosts' shipped journals equals ingesting them directly; a second central
    ingest adds nothing; more runs on one host, shipped again, add only themselves; producer run ids
    survive (bulk sink)."""
    from mlflow.tracking import MlflowClient

    from tests.server import snapshot

    exp = f"central-{uuid.uuid4().hex[:6]}"
    dest = f"s3://{s3_client_env.bucket}/central-{uuid.uuid4().hex[:8]}"
    h1, h2 = machine(tmp_path / "node-1"), machine(tmp_path / "node-2")
    hub = machine(tmp_path / "hub")
    ids = produce(h1, exp, runs=2) + produce(h2, exp, runs=1)
    assert ship(h1, dest) == 0 and ship(h2, dest) == 0

    with offline(h1, h2):
        code, out = central_json(hub, dest, postgres_url, capsys)
    assert code == 0, out
    assert out["sink"] == "bulk" and out["runs_created"] == 6 and out["errors"] == 0 and out["uploads"] == 3
    client = MlflowClient(postgres_url)
    got = snapshot(client, [exp])
    assert got == reference_snapshot(tmp_path, [h1, h2], template_store, [exp])
    assert set(got) == set(ids)
    for run_id in ids:  # the bulk sink keeps the producer's run ids
        assert client.get_run(run_id).data.tags["ff.run_id"] == run_id
    assert set(got[ids[0]]["artifacts"]) >= {"tables/curve0.csv", "artifact_refs/figs/loss.png.json"}

    with offline(h1, h2):
        code, again = central_json(hub, dest, postgres_url, capsys)
    assert code == 0 and again["records"] == 0 and again["runs_created"] == 0
    assert snapshot(client, [exp]) == got

    new = produce(h1, exp, runs=1, tag="b")
    assert ship(h1, dest) == 0
    with offline(h1, h2):
        code, more = central_json(hub, dest, postgres_url, capsys)
    assert code == 0 and more["runs_created"] == 2 and more["runs_updated"] == 0
    assert {d["run_id"] for d in more["details"] if d["records"]} == set(new)
    assert snapshot(client, [exp]) == reference_snapshot(tmp_path, [h1, h2], template_store, [exp])


@pytest.mark.postgres
def test_store_down_exits_3_then_a_rerun_completes(tmp_path, postgres_url, s3_client_env, capsys):
    """The store unreachable during a central ingest: exit 3, the lease is released at once (a rerun
    does not wait for it to run out), and the rerun completes from the mirror."""
    from mlflow.tracking import MlflowClient

    exp = f"central-down-{uuid.uuid4().hex[:6]}"
    dest = f"s3://{s3_client_env.bucket}/down-{uuid.uuid4().hex[:8]}"
    host, hub = machine(tmp_path / "node-1"), machine(tmp_path / "hub", lease_seconds=600)
    ids = produce(host, exp)
    assert ship(host, dest) == 0
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    with offline(host):
        capsys.readouterr()
        assert central(hub, dest, dead) == 3
        err = capsys.readouterr().err
        assert "unavailable" in err and "mirrored 2 segments" in err
        with open_objects(dest) as objects:
            lease = read_lease(objects, store_key(dead))
        assert lease is not None and lease.released
        started = time.monotonic()
        code, out = central_json(hub, dest, postgres_url, capsys)
    assert code == 0 and out["runs_created"] == 2 and time.monotonic() - started < 60
    assert {r.data.tags["ff.run_id"] for r in MlflowClient(postgres_url).search_runs(
        [MlflowClient(postgres_url).get_experiment_by_name(exp).experiment_id])} == set(ids)


def test_shipped_folder_with_the_api_sink_keeps_checkpoints_in_the_destination(tmp_path, template_store, capsys):
    """A shared folder holding ff-ship.json is a shipped root. With the API sink the checkpoints live in
    the destination (checkpoints/<store>/<journal>.json), so they survive the loss of the central
    machine's state: a fresh state folder (the mirror deleted too) ingests nothing again."""
    import shutil

    exp = f"central-api-{uuid.uuid4().hex[:6]}"
    share = tmp_path / "share"
    share.mkdir()
    host, hub = machine(tmp_path / "node-1"), machine(tmp_path / "hub", sink="api")
    db = hub / "data" / "mlflow" / "mlruns.db"
    db.parent.mkdir(parents=True)
    shutil.copy(template_store, db)
    uri = f"sqlite:///{db}"
    produce(host, exp, runs=2)
    assert ship(host, str(share)) == 0
    with offline(host):
        code, out = central_json(hub, str(share), uri, capsys)
        assert code == 0 and out["sink"] == "api" and out["runs_created"] == 4 and out["uploads"] == 2
        keys = sorted(p.name for p in (share / "checkpoints" / store_key(uri)).iterdir())
        assert len(keys) == 4 and all(k.endswith(".json") for k in keys)
        row = json.loads((share / "checkpoints" / store_key(uri) / keys[0]).read_text())
        assert row["format"] == "ff-checkpoint" and row["shipped_path"].startswith("node-1/")
        assert row["ended"] is True and row["mlflow_run_id"]
        assert not (hub / "data" / "mlflow" / "ingest" / store_key(uri) / "checkpoints.sqlite").exists()

        shutil.rmtree(hub / "data" / "mlflow" / "ingest")  # the central machine's state and mirror: gone
        code, again = central_json(hub, str(share), uri, capsys)
    assert code == 0 and again["records"] == 0 and again["runs_created"] == 0


def test_status_and_view_of_a_shipped_root(tmp_path, template_store, capsys):
    """``status --root DEST``: the mirror's journals with the checkpoints, what is shipped but not
    mirrored yet, the lease; ``view`` reads a mirrored journal like any journal."""
    import shutil

    from tests.conftest import run_ff_ingest

    share = tmp_path / "share"
    share.mkdir()
    host, hub = machine(tmp_path / "node-1"), machine(tmp_path / "hub")
    db = hub / "data" / "mlflow" / "mlruns.db"
    db.parent.mkdir(parents=True)
    shutil.copy(template_store, db)
    produce(host, "central-status")
    assert ship(host, str(share)) == 0

    def status() -> dict:
        capsys.readouterr()
        assert run_ff_ingest(hub, "status", "--root", str(share), "--json") == 0
        return json.loads(capsys.readouterr().out)

    before = status()
    assert before["journals"] == [] and before["central"]["backlog"]["unmirrored_journals"] == 2
    assert before["central"]["lease"] is None
    assert central(hub, str(share), f"sqlite:///{db}", "-q") == 0
    after = status()
    assert after["counts"]["finished"] == 2 and after["central"]["backlog"]["unmirrored_bytes"] == 0
    assert after["central"]["lease"]["held"] is False and "pid" in after["central"]["lease"]["holder"]
    mirrored = Path(after["journals"][0]["path"])
    assert mirrored.is_relative_to(hub / "data" / "mlflow" / "ingest" / "mirror")
    capsys.readouterr()
    assert run_ff_ingest(hub, "status", "--root", str(share)) == 0
    assert "central: " in capsys.readouterr().out
    assert run_ff_ingest(hub, "view", str(mirrored)) == 0
    assert "run_start" in capsys.readouterr().out


def test_a_mirror_is_never_ingested_past_its_lease(tmp_path, template_store, capsys):
    """Naming the mirror's folder (or a journal in it) instead of the destination is refused: the
    central lease would be bypassed."""
    import shutil

    share = tmp_path / "share"
    share.mkdir()
    host, hub = machine(tmp_path / "node-1"), machine(tmp_path / "hub")
    db = hub / "data" / "mlflow" / "mlruns.db"
    db.parent.mkdir(parents=True)
    shutil.copy(template_store, db)
    produce(host, "central-refuse")
    assert ship(host, str(share)) == 0
    assert central(hub, str(share), f"sqlite:///{db}", "-q") == 0
    journals = sorted((hub / "data" / "mlflow" / "ingest" / "mirror").glob("*/journals"))
    assert len(journals) == 1
    from tests.conftest import run_ff_ingest

    capsys.readouterr()
    assert run_ff_ingest(hub, "--root", str(journals[0])) == 2
    assert f"--root {share}" in capsys.readouterr().err
    one = next(journals[0].rglob("*.jsonl"))
    assert run_ff_ingest(hub, str(one)) == 2
    assert "central lease" in capsys.readouterr().err
    assert run_ff_ingest(hub, "--root", str(share), "--root", str(tmp_path)) == 2
