"""``ff-ingest doctor``: is the tracking setup healthy? (seed 003's health check)

Seed 003: "verify connectivity by running ``mlflow experiments list`` and
logging a dummy run", and "monitor server uptime and storage consumption".
The doctor runs these checks, in order, and prints one line per check::

    OK    config       /proj/config/mlflow.yaml; store sqlite:////proj/data/mlflow/mlruns.db; ...
    OK    mlflow       mlflow 3.17.2
    OK    journals     /proj/data/runs: 14 journals
    OK    store        SQLite file /proj/data/mlflow/mlruns.db
    OK    schema       alembic revision 1b5f0d9ad7c1 = mlflow 3.17.2's head
    OK    experiments  listed 4 experiments
    OK    artifacts    logged a run with a 212-byte artifact to file:///...; read it back; deleted the run ...
    OK    storage      store 1.4 MB; artifact root 3.2 MB in 40 files; free 41.0 GB on /proj/data/mlflow
    OK    backlog      0 B not yet ingested (14 journals, all caught up)
    healthy: 9 OK, 0 warnings, 0 failures

=============  ================================================================================
check          what it does
=============  ================================================================================
config         loads ``config/mlflow.yaml`` (or ``--config``); a config error stops every other check
mlflow         the ingester's MLflow is importable (the ``tracking`` extra)
journals       every journal root exists and is readable; counts the journals under it
store          reachability: ``GET /health`` (HTTP), connect + ``SELECT 1`` (PostgreSQL, MySQL),
               the database file (SQLite); one attempt with ``--timeout``, no retries
schema         SQL stores: the alembic revision against this MLflow's head (read only: never
               migrates); HTTP: the server's ``/version`` against the client's
experiments    lists experiments through ``MlflowClient`` (seed 003's ``mlflow experiments list``)
artifacts      through the ingester's own sink: logs a dummy run (a metric, a param, a tag, a small
               artifact) in the experiment ``ff-doctor``, downloads the artifact back, then deletes
               the artifacts and the run (SQL stores: permanently, as ``mlflow gc`` does; a server
               only soft-deletes: its ``mlflow gc`` removes the row). ``--no-write`` skips it
storage        store size (SQLite file, PostgreSQL ``pg_database_size``), artifact root size when
               local, free disk space under the local stores, the journals and the ingest state
               (WARN under 1 GiB or 5 % free)
backlog        journal bytes beyond their checkpoints (not yet ingested), the artifact files and
               bytes among them still to upload, and journals whose last ingest stopped at an
               error (WARN); the journals' bytes on disk, WARN above ``ingest.journal_budget``
               (when set), with what ``ff-ingest prune`` would free
=============  ================================================================================

A check that cannot run because an earlier one failed is ``SKIP``. ``--json``
prints the same as one JSON object (``status``, ``exit_code``, ``store``,
``checks``: name, status, detail, data).

Exit codes: ``0`` every check OK (or only warnings / skips); ``3`` the store is
unreachable (``store`` or ``experiments`` failed to connect); ``1`` any other
failure. Usage errors (unknown option) are ``2``, as for every ``ff-ingest``
command.

Nothing printed carries a credential: URIs are shown with ``***`` for the
password and secret query parameters (:func:`~..uri.redact`), error texts
are scrubbed (:func:`~..uri.scrub`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from formula_foundry.errors import ConfigError, StoreUnavailableError
from formula_foundry.tracking.config import Config
from formula_foundry.tracking.config import sqlite_path_of
from formula_foundry.tracking.ingest.cli.common import common, human_bytes, load, setup_logging
from formula_foundry.tracking.ingest.cli.status import scan_lag
from formula_foundry.tracking.ingest.discover import discover, file_size, journal_id_of
from formula_foundry.tracking.ingest.prune import DEFAULT_OLDER_THAN, Facts, is_held, keep_reason, parse_duration
from formula_foundry.tracking.events import MetricPoint
from formula_foundry.tracking.ingest.sink import Batch
from formula_foundry.tracking.ingest.store_errors import classify
from formula_foundry.tracking.ingest.stores.bulk.schema import installed_head_revision, is_known_revision
from formula_foundry.tracking.ingest.stores.connect import read_checkpoints, state_dir
from formula_foundry.tracking.ingest.stores.engine import make_engine
from formula_foundry.tracking.ingest.stores.http import http_get, short_http_requests
from formula_foundry.tracking.ingest.uri import is_http, redact, scheme, scrub

__all__ = ["DOCTOR_EXPERIMENT", "Check", "DoctorReport", "doctor_command", "run_doctor"]

#: The experiment that holds the dummy runs of the artifact check (deleted again at once).
DOCTOR_EXPERIMENT = "ff-doctor"

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
#: Checks whose failure means "the store cannot be reached" (exit code 3).
UNREACHABLE_CHECKS = ("store", "experiments")
LOW_DISK_BYTES = 1 << 30
LOW_DISK_FRACTION = 0.05
#: Stop measuring a local artifact root after this long (the size is then a lower bound).
SIZE_SCAN_SECONDS = 10.0


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: str  # OK | WARN | FAIL | SKIP
    detail: str
    data: dict[str, Any] = field(default_factory=dict)
    unreachable: bool = False  # a FAIL that means "the store cannot be reached"


@dataclass
class DoctorReport:
    store: str  # redacted
    checks: list[Check] = field(default_factory=list)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def status_of(self, name: str) -> str | None:
        return next((c.status for c in self.checks if c.name == name), None)

    @property
    def exit_code(self) -> int:
        failed = [c for c in self.checks if c.status == FAIL]
        if any(c.name == "config" for c in failed):
            return EXIT_USAGE  # as every command: a config error is 2
        if any(c.unreachable for c in failed):
            return EXIT_UNREACHABLE
        return EXIT_FAILED if failed else EXIT_OK

    @property
    def status(self) -> str:
        statuses = {c.status for c in self.checks}
        return FAIL if FAIL in statuses else WARN if WARN in statuses else OK

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "exit_code": self.exit_code, "store": self.store,
                "checks": [{"name": c.name, "status": c.status, "detail": c.detail, "data": c.data}
                           for c in self.checks]}

    def render(self) -> str:
        lines = [f"{c.status:<5} {c.name:<12} {c.detail}" for c in self.checks]
        counts = {s: sum(c.status == s for c in self.checks) for s in (OK, WARN, FAIL, SKIP)}
        verdict = {OK: "healthy", WARN: "healthy, with warnings", FAIL: "NOT healthy"}[self.status]
        summary = (f"{verdict}: {counts[OK]} OK, {counts[WARN]} warnings, {counts[FAIL]} failures"
                   + (f", {counts[SKIP]} skipped" if counts[SKIP] else ""))
        if self.exit_code == EXIT_UNREACHABLE:
            summary += f"; the store {self.store} is unreachable"
        return "\n".join([*lines, summary]) + "\n"


# --------------------------------------------------------------------------- helpers

def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tree_size(root: Path, *, budget_s: float = SIZE_SCAN_SECONDS,
              clock: Callable[[], float] = time.monotonic) -> tuple[int, int, bool]:
    """(bytes, files, complete) of every regular file under ``root``; stops after ``budget_s``."""
    total = files = 0
    deadline = clock() + budget_s
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                            files += 1
                    except OSError:
                        continue
        except OSError:
            continue
        if clock() > deadline:
            return total, files, False
    return total, files, True


# --------------------------------------------------------------------------- the checks

def check_config(config_path: str | None, roots: tuple[str, ...],
                 tracking_uri: str | None) -> tuple[Config | None, Check]:
    try:
        cfg = load(config_path, roots, tracking_uri)
    except ConfigError as exc:
        return None, Check("config", FAIL, f"config error: {exc}")
    uri = tracking_uri or cfg.tracking.backend_store_uri
    detail = (f"{cfg.source}; store {redact(uri)}; artifact root {redact(cfg.tracking.artifact_root)}; "
              f"{len(cfg.journal_roots)} journal root(s)")
    return cfg, Check("config", OK, detail, {"source": str(cfg.source), "store": redact(uri),
                                            "artifact_root": redact(cfg.tracking.artifact_root),
                                            "journal_roots": [str(r) for r in cfg.journal_roots]})


def check_mlflow() -> Check:
    try:
        import mlflow
    except ImportError:
        return Check("mlflow", FAIL, "MLflow is not installed: pip install 'formula-foundry[tracking]'")
    return Check("mlflow", OK, f"mlflow {mlflow.__version__}", {"version": mlflow.__version__})


def check_journals(cfg: Config) -> tuple[list[Path], Check]:

    parts, problems, warnings, data = [], [], [], {}
    journals: list[Path] = []
    for root in cfg.journal_roots:
        if not root.exists():
            warnings.append(f"{root}: does not exist (no run has written there yet, or a volume is not mounted)")
            data[str(root)] = {"exists": False}
            continue
        if not root.is_dir():
            problems.append(f"{root}: not a directory")
            data[str(root)] = {"exists": True, "directory": False}
            continue
        if not os.access(root, os.R_OK | os.X_OK):
            problems.append(f"{root}: not readable by this user")
            data[str(root)] = {"exists": True, "readable": False}
            continue
        found = discover([root])
        journals.extend(found)
        data[str(root)] = {"exists": True, "readable": True, "journals": len(found)}
        parts.append(f"{root}: {len(found)} journal{'s' if len(found) != 1 else ''}")
    journals = sorted(set(journals))
    status = FAIL if problems else WARN if warnings else OK
    return journals, Check("journals", status, "; ".join(problems + warnings + parts), data)


# Substrings of connection errors (lower case) -> the cause shown in the report.
_CAUSES = (
    ("connection refused", "connection refused"),
    ("timed out", "timed out"),
    ("timeout", "timed out"),
    ("name or service not known", "unknown host"),
    ("nodename nor servname", "unknown host"),
    ("temporary failure in name resolution", "unknown host"),
    ("password authentication failed", "authentication failed"),
    ("authentication failed", "authentication failed"),
    ("does not exist", "the database does not exist"),
    ("no route to host", "no route to host"),
    ("network is unreachable", "network unreachable"),
    ("http 5", "the server answers with an error"),
)


def check_store(uri: str, cfg: Config, *, timeout: float) -> Check:
    from formula_foundry.tracking.ingest.stores.mlflow_api import probe_store

    db = sqlite_path_of(uri)
    if uri.startswith("sqlite:"):
        if db is None:
            return Check("store", FAIL, f"{uri}: not a file-backed SQLite store")
        if not db.exists():
            return Check("store", WARN, f"SQLite file {db} does not exist yet; the first ff-ingest creates it",
                         {"exists": False, "path": str(db)})
        if not os.access(db, os.R_OK | os.W_OK) or not os.access(db.parent, os.W_OK | os.X_OK):
            return Check("store", FAIL, f"SQLite file {db} (or its folder) is not readable and writable "
                                        "by this user", {"path": str(db)})
        return Check("store", OK, f"SQLite file {db}", {"exists": True, "path": str(db)})
    try:
        answer = probe_store(uri, timeout=timeout)
    except StoreUnavailableError as exc:
        text = _one_line(scrub(str(exc), uri), 1000)
        cause = next((label for pattern, label in _CAUSES if pattern in text.lower()), "no answer")
        hint = ("is the server running? (tools/mlflow/start_server.sh)" if is_http(uri)
                else "is the database server running and accepting TCP connections?")
        if cause == "no answer":
            cause = text[:300]
        elif cause not in ("connection refused", "timed out", "no route to host", "network unreachable"):
            hint = ""
        return Check("store", FAIL, f"cannot reach {redact(uri)}: {cause}" + (f"; {hint}" if hint else ""),
                     {"error": text}, unreachable=True)
    return Check("store", OK, f"{redact(uri)} answers ({answer})", {"answer": answer})


def check_schema(uri: str, cfg: Config, *, timeout: float) -> Check:
    import mlflow


    if is_http(uri):
        try:
            response = http_get(uri, "/version", timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return Check("schema", WARN, f"GET /version failed: {_one_line(scrub(str(exc), uri))}")
        if response.status_code != 200:
            return Check("schema", WARN, f"GET /version answered HTTP {response.status_code}; "
                                         "cannot compare server and client versions")
        server = response.text.strip()
        client = mlflow.__version__
        data = {"server_version": server, "client_version": client}
        if server.split(".")[:2] != client.split(".")[:2]:
            return Check("schema", WARN, f"server runs mlflow {server}, the ingester {client}: keep them "
                                         "on the same minor version", data)
        return Check("schema", OK, f"server runs mlflow {server} (ingester {client})", data)

    import sqlalchemy
    from alembic.runtime.migration import MigrationContext

    head = installed_head_revision()
    engine = make_engine(uri, connect_timeout=timeout, read_only=True)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
            tables = set(sqlalchemy.inspect(connection).get_table_names())
    except Exception as exc:  # noqa: BLE001
        return Check("schema", FAIL, f"cannot read the schema revision: {_one_line(scrub(str(exc), uri))}")
    finally:
        engine.dispose()
    data = {"revision": current, "head": head, "mlflow": mlflow.__version__}
    if current is None:
        if "experiments" in tables:
            return Check("schema", FAIL, "MLflow tables without an alembic revision: not a store this "
                                         "MLflow can manage", data)
        return Check("schema", WARN, "empty database: the first ff-ingest creates MLflow's schema", data)
    if current == head:
        return Check("schema", OK, f"alembic revision {current} = mlflow {mlflow.__version__}'s head", data)
    if is_known_revision(current):
        return Check("schema", FAIL, f"revision {current} is older than mlflow {mlflow.__version__}'s head "
                                     f"{head}: back up the database, then run `mlflow db upgrade "
                                     f"{redact(uri)}`", data)
    return Check("schema", FAIL, f"revision {current} is unknown to mlflow {mlflow.__version__} (head {head}): "
                                 "the store was migrated by a newer MLflow; upgrade the ingester's mlflow", data)


def open_doctor_api(cfg: Config, uri: str):
    """The ingester's own view of the store (same artifact locations, same upload path)."""
    from formula_foundry.tracking.ingest.stores.mlflow_api import MlflowApi

    return MlflowApi.for_config(cfg, uri)


