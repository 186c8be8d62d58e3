"""Batching decisions: journal records -> :class:`~.sink.Batch` values within MLflow's limits. Pure.

MLflow's ``log_batch`` takes at most 1000 metrics, 100 params, 100 tags and
1000 entities in all per call, and a REST request of at most 1 MB. The
builder fills a batch until the next item would break one of those limits,
then starts a new one. A record too large for one batch (``log_metrics`` with
5000 keys) is split; every batch carries the journal position of the last
record it completes, so a checkpoint always falls on a record boundary and
replaying a half-applied record is harmless (see :mod:`.sink`).

Metrics are de-duplicated inside a batch on MLflow's primary key (key,
timestamp, step, value, is_nan): MLflow's own recovery path for duplicate
keys re-inserts row by row, which is slow on large batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson

from formula_foundry.tracking.events import MetricPoint, decode_metric_value, iter_metrics, iter_pairs
from formula_foundry.tracking.ingest.sink import Batch
from formula_foundry.tracking.journal import ReadPosition

__all__ = ["ARTIFACT_REFS_DIR", "MLFLOW_LIMITS", "BatchBuilder", "Limits", "artifact_ref_document"]

ARTIFACT_REFS_DIR = "artifact_refs"
MANIFEST_ARTIFACT = "manifest.json"
TAG_RUN_ERROR = "ff.run_error"


@dataclass(frozen=True)
class Limits:
    metrics: int = 1000
    params: int = 100
    tags: int = 100
    entities: int = 1000
    payload_bytes: int = 900_000  # below MLflow's 1 MB request limit, with room for JSON overhead


MLFLOW_LIMITS = Limits()  # MLflow 3.17's log_batch limits (mlflow/utils/validation.py)


def artifact_ref_document(record: dict) -> tuple[str, bytes]:
    """The artifact path and JSON content for an ``artifact_ref`` record (REQ-M3-005).

    Content depends only on the record, so a replay rewrites identical bytes.
    """
    doc = {
        "type": "formula_foundry.artifact_reference",
        "logical_path": record["logical_path"],
        "digest": {"algorithm": "sha256", "value": record["digest"]},
        "size_bytes": record["size_bytes"],
        "store_uri": record.get("store_uri"),
        "media_type": record.get("media_type"),
        "logged_at_ms": record["ts"],
    }
    path = f"{ARTIFACT_REFS_DIR}/{record['logical_path']}.json"
    return path, orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def _metric_key(m: MetricPoint) -> tuple:
    nan = math.isnan(m.value)
    return (m.key, m.timestamp, m.step, 0.0 if nan else m.value, nan)


class BatchBuilder:
    """Accumulates one journal's records into batches. ``add`` returns the batches that filled up."""

    def __init__(self, limits: Limits = MLFLOW_LIMITS, *, start: ReadPosition | None = None) -> None:
        self.limits = limits
        self._batch = Batch()
        self._seen: set[tuple] = set()
        self._bytes = 0
        # End of the last record added; starts where reading starts, so that the first part
        # of a record split across batches still carries a (not advancing) position.
        self.position: ReadPosition | None = start

    def _entities(self) -> int:
        b = self._batch
        return len(b.metrics) + len(b.params) + len(b.tags)

    def _room(self, kind: str, size: int) -> bool:
        b, lim = self._batch, self.limits
        if self._bytes + size > lim.payload_bytes and self._entities():
            return False
        if kind == "metric":
            return len(b.metrics) < lim.metrics and self._entities() < lim.entities
        if kind == "param":
            return len(b.params) < lim.params and self._entities() < lim.entities
        if kind == "tag":
            return len(b.tags) < lim.tags and self._entities() < lim.entities
        return True

    def _cut(self, out: list[Batch]) -> None:
        if self._batch:
            self._batch.position = self.position
            out.append(self._batch)
        self._batch = Batch()
        self._seen = set()
        self._bytes = 0

    def add(self, record: dict, end: ReadPosition) -> list[Batch]:
        """Add one verified record that ends at ``end``; returns batches that are ready to commit."""
        out: list[Batch] = []
        kind = record["type"]
        if kind == "metric":  # the hot path of a backfill: one point, no generator
            value = record["value"]
            if type(value) is not float:
                value = decode_metric_value(value)
            nan = value != value  # noqa: PLR0124 - NaN test
            point = MetricPoint(record["key"], value, record.get("mts", record["ts"]), record.get("step", 0))
            key = (point.key, point.timestamp, point.step, 0.0 if nan else value, nan)
            if key not in self._seen:
                size = len(point.key) + 48
                batch = self._batch
                if (len(batch.metrics) >= self.limits.metrics or self._entities() >= self.limits.entities
                        or (self._bytes + size > self.limits.payload_bytes and self._entities())):
                    self._cut(out)
                self._seen.add(key)
                self._batch.metrics.append(point)
                self._bytes += size
        elif kind == "metrics":
            for point in iter_metrics(record):
                key = _metric_key(point)
                if key in self._seen:
                    continue
                size = len(point.key) + 48
                if not self._room("metric", size):
                    self._cut(out)
                self._seen.add(key)
                self._batch.metrics.append(point)
                self._bytes += size
        elif kind in ("param", "params", "tag", "tags"):
            target = "param" if kind.startswith("param") else "tag"
            for key, value in iter_pairs(record):
                size = len(key) + len(value) + 16
                store = self._batch.params if target == "param" else self._batch.tags
                if key not in store and not self._room(target, size):
                    self._cut(out)
                    store = self._batch.params if target == "param" else self._batch.tags
                if target == "param" and key in store and store[key] != value:
                    # Same key, other value inside one batch: keep the first, let replay report it.
                    self._batch.conflicts.append((key, store[key], value))
                    continue
                if target == "tag" and key in store:
                    del store[key]  # re-insert so dict order stays the journal's order
                store[key] = value
                self._bytes += size
        elif kind == "manifest":
            self._batch.artifacts[MANIFEST_ARTIFACT] = orjson.dumps(
                record["manifest"], option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        elif kind == "artifact_ref":
            path, content = artifact_ref_document(record)
            self._batch.artifacts[path] = content
        elif kind == "run_end":
            error = record.get("error")
            if error:
                if not self._room("tag", len(error) + 32):
                    self._cut(out)
                self._batch.tags[TAG_RUN_ERROR] = error[:8000]
            self._batch.end = (record["status"], record["ts"])
        # run_start / run_attach / segment_end carry nothing to send beyond what replay does.
        self._batch.records += 1
        self.position = end
        if kind in ("run_end", "segment_end"):
            self._batch.closes_journal = True
            self._cut(out)
        return out

    def flush(self) -> Batch | None:
        """The partial batch, if it holds anything."""
        out: list[Batch] = []
        self._cut(out)
        return out[0] if out else None
