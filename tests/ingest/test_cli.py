"""``ff-ingest`` as a command: exit codes, messages, ``view``, ``--json``, ``--version``, ``--help``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from formula_foundry import __version__
from formula_foundry.tracking import load_config
from formula_foundry.tracking.ingest.cli import INSTALL_HINT, main
from formula_foundry.tracking.ingest.stores.connect import state_dir, store_lock
from tests.conftest import mlflow_client, run_ff_ingest
from tests.ingest import child_env, ingest, ingest_cmd, ingest_json, tracker


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def one_run(project: Path, name: str = "r", n: int = 3):
    with tracker(project).start_run(name, experiment_name="cli") as run:
        run.log_param("p", "1")
        for i in range(n):
            run.log_metric("m", float(i), step=i)
    return run


def corrupt(path: Path, line_no: int) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line_no - 1] = lines[line_no - 1].replace(b'"value":', b'"value":9', 1)
    path.write_bytes(b"".join(lines))


# --------------------------------------------------------------------------- exit codes

def test_exit_0_when_everything_was_ingested(store_project, capsys):
    """Exit 0; without a TTY there is no progress bar: stdout is the one summary line, stderr is empty."""
    one_run(store_project)
    capsys.readouterr()
    assert run_ff_ingest(store_project, "--sink", "api") == 0
    out, err = capsys.readouterr()
    assert err == ""
    (line,) = out.splitlines()
    assert line.startswith("ingested 6 records from 1 journals into sqlite:///")
    assert "1 runs created" in line and "0 with errors" in line and "0 pending" in line and "records/s" in line


def test_exit_1_after_ingesting_everything_else(store_project, capsys):
    """One corrupt journal: exit 1, its error on stderr (journal, line, offset), and the healthy journal
    is fully in MLflow."""
    bad, good = one_run(store_project, "bad"), one_run(store_project, "good")
    corrupt(bad.journal_path, 3)
    capsys.readouterr()
    assert ingest(store_project) == 1
    err = capsys.readouterr().err
    assert f"error: {bad.journal_path}:3 (byte offset " in err and "checksum" in err
    client = mlflow_client(store_project)
    (run,) = client.search_runs([client.get_experiment_by_name("cli").experiment_id],
                                filter_string=f"tags.`ff.run_id` = '{good.run_id}'")
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "m")) == 3


@pytest.mark.parametrize("content, expected", [
    ("tracking: [unclosed\n", "invalid YAML"),
    ("tracking:\n  colour: blue\n", "tracking.colour"),
    ("ingest:\n  sqlite_busy_timeout_seconds: soon\n", "ingest.sqlite_busy_timeout_seconds"),
])
def test_exit_2_on_a_config_error(project, capsys, content, expected):
    """A broken config file: exit 2 with ``config error:`` naming the file and key; no traceback."""
    (project / "config" / "mlflow.yaml").write_text(content)
    capsys.readouterr()
    assert ingest(project) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: ") and expected in err and "Traceback" not in err
    assert str(project / "config" / "mlflow.yaml") in err


def test_exit_2_on_a_missing_config_and_on_bad_usage(tmp_path, capsys):
    """No config file, or an unknown option: exit 2."""
    assert main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config error" in capsys.readouterr().err
    assert main(["--no-such-option"]) == 2
    assert "No such option" in capsys.readouterr().err


def test_exit_3_when_the_store_does_not_answer(store_project, capsys, monkeypatch):
    """A tracking server that is down: exit 3, a one-line message that nothing is lost."""
    one_run(store_project)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    capsys.readouterr()
    assert ingest(store_project, "--tracking-uri", "http://127.0.0.1:9") == 3
    err = capsys.readouterr().err
    assert err.startswith("tracking store unavailable: ") and "nothing is lost" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_exit_5_when_another_ingester_holds_the_lock(store_project, capsys):
    """Another ingester holds the store's lock: exit 5, the message names the holder and the lock, and
    nothing is written to the store."""
    one_run(store_project)
    cfg = load_config(store_project / "config" / "mlflow.yaml")
    uri = cfg.tracking.backend_store_uri
    with store_lock(cfg, uri) as lock:
        capsys.readouterr()
        assert ingest(store_project) == 5
        err = capsys.readouterr().err
        assert "another ingester" in err and str(lock.path) in err and "pid " in err
    client = mlflow_client(store_project)
    assert client.get_experiment_by_name("cli") is None
    assert ingest(store_project) == 0  # released: the next run goes through


BLOCK_MLFLOW = textwrap.dedent("""
    import sys

    class _NoMlflow:
        def find_spec(self, name, path=None, target=None):
            if name == "mlflow" or name.startswith("mlflow."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _NoMlflow())