def check_experiments(api, uri: str) -> Check:

    try:
        page = api.client.search_experiments(max_results=1000)
    except Exception as exc:  # noqa: BLE001
        err = classify(exc)
        return Check("experiments", FAIL, f"listing experiments failed: {_one_line(scrub(str(err), uri))}",
                     unreachable=isinstance(err, StoreUnavailableError))
    more = "+" if page.token else ""
    names = [e.name for e in page]
    return Check("experiments", OK, f"listed {len(names)}{more} experiment{'s' if len(names) != 1 else ''}",
                 {"count": len(names), "more": bool(more)})


def check_artifacts(api, uri: str) -> Check:
    """Log a dummy run with a small artifact the way the ingester does, read it back, delete it all."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    client = api.client
    now_ms = int(time.time() * 1000)
    host = socket.gethostname()
    payload = json.dumps({"type": "formula_foundry.doctor_probe", "host": host, "pid": os.getpid(),
                          "time_ms": now_ms}, sort_keys=True).encode() + b"\n"
    artifact_path = "doctor/probe.json"
    run_id = None
    artifact_uri = None
    try:
        exp = client.get_experiment_by_name(DOCTOR_EXPERIMENT)
        if exp is not None and exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        experiment_id = api.experiment_id(DOCTOR_EXPERIMENT)
        run = client.create_run(experiment_id, start_time=now_ms, run_name=f"doctor-{host}-{now_ms}",
                                tags={"ff.doctor": "1"})
        run_id = run.info.run_id
        artifact_uri = run.info.artifact_uri
        batch = Batch(metrics=[MetricPoint("doctor_probe", 1.0, now_ms, 0)], params={"doctor_host": host},
                      tags={"ff.doctor.host": host}, artifacts={artifact_path: payload},
                      end=("FINISHED", int(time.time() * 1000)))
        api.log_batch(run_id, batch)
        api.write_artifacts(run_id, batch.artifacts)
        api.set_status(run_id, *batch.end)
        with tempfile.TemporaryDirectory(prefix="ff-doctor-") as tmp:
            local = client.download_artifacts(run_id, artifact_path, tmp)
            echoed = Path(local).read_bytes()
        if echoed != payload:
            raise RuntimeError(f"read back {len(echoed)} bytes that differ from the {len(payload)} written")
        stored = client.get_run(run_id)
        if stored.data.metrics.get("doctor_probe") != 1.0 or stored.info.status != "FINISHED":
            raise RuntimeError("the dummy run did not keep its metric and status")
    except Exception as exc:  # noqa: BLE001 - reported with its cause
        cleanup = _delete_dummy_run(client, run_id, artifact_uri, get_artifact_repository, uri) if run_id else ""
        where = f" (artifact location {redact(artifact_uri)})" if artifact_uri else ""
        return Check("artifacts", FAIL, f"dummy run failed{where}: {_one_line(scrub(str(exc), uri))}"
                                        + (f"; {cleanup}" if cleanup else ""), {"run_id": run_id})
    cleanup = _delete_dummy_run(client, run_id, artifact_uri, get_artifact_repository, uri)
    detail = (f"logged a dummy run in {DOCTOR_EXPERIMENT!r} with a {len(payload)}-byte artifact at "
              f"{redact(artifact_uri)}, read it back; {cleanup}")
    status = WARN if cleanup.startswith("left behind") else OK
    return Check("artifacts", status, detail, {"run_id": run_id, "artifact_uri": redact(artifact_uri),
                                               "cleanup": cleanup})


def _delete_dummy_run(client, run_id: str, artifact_uri: str | None, get_repo, uri: str) -> str:
    """Remove the dummy run's artifacts and the run; returns what was done (or left behind)."""

    left: list[str] = []
    if artifact_uri:
        try:
            get_repo(artifact_uri, tracking_uri=uri).delete_artifacts()
            if artifact_uri.startswith("file://"):
                from urllib.parse import unquote, urlsplit

                run_folder = Path(unquote(urlsplit(artifact_uri).path)).parent
                if run_folder.is_dir() and not any(run_folder.iterdir()):
                    run_folder.rmdir()
        except Exception as exc:  # noqa: BLE001
            left.append(f"its artifacts ({_one_line(scrub(str(exc), uri), 200)})")
    hard = False
    try:
        client.delete_run(run_id)
        if not is_http(uri):  # what `mlflow gc` does, for SQL stores
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
            from mlflow.tracking._tracking_service.utils import _get_store

            tracking_store = _get_store(uri)
            if isinstance(tracking_store, SqlAlchemyStore):
                tracking_store._hard_delete_run(run_id)
                hard = True
    except Exception as exc:  # noqa: BLE001
        left.append(f"run {run_id} ({_one_line(scrub(str(exc), uri), 200)})")
    if left:
        return "left behind " + " and ".join(left)
    if hard:
        return "deleted its artifacts and the run permanently"
    return "deleted its artifacts and the run (soft: the server's `mlflow gc` removes the row)"


