"""MLflow's public client (``MlflowClient``): :class:`MlflowApi`, and the API sink built on it.

:class:`MlflowApi` is the store seen through MLflow's client (experiments,
runs, ``log_batch``, artifacts, end status); :class:`MlflowSink` is the
:class:`~..sink.Sink` that sends every batch through it and keeps its
checkpoints in a file of its own (:func:`~.checkpoints.open_checkpoint_file`).
The bulk sink uses the same :class:`MlflowApi` for runs and artifacts.

Works for every tracking URI MLflow knows: ``sqlite:///``, ``postgresql://``
(direct), ``http(s)://`` (an ``mlflow server``). Idempotency is the contract
of :mod:`.sink`; here is how each part of a commit meets it:

* metrics keep the journal's timestamps, so a repeated ``log_batch`` hits
  MLflow's primary key (key, timestamp, step, value, is_nan) and is absorbed;
* params repeat with the same value (MLflow accepts that); replay filters
  params the run already has before sending (see ``replay.py``);
* tags and the end status overwrite; artifact files are rewritten with the
  same bytes;
* the checkpoint is written after all of the above returned.

Credentials come only from the environment (a password inside the tracking
URI, ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN``, ``AWS_*``). No message
this module raises carries them: :func:`~..uri.scrub` masks the URI's secrets and the
credential variables, and MLflow's "View run at <url>" lines (printed to
stdout by the REST client, URL credentials included) are switched off.

Opening a sink probes the store once with a short timeout
(:func:`probe_store`), so a stopped server or database is a prompt
:class:`StoreUnavailableError` instead of MLflow's minutes of retries.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

import mlflow  # noqa: F401  - the ingest side is where mlflow lives
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from formula_foundry.errors import StoreRejectedError, StoreUnavailableError
from formula_foundry.tracking.config import sqlite_path_of
from formula_foundry.tracking.events import TAG_RUN_ID
from formula_foundry.tracking.ingest.sink import Batch, Checkpoint, CheckpointStore, RunInfo, Sink
from formula_foundry.tracking.ingest.store_errors import store_errors
from formula_foundry.tracking.ingest.stores.engine import make_engine
from formula_foundry.tracking.ingest.stores.http import http_get
from formula_foundry.tracking.ingest.stores.store_init import ensure_sqlite_store
from formula_foundry.tracking.ingest.uri import is_http, redact, scheme

__all__ = ["MlflowApi", "MlflowSink", "probe_store", "quiet_mlflow_logs"]

log = logging.getLogger("formula_foundry.ingest")


def probe_store(tracking_uri: str, *, timeout: float = 10.0) -> str:
    """Check once, quickly, that a server or database answers; returns a short description.

    HTTP(S): ``GET /health`` without retries. SQL (not SQLite, a local file): connect and
    ``SELECT 1`` with a connect timeout. Raises :class:`StoreUnavailableError` (credentials
    scrubbed) when it does not answer; other URIs are not probed.
    """
    with store_errors(f"{redact(tracking_uri)} does not answer", tracking_uri):
        try:
            if is_http(tracking_uri):
                response = http_get(tracking_uri, "/health", timeout=timeout)
                if response.status_code >= 500:
                    raise StoreUnavailableError(f"GET /health answered HTTP {response.status_code}")
                return f"HTTP {response.status_code} from /health"
            if scheme(tracking_uri) in ("postgresql", "mysql", "mssql"):
                import sqlalchemy as sa

                engine = make_engine(tracking_uri, connect_timeout=timeout, read_only=True)
                try:
                    with engine.connect() as connection:
                        connection.execute(sa.text("SELECT 1"))
                finally:
                    engine.dispose()
                return "SELECT 1 answered"
            return "not probed"
        except (StoreUnavailableError, StoreRejectedError):
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to answer is "unavailable", said with its cause
            raise StoreUnavailableError(f"{type(exc).__name__}: {exc}"[:500]) from None


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "experiment"


class MlflowApi:
    """One tracking store through ``MlflowClient``: experiments, runs, batches, artifacts, end status.

    Every call goes through :func:`~..store_errors.store_errors`. Opening probes a
    server or database once (:func:`probe_store`) and creates a missing SQLite
    store safely (:func:`~.store_init.ensure_sqlite_store`).
    """

    def __init__(self, tracking_uri: str, *, artifact_root_uri: str | None,
                 sqlite_busy_timeout: float = 30.0) -> None:
        self.tracking_uri = tracking_uri
        self.display_uri = redact(tracking_uri)
        self.artifact_root_uri = artifact_root_uri
        self._is_http = is_http(tracking_uri)
        # The REST client prints "View run <name> at: <url>" to stdout on set_terminated: noise in
        # --json output, an extra request per run, and the URL carries any password in the URI.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        uri = tracking_uri
        db = sqlite_path_of(tracking_uri)
        if db is not None:
            ensure_sqlite_store(db, artifact_root_uri)
            if "timeout=" not in uri:
                uri += ("&" if "?" in uri else "?") + f"timeout={sqlite_busy_timeout:g}"
        else:
            probe_store(tracking_uri)  # a stopped server: fail now, not after MLflow's retries
        with store_errors("open the store", tracking_uri):
            self.client = MlflowClient(tracking_uri=uri)
        self._experiments: dict[str, str] = {}

    def _call(self, what: str, fn, *args, **kwargs):
        with store_errors(what, self.tracking_uri):
            return fn(*args, **kwargs)

    def experiment_id(self, name: str) -> str:
        cached = self._experiments.get(name)
        if cached:
            return cached
        exp = self._call(f"get experiment {name!r}", self.client.get_experiment_by_name, name)
        if exp is None:
            location = None
            if not self._is_http and self.artifact_root_uri:
                location = f"{self.artifact_root_uri.rstrip('/')}/{_slug(name)}"
            with store_errors(f"create experiment {name!r}", self.tracking_uri):
                try:
                    exp_id = self.client.create_experiment(name, artifact_location=location)
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # else: created meanwhile by another
                        raise
                    exp_id = self.client.get_experiment_by_name(name).experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                raise StoreRejectedError(f"experiment {name!r} (id {exp.experiment_id}) is deleted in MLflow; "
                                         "restore it (mlflow experiments restore) or remove it for good")
            exp_id = exp.experiment_id
        self._experiments[name] = exp_id
        return exp_id

    def find_run(self, run_id: str, experiment_id: str | None = None) -> RunInfo | None:
        if experiment_id is not None:
            experiment_ids = [experiment_id]
        else:
            experiments = self._call("list experiments", self.client.search_experiments, view_type=ViewType.ALL)
            experiment_ids = [e.experiment_id for e in experiments]
        if not experiment_ids:
            return None
        runs = self._call("search runs", self.client.search_runs, experiment_ids,
                          filter_string=f"tags.`{TAG_RUN_ID}` = '{run_id}'", run_view_type=ViewType.ALL,
                          max_results=2)
        if not runs:
            return None
        run = runs[0]
        if run.info.lifecycle_stage == "deleted":
            raise StoreRejectedError(f"MLflow run {run.info.run_id} (ff.run_id {run_id}) is deleted; restore it "
                                     "or delete it permanently (mlflow gc) to ingest again")
        return RunInfo(run.info.run_id, run.info.experiment_id)

    def create_run(self, *, experiment_id: str, run_id: str, run_name: str | None, start_time: int,
                   tags: dict[str, str]) -> RunInfo:
        run = self._call(f"create run {run_id}", self.client.create_run, experiment_id, start_time=start_time,
                         tags=tags, run_name=run_name)
        return RunInfo(run.info.run_id, run.info.experiment_id)

    def existing_params(self, mlflow_run_id: str) -> dict[str, str]:
        return dict(self._call("get run", self.client.get_run, mlflow_run_id).data.params)

    def log_batch(self, mlflow_run_id: str, batch: Batch) -> None:
        """The batch's metrics, params and tags in one ``log_batch`` (repeat-safe: see :mod:`..sink`)."""
        if batch.metrics or batch.params or batch.tags:
            self._call("log_batch", self.client.log_batch, mlflow_run_id,
                       metrics=[Metric(key, value, timestamp, step) for key, value, timestamp, step in batch.metrics],
                       params=[Param(k, v) for k, v in batch.params.items()],
                       tags=[RunTag(k, v) for k, v in batch.tags.items()], synchronous=True)

    def write_artifacts(self, mlflow_run_id: str, artifacts: dict[str, bytes]) -> None:
        """Write small files (artifact path -> content) into the run's artifact location."""
        with tempfile.TemporaryDirectory(prefix="ff-ingest-") as tmp:
            for artifact_path, content in artifacts.items():
                folder, _, name = artifact_path.rpartition("/")
                local = Path(tmp) / (folder.replace("/", "__") or "_root") / name
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(content)
                self._call(f"log artifact {artifact_path}", self.client.log_artifact, mlflow_run_id,
                           str(local), folder or None)

    def set_status(self, mlflow_run_id: str, status: str, end_time: int) -> None:
        self._call("set_terminated", self.client.set_terminated, mlflow_run_id, status, end_time)


