"""Find journal files under roots and explicit paths.

What discovery takes (docs/journal-format.md, "Where journals live"):

* **Regular files only.** A FIFO, socket or device named like a journal is skipped
  with a warning: opening a FIFO for reading waits for a writer forever, which would
  hang a batch, ``status`` and ``--watch`` alike. (A folder so named is no file.)
* **No symlink below a root is followed.** A symlinked folder is not descended and a
  symlink named like a journal is skipped with a warning, wherever it points: what
  ingests is what lies under the roots, never what a link reaches outside them (or a
  second name of a journal inside them). The roots themselves, and files or folders
  named explicitly (``ff-ingest PATH``), may be symlinks: naming them is the consent.

Each skipped path goes to the ``on_skip(path, reason)`` callback when one is given,
else to a logged warning, once per process (a daemon rescans often).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from formula_foundry.tracking.journal import COMPRESSED_SUFFIX, JOURNAL_SUFFIX

__all__ = ["discover", "is_journal", "journal_id_of", "skip_reason"]

log = logging.getLogger(__name__)

_logged: set[tuple[Path, str]] = set()  # skips this process has logged (a daemon rescans often)


_GZ_SUFFIX = JOURNAL_SUFFIX + COMPRESSED_SUFFIX


def is_journal(path: Path) -> bool:
    """A journal is ``<...>/tracking/<run_id>.<journal_id>.jsonl``, or ``.jsonl.gz`` when archived."""
    if path.parent.name != "tracking":
        return False
    name = path.name
    if name.endswith(_GZ_SUFFIX):
        return name.count(".") == 3
    return path.suffix == JOURNAL_SUFFIX and name.count(".") == 2


def journal_id_of(path: Path) -> str | None:
    """The journal id in a journal's file name (``<run_id>.<journal_id>.jsonl[.gz]``), or None."""
    parts = path.name.split(".")
    return parts[1] if len(parts) == 3 or (len(parts) == 4 and parts[3] == "gz") else None


def skip_reason(path: Path | str, *, follow_symlinks: bool = False) -> str | None:
    """Why ``path`` (named like a journal) is not taken as one, or None when it is a regular file.

    Without ``follow_symlinks`` a symlink is refused whatever it points to (a path
    found below a root); with it, the file it points to is judged (a path named
    explicitly). A path that is gone gives None: the reader reports that, if it is
    still gone when read.
    """
    try:
        mode = (os.stat if follow_symlinks else os.lstat)(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot stat: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "a symlink: not followed below a journal root (name the file itself to ingest it)"
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a folder" if stat.S_ISDIR(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")
    return f"{kind}, not a regular file: not a journal"


def file_size(path: Path) -> int | None:
    """The size of ``path``'s journal content in bytes, or None when it cannot be stat'ed (gone, unreadable folder).

    For an archived ``.gz`` journal: its uncompressed size, from the gzip trailer
    (exact below 4 GiB; an archive is one gzip member, as ``prune --archive`` writes it).
    """
    try:
        st = path.stat()
        if not path.name.endswith(COMPRESSED_SUFFIX) or not stat.S_ISREG(st.st_mode):
            return st.st_size  # (never open a FIFO named like an archive: it would wait for a writer)
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            return int.from_bytes(fh.read(4), "little")
    except (OSError, ValueError):
        return None


def discover(roots: Iterable[Path], paths: Iterable[Path] = (), *,
             on_skip: Callable[[Path, str], None] | None = None) -> list[Path]:
    """Every journal under ``roots`` (recursively) and ``paths`` (files, or folders searched recursively).

    Missing roots are skipped (a fresh project has no ``data/runs`` yet); the
    result is sorted and free of duplicates. Special files and symlinks are
    skipped as the module docstring says.
    """
    found: dict[Path, None] = {}

    def skip(path: Path, reason: str) -> None:
        if on_skip is not None:
            on_skip(path, reason)
        elif (path, reason) not in _logged:
            _logged.add((path, reason))
            log.warning("%s: skipped: %s", path, reason)

    for item in [*roots, *paths]:
        item = Path(item)
        if item.is_dir():
            _walk(item, found, skip)
        elif item.exists():  # a root that does not exist yet is no error; nor is a vanished path
            reason = skip_reason(item, follow_symlinks=True)
            if reason is None:
                found[item.resolve()] = None
            else:
                skip(item, reason)
    return sorted(found)


def _walk(top: Path, found: dict[Path, None], skip: Callable[[Path, str], None]) -> None:
    """The journals below ``top``, following no symlink below it."""
    for folder, dirs, files in os.walk(top, followlinks=False):
        dirs.sort()
        if os.path.basename(folder) != "tracking":
            continue
        for name in files:
            path = Path(folder, name)
            if not is_journal(path):
                continue
            reason = skip_reason(path)
            if reason is None:
                found[path.resolve()] = None
            else:
                skip(path, reason)
