"""Judging stored runs against seed 003's acceptance criteria registry (pure: no MLflow).

Two modules, read in this order:

- :mod:`~formula_foundry.acceptance.expression`: the safe target-expression
  language (an allow-listed ``ast`` grammar, walked here, never ``eval``);
- :mod:`~formula_foundry.acceptance.registry`: the registry CSV
  (``config/acceptance_criteria_registry.csv``), its criteria, and
  :func:`evaluate`, which judges one run's metrics against one criterion.

Nothing here imports MLflow or fetches runs: ``ff-ingest check``
(:mod:`formula_foundry.tracking.ingest.check`) does that, hands each run's
metrics in as a plain mapping and renders the report. Errors are
:class:`~formula_foundry.errors.AcceptanceError` (file, line and column named).
"""

from __future__ import annotations

from formula_foundry.acceptance.expression import (
    MAX_EXPRESSION_LENGTH,
    MAX_EXPRESSION_NODES,
    TargetExpression,
    parse_expression,
)
from formula_foundry.acceptance.registry import (
    DEFAULT_REGISTRY_RELPATH,
    REGISTRY_COLUMNS,
    Criterion,
    Evaluation,
    Registry,
    evaluate,
    load_registry,
)

__all__ = [
    "DEFAULT_REGISTRY_RELPATH",
    "MAX_EXPRESSION_LENGTH",
    "MAX_EXPRESSION_NODES",
    "REGISTRY_COLUMNS",
    "Criterion",
    "Evaluation",
    "Registry",
    "TargetExpression",
    "evaluate",
    "load_registry",
    "parse_expression",
]
