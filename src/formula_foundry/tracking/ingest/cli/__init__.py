"""``ff-ingest``: a click group (:mod:`.app`, with the one exit-code map), one module per command.

Commands import the layers below them (stores, replay, watch); nothing below
imports the CLI. :func:`main` is the console script; it imports the group
inside the call so that an installation without the ``tracking`` extra (no
MLflow, no SQLAlchemy) still gets exit 4 and a one-line hint, not a traceback.
"""

from __future__ import annotations

__all__ = ["INSTALL_HINT", "main"]

INSTALL_HINT = "ff-ingest needs MLflow: pip install 'formula-foundry[tracking]'"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ff-ingest`` (see :mod:`.app` for the commands and exit codes)."""
    try:
        from formula_foundry.tracking.ingest.cli.app import main as run
    except ImportError as exc:
        if not (exc.name or "").split(".")[0] in ("mlflow", "sqlalchemy", "alembic", "watchdog", "click"):
            raise
        import sys

        print(INSTALL_HINT, file=sys.stderr)
        return 4
    return run(argv)
