"""config/mlflow.yaml -> typed, frozen Config (REQ-M3-001, -002, -006)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from formula_foundry.errors import ConfigError
from formula_foundry.tracking.config import Config, load_config
from tests.conftest import REPO, subprocess_env


def test_backend_store_uri(project: Path):
    """REQ-M3-001: the SQLite store is data/mlflow/mlruns.db under the project root."""
    cfg = load_config(project / "config" / "mlflow.yaml")
    expected = (project / "data" / "mlflow" / "mlruns.db").resolve()
    assert cfg.tracking.backend_store_uri == f"sqlite:///{expected}"
    assert cfg.tracking.sqlite_path == expected


def test_artifact_root(project: Path):
    """REQ-M3-002: the artifact root is data/mlflow/artifacts under the project root."""
    cfg = load_config(project / "config" / "mlflow.yaml")
    assert cfg.tracking.artifact_root_path == (project / "data" / "mlflow" / "artifacts").resolve()
    assert cfg.tracking.artifact_root_uri.startswith("file:///")


def test_load_config(project: Path):
    """REQ-M3-006: the committed file loads into a frozen typed object with the seed-001 values."""
    cfg = load_config(project / "config" / "mlflow.yaml")
    assert isinstance(cfg, Config)
    assert cfg.tracking.default_experiment == "formula-foundry"
    assert cfg.tracking.enabled is True
    assert cfg.journal.root == (project / "data" / "runs").resolve()
    assert cfg.journal.fsync == "interval"
    assert cfg.ingest.watch.stale_action == "report"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.tracking.default_experiment = "x"  # type: ignore[misc]


def test_repo_config_is_the_seed_shape():
    """The committed config/mlflow.yaml has seed 001's three tracking keys verbatim."""
    text = (REPO / "config" / "mlflow.yaml").read_text()
    assert 'backend_store_uri: "sqlite:///data/mlflow/mlruns.db"' in text
    assert 'artifact_root: "data/mlflow/artifacts"' in text
    assert 'default_experiment: "formula-foundry"' in text


def test_found_from_a_subdirectory(in_project: Path, monkeypatch):
    """Paths resolve against the project root, whatever the working directory."""
    sub = in_project / "deep" / "er"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    cfg = load_config()
    assert cfg.project_root == in_project.resolve()
    assert cfg.journal.root == (in_project / "data" / "runs").resolve()


def test_other_working_directory_in_subprocess(project: Path, tmp_path: Path):
    """A process started elsewhere with FF_CONFIG resolves paths against the project, not its cwd."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = "from formula_foundry.tracking.config import load_config; print(load_config().journal.root)"
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True,
                         env=subprocess_env(FF_CONFIG=str(project / "config" / "mlflow.yaml")), check=True)
    assert Path(out.stdout.strip()) == (project / "data" / "runs").resolve()


def test_env_overrides(project: Path):
    """MLFLOW_TRACKING_URI, FF_ARTIFACT_ROOT, FF_JOURNAL_ROOT and FF_TRACKING_ENABLED win over the file."""
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5999", "FF_ARTIFACT_ROOT": "s3://bucket/prefix",
           "FF_JOURNAL_ROOT": "/srv/journals", "FF_TRACKING_ENABLED": "0"}
    cfg = load_config(project / "config" / "mlflow.yaml", env=env)
    assert cfg.tracking.backend_store_uri == "http://127.0.0.1:5999"
    assert cfg.tracking.artifact_root_uri == "s3://bucket/prefix"
    assert cfg.journal.root == Path("/srv/journals")
    assert cfg.tracking.enabled is False


def test_missing_file_names_the_file(tmp_path: Path):
    """A missing config file is a ConfigError naming the path."""
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_no_config_anywhere(tmp_path: Path, monkeypatch):
    """get_tracker()/load_config() outside a project says how to point at the file."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="FF_CONFIG"):
        load_config()


def _write(project: Path, text: str) -> Path:
    path = project / "config" / "mlflow.yaml"
    path.write_text(text)
    return path


