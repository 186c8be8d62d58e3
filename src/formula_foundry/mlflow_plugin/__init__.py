"""MLflow drop-in: ``MLFLOW_TRACKING_URI=ff-journal:`` sends unchanged ``mlflow.*`` code to the journal.

Two MLflow plugins, registered through entry points (``pyproject.toml``):

``mlflow.tracking_store`` ``ff-journal`` -> :class:`~.store.JournalStore`
    Every write (runs, params, metrics, tags, datasets, end status) becomes a
    record of the producer (:mod:`formula_foundry.tracking`) in the run's
    journal, in the format the :class:`~formula_foundry.tracking.Tracker`
    writes; ``ff-ingest`` replays it into the configured MLflow store.
``mlflow.artifact_repository`` ``ff-journal-artifacts`` -> :class:`~.artifacts.JournalArtifactRepository`
    A run's artifact calls (``log_artifact(s)``, ``log_dict``, ``log_figure``,
    ``log_table``, model files) go through the producer's snapshot-and-record
    path: the bytes into the content-addressed store, one ``artifact`` record
    into the journal.

Layering: this package imports MLflow and the producer; nothing in
``formula_foundry.tracking`` imports it. ``docs/mlflow-drop-in.md`` is the
user's page.
"""

from __future__ import annotations

SCHEME = "ff-journal"
ARTIFACT_SCHEME = "ff-journal-artifacts"

__all__ = ["ARTIFACT_SCHEME", "SCHEME"]

# MLflow loads its plugins (these modules among them) while it is being imported. Import it
# here, after the names above and before any module of this package, so that importing a module
# of this package first does not hand MLflow a half-initialised one to register.
import mlflow  # noqa: E402, F401
