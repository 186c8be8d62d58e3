"""Real services on 127.0.0.1, started and stopped by the tests (a pytest plugin: ``tests/conftest.py``
loads it, so every test folder shares one pool of servers per session).

* ``postgres_url`` - a fresh database ``ff_srv_<random>`` on the machine's PostgreSQL
  (``FF_POSTGRES_ADMIN_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``), dropped
  at the end of the session. Unreachable: the tests are skipped with the reason, or fail
  when ``FF_REQUIRE_POSTGRES=1``.
* ``mlflow_server`` - ``mlflow server`` over a SQLite store with a local
  ``--artifacts-destination`` and ``--serve-artifacts``.
* ``moto_s3`` - moto's standalone S3 server with one bucket; ``s3_mlflow_server`` - an
  ``mlflow server`` whose ``--artifacts-destination`` is ``s3://<bucket>/mlflow`` there.
* ``pg_mlflow_server`` - ``mlflow server --workers 2`` over a PostgreSQL database of its own
  (``ff_srvpg_<random>``, dropped at the end), local proxied artifacts: seed 003's team setup.

Each server is a subprocess in its own process group (``mlflow server`` runs uvicorn as a
child), waited for on ``/health`` (up to 90 s: a cold ``import mlflow`` on a busy 2-core
machine takes 10-20 s) and always stopped with the whole group. A server's log is shown
when it fails to start.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import POSTGRES_ADMIN_URL, subprocess_env, with_database

START_TIMEOUT = 90.0
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServiceProcess:
    """A server subprocess in its own process group, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str], log: Path, ready_url: str) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.ready_url = ready_url
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServiceProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> ServiceProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"{self.name} exited with {self.proc.returncode} while starting:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2):
                    return self
            except urllib.error.HTTPError:
                return self  # it answers (moto's / may say 403 without credentials)
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        self.stop()
        pytest.fail(f"{self.name} did not answer {self.ready_url} within {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def terminate(self) -> None:
        """Ask the whole process group to stop (SIGTERM); :meth:`stop` waits and kills if needed."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, grace: float = 8.0) -> None:
        if self.proc is None:
            return
        self.terminate()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        # SIGKILL the group in any case: uvicorn's worker may outlive its leader for a moment
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


class MlflowServer:
    def __init__(self, service: ServiceProcess, url: str, artifacts: Path | str, backend: Path | str) -> None:
        self.service = service
        self.url = url
        self.artifacts = artifacts  # a local folder, or an s3:// URI
        self.backend = backend  # the SQLite file, or the PostgreSQL URL


def _mlflow_server(tmp: Path, template_store: Path, artifacts: str, *, extra_env: dict[str, str] | None = None,
                   name: str = "mlflow server") -> MlflowServer:
    """Start (without waiting) an mlflow server over a copy of the migrated template store."""
    backend = tmp / "mlruns.db"
    shutil.copy(template_store, backend)
    port = free_port()
    env = subprocess_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true",
                         **(extra_env or {}))
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{backend}",
            "--artifacts-destination", artifacts, "--serve-artifacts", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    service = ServiceProcess(name, argv, env=env, log=tmp / "server.log", ready_url=f"{url}/health").start()
    return MlflowServer(service, url, artifacts if "://" in artifacts else Path(artifacts), backend)


# --------------------------------------------------------------------------- PostgreSQL

@pytest.fixture(scope="session")
def postgres_url(postgres_admin: str) -> str:
    """``postgresql://postgres@127.0.0.1:5432/ff_srv_<random>``: a database of this session only."""
    import psycopg

    admin = psycopg.connect(postgres_admin, autocommit=True, connect_timeout=5)
    name = f"ff_srv_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(postgres_admin, name)
    finally:
        try:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            admin.close()


# --------------------------------------------------------------------------- servers, started together

class _Pool:
    """The session's server subprocesses, started at once so that their (slow) start-ups overlap."""

    def __init__(self) -> None:
        self.mlflow: MlflowServer | None = None
        self.moto: MotoS3 | None = None
        self.s3_mlflow: MlflowServer | None = None
        self.pg_mlflow: MlflowServer | None = None
        self.pg_database: tuple[str, str] | None = None  # (admin URL, database) to drop at the end
        self.ready: set[str] = set()

    def services(self) -> list[ServiceProcess]:
        return [x.service for x in (self.mlflow, self.moto, self.s3_mlflow, self.pg_mlflow) if x is not None]


@pytest.fixture(scope="session")
def _server_pool(request, tmp_path_factory, template_store) -> _Pool:
    """Start every server some collected test needs (none of the others), without waiting."""
    wanted = set().union(*(getattr(item, "fixturenames", ()) for item in request.session.items))
    pool = _Pool()
    try:
        if "s3_mlflow_server" in wanted or "moto_s3" in wanted or "s3_client_env" in wanted:
            pytest.importorskip("moto")
            pytest.importorskip("boto3")
            tmp = tmp_path_factory.mktemp("moto")
            port = free_port()
            endpoint = f"http://127.0.0.1:{port}"
            service = ServiceProcess("moto server", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                                     "-p", str(port)],
                                     env=subprocess_env(**S3_ENV), log=tmp / "moto.log", ready_url=f"{endpoint}/")
            pool.moto = MotoS3(service.start(), endpoint, "ff-artifacts")
        if "s3_mlflow_server" in wanted:
            tmp = tmp_path_factory.mktemp("mlflow-s3-server")
            pool.s3_mlflow = _mlflow_server(tmp, template_store, f"s3://{pool.moto.bucket}/mlflow",
                                            extra_env=pool.moto.env, name="mlflow server (S3 artifacts)")
        if "mlflow_server" in wanted:
            tmp = tmp_path_factory.mktemp("mlflow-server")
            pool.mlflow = _mlflow_server(tmp, template_store, str(tmp / "artifacts"))
        if "pg_mlflow_server" in wanted:
            admin = _reachable_postgres()  # None: pg_mlflow_server skips (or fails) through postgres_admin
            if admin is not None:
                pool.pg_database = (admin, f"ff_srvpg_{uuid.uuid4().hex[:12]}")
                pool.pg_mlflow = _pg_mlflow_server(tmp_path_factory.mktemp("mlflow-pg-server"), *pool.pg_database)
        yield pool
    finally:
        for service in pool.services():  # all at once, then wait for each
            service.terminate()
        for service in pool.services():
            service.stop()
        if pool.pg_database is not None:
            import psycopg

            admin, name = pool.pg_database
            with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _reachable_postgres() -> str | None:
    """The admin URL when PostgreSQL answers, else None (``postgres_admin`` then says why)."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except Exception:  # noqa: BLE001 - any failure means "no server here"
        return None
    return POSTGRES_ADMIN_URL


def _pg_mlflow_server(tmp: Path, admin: str, database: str) -> MlflowServer:
    """Create ``database`` and start (without waiting) ``mlflow server --workers 2`` over it; the
    server runs MLflow's migrations itself."""
    import psycopg

    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    backend = with_database(admin, database)
    port = free_port()
    env = subprocess_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
            "--artifacts-destination", str(tmp / "artifacts"), "--serve-artifacts", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "2"]
    url = f"http://127.0.0.1:{port}"
    service = ServiceProcess("mlflow server (PostgreSQL)", argv, env=env, log=tmp / "server.log",
                             ready_url=f"{url}/health").start()
    return MlflowServer(service, url, tmp / "artifacts", backend)


