"""Run directories: one directory per run under a run root, named by a validated run id.

Layout of a run directory::

    <run_root>/<run_id>/
        manifest.json   the run's Manifest (see manifest.py), written atomically
        tracking/       journals of the tracker (created by init_run_dir)
        outputs/        files the run produces (created by whoever writes them)

A run id must match ``^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`` and must not contain
``..``; any other id raises :class:`UnsafeRunIdError`. The run directory, once
resolved through symlinks, must lie inside the resolved run root, so nothing is ever
created outside it.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from formula_foundry.errors import SubstrateError, UnsafeRunIdError
from formula_foundry.substrate.manifest import Manifest

__all__ = ["RUN_ID_RULE", "RunArtifacts", "create_run", "init_run_dir", "new_run_id", "validate_run_id"]

RUN_ID_RULE = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ and no '..'"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def validate_run_id(run_id: object) -> str:
    """Return ``run_id`` if it is safe as a single directory name, else raise UnsafeRunIdError."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise UnsafeRunIdError(f"unsafe run id {run_id!r}: must match {RUN_ID_RULE}")
    return run_id


def new_run_id() -> str:
    """A fresh run id: UTC timestamp plus 6 random hex digits, e.g. ``20261123T160102Z-1a2b3c``."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class RunArtifacts:
    """A run directory: its id, its absolute path and the places inside it."""

    run_id: str
    run_dir: Path

    def __post_init__(self) -> None:
        validate_run_id(self.run_id)
        run_dir = Path(self.run_dir)
        if run_dir.name != self.run_id:
            raise SubstrateError(f"run directory {run_dir} is not named after its run id {self.run_id!r}")
        object.__setattr__(self, "run_dir", run_dir)

    @property
    def run_root(self) -> Path:
        return self.run_dir.parent

    @property
    def manifest_path(self) -> Path:
        return self.run_dir / "manifest.json"

    @property
    def tracking_dir(self) -> Path:
        return self.run_dir / "tracking"

    @property
    def outputs_dir(self) -> Path:
        return self.run_dir / "outputs"

    @classmethod
    def from_dir(cls, run_dir: Path | str) -> RunArtifacts:
        """Rebuild from an existing run directory; its name must be a valid run id."""
        path = Path(run_dir).absolute()
        run_id = validate_run_id(path.name)
        if not path.is_dir():
            raise SubstrateError(f"{path}: run directory does not exist")
        return cls(run_id=run_id, run_dir=path.parent.resolve() / run_id)


def init_run_dir(run_root: Path | str, run_id: str) -> RunArtifacts:
    """Create ``<run_root>/<run_id>/`` and its ``tracking/`` dir (idempotent) and describe it.

    Raises UnsafeRunIdError, before touching the file system, for an unsafe id, and
    when the run directory or its tracking dir resolves (via a symlink) outside the run root.
    """
    validate_run_id(run_id)
    root = Path(run_root)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve(strict=True)
    artifacts = RunArtifacts(run_id=run_id, run_dir=root / run_id)
    _ensure_inside(artifacts.run_dir, root, run_id)  # an existing symlink, before we write through it
    artifacts.run_dir.mkdir(exist_ok=True)
    _ensure_inside(artifacts.tracking_dir, root, run_id)
    artifacts.tracking_dir.mkdir(exist_ok=True)
    _ensure_inside(artifacts.tracking_dir, root, run_id)  # a symlink swapped in meanwhile
    return artifacts


def create_run(
    run_root: Path | str, run_id: str | None = None, *, manifest: Manifest | None = None
) -> RunArtifacts:
    """Create a run directory and write its manifest (default: from the environment).

    ``run_id`` defaults to :func:`new_run_id`. An existing manifest of the same run is
    replaced atomically.
    """
    artifacts = init_run_dir(run_root, run_id if run_id is not None else new_run_id())
    (manifest if manifest is not None else Manifest.from_environment()).write(artifacts.manifest_path)
    return artifacts


def _ensure_inside(path: Path, root: Path, run_id: str) -> None:
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise UnsafeRunIdError(f"run id {run_id!r}: {path} cannot be resolved: {exc}") from exc
    if resolved == root or not resolved.is_relative_to(root):
        raise UnsafeRunIdError(f"run id {run_id!r}: {path} resolves to {resolved}, outside run root {root}")
