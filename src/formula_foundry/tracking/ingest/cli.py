"""``ff-ingest``: replay journals into MLflow. ``main(argv) -> int``; nothing imports this module.

Usage::

    ff-ingest [PATHS...] [--config F] [--tracking-uri URI] [--root DIR]... [--dry-run] [--skip-corrupt]
    ff-ingest --watch [--polling]          # the daemon (see watch.py)
    ff-ingest view JOURNAL [--json]        # print a journal's records
    ff-ingest status [--json]              # per-journal progress, lag, state

Exit codes (for scripts):

===  ==========================================================================
0    everything complete was ingested (incomplete last lines stay pending)
1    at least one journal had an error (corrupt record, rejection, conflict);
     every other journal was still ingested
2    usage or configuration error
3    the tracking store is unreachable (nothing is lost: rerun later)
4    MLflow is not installed (``pip install 'formula-foundry[tracking]'``)
5    another ingester already serves this store
130  interrupted (Ctrl-C); checkpoints are consistent, rerun to continue
===  ==========================================================================
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from formula_foundry import __version__
from formula_foundry.errors import (
    ConfigError,
    FormulaFoundryError,
    IngesterLockedError,
    MlflowMissingError,
    StoreUnavailableError,
)
from formula_foundry.tracking.config import Config, load_config

__all__ = ["main"]

EXIT_OK, EXIT_JOURNAL_ERRORS, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_NO_MLFLOW, EXIT_LOCKED = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130
INSTALL_HINT = "ff-ingest needs MLflow: pip install 'formula-foundry[tracking]'"

log = logging.getLogger("formula_foundry.ingest")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _load(config_path: str | None, roots: tuple[str, ...]) -> Config:
    cfg = load_config(config_path)
    if roots:
        from dataclasses import replace

        cfg = replace(cfg, journal=replace(cfg.journal, root=Path(roots[0]).resolve()),
                      ingest=replace(cfg.ingest, extra_roots=tuple(Path(r).resolve() for r in roots[1:])))
    return cfg


def _require_mlflow() -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise MlflowMissingError(INSTALL_HINT) from None


# --------------------------------------------------------------------------- ingest

_common = [
    click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                 help="Config file (default: config/mlflow.yaml found from the current directory, or $FF_CONFIG)."),
    click.option("--tracking-uri", default=None,
                 help="Tracking store (default: tracking.backend_store_uri, or $MLFLOW_TRACKING_URI)."),
    click.option("--root", "roots", multiple=True, type=click.Path(file_okay=False),
                 help="Journal root to scan instead of the configured ones (repeatable)."),
    click.option("--log-level", default="warning", show_default=True,
                 type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False)),
]


def common(fn):
    for option in reversed(_common):
        fn = option(fn)
    return fn


@click.command(name="ff-ingest", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@common
@click.option("--sink", type=click.Choice(["auto", "api", "bulk"]), default=None,
              help="Store writer: bulk SQL inserts, MLflow's client API, or auto (config ingest.sink).")
@click.option("--dry-run", is_flag=True, help="Show what would be ingested; write nothing.")
@click.option("--skip-corrupt", is_flag=True,
              help="Go on past corrupt lines instead of stopping the journal there (each skip is reported).")
@click.option("--watch", is_flag=True, help="Run as a daemon: catch up, then follow the journal roots.")
@click.option("--polling", is_flag=True, default=None, help="With --watch: poll instead of inotify (NFS).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, summary only on errors.")
@click.version_option(__version__, prog_name="ff-ingest")
def ingest_command(paths, config_path, tracking_uri, roots, log_level, sink, dry_run, skip_corrupt, watch,
                   polling, as_json, quiet):
    """Replay tracking journals into MLflow, exactly once.

    With no PATHS, every journal under the configured roots is ingested.
    Subcommands: view JOURNAL, status (run `ff-ingest COMMAND --help`).
    """
    _setup_logging(log_level)
    cfg = _load(config_path, roots)
    _require_mlflow()
    if watch:
        from formula_foundry.tracking.ingest.watch import run_daemon

        return run_daemon(cfg, tracking_uri=tracking_uri, sink=sink, polling=polling,
                          skip_corrupt=skip_corrupt, extra_paths=[Path(p) for p in paths])
    return run_batch(cfg, paths=[Path(p) for p in paths], tracking_uri=tracking_uri, sink=sink,
                     dry_run=dry_run, skip_corrupt=skip_corrupt, as_json=as_json, quiet=quiet)


def run_batch(cfg: Config, *, paths: list[Path], tracking_uri: str | None = None, sink: str | None = None,
              dry_run: bool = False, skip_corrupt: bool = False, as_json: bool = False,
              quiet: bool = False) -> int:
    from formula_foundry.tracking.ingest.checkpoints import redact_uri
    from formula_foundry.tracking.ingest.connect import IngesterLock, open_sink, state_dir
    from formula_foundry.tracking.ingest.discover import discover
    from formula_foundry.tracking.ingest.replay import Replayer

    uri = tracking_uri or cfg.tracking.backend_store_uri
    journals = discover(cfg.journal_roots if not paths else (), paths)
    lock = IngesterLock(state_dir(cfg, uri), what=redact_uri(uri)) if not dry_run else None
    if lock is not None:
        lock.acquire()
    try:
        # A dry run reads checkpoints only: it opens (and so creates) neither the store nor any state.
        store = _DryRunStore(cfg, uri, sink) if dry_run else open_sink(cfg, tracking_uri=uri, sink=sink)
        try:
            bar = None
            replayer = Replayer(store, skip_corrupt=skip_corrupt, dry_run=dry_run)
            total = sum(replayer.pending_bytes(p, _journal_id(p)) for p in journals)
            if not quiet and not as_json and sys.stderr.isatty() and total > 1 << 20:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc="ingesting", file=sys.stderr)
                replayer.on_progress = bar.update
            try:
                report = replayer.ingest(journals)
            finally:
                if bar is not None:
                    bar.close()
        finally:
            store.close()
    finally:
        if lock is not None:
            lock.release()
    _print_summary(report, journals=len(journals), uri=getattr(store, "display_uri", uri), as_json=as_json,
                   quiet=quiet, dry_run=dry_run, sink_kind=getattr(store, "kind", "api"))
    return EXIT_OK if report.ok else EXIT_JOURNAL_ERRORS


class _DryRunStore:
    """What ``--dry-run`` replays against: a snapshot of the checkpoints, no store at all."""

    def __init__(self, cfg: Config, uri: str, sink: str | None) -> None:
        from dataclasses import replace

        from formula_foundry.tracking.ingest.checkpoints import read_checkpoints, redact_uri
        from formula_foundry.tracking.ingest.connect import state_dir
        from formula_foundry.tracking.ingest.sink import MemoryCheckpoints

        self.kind = sink or cfg.ingest.sink
        self.display_uri = redact_uri(uri)
        found = read_checkpoints(state_dir(cfg, uri))  # the API sink's file
        if self.kind != "api":  # the bulk sink keeps its own in the store's database
            try:
                from formula_foundry.tracking.ingest.bulk_sink import open_bulk_checkpoints

                bulk = open_bulk_checkpoints(replace(cfg, ingest=replace(cfg.ingest, sink=self.kind)), uri, None)
                if bulk is not None:
                    found += bulk.all()
                    bulk.engine.dispose()
            except ImportError:
                pass
        self.checkpoints = MemoryCheckpoints()
        for checkpoint in found:  # per journal, the one that got furthest
            old = self.checkpoints.get(checkpoint.journal_id)
            if old is None or (checkpoint.position.offset, checkpoint.ended) > (old.position.offset, old.ended):
                self.checkpoints.put(checkpoint)

    def close(self) -> None:
        pass


def _journal_id(path: Path) -> str | None:
    parts = path.name.split(".")
    return parts[1] if len(parts) == 3 else None


def _print_summary(report, *, journals: int, uri: str, as_json: bool, quiet: bool, dry_run: bool,
                   sink_kind: str) -> None:
    rate = report.records / report.elapsed if report.elapsed > 0 else 0.0
    pending = [j for j in report.journals if j.pending_bytes or j.state in ("pending", "waiting")]
    if as_json:
        click.echo(json.dumps({
            "store": uri, "sink": sink_kind, "dry_run": dry_run, "journals": journals, "records": report.records,
            "runs_created": report.runs_created, "runs_updated": report.runs_updated,
            "elapsed_s": round(report.elapsed, 3),
            "records_per_s": round(rate, 1), "errors": len(report.failed), "pending": len(pending),
            "details": [{"path": str(j.path), "state": j.state, "run_id": j.run_id,
                         "mlflow_run_id": j.mlflow_run_id, "records": j.records, "batches": j.batches,
                         "pending_bytes": j.pending_bytes, "errors": j.errors, "warnings": j.warnings}
                        for j in report.journals],
        }, indent=2))
        return
    for j in report.journals:
        for warning in j.warnings:
            click.echo(f"warning: {warning}", err=True)
        for error in j.errors:
            click.echo(f"error: {error}", err=True)
    if quiet and report.ok:
        return
    verb = "would ingest" if dry_run else "ingested"
    click.echo(f"{verb} {report.records} records from {journals} journals into {uri} ({sink_kind} sink): "
               f"{report.runs_created} runs {'to create' if dry_run else 'created'}, {report.runs_updated} "
               f"updated, {len(report.failed)} with "
               f"errors, {len(pending)} pending; {report.elapsed:.2f} s, {rate:,.0f} records/s")


# --------------------------------------------------------------------------- view

@click.command(name="view")
@click.argument("journal", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One verified record per line, as JSON.")
def view_command(journal, as_json):
    """Print a journal's records readably (checksums verified; problems named by line and offset)."""
    from formula_foundry.errors import CorruptRecordError
    from formula_foundry.tracking.journal import JournalReader

    reader = JournalReader(journal)
    problems = []
    try:
        for entry in reader.entries(skip_corrupt=True, on_skip=problems.append):
            rec = dict(entry.record)
            if as_json:
                click.echo(json.dumps(rec, ensure_ascii=False))
                continue
            head = f"{entry.line:>6}  seq={rec.pop('seq'):<6} {rec.pop('type'):<12}"
            rec.pop("v", None)
            ts = rec.pop("ts")
            body = " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in rec.items())
            click.echo(f"{head} ts={ts} {body}")
    except CorruptRecordError as exc:  # pragma: no cover - skip_corrupt routes these to problems
        problems.append(exc)
    for problem in problems:
        click.echo(f"corrupt: {problem}", err=True)
    if reader.pending_bytes:
        click.echo(f"pending: {reader.pending_bytes} bytes of an incomplete last line", err=True)
    return EXIT_JOURNAL_ERRORS if problems else EXIT_OK