@pytest.fixture(scope="session")
def pg_mlflow_server(_server_pool, postgres_admin) -> MlflowServer:
    """``mlflow server --workers 2`` over a PostgreSQL database of its own (``server.backend`` is its URL)."""
    _server_pool.pg_mlflow.service.wait_ready(timeout=START_TIMEOUT + 60)  # it migrates an empty database
    return _server_pool.pg_mlflow


@pytest.fixture(scope="session")
def mlflow_server(_server_pool) -> MlflowServer:
    """``mlflow server`` over SQLite with local, proxied artifacts (``server.artifacts`` is the folder)."""
    _server_pool.mlflow.service.wait_ready()
    return _server_pool.mlflow


# --------------------------------------------------------------------------- S3 (moto) and a server on it

class MotoS3:
    def __init__(self, service: ServiceProcess, endpoint: str, bucket: str) -> None:
        self.service = service
        self.endpoint = endpoint
        self.bucket = bucket

    @property
    def env(self) -> dict[str, str]:
        """What a client (or server) needs to reach this S3: endpoint and (fake) credentials."""
        return {**S3_ENV, "MLFLOW_S3_ENDPOINT_URL": self.endpoint}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test")

    def keys(self, prefix: str = "") -> list[str]:
        keys, token = [], None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = self.client().list_objects_v2(**kwargs)
            keys += [item["Key"] for item in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not token:
                return keys


@pytest.fixture(scope="session")
def moto_s3(_server_pool) -> MotoS3:
    """moto's standalone S3 server with the bucket ``ff-artifacts``."""
    s3 = _server_pool.moto
    if "moto" not in _server_pool.ready:
        s3.service.wait_ready()
        s3.client().create_bucket(Bucket=s3.bucket)
        _server_pool.ready.add("moto")
    return s3


@pytest.fixture(scope="session")
def s3_mlflow_server(_server_pool, moto_s3) -> MlflowServer:
    """``mlflow server`` whose ``--artifacts-destination`` is ``s3://ff-artifacts/mlflow`` on moto."""
    _server_pool.s3_mlflow.service.wait_ready()
    return _server_pool.s3_mlflow


@pytest.fixture
def s3_client_env(moto_s3, monkeypatch) -> MotoS3:
    """This process as an S3 client of ``moto_s3`` (endpoint and credentials in the environment)."""
    for key, value in moto_s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # MLFLOW_S3_ENDPOINT_URL is the one set
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return moto_s3
