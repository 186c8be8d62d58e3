"""The substrate: run directories, a content-addressed artifact store and run manifests.

Standard library, orjson and pyyaml only; nothing here imports tracking or MLflow.

- :func:`init_run_dir`, :func:`create_run`, :class:`RunArtifacts` (``rundir``)
- :class:`ArtifactStore`, :class:`ArtifactEntry` (``store``)
- :class:`Manifest`, :class:`DeterminismConfig` (``manifest``)

Errors are the :class:`formula_foundry.errors.SubstrateError` branch of the error tree.
"""

from __future__ import annotations

from formula_foundry.substrate.manifest import DeterminismConfig, Manifest
from formula_foundry.substrate.rundir import RunArtifacts, create_run, init_run_dir
from formula_foundry.substrate.store import ArtifactEntry, ArtifactStore

__all__ = [
    "ArtifactEntry",
    "ArtifactStore",
    "DeterminismConfig",
    "Manifest",
    "RunArtifacts",
    "create_run",
    "init_run_dir",
]
