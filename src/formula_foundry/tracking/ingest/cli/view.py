"""``ff-ingest view JOURNAL [--json]``: a journal's records, checksums verified; needs no MLflow."""

from __future__ import annotations

import json

import click

from formula_foundry.tracking.journal import JournalReader

__all__ = ["view_command"]


@click.command(name="view")
@click.argument("journal", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One verified record per line, as JSON.")
def view_command(journal, as_json):
    """Print a journal's records readably (checksums verified; problems named by line and offset).

    A shipped journal: view its central mirror's file (ff-ingest status --root s3://... lists them).

    Exit codes: 0, or 1 when a line is corrupt.
    """
    reader = JournalReader(journal)
    problems = []
    for entry in reader.entries(skip_corrupt=True, on_skip=problems.append):
        rec = dict(entry.record)
        if as_json:
            click.echo(json.dumps(rec, ensure_ascii=False))
            continue
        head = f"{entry.line:>6}  seq={rec.pop('seq'):<6} {rec.pop('type'):<12}"
        rec.pop("v", None)
        ts = rec.pop("ts")
        body = " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in rec.items())
        click.echo(f"{head} ts={ts} {body}")
    for problem in problems:
        click.echo(f"corrupt: {problem}", err=True)
    if reader.pending_bytes:
        click.echo(f"pending: {reader.pending_bytes} bytes of an incomplete last line", err=True)
    return 1 if problems else 0
