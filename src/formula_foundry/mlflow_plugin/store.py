"""``JournalStore``: MLflow's tracking-store interface over the producer's journal (scheme ``ff-journal``).

``MLFLOW_TRACKING_URI=ff-journal:`` (the project configuration found as
``get_tracker()`` finds it: ``$FF_CONFIG``, else ``config/mlflow.yaml`` from the
working directory up) or ``ff-journal:PATH`` (a config file, or a project
folder holding ``config/mlflow.yaml``). MLflow builds one store per URI and
process (its registry caches it).

Writes
    Each run is a producer :class:`~formula_foundry.tracking.Run` started by a
    :class:`~formula_foundry.tracking.Tracker` of the configuration; every
    MLflow write becomes that run's journal record before the call returns:

    ================================  =============================================
    MLflow                            journal
    ================================  =============================================
    ``create_run``                    ``run_start`` (experiment by name, run name,
                                      tags; ``mlflow.parentRunId`` of a run of this
                                      process -> ``parent_run_id``)
    ``log_param`` / ``log_batch``     ``param`` / ``params``
    ``log_metric`` / ``log_batch``    ``metric`` / ``metrics`` (MLflow's timestamp
                                      as ``mts``; NaN and ±inf kept)
    ``set_tag`` / ``log_batch``       ``tag`` / ``tags``
    ``delete_tag``                    ``tag_delete``
    ``log_inputs`` (datasets)         ``inputs``
    ``update_run_info`` (terminal)    ``run_end`` with MLflow's status
    artifacts                         ``artifact`` (:mod:`.artifacts`)
    ================================  =============================================

    The run id MLflow hands back is the producer's run id (32 hex, MLflow's own
    format); the bulk sink of ``ff-ingest`` creates the MLflow run with it.
    Writing to a run that has ended, or to a run of another process whose
    journal lies under the journal roots, opens a journal *segment*
    (``Tracker.attach_run``), as the producer does.

Reads
    ``get_run``, ``get_experiment(_by_name)``, ``get_metric_history`` and the
    logged models of runs this process created are answered here (from memory;
    metric history from the run's own journals). Anything else goes, read-only,
    to the configured store (``tracking.backend_store_uri``) when it is there;
    otherwise :class:`~mlflow.exceptions.MlflowException` names the scheme and
    says to run ``ff-ingest``. Logging never touches the configured store.

Experiment ids
    ``"0"`` is the configuration's ``tracking.default_experiment``. Another
    experiment gets the configured store's id when that store is present and
    knows the name, else a local id ``ffj<12 hex of its name's sha256>``.
    Experiments travel in the journal by name (a run names its experiment), so
    an experiment with no run, and experiment tags, stay local.

Model registry
    Resolving the registry URI costs MLflow's fluent calls a failed ``import
    pyspark`` per call when none is set; the store sets it to the configured
    store (``mlflow.set_registry_uri``) when neither ``set_registry_uri`` nor
    ``MLFLOW_REGISTRY_URI`` chose one (see ``docs/mlflow-drop-in.md``).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import (
    Dataset,
    DatasetInput,
    Experiment,
    ExperimentTag,
    InputTag,
    LifecycleStage,
    LoggedModel,
    LoggedModelStatus,
    Metric,
    Param,
    Run,
    RunData,
    RunInfo,
    RunInputs,
    RunOutputs,
    RunStatus,
    RunTag,
    ViewType,
)
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    INVALID_STATE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)
from mlflow.store.entities.paged_list import PagedList
from mlflow.store.tracking.abstract_store import AbstractStore
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_MODELS, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_USER
from mlflow.utils.name_utils import _generate_random_name

from formula_foundry.errors import ConfigError, FormulaFoundryError, RunStateError, ValidationError
from formula_foundry.mlflow_plugin import ARTIFACT_SCHEME, SCHEME
from formula_foundry.tracking.config import CONFIG_RELPATH, Config, load_config, sqlite_path_of
from formula_foundry.tracking.events import RUN_STATUSES, TAG_RUN_ID, iter_metrics
from formula_foundry.tracking.journal import JOURNAL_SUFFIX, JournalReader
from formula_foundry.tracking.tracker import Tracker

__all__ = ["DEFAULT_EXPERIMENT_ID", "JournalStore", "RunState", "config_for_uri", "run_state", "writer_for"]

DEFAULT_EXPERIMENT_ID = "0"
_PREFIX = SCHEME + ":"


def config_for_uri(uri: str | None) -> Config:
    """The configuration ``ff-journal:[PATH]`` names (PATH: a config file or a project folder).

    ``MLFLOW_TRACKING_URI`` holding an ``ff-journal:`` URI is not the configured
    store's override (it names this plugin), so it is left out of the overrides.
    """
    rest = (uri or _PREFIX)[len(_PREFIX):] if (uri or _PREFIX).startswith(_PREFIX) else ""
    if rest.startswith("//"):
        rest = rest[2:]
    env = {k: v for k, v in os.environ.items()
           if not (k == "MLFLOW_TRACKING_URI" and v.startswith(_PREFIX))}
    path: Path | None = None
    if rest:
        path = Path(rest).expanduser()
        if path.is_dir():
            path = path / CONFIG_RELPATH
    try:
        return load_config(path, env=env)
    except ConfigError as exc:
        raise MlflowException(f"tracking URI {uri!r} ({SCHEME}:): {exc}", INVALID_PARAMETER_VALUE) from None


def _mlflow_error(exc: FormulaFoundryError) -> MlflowException:
    """The producer's refusal as MLflow's exception type (callers catch ``MlflowException``)."""
    if isinstance(exc, ValidationError):
        return MlflowException(str(exc), INVALID_PARAMETER_VALUE)
    return MlflowException(str(exc), INVALID_STATE)


def local_experiment_id(name: str) -> str:
    """The id of an experiment that only this process knows: stable across processes."""
    return "ffj" + hashlib.sha256(name.encode()).hexdigest()[:12]


def artifact_uri_of(run_id: str) -> str:
    return f"{ARTIFACT_SCHEME}:/{run_id}"


# --------------------------------------------------------------------------- runs of this process

class RunState:
    """What this process knows of one run: its producer run (or segment) and the answers to reads."""

    __slots__ = ("artifact_uri", "datasets", "end_time", "experiment_id", "latest", "lifecycle_stage",
                 "lock", "model_inputs", "outputs", "owner", "params", "run_dir", "run_id", "run_name",
                 "segment", "start_time", "status", "tags", "tracker", "user_id", "writer")

    def __init__(self, *, run_id: str, experiment_id: str, run_name: str | None, user_id: str,
                 start_time: int, tracker: Tracker, owner: Any, segment: Any = None,
                 run_dir: Path | None = None) -> None:
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.run_name = run_name
        self.user_id = user_id
        self.start_time = start_time
        self.end_time: int | None = None
        self.status = "RUNNING"
        self.lifecycle_stage = LifecycleStage.ACTIVE
        self.artifact_uri = artifact_uri_of(run_id)
        self.tracker = tracker
        self.owner = owner  # the producer Run (or NoopRun) that wrote run_start; None: another process's
        self.segment = segment  # an attached segment, for writes after the owner ended
        self.writer = owner if owner is not None else segment  # where the next record goes
        self.run_dir = run_dir if run_dir is not None else getattr(owner, "run_dir", None)
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.latest: dict[str, tuple] = {}  # metric key -> (step, timestamp, value): MLflow's latest rule
        self.datasets: list[DatasetInput] = []
        self.model_inputs: list = []
        self.outputs: list = []
        self.lock = threading.Lock()

    def to_mlflow(self) -> Run:
        info = RunInfo(run_id=self.run_id, experiment_id=self.experiment_id, user_id=self.user_id,
                       status=self.status, start_time=self.start_time, end_time=self.end_time,
                       lifecycle_stage=self.lifecycle_stage, artifact_uri=self.artifact_uri,
                       run_name=self.run_name)
        data = RunData(metrics=[Metric(key, value, timestamp, step)
                                for key, (step, timestamp, value) in list(self.latest.items())],
                       params=[Param(k, v) for k, v in self.params.items()],
                       tags=[RunTag(k, v) for k, v in self.tags.items()])
        inputs = RunInputs(dataset_inputs=list(self.datasets), model_inputs=list(self.model_inputs))
        return Run(info, data, inputs,
                   RunOutputs(model_outputs=list(self.outputs)) if self.outputs else None)

    def journals(self) -> list[Path]:
        """This run's journal files (its own and every segment), oldest first."""
        if self.run_dir is None:
            return []
        folder = Path(self.run_dir) / "tracking"
        return sorted(folder.glob(f"{self.run_id}.*{JOURNAL_SUFFIX}"), key=lambda p: p.stat().st_mtime_ns)


