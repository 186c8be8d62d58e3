"""Helpers shared by the producer tests."""

from __future__ import annotations

from pathlib import Path

import yaml


def configure(project: Path, **tracking) -> Path:
    """Set ``tracking.*`` keys in ``project``'s config/mlflow.yaml; returns its path."""
    path = project / "config" / "mlflow.yaml"
    data = yaml.safe_load(path.read_text())
    data["tracking"].update(tracking)
    path.write_text(yaml.safe_dump(data))
    return path
