"""Is the file at a path still the journal its checkpoint describes? (pure, plus one ``samefile``)

A checkpoint says "journal J of run R was ingested up to byte B of the file at
P". Journals only grow, so any of these means the file is not that journal any
more, and ingesting it would put someone else's records into run R, or nothing
at all while ``status`` shows stale counts:

* **truncated**: the file is shorter than B (restored from an old backup,
  rewritten by hand): the ingested records are gone from it (not checked for an
  archived ``.gz`` journal, whose size on disk is not its content's);
* **replaced**: its first record names another run or journal than its file
  name (``<run_id>.<journal_id>.jsonl``, or ``.jsonl.gz`` when archived): another run's
  journal was copied over it;
* **a copy**: it carries the journal id of a checkpoint whose own file still
  exists at another path (a copied run folder). A journal whose old path is
  gone was *moved*, which is fine: its checkpoint follows it.

The ingester reports such a journal as an error (once, with the reason) and
never ingests it; ``ff-ingest status`` shows it in ``error``. Fix the file (or
remove the copy) and the next pass takes it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from formula_foundry.tracking.ingest.sink import Checkpoint

__all__ = ["Mismatch", "mismatch"]


class Mismatch(NamedTuple):
    kind: str  # renamed | copy | replaced | truncated
    message: str


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def mismatch(path: Path, size: int, run_id: str | None, journal_id: str | None,
             cp: Checkpoint | None) -> Mismatch | None:
    """Why the file at ``path`` is not the journal its name and checkpoint say, or None.

    ``run_id``/``journal_id``: from its first record (None while that is incomplete);
    ``cp``: the checkpoint of that journal id, if any.
    """
    named_run, _, rest = path.name.partition(".")
    named_journal = rest.partition(".")[0]
    if run_id is not None and (run_id, journal_id) != (named_run, named_journal):
        return Mismatch("replaced", f"{path}: replaced: its name says run {named_run} (journal {named_journal}), "
                                    f"its first record run {run_id} (journal {journal_id}); not ingested "
                                    "(restore the journal, or give the file its own name)")
    if cp is None:
        return None
    if cp.path != str(path) and Path(cp.path).exists() and not _same_file(Path(cp.path), path):
        return Mismatch("copy", f"{path}: a copy of journal {cp.journal_id}, which is ingested from {cp.path}; "
                                "not ingested (remove one of the two)")
    if size < cp.position.offset and not path.name.endswith(".gz"):
        return Mismatch("truncated", f"{path}: truncated to {size} bytes, below its checkpoint at byte "
                                     f"{cp.position.offset} (line {cp.position.line}): records already ingested "
                                     "are gone from the file; not ingested further (restore the journal)")
    return None
