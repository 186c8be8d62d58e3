"""Discovery: regular files named like journals, under the roots, following no symlink out of them."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

from formula_foundry.tracking.framing import frame
from formula_foundry.tracking.ingest.discover import discover

RUN = "0123456789abcdef0123456789abcdef"


def journal(folder: Path, journal_id: str = "0123456789abcdef") -> Path:
    path = folder / "tracking" / f"{RUN}.{journal_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(frame({"v": 1, "seq": 0, "ts": 0, "type": "segment_end"}))
    return path


def test_regular_journals_are_found_sorted_and_once(tmp_path: Path):
    a, b = journal(tmp_path / "runs" / "a"), journal(tmp_path / "runs" / "b")
    (a.parent / "notes.txt").write_text("x")
    assert discover([tmp_path / "runs", tmp_path / "runs" / "a"], [a]) == [a.resolve(), b.resolve()]


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_a_special_file_named_like_a_journal_is_skipped_with_a_warning(tmp_path: Path, kind: str, caplog,
                                                                       monkeypatch):
    """A FIFO or socket named like a journal is not returned (a reader would block or fail on it)
    and a warning names it; the regular journal beside it is found."""
    good = journal(tmp_path / "runs" / "a")
    special = good.parent / f"{RUN}.fedcba9876543210.jsonl"
    held = None
    if kind == "fifo":
        os.mkfifo(special)
    elif kind == "socket":
        held = socket.socket(socket.AF_UNIX)
        monkeypatch.chdir(special.parent)  # a socket's path has at most 107 bytes: bind it by its name
        held.bind(special.name)
    try:
        with caplog.at_level(logging.WARNING, logger="formula_foundry.tracking.ingest.discover"):
            assert discover([tmp_path / "runs"]) == [good.resolve()]
            assert discover([tmp_path / "runs"]) == [good.resolve()]
    finally:
        if held is not None:
            held.close()
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1, warned  # once per process, not at every rescan
    assert warned[0].startswith(f"{special}: skipped: a {'FIFO' if kind == 'fifo' else 'socket'}, not a regular file")


def test_a_fifo_named_explicitly_is_skipped_and_reported(tmp_path: Path):
    fifo = tmp_path / "x.jsonl"
    os.mkfifo(fifo)
    skipped: list[tuple[Path, str]] = []
    assert discover([], [fifo], on_skip=lambda path, reason: skipped.append((path, reason))) == []
    assert skipped == [(fifo, "a FIFO, not a regular file: not a journal")]


def test_a_symlink_named_like_a_journal_is_not_followed_out_of_the_root(tmp_path: Path):
    """A link under the root to a journal outside it is skipped (with its reason); so is one to a journal
    inside the root (found once, by its own name). A link to a run folder or a tracking folder outside
    the root is not walked into."""
    outside = journal(tmp_path / "elsewhere" / "x")
    inside = journal(tmp_path / "runs" / "a")
    folder = tmp_path / "runs" / "b" / "tracking"
    folder.mkdir(parents=True)
    (tmp_path / "runs" / "linked-run").symlink_to(outside.parent.parent)
    (tmp_path / "runs" / "c").mkdir()
    (tmp_path / "runs" / "c" / "tracking").symlink_to(outside.parent)
    (folder / f"{RUN}.1111111111111111.jsonl").symlink_to(outside)
    (folder / f"{RUN}.2222222222222222.jsonl").symlink_to(inside)
    skipped: list[tuple[Path, str]] = []
    assert discover([tmp_path / "runs"], on_skip=lambda p, r: skipped.append((p.name, r))) == [inside.resolve()]
    assert sorted(skipped) == [
        (f"{RUN}.{jid}.jsonl", "a symlink: not followed below a journal root (name the file itself to ingest it)")
        for jid in ("1111111111111111", "2222222222222222")]


def test_a_root_or_path_that_is_a_symlink_is_followed(tmp_path: Path):
    """Naming a path is consent: a root that is a link to a folder, and a file named explicitly, are read
    (a guard: this held before, and must go on holding)."""
    real = journal(tmp_path / "store" / "a")
    (tmp_path / "runs").symlink_to(tmp_path / "store")
    link = tmp_path / "named.jsonl"
    link.symlink_to(real)
    assert discover([tmp_path / "runs"]) == [real.resolve()]
    assert discover([], [link]) == [real.resolve()]


def test_skip_reason_words():
    from formula_foundry.tracking.ingest.discover import skip_reason

    assert skip_reason("/no/such/file") is None
    assert skip_reason("/dev/null") == "a device, not a regular file: not a journal"
