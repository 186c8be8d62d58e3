"""Issue 14, items 1 and 8: the producer refuses at the call what the store (or the ingester) would
refuse later, and accepts what MLflow accepts.

Each refusal raises :class:`ValidationError` naming the argument and the value, and leaves the
journal byte-identical. Every accepted artifact reference path is ingested into a real MLflow
SQLite store (``ff-ingest``), so "accepted" means "stored".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from formula_foundry.errors import ValidationError
from formula_foundry.substrate.rundir import validate_run_id
from formula_foundry.tracking import validation as v
from formula_foundry.tracking.journal import JournalReader
from tests.ingest import artifact_files, ingest, tracker

DIGEST = "ab" * 32


def _records(path: Path) -> list[dict]:
    return list(JournalReader(path).records())


def _refused(run, call, *, key: str, value: object, rule: str | None = None) -> ValidationError:
    """``call`` raises ValidationError naming ``key`` and ``value``; the journal is unchanged."""
    before = run.journal_path.read_bytes()
    with pytest.raises(ValidationError) as info:
        call()
    err = info.value
    assert err.key == key, err
    assert key in str(err), err
    shown = repr(value)[:40] if isinstance(value, str) else repr(value)[:20]
    assert shown in str(err), (shown, str(err))
    if rule is not None:
        assert err.rule == rule, err
    assert run.journal_path.read_bytes() == before, "a refused call wrote to the journal"
    return err


@pytest.fixture
def run(project: Path):
    with tracker(project).start_run(run_name="hardening") as active:
        yield active


# --------------------------------------------------------------------------- artifact reference paths

BAD_PATHS = [
    "a//b", "a/./b", ".", "./a", "a/", "a/.", "/abs", "~/x", "~user/x", "C:/x", "c:x", "a\x00b", "a\nb",
    "a\tb", "a\x7fb", "a/../b", "..", "a\\..\\b", "\\\\server\\share\\x", "x#y", "%2e%2e/x", "%252e%252e/x",
    "a%2F%2Fb", "a/%2e/b", "%7e/x", "a/.artifact.uploading.x", "x" * 241, "é" * 121, "a/" * 600 + "b",
    "", "   ", "bad \ud800",
]


@pytest.mark.parametrize("path", BAD_PATHS, ids=range(len(BAD_PATHS)))
def test_artifact_reference_path_refused(run, path):
    """A logical path whose artifact path MLflow (or the ingester's record check) would refuse."""
    _refused(run, lambda: run.log_artifact_reference(path, DIGEST, 1), key="logical_path", value=path,
             rule="artifact-path")


@pytest.mark.parametrize("path", [5, None, b"a/b", Path("a/b")], ids=["int", "None", "bytes", "Path"])
def test_artifact_reference_path_must_be_a_string(run, path):
    _refused(run, lambda: run.log_artifact_reference(path, DIGEST, 1), key="logical_path", value=path,
             rule="artifact-path")


def test_artifact_reference_paths_that_collide_in_the_run_are_refused(run):
    """``a`` is stored as ``artifact_refs/a.json``: ``a.json/b`` would need that file as a folder."""
    run.log_artifact_reference("a", DIGEST, 1)
    run.log_artifact_reference("d/e.json/f", DIGEST, 1)
    run.log_artifact_reference("a", DIGEST, 2)  # the same path again replaces the document: fine
    run.log_artifact_reference("d/e.json/g", DIGEST, 1)
    _refused(run, lambda: run.log_artifact_reference("a.json/b", DIGEST, 1), key="logical_path",
             value="a.json/b", rule="artifact-path")
    _refused(run, lambda: run.log_artifact_reference("d/e", DIGEST, 1), key="logical_path",
             value="d/e", rule="artifact-path")


GOOD_PATHS = ["a/b.c", "x y/z", "é/ünï 码.txt", "100%.txt", "a%20b", "v1.0/..hidden", "a.../b", "x~/y",
              "ab:c/d", "name with 'quotes' and \"dq\"", "b" * 240, "/".join(["s" * 30] * 4),
              "a\\b.txt", "emoji 🙂/f"]


@pytest.mark.parametrize("path", GOOD_PATHS, ids=range(len(GOOD_PATHS)))
def test_accepted_artifact_reference_path_ingests(store_project, monkeypatch, path):
    """Every accepted path round-trips: ``ff-ingest`` exits 0 and the document is where MLflow lists it."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    with tracker(store_project).start_run(run_name="refs") as r:
        r.log_artifact_reference(path, DIGEST, 7, store_uri="file:///store/x", media_type="text/plain")
    (ref,) = [rec for rec in _records(r.journal_path) if rec["type"] == "artifact_ref"]
    logical = path.replace("\\", "/")
    assert ref["logical_path"] == logical
    assert ingest(store_project) == 0
    from tests.conftest import mlflow_client

    client = mlflow_client(store_project)
    (mlflow_run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    files = artifact_files(mlflow_run.info.artifact_uri)
    doc = json.loads(files[f"artifact_refs/{logical}.json"])
    assert doc["logical_path"] == logical and doc["size_bytes"] == 7


def test_deep_accepted_path_ingests(store_project, monkeypatch):
    """A path MLflow accepts (three 200-byte segments) must ingest too."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    path = "/".join(["s" * 200] * 3)
    with tracker(store_project).start_run(run_name="deep") as r:
        r.log_artifact_reference(path, DIGEST, 7)
    assert ingest(store_project) == 0


def test_refused_paths_are_what_mlflow_refuses():
    """Parity with MLflow 3.17 itself: every path MLflow refuses as (folder, file name) of the reference
    document, we refuse too."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repo import verify_artifact_path
    from mlflow.utils.uri import validate_path_is_safe

    def mlflow_refuses(path: str) -> bool:
        folder, _, name = f"artifact_refs/{path}.json".rpartition("/")
        try:
            verify_artifact_path(folder)
            validate_path_is_safe(f"{folder}/{name}")
            if name.startswith(".artifact.uploading."):
                return True
        except (MlflowException, ValueError):
            return True
        return False

    for path in BAD_PATHS + GOOD_PATHS:
        if isinstance(path, str) and mlflow_refuses(path):
            with pytest.raises(ValidationError):
                v.artifact_logical_path(path)
    for path in GOOD_PATHS:
        assert not mlflow_refuses(path.replace("\\", "/")), path


# --------------------------------------------------------------------------- digest, size, store_uri, ...

@pytest.mark.parametrize("digest", ["md5:" + "0" * 64, "sha1:" + "0" * 64, "sha512:" + "0" * 64, "0" * 63,
                                    "sha256:" + "0" * 63, "sha256:", "g" * 64, "0" * 65, 5, None, b"0" * 64])
def test_artifact_reference_digest_refused(run, digest):
    """Only sha256 is supported: ``sha256:<64 hex>`` or 64 hex digits; ``md5:...`` is not taken for sha256."""
    _refused(run, lambda: run.log_artifact_reference("a", digest, 1), key="digest", value=digest,
             rule="artifact-digest")


def test_artifact_reference_digest_forms(run):
    run.log_artifact_reference("a", "sha256:" + "AB" * 32, 1)
    run.log_artifact_reference("b", "CD" * 32, 1)
    refs = [rec["digest"] for rec in _records(run.journal_path) if rec["type"] == "artifact_ref"]
    assert refs == ["ab" * 32, "cd" * 32]


@pytest.mark.parametrize("size", [10**30, 2**63, -1, True, 1.0, "12", None])
def test_artifact_reference_size_refused(run, size):
    """size_bytes: an integer in [0, 2**63); 10**30 is a ValidationError, not orjson's TypeError."""
    _refused(run, lambda: run.log_artifact_reference("a", DIGEST, size), key="size_bytes", value=size,
             rule="artifact-size")


def test_artifact_reference_size_bounds(run):
    np = pytest.importorskip("numpy")
    run.log_artifact_reference("a", DIGEST, 2**63 - 1)
    run.log_artifact_reference("b", DIGEST, np.int64(5))
    sizes = [rec["size_bytes"] for rec in _records(run.journal_path) if rec["type"] == "artifact_ref"]
    assert sizes == [2**63 - 1, 5]


@pytest.mark.parametrize("arg, value", [
    ("store_uri", "x" * (v.MAX_STORE_URI_LENGTH + 1)),
    ("store_uri", "x" * 10_000_000),
    ("store_uri", 5),
    ("store_uri", b"file:///x"),
    ("store_uri", ""),
    ("store_uri", "file:///a\x00b"),
    ("store_uri", "file:///\ud800"),
    ("media_type", "t/" + "x" * v.MAX_MEDIA_TYPE_LENGTH),
    ("media_type", ["text/plain"]),
    ("media_type", "text/plain\n"),
    ("media_type", " "),
])
def test_artifact_reference_text_refused(run, arg, value):
    """store_uri / media_type: a string (or None), bounded, no control character (a 10 MB store_uri
    used to become a 60 MB journal line)."""
    _refused(run, lambda: run.log_artifact_reference("a", DIGEST, 1, **{arg: value}), key=arg, value=value,
             rule="artifact-text")


# --------------------------------------------------------------------------- run and experiment names

@pytest.mark.parametrize("name", ["sweep 0..10", "..", "a/../b", "lr=1e-3, bs=32", "  spaced  ", "ünï 码",
                                  "x" * 250, "~/weird\\name", "tab\there"])
def test_free_text_run_names_are_accepted(project, name):
    """A run name is free text in MLflow: ``..``, spaces, slashes are fine; the substrate run id derived
    from it stays safe."""
    with tracker(project).start_run(run_name=name) as r:
        pass
    assert r.run_name == name
    validate_run_id(r.run_dir.name)
    assert r.run_dir.parent == project / "data" / "runs" or r.run_dir.parent.resolve() == (
        project / "data" / "runs").resolve()
    (start,) = [rec for rec in _records(r.journal_path) if rec["type"] == "run_start"]
    assert start["run_name"] == name


def test_free_text_run_name_ingests(store_project, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    with tracker(store_project).start_run(run_name="sweep 0..10", experiment_name="exp 0..1 / ü") as r:
        r.log_metric("m", 1.0)
    assert ingest(store_project) == 0
    from tests.conftest import mlflow_client

    client = mlflow_client(store_project)
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("exp 0..1 / ü").experiment_id])
    assert mlflow_run.info.run_name == "sweep 0..10"


