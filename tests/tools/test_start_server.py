"""tools/mlflow/start_server.sh, run for real as a subprocess.

Every run gets a clean environment (no HOST/PORT/MLFLOW_* from the developer's
shell) and FF_SETUP_ENV pointing at a file in tmp_path, so a developer's
tools/mlflow/setup.env never leaks into a test.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "mlflow" / "start_server.sh"
VENV_BIN = Path(sys.executable).parent
SECRET = "s3cr3t-Pa55word"
# mlflow 3.17 needs 10-20 s to answer /health on an idle 2-core machine and over 40 s when other
# test suites load it; 120 s keeps the test about correctness, not machine load.
STARTUP_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env_file = tmp_path / "empty-setup.env"
    env_file.touch()
    env = {
        "PATH": f"{VENV_BIN}{os.pathsep}/usr/local/bin{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "LANG": "C.UTF-8",
        "FF_SETUP_ENV": str(env_file),
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'db' / 'mlruns.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"),
    }
    env.update(extra)
    return env


def run(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=Path(env["FF_SETUP_ENV"]).parent, check=False)


def test_script_is_executable_bash_with_strict_mode() -> None:
    """The script has a bash shebang, `set -euo pipefail`, the exec bit, and valid syntax."""
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_port_in_use_exits_3_and_suggests_a_free_port(tmp_path: Path) -> None:
    """A listening socket on PORT: exit 3, the message names the port and offers another."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run(script_env(tmp_path, PORT=str(port)))
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert f"port {port}" in output
    match = re.search(r"Port (\d+) is free: run PORT=(\d+) ", output)
    assert match, output
    assert match.group(1) == match.group(2) != str(port)
    assert 0 < int(match.group(1)) < 65536
    assert "export MLFLOW_TRACKING_URI" not in result.stdout


def test_port_in_use_output_masks_the_database_password(tmp_path: Path) -> None:
    """The refusal path prints nothing of a postgres password either."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = script_env(tmp_path, PORT=str(busy.getsockname()[1]),
                         MLFLOW_BACKEND_STORE_URI=f"postgresql://ff:{SECRET}@127.0.0.1:5432/mlflow")
        result = run(env)
    assert result.returncode == 3
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("uri", [
    f"postgresql://ff:{SECRET}@db.lab.internal:5432/mlflow",
    f"postgresql+psycopg://ff:{SECRET}@db:5432/mlflow?sslmode=require",
    f"postgresql://ff@db:5432/mlflow?sslmode=require&password={SECRET}",
    f"postgresql://ff:{SECRET}@@db:5432/mlflow",
])
def test_dry_run_masks_passwords(tmp_path: Path, uri: str) -> None:
    """--dry-run prints the settings and the command with every password replaced by ***."""
    result = run(script_env(tmp_path, PORT=str(free_port()), MLFLOW_BACKEND_STORE_URI=uri), "--dry-run")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert SECRET not in output
    assert "***" in output
    assert "mlflow server" in output
    assert "dry run: not starting the server" in output


def test_dry_run_env_variable_and_defaults(tmp_path: Path) -> None:
    """FF_DRY_RUN=1 works like --dry-run; defaults: 127.0.0.1, project-root SQLite and artifacts."""
    env = script_env(tmp_path, FF_DRY_RUN="1", PORT=str(free_port()))
    del env["MLFLOW_BACKEND_STORE_URI"], env["MLFLOW_ARTIFACTS_DESTINATION"]
    result = run(env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"sqlite:///{REPO}/data/mlflow/mlruns.db" in output
    assert f"--artifacts-destination {REPO}/data/mlflow/artifacts" in output
    assert "--host 127.0.0.1" in output
    assert "--workers 1 " in output
    assert "--serve-artifacts" in output
    assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{env['PORT']}" in result.stdout


def test_dry_run_creates_nothing(tmp_path: Path) -> None:
    """A dry run only says which directories it would create."""
    result = run(script_env(tmp_path, PORT=str(free_port())), "--dry-run")
    assert result.returncode == 0
    assert "would create" in result.stderr
    assert not (tmp_path / "db").exists()
    assert not (tmp_path / "artifacts").exists()


def test_environment_wins_over_setup_env(tmp_path: Path) -> None:
    """setup.env fills what the environment leaves unset; the environment wins where both set."""
    port = free_port()
    setup = tmp_path / "setup.env"
    setup.write_text("# a comment\nPORT=1\nMLFLOW_WORKERS=3\nEXTRA_ARGS=--static-prefix /ff\n"
                     "AWS_ACCESS_KEY_ID=\n")
    result = run(script_env(tmp_path, PORT=str(port), FF_SETUP_ENV=str(setup)), "--dry-run")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"--port {port} " in output
    assert "--workers 3 " in output
    assert "--static-prefix /ff" in output
    assert str(setup) in result.stderr


def test_setup_env_is_read_as_data_not_executed(tmp_path: Path) -> None:
    """Quotes, `export`, comments and CRLF are understood; $(...) in a value is never run."""
    port = free_port()
    marker = tmp_path / "pwned"
    setup = tmp_path / "setup.env"
    setup.write_text(
        f"export PORT={port}\r\n"
        "MLFLOW_WORKERS='2'  \n"
        'EXTRA_ARGS="--static-prefix /a b"\n'
        f"AWS_DEFAULT_REGION=$(touch {marker}) # inline comment\n"
        "   # indented comment\n"
    )
    result = run(script_env(tmp_path, FF_SETUP_ENV=str(setup)), "--dry-run")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"--port {port} --workers 2 " in output
    assert "--static-prefix /a b" in output
    assert not marker.exists()


@pytest.mark.parametrize("line", ["not a setting", "lower_case=1", "PATH=/tmp/evil", "BASH_ENV=/tmp/x"])
def test_setup_env_bad_line_exits_2_naming_file_and_line(tmp_path: Path, line: str) -> None:
    """A line that is not KEY=value, or sets PATH/BASH_*: exit 2 naming file and line number."""
    setup = tmp_path / "setup.env"
    setup.write_text(f"# comment\nPORT={free_port()}\n{line}\n")
    result = run(script_env(tmp_path, FF_SETUP_ENV=str(setup)), "--dry-run")
    assert result.returncode == 2
    assert f"{setup}:3:" in result.stderr


def test_passthrough_arguments_come_last(tmp_path: Path) -> None:
    """Arguments after -- are appended to the mlflow command, after the script's own."""
    result = run(script_env(tmp_path, PORT=str(free_port())), "--dry-run", "--", "--workers", "4")
    assert result.returncode == 0
    command = [line for line in result.stderr.splitlines() if line.startswith("start_server.sh: command:")]
    assert len(command) == 1, result.stderr
    assert re.search(r"--workers 1 .*--workers 4$", command[0]), command[0]


