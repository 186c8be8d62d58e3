"""Typed, frozen configuration loaded from ``config/mlflow.yaml``.

The file has the seed-001 shape (a ``tracking`` section) plus ``journal`` and
``ingest`` sections. Every key is optional and has the default documented in
``docs/configuration.md``; an unknown key, a value of the wrong type, a number
outside its range, a duplicate key or a value that would lose data is a
:class:`~formula_foundry.errors.ConfigError` that names the file and the key.

**The dataclasses below are the schema.** Each key is declared once, as a field
of a frozen dataclass: its type annotation says what YAML value it takes, its
default is the default, and its :func:`_key` metadata adds what a type cannot
say (allowed values, a numeric range, a path to resolve, an environment
override). The loader walks ``dataclasses.fields``; there is no second table.

Relative paths (the SQLite file inside ``sqlite:///relative/path``, the
artifact root, the journal root, the ingest state dir) resolve against the
*project root*, the directory that holds ``config/``, never against the
current directory, so every command behaves the same from anywhere.

Environment overrides (applied over the file; one set to the empty string
counts as unset):

=====================  ===============================
``FF_CONFIG``          path of the config file itself
``MLFLOW_TRACKING_URI`` ``tracking.backend_store_uri``
``FF_ARTIFACT_ROOT``   ``tracking.artifact_root``
``FF_JOURNAL_ROOT``    ``journal.root``
``FF_TRACKING_ENABLED`` ``tracking.enabled`` (``0``/``false`` disables)
``FF_ARTIFACTS_SERVER_URI`` ``tracking.artifacts_server_uri``
=====================  ===============================

Refused because they would lose data or crash later (exit 2 in ``ff-ingest``):
an empty tracking URI (MLflow would create ``mlflow.db`` in the current
directory), an in-memory SQLite store (ingested and checkpointed, then
discarded), NaN, infinity or an out-of-range number, and a key written twice in
one mapping (YAML would silently keep the last one). :func:`check_tracking_uri`
applies the URI rule to a URI from elsewhere (``--tracking-uri``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, get_type_hints

from formula_foundry.errors import ConfigError

__all__ = [
    "CONFIG_RELPATH",
    "Config",
    "IngestConfig",
    "JournalConfig",
    "SystemMetricsConfig",
    "TrackingConfig",
    "WatchConfig",
    "check_tracking_uri",
    "find_config",
    "load_config",
]

CONFIG_RELPATH = Path("config") / "mlflow.yaml"
FSYNC_POLICIES = ("always", "interval", "never")
WRITE_ERROR_POLICIES = ("raise", "warn")
SINKS = ("auto", "api", "bulk")
STALE_ACTIONS = ("report", "fail", "kill")

_DAY = 86_400.0


# --------------------------------------------------------------------------- schema metadata

class _Rule:
    """What a key's type annotation cannot say (kept in the field's metadata).

    A plain class rather than a dataclass: it is built at import time, which must stay cheap.
    """

    __slots__ = ("bounds", "choices", "env", "nonempty", "resolve", "unit")

    def __init__(self, *, choices: tuple[str, ...] | None = None, bounds: tuple[float, float] | None = None,
                 resolve: str | None = None, env: str | None = None, nonempty: bool = False,
                 unit: str = "seconds") -> None:
        self.choices = choices  # allowed values
        self.bounds = bounds  # inclusive range of a number (which must also be finite)
        self.unit = unit  # what the number counts, for the message about its range
        self.resolve = resolve  # "path" | "location" (path or URI) | "store" (tracking URI) | "server" (URL)
        self.env = env  # environment variable that overrides the key
        self.nonempty = nonempty


def _key(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING,
         choices: tuple[str, ...] | None = None, bounds: tuple[float, float] | None = None,
         resolve: str | None = None, env: str | None = None, nonempty: bool = False,
         unit: str = "seconds") -> Any:
    """A config key: a dataclass field whose metadata carries its :class:`_Rule`."""
    rule = _Rule(choices=choices, bounds=bounds, resolve=resolve, env=env, nonempty=nonempty, unit=unit)
    return field(default=default, default_factory=factory, metadata={"config": rule})


# MLFLOW_TRACKING_URI=ff-journal:... sends MLflow's own API into the journals (the drop-in plugin); as
# an override of the store the ingester writes to it means nothing, and is ignored.
DROP_IN_SCHEME = "ff-journal:"


# --------------------------------------------------------------------------- the config (= the schema)

@dataclass(frozen=True)
class SystemMetricsConfig:
    """``tracking.system_metrics``: MLflow's system metrics, sampled into the run's journal."""

    # Every run samples (as start_run(log_system_metrics=True)); the argument overrides it per run.
    enabled: bool = _key(False)
    # MLflow's default sampling interval (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL).
    interval_seconds: float = _key(10.0, bounds=(0.1, 3600.0))
    # Samples averaged into one logged point (MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING).
    samples_before_logging: int = _key(1, bounds=(1, 10_000), unit="samples")


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = _key(True, env="FF_TRACKING_ENABLED")
    backend_store_uri: str = _key("sqlite:///data/mlflow/mlruns.db", resolve="store",
                                  env="MLFLOW_TRACKING_URI")
    # An absolute path once loaded, or a URI (s3://...).
    artifact_root: str = _key("data/mlflow/artifacts", resolve="location", env="FF_ARTIFACT_ROOT")
    default_experiment: str = _key("formula-foundry", nonempty=True)
    system_metrics: SystemMetricsConfig = _key(factory=SystemMetricsConfig)
    # Tee file descriptors 1 and 2 into the run's journal (start_run(capture_console=...) overrides).
    capture_console: bool = _key(False)
    # Bytes of console output kept per run; a marker line says where it was cut.
    console_max_bytes: int = _key(10 << 20, bounds=(1024, 1 << 30), unit="bytes")
    # The MLflow server (http(s)://host:port) that serves ``mlflow-artifacts:`` locations (experiments the
    # server created, proxied artifacts), for an ingester that writes the database directly; "": none.
    artifacts_server_uri: str = _key("", resolve="server", env="FF_ARTIFACTS_SERVER_URI")

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
    root: Path = _key(Path("data/runs"), resolve="path", env="FF_JOURNAL_ROOT")
    fsync: str = _key("interval", choices=FSYNC_POLICIES)
    fsync_interval_seconds: float = _key(1.0, bounds=(0.0, 3600.0))
    on_write_error: str = _key("raise", choices=WRITE_ERROR_POLICIES)
    # Opt-in: SIGTERM ends the process's open runs KILLED, then exits 143.
    end_runs_on_sigterm: bool = _key(False)
    # The content-addressed substrate store that real artifacts (run.log_artifact, log_figure, ...)
    # are snapshotted into before their journal record is written.
    artifact_store: Path = _key(Path("data/artifacts"), resolve="path", env="FF_ARTIFACT_STORE")


@dataclass(frozen=True)
class WatchConfig:
    polling: bool = _key(False)
    poll_interval_seconds: float = _key(0.5, bounds=(0.01, 3600.0))
    rescan_interval_seconds: float = _key(10.0, bounds=(0.0, _DAY))
    debounce_seconds: float = _key(0.05, bounds=(0.0, 60.0))
    stale_after_seconds: float = _key(600.0, bounds=(0.0, 365 * _DAY))  # 0: never stale
    stale_action: str = _key("report", choices=STALE_ACTIONS)


@dataclass(frozen=True)
class IngestConfig:
    state_dir: Path = _key(Path("data/mlflow/ingest"), resolve="path")
    extra_roots: tuple[Path, ...] = _key((), resolve="path")
    sink: str = _key("auto", choices=SINKS)
    sqlite_busy_timeout_seconds: float = _key(30.0, bounds=(0.0, _DAY))
    journal_budget: int = _key(0, bounds=(0, 10**14), unit="bytes")  # doctor warns above it; 0: off
    # Concurrent journal streams of a batch ingest (--workers); 0: auto (1 on SQLite, 4 otherwise).
    workers: int = _key(0, bounds=(0, 64), unit="workers")
    # Central ingest of shipped journals (--root s3://...): the cross-machine lease's time to live;
    # renewed every third of it, taken over by another central ingester once it has run out.
    lease_seconds: float = _key(30.0, bounds=(1.0, 3600.0))
    watch: WatchConfig = _key(factory=WatchConfig)


@dataclass(frozen=True)
class Config:
    """The whole configuration; paths are absolute once loaded.

    Every field whose type is a dataclass is a section of the file.
    """

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


# --------------------------------------------------------------------------- schema walk

class _Key:
    """One key of a section: a dataclass field, its resolved type annotation and its rule."""

    __slots__ = ("field", "name", "rule", "type")

    def __init__(self, f: dataclasses.Field, tp: Any) -> None:
        self.name = f.name
        self.type = tp
        self.field = f
        self.rule: _Rule = f.metadata.get("config") or _Rule()


@cache
def _keys(cls: type) -> tuple[_Key, ...]:
    """The keys of one section, straight from its dataclass fields."""
    hints = get_type_hints(cls)
    return tuple(_Key(f, hints[f.name]) for f in dataclasses.fields(cls))


@cache
def _sections() -> tuple[tuple[str, type], ...]:
    """The sections of the file: the fields of :class:`Config` whose type is a dataclass."""
    hints = get_type_hints(Config)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(Config)
                 if dataclasses.is_dataclass(hints[f.name]))


def _type_name(tp: Any) -> str:
    if tp is float:
        return "int or float"
    if tp is Path:
        return "str"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if getattr(tp, "__origin__", None) is tuple:
        return "list"
    return tp.__name__


def _show(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened: a message must stay one readable line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _has_type(value: Any, tp: Any) -> bool:
    if isinstance(value, bool):  # bool is an int subclass: never accept it where a number is expected
        return tp is bool
    if tp is float:
        return isinstance(value, (int, float))
    if tp in (str, Path):
        return isinstance(value, str)
    if getattr(tp, "__origin__", None) is tuple:
        return isinstance(value, list)
    return isinstance(value, tp)


class _Loader:
    """Validates raw YAML data against the dataclasses and builds the frozen config."""

    def __init__(self, source: Path, root: Path, env: Mapping[str, str]) -> None:
        self.source = source
        self.root = root
        self.env = env

    def fail(self, message: str, key: str, origin: str = "") -> ConfigError:
        return ConfigError(message + origin, path=self.source, key=key)

    def section(self, cls: type, data: Any, prefix: str) -> Any:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise self.fail(f"expected a mapping, got {type(data).__name__}", prefix)
        keys = _keys(cls)
        known = {k.name for k in keys}
        for name in data:
            if name not in known:
                raise self.fail(f"unknown key (known keys: {', '.join(sorted(known))})", f"{prefix}.{name}")
        values: dict[str, Any] = {}
        for key in keys:
            dotted = f"{prefix}.{key.name}"
            # The file's value is checked even when the environment overrides it.
            value = self.check(key, data[key.name], dotted) if key.name in data else self.default(key, dotted)
            origin = ""
            override = self.env.get(key.rule.env, "") if key.rule.env else ""
            if key.rule.env == "MLFLOW_TRACKING_URI" and override.startswith(DROP_IN_SCHEME):
                override = ""  # MLflow's drop-in (docs/mlflow-drop-in.md) points at this config, not a store
            if override:  # an empty variable counts as unset
                origin = f" (from ${key.rule.env})"
                value = self.check(key, self._from_env(key, override), dotted, origin)
            values[key.name] = self.resolve(key, value, dotted, origin)
        return cls(**values)

    @staticmethod
    def _from_env(key: _Key, text: str) -> Any:
        if key.type is bool:
            return text.strip().lower() not in ("0", "false", "no", "off")
        return text

    def default(self, key: _Key, dotted: str) -> Any:
        if dataclasses.is_dataclass(key.type):
            return self.section(key.type, None, dotted)
        f = key.field
        return f.default_factory() if f.default is dataclasses.MISSING else f.default

    def check(self, key: _Key, value: Any, dotted: str, origin: str = "") -> Any:
        """``value`` checked against the key's type and rule (not yet resolved)."""
        tp, rule = key.type, key.rule
        if dataclasses.is_dataclass(tp):
            return self.section(tp, value, dotted)
        if not _has_type(value, tp):
            got = f"{type(value).__name__} {_show(value)}"
            raise self.fail(f"expected {_type_name(tp)}, got {got}", dotted, origin)
        if getattr(tp, "__origin__", None) is tuple:
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raise self.fail(f"expected a path string, got {type(item).__name__}",
                                    f"{dotted}[{i}]", origin)
            value = tuple(value)
        if rule.choices is not None and value not in rule.choices:
            raise self.fail(f"must be one of {', '.join(rule.choices)}, got {_show(value)}", dotted, origin)
        if tp is float or tp is int:
            if isinstance(value, float) and not math.isfinite(value):
                raise self.fail(f"must be a finite number, got {_show(value)}", dotted, origin)
            if rule.bounds is not None:
                lo, hi = rule.bounds
                if not lo <= value <= hi:
                    raise self.fail(f"must be between {lo:.15g} and {hi:.15g} ({rule.unit}), got "
                                    f"{_show(value)}", dotted, origin)
            value = float(value) if tp is float else value
        if rule.nonempty and not value.strip():
            raise self.fail("must not be empty", dotted, origin)
        return value

    def resolve(self, key: _Key, value: Any, dotted: str, origin: str = "") -> Any:
        kind = key.rule.resolve
        if kind == "path":
            if isinstance(value, tuple):
                return tuple(_resolve_path(v, self.root) for v in value)
            return _resolve_path(value, self.root)
        if kind == "location":
            return _resolve_location(value, self.root)
        if kind == "store":
            problem = _uri_problem(value)
            if problem:
                raise self.fail(problem, dotted, origin)
            return _resolve_uri(value, self.root)
        if kind == "server":
            problem = _server_url_problem(value)
            if problem:
                raise self.fail(problem, dotted, origin)
            return value.rstrip("/")
        return value