class MlflowSink(Sink):
    """The API sink: every batch through :class:`MlflowApi`, then its checkpoint into ``checkpoints``."""

    kind = "api"

    def __init__(self, api: MlflowApi, checkpoints: CheckpointStore) -> None:
        self.api = api
        self.display_uri = api.display_uri
        self.checkpoints = checkpoints

    def experiment_id(self, name: str) -> str:
        return self.api.experiment_id(name)

    def find_run(self, run_id: str, experiment_id: str | None = None) -> RunInfo | None:
        return self.api.find_run(run_id, experiment_id)

    def create_run(self, *, experiment_id: str, run_id: str, run_name: str | None, start_time: int,
                   tags: dict[str, str]) -> RunInfo:
        return self.api.create_run(experiment_id=experiment_id, run_id=run_id, run_name=run_name,
                                   start_time=start_time, tags=tags)

    def existing_params(self, mlflow_run_id: str) -> dict[str, str]:
        return self.api.existing_params(mlflow_run_id)

    def commit(self, mlflow_run_id: str, batch: Batch, checkpoint: Checkpoint) -> None:
        self.api.log_batch(mlflow_run_id, batch)
        if batch.artifacts:
            self.api.write_artifacts(mlflow_run_id, batch.artifacts)
        if batch.end is not None:
            self.api.set_status(mlflow_run_id, *batch.end)
        self.checkpoints.put(checkpoint)

    def set_status(self, mlflow_run_id: str, status: str, end_time: int) -> None:
        self.api.set_status(mlflow_run_id, status, end_time)


def quiet_mlflow_logs() -> None:
    """MLflow and alembic log INFO chatter on every store open; the ingester reports for itself."""
    for name in ("mlflow", "alembic", "alembic.runtime.migration", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The SQL store logs a full traceback at ERROR before raising (e.g. "database is locked");
    # the ingester classifies the exception and reports it in one line, so keep stderr readable.
    logging.getLogger("mlflow.store").setLevel(logging.CRITICAL)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
