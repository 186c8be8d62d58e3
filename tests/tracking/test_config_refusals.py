"""Config that would lose data or crash later is refused at load time (issue 14, item 7).

Each refusal is a :class:`ConfigError` naming the file and the dotted key (and both
lines for a duplicate key); ``ff-ingest`` turns it into exit 2. The rule behind
every case: a value that would lose data (an empty or in-memory store) or crash
later (NaN, infinity, a number outside its documented range) is refused when the
file is loaded, and so is a key written twice (YAML would silently keep the last).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest

from formula_foundry.errors import ConfigError
from formula_foundry.tracking.config import (
    IngestConfig,
    JournalConfig,
    WatchConfig,
    check_tracking_uri,
    load_config,
)
from tests.conftest import REPO, subprocess_env

MEMORY_URIS = [
    "sqlite:///:memory:",
    "sqlite://",
    "sqlite:///",
    "sqlite:///file::memory:?cache=shared",
    "sqlite:///file:mem1?mode=memory&cache=shared&uri=true",
    "sqlite:///data/x.db?mode=memory",
    "sqlite:///file:/x.db?vfs=memdb",
    "sqlite+pysqlite:///:memory:",
    "SQLITE:///:memory:",
]

# Every numeric key, as (dotted key, YAML that sets it to {v}).
NUMERIC = {
    "journal.fsync_interval_seconds": "journal:\n  fsync_interval_seconds: {v}\n",
    "ingest.sqlite_busy_timeout_seconds": "ingest:\n  sqlite_busy_timeout_seconds: {v}\n",
    "ingest.lease_seconds": "ingest:\n  lease_seconds: {v}\n",
    "ingest.watch.poll_interval_seconds": "ingest:\n  watch:\n    poll_interval_seconds: {v}\n",
    "ingest.watch.rescan_interval_seconds": "ingest:\n  watch:\n    rescan_interval_seconds: {v}\n",
    "ingest.watch.debounce_seconds": "ingest:\n  watch:\n    debounce_seconds: {v}\n",
    "ingest.watch.stale_after_seconds": "ingest:\n  watch:\n    stale_after_seconds: {v}\n",
}


def _write(project: Path, text: str) -> Path:
    path = project / "config" / "mlflow.yaml"
    path.write_text(text)
    return path


def _refused(path: Path, key: str, *, env: dict[str, str] | None = None) -> str:
    """Load ``path``; assert a ConfigError naming the file and ``key``; return its message."""
    with pytest.raises(ConfigError) as err:
        load_config(path, env=env or {})
    message = str(err.value)
    assert message.startswith(f"{path}: key '{key}': "), message
    assert err.value.key == key and err.value.path == path
    return message


def _float_keys() -> set[str]:
    out = set()
    for prefix, cls in (("journal", JournalConfig), ("ingest", IngestConfig), ("ingest.watch", WatchConfig)):
        out |= {f"{prefix}.{f.name}" for f in dataclasses.fields(cls) if f.type == "float"}
    return out


def test_numeric_table_covers_every_numeric_key():
    """The cases below run for every float field of the config dataclasses."""
    assert set(NUMERIC) == _float_keys()


# --------------------------------------------------------------------------- the tracking store

@pytest.mark.parametrize("value", ["''", '""', "'   '"])
def test_empty_backend_store_uri_is_refused(project: Path, value: str):
    """An empty URI: MLflow would quietly create mlflow.db in the current directory."""
    path = _write(project, f"tracking:\n  backend_store_uri: {value}\n")
    message = _refused(path, "tracking.backend_store_uri")
    assert "must not be empty" in message and "mlflow.db" in message


@pytest.mark.parametrize("uri", MEMORY_URIS)
def test_in_memory_sqlite_store_is_refused(project: Path, uri: str):
    """Every spelling of an in-memory SQLite store: ingested, checkpointed, then discarded."""
    path = _write(project, f"tracking:\n  backend_store_uri: '{uri}'\n")
    message = _refused(path, "tracking.backend_store_uri")
    assert "in-memory SQLite" in message


@pytest.mark.parametrize("uri", ["sqlite:///:memory:", "sqlite://", "   "])
def test_the_same_rule_applies_to_mlflow_tracking_uri(project: Path, uri: str):
    """MLFLOW_TRACKING_URI goes through the same check; the message names the variable."""
    message = _refused(project / "config" / "mlflow.yaml", "tracking.backend_store_uri",
                       env={"MLFLOW_TRACKING_URI": uri})
    assert "$MLFLOW_TRACKING_URI" in message


def test_an_empty_mlflow_tracking_uri_counts_as_unset(project: Path):
    """``MLFLOW_TRACKING_URI=`` (set to nothing) counts as unset: the file's store is used,
    not MLflow's default mlflow.db in the current directory."""
    cfg = load_config(project / "config" / "mlflow.yaml", env={"MLFLOW_TRACKING_URI": ""})
    assert cfg.tracking.sqlite_path == (project / "data" / "mlflow" / "mlruns.db").resolve()