@pytest.mark.parametrize("kwargs, key, value", [
    ({"run_name": "a\x00b"}, "run_name", "a\x00b"),
    ({"run_name": "r" * 251}, "run_name", "r" * 251),
    ({"run_name": 5}, "run_name", 5),
    ({"run_name": "bad \ud800"}, "run_name", "bad \ud800"),
    ({"experiment_name": "e\x00"}, "experiment_name", "e\x00"),
    ({"experiment_name": "e" * 257}, "experiment_name", "e" * 257),
    ({"experiment_name": " "}, "experiment_name", " "),
    ({"experiment_name": ["e"]}, "experiment_name", ["e"]),
    ({"run_name": "a", "tags": {"mlflow.runName": "b"}}, "run_name", "a"),
    ({"tags": {"mlflow.runName": "n" * 251}}, "mlflow.runName", "mlflow.runName"),
    ({"manifest": {"seeds": {"a#b": 1}}}, "tag", "seed_a#b"),
    ({"manifest": {"seeds": [1, 2]}}, "manifest", "manifest"),
])
def test_start_run_refuses_what_the_store_cannot_hold(project, kwargs, key, value):
    """NUL (PostgreSQL), names over the SQL columns (runs.name 250, experiments.name 256), a run_name
    that contradicts a ``mlflow.runName`` tag (MLflow's create_run refuses it), manifest seed names
    that are not tag keys: refused before any run directory or journal exists."""
    with pytest.raises(ValidationError) as info:
        tracker(project).start_run(**kwargs)
    err = info.value
    if key != "tag":
        assert err.key == key
    shown = repr(value)[:40] if isinstance(value, str) else repr(value)[:20]
    assert shown.strip("'") in str(err), str(err)
    assert not (project / "data").exists()


