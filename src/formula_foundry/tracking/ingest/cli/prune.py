"""``ff-ingest prune [--older-than DURATION] [--archive DIR] [--dry-run] [--json] [--shipped-to URI]``:
remove or archive journals that are ended, fully ingested into the configured store (or, with
``--shipped-to``, fully shipped to that destination), held by no writer and idle.

The rules are in :mod:`formula_foundry.tracking.ingest.prune`. Every condition is
checked twice: once for the report, and again (files, checkpoints or ship state and
destination listing, and lock read afresh) right before a file is archived and removed.
Exit code 0, or 1 when a journal could not be archived or removed; with ``--shipped-to``,
3 when the destination cannot be reached and 2 when it is no ship destination (any more):
found while planning, nothing is removed; found in a second check, that check stops there
and what was taken so far is reported.

``--shipped-to`` needs neither MLflow nor SQLAlchemy (a shipping host installs the ``ship``
extra only): the checkpoint reader and the ingested rules' header check are imported on the
other path alone.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import click

from formula_foundry.errors import IngestError, JournalError
from formula_foundry.tracking.config import Config
from formula_foundry.tracking.ingest.cli.common import common, human_bytes, load, setup_logging
from formula_foundry.tracking.ingest.cli.selection import selection_from, selection_options
from formula_foundry.tracking.ingest.continuity import mismatch
from formula_foundry.tracking.ingest.discover import discover, file_size, journal_id_of
from formula_foundry.tracking.ingest.objects import ObjectStoreError, open_objects
from formula_foundry.tracking.ingest.prune import (
    DEFAULT_OLDER_THAN,
    Facts,
    ShipFacts,
    archive_path,
    archive_to,
    is_held,
    keep_reason,
    last_record,
    parse_duration,
    shipped_keep_reason,
)
from formula_foundry.tracking.ingest.select import select
from formula_foundry.tracking.ingest.ship.shipped import Destination
from formula_foundry.tracking.journal import JournalReader

__all__ = ["facts_of", "plan", "prune_command", "ship_facts_of"]


def facts_of(path: Path, checkpoints: dict[str, object]) -> Facts | None:
    """The :class:`Facts` of ``path`` now, or None when it is gone."""
    from formula_foundry.tracking.ingest.cli.status import _header  # its module reads checkpoints: SQLAlchemy

    try:
        st = path.stat()
    except OSError:
        return None
    jid = journal_id_of(path)
    cp = checkpoints.get(jid) if jid else None
    header, error = _header(path)
    if error is None and header is not None:
        drift = mismatch(path, st.st_size, header.get("run_id"), header.get("journal_id"), cp)
        error = drift.message if drift else None
    return Facts(path=path, size=st.st_size, mtime=st.st_mtime, checkpoint=cp, error=error, held=is_held(path))


def ship_facts_of(path: Path, destination: Destination, *, fresh: bool = False) -> ShipFacts | None:
    """The :class:`ShipFacts` of ``path`` now (the destination's id read afresh with ``fresh``), or None
    when it is gone. :class:`~..objects.ObjectStoreError` when the destination cannot be reached."""
    try:
        st = path.stat()
    except OSError:
        return None
    content_size = file_size(path)
    if content_size is None:
        return None
    jid = journal_id_of(path)
    error = _header_error(path, content_size) if jid else f"{path}: no journal id in its name"
    holding = destination.holding(path, jid, fresh=fresh) if jid else None
    last = last_record(path)
    return ShipFacts(path=path, size=st.st_size, content_size=content_size, mtime=st.st_mtime,
                     error=error or (holding.error if holding else None),
                     not_shipped=holding.problem if holding else None, shipped=holding.end if holding else 0,
                     last_type=last.get("type") if last else None, held=is_held(path))


def _header_error(path: Path, size: int) -> str | None:
    """Why ``path``'s first record is not the header its name says (as the shipper checks it), or None."""
    try:
        first = JournalReader(path).first_record()
    except JournalError as exc:
        return str(exc)
    except OSError as exc:
        return f"{path}: cannot read: {exc.strerror or exc}"
    if first is None:
        return None  # still being written: then it is neither shipped nor ended
    if first.get("type") not in ("run_start", "run_attach"):
        return f"{path}:1 (byte offset 0): first record is {first.get('type')!r}, not run_start/run_attach"
    drift = mismatch(path, size, first.get("run_id"), first.get("journal_id"), None)
    return drift.message.replace("not ingested", "not shipped") if drift else None


class _Rules:
    """How one prune judges a journal: its facts now (``fresh``: everything read again) and why it stays."""

    def __init__(self, facts: Callable[[Path, bool], Facts | ShipFacts | None],
                 reason: Callable[..., str | None]) -> None:
        self.facts = facts
        self.reason = reason


def _ingested_rules(cfg: Config, uri: str | None) -> _Rules:
    """Ended and fully ingested into the configured store: its checkpoints, read now and again for each ``fresh``."""
    from formula_foundry.tracking.ingest.stores.connect import read_checkpoints  # SQLAlchemy: not when shipping

    def read() -> dict:
        return {cp.journal_id: cp for cp in read_checkpoints(cfg, uri)}

    checkpoints = read()
    return _Rules(lambda path, fresh: facts_of(path, read() if fresh else checkpoints), keep_reason)


def _shipped_rules(destination: Destination) -> _Rules:
    """Ended and fully shipped to ``destination`` (the remote listing is the truth)."""
    return _Rules(lambda path, fresh: ship_facts_of(path, destination, fresh=fresh), shipped_keep_reason)


def _root_of(path: Path, roots) -> Path:
    for root in roots:
        try:
            path.relative_to(root)
            return Path(root)
        except ValueError:
            continue
    return path.parent


def plan(rules: _Rules, paths: list[Path], *, older_than: float, now: float
         ) -> tuple[list[Facts | ShipFacts], list[tuple[Facts | ShipFacts | Path, str]]]:
    """(journals prune may take, [(journal, why it is kept)])."""
    take, keep = [], []
    for path in paths:
        facts = rules.facts(path, False)
        if facts is None:
            keep.append((path, "gone"))
            continue
        reason = rules.reason(facts, older_than=older_than, now=now)
        if reason is None:
            take.append(facts)
        else:
            keep.append((facts, reason))
    return take, keep


@click.command(name="prune")
@common
@click.option("--older-than", default=DEFAULT_OLDER_THAN, show_default=True,
              help="Take only journals idle (no append) longer than this: 0, 90s, 12h, 7d.")
@click.option("--archive", "archive", type=click.Path(file_okay=False), default=None,
              help="Move the journals here, gzip-compressed (DIR/<path under its root>.gz), instead of deleting.")
@click.option("--shipped-to", "shipped_to", default=None, metavar="URI",
              help="On a host that ships (ff-ingest ship --to URI): take journals that this destination holds "
                   "whole (its listing is the truth) instead of ingested ones. Needs no tracking store.")
@click.option("--dry-run", is_flag=True, help="Say what would be taken; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@selection_options
def prune_command(config_path, tracking_uri, roots, log_level, older_than, archive, shipped_to, dry_run, as_json,
                  run_ids, experiment, since, until):
    """Delete (or --archive) journals that are ended, fully ingested (or --shipped-to), unheld and idle.

    Never a running, lagging, held or errored journal; never an artifact, never the ship
    destination. Each kept journal is listed with the reason. Safe while producers, an
    ingester and a shipper run.
    """
    setup_logging(log_level)
    if shipped_to is not None and tracking_uri is not None:
        raise click.UsageError("--shipped-to and --tracking-uri exclude each other: a journal is pruned once "
                               "shipped, or once ingested into a store")
    cfg = load(config_path, roots, tracking_uri)
    try:
        seconds = parse_duration(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    archive_dir = Path(archive).resolve() if archive else None
    paths = discover(cfg.journal_roots)
    if archive_dir is not None:  # never prune the archive into itself
        paths = [p for p in paths if not p.is_relative_to(archive_dir)]
    paths = select(paths, selection_from(run_ids, experiment, since, until))
    if shipped_to is None:
        return _prune(cfg, _ingested_rules(cfg, tracking_uri), paths, seconds, archive_dir, dry_run, as_json)
    objects = open_objects(shipped_to)
    try:
        return _prune(cfg, _shipped_rules(Destination(objects, cfg.ingest.state_dir)), paths, seconds, archive_dir,
                      dry_run, as_json, shipped_to=objects.display_uri)
    finally:
        objects.close()


def _prune(cfg: Config, rules: _Rules, paths: list[Path], seconds: float, archive_dir: Path | None, dry_run: bool,
           as_json: bool, *, shipped_to: str | None = None) -> int:
    """Judge ``paths``, take what may go (judged again, afresh, right before), report; the exit code."""
    take, keep = plan(rules, paths, older_than=seconds, now=time.time())
    taken, failed = [], []
    stopped: ObjectStoreError | IngestError | None = None
    for facts in take:
        if stopped is not None:  # the destination went away (or is another one now): nothing more is taken
            keep.append((facts, f"not checked again: {stopped}"))
            continue
        entry = {"path": str(facts.path), "bytes": facts.size, "archived_to": None, "archive_bytes": None}
        if dry_run:
            taken.append(entry)
            continue
        # Re-check everything right before touching the file (a producer, ingester or shipper may have moved on).
        try:
            fresh = rules.facts(facts.path, True)
        except (ObjectStoreError, IngestError) as exc:
            stopped = exc
            keep.append((facts, f"not checked again: {exc}"))
            continue
        reason = "gone" if fresh is None else rules.reason(fresh, older_than=seconds, now=time.time())
        if reason is not None:
            keep.append((fresh or facts.path, reason))
            continue
        try:
            if archive_dir is not None:
                target = archive_path(facts.path, _root_of(facts.path, cfg.journal_roots), archive_dir)
                entry["archive_bytes"] = archive_to(facts.path, target)
                entry["archived_to"] = str(target)
            os.unlink(facts.path)
        except OSError as exc:
            failed.append({"path": str(facts.path), "error": f"{exc.strerror or exc}"})
            continue
        taken.append(entry)
    kept = [{"path": str(f if isinstance(f, Path) else f.path), "reason": r} for f, r in keep]
    result = {"dry_run": dry_run, "older_than_seconds": seconds, "archive": str(archive_dir) if archive_dir else None,
              **({"shipped_to": shipped_to} if shipped_to is not None else {}),
              "taken": taken, "kept": kept, "failed": failed,
              "bytes_freed": sum(t["bytes"] for t in taken)}
    code = (3 if isinstance(stopped, ObjectStoreError) else 2) if stopped is not None else 1 if failed else 0
    if stopped is not None:
        kind = "destination_unavailable" if code == 3 else "usage"
        result["error"] = {"kind": kind, "exit_code": code, "message": str(stopped)}
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        verb = "would take" if dry_run else ("archived" if archive_dir else "deleted")
        for t in taken:
            click.echo(f"{verb}  {t['path']}" + (f" -> {t['archived_to']}" if t["archived_to"] else ""))
        for k in kept:
            click.echo(f"kept  {k['path']}: {k['reason']}")
        for f in failed:
            click.echo(f"FAILED  {f['path']}: {f['error']}", err=True)
        if stopped is not None:
            click.echo(f"{'object store unavailable' if code == 3 else 'error'}: {stopped}; stopped", err=True)
        click.echo(f"{len(taken)} journals {verb} ({human_bytes(result['bytes_freed'])}), {len(kept)} kept")
    return code
