"""The API sink: MLflow's public client (``MlflowClient``) behind the :class:`~.sink.Sink` interface.

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
this module raises carries them: :func:`scrub` masks the URI's password and the
MLflow credential variables, and MLflow's "View run at <url>" lines (printed to
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
from urllib.parse import unquote, urlsplit

import mlflow  # noqa: F401  - the ingest side is where mlflow lives
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from formula_foundry.errors import StoreRejectedError, StoreUnavailableError
from formula_foundry.tracking.config import sqlite_path_of
from formula_foundry.tracking.events import TAG_RUN_ID
from formula_foundry.tracking.ingest.checkpoints import redact_uri
from formula_foundry.tracking.ingest.sink import Batch, Checkpoint, CheckpointStore, RunInfo
from formula_foundry.tracking.ingest.store_init import ensure_sqlite_store

__all__ = ["MlflowSink", "classify", "probe_store", "scrub"]

log = logging.getLogger("formula_foundry.ingest")

_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED", "ENDPOINT_NOT_FOUND"}
_TRANSIENT_TEXT = re.compile(
    r"database is locked|could not connect|connection refused|max retries exceeded|timed out|"
    r"failed to establish|server closed the connection|name or service not known|connection reset|"
    r"bad gateway|service unavailable|gateway timeout|API request to .* failed",
    re.IGNORECASE)


def classify(exc: BaseException) -> Exception:
    """Map an exception from MLflow or the network to StoreUnavailableError (retry) or StoreRejectedError."""
    code = getattr(exc, "error_code", "") or ""
    text = f"{type(exc).__name__}: {exc}"
    if code in _TRANSIENT_CODES or _TRANSIENT_TEXT.search(text) or isinstance(exc, (ConnectionError, OSError)):
        return StoreUnavailableError(text[:500])
    return StoreRejectedError(text[:1000])


def scrub(text: str, tracking_uri: str | None = None) -> str:
    """``text`` with the URI's password and MLflow's credential variables replaced by ``***``."""
    secrets: list[str] = []
    if tracking_uri:
        try:
            password = urlsplit(tracking_uri).password
        except ValueError:
            password = None
        if password:
            secrets += [password, unquote(password)]
    for name in ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        value = os.environ.get(name)
        if value and len(value) >= 4:
            secrets.append(value)
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def probe_store(tracking_uri: str, *, timeout: float = 10.0) -> str:
    """Check once, quickly, that a server or database answers; returns a short description.

    HTTP(S): ``GET /health`` without retries. SQL (not SQLite, a local file): connect and
    ``SELECT 1`` with a connect timeout. Raises :class:`StoreUnavailableError` (credentials
    scrubbed) when it does not answer; other URIs are not probed.
    """
    try:
        if tracking_uri.startswith(("http://", "https://")):
            from mlflow.utils.credentials import get_default_host_creds
            from mlflow.utils.rest_utils import http_request

            response = http_request(get_default_host_creds(tracking_uri), "/health", "GET", max_retries=0,
                                    backoff_factor=0, timeout=timeout, raise_on_status=False)
            if response.status_code >= 500:
                raise StoreUnavailableError(f"GET /health answered HTTP {response.status_code}")
            return f"HTTP {response.status_code} from /health"
        scheme = tracking_uri.split(":", 1)[0].split("+", 1)[0].lower()
        if scheme in ("postgresql", "mysql", "mssql"):
            import sqlalchemy

            connect_args = {"connect_timeout": max(1, int(timeout))} if scheme != "mssql" else {}
            engine = sqlalchemy.create_engine(tracking_uri, connect_args=connect_args,
                                              poolclass=sqlalchemy.pool.NullPool)
            try:
                with engine.connect() as connection:
                    connection.execute(sqlalchemy.text("SELECT 1"))
            finally:
                engine.dispose()
            return "SELECT 1 answered"
        return "not probed"
    except StoreUnavailableError as exc:
        raise StoreUnavailableError(scrub(str(exc), tracking_uri)) from None
    except Exception as exc:  # noqa: BLE001 - any failure to answer is "unavailable", said with its cause
        text = scrub(f"{type(exc).__name__}: {exc}", tracking_uri)
        raise StoreUnavailableError(f"{redact_uri(tracking_uri)} does not answer: {text[:500]}") from None


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "experiment"


class MlflowSink:
    """Writes batches through ``MlflowClient``; checkpoints go to ``checkpoints`` after each commit."""

    kind = "api"

    def __init__(self, tracking_uri: str, *, artifact_root_uri: str | None, checkpoints: CheckpointStore,
                 sqlite_busy_timeout: float = 30.0) -> None:
        self.tracking_uri = tracking_uri
        self.display_uri = redact_uri(tracking_uri)
        self.checkpoints = checkpoints
        self.artifact_root_uri = artifact_root_uri
        self._is_http = tracking_uri.startswith(("http://", "https://"))
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
        try:
            self.client = MlflowClient(tracking_uri=uri)
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy errors escape MlflowException too
            err = classify(exc)
            raise type(err)(scrub(str(err), tracking_uri)) from None
        self._experiments: dict[str, str] = {}

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StoreRejectedError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is classified, none is swallowed
            err = classify(exc)
            raise type(err)(scrub(f"{what}: {err}", self.tracking_uri)) from None

    # -- Sink ---------------------------------------------------------------------

    def experiment_id(self, name: str) -> str:
        cached = self._experiments.get(name)
        if cached:
            return cached
        exp = self._call(f"get experiment {name!r}", self.client.get_experiment_by_name, name)
        if exp is None:
            location = None
            if not self._is_http and self.artifact_root_uri:
                location = f"{self.artifact_root_uri.rstrip('/')}/{_slug(name)}"
            try:
                exp_id = self.client.create_experiment(name, artifact_location=location)
            except MlflowException as exc:
                if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                    err = classify(exc)
                    raise type(err)(scrub(str(err), self.tracking_uri)) from None
                exp_id = self._call("get experiment", self.client.get_experiment_by_name, name).experiment_id
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

    def commit(self, mlflow_run_id: str, batch: Batch, checkpoint: Checkpoint) -> None:
        if batch.metrics or batch.params or batch.tags:
            self._call("log_batch", self.client.log_batch, mlflow_run_id,
                       metrics=[Metric(key, value, timestamp, step) for key, value, timestamp, step in batch.metrics],
                       params=[Param(k, v) for k, v in batch.params.items()],
                       tags=[RunTag(k, v) for k, v in batch.tags.items()], synchronous=True)
        if batch.artifacts:
            self._write_artifacts(mlflow_run_id, batch.artifacts)
        if batch.end is not None:
            status, end_time = batch.end
            self._call("set_terminated", self.client.set_terminated, mlflow_run_id, status, end_time)
        self.checkpoints.put(checkpoint)

    def _write_artifacts(self, mlflow_run_id: str, artifacts: dict[str, bytes]) -> None:
        with tempfile.TemporaryDirectory(prefix="ff-ingest-") as tmp:
            for artifact_path, content in artifacts.items():
                folder, _, name = artifact_path.rpartition("/")
                local = Path(tmp) / (folder.replace("/", "__") or "_root") / name
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(content)
                self._call(f"log artifact {artifact_path}", self.client.log_artifact, mlflow_run_id,
                           str(local), folder or None)

    def set_status(self, mlflow_run_id: str, status: str, end_time: int) -> None:
        """Mark a run ended (used by the watch daemon for stale runs)."""
        self._call("set_terminated", self.client.set_terminated, mlflow_run_id, status, end_time)

    def close(self) -> None:
        close = getattr(self.checkpoints, "close", None)
        if close:
            close()


def quiet_mlflow_logs() -> None:
    """MLflow and alembic log INFO chatter on every store open; the ingester reports for itself."""
    for name in ("mlflow", "alembic", "alembic.runtime.migration", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The SQL store logs a full traceback at ERROR before raising (e.g. "database is locked");
    # the ingester classifies the exception and reports it in one line, so keep stderr readable.
    logging.getLogger("mlflow.store").setLevel(logging.CRITICAL)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
