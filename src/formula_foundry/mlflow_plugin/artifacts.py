"""``JournalArtifactRepository``: MLflow's artifact calls through the producer (``ff-journal-artifacts:``).

A run created through ``ff-journal:`` has the artifact URI
``ff-journal-artifacts:/<run_id>``; a logged model of that run
``ff-journal-artifacts:/<run_id>/<model name>`` (its files land in the run's
artifacts, under the model's name). MLflow writes every artifact call
(``log_artifact(s)``, ``log_dict``, ``log_text``, ``log_figure``,
``log_image``, ``log_table``, a model's files) to a local file first and
hands it to the repository; here it goes to the producer's
``Run.log_artifact`` / ``log_artifacts``: the bytes are snapshotted into the
content-addressed store, then one ``artifact`` record per file is journaled.
``ff-ingest`` uploads them to the run's real artifact location.

Reads (``list_artifacts``, ``download_artifacts``, which ``log_table`` uses to
append rows) are answered from the run's journals (its ``artifact`` records)
and the content-addressed store: only for runs of this process. Deleting
artifacts is not supported.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from mlflow.entities import FileInfo
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST
from mlflow.store.artifact.artifact_repo import ArtifactRepository

from formula_foundry.errors import FormulaFoundryError
from formula_foundry.mlflow_plugin import ARTIFACT_SCHEME
from formula_foundry.mlflow_plugin.store import RunState, _mlflow_error, run_state, writer_for
from formula_foundry.substrate import ArtifactStore
from formula_foundry.tracking.journal import JournalReader

__all__ = ["JournalArtifactRepository", "parse_artifact_uri"]


def parse_artifact_uri(uri: str) -> tuple[str, str]:
    """``ff-journal-artifacts:/<run_id>[/<prefix>]`` -> (run id, prefix)."""
    if not uri.startswith(ARTIFACT_SCHEME + ":"):
        raise MlflowException(f"not an {ARTIFACT_SCHEME}: URI: {uri!r}", INVALID_PARAMETER_VALUE)
    rest = uri[len(ARTIFACT_SCHEME) + 1:].strip("/")
    run_id, _, prefix = rest.partition("/")
    return run_id, prefix


def _join(*parts: str | None) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class JournalArtifactRepository(ArtifactRepository):
    """The artifacts of one ``ff-journal:`` run (or of a model logged in it)."""

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None,
                 registry_uri: str | None = None) -> None:
        super().__init__(artifact_uri, tracking_uri, registry_uri)
        self.run_id, self.prefix = parse_artifact_uri(artifact_uri)

    def _state(self) -> RunState:
        state = run_state(self.run_id)
        if state is None:
            raise MlflowException(f"{self.artifact_uri}: run {self.run_id} is not a run of this process; its "
                                  "artifacts are in the configured store once ff-ingest ran",
                                  RESOURCE_DOES_NOT_EXIST)
        return state

    # -- writes ---------------------------------------------------------------------

    def log_artifact(self, local_file, artifact_path=None):
        state = self._state()
        _, writer = writer_for(self.run_id, state.tracker.config)
        try:
            writer.log_artifact(local_file, _join(self.prefix, artifact_path) or None)
        except FormulaFoundryError as exc:
            raise _mlflow_error(exc) from None

    def log_artifacts(self, local_dir, artifact_path=None):
        state = self._state()
        _, writer = writer_for(self.run_id, state.tracker.config)
        try:
            writer.log_artifacts(local_dir, _join(self.prefix, artifact_path) or None)
        except FormulaFoundryError as exc:
            raise _mlflow_error(exc) from None

    def delete_artifacts(self, artifact_path=None):
        raise MlflowException(f"{ARTIFACT_SCHEME}: artifacts are journaled, never deleted",
                              INVALID_PARAMETER_VALUE)

    # -- reads: the run's journals ------------------------------------------------------

    def _files(self) -> dict[str, dict]:
        """Run artifact path -> its last ``artifact`` record, from every journal of the run."""
        files: dict[str, dict] = {}
        for path in self._state().journals():
            for chunk in JournalReader(path).chunks():
                for record in chunk.records:
                    if record["type"] == "artifact":
                        files[record["path"]] = record
        return files

    def list_artifacts(self, path=None):
        base = _join(self.prefix, path)
        found: dict[str, FileInfo] = {}
        for full, record in self._files().items():
            if base and not full.startswith(base + "/"):
                continue
            rest = full[len(base) + 1:] if base else full
            head, sep, _ = rest.partition("/")
            rel = _join(path, head)
            if sep:
                found.setdefault(rel, FileInfo(rel, True, None))
            else:
                found[rel] = FileInfo(rel, False, record["size_bytes"])
        return sorted(found.values(), key=lambda f: f.path)

    def _download_file(self, remote_file_path, local_path):
        full = _join(self.prefix, remote_file_path)
        record = self._files().get(full)
        if record is None:
            raise MlflowException(f"{self.artifact_uri}: no artifact {remote_file_path!r} in run "
                                  f"{self.run_id}",
                                  RESOURCE_DOES_NOT_EXIST)
        blob = _blob(record, self._state())
        shutil.copyfile(blob, local_path)


def _blob(record: dict, state: RunState) -> Path:
    """The stored copy of an ``artifact`` record: in the store it names, else the configured one."""
    roots = []
    store_uri = record.get("store_uri")
    if store_uri:
        parts = urlsplit(store_uri)
        if parts.scheme == "file":
            roots.append(Path(url2pathname(parts.path)))
    roots.append(Path(state.tracker.config.journal.artifact_store))
    for root in roots:
        blob = ArtifactStore(root).path_for(record["digest"])
        if blob.is_file():
            return blob
    raise MlflowException(f"artifact {record['path']!r} of run {state.run_id}: blob {record['digest']} "
                          "not found in "
                          f"{', '.join(map(str, roots))}", RESOURCE_DOES_NOT_EXIST)

