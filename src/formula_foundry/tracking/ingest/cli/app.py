"""``ff-ingest``: the command group and the one map from errors to exit codes.

Usage::

    ff-ingest [PATHS...] [--watch] ...     # ingest (the default command; see ingest.py)
    ff-ingest view JOURNAL [--json]        # print a journal's records
    ff-ingest status [--json]              # per-journal progress, lag, state
    ff-ingest doctor [--json]              # health of config, store, artifact store, backlog
    ff-ingest check --task ID              # runs against the acceptance registry
    ff-ingest prune [--older-than 7d] [--archive DIR] [--dry-run]   # delete/archive ended, ingested journals
    ff-ingest prune --shipped-to URI       # ... on a shipping host: ended journals the destination holds whole
    ff-ingest ship --to URI [--watch] [--status]   # ship journals and blobs to s3://... or a shared folder

Exit codes (for scripts), the same for every command:

===  ==========================================================================
0    everything complete was ingested (incomplete last lines stay pending)
1    at least one journal had an error (corrupt record, rejection, conflict);
     every other journal was still ingested
2    usage or configuration error
3    the tracking store (or, for ``ship``, the object store) is unreachable or
     cannot take data (down, locked, out of disk): nothing is lost, rerun later
4    MLflow is not installed (``pip install 'formula-foundry[tracking]'``)
5    another ingester already serves this store
130  interrupted (Ctrl-C); checkpoints are consistent, rerun to continue
===  ==========================================================================

With ``--json``, a failure that ends the command (exit 2-5) is printed on
stdout as ``{"error": {"kind": ..., "exit_code": ..., "message": ...}}``.
"""

from __future__ import annotations

import importlib
import json
import sys

import click

from formula_foundry import __version__
from formula_foundry.errors import (
    ConfigError,
    FormulaFoundryError,
    IngesterLockedError,
    IngestError,
    MlflowMissingError,
    StoreUnavailableError,
)
from formula_foundry.tracking.ingest.cli import INSTALL_HINT
from formula_foundry.tracking.ingest.objects import ObjectStoreError

__all__ = ["EXIT_CODES", "main"]

EXIT_OK, EXIT_JOURNAL_ERRORS, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_NO_MLFLOW, EXIT_LOCKED = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130
# The most specific class first: each failure that ends a command -> (exit code, kind, message prefix).
EXIT_CODES: tuple[tuple[type[BaseException], int, str, str], ...] = (
    (ConfigError, EXIT_USAGE, "config", "config error: "),
    (MlflowMissingError, EXIT_NO_MLFLOW, "mlflow_missing", ""),
    (ObjectStoreError, EXIT_UNAVAILABLE, "destination_unavailable", "object store unavailable: "),
    (StoreUnavailableError, EXIT_UNAVAILABLE, "store_unavailable", "tracking store unavailable: "),
    (IngesterLockedError, EXIT_LOCKED, "locked", ""),
    (IngestError, EXIT_USAGE, "usage", "error: "),  # e.g. --sink bulk against an HTTP store
    (FormulaFoundryError, EXIT_JOURNAL_ERRORS, "error", "error: "),
)
_UNAVAILABLE_NOTE = (" (nothing is lost: the journals keep everything; run again when the store is back)")


# Each command's module, imported when the command runs (or help lists it): ``ff-ingest ship`` needs
# neither MLflow nor SQLAlchemy, so a compute node ships with the base package, click and boto3.
COMMANDS = {
    "ingest": "formula_foundry.tracking.ingest.cli.ingest:ingest_command",
    "view": "formula_foundry.tracking.ingest.cli.view:view_command",
    "status": "formula_foundry.tracking.ingest.cli.status:status_command",
    "doctor": "formula_foundry.tracking.ingest.cli.doctor:doctor_command",
    "check": "formula_foundry.tracking.ingest.cli.check:check_command",
    "prune": "formula_foundry.tracking.ingest.cli.prune:prune_command",
    "ship": "formula_foundry.tracking.ingest.cli.ship:ship_command",
}


class IngestGroup(click.Group):
    """A group whose default command is ``ingest``: ``ff-ingest [PATHS] [OPTIONS]`` ingests.

    Anything that is not a subcommand name (an option, a path) goes to ``ingest``;
    ``ff-ingest ingest status`` ingests a path named ``status``. Commands are
    imported on first use (:data:`COMMANDS`).
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        if cmd_name not in self.commands:
            module, _, name = COMMANDS[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), name), cmd_name)
        return self.commands[cmd_name]

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in COMMANDS and args[0] not in ("-h", "--help", "--version")):
            args = ["ingest", *args]
        return super().parse_args(ctx, args)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_options(ctx, formatter)
        ingest = self.get_command(ctx, "ingest")
        rows = [row for param in ingest.get_params(ctx) if (row := param.get_help_record(ctx)) is not None]
        with formatter.section("Options of ingest (the default command)"):
            formatter.write_dl(rows)


@click.group(name="ff-ingest", cls=IngestGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ff-ingest")
def cli() -> None:
    """Replay tracking journals into MLflow, exactly once.

    \b
    ff-ingest [PATHS...] [--watch]   ingest (the default command)
    ff-ingest view JOURNAL           a journal's records, checksums verified
    ff-ingest status                 per journal: run, records, ingested, lag, state
    ff-ingest doctor                 health of config, store, artifact store, backlog
    ff-ingest check --task ID        runs against the acceptance registry
    ff-ingest prune                  delete or --archive ended, fully ingested (or --shipped-to), idle journals
    ff-ingest ship --to URI          send new journal bytes and blobs to S3 or a shared folder

    Exit codes: 0 ok, 1 journal errors, 2 usage/config, 3 store unavailable,
    4 MLflow missing, 5 another ingester holds the store, 130 interrupted.
    """


def _wants_json(argv: list[str]) -> bool:
    return "--json" in argv


def _fail(exc: BaseException, argv: list[str]) -> int:
    code, kind, prefix = next((c, k, p) for cls, c, k, p in EXIT_CODES if isinstance(exc, cls))
    message = str(exc)
    if _wants_json(argv):
        click.echo(json.dumps({"error": {"kind": kind, "exit_code": code, "message": message}}, indent=2))
    else:
        click.echo(prefix + message + (_UNAVAILABLE_NOTE if code == EXIT_UNAVAILABLE else ""), err=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ff-ingest``; maps typed errors to the exit codes in the module docstring."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        result = cli.main(args=argv, prog_name="ff-ingest", standalone_mode=False)
        return int(result or 0)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted: checkpoints are consistent; run again to continue", err=True)
        return EXIT_INTERRUPTED
    except ImportError as exc:  # the tracking extra (mlflow, and SQLAlchemy with it) is missing
        if exc.name and exc.name.split(".")[0] in ("mlflow", "sqlalchemy", "alembic", "watchdog"):
            return _fail(MlflowMissingError(INSTALL_HINT), argv)
        raise
    except FormulaFoundryError as exc:
        return _fail(exc, argv)


if __name__ == "__main__":
    sys.exit(main())
