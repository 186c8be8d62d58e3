"""Run provenance: the determinism settings and the manifest that records where a run came from.

On-disk format, ``manifest.json`` (``manifest_version`` 1): one UTF-8 JSON object, keys
sorted, indented by two spaces, ending in a newline, written atomically (shown annotated
and with ``seeds`` compacted)::

    {
      "created_utc": "2026-11-23T16:01:02Z",        ISO 8601, UTC, seconds
      "cublas_workspace_config": ":4096:8",         or null
      "design_doc_sha256": "<64 hex>",              or "unknown"
      "determinism_mode": "strict",                 "strict" | "relaxed" | "off"
      "environment_fingerprint": "<64 hex>",
      "git_sha": "<40 hex>",                        or "unknown"
      "manifest_version": 1,
      "platform": "Linux-6.8.0-x86_64-with-glibc2.39",
      "python_version": "3.11.7",
      "seeds": {"numpy": 42, "python": 42, "torch": 42}
    }

A reader accepts a missing ``manifest_version`` as 1 and rejects a newer one. Unknown
keys, missing keys and wrong types are :class:`SubstrateError` naming the key.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform as _platform
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from formula_foundry.errors import ArtifactNotFoundError, SubstrateError
from formula_foundry.substrate._atomic import atomic_write_bytes

__all__ = ["MANIFEST_VERSION", "UNKNOWN", "DeterminismConfig", "Manifest"]

MANIFEST_VERSION = 1
UNKNOWN = "unknown"
"""The value of a provenance field that could not be determined."""

DETERMINISM_MODES = ("strict", "relaxed", "off")
DEFAULT_PRNGS = ("python", "numpy", "torch")
GIT_TIMEOUT_S = 5.0

_SEED_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
_CUBLAS_CONFIG = re.compile(r"(?::\d+:\d+)+")
_GIT_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 or SHA-256 repositories
_CHUNK = 1 << 20


def _check_seed(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SubstrateError(f"seed {name!r} must be a non-negative int, got {value!r}")
    return value


@dataclass(frozen=True)
class DeterminismConfig:
    """How reproducible a run must be, and the seeds of its PRNGs.

    ``mode`` is ``"strict"``, ``"relaxed"`` or ``"off"``. ``seeds`` (PRNG name -> seed)
    overrides the default of ``seed`` for each of python, numpy and torch. PRNG names
    become MLflow tags ``seed_<name>``, so they are limited to ``[A-Za-z0-9_]``.
    """

    mode: str = "strict"
    seed: int = 0
    cublas_workspace_config: str | None = None
    seeds: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        if self.mode not in DETERMINISM_MODES:
            raise SubstrateError(
                f"determinism mode {self.mode!r} is not one of {', '.join(DETERMINISM_MODES)}"
            )
        _check_seed("seed", self.seed)
        cublas = self.cublas_workspace_config
        if cublas is not None and not (isinstance(cublas, str) and _CUBLAS_CONFIG.fullmatch(cublas)):
            raise SubstrateError(
                f"cublas_workspace_config {cublas!r} must look like ':4096:8' (':SIZE:COUNT', repeatable)"
            )
        if self.seeds is not None:
            if not isinstance(self.seeds, Mapping):
                raise SubstrateError(f"seeds must be a mapping of PRNG name to int, got {self.seeds!r}")
            for name, value in self.seeds.items():
                if not isinstance(name, str) or not _SEED_NAME.fullmatch(name):
                    raise SubstrateError(f"PRNG name {name!r} must match [A-Za-z0-9_]{{1,64}}")
                _check_seed(name, value)
            object.__setattr__(self, "seeds", dict(self.seeds))  # a private copy

    def prng_seeds(self) -> dict[str, int]:
        """Seed per PRNG: ``seeds`` if given, else ``seed`` for python, numpy and torch."""
        if self.seeds is not None:
            return dict(self.seeds)
        return {name: self.seed for name in DEFAULT_PRNGS}


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """Where a run came from: code, design, environment and determinism settings.

    Frozen and keyword-only; ``seeds`` is a private copy of the mapping given. Build one
    for the current process with :meth:`from_environment`.
    """

    git_sha: str
    design_doc_sha256: str
    environment_fingerprint: str
    determinism_mode: str
    seeds: dict[str, int]
    cublas_workspace_config: str | None
    created_utc: str
    python_version: str
    platform: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", dict(self.seeds))

    @classmethod
    def from_environment(
        cls,
        determinism: DeterminismConfig | None = None,
        *,
        repo_dir: Path | str | None = None,
        design_doc: Path | str | None = None,
    ) -> Manifest:
        """Describe the current process; never raises for missing git, repo or design doc.

        ``git_sha``: ``$FF_GIT_SHA`` if set, else ``git rev-parse HEAD`` in ``repo_dir``
        (default: the current directory), else ``"unknown"``. ``design_doc_sha256``: sha256
        of ``design_doc`` (default: ``$FF_DESIGN_DOC``), ``"unknown"`` if unset or unreadable.
        """
        determinism = determinism if determinism is not None else DeterminismConfig()
        if design_doc is None:
            design_doc = os.environ.get("FF_DESIGN_DOC") or None
        return cls(
            git_sha=git_sha(repo_dir),
            design_doc_sha256=_file_sha256(design_doc),
            environment_fingerprint=environment_fingerprint(),
            determinism_mode=determinism.mode,
            seeds=determinism.prng_seeds(),
            cublas_workspace_config=determinism.cublas_workspace_config,
            created_utc=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            python_version=_platform.python_version(),
            platform=_platform.platform(),
        )

    def tags(self) -> dict[str, str]:
        """The MLflow tags of this manifest: provenance fields plus ``seed_<name>`` per PRNG."""
        tags = {
            "git_sha": self.git_sha,
            "design_doc_sha256": self.design_doc_sha256,
            "environment_fingerprint": self.environment_fingerprint,
            "determinism_mode": self.determinism_mode,
        }
        tags.update({f"seed_{name}": str(value) for name, value in sorted(self.seeds.items())})
        return tags

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, including ``manifest_version``."""
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in _FIELDS}
        data["seeds"] = dict(self.seeds)
        data["manifest_version"] = MANIFEST_VERSION
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Inverse of :meth:`to_dict`; strict about keys and types."""
        if not isinstance(data, Mapping):
            raise SubstrateError(f"manifest must be a JSON object, got {type(data).__name__}")
        version = data.get("manifest_version", MANIFEST_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or version > MANIFEST_VERSION:
            raise SubstrateError(
                f"manifest key 'manifest_version': {version!r} is not supported (max {MANIFEST_VERSION})"
            )
        known = {f.name for f in _FIELDS}
        unknown = sorted(set(data) - known - {"manifest_version"})
        if unknown:
            raise SubstrateError(f"manifest key {unknown[0]!r}: unknown key")
        for f in _FIELDS:
            if f.name not in data:
                raise SubstrateError(f"manifest key {f.name!r}: missing")
            value = data[f.name]
            nullable = f.name == "cublas_workspace_config"
            if f.name == "seeds":
                if not isinstance(value, Mapping):
                    raise SubstrateError(f"manifest key 'seeds': expected an object, got {value!r}")
                for name, seed in value.items():
                    _check_seed(name, seed)
            elif not (isinstance(value, str) or (nullable and value is None)):
                raise SubstrateError(f"manifest key {f.name!r}: expected a string, got {value!r}")
        return cls(**{f.name: data[f.name] for f in _FIELDS})

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, two-space indent, no trailing newline)."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Inverse of :meth:`to_json`."""
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise SubstrateError(f"manifest is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def write(self, path: Path | str) -> None:
        """Write the manifest to ``path`` atomically (temp file, fsync, rename)."""
        atomic_write_bytes(path, self.to_json().encode() + b"\n")

    @classmethod
    def read(cls, path: Path | str) -> Manifest:
        """Read a manifest written by :meth:`write`; errors name the file."""
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactNotFoundError(f"{path}: manifest not found") from exc
        except OSError as exc:
            raise SubstrateError(f"{path}: cannot read manifest: {exc}") from exc
        try:
            return cls.from_json(data)
        except SubstrateError as exc:
            raise SubstrateError(f"{path}: {exc}") from exc


_FIELDS = fields(Manifest)


def git_sha(repo_dir: Path | str | None = None) -> str:
    """``$FF_GIT_SHA``, else the commit checked out in ``repo_dir``, else ``"unknown"``."""
    override = os.environ.get("FF_GIT_SHA")
    if override:
        return override
    import subprocess  # deferred: only a manifest needs it, every producer import would pay for it

    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", "HEAD"],
            cwd=repo_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):  # no git, bad cwd, timeout
        return UNKNOWN
    sha = proc.stdout.strip()
    return sha if proc.returncode == 0 and _GIT_SHA.fullmatch(sha) else UNKNOWN


def _file_sha256(path: Path | str | None) -> str:
    """Streaming sha256 hex of a file; ``"unknown"`` when unset or unreadable."""
    if path is None:
        return UNKNOWN
    hasher = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                hasher.update(chunk)
    except OSError:
        return UNKNOWN
    return hasher.hexdigest()


@functools.lru_cache(maxsize=1)
def environment_fingerprint() -> str:
    """sha256 hex of the interpreter, platform and installed distributions (``name==version``).

    Cached for the life of the process: packages installed later are not seen. Names are
    normalised as in PEP 503 (lower case, runs of ``-_.`` become ``-``) and deduplicated.
    """
    distributions = set()
    import importlib.metadata  # deferred: costs ~50 ms, needed only for the fingerprint

    for dist in importlib.metadata.distributions():
        name, version = dist.metadata.get("Name"), dist.metadata.get("Version")
        if not name:  # a broken install without metadata
            continue
        distributions.add(f"{re.sub(r'[-_.]+', '-', name).lower()}=={version}")
    canonical = {
        "interpreter": {
            "implementation": sys.implementation.name,
            "version": _platform.python_version(),
        },
        "platform": {"system": _platform.system(), "machine": _platform.machine()},
        "distributions": sorted(distributions),
    }
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()
