"""The producer side of Formula Foundry tracking (seed 001's API).

Pipeline code imports this package and never MLflow: every call appends one
checksummed record to the run's journal; ``ff-ingest`` (the ``ingest``
subpackage, which needs ``formula-foundry[tracking]``) replays journals into
MLflow. Importing this package imports only the standard library, orjson,
pyyaml and :mod:`formula_foundry.substrate`.
"""

from __future__ import annotations

from formula_foundry.errors import (
    ConfigError,
    JournalError,
    JournalLockedError,
    JournalWriteError,
    RunStateError,
    TrackingError,
    ValidationError,
)
from formula_foundry.tracking.config import Config, load_config
from formula_foundry.tracking.tracker import NoopRun, Run, Tracker, get_tracker

__all__ = [
    "Config",
    "ConfigError",
    "JournalError",
    "JournalLockedError",
    "JournalWriteError",
    "NoopRun",
    "Run",
    "RunStateError",
    "Tracker",
    "TrackingError",
    "ValidationError",
    "get_tracker",
    "load_config",
]