def _disk(path: Path) -> tuple[Path, Any] | None:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return probe, shutil.disk_usage(probe)
    except OSError:
        return None


def check_storage(cfg: Config, uri: str, *, timeout: float, store_ok: bool) -> Check:

    parts: list[str] = []
    warnings: list[str] = []
    data: dict[str, Any] = {}
    db = sqlite_path_of(uri)
    local_paths: list[Path] = []
    if db is not None:
        if db.exists():
            size = sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal"),
                                                  db.with_name(db.name + "-shm")) if p.exists())
            data["store_bytes"] = size
            parts.append(f"store {human_bytes(size)} (SQLite file)")
        local_paths.append(db.parent)
    elif is_http(uri):
        parts.append("store size: held by the server (not measured)")
    elif scheme(uri) in ("postgresql", "postgres") and store_ok:
        import sqlalchemy

        engine = make_engine(uri, connect_timeout=timeout, read_only=True)
        try:
            with engine.connect() as connection:
                size = int(connection.execute(
                    sqlalchemy.text("SELECT pg_database_size(current_database())")).scalar())
            data["store_bytes"] = size
            parts.append(f"store {human_bytes(size)} (pg_database_size)")
        except Exception as exc:  # noqa: BLE001
            warnings.append(f"cannot measure the database: {_one_line(scrub(str(exc), uri), 200)}")
        finally:
            engine.dispose()
    elif not store_ok:
        parts.append("store size: not measured (no connection)")
    else:
        parts.append("store size: not measured for this database")

    root = cfg.tracking.artifact_root_path
    if is_http(uri):
        parts.append("artifacts: held by the server (not measured)")
    elif root is None:
        parts.append(f"artifact root {redact(cfg.tracking.artifact_root)}: remote (not measured)")
    elif root.exists():
        size, files, complete = tree_size(root)
        data.update(artifact_root_bytes=size, artifact_root_files=files, artifact_root_complete=complete)
        bound = "" if complete else f"at least (stopped after {SIZE_SCAN_SECONDS:g} s) "
        parts.append(f"artifact root {bound}{human_bytes(size)} in {files} files")
        local_paths.append(root)
    else:
        parts.append(f"artifact root {root} not created yet")
        local_paths.append(root)

    local_paths += [*cfg.journal_roots, state_dir(cfg, uri)]
    seen: dict[int, tuple[Path, Any]] = {}
    for path in local_paths:
        found = _disk(path)
        if found is None:
            continue
        where, usage = found
        device = os.stat(where).st_dev
        seen.setdefault(device, (where, usage))
    free_info = []
    for where, usage in seen.values():
        free_info.append({"path": str(where), "free_bytes": usage.free, "total_bytes": usage.total})
        text = f"free {human_bytes(usage.free)} of {human_bytes(usage.total)} on {where}"
        if usage.free < LOW_DISK_BYTES or usage.free < LOW_DISK_FRACTION * usage.total:
            warnings.append("low disk space: " + text)
        else:
            parts.append(text)
    data["disks"] = free_info
    return Check("storage", WARN if warnings else OK, "; ".join(warnings + parts), data)


