"""Where the blob of an ``artifact`` record lies on this host (dependency-free: no MLflow).

An ``artifact`` record names the content-addressed store the producer wrote the
blob into (``store_uri``: a ``file://`` URI or an absolute path); the configured
``journal.artifact_store`` is the fallback (a project moved since, a store on
another mount). The blob's place inside a store is
:meth:`~formula_foundry.substrate.ArtifactStore.path_for`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from formula_foundry.substrate import ArtifactStore

__all__ = ["blob_candidates", "store_root"]


def store_root(store_uri: str | None) -> Path | None:
    """The local folder of a ``file://`` store URI (or an absolute path); None for anything else."""
    if not store_uri:
        return None
    parts = urlsplit(store_uri)
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        return Path(url2pathname(parts.path))
    if not parts.scheme and store_uri.startswith("/"):
        return Path(store_uri)
    return None


def blob_candidates(digest: str, store_uri: str | None, roots: Iterable[Path] = ()) -> list[Path]:
    """Where to look for the blob ``digest``, in order: the record's store, then each of ``roots``."""
    folders: list[Path] = []
    named = store_root(store_uri)
    if named is not None:
        folders.append(named)
    folders += [Path(r) for r in roots if Path(r) not in folders]
    return [ArtifactStore(folder).path_for(digest) for folder in folders]
