"""``ff-ingest ship --to URI``: send what is new in every journal (and its artifacts' blobs) to an object store.

Usage::

    ff-ingest ship --to s3://bucket/prefix            # one pass, then exit
    ff-ingest ship --to /mnt/share/ff --watch         # a pass every --interval seconds until SIGTERM/SIGINT
    ff-ingest ship --to s3://bucket/prefix --status   # per journal: shipped, pending, state (no upload)

Needs neither MLflow nor SQLAlchemy: the base package, click and (for S3) boto3
(``pip install 'formula-foundry[ship]'``). S3 endpoint and credentials come from
the environment (``AWS_ENDPOINT_URL`` or ``MLFLOW_S3_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ...); nothing printed or stored carries a credential.

Exit codes (:mod:`.app`): 0 done; 1 a journal had an error (corrupt line, missing
blob, truncated or replaced file: every other journal was shipped); 2 usage;
3 the destination is unreachable or refuses us (nothing is lost: run again);
5 another shipper ships to this destination from this host. ``--watch`` retries an
unreachable destination with backoff and exits 0 on SIGTERM/SIGINT, after the
object in flight.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import threading
from pathlib import Path

import click

from formula_foundry.tracking.ingest.cli.common import common, human_bytes, load, setup_logging
from formula_foundry.tracking.ingest.objects import ObjectStoreError, open_objects
from formula_foundry.tracking.ingest.ship.layout import check_host
from formula_foundry.tracking.ingest.ship.shipper import SEGMENT_BYTES, ShipReport, Shipper, ship_status
from formula_foundry.tracking.ingest.ship.state import ShipState

__all__ = ["ship_command"]

log = logging.getLogger("formula_foundry.ship")
_MAX_BACKOFF = 30.0


def _host(value: str | None) -> str:
    host = value or socket.gethostname() or "host"
    try:
        return check_host(host)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--host") from None


@click.command(name="ship", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--to", "destination", required=True, metavar="URI",
              help="Destination: s3://bucket/prefix, file:///folder or a folder (a mounted share).")
@common
@click.option("--watch", is_flag=True, help="Ship every --interval seconds until SIGTERM/SIGINT.")
@click.option("--interval", type=click.FloatRange(0.01, 3600.0), default=2.0, show_default=True,
              metavar="SECONDS", help="With --watch: seconds between passes.")
@click.option("--host", "host", default=None, metavar="NAME",
              help="This host's name in the destination (default: the host name). Fixed per journal at its "
                   "first ship.")
@click.option("--status", "show_status", is_flag=True,
              help="Per journal: bytes shipped and pending, state (from the local state; uploads nothing).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (or the status) as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="Summary only on errors.")
@click.option("--segment-bytes", type=click.IntRange(1, SEGMENT_BYTES), default=SEGMENT_BYTES, hidden=True,
              help="The largest segment (tests and benchmarks: many small segments).")
def ship_command(destination, config_path, tracking_uri, roots, log_level, watch, interval, host, show_status,
                 as_json, quiet, segment_bytes):
    """Ship journals (whole verified records, and their artifacts' blobs) to S3 or a shared folder."""
    setup_logging(log_level)
    del tracking_uri  # a common option; shipping has no tracking store
    cfg = load(config_path, roots)
    host = _host(host)
    objects = open_objects(destination)
    try:
        state = ShipState.for_destination(cfg.ingest.state_dir, objects)
        if show_status:
            return _print_status(state, cfg.journal_roots, objects.display_uri, as_json=as_json)
        stop = threading.Event()  # set by SIGTERM/SIGINT under --watch
        with state, Shipper(objects, state, host=host, roots=cfg.journal_roots,
                            blob_roots=(cfg.journal.artifact_store,), segment_bytes=segment_bytes,
                            should_stop=stop.is_set) as shipper:
            if watch:
                return _watch(shipper, stop, interval, as_json=as_json, quiet=quiet)
            report = shipper.ship_pass()
            _print_report(report, objects.display_uri, host, as_json=as_json, quiet=quiet)
            return 0 if report.ok else 1
    finally:
        objects.close()


def _watch(shipper: Shipper, stop: threading.Event, interval: float, *, as_json: bool, quiet: bool) -> int:
    """Passes until SIGTERM/SIGINT; the signal only sets ``stop``, which the shipper checks between objects."""
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    reported: dict[str, str | None] = {}
    backoff = 0.0
    try:
        while not stop.is_set():
            try:
                report = shipper.ship_pass()
            except ObjectStoreError as exc:
                backoff = min(_MAX_BACKOFF, max(interval, backoff * 2 or 1.0))
                click.echo(f"destination unavailable: {exc}; retrying in {backoff:.0f} s", err=True)
                stop.wait(backoff)
                continue
            backoff = 0.0
            errors = {j.path: j.error for j in report.journals if j.error}
            changed = errors != {p: e for p, e in reported.items() if e}
            if report.totals()["segments"] or report.totals()["blobs"] or changed:
                _print_report(report, shipper.objects.display_uri, shipper.host, as_json=as_json,
                              quiet=quiet, only_new_errors=reported)
            reported = dict(errors)
            stop.wait(interval)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _print_report(report: ShipReport, display_uri: str, host: str, *, as_json: bool, quiet: bool,
                  only_new_errors: dict[str, str | None] | None = None) -> None:
    totals = report.totals()
    if as_json:
        click.echo(json.dumps({"destination": display_uri, "host": host, **report.to_json()},
                              indent=None if only_new_errors is not None else 2))
        return
    for j in report.journals:
        if j.error and (only_new_errors is None or only_new_errors.get(j.path) != j.error):
            click.echo(f"error: {j.error}", err=True)
    if quiet and report.ok:
        return
    mbs = f"{totals['mb_per_s']:.1f} MB/s"
    click.echo(f"shipped {totals['segments']} segments ({human_bytes(totals['bytes'])}) and {totals['blobs']} blobs "
               f"({human_bytes(totals['blob_bytes'])}) of {totals['journals']} journals to {display_uri} as "
               f"{host}: {totals['errors']} with errors{', stopped early' if report.stopped else ''}; "
               f"{totals['seconds']:.2f} s, {mbs}")


def _print_status(state: ShipState, roots: tuple[Path, ...], display_uri: str, *, as_json: bool) -> int:
    rows = ship_status(state, roots)
    totals = {"journals": len(rows), "shipped_bytes": sum(r.shipped for r in rows),
              "pending_bytes": sum(r.pending for r in rows),
              **{name: sum(r.state == name for r in rows) for name in ("shipped", "pending", "error")}}
    if as_json:
        click.echo(json.dumps({"destination": display_uri, "totals": totals,
                               "journals": [r.__dict__ for r in rows]}, indent=2))
    else:
        width = max([len(r.path) for r in rows] + [7])
        click.echo(f"{'journal':<{width}}  {'shipped':>10}  {'pending':>10}  state")
        for r in rows:
            click.echo(f"{r.path:<{width}}  {human_bytes(r.shipped):>10}  {human_bytes(r.pending):>10}  {r.state}")
            if r.error:
                click.echo(f"    {r.error}")
        click.echo(f"{totals['journals']} journals to {display_uri}: {human_bytes(totals['shipped_bytes'])} "
                   f"shipped, {human_bytes(totals['pending_bytes'])} pending; {totals['shipped']} shipped, "
                   f"{totals['pending']} pending, {totals['error']} in error")
    return 1 if totals["error"] else 0