# --------------------------------------------------------------------------- tracking URIs

def _is_memory_sqlite(uri: str) -> bool:
    """True for every spelling of an in-memory (or temporary, discarded) SQLite database."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.lower().split("+", 1)[0] != "sqlite":
        return False
    if not rest.startswith("/"):  # sqlite:// is SQLAlchemy's in-memory spelling; a host is no file either
        return True
    path, _, query = rest[1:].partition("?")
    name = path[len("file:"):] if path.lower().startswith("file:") else path  # SQLite URI filenames
    if name in ("", "/") or name.startswith(":memory:"):  # "" is a temporary database, dropped on close
        return True
    pairs = (p.partition("=") for p in query.replace(";", "&").split("&"))
    params = {k.lower(): v.lower() for k, _, v in pairs}
    return params.get("mode") == "memory" or params.get("vfs") in ("memdb", "memvfs")


def _uri_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be a tracking store, or None."""
    if not uri.strip():
        return "must not be empty (MLflow would create mlflow.db in the current directory)"
    if _is_memory_sqlite(uri):
        return (f"an in-memory SQLite store keeps nothing: {_show(uri)} would be ingested and checkpointed, "
                "then discarded at exit (use sqlite:///path/to/mlruns.db)")
    if "://" not in uri:
        # A bare path is a file store in MLflow's eyes; we only support DB/HTTP stores.
        return f"not a tracking URI: {_show(uri)} (use sqlite:///path, postgresql://..., or http://host:port)"
    return None