# Process-wide: run ids are unique, and the artifact repository finds its run here.
_RUNS: dict[str, RunState] = {}
_RUNS_LOCK = threading.RLock()


def run_state(run_id: str) -> RunState | None:
    """The state of a run this process logs to, or None."""
    return _RUNS.get(run_id)


def writer_for(run_id: str, config: Config) -> tuple[RunState, Any]:
    """The run's state and where its next record goes.

    The producer run while it is active; once it ended (MLflow still takes data for an
    ended run), a segment of this process (``Tracker.attach_run``); for a run of another
    process, a segment next to its journal under the journal roots.
    """
    state = _RUNS.get(run_id)
    if state is not None:
        writer = state.writer
        if writer is not None and writer.status is None:
            return state, writer
    with _RUNS_LOCK:
        state = _RUNS.get(run_id)
        if state is None:
            state = _attach_foreign(run_id, config)
        writer = state.writer
        if writer is None or writer.status is not None:
            try:
                writer = Tracker(config).attach_run(run_id, run_dir=state.run_dir)
                state.segment = state.writer = writer
            except FormulaFoundryError as exc:
                raise _mlflow_error(exc) from None
        return state, writer


def _attach_foreign(run_id: str, config: Config) -> RunState:
    tracker = Tracker(config)
    try:
        segment = tracker.attach_run(run_id)
    except (RunStateError, ValidationError):
        raise MlflowException(
            f"run {run_id} is not a run of this process and has no journal under "
            f"{', '.join(map(str, config.journal_roots))}; {SCHEME}: logs only to journal runs",
            RESOURCE_DOES_NOT_EXIST) from None
    except FormulaFoundryError as exc:
        raise _mlflow_error(exc) from None
    state = RunState(run_id=run_id, experiment_id=DEFAULT_EXPERIMENT_ID, run_name=None, user_id="unknown",
                     start_time=int(time.time() * 1000), tracker=tracker, owner=None, segment=segment,
                     run_dir=segment.run_dir)
    _RUNS[run_id] = state
    return state


