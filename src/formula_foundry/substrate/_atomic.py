"""Durable, atomic file writes: temp file in the target's file system, fsync, rename, fsync dir.

A reader sees either the old file or the complete new one, never a torn write, and a
write that returned survives a power loss. The steps are: create a uniquely named temp
file (``tempfile.mkstemp``, so a leftover temp of a crashed writer never collides) ->
write -> flush -> ``fsync`` -> ``os.replace`` onto the target -> ``fsync`` the target's
directory so the rename itself is durable.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["atomic_write_bytes", "fsync_dir", "replace_durably", "write_temp"]


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (a rename, a new file) to disk; a no-op where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def write_temp(directory: Path, chunks: Iterable[bytes], *, prefix: str = ".tmp-") -> Path:
    """Write ``chunks`` to a new temp file in ``directory``, fsync it and return its path.

    The chunks are consumed one at a time, so a generator streams without buffering.
    If anything fails (including the iterator itself), the temp file is removed.
    """
    import tempfile  # deferred: keeps `import formula_foundry.tracking` cheap

    fd, name = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".part")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return tmp


def replace_durably(src: Path, dst: Path) -> None:
    """``os.replace(src, dst)`` (same file system), then fsync ``dst``'s directory."""
    os.replace(src, dst)
    fsync_dir(dst.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably; the temp file sits beside it."""
    target = Path(path)
    tmp = write_temp(target.parent, (data,), prefix=f".{target.name}.")
    try:
        replace_durably(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
