"""Shared fixtures: a throw-away project (config/ + data/) per test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# The real servers (PostgreSQL databases, mlflow server, moto's S3) as session fixtures shared by every folder.
pytest_plugins = ["tests.services"]

REPO = Path(__file__).resolve().parent.parent
_OVERRIDES = ("FF_CONFIG", "MLFLOW_TRACKING_URI", "FF_ARTIFACT_ROOT", "FF_JOURNAL_ROOT", "FF_TRACKING_ENABLED",
              "FF_ARTIFACT_STORE", "FF_ARTIFACTS_SERVER_URI")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No test sees the developer's overrides."""
    for name in _OVERRIDES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder holding a copy of the real config/mlflow.yaml."""
    root = tmp_path / "proj"
    (root / "config").mkdir(parents=True)
    shutil.copy(REPO / "config" / "mlflow.yaml", root / "config" / "mlflow.yaml")
    return root


@pytest.fixture
def in_project(project: Path, monkeypatch) -> Path:
    """Run the test with the project as the current directory (as seed 001's examples assume)."""
    monkeypatch.chdir(project)
    return project


def open_files_under(pid: int, folder: Path | str) -> list[str]:
    """What process ``pid`` holds open under ``folder``, as /proc names it (a file without a name, an
    ``O_TMPFILE`` copy not yet linked, shows as ``<folder>/#<inode> (deleted)``); [] once it is gone."""
    prefix = str(folder).rstrip("/") + "/"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    targets = []
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(prefix):
            targets.append(target)
    return targets


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _OVERRIDES}
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


# --------------------------------------------------------------------------- MLflow stores

@pytest.fixture(scope="session")
def template_store(tmp_path_factory) -> Path:
    """One migrated MLflow SQLite store per test session (creating one runs every migration: seconds)."""
    pytest.importorskip("mlflow")
    from formula_foundry.tracking.ingest.stores.store_init import ensure_sqlite_store

    folder = tmp_path_factory.mktemp("template-store")
    db = folder / "mlruns.db"
    ensure_sqlite_store(db, (folder / "artifacts").as_uri())
    return db


@pytest.fixture
def store_project(project: Path, template_store: Path) -> Path:
    """A project whose data/mlflow/mlruns.db is a fresh copy of the template store."""
    target = project / "data" / "mlflow" / "mlruns.db"
    target.parent.mkdir(parents=True)
    shutil.copy(template_store, target)
    return project


def imported_names(module) -> list[str]:
    """Every module name ``module``'s source imports (``import a.b`` -> ``a.b``; ``from a import b`` -> ``a``)."""
    import ast

    names: list[str] = []
    for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


def run_ff_ingest(project: Path, *args: str) -> int:
    """Run ff-ingest in-process against ``project``'s config; returns its exit code."""
    from formula_foundry.tracking.ingest.cli import main

    return main([*args, "--config", str(project / "config" / "mlflow.yaml")]) if args[:1] != ("view",) \
        else main(list(args))


def mlflow_client(project: Path):
    """An MlflowClient on ``project``'s SQLite store."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{project / 'data' / 'mlflow' / 'mlruns.db'}")


# --------------------------------------------------------------------------- PostgreSQL

POSTGRES_ADMIN_URL = os.environ.get("FF_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead."""
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    """The admin URL of a reachable PostgreSQL server: skip when there is none, fail instead
    under ``FF_REQUIRE_POSTGRES=1`` (CI), so PostgreSQL tests can never pass by not running."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means "no server here"
        from formula_foundry.tracking.ingest.uri import redact as redact_uri

        reason = (f"PostgreSQL not reachable at {redact_uri(POSTGRES_ADMIN_URL)} "
                  f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})")
        if os.environ.get("FF_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason}; FF_REQUIRE_POSTGRES=1 requires it")
        pytest.skip(f"{reason} (set FF_REQUIRE_POSTGRES=1 to fail instead)")
    return POSTGRES_ADMIN_URL
