"""Find journal files under roots and explicit paths."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from formula_foundry.tracking.journal import JOURNAL_SUFFIX

__all__ = ["discover", "is_journal", "journal_id_of"]


def is_journal(path: Path) -> bool:
    """A journal is ``<...>/tracking/<run_id>.<journal_id>.jsonl``."""
    return path.suffix == JOURNAL_SUFFIX and path.parent.name == "tracking" and path.name.count(".") == 2


def journal_id_of(path: Path) -> str | None:
    """The journal id in a journal's file name (``<run_id>.<journal_id>.jsonl``), or None."""
    parts = path.name.split(".")
    return parts[1] if len(parts) == 3 else None


def discover(roots: Iterable[Path], paths: Iterable[Path] = ()) -> list[Path]:
    """Every journal under ``roots`` (recursively) and ``paths`` (files, or folders searched recursively).

    Missing roots are skipped (a fresh project has no ``data/runs`` yet); the
    result is sorted and free of duplicates.
    """
    found: dict[Path, None] = {}
    for item in [*roots, *paths]:
        item = Path(item)
        if item.is_file():
            found[item.resolve()] = None
            continue
        if not item.is_dir():
            continue
        for folder, dirs, files in os.walk(item, followlinks=False):
            dirs.sort()
            if os.path.basename(folder) != "tracking":
                continue
            for name in files:
                path = Path(folder, name)
                if is_journal(path):
                    found[path.resolve()] = None
    return sorted(found)
