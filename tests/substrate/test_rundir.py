"""Run directories: run-id validation, confinement to the run root, layout, create_run."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from formula_foundry import substrate
from formula_foundry.errors import SubstrateError, UnsafeRunIdError
from formula_foundry.substrate import DeterminismConfig, Manifest, RunArtifacts, create_run, init_run_dir

UNSAFE_IDS = [
    "",
    "a/b",
    "a\\b",
    "/abs",
    "..",
    "../escape",
    "a..b",
    "a\x00b",
    "a b",
    ".hidden",
    "-dash",
    "_under",
    "run\n",
    "x" * 129,
    "ümlaut",
    None,
]


def _tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.mark.parametrize("run_id", UNSAFE_IDS, ids=repr)
def test_unsafe_run_id_rejected_and_nothing_created(tmp_path: Path, run_id: object) -> None:
    """Each unsafe id shape raises UnsafeRunIdError naming the id, and no file is created."""
    before = _tree(tmp_path)
    with pytest.raises(UnsafeRunIdError, match="must match") as info:
        init_run_dir(tmp_path / "runs", run_id)  # type: ignore[arg-type]
    assert repr(run_id) in str(info.value)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("run_id", ["a", "run-001", "20261123T160102Z-1a2b3c", "v1.2_b", "x" * 128])
def test_safe_run_ids_accepted(tmp_path: Path, run_id: str) -> None:
    """Boundary ids that match the allow-list (one char, 128 chars, dots, dashes) are accepted."""
    assert init_run_dir(tmp_path, run_id).run_dir.name == run_id


def test_layout_and_parents_created(tmp_path: Path) -> None:
    """init_run_dir creates missing parents and tracking/, and exposes the layout."""
    run = init_run_dir(tmp_path / "a" / "b", "run-001")
    assert run.run_id == "run-001"
    assert run.run_dir == (tmp_path / "a" / "b" / "run-001").resolve()
    assert run.manifest_path == run.run_dir / "manifest.json"
    assert run.outputs_dir == run.run_dir / "outputs"
    assert run.tracking_dir == run.run_dir / "tracking"
    assert run.tracking_dir.is_dir()


def test_init_is_idempotent(tmp_path: Path) -> None:
    """A second init of the same run returns an equal value and keeps existing files."""
    first = init_run_dir(tmp_path, "run-001")
    (first.tracking_dir / "journal.jsonl").write_text("x\n")
    second = init_run_dir(str(tmp_path), "run-001")
    assert second == first
    assert (first.tracking_dir / "journal.jsonl").read_text() == "x\n"


def test_symlinked_run_dir_escaping_root_rejected(tmp_path: Path) -> None:
    """A run dir that is a symlink to outside the run root is refused; nothing is written there."""
    root, outside = tmp_path / "runs", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "evil").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeRunIdError, match="outside run root"):
        init_run_dir(root, "evil")
    assert list(outside.iterdir()) == []


def test_symlinked_tracking_dir_escaping_root_rejected(tmp_path: Path) -> None:
    """A tracking/ symlink inside an existing run dir that points outside the root is refused."""
    root, outside = tmp_path / "runs", tmp_path / "outside"
    outside.mkdir()
    (root / "run-001").mkdir(parents=True)
    (root / "run-001" / "tracking").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeRunIdError, match="outside run root"):
        init_run_dir(root, "run-001")


def test_symlinked_run_root_is_fine(tmp_path: Path) -> None:
    """The run root itself may be a symlink: confinement is checked against its resolved path."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    run = init_run_dir(tmp_path / "link", "run-001")
    assert (real / "run-001" / "tracking").is_dir()
    assert run.run_dir == real.resolve() / "run-001"


def test_from_dir_round_trip(tmp_path: Path) -> None:
    """RunArtifacts.from_dir rebuilds the value init_run_dir returned, also from a relative path."""
    run = init_run_dir(tmp_path, "run-001")
    assert RunArtifacts.from_dir(run.run_dir) == run
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert RunArtifacts.from_dir("run-001") == run
    finally:
        os.chdir(cwd)


def test_from_dir_missing_directory(tmp_path: Path) -> None:
    """from_dir of a directory that does not exist is a SubstrateError naming it."""
    with pytest.raises(SubstrateError, match="run-404"):
        RunArtifacts.from_dir(tmp_path / "run-404")


def test_create_run_writes_readable_manifest(tmp_path: Path) -> None:
    """create_run writes the given manifest atomically; Manifest.read returns it unchanged."""
    manifest = Manifest.from_environment(DeterminismConfig(seed=7), repo_dir=tmp_path)
    run = create_run(tmp_path / "runs", "run-001", manifest=manifest)
    assert Manifest.read(run.manifest_path) == manifest
    assert sorted(p.name for p in run.run_dir.iterdir()) == ["manifest.json", "tracking"]


def test_create_run_default_id_and_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without arguments create_run picks a timestamp-hex id and a manifest from the environment."""
    monkeypatch.setenv("FF_GIT_SHA", "a" * 40)
    first, second = create_run(tmp_path), create_run(tmp_path)
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", first.run_id)
    assert first.run_id != second.run_id
    assert Manifest.read(first.manifest_path).git_sha == "a" * 40


def test_public_surface_is_all() -> None:
    """The package exports exactly what __all__ lists."""
    assert sorted(substrate.__all__) == [
        "ArtifactEntry",
        "ArtifactStore",
        "DeterminismConfig",
        "Manifest",
        "RunArtifacts",
        "create_run",
        "init_run_dir",
    ]
    public = {name for name in vars(substrate) if not name.startswith("_")}
    assert public - {"annotations", "manifest", "rundir", "store"} == set(substrate.__all__)