class JournalStore(AbstractStore):
    """MLflow's tracking store for ``ff-journal:`` URIs (see the module docstring)."""

    def __init__(self, store_uri: str | None = None, artifact_uri: str | None = None) -> None:
        super().__init__()
        self.uri = store_uri or _PREFIX
        self.config = config_for_uri(self.uri)
        self.default_experiment = self.config.tracking.default_experiment
        now = int(time.time() * 1000)
        self._experiments: dict[str, Experiment] = {}
        self._names: dict[str, str] = {}  # experiment name -> id
        self._remember(Experiment(DEFAULT_EXPERIMENT_ID, self.default_experiment, self._exp_location("0"),
                                  LifecycleStage.ACTIVE, [], now, now))
        self._models: dict[str, LoggedModel] = {}
        self._real_store: AbstractStore | None = None
        self._real_error: str | None = None
        self._lock = threading.RLock()
        _use_configured_registry(self.config)

    # -- helpers --------------------------------------------------------------------

    @staticmethod
    def _exp_location(experiment_id: str) -> str:
        return f"{ARTIFACT_SCHEME}:/experiments/{experiment_id}"

    def _remember(self, experiment: Experiment) -> Experiment:
        self._experiments[experiment.experiment_id] = experiment
        self._names[experiment.name] = experiment.experiment_id
        return experiment

    def _writer(self, run_id: str) -> tuple[RunState, Any]:
        return writer_for(run_id, self.config)

    def _own(self, run_id: str) -> RunState | None:
        state = _RUNS.get(run_id)
        return state if state is not None and state.owner is not None else None

    # -- the configured store, read-only ----------------------------------------------

    def _real(self, what: str) -> AbstractStore:
        """The configured store for reads; a clear error when it is not there."""
        store = self._try_real()
        if store is None:
            raise MlflowException(
                f"{what}: {SCHEME}: answers only for runs this process logged, and the configured store "
                f"is not available ({self._real_error}). Run ff-ingest to fill it, or read with "
                "MLFLOW_TRACKING_URI set to the store", TEMPORARILY_UNAVAILABLE)
        return store

    def _try_real(self) -> AbstractStore | None:
        with self._lock:
            if self._real_store is not None or self._real_error is not None:
                return self._real_store
            from formula_foundry.tracking.ingest.uri import is_http, redact

            uri = self.config.tracking.backend_store_uri
            db = sqlite_path_of(uri)
            try:
                if db is not None and not db.is_file():
                    raise FileNotFoundError(f"{db} does not exist")
                if is_http(uri):
                    from formula_foundry.tracking.ingest.stores.mlflow_api import probe_store

                    probe_store(uri, timeout=3.0)
                from mlflow.tracking._tracking_service.utils import _get_store

                self._real_store = _get_store(uri, self.config.tracking.artifact_root)
            except Exception as exc:  # noqa: BLE001 - any failure: "not available", said with its cause
                self._real_error = f"{redact(uri)}: {type(exc).__name__}: {exc}"[:500]
            return self._real_store

    def _real_experiment_ids(self, experiment_ids: Iterable[str]) -> list[str]:
        """Local experiment ids as the configured store's ids (by name)."""
        store = self._real("search runs")
        out = []
        for exp_id in experiment_ids:
            local = self._experiments.get(str(exp_id))
            if local is None:
                out.append(str(exp_id))
                continue
            real = store.get_experiment_by_name(local.name)
            if real is not None:
                out.append(real.experiment_id)
        return out

    # -- experiments -------------------------------------------------------------------

    def create_experiment(self, name, artifact_location=None, tags=None):
        if not isinstance(name, str) or not name.strip():
            raise MlflowException("Invalid experiment name: experiment names must be non-empty strings",
                                  INVALID_PARAMETER_VALUE)
        with self._lock:
            if name in self._names:
                raise MlflowException(f"Experiment(name={name}) already exists.", RESOURCE_ALREADY_EXISTS)
            now = int(time.time() * 1000)
            exp_id = local_experiment_id(name)
            return self._remember(Experiment(exp_id, name, artifact_location or self._exp_location(exp_id),
                                             LifecycleStage.ACTIVE, list(tags or []), now, now)).experiment_id

    def get_experiment(self, experiment_id):
        experiment = self._experiments.get(str(experiment_id))
        if experiment is not None:
            return experiment
        return self._real(f"get experiment {experiment_id}").get_experiment(experiment_id)

    def get_experiment_by_name(self, experiment_name):
        exp_id = self._names.get(experiment_name)
        if exp_id is not None:
            return self._experiments[exp_id]
        # Known to the configured store (when it is there): take its id, so ids agree after ingest.
        store = self._try_real()
        if store is not None:
            try:
                real = store.get_experiment_by_name(experiment_name)
            except Exception:  # noqa: BLE001 - a read that fails only means "not known here"
                real = None
            if real is not None and real.lifecycle_stage == LifecycleStage.ACTIVE \
                    and real.experiment_id not in self._experiments:
                with self._lock:
                    return self._remember(Experiment(real.experiment_id, experiment_name,
                                                     self._exp_location(real.experiment_id),
                                                     LifecycleStage.ACTIVE, [], real.creation_time,
                                                     real.last_update_time))
        return None

    def search_experiments(self, view_type=ViewType.ACTIVE_ONLY, max_results=None, filter_string=None,
                           order_by=None, page_token=None):
        store = self._real("search experiments")
        kwargs = {"view_type": view_type, "filter_string": filter_string, "order_by": order_by,
                  "page_token": page_token}
        if max_results is not None:
            kwargs["max_results"] = max_results
        return store.search_experiments(**kwargs)

    def set_experiment_tag(self, experiment_id, tag):
        experiment = self._experiments.get(str(experiment_id))
        if experiment is None:
            raise MlflowException(f"experiment {experiment_id} is not one of this process ({SCHEME}: keeps "
                                  "experiment tags in memory only)", RESOURCE_DOES_NOT_EXIST)
        experiment._tags[tag.key] = tag.value

    def delete_experiment_tag(self, experiment_id, key):
        experiment = self._experiments.get(str(experiment_id))
        if experiment is not None:
            experiment._tags.pop(key, None)

    def delete_experiment(self, experiment_id):
        raise _unsupported("delete_experiment")

    def restore_experiment(self, experiment_id):
        raise _unsupported("restore_experiment")

    def rename_experiment(self, experiment_id, new_name):
        raise _unsupported("rename_experiment")

    # -- runs --------------------------------------------------------------------------

    def create_run(self, experiment_id, user_id, start_time, tags, run_name):
        experiment = self.get_experiment(experiment_id)
        if experiment.lifecycle_stage != LifecycleStage.ACTIVE:
            raise MlflowException(f"The experiment {experiment_id} must be in the 'active' state.",
                                  INVALID_STATE)
        tag_map = {t.key: t.value for t in tags or []}
        name_tag = tag_map.get(MLFLOW_RUN_NAME)
        if run_name and name_tag and run_name != name_tag:
            raise MlflowException(
                "Both 'run_name' argument and 'mlflow.runName' tag are specified, but with different values "
                f"(run_name='{run_name}', mlflow.runName='{name_tag}').", INVALID_PARAMETER_VALUE)
        run_name = run_name or name_tag or _generate_random_name()
        tag_map[MLFLOW_RUN_NAME] = run_name
        parent_id = tag_map.get(MLFLOW_PARENT_RUN_ID)
        parent = _RUNS.get(parent_id) if parent_id else None
        tracker = Tracker(self.config)
        nested = parent is not None and parent.owner is not None and getattr(parent.owner, "run_dir", None)
        if nested:
            # A tracker per run (MLflow runs need no stack); the parent on it makes this its child run.
            tracker._stack.append(parent.owner)  # noqa: SLF001 - the producer's nesting, seeded
        try:
            run = tracker.start_run(run_name=run_name, experiment_name=experiment.name, nested=bool(nested),
                                    tags=tag_map)
        except FormulaFoundryError as exc:
            raise _mlflow_error(exc) from None
        finally:
            if nested:
                tracker._pop(parent.owner)  # noqa: SLF001
        state = RunState(run_id=run.run_id, experiment_id=experiment.experiment_id, run_name=run_name,
                         user_id=user_id or tag_map.get(MLFLOW_USER, "unknown"), start_time=start_time,
                         tracker=tracker, owner=run)
        state.tags = dict(tag_map)
        state.tags[TAG_RUN_ID] = run.run_id
        with _RUNS_LOCK:
            _RUNS[run.run_id] = state
        return state.to_mlflow()

    def get_run(self, run_id):
        state = _RUNS.get(run_id)
        if state is not None and state.owner is not None:
            return state.to_mlflow()
        return self._real(f"get run {run_id}").get_run(run_id)

    def update_run_info(self, run_id, run_status, end_time, run_name):
        state = _RUNS.get(run_id)
        if state is None or (run_name and run_name != state.run_name):
            state, writer = self._writer(run_id)
            if run_name and run_name != state.run_name:
                self._set_tags(state, writer, {MLFLOW_RUN_NAME: run_name})
        status = RunStatus.to_string(run_status) if isinstance(run_status, int) else str(run_status)
        with state.lock:
            if status in RUN_STATUSES:
                for producer in (state.owner, state.segment):
                    if producer is not None and producer.status is None:
                        try:
                            producer.end(status)
                        except FormulaFoundryError as exc:
                            raise _mlflow_error(exc) from None
                state.end_time = end_time
            state.status = status
        return state.to_mlflow().info

    def delete_run(self, run_id):
        raise _unsupported("delete_run")

    def restore_run(self, run_id):
        raise _unsupported("restore_run")

    # -- logging: the hot path ---------------------------------------------------------------

    def log_metric(self, run_id, metric):
        state = _RUNS.get(run_id)
        writer = state.writer if state is not None else None
        if writer is None or writer.status is not None:
            state, writer = self._writer(run_id)
        key, value, step, timestamp = metric.key, metric.value, metric.step, metric.timestamp
        try:
            writer.log_metric(key, value, step, timestamp)
        except FormulaFoundryError as exc:
            raise _mlflow_error(exc) from None
        point = (step, timestamp, value)
        latest = state.latest
        current = latest.get(key)
        if current is None or point > current:
            latest[key] = point

    def log_param(self, run_id, param):
        self.log_batch(run_id, (), (param,), ())

    def set_tag(self, run_id, tag):
        state, writer = self._writer(run_id)
        self._set_tags(state, writer, {tag.key: tag.value})

    def log_batch(self, run_id, metrics, params, tags):
        state, writer = self._writer(run_id)
        try:
            if params:
                values = {p.key: p.value for p in params}
                writer.log_params(values)
                state.params.update((k, str(v)) for k, v in values.items())
            if metrics:
                self._log_metrics(state, writer, metrics)
        except FormulaFoundryError as exc:
            raise _mlflow_error(exc) from None
        if tags:
            self._set_tags(state, writer, {t.key: t.value for t in tags})

    def _log_metrics(self, state: RunState, writer: Any, metrics) -> None:
        """Points sharing step and timestamp (with distinct keys) go as one ``metrics`` record."""
        groups: dict[tuple[int, int], dict[str, Any]] = {}
        single: list = []
        for m in metrics:
            group = groups.setdefault((m.step or 0, m.timestamp), {})
            if m.key in group:
                single.append(m)  # the same key twice at one step and time: MLflow keeps both
            else:
                group[m.key] = m.value
        for (step, timestamp), values in groups.items():
            if len(values) == 1:
                ((key, value),) = values.items()
                writer.log_metric(key, value, step, timestamp)
            else:
                writer.log_metrics(values, step, timestamp)
        for m in single:
            writer.log_metric(m.key, m.value, m.step or 0, m.timestamp)
        latest = state.latest
        for m in metrics:
            point = (m.step or 0, m.timestamp, m.value)
            current = latest.get(m.key)
            if current is None or point > current:
                latest[m.key] = point

    def _set_tags(self, state: RunState, writer: Any, tags: Mapping[str, Any]) -> None:
        try:
            if len(tags) == 1:
                ((key, value),) = tags.items()
                writer.set_tag(key, value)
            else:
                writer.set_tags(tags)
        except FormulaFoundryError as exc:
            raise _mlflow_error(exc) from None
        state.tags.update((k, str(v)) for k, v in tags.items())
        if MLFLOW_RUN_NAME in tags:
            state.run_name = str(tags[MLFLOW_RUN_NAME])

    def delete_tag(self, run_id, key):
        state, writer = self._writer(run_id)
        if state.owner is not None and key not in state.tags:
            raise MlflowException(f"No tag with name: {key} in run with id {run_id}", RESOURCE_DOES_NOT_EXIST)
        try:
            writer.delete_tag(key)
        except FormulaFoundryError as exc:
            raise _mlflow_error(exc) from None
        state.tags.pop(key, None)

    def log_inputs(self, run_id, datasets=None, models=None):
        state, writer = self._writer(run_id)
        if datasets:
            entries = [{"name": d.dataset.name, "digest": d.dataset.digest,
                        "source_type": d.dataset.source_type, "source": d.dataset.source,
                        "schema": d.dataset.schema, "profile": d.dataset.profile,
                        "tags": {t.key: t.value for t in d.tags or []}} for d in datasets]
            try:
                writer.log_inputs(entries)
            except FormulaFoundryError as exc:
                raise _mlflow_error(exc) from None
            known = {(d.dataset.name, d.dataset.digest) for d in state.datasets}
            state.datasets += [d for d in datasets if (d.dataset.name, d.dataset.digest) not in known]
        if models:
            state.model_inputs += list(models)

    def log_outputs(self, run_id, models):
        state, _ = self._writer(run_id)
        state.outputs += list(models)

    def record_logged_model(self, run_id, mlflow_model):
        import json

        state, writer = self._writer(run_id)
        history = json.loads(state.tags.get(MLFLOW_LOGGED_MODELS, "[]")) + [mlflow_model.get_tags_dict()]
        self._set_tags(state, writer, {MLFLOW_LOGGED_MODELS: json.dumps(history)})

    # -- reads of this process's runs ------------------------------------------------------------

    def get_metric_history(self, run_id, metric_key, max_results=None, page_token=None):
        state = _RUNS.get(run_id)
        if state is None or state.owner is None:
            return self._real(f"get metric history of run {run_id}").get_metric_history(
                run_id, metric_key, max_results=max_results, page_token=page_token)
        points = []
        for path in state.journals():
            for chunk in JournalReader(path).chunks():
                for record in chunk.records:
                    if record["type"] in ("metric", "metrics"):
                        points += [Metric(p.key, p.value, p.timestamp, p.step) for p in iter_metrics(record)
                                   if p.key == metric_key]
        if max_results is not None:
            points = points[:max_results]
        return PagedList(points, None)

    def search_runs(self, experiment_ids, filter_string, run_view_type, max_results=1000, order_by=None,
                    page_token=None):
        store = self._real("search runs")
        return store.search_runs(self._real_experiment_ids(experiment_ids), filter_string, run_view_type,
                                 max_results, order_by, page_token)

    def _search_runs(self, experiment_ids, filter_string, run_view_type, max_results, order_by, page_token):
        store = self._real("search runs")
        return store._search_runs(self._real_experiment_ids(experiment_ids), filter_string, run_view_type,
                                  max_results, order_by, page_token)

    # -- logged models (MLflow 3): local entities, their files in the run's artifacts -------------

    def create_logged_model(self, experiment_id, name=None, source_run_id=None, tags=None, params=None,
                            model_type=None):
        import uuid

        if source_run_id is None or source_run_id not in _RUNS:
            raise MlflowException(
                f"{SCHEME}: a model can be logged only inside a run of this process (its files go into the "
                "run's artifacts)", INVALID_PARAMETER_VALUE)
        name = name or _generate_random_name()
        now = int(time.time() * 1000)
        model_id = f"m-{uuid.uuid4().hex}"
        model = LoggedModel(experiment_id=str(experiment_id), model_id=model_id, name=name,
                            artifact_location=f"{artifact_uri_of(source_run_id)}/{name}",
                            creation_timestamp=now, last_updated_timestamp=now, model_type=model_type,
                            source_run_id=source_run_id, status=LoggedModelStatus.PENDING,
                            tags={t.key: t.value for t in tags or []},
                            params={p.key: p.value for p in params or []})
        self._models[model_id] = model
        return model

    def get_logged_model(self, model_id, allow_deleted=False):
        model = self._models.get(model_id)
        if model is not None:
            return model
        return self._real(f"get logged model {model_id}").get_logged_model(model_id)

    def finalize_logged_model(self, model_id, status):
        model = self.get_logged_model(model_id)
        model._status = status
        return model

    def set_logged_model_tags(self, model_id, tags):
        model = self.get_logged_model(model_id)
        model._tags.update({t.key: t.value for t in tags})

    def delete_logged_model_tag(self, model_id, key):
        self.get_logged_model(model_id)._tags.pop(key, None)

    def log_logged_model_params(self, model_id, params):
        self.get_logged_model(model_id)._params.update({p.key: p.value for p in params})

    def search_logged_models(self, experiment_ids, filter_string=None, datasets=None, max_results=None,
                             order_by=None, page_token=None):
        """This process's models (filtered by ``name = '...'`` when that is the filter), then the
        configured store's when it is there (MLflow asks on every ``runs:/`` listing)."""
        import re

        wanted = {str(e) for e in experiment_ids}
        local = [m for m in self._models.values() if m.experiment_id in wanted]
        match = re.fullmatch(r"\s*name\s*=\s*'([^']*)'\s*", filter_string or "")
        if match:
            local = [m for m in local if m.name == match.group(1)]
        store = self._try_real()
        if store is None or page_token is not None and local:
            return PagedList(local, None)
        real = store.search_logged_models(self._real_experiment_ids(experiment_ids), filter_string, datasets,
                                          max_results, order_by, page_token)
        return PagedList((local if page_token is None else []) + list(real), real.token)

    def link_traces_to_run(self, trace_ids, run_id):
        raise _unsupported("link_traces_to_run")


def _unsupported(what: str) -> MlflowException:
    return MlflowException(f"{what} is not supported through {SCHEME}: (it journals logging only); do it on "
                           "the configured store after ff-ingest", INVALID_STATE)


def _use_configured_registry(config: Config) -> None:
    """Set MLflow's registry URI to the configured store unless the user chose one.

    Without a registry URI MLflow resolves it on every fluent call (``MlflowClient()``),
    trying a Spark session each time: a failed ``import pyspark`` per call.
    """
    from mlflow.environment_variables import MLFLOW_REGISTRY_URI
    from mlflow.tracking._model_registry import utils as registry_utils

    if registry_utils._registry_uri is None and not MLFLOW_REGISTRY_URI.get():
        registry_utils.set_registry_uri(config.tracking.backend_store_uri)