""")


def test_exit_4_with_a_one_line_hint_when_mlflow_is_missing(project, tmp_path):
    """``import mlflow`` fails (the ``tracking`` extra not installed): exit 4 and one line saying what to
    install, no traceback."""
    one_run(project)
    site = tmp_path / "no-mlflow"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_MLFLOW)
    env = child_env()
    env["PYTHONPATH"] = f"{site}:{env['PYTHONPATH']}"
    probe = subprocess.run([sys.executable, "-c", "import mlflow"], env=env, capture_output=True, text=True,
                           check=False)
    assert probe.returncode != 0  # the blocker works
    proc = subprocess.run(ingest_cmd(project), env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 4
    assert proc.stdout == ""
    assert proc.stderr.strip() == INSTALL_HINT
    assert "pip install 'formula-foundry[tracking]'" in proc.stderr and "Traceback" not in proc.stderr
    # the journal viewer needs no MLflow
    view = subprocess.run([sys.executable, "-m", "formula_foundry.tracking.ingest.cli", "view",
                           str(next(project.rglob("*.jsonl")))], env=env, capture_output=True, text=True, check=False)
    assert view.returncode == 0 and "run_start" in view.stdout


# --------------------------------------------------------------------------- summary, view, version, help

def test_json_summary_fields(store_project, capsys):
    """``--json``: one JSON document with the store, sink, counts, runs created/updated, errors, pending,
    timing, and per journal its state, run ids, records, batches, pending bytes, errors, warnings."""
    run = one_run(store_project)
    code, summary = ingest_json(store_project, capsys)
    assert code == 0
    assert set(summary) >= {"store", "sink", "dry_run", "journals", "records", "runs_created", "runs_updated",
                            "elapsed_s", "records_per_s", "errors", "pending", "details"}
    assert summary["sink"] == "api" and summary["dry_run"] is False
    assert summary["store"].startswith("sqlite:///") and "timeout" not in summary["store"]
    assert (summary["journals"], summary["records"], summary["runs_created"], summary["runs_updated"]) == (1, 6, 1, 0)
    assert (summary["errors"], summary["pending"]) == (0, 0)
    (detail,) = summary["details"]
    assert detail["path"] == str(run.journal_path) and detail["state"] == "ingested"
    assert detail["run_id"] == run.run_id and len(detail["mlflow_run_id"]) == 32
    assert (detail["records"], detail["batches"], detail["pending_bytes"]) == (6, 1, 0)
    assert detail["errors"] == [] and detail["warnings"] == []
    segment = tracker(store_project).attach_run(run.run_id)
    segment.log_metric("m", 9.0, step=9)
    segment.end()
    code, summary = ingest_json(store_project, capsys)
    assert (summary["runs_created"], summary["runs_updated"], summary["records"]) == (0, 1, 3)
    assert {d["state"] for d in summary["details"]} == {"up-to-date", "ingested"}


def test_paths_and_roots_limit_what_is_ingested(store_project, tmp_path, capsys):
    """A journal given as an argument is ingested alone; ``--root`` scans that folder instead of the
    configured roots."""
    a, b = one_run(store_project, "a"), one_run(store_project, "b")
    code, summary = ingest_json(store_project, capsys, str(a.journal_path))
    assert code == 0 and [d["run_id"] for d in summary["details"]] == [a.run_id]
    elsewhere = tmp_path / "elsewhere"
    b.journal_path.parent.parent.rename(elsewhere)
    code, summary = ingest_json(store_project, capsys, "--root", str(elsewhere))
    assert code == 0 and [d["run_id"] for d in summary["details"]] == [b.run_id]


def test_view_prints_records_readably_and_reports_corrupt_lines(project, capsys):
    """``ff-ingest view``: one line per record (line, seq, type, ts, fields); a corrupt line and an
    incomplete tail are reported on stderr with line and offset; exit 1 because of the corrupt line."""
    run = one_run(project)
    path = run.journal_path
    assert main(["view", str(path)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 6 and err == ""
    assert lines[0].split()[:3] == ["1", "seq=0", "run_start"] and f'run_id="{run.run_id}"' in lines[0]
    assert lines[1].split()[:3] == ["2", "seq=1", "param"] and 'key="p" value="1"' in lines[1]
    assert lines[2].split()[:3] == ["3", "seq=2", "metric"] and 'key="m" value=0.0 step=0' in lines[2]
    assert lines[5].split()[:3] == ["6", "seq=5", "run_end"] and 'status="FINISHED"' in lines[5]
    corrupt(path, 4)
    with open(path, "ab") as fh:
        fh.write(b'{"v":1,"seq":6')
    assert main(["view", str(path)]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 5
    offset = sum(len(x) for x in path.read_bytes().splitlines(keepends=True)[:3])
    assert f"corrupt: {path}:4 (byte offset {offset}): checksum mismatch" in err
    assert "pending: 14 bytes of an incomplete last line" in err
    assert main(["view", "--json", str(path)]) == 1
    records = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["seq"] for r in records] == [0, 1, 2, 4, 5]


def test_version_and_help(capsys):
    """``--version`` prints the package version; ``--help`` lists the options and subcommands."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ff-ingest, version {__version__}"
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--config", "--tracking-uri", "--root", "--dry-run", "--skip-corrupt", "--json", "--watch",
                   "--sink", "--quiet"):
        assert option in out
    assert "view JOURNAL" in out
    assert main(["view", "--help"]) == 0
    assert "JOURNAL" in capsys.readouterr().out
