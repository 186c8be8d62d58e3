"""Typed, frozen configuration loaded from ``config/mlflow.yaml``.

The file has the seed-001 shape (a ``tracking`` section) plus ``journal`` and
``ingest`` sections. Every key is optional and has the default documented in
``docs/configuration.md``; an unknown key or a value of the wrong type is a
:class:`~formula_foundry.errors.ConfigError` that names the file and the key.

Relative paths (the SQLite file inside ``sqlite:///relative/path``, the
artifact root, the journal root, the ingest state dir) resolve against the
*project root*, the directory that holds ``config/``, never against the
current directory, so every command behaves the same from anywhere.

Environment overrides (applied after the file):

=====================  ===============================
``FF_CONFIG``          path of the config file itself
``MLFLOW_TRACKING_URI`` ``tracking.backend_store_uri``
``FF_ARTIFACT_ROOT``   ``tracking.artifact_root``
``FF_JOURNAL_ROOT``    ``journal.root``
``FF_TRACKING_ENABLED`` ``tracking.enabled`` (``0``/``false`` disables)
=====================  ===============================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from formula_foundry.errors import ConfigError

__all__ = [
    "CONFIG_RELPATH",
    "Config",
    "IngestConfig",
    "JournalConfig",
    "TrackingConfig",
    "WatchConfig",
    "find_config",
    "load_config",
]

CONFIG_RELPATH = Path("config") / "mlflow.yaml"
FSYNC_POLICIES = ("always", "interval", "never")
WRITE_ERROR_POLICIES = ("raise", "warn")
SINKS = ("auto", "api", "bulk")
STALE_ACTIONS = ("report", "fail", "kill")


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    backend_store_uri: str = "sqlite:///data/mlflow/mlruns.db"
    artifact_root: str = "data/mlflow/artifacts"  # an absolute path once loaded, or a URI (s3://...)
    default_experiment: str = "formula-foundry"

    @property
    def artifact_root_path(self) -> Path | None:
        """The local artifact root folder, or None when the root is a remote URI."""
        return None if "://" in self.artifact_root else Path(self.artifact_root)

    @property
    def artifact_root_uri(self) -> str:
        """The artifact root as a URI MLflow accepts (``file://`` for local paths)."""
        local = self.artifact_root_path
        return self.artifact_root if local is None else local.resolve().as_uri()

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file when the backend store is SQLite, else None."""
        return sqlite_path_of(self.backend_store_uri)


@dataclass(frozen=True)
class JournalConfig:
    root: Path = Path("data/runs")
    fsync: str = "interval"
    fsync_interval_seconds: float = 1.0
    on_write_error: str = "raise"
    end_runs_on_sigterm: bool = False  # opt-in: SIGTERM ends the process's open runs KILLED, then exits 143


@dataclass(frozen=True)
class WatchConfig:
    polling: bool = False
    poll_interval_seconds: float = 0.5
    rescan_interval_seconds: float = 10.0
    debounce_seconds: float = 0.05
    stale_after_seconds: float = 600.0
    stale_action: str = "report"


@dataclass(frozen=True)
class IngestConfig:
    state_dir: Path = Path("data/mlflow/ingest")
    extra_roots: tuple[Path, ...] = ()
    sink: str = "auto"
    sqlite_busy_timeout_seconds: float = 30.0
    watch: WatchConfig = field(default_factory=WatchConfig)


@dataclass(frozen=True)
class Config:
    """The whole configuration; paths are absolute once loaded."""

    project_root: Path
    source: Path | None
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)

    @property
    def journal_roots(self) -> tuple[Path, ...]:
        """Every root the ingester scans: the journal root, then the extra roots."""
        roots = [self.journal.root, *self.ingest.extra_roots]
        return tuple(dict.fromkeys(roots))

    def ensure_dirs(self) -> None:
        """Create the local directories under ``data/mlflow/`` on first use."""
        db = self.tracking.sqlite_path
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        if self.tracking.artifact_root_path is not None:
            self.tracking.artifact_root_path.mkdir(parents=True, exist_ok=True)
        self.ingest.state_dir.mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------- schema

# section -> key -> (type(s), validator or allowed values, is_path)
_Spec = dict[str, tuple[type | tuple[type, ...], tuple[str, ...] | None, bool]]

_TRACKING: _Spec = {
    "enabled": (bool, None, False),
    "backend_store_uri": (str, None, False),
    "artifact_root": (str, None, True),
    "default_experiment": (str, None, False),
}
_JOURNAL: _Spec = {
    "root": (str, None, True),
    "fsync": (str, FSYNC_POLICIES, False),
    "fsync_interval_seconds": ((int, float), None, False),
    "on_write_error": (str, WRITE_ERROR_POLICIES, False),
    "end_runs_on_sigterm": (bool, None, False),
}
_INGEST: _Spec = {
    "state_dir": (str, None, True),
    "extra_roots": (list, None, False),
    "sink": (str, SINKS, False),
    "sqlite_busy_timeout_seconds": ((int, float), None, False),
    "watch": (dict, None, False),
}
_WATCH: _Spec = {
    "polling": (bool, None, False),
    "poll_interval_seconds": ((int, float), None, False),
    "rescan_interval_seconds": ((int, float), None, False),
    "debounce_seconds": ((int, float), None, False),
    "stale_after_seconds": ((int, float), None, False),
    "stale_action": (str, STALE_ACTIONS, False),
}
_TOP = ("tracking", "journal", "ingest")


def _check_section(data: Any, spec: _Spec, *, source: Path | None, prefix: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping, got {type(data).__name__}", path=source, key=prefix)
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}"
        if key not in spec:
            known = ", ".join(sorted(spec))
            raise ConfigError(f"unknown key (known keys: {known})", path=source, key=dotted)
        types, allowed, _ = spec[key]
        # bool is an int subclass: never accept it where a number is expected.
        if not isinstance(value, types) or (isinstance(value, bool) and types is not bool):
            want = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
            raise ConfigError(f"expected {want}, got {type(value).__name__} {value!r}",
                              path=source, key=dotted)
        if allowed is not None and value not in allowed:
            raise ConfigError(f"must be one of {', '.join(allowed)}, got {value!r}", path=source, key=dotted)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"must not be negative, got {value!r}", path=source, key=dotted)
        out[key] = value
    return out


def sqlite_path_of(uri: str) -> Path | None:
    """The file of a ``sqlite:///path`` URI (None for other schemes or in-memory)."""
    if not uri.startswith("sqlite:"):
        return None
    rest = uri[len("sqlite:"):]
    if not rest.startswith("///"):
        return None
    path = rest[3:].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)  # absolute for sqlite:////abs, relative (to the project root) for sqlite:///rel