def check_backlog(cfg: Config, uri: str, journals: list[Path]) -> Check:
    try:
        checkpoints = {cp.journal_id: cp for cp in read_checkpoints(cfg, uri)}
    except Exception as exc:  # noqa: BLE001
        return Check("backlog", WARN, f"cannot read the ingest checkpoints: {_one_line(exc)}")
    pending_bytes = artifacts = artifact_bytes = 0
    behind = never = 0
    disk = prunable = 0
    older_than, now = parse_duration(DEFAULT_OLDER_THAN), time.time()
    errors: list[str] = []
    for path in journals:
        journal_id = journal_id_of(path)
        try:
            st = path.stat()
        except OSError:
            continue
        size = file_size(path) or 0  # content bytes (a .gz archive: uncompressed)
        cp = checkpoints.get(journal_id) if journal_id else None
        disk += st.st_size
        if cp is not None and cp.ended and keep_reason(
                Facts(path=path, size=st.st_size, mtime=st.st_mtime, checkpoint=cp, error=None, held=is_held(path)),
                older_than=older_than, now=now) is None:
            prunable += st.st_size
        if cp is None:
            never += 1
        if cp is not None and cp.last_error:
            errors.append(f"{path}: {_one_line(cp.last_error, 200)}")
        lag = max(0, size - (cp.position.offset if cp else 0))
        if lag:
            behind += 1
            pending_bytes += lag
            try:
                uploads = scan_lag(path, cp.position.offset if cp else 0)
            except OSError:
                continue
            artifacts += uploads.artifacts
            artifact_bytes += uploads.artifact_bytes
    data = {"journals": len(journals), "pending_bytes": pending_bytes, "journals_behind": behind,
            "never_ingested": never, "errors": len(errors), "artifacts_pending": artifacts,
            "artifact_bytes_pending": artifact_bytes, "journal_bytes": disk,
            "journal_budget": cfg.ingest.journal_budget, "prunable_bytes": prunable}
    budget = cfg.ingest.journal_budget
    over = "" if not budget or disk <= budget else (
        f"journals take {human_bytes(disk)}, above ingest.journal_budget {human_bytes(budget)}: "
        f"ff-ingest prune (--older-than {DEFAULT_OLDER_THAN}) would free {human_bytes(prunable)}; ")
    if not journals:
        return Check("backlog", OK, "no journals yet", data)
    if pending_bytes:
        detail = (f"{human_bytes(pending_bytes)} in {behind} of {len(journals)} journals not yet ingested"
                  + (f" ({never} never ingested)" if never else "")
                  + (f", {artifacts} artifact files ({human_bytes(artifact_bytes)}) to upload" if artifacts else "")
                  + "; run ff-ingest (or --watch)")
    else:
        detail = f"0 B not yet ingested ({len(journals)} journals, all caught up)"
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        return Check("backlog", WARN, over + f"{len(errors)} journal(s) stopped at an error: "
                                      + "; ".join(errors[:3]) + more + f"; {detail}", data)
    return Check("backlog", WARN if over else OK, over + detail, data)


