"""Seed 001's tracking API over the journal: ``get_tracker()``, :class:`Tracker`, :class:`Run`.

Every logging call validates its input (:mod:`.validation`), then appends one
record to the run's journal (:mod:`.journal`) and returns: no MLflow, no
network, no background thread. ``ff-ingest`` later replays the journal into
MLflow.

Where journals go
    ``start_run(run_artifacts=ra)`` writes into ``ra.run_dir/tracking/``; a
    nested run without ``run_artifacts`` shares its parent's run directory;
    any other run gets a fresh run directory under ``journal.root`` (default
    ``data/runs``). The file is ``<run_id>.<journal_id>.jsonl``.

Run ids
    ``run.run_id`` is a 32-hex id chosen by the producer. MLflow chooses its
    own run ids, so the ingester stores ours as the tag ``ff.run_id``;
    ``docs/viewing-results.md`` shows how to look a run up by it.
"""

from __future__ import annotations

import atexit
import getpass
import os
import re
import socket
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from formula_foundry.errors import RunStateError, ValidationError
from formula_foundry.substrate import ArtifactStore, RunArtifacts, init_run_dir
from formula_foundry.tracking.artifacts import ArtifactLog
from formula_foundry.tracking.config import Config, load_config
from formula_foundry.tracking.events import (
    FORMAT_VERSION,
    TAG_RUN_ID,
    TAG_SUBSTRATE_RUN_DIR,
    TAG_SUBSTRATE_RUN_ID,
    manifest_tags,
)
from formula_foundry.tracking.journal import JOURNAL_SUFFIX, JournalWriter
from formula_foundry.tracking.validation import (
    MAX_MEDIA_TYPE_LENGTH,
    MAX_STORE_URI_LENGTH,
    RUN_NAME_TAG,
    artifact_digest,
    artifact_logical_path,
    artifact_size,
    artifact_text,
    check_key,
    check_step,
    check_timestamp,
    experiment_name as check_experiment_name,
    metric_value,
    param_value,
    run_name as check_run_name,
    tag_value,
)

__all__ = ["NoopRun", "Run", "Tracker", "get_tracker"]