def _resolve_uri(uri: str, root: Path) -> str:
    """Make a relative ``sqlite:///rel/path`` absolute against the project root."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel, _, query = uri[len("sqlite:///"):].partition("?")
        if rel and rel != ":memory:":
            absolute = (root / rel).resolve()
            return f"sqlite:///{absolute}" + (f"?{query}" if query else "")
    if "://" not in uri and uri:
        # A bare path is a file store in MLflow's eyes; we only support DB/HTTP stores.
        raise ConfigError(
            f"not a tracking URI: {uri!r} (use sqlite:///path, postgresql://..., or http://host:port)",
            key="tracking.backend_store_uri",
        )
    return uri


def _resolve_path(value: str | Path, root: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


def _resolve_location(value: str, root: Path) -> str:
    """A local path made absolute, or a URI (``s3://bucket/prefix``) kept verbatim."""
    return value if "://" in value else str(_resolve_path(value, root))


def find_config(start: Path | None = None) -> Path:
    """Locate the config file: ``$FF_CONFIG``, else ``config/mlflow.yaml`` in ``start`` or a parent."""
    env = os.environ.get("FF_CONFIG")
    if env:
        return Path(env).expanduser().resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_RELPATH
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no {CONFIG_RELPATH} found in {here} or any parent folder; "
        "run from the project, or set FF_CONFIG to the file"
    )


