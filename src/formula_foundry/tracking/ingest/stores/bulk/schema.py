"""The bulk sink's schema guard: it writes only into stores whose schema it was verified on.

The store's alembic revision must be one this package was verified on
(:data:`VERIFIED_REVISIONS`, the head of mlflow 3.17.x's migrations) and the
installed MLflow's head; MLflow's table models must have exactly the columns
the sink writes (:data:`MODEL_COLUMNS`). Otherwise ``auto`` falls back to the
API sink with a one-line notice and ``bulk`` raises
:class:`~formula_foundry.errors.IngestError` naming the revision.
"""

from __future__ import annotations

import functools

import sqlalchemy as sa

from formula_foundry.tracking.ingest.stores.engine import reading

__all__ = ["MODEL_COLUMNS", "RUN_COLUMNS", "VERIFIED_REVISIONS", "installed_head_revision", "is_known_revision",
           "model_problem", "revision_problem", "store_revisions"]

# Alembic revisions of MLflow's tracking schema this module was verified on (read against
# mlflow 3.17.2's models and sqlalchemy_store.py). dc11669786a5 is the single head of
# mlflow/store/db_migrations/versions in mlflow 3.17.x ("add job executor persistence model").
VERIFIED_REVISIONS: tuple[str, ...] = ("dc11669786a5",)



def revision_problem(revisions: list[str], installed_head: str | None) -> str | None:
    """Why the bulk sink must not write to a store at ``revisions`` (None: it may)."""
    if not revisions:
        return "the store has no alembic revision (not an MLflow store?)"
    if len(revisions) > 1:
        return f"the store has several alembic revisions ({', '.join(sorted(revisions))})"
    rev = revisions[0]
    if rev not in VERIFIED_REVISIONS:
        return (f"store schema revision {rev} is not one the bulk sink was verified on "
                f"({', '.join(VERIFIED_REVISIONS)})")
    if installed_head is not None and rev != installed_head:
        return f"store schema revision {rev} differs from the installed MLflow's {installed_head}"
    return None


# The columns the bulk sink writes, by MLflow table: the models must have exactly these (runs: at
# least these), or the sink is not used. A schema change comes with a new revision anyway; this
# also catches models that changed without one.
MODEL_COLUMNS: dict[str, tuple[str, ...]] = {
    "metrics": ("key", "value", "timestamp", "step", "is_nan", "run_uuid"),
    "latest_metrics": ("key", "value", "timestamp", "step", "is_nan", "run_uuid"),
    "params": ("key", "value", "run_uuid"),
    "tags": ("key", "value", "run_uuid"),
}
RUN_COLUMNS = ("run_uuid", "name", "status", "end_time", "lifecycle_stage")


def model_problem() -> str | None:
    """Why MLflow's installed models do not fit what the bulk sink writes (None: they do)."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag

    for model in (SqlMetric, SqlLatestMetric, SqlParam, SqlTag):
        have = {c.name for c in model.__table__.columns}
        want = set(MODEL_COLUMNS[model.__tablename__])
        if have != want:
            return f"MLflow's {model.__tablename__} table has columns {sorted(have)}, not {sorted(want)}"
    missing = set(RUN_COLUMNS) - {c.name for c in SqlRun.__table__.columns}
    if missing:
        return f"MLflow's runs table has no {', '.join(sorted(missing))}"
    return None


@functools.lru_cache(maxsize=1)
def installed_head_revision() -> str | None:
    """The head of the installed MLflow's tracking-store migrations (alembic reads ~100 scripts: cached)."""
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision
    except ImportError:  # pragma: no cover - a future MLflow that moved it: the pinned list still guards
        return None
    return _get_latest_schema_revision()


def is_known_revision(revision: str) -> bool:
    """Whether the installed MLflow's migrations know ``revision`` (an older store, not a newer one)."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    try:
        return ScriptDirectory.from_config(_get_alembic_config(db_url="")).get_revision(revision) is not None
    except Exception:  # noqa: BLE001 - alembic raises for an unknown revision
        return False


def store_revisions(engine: sa.Engine) -> list[str]:
    """The store's alembic revision(s); empty when it has none (an empty database)."""
    with reading(engine) as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return []
        version = sa.table("alembic_version", sa.column("version_num"))
        return [row[0] for row in conn.execute(sa.select(version.c.version_num))]