def _slug(text: str) -> str:
    """A run name as part of a substrate run id: ``[A-Za-z0-9._-]`` only, no ``..`` (so always a safe
    id, whatever the free-text name: ``sweep 0..10`` -> ``sweep-0.10``)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text)
    slug = re.sub(r"\.{2,}", ".", slug).strip("-._")[:60]
    return slug or "run"


class Run:
    """One tracked run, writing one journal segment. Use it as a context manager."""

    def __init__(self, tracker: Tracker, *, run_id: str, run_name: str | None, experiment_name: str | None,
                 run_dir: Path, parent: Run | None, owner: bool) -> None:
        self._tracker = tracker
        self.run_id = run_id
        self.run_name = run_name
        self.experiment_name = experiment_name
        self.run_dir = run_dir
        self.parent_run_id = parent.run_id if parent is not None else None
        self.journal_id = uuid.uuid4().hex[:16]
        self.journal_path = run_dir / "tracking" / f"{run_id}.{self.journal_id}{JOURNAL_SUFFIX}"
        self.owner = owner
        self.status: str | None = None
        cfg = tracker.config.journal
        self._writer = JournalWriter(self.journal_path, fsync=cfg.fsync,
                                     fsync_interval=cfg.fsync_interval_seconds, on_error=cfg.on_write_error)
        self._append = self._writer.append
        self._append_record = self._writer.append_record
        self._params: dict[str, str] = {}
        self._metric_keys: set[str] = set()
        self._artifact_log: ArtifactLog | None = None  # made at the first artifact call (uses self._lock)
        self._ref_files: set[str] = set()  # artifact reference documents written ("<path>.json")
        self._ref_dirs: set[str] = set()  # and the folders they are in
        self._lock = threading.Lock()
        self._telemetry_stops: list[Any] = []  # system metrics / console capture: stopped before run_end

    # -- seed 001 API ---------------------------------------------------------------

    def log_param(self, key: str, value: Any) -> None:
        """Log a param. The same value again is a no-op; a different value is an error."""
        self.log_params({key: value})

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log several params in one record (all validated before anything is written)."""
        values = {check_key(k, "param"): param_value(k, v) for k, v in params.items()}
        with self._lock:
            new = {}
            for key, text in values.items():
                old = self._params.get(key)
                if old is None:
                    new[key] = text
                elif old != text:
                    raise ValidationError(
                        f"param {key!r} was already logged in run {self.run_id} with value {old!r}; "
                        f"a param has one value per run (got {text!r}). Log a metric or a tag for "
                        "values that change", key=key, rule="param-conflict")
            if not new:
                if self.status is not None:  # nothing to write, but logging to an ended run is an error
                    raise RunStateError(f"run {self.run_id} has ended; it takes no more params")
                return
            if len(new) == 1:
                ((key, text),) = new.items()
                self._append("param", {"key": key, "value": text})
            else:
                self._append("params", {"values": new})
            self._params.update(new)

    def log_metric(self, key: str, value: float, step: int | None = None,
                   timestamp: int | None = None) -> None:
        """Log one metric point. NaN and ±inf are kept exactly."""
        if type(key) is not str or key not in self._metric_keys:  # str first: a list key is unhashable
            self._metric_keys.add(check_key(key, "metric"))
        # Fast path: a finite float (inf - inf and nan - nan are nan, which != 0.0).
        if type(value) is not float or value - value != 0.0:
            value = metric_value(key, value)
        if step is None:
            step = 0
        elif type(step) is not int or not -0x8000000000000000 <= step <= 0x7FFFFFFFFFFFFFFF:
            step = check_step(key, step)
        if timestamp is None:
            self._append_record({"v": FORMAT_VERSION, "seq": 0, "ts": 0, "type": "metric",
                                 "key": key, "value": value, "step": step})
        else:
            self._append("metric", {"key": key, "value": value, "step": step,
                                    "mts": check_timestamp(key, timestamp)})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None,
                    timestamp: int | None = None) -> None:
        """Log several metrics at one step in one record."""
        values = {check_key(k, "metric"): metric_value(k, v) for k, v in metrics.items()}
        if not values:
            return
        keys = ", ".join(values)  # errors about the shared step/timestamp name every key of the call
        fields: dict[str, Any] = {"values": values, "step": 0 if step is None else check_step(keys, step)}
        if timestamp is not None:
            fields["mts"] = check_timestamp(keys, timestamp)
        self._append("metrics", fields)

    def set_tag(self, key: str, value: Any) -> None:
        """Set a tag; a later value for the same key replaces the earlier one."""
        self._append("tag", {"key": check_key(key, "tag"), "value": tag_value(key, value)})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        values = {check_key(k, "tag"): tag_value(k, v) for k, v in tags.items()}
        if values:
            self._append("tags", {"values": values})

    def delete_tag(self, key: str) -> None:
        """Remove a tag from the run (MLflow's ``delete_tag``): one ``tag_delete`` record."""
        self._append("tag_delete", {"key": check_key(key, "tag")})

    def log_inputs(self, datasets: list[Mapping[str, Any]]) -> None:
        """Record dataset inputs (MLflow's ``log_inputs``) in one ``inputs`` record.

        Each dataset: ``name``, ``digest``, ``source_type``, ``source`` (non-empty strings),
        optional ``schema`` and ``profile`` (strings), ``tags`` (string -> string), within
        MLflow's dataset limits.
        """
        entries = [_dataset(d) for d in datasets]
        if entries:
            self._append("inputs", {"datasets": entries})

    def log_manifest(self, manifest: Any) -> None:
        """Record the substrate manifest: its fields as tags, the whole as ``manifest.json``."""
        data, tags = _manifest_parts(manifest)
        self.set_tags(tags)
        self._append("manifest", {"manifest": data})

    def log_artifact_reference(self, logical_path: str, digest: str, size_bytes: int, *,
                               store_uri: str | None = None, media_type: str | None = None) -> None:
        """Record a reference to an artifact in the substrate store (REQ-M3-005).

        The ingester writes it as a small JSON file under ``artifact_refs/`` in the
        run's artifacts; the artifact itself is never copied.
        """
        norm = artifact_logical_path(logical_path)
        digest_hex = artifact_digest(digest)
        size = artifact_size(size_bytes)
        store_uri = artifact_text("store_uri", store_uri, MAX_STORE_URI_LENGTH)
        media_type = artifact_text("media_type", media_type, MAX_MEDIA_TYPE_LENGTH)
        # The document "<path>.json" and the folders above it must not collide with another
        # reference of this run ("a", then "a.json/b"): MLflow cannot make a folder where a file is.
        doc = f"{norm}.json"
        folders = [norm[:i] for i, c in enumerate(norm) if c == "/"]
        with self._lock:
            clash = doc if doc in self._ref_dirs else next((f for f in folders if f in self._ref_files), None)
            if clash is not None:
                raise ValidationError(
                    f"artifact reference: logical_path {logical_path!r} collides with another reference of "
                    f"this run: artifact_refs/{clash} would have to be both a file and a folder",
                    key="logical_path", rule="artifact-path")
            self._append("artifact_ref", {"logical_path": norm, "digest": digest_hex, "size_bytes": size,
                                          "store_uri": store_uri, "media_type": media_type})
            self._ref_files.add(doc)
            self._ref_dirs.update(folders)

    # -- real artifacts: MLflow's calls, snapshotted into the store (artifacts.py) ---

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """``mlflow.log_artifact``: a file (or a folder) to ``artifact_path/<name>``, copied now."""
        self._artifacts().log_artifact(local_path, artifact_path)

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        """``mlflow.log_artifacts``: every file under ``local_dir``, under ``artifact_path``."""
        self._artifacts().log_artifacts(local_dir, artifact_path)

    def log_dict(self, dictionary: Any, artifact_file: str) -> None:
        """``mlflow.log_dict``: JSON, or YAML for ``.yml``/``.yaml``."""
        self._artifacts().log_dict(dictionary, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        """``mlflow.log_text``: the text as UTF-8."""
        self._artifacts().log_text(text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str, *, save_kwargs: Mapping[str, Any] | None = None) -> None:
        """``mlflow.log_figure``: a matplotlib or plotly figure."""
        self._artifacts().log_figure(figure, artifact_file, save_kwargs=save_kwargs)

    def log_image(self, image: Any, artifact_file: str) -> None:
        """``mlflow.log_image(image, artifact_file)``: a numpy array or PIL image."""
        self._artifacts().log_image(image, artifact_file)

    def log_table(self, data: Any, artifact_file: str) -> None:
        """``mlflow.log_table``: a dict of columns or a pandas DataFrame, in MLflow's table format."""
        self._artifacts().log_table(data, artifact_file)

    def _artifacts(self) -> ArtifactLog:
        if self.status is not None:  # checked before anything is stored
            raise RunStateError(f"run {self.run_id} has ended; it takes no more artifacts")
        with self._lock:
            if self._artifact_log is None:
                store = ArtifactStore(self._tracker.config.journal.artifact_store)
                self._artifact_log = ArtifactLog(store, self._append, self.set_tag)
            return self._artifact_log

    # -- lifecycle ------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.status is None

    def end(self, status: str = "FINISHED", *, error: str | None = None) -> None:
        """End the run (idempotent). Attached segments close without changing the run's status."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status must be FINISHED, FAILED or KILLED, not {status!r}")
        if self.status is not None:
            return
        self._stop_telemetry()  # its last points and console text go in before run_end
        self.status = status
        try:
            if self.owner:
                fields: dict[str, Any] = {"status": status}
                if error:
                    fields["error"] = _storable(str(error)[:1000])
                self._append("run_end", fields)
            else:
                self._append("segment_end", {})
        finally:
            self._writer.close()
            self._tracker._pop(self)

    def _start_telemetry(self, *, system_metrics: bool, console: bool) -> None:
        """Subscribe to the process's system metrics sampler; start (or join) the console capture."""
        cfg = self._tracker.config.tracking
        if console:
            from formula_foundry.tracking import console as capture_module  # deferred: fds, threads

            capture = capture_module.start_capture(
                lambda stream, text: self._append("console", {"stream": stream, "text": text}),
                max_bytes=cfg.console_max_bytes)
            if capture is not None:  # None: an outer run of this process owns the capture
                self._telemetry_stops.append(lambda: capture_module.stop_capture(capture))
        if system_metrics:
            from formula_foundry.tracking.system_metrics import sampler  # deferred: a thread

            metrics = sampler()
            sub = metrics.subscribe(self.log_metrics, interval=cfg.system_metrics.interval_seconds,
                                    samples_before_logging=cfg.system_metrics.samples_before_logging,
                                    disk_path=self.run_dir, name=f"run {self.run_id}")
            self._telemetry_stops.append(lambda: metrics.unsubscribe(sub))

    def _stop_telemetry(self) -> None:
        stops, self._telemetry_stops = self._telemetry_stops, []
        for stop in reversed(stops):
            try:
                stop()
            except Exception:  # noqa: BLE001, S110 - telemetry never keeps a run from ending
                pass

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED", error="KeyboardInterrupt")
        elif issubclass(exc_type, Terminated):
            self.end("KILLED", error="SIGTERM")
        else:
            self.end("FAILED", error=f"{exc_type.__name__}: {exc}")

    def __repr__(self) -> str:
        return f"<Run {self.run_id} name={self.run_name!r} journal={self.journal_path}>"


class NoopRun:
    """What a disabled tracker yields: the same API, and nothing is written anywhere."""

    def __init__(self, run_name: str | None = None) -> None:
        self.run_id = uuid.uuid4().hex
        self.run_name = run_name
        self.journal_path = None
        self.status: str | None = None

    def _noop(self, *args: Any, **kwargs: Any) -> None:
        return None

    log_param = log_params = log_metric = log_metrics = set_tag = set_tags = _noop
    log_manifest = log_artifact_reference = delete_tag = log_inputs = _noop
    log_artifact = log_artifacts = log_dict = log_text = log_figure = log_image = log_table = _noop

    def end(self, status: str = "FINISHED", *, error: str | None = None) -> None:
        self.status = self.status or status

    def __enter__(self) -> NoopRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FINISHED" if exc_type is None else "FAILED")


# MLflow 3.17's dataset limits (mlflow/utils/validation.py: MAX_DATASET_*, MAX_INPUT_TAG_*).
_DATASET_LIMITS = {"name": 500, "digest": 36, "source_type": 36, "source": 65535, "schema": 1048575,
                   "profile": 16777215}


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no journal line, no store can hold it
        return False
    return True


def _dataset(dataset: Mapping[str, Any]) -> dict[str, Any]:
    """One ``inputs`` entry, checked as MLflow checks a dataset input."""
    if not isinstance(dataset, Mapping):
        raise ValidationError(f"a dataset input must be a mapping, got {type(dataset).__name__}",
                              key="datasets", rule="value-type")
    entry: dict[str, Any] = {}
    for member, limit in _DATASET_LIMITS.items():
        value = dataset.get(member)
        optional = member in ("schema", "profile")
        if value is None and optional:
            entry[member] = None
            continue
        if not isinstance(value, str) or (not value and not optional) or len(value) > limit \
                or "\x00" in value or not _encodes(value):
            raise ValidationError(f"dataset {dataset.get('name')!r}: {member} must be a "
                                  f"{'' if optional else 'non-empty '}string of at most {limit} characters, got "
                                  f"{value!r:.80}", key=member, rule="value-type")
        entry[member] = value
    tags = {}
    for key, value in (dataset.get("tags") or {}).items():
        if not isinstance(key, str) or not key or len(key) > 255 or not isinstance(value, str) \
                or len(value) > 500 or "\x00" in key + value or not _encodes(key + value):
            raise ValidationError(f"dataset {entry['name']!r}: input tag {key!r:.60} must be a string of at most "
                                  "255 characters with a string value of at most 500", key=str(key)[:250],
                                  rule="value-type")
        tags[key] = value
    entry["tags"] = tags
    return entry


def _manifest_parts(manifest: Any) -> tuple[dict, dict[str, str]]:
    try:
        if hasattr(manifest, "to_dict"):
            data = manifest.to_dict()
            tags = manifest.tags() if hasattr(manifest, "tags") else manifest_tags(data)
        elif isinstance(manifest, Mapping):
            data = dict(manifest)
            tags = manifest_tags(data)
        else:
            raise ValidationError(f"manifest must be a substrate Manifest or a mapping, got "
                                  f"{type(manifest).__name__}", key="manifest", rule="value-type")
    except (AttributeError, TypeError) as exc:  # e.g. "seeds" that is not a mapping
        raise ValidationError(f"manifest has the wrong shape: {exc}", key="manifest",
                              rule="value-type") from None
    try:
        orjson.dumps(data)
    except TypeError as exc:
        raise ValidationError(f"manifest is not JSON-serialisable: {exc}", key="manifest",
                              rule="value-type") from None
    return data, {check_key(k, "tag"): tag_value(k, v) for k, v in tags.items()}


class Tracker:
    """Starts runs and keeps the stack of active ones (for ``nested=True``)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._stack: list[Run] = []
        self._attached: list[Run] = []  # open segments (attach_run): ended at exit too
        self._lock = threading.Lock()
        _live_trackers.add(self)  # for the exit hook, however the tracker was made

    @property
    def enabled(self) -> bool:
        return self.config.tracking.enabled

    def active_run(self) -> Run | None:
        with self._lock:
            return self._stack[-1] if self._stack else None

    def start_run(self, run_name: str | None = None, experiment_name: str | None = None,
                  manifest: Any = None, run_artifacts: RunArtifacts | None = None, nested: bool = False,
                  *, tags: Mapping[str, Any] | None = None, description: str | None = None,
                  log_system_metrics: bool | None = None, capture_console: bool | None = None) -> Run | NoopRun:
        """Start a run and write its ``run_start`` record; returns a context manager.

        ``nested=True`` makes the run a child of the active run. Starting a run
        while another is active without ``nested=True`` is an error (as in MLflow).
        ``log_system_metrics`` (MLflow's argument) and ``capture_console``: None
        takes ``tracking.system_metrics.enabled`` / ``tracking.capture_console``
        (see :mod:`.system_metrics`, :mod:`.console`).
        """
        if not self.enabled:
            return NoopRun(run_name)
        for name, flag in (("log_system_metrics", log_system_metrics), ("capture_console", capture_console)):
            if flag is not None and not isinstance(flag, bool):
                raise ValidationError(f"{name} must be True, False or None, got {flag!r:.80}", key=name,
                                      rule="value-type")
        if self.config.journal.end_runs_on_sigterm:
            _install_sigterm_handler()
        if run_name is not None:
            check_run_name(run_name)
        parent = self.active_run()
        if parent is not None and not nested:
            raise RunStateError(f"run {parent.run_id} ({parent.run_name!r}) is already active; end it first "
                                "or pass nested=True to start a child run")
        if not nested:
            parent = None
        # A child run lives in its parent's experiment unless told otherwise (as in MLflow).
        inherited = parent.experiment_name if parent is not None else None
        experiment = experiment_name or inherited or self.config.tracking.default_experiment
        check_experiment_name(experiment)

        all_tags: dict[str, str] = {
            "mlflow.user": _user(),
            "mlflow.source.name": _source_name(),
            "mlflow.source.type": "LOCAL",
        }
        if manifest is not None:
            manifest_data, mtags = _manifest_parts(manifest)
            all_tags.update(mtags)
            if mtags.get("git_sha", "unknown") != "unknown":
                all_tags["mlflow.source.git.commit"] = mtags["git_sha"]
        else:
            manifest_data = None
        # Validate every caller-supplied tag before anything is created on disk.
        extra_tags: dict[str, str] = {}
        if description:
            extra_tags["mlflow.note.content"] = tag_value("mlflow.note.content", description)
        for key, value in (tags or {}).items():
            extra_tags[check_key(key, "tag")] = tag_value(key, value)
        # MLflow's create_run refuses a run_name that differs from a mlflow.runName tag.
        if run_name and extra_tags.get(RUN_NAME_TAG) and extra_tags[RUN_NAME_TAG] != run_name:
            raise ValidationError(f"run_name {run_name!r:.80} and the tag {RUN_NAME_TAG!r} "
                                  f"{extra_tags[RUN_NAME_TAG]!r:.80} differ; MLflow refuses both with "
                                  "different values", key="run_name", rule="run-name")
        run_id = uuid.uuid4().hex
        if run_artifacts is not None:
            run_dir = Path(run_artifacts.run_dir)
            all_tags[TAG_SUBSTRATE_RUN_ID] = str(run_artifacts.run_id)
            all_tags[TAG_SUBSTRATE_RUN_DIR] = str(run_dir.resolve())
        elif parent is not None:
            run_dir = parent.run_dir
        else:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            run_dir = Path(init_run_dir(self.config.journal.root,
                                        f"{stamp}-{_slug(run_name or 'run')}-{run_id[:8]}").run_dir)
        all_tags.update(extra_tags)
        all_tags[TAG_RUN_ID] = run_id

        run = Run(self, run_id=run_id, run_name=run_name, experiment_name=experiment, run_dir=run_dir,
                  parent=parent, owner=True)
        run._append("run_start", {
            "run_id": run_id, "journal_id": run.journal_id, "experiment": experiment, "run_name": run_name,
            "parent_run_id": run.parent_run_id, "tags": all_tags, "host": socket.gethostname(),
            "pid": os.getpid(),
        })
        if manifest_data is not None:
            run._append("manifest", {"manifest": manifest_data})
        cfg = self.config.tracking
        run._start_telemetry(
            system_metrics=cfg.system_metrics.enabled if log_system_metrics is None else log_system_metrics,
            console=cfg.capture_console if capture_console is None else capture_console)
        with self._lock:
            self._stack.append(run)
        return run

    def attach_run(self, run_id: str, *, run_dir: Path | str | None = None,
                   run_artifacts: RunArtifacts | None = None) -> Run | NoopRun:
        """Add this process's own journal segment to an existing run.

        For a resumed run after a crash, or another rank of a data-parallel job:
        each process writes its own file (one writer per journal) and the
        ingester folds every segment into the one MLflow run. ``run_dir`` defaults
        to the directory of the run's existing journal under the journal roots.
        """
        if not self.enabled:
            return NoopRun()
        if self.config.journal.end_runs_on_sigterm:
            _install_sigterm_handler()
        if not isinstance(run_id, str) or not re.fullmatch(r"[0-9a-f]{32}", run_id):
            raise ValidationError(f"run_id {run_id!r} is not a producer run id (32 hex digits)",
                                  key="run_id", rule="run-id")
        if run_artifacts is not None:
            folder = Path(run_artifacts.run_dir)
        elif run_dir is not None:
            folder = Path(run_dir)
        else:
            folder = self._find_run_dir(run_id)
        run = Run(self, run_id=run_id, run_name=None, experiment_name=None, run_dir=folder, parent=None,
                  owner=False)
        run._append("run_attach", {"run_id": run_id, "journal_id": run.journal_id,
                                   "host": socket.gethostname(), "pid": os.getpid()})
        with self._lock:
            self._attached.append(run)
        return run

    def _find_run_dir(self, run_id: str) -> Path:
        for root in self.config.journal_roots:
            for path in Path(root).glob(f"**/tracking/{run_id}.*{JOURNAL_SUFFIX}"):
                return path.parent.parent
        raise RunStateError(f"no journal of run {run_id} under {', '.join(map(str, self.config.journal_roots))}; "
                            "pass run_dir= or run_artifacts=")

    def _pop(self, run: Run) -> None:
        with self._lock:
            if run in self._stack:
                self._stack.remove(run)
            if run in self._attached:
                self._attached.remove(run)

    def end_all(self, status: str = "FINISHED") -> None:
        """End every run still open (called at interpreter exit, as MLflow does)."""
        with self._lock:
            open_runs = list(reversed(self._stack)) + list(self._attached)
        for run in open_runs:
            try:
                run.end(status)
            except Exception:  # noqa: BLE001, S110 - best effort at exit; the journal stays valid
                pass


def _storable(text: str) -> str:
    """``text`` with NUL (which SQL stores cannot hold) and lone surrogates escaped, as ``\\x00`` etc."""
    text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _user() -> str:
    """``mlflow.user``, which MLflow also stores as ``runs.user_id`` (VARCHAR(256))."""
    try:
        return _storable(getpass.getuser())[:256]
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return "unknown"


def _source_name() -> str:
    """``mlflow.source.name`` (``runs.source_name`` is VARCHAR(500)); a script path that is not valid
    UTF-8 (surrogate-escaped bytes in ``sys.argv``) is kept with those bytes escaped."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "<interactive>"
    return _storable(argv0)[:500]


_trackers: dict[tuple, Tracker] = {}
_trackers_lock = threading.Lock()
_ENV_KEYS = ("FF_CONFIG", "MLFLOW_TRACKING_URI", "FF_ARTIFACT_ROOT", "FF_JOURNAL_ROOT", "FF_TRACKING_ENABLED",
             "FF_ARTIFACT_STORE")


def get_tracker(config: Config | Path | str | None = None) -> Tracker:
    """The tracker for ``config`` (default: ``config/mlflow.yaml`` found from the current directory).

    Calls with the same configuration return the same tracker, so nested runs
    started through separate ``get_tracker()`` calls still see their parent.
    """
    if isinstance(config, Config):
        return Tracker(config)
    key = (str(config) if config is not None else None, Path.cwd() if config is None else None,
           tuple(os.environ.get(k) for k in _ENV_KEYS))
    with _trackers_lock:
        tracker = _trackers.get(key)
        if tracker is None:
            tracker = Tracker(load_config(config))
            _trackers[key] = tracker
        return tracker


_live_trackers: weakref.WeakSet[Tracker] = weakref.WeakSet()


@atexit.register
def _end_open_runs() -> None:
    """At interpreter exit: open runs end FINISHED, or KILLED when SIGTERM is why the process exits."""
    status = "KILLED" if _terminated_by is not None else "FINISHED"
    for tracker in list(_live_trackers):
        tracker.end_all(status)


# --------------------------------------------------------------------------- SIGTERM (opt-in)

class Terminated(SystemExit):
    """Raised in the main thread by the SIGTERM handler that ``journal.end_runs_on_sigterm`` installs.

    A ``SystemExit`` (exit status 143 = 128 + SIGTERM): ``with`` blocks and
    ``finally`` clauses run, a ``with tracker.start_run()`` block ends its run
    KILLED, the exit hook ends every other open run KILLED, and the process
    exits. ``except Exception`` does not catch it.
    """


_terminated_by: int | None = None  # the signal number, once the handler has run


def _on_sigterm(signum: int, _frame) -> None:
    """One shot: the first SIGTERM unwinds; a second one, while that takes its time, kills at once."""
    import signal

    global _terminated_by
    _terminated_by = signum
    signal.signal(signum, signal.SIG_DFL)
    raise Terminated(128 + signum)


def _install_sigterm_handler() -> bool:
    """Install :func:`_on_sigterm` once; True if it is (now) the SIGTERM handler.

    Only from the main thread (Python's rule for handlers), and only over the
    default action: a program that set its own handler, or ignores SIGTERM, keeps it.
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm:
        return True
    if current not in (signal.SIG_DFL, None) or _terminated_by is not None:
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True