def load_config(path: Path | str | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """Load, validate and resolve the configuration.

    ``path`` defaults to :func:`find_config`. ``env`` defaults to ``os.environ``
    and supplies the overrides listed in the module docstring.
    """
    env = os.environ if env is None else env
    source = Path(path).expanduser().resolve() if path is not None else find_config()
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", path=source) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", path=source) from None
    import yaml  # deferred: importing the producer API should stay cheap

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML{where}: {problem}", path=source) from None
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}", path=source)
    for key in data:
        if key not in _TOP:
            raise ConfigError(f"unknown section (known: {', '.join(_TOP)})", path=source, key=str(key))

    # config/mlflow.yaml -> the project root is the folder holding config/.
    root = source.parent.parent if source.parent.name == "config" else source.parent

    tracking = _check_section(data.get("tracking"), _TRACKING, source=source, prefix="tracking")
    journal = _check_section(data.get("journal"), _JOURNAL, source=source, prefix="journal")
    ingest = _check_section(data.get("ingest"), _INGEST, source=source, prefix="ingest")
    watch = _check_section(ingest.pop("watch", None), _WATCH, source=source, prefix="ingest.watch")
    extra = ingest.pop("extra_roots", [])
    for i, item in enumerate(extra):
        if not isinstance(item, str):
            raise ConfigError(f"expected a path string, got {type(item).__name__}",
                              path=source, key=f"ingest.extra_roots[{i}]")

    # Environment overrides.
    if env.get("MLFLOW_TRACKING_URI"):
        tracking["backend_store_uri"] = env["MLFLOW_TRACKING_URI"]
    if env.get("FF_ARTIFACT_ROOT"):
        tracking["artifact_root"] = env["FF_ARTIFACT_ROOT"]
    if env.get("FF_JOURNAL_ROOT"):
        journal["root"] = env["FF_JOURNAL_ROOT"]
    if env.get("FF_TRACKING_ENABLED"):
        tracking["enabled"] = env["FF_TRACKING_ENABLED"].strip().lower() not in ("0", "false", "no", "off")

    try:
        uri = _resolve_uri(tracking.get("backend_store_uri", TrackingConfig.backend_store_uri), root)
    except ConfigError as exc:
        raise ConfigError(str(exc).split(": ", 1)[-1], path=source, key="tracking.backend_store_uri") from None
    tracking_cfg = TrackingConfig(
        enabled=tracking.get("enabled", True),
        backend_store_uri=uri,
        artifact_root=_resolve_location(tracking.get("artifact_root", TrackingConfig.artifact_root), root),
        default_experiment=tracking.get("default_experiment", TrackingConfig.default_experiment),
    )
    if not tracking_cfg.default_experiment.strip():
        raise ConfigError("must not be empty", path=source, key="tracking.default_experiment")
    journal_cfg = JournalConfig(
        root=_resolve_path(journal.get("root", JournalConfig.root), root),
        fsync=journal.get("fsync", JournalConfig.fsync),
        fsync_interval_seconds=float(journal.get("fsync_interval_seconds", 1.0)),
        on_write_error=journal.get("on_write_error", JournalConfig.on_write_error),
        end_runs_on_sigterm=journal.get("end_runs_on_sigterm", JournalConfig.end_runs_on_sigterm),
    )
    ingest_cfg = IngestConfig(
        state_dir=_resolve_path(ingest.get("state_dir", IngestConfig.state_dir), root),
        extra_roots=tuple(_resolve_path(p, root) for p in extra),
        sink=ingest.get("sink", IngestConfig.sink),
        sqlite_busy_timeout_seconds=float(ingest.get("sqlite_busy_timeout_seconds", 30.0)),
        watch=WatchConfig(**{k: (float(v) if isinstance(v, int) and not isinstance(v, bool) else v)
                             for k, v in watch.items()}),
    )
    return Config(project_root=root, source=source, tracking=tracking_cfg, journal=journal_cfg,
                  ingest=ingest_cfg)
