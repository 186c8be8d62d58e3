"""What a ship destination holds of a local journal: the facts of ``ff-ingest prune --shipped-to URI``.

The destination is the truth. This host's ship state (:mod:`.state`) only says under which
name (``host``, ``rel``) a journal was shipped, whether its last pass ended in an error, and
which destination the state belongs to (the id in its ``destination.json``). A journal is held
by the destination, up to the end of its chain, when:

* the destination's ``ff-ship.json`` carries the id the state is bound to: a destination wiped
  and made again under the same URI does not hold what was shipped to the old one;
* the state has an entry for the journal (this host shipped it there), naming this file or one
  that is gone (a moved journal keeps its remote name; a copy of a journal shipped from a path
  that still exists is an error, as for the shipper);
* its segments, listed at the destination (one request per 1000), chain from byte 0 with no
  gap and no overlap (:func:`chain_end`).

Reads only: never writes the destination or the state folder, and takes no lock (a shipper may
be running). Needs neither MLflow nor SQLAlchemy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from formula_foundry.errors import IngestError
from formula_foundry.tracking.ingest.objects import ObjectStore
from formula_foundry.tracking.ingest.ship.layout import LAYOUT, LAYOUT_KEY, journal_prefix, parse_segment_key
from formula_foundry.tracking.ingest.ship.state import JournalState, ShipState

__all__ = ["Destination", "Holding", "chain_end"]


@dataclass(frozen=True)
class Holding:
    """What a destination holds of one local journal."""

    problem: str | None = None  # why it holds nothing of it as this journal's (not shipped), or None
    error: str | None = None  # the journal's error: its ship state's, or a copy of a journal shipped from elsewhere
    end: int = 0  # where its chain of segments from byte 0 ends


def chain_end(segments: list[tuple[int, int]]) -> tuple[int, int | None]:
    """(where ``[(start, size)]`` chains from byte 0 without gap or overlap ends, the start of the first
    segment that breaks the chain or None)."""
    end = 0
    for start, size in sorted(segments):
        if start != end:
            return end, start
        end = start + size
    return end, None


class Destination:
    """One ship destination as this host's ship state knows it (see the module docstring); reads only."""

    def __init__(self, objects: ObjectStore, state_dir: Path) -> None:
        self.objects = objects
        self.state = ShipState.for_destination(state_dir, objects)
        self._id: str | None = None

    @property
    def display_uri(self) -> str:
        return self.objects.display_uri

    def remote_id(self, *, fresh: bool = False) -> str:
        """The id in the destination's ``ff-ship.json`` (read once, or afresh); :class:`IngestError` (exit 2)
        when the destination is not one, :class:`~..objects.ObjectStoreError` (exit 3) when unreachable."""
        if self._id is not None and not fresh:
            return self._id
        try:
            raw = json.loads(self.objects.get(LAYOUT_KEY))
        except FileNotFoundError:
            next(iter(self.objects.list(LAYOUT_KEY)), None)  # a share that is not mounted: exit 3, not 2
            raise IngestError(f"{self.display_uri}: not a ship destination (no {LAYOUT_KEY}), though this host "
                              "shipped to it: wiped, or another folder mounted there?") from None
        except ValueError:
            raise IngestError(f"{self.display_uri}/{LAYOUT_KEY}: not a ship layout file (not JSON)") from None
        if not isinstance(raw, dict) or raw.get("format") != LAYOUT["format"] or not isinstance(raw.get("id"), str):
            raise IngestError(f"{self.display_uri}/{LAYOUT_KEY}: not a ship layout file: {str(raw)[:100]}")
        if not isinstance(raw.get("version"), int) or raw["version"] > LAYOUT["version"]:
            raise IngestError(f"{self.display_uri}: ship layout version {raw.get('version')!r}; this ff-ingest "
                              f"reads version {LAYOUT['version']}: upgrade formula-foundry")
        self._id = raw["id"]
        return self._id

    def bound_id(self) -> str | None:
        """The id of the destination this host's ship state belongs to (its ``destination.json``), or None."""
        try:
            known = json.loads((self.state.folder / "destination.json").read_bytes()).get("id")
        except (OSError, ValueError, AttributeError):
            return None
        return known if isinstance(known, str) and known else None

    def entry(self, journal_id: str) -> JournalState | None:
        """The state's entry of ``journal_id``, read from its file now (None: none, or unreadable)."""
        try:
            return JournalState.from_json(json.loads((self.state.journals_dir / f"{journal_id}.json").read_bytes()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def segments(self, entry: JournalState) -> list[tuple[int, int]]:
        """``[(start, size)]`` of the journal's segments at the destination (listed now)."""
        return [(parsed[2], info.size) for info in self.objects.list(journal_prefix(entry.host, entry.rel))
                if (parsed := parse_segment_key(info.key)) is not None
                and (parsed[0], parsed[1]) == (entry.host, entry.rel)]

    def holding(self, path: Path, journal_id: str, *, fresh: bool = False) -> Holding:
        """What the destination holds of the journal ``journal_id`` at ``path`` (the destination's id read
        afresh with ``fresh``; the state entry and the listing always are)."""
        bound = self.bound_id()
        entry = self.entry(journal_id) if bound is not None else None
        if entry is None:
            return Holding(problem=f"this host has no ship state of it for {self.display_uri} "
                                   f"(ff-ingest ship --to {self.display_uri} first)")
        if entry.path != str(path) and Path(entry.path).exists() and not _same_file(Path(entry.path), path):
            return Holding(error=f"{path}: a copy of journal {journal_id}, which is shipped from {entry.path}")
        if entry.error:
            return Holding(error=entry.error)
        remote = self.remote_id(fresh=fresh)
        if remote != bound:
            return Holding(problem=f"{self.display_uri} was made again since this host shipped to it (its "
                                   f"{LAYOUT_KEY} id is {remote}, this host's ship state is of {bound}): "
                                   "it does not hold what was shipped before")
        try:
            segments = self.segments(entry)
        except ValueError as exc:  # a damaged state entry (host or name not of the layout)
            return Holding(problem=f"its ship state entry is damaged: {exc}")
        prefix = f"{self.display_uri}/{journal_prefix(entry.host, entry.rel)}"
        if not segments:
            return Holding(problem=f"{prefix}: no segment")
        end, broken = chain_end(segments)
        if broken is not None and broken > end:
            return Holding(problem=f"{prefix}: no segment starts at byte {end}", end=end)
        if broken is not None:
            return Holding(problem=f"{prefix}: a segment starts at byte {broken}, inside the one before (it ends "
                                   f"at {end})", end=end)
        return Holding(end=end)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
