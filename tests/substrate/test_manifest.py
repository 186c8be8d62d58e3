"""Manifest and DeterminismConfig: provenance fields, fallbacks, round trips, MLflow tags."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

import orjson
import pytest

from formula_foundry.errors import ArtifactNotFoundError, SubstrateError
from formula_foundry.substrate import DeterminismConfig, Manifest
from formula_foundry.substrate import manifest as manifest_module

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git binary not installed")
GIT = [
    "git",
    "-c",
    "user.name=Test",
    "-c",
    "user.email=test@example.com",
    "-c",
    "commit.gpgsign=false",
    "-c",
    "init.defaultBranch=main",
]


@pytest.fixture(autouse=True)
def _clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No provenance overrides, and git may not look above tmp_path for a repository."""
    for name in ("FF_GIT_SHA", "FF_DESIGN_DOC", "GIT_DIR", "GIT_WORK_TREE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))


def _sample(**overrides: object) -> Manifest:
    values: dict[str, object] = {
        "git_sha": "a" * 40,
        "design_doc_sha256": "b" * 64,
        "environment_fingerprint": "c" * 64,
        "determinism_mode": "strict",
        "seeds": {"python": 1, "numpy": 2},
        "cublas_workspace_config": None,
        "created_utc": "2026-11-23T16:01:02Z",
        "python_version": "3.11.7",
        "platform": "Linux",
    }
    values.update(overrides)
    return Manifest(**values)  # type: ignore[arg-type]


def test_seed_001_snippet() -> None:
    """The seed-001 call works and records mode, seeds and the cuBLAS workspace config."""
    manifest = Manifest.from_environment(
        determinism=DeterminismConfig(mode="strict", seed=42, cublas_workspace_config=":4096:8")
    )
    assert manifest.determinism_mode == "strict"
    assert manifest.seeds == {"python": 42, "numpy": 42, "torch": 42}
    assert manifest.cublas_workspace_config == ":4096:8"


def test_outside_git_checkout_all_fields_present(tmp_path: Path) -> None:
    """Outside a checkout every field is present; git_sha and design_doc_sha256 are 'unknown'."""
    (tmp_path / "work").mkdir()
    manifest = Manifest.from_environment(repo_dir=tmp_path / "work")
    for f in fields(Manifest):
        assert getattr(manifest, f.name) is not None or f.name == "cublas_workspace_config"
    assert manifest.git_sha == "unknown" and manifest.design_doc_sha256 == "unknown"
    assert len(manifest.environment_fingerprint) == 64


@needs_git
def test_git_sha_in_a_real_repository(tmp_path: Path) -> None:
    """Inside a git repository with a commit, git_sha is that commit."""
    subprocess.run([*GIT, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "f.txt").write_text("x")
    subprocess.run([*GIT, "add", "f.txt"], cwd=tmp_path, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "first"], cwd=tmp_path, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout.strip()
    assert Manifest.from_environment(repo_dir=tmp_path).git_sha == head


@needs_git
def test_git_sha_of_empty_repository_is_unknown(tmp_path: Path) -> None:
    """A repository without commits has no HEAD: git_sha is 'unknown', no error."""
    subprocess.run([*GIT, "init", "-q"], cwd=tmp_path, check=True)
    assert Manifest.from_environment(repo_dir=tmp_path).git_sha == "unknown"


def test_git_sha_without_git_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no git on PATH, git_sha is 'unknown', no error."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert Manifest.from_environment(repo_dir=tmp_path).git_sha == "unknown"


def test_git_sha_missing_repo_dir(tmp_path: Path) -> None:
    """A repo_dir that does not exist gives 'unknown', no error."""
    assert Manifest.from_environment(repo_dir=tmp_path / "gone").git_sha == "unknown"


def test_git_sha_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FF_GIT_SHA overrides git."""
    monkeypatch.setenv("FF_GIT_SHA", "f" * 40)
    assert Manifest.from_environment(repo_dir=tmp_path).git_sha == "f" * 40


def test_design_doc_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """design_doc_sha256 is the sha256 of the file, given as argument or via FF_DESIGN_DOC."""
    doc = tmp_path / "DESIGN.md"
    doc.write_bytes(b"# design\n" * 1000)
    expected = hashlib.sha256(doc.read_bytes()).hexdigest()
    assert Manifest.from_environment(repo_dir=tmp_path, design_doc=doc).design_doc_sha256 == expected
    monkeypatch.setenv("FF_DESIGN_DOC", str(doc))
    assert Manifest.from_environment(repo_dir=tmp_path).design_doc_sha256 == expected


def test_design_doc_missing_is_unknown(tmp_path: Path) -> None:
    """A design doc path that does not exist gives 'unknown', no error."""
    manifest = Manifest.from_environment(repo_dir=tmp_path, design_doc=tmp_path / "nope.md")
    assert manifest.design_doc_sha256 == "unknown"


def test_fingerprint_stable() -> None:
    """The environment fingerprint is identical across two computations in one environment."""
    first = manifest_module.environment_fingerprint()
    manifest_module.environment_fingerprint.cache_clear()
    assert manifest_module.environment_fingerprint() == first


def test_json_round_trip(tmp_path: Path) -> None:
    """to_json/from_json, to_dict/from_dict and write/read round-trip exactly."""
    manifest = Manifest.from_environment(
        DeterminismConfig(seed=3, cublas_workspace_config=":16:8"), repo_dir=tmp_path
    )
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    manifest.write(tmp_path / "manifest.json")
    assert Manifest.read(tmp_path / "manifest.json") == manifest
    assert orjson.loads((tmp_path / "manifest.json").read_bytes())["manifest_version"] == 1


def test_tags() -> None:
    """tags() has the provenance fields and seed_<name> per PRNG, all as strings."""
    tags = Manifest.from_environment(DeterminismConfig(mode="relaxed", seed=5)).tags()
    assert tags["determinism_mode"] == "relaxed"
    assert {tags["seed_python"], tags["seed_numpy"], tags["seed_torch"]} == {"5"}
    assert {"git_sha", "design_doc_sha256", "environment_fingerprint"} <= tags.keys()
    assert all(isinstance(v, str) for v in tags.values())


def test_read_missing_and_corrupt(tmp_path: Path) -> None:
    """Reading a missing manifest is ArtifactNotFoundError; invalid JSON is SubstrateError; both name it."""
    with pytest.raises(ArtifactNotFoundError, match=r"manifest\.json"):
        Manifest.read(tmp_path / "manifest.json")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(SubstrateError, match=r"manifest\.json"):
        Manifest.read(tmp_path / "manifest.json")


@pytest.mark.parametrize(
    ("change", "key"),
    [({"extra": 1}, "extra"), ({"manifest_version": 2}, "manifest_version"), ({"git_sha": 1}, "git_sha")],
)
def test_from_dict_rejects_bad_input(change: dict[str, object], key: str) -> None:
    """An unknown key, a newer version or a wrong type is a SubstrateError naming the key."""
    data = {**_sample().to_dict(), **change}
    with pytest.raises(SubstrateError, match=key):
        Manifest.from_dict(data)


def test_from_dict_missing_key() -> None:
    """A missing key is a SubstrateError naming it."""
    data = _sample().to_dict()
    del data["platform"]
    with pytest.raises(SubstrateError, match="'platform'"):
        Manifest.from_dict(data)


def test_determinism_defaults_and_seeds() -> None:
    """Default seeds derive from `seed`; an explicit `seeds` mapping wins and is copied."""
    assert DeterminismConfig().prng_seeds() == {"python": 0, "numpy": 0, "torch": 0}
    given = {"python": 1, "jax": 2}
    config = DeterminismConfig(seed=9, seeds=given)
    given["jax"] = 99
    assert config.prng_seeds() == {"python": 1, "jax": 2}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "STRICT"},
        {"seed": -1},
        {"seed": True},
        {"cublas_workspace_config": "4096"},
        {"seeds": {"bad name": 1}},
    ],
    ids=repr,
)
def test_determinism_rejects_bad_values(kwargs: dict[str, object]) -> None:
    """An unknown mode, a negative or bool seed, a bad cuBLAS config or PRNG name is a SubstrateError."""
    with pytest.raises(SubstrateError):
        DeterminismConfig(**kwargs)  # type: ignore[arg-type]
