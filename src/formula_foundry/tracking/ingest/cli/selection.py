"""The selection options that ``ingest``, ``status`` and ``prune`` share (rules: :mod:`..select`)."""

from __future__ import annotations

import click

from formula_foundry.tracking.ingest.select import Selection, parse_time

__all__ = ["selection_from", "selection_options"]

_OPTIONS = [
    click.option("--run-id", "run_ids", multiple=True,
                 help="Only the journals of this producer run id (repeatable; a child run is not included)."),
    click.option("--experiment", default=None, help="Only runs of this experiment (from the journal header)."),
    click.option("--since", default=None, help="Only runs started at or after this ISO date/datetime (UTC)."),
    click.option("--until", default=None, help="Only runs started before this ISO date/datetime (UTC)."),
]


def selection_options(fn):
    """Add --run-id, --experiment, --since, --until."""
    for option in reversed(_OPTIONS):
        fn = option(fn)
    return fn


def selection_from(run_ids, experiment, since, until) -> Selection:
    """The :class:`Selection` of the options; a bad time is a usage error (exit 2)."""
    times = []
    for name, text in (("--since", since), ("--until", until)):
        try:
            times.append(None if text is None else parse_time(text))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=name) from None
    return Selection(run_ids=frozenset(run_ids), experiment=experiment, since_ms=times[0], until_ms=times[1])
