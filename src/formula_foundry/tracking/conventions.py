"""Logging conventions of seed 003 as small, pure helpers.

Seed 003 asks every run to carry five tags, ``task``, ``milestone``, ``agent``,
``dataset_version`` and ``code_revision``, and seed 001 names one MLflow
experiment per milestone. These helpers build those values; nothing here
enforces them on a run (they are conventions, not requirements), and nothing
here imports MLflow.

"Log tag ``task:<task_id>``" in seed 003 means the tag *key* ``task`` with the
task id as its *value*; the acceptance registry
(:mod:`formula_foundry.acceptance`) finds a run's criteria by that tag.

::

    >>> experiment_for_milestone("m2")
    'ff-m2-simulation'
    >>> convention_tags(task="M2-sim-insertion-loss", milestone="2", agent="sim-bot")
    {'task': 'M2-sim-insertion-loss', 'milestone': 'M2', 'agent': 'sim-bot'}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from formula_foundry.errors import ValidationError

__all__ = [
    "CONVENTION_TAGS",
    "MILESTONE_EXPERIMENTS",
    "convention_tags",
    "experiment_for_milestone",
    "normalize_milestone",
]

#: The tag keys seed 003 asks every run to carry, in the seed's order.
CONVENTION_TAGS: tuple[str, ...] = ("task", "milestone", "agent", "dataset_version", "code_revision")

#: Seed 001's experiment name per milestone (read-only).
MILESTONE_EXPERIMENTS: Mapping[str, str] = MappingProxyType({
    "M1": "ff-m1-coupongen",
    "M2": "ff-m2-simulation",
    "M3": "ff-m3-pipeline",
    "M4": "ff-m4-macromodel",
    "M5": "ff-m5-symbolic",
    "M6": "ff-m6-loop",
})

_MILESTONE_RE = re.compile(r"[Mm]?([0-9]+)")


def normalize_milestone(milestone: str) -> str:
    """Return the canonical milestone id (``"M2"``) for ``"M2"``, ``"m2"`` or ``"2"``.

    Surrounding whitespace and leading zeros are ignored (``" m02 "`` is ``"M2"``).
    Raises :class:`~formula_foundry.errors.ValidationError` (a ``ValueError``) naming
    the accepted values when the milestone is not one of seed 001's table.
    """
    accepted = ", ".join(MILESTONE_EXPERIMENTS)
    if not isinstance(milestone, str):
        raise ValidationError(
            f"milestone must be a string such as 'M2', got {type(milestone).__name__}; "
            f"accepted: {accepted} (also 'm2' or '2')",
            key="milestone", rule="type",
        )
    match = _MILESTONE_RE.fullmatch(milestone.strip())
    if match is not None:
        canonical = f"M{int(match.group(1))}"
        if canonical in MILESTONE_EXPERIMENTS:
            return canonical
    raise ValidationError(
        f"unknown milestone {milestone!r}; accepted: {accepted} (also 'm2' or '2')",
        key="milestone", rule="known milestone",
    )


def experiment_for_milestone(milestone: str) -> str:
    """Return seed 001's experiment name for a milestone (``"M2"``, ``"m2"`` or ``"2"``).

    Raises :class:`~formula_foundry.errors.ValidationError` (a ``ValueError``) naming
    the accepted values for an unknown milestone.
    """
    return MILESTONE_EXPERIMENTS[normalize_milestone(milestone)]


def convention_tags(
    *,
    task: str | None = None,
    milestone: str | None = None,
    agent: str | None = None,
    dataset_version: str | None = None,
    code_revision: str | None = None,
) -> dict[str, str]:
    """Return the seed-003 convention tags that were given, in :data:`CONVENTION_TAGS` order.

    Arguments left at ``None`` are left out of the result, so the dict can be
    passed straight to ``run.set_tags``/``set_tag`` calls. ``milestone`` is
    normalized with :func:`normalize_milestone` (``"2"`` becomes ``"M2"``).

    ``code_revision`` has no default: the usual source is the substrate
    manifest's ``Manifest.git_sha`` (``convention_tags(code_revision=manifest.git_sha)``).
    The tracker already logs that manifest as a ``git_sha`` tag; ``code_revision``
    is the seed-003 name for the same fact, for runs that want it under both.

    Raises :class:`~formula_foundry.errors.ValidationError` for a value that is not
    a string, is empty or only whitespace, or an unknown milestone.
    """
    given = {
        "task": task,
        "milestone": milestone,
        "agent": agent,
        "dataset_version": dataset_version,
        "code_revision": code_revision,
    }
    tags: dict[str, str] = {}
    for key in CONVENTION_TAGS:
        value = given[key]
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValidationError(
                f"tag '{key}' must be a string, got {type(value).__name__}",
                key=key, rule="type",
            )
        if not value.strip():
            raise ValidationError(
                f"tag '{key}' is empty; pass None to leave it out", key=key, rule="non-empty",
            )
        tags[key] = normalize_milestone(value) if key == "milestone" else value
    return tags
