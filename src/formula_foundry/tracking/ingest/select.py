"""Selective ingest, status and prune: which journals a ``--run-id/--experiment/--since/--until`` set names.

Decided on each journal's header (its first record) alone:

* ``--run-id ID`` (repeatable): the producer's run id (``run_id``), any of them;
* ``--experiment NAME``: the header's ``experiment``, exactly;
* ``--since`` / ``--until``: the run's start (the header's ``ts``), ``since <= start < until``;
  an ISO date (``2026-12-01``) or datetime (``2026-12-01T08:30``, ``...+02:00``); without a
  zone, UTC.

All given filters must hold. An attached segment (``run_attach``) carries neither
experiment nor start: it is judged by its run's ``run_start`` journal when that one is
among the journals scanned (else only ``--run-id`` can select it). A child run is
**not** selected because its parent is: it must match itself (select it by its own
run id, or by an experiment or time span that covers it). A journal whose header is
incomplete or unreadable is not selected while a filter is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from formula_foundry.tracking.journal import JournalReader

__all__ = ["Selection", "parse_time", "select"]


def parse_time(text: str) -> int:
    """An ISO date or datetime -> milliseconds since the epoch (UTC when no zone is given); ValueError."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO date or datetime (2026-12-01, 2026-12-01T08:30)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class Selection:
    run_ids: frozenset[str] = frozenset()
    experiment: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def __bool__(self) -> bool:
        return bool(self.run_ids) or self.experiment is not None or self.since_ms is not None \
            or self.until_ms is not None

    def matches(self, header: dict | None, owner: dict | None = None) -> bool:
        """Does the journal with ``header`` match? ``owner``: its run's run_start header (for a segment)."""
        if not self:
            return True
        if header is None:
            return False
        if self.run_ids and header.get("run_id") not in self.run_ids:
            return False
        start = header if header.get("type") == "run_start" else owner
        if self.experiment is not None or self.since_ms is not None or self.until_ms is not None:
            if start is None:
                return False
            if self.experiment is not None and start.get("experiment") != self.experiment:
                return False
            ts = start.get("ts")
            if not isinstance(ts, int):
                return False
            if self.since_ms is not None and ts < self.since_ms:
                return False
            if self.until_ms is not None and ts >= self.until_ms:
                return False
        return True


def _first_record(path: Path) -> dict | None:
    try:
        return JournalReader(path).first_record()
    except Exception:  # noqa: BLE001 - an unreadable header is no match; the ingest reports it when selected
        return None


def select(paths: Iterable[Path], selection: Selection,
           header_of: Callable[[Path], dict | None] = _first_record) -> list[Path]:
    """The ``paths`` whose journals ``selection`` matches (all of them when it is empty), in order."""
    paths = list(paths)
    if not selection:
        return paths
    headers = {p: header_of(p) for p in paths}
    owners = {h["run_id"]: h for h in headers.values() if h and h.get("type") == "run_start"}
    return [p for p in paths if selection.matches(headers[p], owners.get((headers[p] or {}).get("run_id", "")))]
