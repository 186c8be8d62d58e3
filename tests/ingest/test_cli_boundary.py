"""The CLI's boundary, command by command: usage and config errors exit 2, ``--json`` errors are JSON,
no secret is printed, and one store is one lock whatever the spelling of its URI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from formula_foundry.tracking import load_config
from formula_foundry.tracking.ingest.cli import main
from formula_foundry.tracking.ingest.stores.connect import state_dir, store_lock
from formula_foundry.tracking.ingest.uri import redact, scrub, store_identity, store_key
from tests.conftest import run_ff_ingest
from tests.ingest import child_env, ingest_cmd, tracker

SECRET = "s3cr3t-Pa55"
COMMANDS = ("ingest", "status", "doctor", "check")


def _config(project: Path) -> str:
    return str(project / "config" / "mlflow.yaml")


def one_run(project: Path) -> None:
    with tracker(project).start_run("r", experiment_name="boundary") as run:
        run.log_metric("m", 1.0)


# --------------------------------------------------------------------------- exit 2, every command

@pytest.mark.parametrize("command", COMMANDS)
def test_an_unknown_option_exits_2(command, project, capsys):
    assert main([command, "--no-such-option", "--config", _config(project)]) == 2
    assert "no-such-option" in capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_config_exits_2_naming_file_and_key(command, project, capsys):
    cfg = project / "config" / "mlflow.yaml"
    cfg.write_text(cfg.read_text() + "\nnot_a_key: 1\n")
    assert main([command, "--config", str(cfg)]) == 2
    out = capsys.readouterr()
    shown = out.err if command != "doctor" else out.out  # doctor reports every check on stdout
    assert str(cfg) in shown and "not_a_key" in shown and "Traceback" not in out.out + out.err


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("uri", ["", "sqlite:///:memory:", "relative/path.db"])
def test_a_tracking_uri_that_would_lose_data_exits_2(command, uri, project, capsys):
    assert main([command, "--config", _config(project), "--tracking-uri", uri]) == 2
    out = capsys.readouterr()
    assert "--tracking-uri" in (out.err if command != "doctor" else out.out)
    assert not (project / "mlflow.db").exists() and not Path("mlflow.db").exists()


def test_view_of_a_missing_journal_exits_2(tmp_path, capsys):
    assert main(["view", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


def test_sink_bulk_against_an_http_store_is_a_usage_error(project, capsys):
    """README: 2 is usage/config. ``--sink bulk`` cannot write through an HTTP server."""
    one_run(project)
    code = main(["--config", _config(project), "--sink", "bulk", "--tracking-uri", "http://127.0.0.1:9"])
    assert code == 2
    assert "HTTP" in capsys.readouterr().err


# --------------------------------------------------------------------------- --json on failures

def test_json_prints_the_error_when_the_store_is_down(project, capsys):
    """Exit 3 with ``--json``: stdout is one JSON document that says why (not nothing)."""
    one_run(project)
    code = main(["--config", _config(project), "--json", "--tracking-uri", "http://127.0.0.1:9"])
    assert code == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"]["exit_code"] == 3 and doc["error"]["kind"] == "store_unavailable"
    assert "127.0.0.1:9" in doc["error"]["message"]


def test_json_prints_config_errors_too(project, capsys):
    assert main(["--config", _config(project), "--json", "--tracking-uri", ""]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"]["kind"] == "config" and "--tracking-uri" in doc["error"]["message"]


# --------------------------------------------------------------------------- secrets

@pytest.mark.parametrize("uri", [
    f"postgresql://ff@127.0.0.1:9/db?password={SECRET}",
    f"postgresql://ff:{SECRET}@127.0.0.1:9/db",
    f"postgresql://ff@127.0.0.1:9/db?sslmode=disable&sslpassword={SECRET}",
    f"http://ff:{SECRET}@127.0.0.1:9",
    f"http://127.0.0.1:9/?token={SECRET}",
])
def test_redact_hides_user_info_and_secret_query_parameters(uri):
    shown = redact(uri)
    assert SECRET not in shown and "***" in shown
    assert SECRET not in scrub(f"could not connect to {uri}: refused ({SECRET})", uri)
    assert SECRET not in store_key(uri) and SECRET not in store_identity(uri)


def test_a_password_in_the_query_string_is_never_printed(project, capsys):
    """libpq takes ``?password=``: the summary, ``--json``, ``status`` and ``doctor`` never show it."""
    one_run(project)
    uri = f"postgresql://ff@127.0.0.1:9/db?password={SECRET}&connect_timeout=1"
    outputs = []
    for args in ([], ["--json"], ["status"], ["status", "--json"], ["doctor", "--timeout", "1"],
                 ["doctor", "--json", "--timeout", "1"]):
        main([*args[:1], "--config", _config(project), "--tracking-uri", uri, *args[1:]])
        out = capsys.readouterr()
        outputs.append(out.out + out.err)
    text = "\n".join(outputs)
    assert SECRET not in text
    assert "password=***" in text
    for path in (project / "data").rglob("*"):
        assert SECRET not in path.name
        if path.is_file() and path.stat().st_size < 1 << 20:
            assert SECRET.encode() not in path.read_bytes()


# --------------------------------------------------------------------------- one store, one lock

def _spellings(project: Path) -> list[str]:
    db = project / "data" / "mlflow" / "mlruns.db"
    link = project / "linked"
    link.symlink_to(db.parent, target_is_directory=True)
    return [f"sqlite:///{db}", f"sqlite:///{db.parent}/./mlruns.db", f"sqlite:///{db}?timeout=5",
            f"sqlite:///{link}/mlruns.db", f"sqlite:///{db.parent}/../mlflow/mlruns.db"]


def test_every_spelling_of_one_sqlite_store_is_one_identity(store_project):
    spellings = _spellings(store_project)
    assert len({store_identity(u) for u in spellings}) == 1
    assert len({store_key(u) for u in spellings}) == 1


def test_every_spelling_of_one_postgres_database_is_one_identity():
    spellings = ["postgresql://u@localhost/test", "postgresql://u@localhost:5432/test",
                 "postgresql://u:pw@LOCALHOST:5432/test?connect_timeout=3", "postgresql+psycopg://v@localhost/test"]
    assert len({store_identity(u) for u in spellings}) == 1
    assert store_identity("postgresql://u@localhost/other") != store_identity(spellings[0])


def test_another_spelling_of_a_held_sqlite_store_exits_5(store_project, capsys):
    one_run(store_project)
    cfg = load_config(_config(store_project))
    first, *others = _spellings(store_project)
    with store_lock(cfg, first):
        for uri in others:
            assert run_ff_ingest(store_project, "--tracking-uri", uri) == 5, uri
            assert "another ingester" in capsys.readouterr().err


def test_a_second_project_on_the_same_sqlite_file_is_refused(store_project, tmp_path, capsys):
    """Another state folder (another project's config), the same database file: the lock beside the
    database refuses it."""
    one_run(store_project)
    cfg = load_config(_config(store_project))
    other_state = tmp_path / "other-state"
    other_cfg = store_project / "config" / "other.yaml"
    other_cfg.write_text((store_project / "config" / "mlflow.yaml").read_text()
                         .replace('state_dir: "data/mlflow/ingest"', f'state_dir: "{other_state}"'))
    other = load_config(other_cfg)
    uri = cfg.tracking.backend_store_uri
    assert state_dir(other, uri) != state_dir(cfg, uri)
    with store_lock(cfg, uri):
        assert main(["--config", str(other_cfg)]) == 5
        assert "another ingester" in capsys.readouterr().err


def test_without_mlflow_the_console_script_exits_4(project, tmp_path):
    """The installed entry point, without the ``tracking`` extra's SQLAlchemy either: exit 4, one line."""
    site = tmp_path / "no-sqlalchemy"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('mlflow', 'sqlalchemy'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _Block())\n")
    env = child_env()
    env["PYTHONPATH"] = f"{site}{os.pathsep}{env['PYTHONPATH']}"
    proc = subprocess.run([sys.executable, "-m", "formula_foundry.tracking.ingest.cli", "status", "--config",
                           _config(project)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 4, proc.stderr
    assert "pip install 'formula-foundry[tracking]'" in proc.stderr and "Traceback" not in proc.stderr
