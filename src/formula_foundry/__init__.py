"""Formula Foundry: experiment tracking as a write-ahead journal with an asynchronous ingester."""

from __future__ import annotations

__version__ = "0.1.0"