def test_a_file_store_on_disk_is_still_accepted(project: Path):
    """The check is precise: a SQLite file whose name merely mentions memory is a file."""
    cfg = load_config(_write(project, "tracking:\n  backend_store_uri: sqlite:///data/memory.db\n"), env={})
    assert cfg.tracking.sqlite_path == (project / "data" / "memory.db").resolve()


@pytest.mark.parametrize("uri", [*MEMORY_URIS, "", "data/mlruns"])
def test_check_tracking_uri_refuses_what_the_config_refuses(uri: str):
    """The public check for --tracking-uri: same rule, the message names where the URI came from."""
    with pytest.raises(ConfigError) as err:
        check_tracking_uri(uri, "--tracking-uri")
    assert str(err.value).startswith("--tracking-uri: ")


@pytest.mark.parametrize("uri", ["sqlite:////abs/mlruns.db", "sqlite:///rel/mlruns.db",
                                 "postgresql://u@db:5432/mlflow", "http://127.0.0.1:5000"])
def test_check_tracking_uri_returns_good_uris_unchanged(uri: str):
    assert check_tracking_uri(uri, "--tracking-uri") == uri


# --------------------------------------------------------------------------- numbers

@pytest.mark.parametrize("key", sorted(NUMERIC))
@pytest.mark.parametrize("value", [".nan", ".NaN", ".inf", "-.inf"])
def test_nan_and_infinity_are_refused(project: Path, key: str, value: str):
    """NaN passes every ``<`` comparison and infinity overflows a timer: neither is a duration."""
    message = _refused(_write(project, NUMERIC[key].format(v=value)), key)
    assert "finite" in message


@pytest.mark.parametrize("key", sorted(NUMERIC))
@pytest.mark.parametrize("value", ["1.0e+308", "1" + "0" * 400, "100000000", "-1", "-0.5"])
def test_numbers_outside_their_range_are_refused(project: Path, key: str, value: str):
    """A huge float (crashes later with an OverflowError), a huge int, or a negative duration."""
    message = _refused(_write(project, NUMERIC[key].format(v=value)), key)
    assert "must be between" in message and len(message) < 300  # a 400-digit number is shortened


@pytest.mark.parametrize("key", sorted(NUMERIC))
def test_both_ends_of_each_range_are_accepted(project: Path, key: str):
    """The documented range is inclusive, and every default lies inside it."""
    section, name = key.rsplit(".", 1)
    cls = {"journal": JournalConfig, "ingest": IngestConfig, "ingest.watch": WatchConfig}[section]
    (fld,) = [f for f in dataclasses.fields(cls) if f.name == name]
    lo, hi = fld.metadata["config"].bounds
    assert lo <= fld.default <= hi
    for value in (lo, hi):
        cfg = load_config(_write(project, NUMERIC[key].format(v=repr(float(value)))), env={})
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        assert obj == value and isinstance(obj, float)


def test_poll_interval_zero_is_refused(project: Path):
    """Polling every 0 s would spin a CPU core: the polling period has a positive minimum."""
    _refused(_write(project, NUMERIC["ingest.watch.poll_interval_seconds"].format(v=0)),
             "ingest.watch.poll_interval_seconds")


# --------------------------------------------------------------------------- duplicate keys