SUBCOMMANDS = {"view": view_command}


def _register(name: str, command: click.Command) -> None:
    SUBCOMMANDS[name] = command


def _load_optional_commands() -> None:
    for module, name, attr in (("status", "status", "status_command"), ("doctor", "doctor", "doctor_command"),
                               ("check", "check", "check_command")):
        try:
            mod = __import__(f"formula_foundry.tracking.ingest.{module}", fromlist=[attr])
        except ImportError:
            continue
        command = getattr(mod, attr, None)
        if command is not None:
            _register(name, command)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ff-ingest``; maps typed errors to the exit codes in the module docstring."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _load_optional_commands()
        command = ingest_command
        if argv and argv[0] in SUBCOMMANDS:
            command = SUBCOMMANDS[argv.pop(0)]
        result = command.main(args=argv, prog_name=f"ff-ingest {command.name}" if command is not ingest_command
                              else "ff-ingest", standalone_mode=False)
        return int(result or 0)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE
    except click.exceptions.Abort:
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        click.echo("interrupted: checkpoints are consistent; run again to continue", err=True)
        return EXIT_INTERRUPTED
    except ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        return EXIT_USAGE
    except MlflowMissingError as exc:
        click.echo(str(exc), err=True)
        return EXIT_NO_MLFLOW
    except StoreUnavailableError as exc:
        click.echo(f"tracking store unavailable: {exc} (nothing is lost: the journals keep everything; "
                   "run again when the store is back)", err=True)
        return EXIT_UNAVAILABLE
    except IngesterLockedError as exc:
        click.echo(str(exc), err=True)
        return EXIT_LOCKED
    except FormulaFoundryError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_JOURNAL_ERRORS


if __name__ == "__main__":
    sys.exit(main())
