"""``ff-ingest status``: states, counts, lag and errors read from journals and checkpoints only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from formula_foundry.tracking.config import load_config
from formula_foundry.tracking.tracker import Tracker
from tests.conftest import run_ff_ingest, subprocess_env


def _run(cfg, name: str, *, steps: int, end: bool = True, experiment: str = "status"):
    run = Tracker(cfg).start_run(run_name=name, experiment_name=experiment)
    for s in range(steps):
        run.log_metric("loss", 1.0 / (s + 1), step=s)
    if end:
        run.end()
    return run


@pytest.fixture(params=["auto", "api"])
def scene(store_project, monkeypatch, request):
    """One journal in every state, ingested once in batch mode, then changed behind the ingester's back.

    Twice: with the default sink (checkpoints in the store's database) and the API sink (in the state dir).
    """
    import yaml

    from formula_foundry.tracking.ingest import watch

    config_path = store_project / "config" / "mlflow.yaml"
    data = yaml.safe_load(config_path.read_text())
    data["ingest"]["sink"] = request.param
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = load_config(config_path)
    runs = {
        "finished": _run(cfg, "finished", steps=4),
        "running": _run(cfg, "running", steps=2, end=False),
        "stale": _run(cfg, "stale", steps=2, end=False),
        "lagging": _run(cfg, "lagging", steps=1, end=False),
        "error": _run(cfg, "error", steps=4),
        "gone": _run(cfg, "gone", steps=1),
    }
    waiting = Tracker(cfg).attach_run("ab" * 16, run_dir=cfg.journal.root / "orphan")
    waiting.log_metric("loss", 1.0, step=0)
    runs["waiting"] = waiting
    # Corrupt the 4th line (a metric) of the "error" journal before anything is ingested.
    path = runs["error"].journal_path
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b'"loss"', b'"lass"')
    path.write_bytes(b"".join(lines))
    assert run_ff_ingest(store_project, "--quiet") == 1  # the corrupt journal is an error
    # After the ingest: appends nobody ingested yet, a journal never ingested, a deleted one, an idle one.
    runs["lagging"].log_metric("loss", 0.5, step=1)
    runs["lagging"].log_metric("loss", 0.4, step=2)
    runs["new"] = _run(cfg, "new", steps=2, experiment="fresh")
    runs["gone"].journal_path.unlink()
    old = time.time() - 3600
    os.utime(runs["stale"].journal_path, (old, old))
    real = watch.producer_alive
    monkeypatch.setattr(watch, "producer_alive",  # the stale run's producer "died"; the others run here
                        lambda record, **kw: False if record and record.get("run_id") == runs["stale"].run_id
                        else real(record, **kw))
    yield store_project, cfg, runs
    for run in runs.values():
        if run.status is None:
            run.end()


def _status_json(project, capsys, *args) -> tuple[int, dict]:
    capsys.readouterr()
    rc = run_ff_ingest(project, "status", "--json", *args)
    return rc, json.loads(capsys.readouterr().out)


def test_status_json_reports_every_state(scene, capsys):
    project, _, runs = scene
    rc, report = _status_json(project, capsys)
    assert rc == 1  # one journal is in error
    by_run = {j["run_id"]: j for j in report["journals"]}
    state = {name: by_run[run.run_id]["state"] for name, run in runs.items()}
    assert state == {"finished": "finished", "running": "running", "stale": "stale", "lagging": "pending",
                     "error": "error", "gone": "missing", "waiting": "waiting", "new": "pending"}
    assert report["counts"] == {"error": 1, "missing": 1, "finished": 1, "waiting": 1, "pending": 2, "stale": 1,
                                "running": 1}

    fin = by_run[runs["finished"].run_id]
    assert (fin["records"], fin["ingested"], fin["lag_records"], fin["lag_bytes"]) == (6, 6, 0, 0)
    assert fin["experiment"] == "status" and fin["run_name"] == "finished" and fin["kind"] == "run_start"
    assert len(fin["mlflow_run_id"]) == 32 and fin["last_error"] is None

    lag = by_run[runs["lagging"].run_id]
    assert (lag["records"], lag["ingested"], lag["lag_records"]) == (4, 2, 2) and lag["lag_bytes"] > 0

    new = by_run[runs["new"].run_id]
    assert (new["records"], new["ingested"], new["lag_records"], new["mlflow_run_id"]) == (4, 0, 4, None)
    assert new["experiment"] == "fresh"

    err = by_run[runs["error"].run_id]
    assert err["ingested"] == 3 and err["records"] == 6 and err["lag_records"] == 3
    assert ":4 (byte offset" in err["last_error"] and "checksum" in err["last_error"]

    wait = by_run[runs["waiting"].run_id]
    assert wait["kind"] == "run_attach" and wait["ingested"] == 0 and wait["lag_records"] == 2

    assert by_run[runs["stale"].run_id]["idle_s"] >= 3600
    assert report["daemon"] == {"running": False, "pid": None}
    assert report["lag_records"] == sum(j["lag_records"] for j in report["journals"])


def test_status_table_shows_states_and_errors(scene, capsys):
    project, _, _ = scene
    capsys.readouterr()
    assert run_ff_ingest(project, "status") == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["STATE", "RUN", "MLFLOW"]
    assert lines[1].startswith("error") and "last error:" in lines[2]  # problems first
    for state in ("finished", "running", "stale", "pending", "waiting", "missing"):
        assert any(line.startswith(state) for line in lines), state
    assert "8 journals: 1 error, 1 missing, 1 finished, 1 waiting, 2 pending, 1 stale, 1 running" in out
    assert "daemon: not running" in out


def test_status_running_turns_stale_only_after_stale_after(scene, capsys):
    """The threshold comes from ingest.watch.stale_after_seconds; the producer must be gone too."""
    _, cfg, runs = scene
    from formula_foundry.tracking.ingest.cli.status import collect

    report = collect(cfg, now=time.time() + 10_000)  # long after every append
    state = {j.run_id: j.state for j in report.journals}
    assert state[runs["running"].run_id] == "running"  # its producer (this process) is alive
    assert state[runs["stale"].run_id] == "stale"
    quiet = replace(cfg, ingest=replace(cfg.ingest, watch=replace(cfg.ingest.watch, stale_after_seconds=0)))
    assert {j.state for j in collect(quiet).journals if j.run_id == runs["stale"].run_id} == {"running"}


def test_status_shows_a_running_daemon(scene, capsys):
    """The pid in the store's lock file, when that process lives, is reported."""
    project, cfg, _ = scene
    from formula_foundry.tracking.ingest.stores.connect import state_dir, store_lock

    with store_lock(cfg, cfg.tracking.backend_store_uri):
        _, report = _status_json(project, capsys)
    assert report["daemon"] == {"running": True, "pid": os.getpid()}


def test_status_needs_neither_the_store_nor_mlflow(store_project):
    """Against an unreachable store: every journal is pending, and MLflow is never imported."""
    cfg = load_config(store_project / "config" / "mlflow.yaml")
    _run(cfg, "a", steps=2)
    code = (
        "import json, sys\n"
        "from formula_foundry.tracking.config import load_config\n"
        "from formula_foundry.tracking.ingest.cli.status import collect\n"
        f"report = collect(load_config({str(store_project / 'config' / 'mlflow.yaml')!r}), "
        "'http://127.0.0.1:9')\n"
        "print(json.dumps([j.state for j in report.journals]), 'mlflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                         timeout=120, check=True).stdout
    assert out.split() == ['["pending"]', "False"]


def test_status_of_a_store_never_ingested_creates_nothing(store_project, capsys):
    """Looking is read-only: no checkpoint file, no state folder appear for a store nobody ingested."""
    from formula_foundry.tracking.ingest.stores.connect import state_dir

    cfg = load_config(store_project / "config" / "mlflow.yaml")
    _run(cfg, "a", steps=2)
    folder = state_dir(cfg, cfg.tracking.backend_store_uri)
    assert not folder.exists()
    _, report = _status_json(store_project, capsys)
    assert [j["state"] for j in report["journals"]] == ["pending"]
    assert not (folder / "checkpoints.sqlite").exists() and not folder.exists()
