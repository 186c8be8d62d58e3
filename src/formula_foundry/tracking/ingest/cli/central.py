"""``--root s3://bucket/prefix`` (or a shipped folder): what ``ingest`` and ``status`` do with a shipped root.

A ``--root`` is *shipped* when it is an object store URI (``s3://...``,
``file://...``) or a folder holding ``ff-ship.json`` (a mounted share that
``ff-ingest ship --to`` writes). Such a root is given alone; the journals are
those of its local mirror (:mod:`..ship.mirror`), ingested under the central
lease (:mod:`..lease`, :mod:`..central`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import click

from formula_foundry.tracking.config import Config
from formula_foundry.tracking.ingest.central import central_pass, run_central_daemon
from formula_foundry.tracking.ingest.objects import is_object_uri, open_objects
from formula_foundry.tracking.ingest.ship.layout import is_shipped_folder
from formula_foundry.tracking.ingest.ship.mirror import Mirror, SyncReport, mirror_of

__all__ = ["central_ingest", "is_shipped_root", "refuse_mirrored", "shipped_root"]


def is_shipped_root(text: str) -> bool:
    return is_object_uri(text) or (Path(text).is_dir() and is_shipped_folder(text))


def shipped_root(roots: Iterable[str]) -> str | None:
    """The shipped root among ``--root`` values, or None when they are all local journal roots."""
    roots = list(roots)
    shipped = [r for r in roots if is_shipped_root(r)]
    if not shipped:
        return None
    if len(roots) > 1:
        raise click.UsageError("a shipped --root (s3://..., file://... or a folder holding ff-ship.json) is "
                               "ingested alone: give it as the only --root")
    return shipped[0]


def refuse_mirrored(paths: Iterable[str]) -> None:
    """Refuse journals named inside a central mirror: they are ingested through their destination."""
    for text in paths:
        for folder in Path(text).resolve().parents:
            if folder.name == "journals" and (info := mirror_of(folder)) is not None:
                raise click.UsageError(f"{text} lies in the mirror of the ship destination {info.source}: "
                                       f"ingest it with ff-ingest --root {info.source} (under the central lease)")


def central_ingest(cfg: Config, root: str, *, tracking_uri: str | None, sink: str | None, watch: bool,
                   dry_run: bool, wait_lease: bool, skip_corrupt: bool, quiet: bool,
                   batch: Callable[[Config], int]) -> int:
    """``ff-ingest --root <shipped root>``: the daemon (``watch``) or one pass of ``batch`` over the mirror."""
    uri = tracking_uri or cfg.tracking.backend_store_uri
    objects = open_objects(root)
    try:
        if watch:
            return run_central_daemon(cfg, objects, tracking_uri=uri, sink=sink, skip_corrupt=skip_corrupt,
                                      wait_lease=wait_lease)

        def synced(report: SyncReport, mirror: Mirror) -> None:
            for problem in report.problems:
                click.echo(f"warning: {problem}", err=True)
            if not quiet:
                click.echo(report.summary(objects.display_uri, mirror.folder), err=True)

        return central_pass(cfg, objects, tracking_uri=uri, batch=batch, dry_run=dry_run, wait_lease=wait_lease,
                            on_sync=synced)
    finally:
        objects.close()