def test_run_name_tag_follows_the_run_name_limit(run):
    """set_tag("mlflow.runName", ...) renames the run in MLflow (runs.name VARCHAR(250))."""
    _refused(run, lambda: run.set_tag("mlflow.runName", "n" * 251), key="mlflow.runName",
             value="mlflow.runName", rule="run-name")
    run.set_tag("mlflow.runName", "n" * 250)


def test_matching_run_name_tag_is_fine(project):
    with tracker(project).start_run(run_name="a", tags={"mlflow.runName": "a"}) as r:
        pass
    (start,) = [rec for rec in _records(r.journal_path) if rec["type"] == "run_start"]
    assert start["tags"]["mlflow.runName"] == "a"


def test_run_error_with_nul_is_stored_escaped(project):
    """An exception message with NUL or a lone surrogate ends the run FAILED with the text escaped (the
    record check refuses NUL in ``error``, and the journal cannot hold a lone surrogate)."""
    with pytest.raises(ValueError), tracker(project).start_run(run_name="boom") as r:
        raise ValueError("bad\x00byte \ud800")
    (end,) = [rec for rec in _records(r.journal_path) if rec["type"] == "run_end"]
    assert end["status"] == "FAILED"
    assert end["error"] == "ValueError: bad\\x00byte \\ud800"


def test_limits_are_the_stores():
    """The limits mirror MLflow 3.17's SQL columns and checks."""
    from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlRun
    from mlflow.utils import validation as mv

    assert v.MAX_RUN_NAME_LENGTH == SqlRun.__table__.c.name.type.length
    assert v.MAX_EXPERIMENT_NAME_LENGTH == SqlExperiment.__table__.c.name.type.length
    assert v.MAX_EXPERIMENT_NAME_LENGTH <= mv.MAX_EXPERIMENT_NAME_LENGTH
    assert v.MAX_STORE_URI_LENGTH == mv.MAX_TAG_VAL_LENGTH
    assert not hasattr(v, "MAX_BATCH_METRICS") and not hasattr(v, "MAX_BATCH_ENTITIES")


def test_script_path_that_is_not_utf8_still_starts_a_run(project, monkeypatch):
    """``sys.argv[0]`` with undecodable bytes (lone surrogates) becomes an escaped ``mlflow.source.name``
    instead of a journal that cannot be written."""
    monkeypatch.setattr("sys.argv", ["/scripts/caf\udce9.py"])
    with tracker(project).start_run(run_name="argv") as r:
        pass
    (start,) = [rec for rec in _records(r.journal_path) if rec["type"] == "run_start"]
    assert start["tags"]["mlflow.source.name"] == "/scripts/caf\\udce9.py"
