"""A journal's console text, for the artifact ``logs/console.txt``. Reads the journal; no store, no MLflow.

MLflow's artifact repositories cannot append to a file, so a sink that commits a
batch with ``console`` records rewrites ``logs/console.txt`` whole: the texts of
every ``console`` record of the journal from its start up to the batch's end,
stdout and stderr interleaved in journal order. :class:`ConsoleText` reads them:
only lines that contain ``"type":"console"`` are verified and decoded (a JSON
string never holds that byte sequence, since its quotes are escaped), and it
remembers where it stopped in the last journal it read, so committing the
batches of one journal one after another reads each byte once. After a crash
the next ingester reads from the start again: rebuilding from the journal is
what makes the rewrite idempotent.
"""

from __future__ import annotations

import os
import threading

from formula_foundry.tracking.framing import FrameError, unframe

__all__ = ["CONSOLE_ARTIFACT", "ConsoleText", "console_text"]

CONSOLE_ARTIFACT = "logs/console.txt"
_MARK = b'"type":"console"'
_BLOCK = 1 << 20


def _scan(path: str, start: int, end: int) -> list[str]:
    """Texts of the ``console`` records on the complete lines between byte offsets ``start`` and ``end``."""
    texts: list[str] = []
    carry = b""
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            block = f.read(min(_BLOCK, left))
            if not block:
                break
            left -= len(block)
            data = carry + block
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            if _MARK not in data[:cut]:
                continue
            for line in data[:cut].split(b"\n"):
                if _MARK in line:
                    try:
                        record = unframe(line)
                    except FrameError:
                        continue  # replay reports bad lines; this only gathers text
                    if record.get("type") == "console" and type(record.get("text")) is str:
                        texts.append(record["text"])
    return texts


def console_text(path: str | os.PathLike, end: int) -> str:
    """The console text of the journal ``path`` from its start up to byte offset ``end``."""
    return "".join(_scan(os.fspath(path), 0, end))


class ConsoleText:
    """:func:`console_text` with a memory of the last journal read, so successive batches read on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, str] | None = None  # (journal id, path)
        self._end = 0
        self._texts: list[tuple[int, str]] = []  # (end offset of the scanned range, text) ...

    def text(self, journal_id: str, path: str | os.PathLike, end: int) -> bytes:
        """The UTF-8 content of ``logs/console.txt`` for journal ``journal_id`` up to byte offset ``end``."""
        path = os.fspath(path)
        with self._lock:
            if self._key != (journal_id, path):
                self._key, self._end, self._texts = (journal_id, path), 0, []
            elif end < self._end:  # a replay from an earlier position (a rolled-back commit): read on from there
                self._texts = [(e, t) for e, t in self._texts if e <= end]
                self._end = self._texts[-1][0] if self._texts else 0
            if end > self._end:
                new = "".join(_scan(path, self._end, end))
                if new:
                    self._texts.append((end, new))
                self._end = end
            return "".join(text for _, text in self._texts).encode("utf-8", "replace")