@pytest.mark.parametrize("text, key, lines", [
    ("tracking:\n  enabled: true\ntracking:\n  enabled: false\n", "tracking", (1, 3)),
    ("tracking:\n  enabled: true\n  default_experiment: a\n  enabled: false\n", "tracking.enabled", (2, 4)),
    ("ingest:\n  watch:\n    polling: true\n    debounce_seconds: 1\n    polling: false\n",
     "ingest.watch.polling", (3, 5)),
    ("journal: {fsync: always, fsync: never}\n", "journal.fsync", (1, 1)),
    ("ingest:\n  watch: {}\n  sink: api\n  watch: {polling: true}\n", "ingest.watch", (2, 4)),
    ("tracking:\n  colour: blue\n  colour: red\n", "tracking.colour", (2, 3)),  # before "unknown key"
])
def test_duplicate_keys_are_refused_with_both_lines(project: Path, text: str, key: str,
                                                    lines: tuple[int, int]):
    """PyYAML keeps the last of two equal keys; we refuse, naming the key and both lines."""
    message = _refused(_write(project, text), key)
    assert f"duplicate key at lines {lines[0]} and {lines[1]}" in message


def test_same_key_in_different_mappings_is_not_a_duplicate(project: Path):
    """``polling`` under two different parents, and a merge key (``<<``), are ordinary YAML."""
    cfg = load_config(_write(project, "ingest:\n  watch:\n    <<: {polling: true, debounce_seconds: 1}\n"
                                      "    polling: false\n"), env={})
    assert cfg.ingest.watch.polling is False and cfg.ingest.watch.debounce_seconds == 1.0


def test_duplicate_check_stays_linear_on_an_alias_bomb(project: Path):
    """Aliases are walked once, so the duplicate check adds no billion-laughs blow-up."""
    lines = ["tracking:", "  l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = _write(project, "\n".join(lines) + "\n")
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"tracking\.l0"):
        load_config(path, env={})
    assert time.monotonic() - start < 2.0


# --------------------------------------------------------------------------- the real CLI: exit 2

def _ff_ingest() -> list[str]:
    """The ``ff-ingest`` console script as pyproject.toml declares it (``module:function``), run the
    way the installed script runs it, so the test follows the entry point wherever it moves."""
    import re

    text = (REPO / "pyproject.toml").read_text()
    module, func = re.search(r'^ff-ingest\s*=\s*"([\w.]+):(\w+)"', text, re.M).groups()
    return [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())"]


def _cli(project: Path, **env: str) -> subprocess.CompletedProcess:
    config = project / "config" / "mlflow.yaml"
    child = subprocess_env(MLFLOW_DISABLE_TELEMETRY="true", **env)
    child["PYTHONPATH"] = f"{REPO}:{child['PYTHONPATH']}"
    return subprocess.run([*_ff_ingest(), "--config", str(config)], cwd=project, env=child,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("text, env, key, needle", [
    ("tracking:\n  backend_store_uri: ''\n", {}, "tracking.backend_store_uri", "must not be empty"),
    ("tracking:\n  backend_store_uri: 'sqlite:///:memory:'\n", {}, "tracking.backend_store_uri", "in-memory"),
    ("", {"MLFLOW_TRACKING_URI": "sqlite://"}, "tracking.backend_store_uri", "$MLFLOW_TRACKING_URI"),
    ("journal:\n  fsync_interval_seconds: .nan\n", {}, "journal.fsync_interval_seconds", "finite"),
    ("ingest:\n  watch:\n    stale_after_seconds: 1.0e+308\n", {}, "ingest.watch.stale_after_seconds",
     "must be between"),
    ("ingest:\n  sink: api\n  sink: bulk\n", {}, "ingest.sink", "duplicate key at lines 2 and 3"),
], ids=["empty-uri", "memory-uri", "memory-uri-env", "nan", "huge-float", "duplicate-key"])
def test_ff_ingest_exits_2_naming_file_and_key(project: Path, text: str, env: dict, key: str, needle: str):
    """The installed ``ff-ingest`` refuses before touching anything: exit 2, one message, no traceback,
    and no mlflow.db appears in the working directory."""
    _write(project, text)
    done = _cli(project, **env)
    assert done.returncode == 2, done.stderr
    config = project / "config" / "mlflow.yaml"
    assert done.stderr.startswith(f"config error: {config}: key '{key}': ")
    assert needle in done.stderr and "Traceback" not in done.stderr
    assert not (project / "mlflow.db").exists() and not (project / "data").exists()

