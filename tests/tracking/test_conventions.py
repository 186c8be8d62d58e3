"""formula_foundry.tracking.conventions: seed 003's tags and seed 001's experiment names."""

from __future__ import annotations

import sys

import pytest

from formula_foundry.errors import FormulaFoundryError, ValidationError
from formula_foundry.tracking import conventions
from formula_foundry.tracking.conventions import (
    CONVENTION_TAGS,
    MILESTONE_EXPERIMENTS,
    convention_tags,
    experiment_for_milestone,
    normalize_milestone,
)
from tests.conftest import imported_names


def test_convention_tags_are_seed_003s() -> None:
    """The five tag keys, in the seed's order."""
    assert CONVENTION_TAGS == ("task", "milestone", "agent", "dataset_version", "code_revision")


def test_milestone_experiments_are_seed_001s_table() -> None:
    """Seed 001's table, exactly."""
    assert dict(MILESTONE_EXPERIMENTS) == {
        "M1": "ff-m1-coupongen",
        "M2": "ff-m2-simulation",
        "M3": "ff-m3-pipeline",
        "M4": "ff-m4-macromodel",
        "M5": "ff-m5-symbolic",
        "M6": "ff-m6-loop",
    }


def test_milestone_experiments_is_read_only() -> None:
    """Nobody can change the shared table at run time."""
    with pytest.raises(TypeError):
        MILESTONE_EXPERIMENTS["M7"] = "ff-m7"  # type: ignore[index]


@pytest.mark.parametrize("spelling", ["M2", "m2", "2", " M2 ", "m02"])
def test_experiment_for_milestone_accepts_spellings(spelling: str) -> None:
    """'M2', 'm2' and '2' (and surrounding space, leading zeros) all mean M2."""
    assert experiment_for_milestone(spelling) == "ff-m2-simulation"
    assert normalize_milestone(spelling) == "M2"


@pytest.mark.parametrize("milestone", list(MILESTONE_EXPERIMENTS))
def test_every_milestone_has_its_experiment(milestone: str) -> None:
    """Each of M1..M6 maps to its own experiment, in any case."""
    assert experiment_for_milestone(milestone.lower()) == MILESTONE_EXPERIMENTS[milestone]


@pytest.mark.parametrize("bad", ["M7", "M0", "0", "", "M", "X2", "m-1", "2.0", "M2x", "MM2"])
def test_unknown_milestone_is_a_value_error_naming_accepted_values(bad: str) -> None:
    """An unknown milestone raises ValidationError (a ValueError) listing M1..M6."""
    with pytest.raises(ValidationError) as info:
        experiment_for_milestone(bad)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, FormulaFoundryError)
    assert "M1, M2, M3, M4, M5, M6" in str(info.value)
    assert repr(bad) in str(info.value)
    assert info.value.key == "milestone"


def test_non_string_milestone_is_rejected() -> None:
    """An int milestone is a ValidationError naming the type, not a TypeError from re."""
    with pytest.raises(ValidationError, match="int"):
        experiment_for_milestone(2)  # type: ignore[arg-type]


def test_convention_tags_empty_by_default() -> None:
    """No arguments, no tags."""
    assert convention_tags() == {}


def test_convention_tags_returns_only_given_in_canonical_order() -> None:
    """Only the given tags, in CONVENTION_TAGS order, milestone normalized."""
    tags = convention_tags(code_revision="0123abcd", agent="sim-bot", milestone="m2",
                           task="M2-sim-insertion-loss")
    assert tags == {"task": "M2-sim-insertion-loss", "milestone": "M2", "agent": "sim-bot",
                    "code_revision": "0123abcd"}
    assert list(tags) == ["task", "milestone", "agent", "code_revision"]


def test_convention_tags_all_five() -> None:
    """All five given: all five returned; code_revision is typically Manifest.git_sha."""
    git_sha = "f" * 40
    tags = convention_tags(task="t", milestone="1", agent="a", dataset_version="v3", code_revision=git_sha)
    assert tuple(tags) == CONVENTION_TAGS
    assert tags["code_revision"] == git_sha


def test_convention_tags_are_keyword_only() -> None:
    """Positional use would be ambiguous; it is a TypeError."""
    with pytest.raises(TypeError):
        convention_tags("task-1")  # type: ignore[misc]


@pytest.mark.parametrize("value", ["", "   "])
def test_convention_tags_reject_empty_values(value: str) -> None:
    """An empty tag is a mistake (pass None to leave it out): ValidationError naming the key."""
    with pytest.raises(ValidationError, match="'agent' is empty") as info:
        convention_tags(agent=value)
    assert info.value.key == "agent"


def test_convention_tags_reject_non_strings() -> None:
    """A non-string value names the tag and the type."""
    with pytest.raises(ValidationError, match="'dataset_version' must be a string, got int"):
        convention_tags(dataset_version=3)  # type: ignore[arg-type]


def test_convention_tags_reject_unknown_milestone() -> None:
    """The milestone tag goes through the same check as experiment_for_milestone."""
    with pytest.raises(ValidationError, match="M1, M2"):
        convention_tags(milestone="M9")


def test_module_is_pure() -> None:
    """conventions imports only the stdlib and formula_foundry.errors (never mlflow)."""
    for name in imported_names(conventions):
        assert name.split(".")[0] in sys.stdlib_module_names or name == "formula_foundry.errors", name
