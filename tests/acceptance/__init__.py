"""Helpers shared by the acceptance tests.

* :func:`criterion` - a :class:`~formula_foundry.acceptance.Criterion` built in code
  (task ``T-1``, milestone M1, metrics ``a`` and ``b`` unless told).
"""

from __future__ import annotations

from formula_foundry.acceptance import Criterion


def criterion(expression: str, metrics: tuple[str, ...] = ("a", "b"), task_id: str = "T-1") -> Criterion:
    return Criterion(task_id=task_id, milestone="M1", required_metrics=metrics, target_expression=expression)