# --------------------------------------------------------------------------- orchestration

def run_doctor(*, config_path: str | None = None, roots: tuple[str, ...] = (), tracking_uri: str | None = None,
               timeout: float = 10.0, write: bool = True) -> DoctorReport:
    """Run every check and return the report (no printing, no exit)."""
    cfg, config_check = check_config(config_path, roots, tracking_uri)
    uri = (tracking_uri or (cfg.tracking.backend_store_uri if cfg else "")) or ""
    report = DoctorReport(store=redact(uri) if uri else "?")
    report.add(config_check)
    names = ("mlflow", "journals", "store", "schema", "experiments", "artifacts", "storage", "backlog")
    if cfg is None:
        for name in names:
            report.add(Check(name, SKIP, "no configuration"))
        return report

    mlflow_check = report.add(check_mlflow())
    journals, journals_check = check_journals(cfg)
    report.add(journals_check)
    store_ok = False
    if mlflow_check.status != OK:
        for name in ("store", "schema", "experiments", "artifacts"):
            report.add(Check(name, SKIP, "MLflow is not installed"))
    else:
        from formula_foundry.tracking.ingest.stores.mlflow_api import quiet_mlflow_logs

        quiet_mlflow_logs()
        with short_http_requests(timeout):
            store_ok = _store_checks(report, cfg, uri, timeout=timeout, write=write)
    report.add(check_storage(cfg, uri, timeout=timeout, store_ok=store_ok))
    report.add(check_backlog(cfg, uri, journals))
    return report


