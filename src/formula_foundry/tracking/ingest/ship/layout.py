"""The keys of a ship destination (pure): what lies where under ``s3://bucket/prefix`` or a folder.

Layout version 1 (keys relative to the destination's prefix)::

    ff-ship.json                              {"format": "ff-ship", "version": 1, "id": "<random>"}
                                              (created once; the id tells a re-created destination apart)
    journals/<host>/<rel>/<start:020d>.seg    bytes [start, start + size) of one journal:
                                              whole, verified records only
    blobs/sha256/<digest[:2]>/<digest>        an artifact blob (the producer's content-addressed bytes)
    leases/<name>.json                        a central ingester's lease
    checkpoints/<name>/<journal_id>.json      API-sink checkpoints of a central ingester

* ``<host>``: the shipping host's name, ``[A-Za-z0-9._-]+``.
* ``<rel>``: the journal's path relative to the journal root it was found under
  (posix), ending in ``tracking/<run_id>.<journal_id>.jsonl``; an archived
  ``.jsonl.gz`` journal ships under its ``.jsonl`` name (segments always hold the
  plain bytes).
* Segments are immutable, never overlap and chain: the one after ``start`` begins
  at ``start + size``. A journal's bytes are the concatenation of its segments in
  ``start`` order (the 20-digit zero padding makes key order that order).
* A segment's ``artifact`` records name blobs that are present before the segment is.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

__all__ = ["BLOBS", "JOURNALS", "LAYOUT", "LAYOUT_KEY", "SEGMENT_SUFFIX", "blob_key", "checkpoint_key",
           "check_host", "is_shipped_folder", "journal_prefix", "lease_key", "parse_segment_key", "segment_key"]

LAYOUT_KEY = "ff-ship.json"
LAYOUT = {"format": "ff-ship", "version": 1}
JOURNALS = "journals/"
BLOBS = "blobs/sha256/"
SEGMENT_SUFFIX = ".seg"
_HOST = re.compile(r"[A-Za-z0-9._-]+")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_START_DIGITS = 20


def check_host(host: str) -> str:
    """``host`` if it is a valid host name for the layout (``[A-Za-z0-9._-]+``, not ``.``/``..``)."""
    if not isinstance(host, str) or not _HOST.fullmatch(host) or host in (".", ".."):
        raise ValueError(f"invalid host name {host!r}: use letters, digits, '.', '_' and '-'")
    return host


def _check_rel(rel: str) -> str:
    parts = PurePosixPath(rel).parts
    if (not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in rel.split("/"))
            or len(parts) < 2 or parts[-2] != "tracking" or not rel.endswith(".jsonl")):
        raise ValueError(f"invalid journal path {rel!r}: a relative posix path ending in tracking/<name>.jsonl")
    return rel


def journal_prefix(host: str, rel: str) -> str:
    """The key prefix of one journal's segments (ends with ``/``)."""
    return f"{JOURNALS}{check_host(host)}/{_check_rel(rel)}/"


def segment_key(host: str, rel: str, start: int) -> str:
    """The key of the segment of ``host``'s journal ``rel`` starting at byte ``start``."""
    if not isinstance(start, int) or start < 0 or start >= 10**_START_DIGITS:
        raise ValueError(f"invalid segment start {start!r}")
    return f"{journal_prefix(host, rel)}{start:0{_START_DIGITS}d}{SEGMENT_SUFFIX}"


def parse_segment_key(key: str) -> tuple[str, str, int] | None:
    """``(host, rel, start)`` of a segment key, or None when ``key`` is not one."""
    if not key.startswith(JOURNALS) or not key.endswith(SEGMENT_SUFFIX):
        return None
    rest = key[len(JOURNALS):]
    host, _, path = rest.partition("/")
    rel, _, name = path.rpartition("/")
    digits = name[: -len(SEGMENT_SUFFIX)]
    if len(digits) != _START_DIGITS or not digits.isdigit():
        return None
    try:
        check_host(host)
        _check_rel(rel)
    except ValueError:
        return None
    return host, rel, int(digits)


def blob_key(digest: str) -> str:
    """The key of the blob whose sha256 is ``digest`` (64 lowercase hex digits)."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError(f"invalid sha256 digest {digest!r}")
    return f"{BLOBS}{digest[:2]}/{digest}"


def lease_key(name: str) -> str:
    """The key of the lease ``name`` (``[A-Za-z0-9._-]+``)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"invalid lease name {name!r}")
    return f"leases/{name}.json"


def checkpoint_key(name: str, journal_id: str) -> str:
    """The key of central ingester ``name``'s checkpoint of journal ``journal_id``."""
    for value, what in ((name, "checkpoint namespace"), (journal_id, "journal id")):
        if not isinstance(value, str) or not _NAME.fullmatch(value) or value in (".", ".."):
            raise ValueError(f"invalid {what} {value!r}")
    return f"checkpoints/{name}/{journal_id}.json"


def is_shipped_folder(path: Path | str) -> bool:
    """Whether the folder ``path`` is a ship destination (holds ``ff-ship.json``)."""
    return (Path(path) / LAYOUT_KEY).is_file()
