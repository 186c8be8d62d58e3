"""``ff-ingest prune [--older-than DURATION] [--archive DIR] [--dry-run] [--json]``: remove or archive
journals that are ended, fully ingested into the configured store, held by no writer and idle.

The rules are in :mod:`formula_foundry.tracking.ingest.prune`. Every condition is
checked twice: once for the report, and again (files, checkpoints and lock read
afresh) right before a file is archived and removed. Exit code 0, or 1 when a
journal could not be archived or removed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from formula_foundry.tracking.config import Config
from formula_foundry.tracking.ingest.cli.common import common, human_bytes, load, setup_logging
from formula_foundry.tracking.ingest.cli.selection import selection_from, selection_options
from formula_foundry.tracking.ingest.cli.status import _header
from formula_foundry.tracking.ingest.continuity import mismatch
from formula_foundry.tracking.ingest.discover import discover, journal_id_of
from formula_foundry.tracking.ingest.prune import (
    DEFAULT_OLDER_THAN,
    Facts,
    archive_path,
    archive_to,
    is_held,
    keep_reason,
    parse_duration,
)
from formula_foundry.tracking.ingest.select import select
from formula_foundry.tracking.ingest.stores.connect import read_checkpoints

__all__ = ["facts_of", "plan", "prune_command"]


def facts_of(path: Path, checkpoints: dict[str, object]) -> Facts | None:
    """The :class:`Facts` of ``path`` now, or None when it is gone."""
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


def _checkpoints(cfg: Config, uri: str | None) -> dict:
    return {cp.journal_id: cp for cp in read_checkpoints(cfg, uri)}


def _root_of(path: Path, roots) -> Path:
    for root in roots:
        try:
            path.relative_to(root)
            return Path(root)
        except ValueError:
            continue
    return path.parent


def plan(cfg: Config, uri: str | None, paths: list[Path], *, older_than: float, now: float
         ) -> tuple[list[Facts], list[tuple[Facts | Path, str]]]:
    """(journals prune may take, [(journal, why it is kept)])."""
    cps = _checkpoints(cfg, uri)
    take, keep = [], []
    for path in paths:
        facts = facts_of(path, cps)
        if facts is None:
            keep.append((path, "gone"))
            continue
        reason = keep_reason(facts, older_than=older_than, now=now)
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
@click.option("--dry-run", is_flag=True, help="Say what would be taken; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@selection_options
def prune_command(config_path, tracking_uri, roots, log_level, older_than, archive, dry_run, as_json,
                  run_ids, experiment, since, until):
    """Delete (or --archive) journals that are ended, fully ingested, unheld and idle.

    Never a running, lagging, held or errored journal; never an artifact. Each kept
    journal is listed with the reason. Safe while producers and an ingester run.
    """
    setup_logging(log_level)
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
    take, keep = plan(cfg, tracking_uri, paths, older_than=seconds, now=time.time())
    taken, failed = [], []
    for facts in take:
        entry = {"path": str(facts.path), "bytes": facts.size, "archived_to": None, "archive_bytes": None}
        if dry_run:
            taken.append(entry)
            continue
        # Re-check everything right before touching the file (a producer or ingester may have moved on).
        fresh = facts_of(facts.path, _checkpoints(cfg, tracking_uri))
        reason = "gone" if fresh is None else keep_reason(fresh, older_than=seconds, now=time.time())
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
    kept = [{"path": str(f.path if isinstance(f, Facts) else f), "reason": r} for f, r in keep]
    result = {"dry_run": dry_run, "older_than_seconds": seconds, "archive": str(archive_dir) if archive_dir else None,
              "taken": taken, "kept": kept, "failed": failed,
              "bytes_freed": sum(t["bytes"] for t in taken)}
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
        click.echo(f"{len(taken)} journals {verb} ({human_bytes(result['bytes_freed'])}), {len(kept)} kept")
    return 1 if failed else 0
