"""``ff-ingest [PATHS...]``: the batch backfill (and ``--watch``, the daemon of :mod:`..watch`).

A shipped ``--root`` (``s3://bucket/prefix``, ``file://...``, a folder holding ``ff-ship.json``) is
ingested centrally: :mod:`.central` mirrors it and runs :func:`run_batch` over the mirror under the
central lease (or the daemon of :mod:`..central`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from formula_foundry.tracking.config import Config
from formula_foundry.tracking.ingest.cli.central import central_ingest, refuse_mirrored, shipped_root
from formula_foundry.tracking.ingest.cli.common import common, human_bytes, load, require_mlflow, setup_logging
from formula_foundry.tracking.ingest.discover import discover, journal_id_of
from formula_foundry.tracking.ingest.cli.selection import selection_from, selection_options
from formula_foundry.tracking.ingest.parallel import ingest_parallel, workers_for
from formula_foundry.tracking.ingest.replay import JournalReport, PassReport, Replayer
from formula_foundry.tracking.ingest.select import Selection, select
from formula_foundry.tracking.ingest.sink import Sink
from formula_foundry.tracking.ingest.stores.connect import open_sink, read_checkpoints, store_lock
from formula_foundry.tracking.ingest.stores.checkpoints import MemoryCheckpoints
from formula_foundry.tracking.ingest.uri import redact
from formula_foundry.tracking.ingest.watch import run_daemon

__all__ = ["ingest_command", "run_batch"]


@click.command(name="ingest", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@common
@click.option("--sink", type=click.Choice(["auto", "api", "bulk"]), default=None,
              help="Store writer: bulk SQL inserts, MLflow's client API, or auto (config ingest.sink).")
@click.option("--dry-run", is_flag=True, help="Show what would be ingested; write nothing.")
@click.option("--skip-corrupt", is_flag=True,
              help="Go on past corrupt lines instead of stopping the journal there (each skip is reported).")
@click.option("--watch", is_flag=True, help="Run as a daemon: catch up, then follow the journal roots.")
@click.option("--polling", is_flag=True, default=None, help="With --watch: poll instead of inotify (NFS).")
@click.option("--workers", type=click.IntRange(0, 64), default=None, metavar="N",
              help="Journals replayed concurrently, each on its own store connection (config ingest.workers; "
                   "0: auto, 1 on SQLite, 4 on PostgreSQL and HTTP). --watch and --dry-run use one.")
@click.option("--wait-lease", is_flag=True,
              help="With a shipped --root: wait for another central ingester's lease instead of exiting 5.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, summary only on errors.")
@selection_options
def ingest_command(paths, config_path, tracking_uri, roots, log_level, sink, dry_run, skip_corrupt, watch,
                   polling, workers, wait_lease, as_json, quiet, run_ids, experiment, since, until):
    """Replay tracking journals into MLflow, exactly once.

    With no PATHS, every journal under the configured roots is ingested
    (--run-id/--experiment/--since/--until: only the journals whose header matches).
    """
    setup_logging(log_level)
    shipped = shipped_root(roots)
    if shipped and paths:
        raise click.UsageError("a shipped --root is ingested as a whole: give no PATHS with it")
    refuse_mirrored(paths)
    cfg = load(config_path, () if shipped else roots, tracking_uri)
    selection = selection_from(run_ids, experiment, since, until)
    if watch and selection:
        raise click.UsageError("--watch follows every journal: --run-id/--experiment/--since/--until are for a "
                               "batch ingest")
    require_mlflow()
    if shipped:
        return central_ingest(cfg, shipped, tracking_uri=tracking_uri, sink=sink, watch=watch, dry_run=dry_run,
                              wait_lease=wait_lease, skip_corrupt=skip_corrupt, quiet=quiet or as_json,
                              batch=lambda mirrored: run_batch(
                                  mirrored, paths=[], tracking_uri=tracking_uri, sink=sink, dry_run=dry_run,
                                  skip_corrupt=skip_corrupt, as_json=as_json, quiet=quiet, selection=selection,
                                  workers=workers))
    if watch:
        return run_daemon(cfg, tracking_uri=tracking_uri, sink=sink, polling=polling,
                          skip_corrupt=skip_corrupt, extra_paths=[Path(p) for p in paths])
    return run_batch(cfg, paths=[Path(p) for p in paths], tracking_uri=tracking_uri, sink=sink,
                     dry_run=dry_run, skip_corrupt=skip_corrupt, as_json=as_json, quiet=quiet,
                     selection=selection, workers=workers)


def run_batch(cfg: Config, *, paths: list[Path], tracking_uri: str | None = None, sink: str | None = None,
              dry_run: bool = False, skip_corrupt: bool = False, as_json: bool = False,
              quiet: bool = False, selection: Selection = Selection(), workers: int | None = None) -> int:
    """One pass over every journal (or ``paths``); returns 0, or 1 when a journal had an error.

    ``workers``: concurrent journal streams (:mod:`..parallel`); None: ``ingest.workers``; 0: auto
    (:func:`~..parallel.workers_for`). A dry run uses one.
    """
    uri = tracking_uri or cfg.tracking.backend_store_uri
    skipped: list[JournalReport] = []  # special files and symlinks named like journals: reported, not read
    journals = discover(cfg.journal_roots if not paths else (), paths, on_skip=lambda path, reason: skipped.append(
        JournalReport(path=path, state="skipped", warnings=[f"{path}: skipped: {reason}"])))
    journals = select(journals, selection)
    if dry_run:  # reads checkpoints only: it opens (and so creates) neither the store nor any state
        replayer = Replayer(_DryRunSink(cfg, uri, sink), dry_run=True, skip_corrupt=skip_corrupt)
        report = replayer.ingest(journals)
        report.journals += skipped
        _print_summary(report, journals=len(journals), uri=redact(uri), as_json=as_json, quiet=quiet,
                       dry_run=True, sink_kind=sink or cfg.ingest.sink)
        return 0 if report.ok else 1
    streams = workers_for(cfg.ingest.workers if workers is None else workers, uri)

    def opened() -> Sink:  # the store's sink: one for this thread, and one per worker
        return open_sink(cfg, tracking_uri=uri, sink=sink)

    with store_lock(cfg, uri):
        store = opened()
        try:
            bar = None
            replayer = Replayer(store, skip_corrupt=skip_corrupt)
            total = sum(replayer.pending_bytes(p, journal_id_of(p)) for p in journals)
            if not quiet and not as_json and sys.stderr.isatty() and total > 1 << 20:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc="ingesting", file=sys.stderr)
                replayer.on_progress = bar.update
            try:
                if streams > 1:
                    report = ingest_parallel(replayer, journals, workers=streams, open_sink=opened)
                else:
                    report = replayer.ingest(journals)
            finally:
                if bar is not None:
                    bar.close()
        finally:
            store.close()
    report.journals += skipped
    _print_summary(report, journals=len(journals), uri=store.display_uri, as_json=as_json, quiet=quiet,
                   dry_run=False, sink_kind=store.kind, workers=streams)
    return 0 if report.ok else 1


class _DryRunSink(Sink):
    """What ``--dry-run`` replays against: a snapshot of the checkpoints, no store at all.

    Replay in dry-run mode reads only ``checkpoints``; it never creates runs or
    commits, and any attempt would be a bug that this sink refuses loudly.
    """

    kind = "dry-run"

    def __init__(self, cfg: Config, uri: str, sink: str | None) -> None:
        from dataclasses import replace

        if sink:  # the checkpoints of the sink that would be used
            cfg = replace(cfg, ingest=replace(cfg.ingest, sink=sink))
        self.display_uri = redact(uri)
        self.checkpoints = MemoryCheckpoints(read_checkpoints(cfg, uri))

    def _writes(self, *_args, **_kwargs):
        raise NotImplementedError("a dry run reads checkpoints only; it never touches the store")

    experiment_id = find_run = create_run = existing_params = commit = _writes


def _print_summary(report: PassReport, *, journals: int, uri: str, as_json: bool, quiet: bool, dry_run: bool,
                   sink_kind: str, workers: int = 1) -> None:
    rate = report.records / report.elapsed if report.elapsed > 0 else 0.0
    pending = [j for j in report.journals if j.pending_bytes or j.state in ("pending", "waiting")]
    if as_json:
        click.echo(json.dumps({
            "store": uri, "sink": sink_kind, "workers": workers, "dry_run": dry_run, "journals": journals,
            "records": report.records,
            "runs_created": report.runs_created, "runs_updated": report.runs_updated,
            "uploads": report.uploads, "upload_bytes": report.upload_bytes,
            "elapsed_s": round(report.elapsed, 3),
            "records_per_s": round(rate, 1), "errors": len(report.failed), "pending": len(pending),
            "details": [{"path": str(j.path), "state": j.state, "run_id": j.run_id,
                         "mlflow_run_id": j.mlflow_run_id, "records": j.records, "batches": j.batches,
                         "pending_bytes": j.pending_bytes,
                         "uploads": [{"path": path, "size_bytes": size} for path, size in j.uploads],
                         "errors": j.errors, "warnings": j.warnings}
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
    uploads = ""
    if report.uploads:
        uploads = (f", {report.uploads} artifact files ({human_bytes(report.upload_bytes)}) "
                   f"{'to upload' if dry_run else 'uploaded'}")
    streams = f", {workers} workers" if workers > 1 else ""
    click.echo(f"{verb} {report.records} records from {journals} journals into {uri} ({sink_kind} sink{streams}): "
               f"{report.runs_created} runs {'to create' if dry_run else 'created'}, {report.runs_updated} "
               f"updated{uploads}, {len(report.failed)} with "
               f"errors, {len(pending)} pending; {report.elapsed:.2f} s, {rate:,.0f} records/s")