def test_bad_yaml_names_file_and_line(project: Path):
    """Invalid YAML names the file and the line."""
    path = _write(project, "tracking:\n  enabled: [true\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "mlflow.yaml" in str(err.value) and "line" in str(err.value)


def test_unknown_key_names_the_key(project: Path):
    """A typo in a key is an error naming the dotted key, not a silent default."""
    path = _write(project, "tracking:\n  backend_store_url: sqlite:///x.db\n")
    with pytest.raises(ConfigError, match=r"tracking\.backend_store_url"):
        load_config(path)


def test_unknown_section(project: Path):
    path = _write(project, "trackin:\n  enabled: true\n")
    with pytest.raises(ConfigError, match="trackin"):
        load_config(path)


@pytest.mark.parametrize("text, key", [
    ("tracking:\n  enabled: 'yes'\n", "tracking.enabled"),
    ("journal:\n  fsync_interval_seconds: fast\n", "journal.fsync_interval_seconds"),
    ("journal:\n  fsync: sometimes\n", "journal.fsync"),
    ("journal:\n  end_runs_on_sigterm: 'yes'\n", "journal.end_runs_on_sigterm"),
    ("ingest:\n  watch:\n    polling: 1\n", "ingest.watch.polling"),
    ("ingest:\n  extra_roots: [1]\n", "ingest.extra_roots[0]"),
    ("tracking:\n  backend_store_uri: data/mlruns\n", "tracking.backend_store_uri"),
    ("journal:\n  fsync_interval_seconds: -1\n", "journal.fsync_interval_seconds"),
    ("tracking: 3\n", "tracking"),
])
def test_wrong_type_names_the_key(project: Path, text: str, key: str):
    """Each wrong type or value is one ConfigError naming file and key."""
    path = _write(project, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert key in str(err.value) and "mlflow.yaml" in str(err.value)


def test_empty_file_gives_defaults(project: Path):
    """An empty file means every default."""
    cfg = load_config(_write(project, ""))
    assert cfg.tracking.default_experiment == "formula-foundry"


def test_ensure_dirs_creates_data_mlflow(project: Path):
    """Directories under data/mlflow/ are created on first use."""
    cfg = load_config(project / "config" / "mlflow.yaml")
    assert not (project / "data").exists()
    cfg.ensure_dirs()
    assert (project / "data" / "mlflow" / "artifacts").is_dir()
    assert cfg.ingest.state_dir.is_dir()


# --------------------------------------------------------------------------- schema = the dataclasses

SECTIONS = {"tracking": "TrackingConfig", "journal": "JournalConfig", "ingest": "IngestConfig",
            "ingest.watch": "WatchConfig"}


def _section_classes():
    from formula_foundry.tracking import config as module

    return {prefix: getattr(module, name) for prefix, name in SECTIONS.items()}


def _plain(value):
    """A dataclass default as YAML would write it."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def test_every_dataclass_field_is_a_key_with_its_default(project: Path):
    """Writing every field's default into the file gives the same Config as an empty file:
    the keys and defaults the loader knows are exactly the dataclasses' fields."""
    data: dict = {}
    for prefix, cls in _section_classes().items():
        target = data
        for part in prefix.split("."):
            target = target.setdefault(part, {})
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:  # not the nested section (ingest.watch)
                target[f.name] = _plain(f.default)
    import yaml

    full = load_config(_write(project, yaml.safe_dump(data)), env={})
    empty = load_config(_write(project, ""), env={})
    assert full == empty
    assert empty.ingest.watch == _section_classes()["ingest.watch"]()  # defaults are the dataclass's own


@pytest.mark.parametrize("prefix", sorted(SECTIONS))
def test_unknown_key_lists_the_dataclass_fields(project: Path, prefix: str):
    """The "known keys" of each section are its dataclass's field names."""
    cls = _section_classes()[prefix]
    nested = "".join(f"{'  ' * i}{part}:\n" for i, part in enumerate(prefix.split(".")))
    path = _write(project, nested + "  " * len(prefix.split(".")) + "no_such_key: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    known = ", ".join(sorted(f.name for f in dataclasses.fields(cls)))
    assert str(err.value).endswith(f"unknown key (known keys: {known})")


def test_docs_state_the_dataclass_defaults_and_ranges():
    """docs/configuration.md restates each key's default and range; they agree with the dataclasses."""
    import re

    import yaml

    doc = (REPO / "docs" / "configuration.md").read_text()
    for prefix, cls in _section_classes().items():
        shown = prefix.split(".", 1)[1] + "." if prefix.startswith("ingest.") else ""
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING:  # the nested section (ingest.watch)
                continue
            row = re.search(rf"^\| `{re.escape(shown + f.name)}` \| `([^`]*)` \|", doc, re.M)
            assert row, f"{prefix}.{f.name} has no row in docs/configuration.md"
            assert yaml.safe_load(row.group(1)) == _plain(f.default), f"{prefix}.{f.name}"
            bounds = f.metadata["config"].bounds
            if bounds is not None:
                lo, hi = bounds
                row = f"| `{prefix}.{f.name}` | {lo:.15g} – {hi:.15g} |"
                assert row in doc.replace(" (365 days)", ""), f"{prefix}.{f.name}: range not documented"


def test_mlflow_tracking_uri_of_the_drop_in_is_not_a_store_override(tmp_path):
    """``MLFLOW_TRACKING_URI=ff-journal:`` sends MLflow's API into the journals (the drop-in); the
    config then keeps its own store, so ``ff-ingest`` in the same shell ingests where it should."""
    from formula_foundry.tracking import load_config

    cfg_file = tmp_path / "config" / "mlflow.yaml"
    cfg_file.parent.mkdir()
    cfg_file.write_text("tracking:\n  backend_store_uri: sqlite:///store/m.db\n")
    for value in ("ff-journal:", f"ff-journal:{tmp_path}"):
        cfg = load_config(cfg_file, env={"MLFLOW_TRACKING_URI": value})
        assert cfg.tracking.backend_store_uri == f"sqlite:///{(tmp_path / 'store' / 'm.db').resolve()}"