def _server_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be the address of an MLflow server, or None (the empty string: no server)."""
    if not url:
        return None
    scheme, sep, rest = url.partition("://")
    host = rest.split("/", 1)[0].rpartition("@")[2]
    if not sep or scheme.lower() not in ("http", "https") or not host or host.startswith(":"):
        return (f"must be the http:// or https:// URL of an MLflow server (e.g. http://mlflow:5000), got "
                f"{_show(url)}")
    return None


def check_tracking_uri(uri: str, where: str = "--tracking-uri") -> str:
    """Return ``uri`` unchanged if it can be a tracking store, else raise :class:`ConfigError`.

    The rule the config file's ``tracking.backend_store_uri`` follows, for a URI
    from elsewhere (``where`` names it in the message, e.g. ``--tracking-uri``):
    not empty, not an in-memory SQLite database, not a bare path.
    """
    problem = _uri_problem(uri)
    if problem:
        raise ConfigError(problem, path=where)
    return uri


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
    """Make a relative ``sqlite:///rel/path`` absolute against the project root (``uri`` is checked)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel, _, query = uri[len("sqlite:///"):].partition("?")
        absolute = (root / rel).resolve()
        return f"sqlite:///{absolute}" + (f"?{query}" if query else "")
    return uri


def _resolve_path(value: str | Path, root: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


def _resolve_location(value: str, root: Path) -> str:
    """A local path made absolute, or a URI (``s3://bucket/prefix``) kept verbatim."""
    return value if "://" in value else str(_resolve_path(value, root))


# --------------------------------------------------------------------------- YAML

def _duplicate_key(node: Any) -> tuple[str, int, int] | None:
    """The first key written twice in one mapping, at any depth: (dotted key, first line, second line).

    Walks the composed node graph before construction, each node once (aliases are
    not re-walked, so an alias bomb stays linear). Merge keys (``<<``) are YAML's
    explicit way to override and are not duplicates.
    """
    import yaml  # deferred: importing the producer API should stay cheap

    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(node, "")]
    while stack:
        current, path = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, value_node in current.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    dotted = f"{path}.{key_node.value}" if path else str(key_node.value)
                    line = key_node.start_mark.line + 1
                    ident = (key_node.tag, key_node.value)
                    if ident in first:
                        return dotted, first[ident], line
                    first[ident] = line
                    stack.append((value_node, dotted))
                else:
                    stack.append((value_node, path))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(current.value))
    return None


def _parse_yaml(text: str, source: Path) -> Any:
    import yaml  # deferred: importing the producer API should stay cheap

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        duplicate = _duplicate_key(node)
        if duplicate is not None:
            dotted, line1, line2 = duplicate
            raise ConfigError(f"duplicate key at lines {line1} and {line2} (YAML would silently keep the "
                              "last one; write it once)", path=source, key=dotted)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML{where}: {problem}", path=source) from None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- loading

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
    data = _parse_yaml(text, source)
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}", path=source)
    sections = _sections()
    names = [name for name, _ in sections]
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown section (known: {', '.join(names)})", path=source, key=str(key))

    # config/mlflow.yaml -> the project root is the folder holding config/.
    root = source.parent.parent if source.parent.name == "config" else source.parent
    loader = _Loader(source, root, env)
    built = {name: loader.section(cls, data.get(name), name) for name, cls in sections}
    return Config(project_root=root, source=source, **built)
