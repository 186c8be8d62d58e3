"""``ff-ingest check``'s text report (:func:`~formula_foundry.tracking.ingest.cli.check.render_evaluations`),
on evaluations built in code; the command itself runs against a real store in tests/server/test_check.py."""

from __future__ import annotations

from formula_foundry.acceptance import evaluate
from formula_foundry.tracking.ingest.cli.check import render_evaluations
from tests.acceptance import criterion


def test_render_evaluations() -> None:
    """A table with task, run, status, missing metrics and expression; reasons; a summary line."""
    crit = criterion("a < 30 and b == 0")
    evaluations = [
        evaluate(crit, {"a": 1.0, "b": 0.0}, run_id="run-pass"),
        evaluate(crit, {"a": 99.0, "b": 0.0}, run_id="run-fail"),
        evaluate(crit, {"a": 1.0}, run_id="run-missing"),
        evaluate(crit, {"a": 1.0, "b": 0.0}),
    ]
    report = render_evaluations(evaluations)
    lines = report.splitlines()
    assert lines[0].split() == ["TASK", "RUN", "STATUS", "MISSING", "EXPRESSION"]
    assert lines[1].split()[:4] == ["T-1", "run-pass", "PASS", "-"]
    assert lines[1].endswith("a < 30 and b == 0")
    assert lines[2].split()[:3] == ["T-1", "run-fail", "FAIL"]
    assert lines[3].strip() == "reason: false with a=99.0, b=0.0; failing: [a < 30]"
    assert lines[4].split()[:4] == ["T-1", "run-missing", "MISSING", "b"]
    assert lines[5].strip() == "reason: missing required metric(s): b"
    assert lines[6].split()[:3] == ["T-1", "-", "PASS"]
    assert lines[-1] == "4 run(s): 2 passed, 1 failed, 1 missing metrics"
    assert lines[1].index("PASS") == lines[0].index("STATUS")
    assert report.endswith("\n")


def test_render_evaluations_empty() -> None:
    """No evaluations: one line saying so."""
    assert render_evaluations([]) == "no runs evaluated\n"
