"""What every ``ff-ingest`` command shares: the common options, loading the config, logging, units."""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path

import click

from formula_foundry.errors import MlflowMissingError
from formula_foundry.tracking.config import Config, check_tracking_uri, load_config
from formula_foundry.tracking.ingest.cli import INSTALL_HINT

__all__ = ["common", "human_bytes", "load", "require_mlflow", "setup_logging"]

_COMMON = [
    click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                 help="Config file (default: config/mlflow.yaml found from the current directory, or $FF_CONFIG)."),
    click.option("--tracking-uri", default=None,
                 help="Tracking store (default: tracking.backend_store_uri, or $MLFLOW_TRACKING_URI)."),
    click.option("--root", "roots", multiple=True, type=click.Path(file_okay=False),
                 help="Journal root to scan instead of the configured ones (repeatable); or, alone, a ship "
                      "destination to ingest centrally (s3://bucket/prefix, file://..., a folder holding "
                      "ff-ship.json)."),
    click.option("--log-level", default="warning", show_default=True,
                 type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False)),
]


def common(fn):
    """Add the options every command takes: --config, --tracking-uri, --root, --log-level."""
    for option in reversed(_COMMON):
        fn = option(fn)
    return fn


def setup_logging(level: str) -> None:
    logging.basicConfig(level=logging.getLevelName(level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def load(config_path: str | None, roots: tuple[str, ...], tracking_uri: str | None = None) -> Config:
    """The config, with ``--root`` replacing the journal roots; ``--tracking-uri`` is checked as the config's is."""
    cfg = load_config(config_path)
    if roots:
        cfg = replace(cfg, journal=replace(cfg.journal, root=Path(roots[0]).resolve()),
                      ingest=replace(cfg.ingest, extra_roots=tuple(Path(r).resolve() for r in roots[1:])))
    if tracking_uri is not None:
        check_tracking_uri(tracking_uri, "--tracking-uri")
    return cfg


def require_mlflow() -> None:
    """Raise :class:`MlflowMissingError` (exit 4) when MLflow cannot be imported."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise MlflowMissingError(INSTALL_HINT) from None


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 kB'`` (decimal units, as ``du --si``)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"  # pragma: no cover - the loop always returns