def _store_checks(report: DoctorReport, cfg: Config, uri: str, *, timeout: float, write: bool) -> bool:
    """store, schema, experiments, artifacts; returns whether the store answered."""

    store = report.add(check_store(uri, cfg, timeout=timeout))
    if store.status == FAIL:
        for name in ("schema", "experiments", "artifacts"):
            report.add(Check(name, SKIP, "the store is not reachable"))
        return False
    if store.status == WARN:  # a SQLite file that does not exist yet
        for name in ("schema", "experiments", "artifacts"):
            report.add(Check(name, SKIP, "no store yet"))
        return False
    schema = report.add(check_schema(uri, cfg, timeout=timeout))
    if schema.status == FAIL or (schema.status == WARN and not is_http(uri)):
        reason = "the schema is not usable" if schema.status == FAIL else "the database has no MLflow schema yet"
        for name in ("experiments", "artifacts"):
            report.add(Check(name, SKIP, reason))
        return True
    try:
        api = open_doctor_api(cfg, uri)
    except Exception as exc:  # noqa: BLE001
        err = exc if isinstance(exc, StoreUnavailableError) else classify(exc)
        report.add(Check("experiments", FAIL, f"cannot open the store: {_one_line(scrub(str(err), uri))}",
                         unreachable=isinstance(err, StoreUnavailableError)))
        report.add(Check("artifacts", SKIP, "the store could not be opened"))
        return True
    listing = report.add(check_experiments(api, uri))
    if listing.status == FAIL:
        report.add(Check("artifacts", SKIP, "listing experiments failed"))
    elif not write:
        report.add(Check("artifacts", SKIP, "--no-write: no dummy run logged"))
    else:
        report.add(check_artifacts(api, uri))
    return True


# --------------------------------------------------------------------------- CLI

@click.command(name="doctor")
@common
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.5),
              help="Seconds to wait for the store to answer (one attempt, no retries).")
@click.option("--no-write", is_flag=True, help="Skip the artifact check (logs and deletes a dummy run).")
def doctor_command(config_path, tracking_uri, roots, log_level, as_json, timeout, no_write):
    """Check the tracking setup: config, journal roots, store, schema, artifact writes, storage, backlog.

    Exit codes: 0 healthy (warnings allowed), 2 config error, 3 the store is unreachable,
    1 any other failure.
    """
    setup_logging(log_level)
    report = run_doctor(config_path=config_path, roots=roots, tracking_uri=tracking_uri, timeout=timeout,
                        write=not no_write)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(report.render(), nl=False)
    sys.stdout.flush()
    return report.exit_code