def test_s3_destination_is_passed_and_endpoint_reported(tmp_path: Path) -> None:
    """An s3:// destination is passed as is, nothing is created locally, the endpoint is shown."""
    env = script_env(tmp_path, PORT=str(free_port()), MLFLOW_ARTIFACTS_DESTINATION="s3://ff-bucket/mlflow",
                     MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:9000", AWS_ACCESS_KEY_ID="id",
                     AWS_SECRET_ACCESS_KEY=SECRET)
    result = run(env, "--dry-run")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "--artifacts-destination s3://ff-bucket/mlflow" in output
    assert "endpoint: http://127.0.0.1:9000" in output
    assert SECRET not in output


def test_missing_mlflow_exits_2_with_install_hint(tmp_path: Path) -> None:
    """MLFLOW_BIN that does not exist: exit 2 and the pip command to fix it."""
    result = run(script_env(tmp_path, MLFLOW_BIN=str(tmp_path / "no-such-mlflow"), PORT=str(free_port())))
    assert result.returncode == 2
    assert "not found on PATH" in result.stderr
    assert "pip install" in result.stderr


@pytest.mark.parametrize("port", ["abc", "0", "70000", "50 00"])
def test_bad_port_exits_2(tmp_path: Path, port: str) -> None:
    """PORT that is not 1..65535: exit 2 naming the value."""
    result = run(script_env(tmp_path, PORT=port))
    assert result.returncode == 2
    assert "PORT must be a number" in result.stderr


def test_missing_setup_env_file_exits_2(tmp_path: Path) -> None:
    """FF_SETUP_ENV naming a missing file: exit 2 naming it."""
    missing = tmp_path / "nope.env"
    result = run(script_env(tmp_path, FF_SETUP_ENV=str(missing)))
    assert result.returncode == 2
    assert str(missing) in result.stderr


def test_help_prints_usage(tmp_path: Path) -> None:
    """--help prints the header comment and exits 0 without checking anything."""
    result = run(script_env(tmp_path, MLFLOW_BIN="/nonexistent"), "--help")
    assert result.returncode == 0
    assert "Usage: tools/mlflow/start_server.sh" in result.stdout
    assert "Exit codes" in result.stdout


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies still count for killpg; check /proc for live members.
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@pytest.mark.slow
def test_real_server_starts_serves_and_stops(tmp_path: Path) -> None:
    """A real `mlflow server` on a free port: /health answers, the stores land in tmp_path,
    the printed export line is right, the script exec'd mlflow, SIGTERM to the group stops all."""
    port = free_port()
    env = script_env(tmp_path, PORT=str(port))
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(["bash", str(SCRIPT)], env=env, stdout=stdout, stderr=stderr,
                                cwd=tmp_path, start_new_session=True)
    pgid = proc.pid
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        body = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{err.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    body = response.read().decode()
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.25)
        else:
            pytest.fail(f"no /health within {STARTUP_TIMEOUT_S} s:\n{err.read_text()[-3000:]}")
        assert body.strip() == "OK"
        assert f"export MLFLOW_TRACKING_URI={url}\n" in out.read_text()

        # exec: the pid we started is mlflow itself now, so signals reach it directly.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert any(part.endswith(b"mlflow") for part in cmdline) and b"server" in cmdline

        # The stores are the ones the environment named.
        request = urllib.request.Request(
            f"{url}/api/2.0/mlflow/experiments/create", data=b'{"name": "ff-start-server-test"}',
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        assert (tmp_path / "db" / "mlruns.db").stat().st_size > 0
        assert (tmp_path / "artifacts").is_dir()
    finally:
        if proc.poll() is None:
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        leaked = _group_alive(pgid)
        if leaked:
            os.killpg(pgid, signal.SIGKILL)
    assert not leaked, "processes of the server's group outlived SIGTERM"
