"""The journal's event schema, format version 1. Pure: no I/O.

Every record carries four envelope members, then its type's members, then the
checksum spliced in by :mod:`formula_foundry.tracking.framing`:

====== ========================================================================
``v``    format version (``1``); a reader refuses a higher one
``seq``  contiguous sequence number within the journal, from 0
``ts``   producer wall-clock time, integer milliseconds since the epoch
``type`` one of the types below
====== ========================================================================

Record types and their members:

``run_start`` (first record of the journal of the process that owns the run)
    ``run_id`` (32 hex, the producer's run id), ``journal_id``, ``experiment``,
    ``run_name``, ``parent_run_id`` (or null), ``tags`` (object of strings,
    set atomically with the run in MLflow), ``host``, ``pid``.
``run_attach`` (first record of a further segment of an existing run)
    ``run_id``, ``journal_id``, ``host``, ``pid``.
``param`` / ``params``
    ``key``, ``value`` (string) / ``values`` (object key -> string).
``tag`` / ``tags``
    ``key``, ``value`` (string) / ``values`` (object key -> string).
``metric``
    ``key``, ``value`` (number, or ``"NaN"``, ``"Infinity"``, ``"-Infinity"``),
    ``step`` (integer), optional ``mts`` (the metric's own timestamp in ms;
    absent means ``ts``).
``metrics``
    ``values`` (object key -> value as above), ``step``, optional ``mts``.
``manifest``
    ``manifest`` (the substrate manifest as an object); the ingester logs its
    fields as tags and the object as ``manifest.json``.
``artifact_ref``
    ``logical_path``, ``digest``, ``size_bytes``, ``store_uri`` (or null),
    ``media_type`` (or null). Becomes a small JSON file in the run's artifacts.
``artifact``
    ``path`` (the file's path in the run's artifacts), ``digest`` (sha256 of the
    blob already in the content-addressed store), ``size_bytes``, ``store_uri``
    (the store's root, or null), ``media_type`` (or null). The ingester uploads
    the blob's bytes to ``path``.
``console``
    ``stream`` (``stdout`` | ``stderr``), ``text`` (the bytes printed on file
    descriptor 1 or 2, decoded as UTF-8 with replacement; may hold NUL). Written by
    ``start_run(capture_console=True)``; the ingester joins a journal's ``console``
    texts, in journal order, into the artifact ``logs/console.txt``.
``tag_delete``
    ``key``: the tag is removed from the run (MLflow's ``delete_tag``; the MLflow
    drop-in writes it).
``inputs``
    ``datasets``: a list of objects ``name``, ``digest``, ``source_type``,
    ``source``, ``schema`` (or null), ``profile`` (or null), ``tags`` (object of
    strings, e.g. ``mlflow.data.context``). MLflow's ``log_inputs`` (the MLflow
    drop-in writes it); the ingester logs them as the run's dataset inputs.
``run_end`` (last record of the owning journal)
    ``status`` (``FINISHED`` | ``FAILED`` | ``KILLED``), optional ``error``.
``segment_end`` (last record of an attached segment; does not end the run)

Unknown members are ignored by readers of the same major version, so fields
can be added without a version bump; a new record type or a changed meaning
bumps ``v``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

__all__ = [
    "FORMAT_VERSION",
    "RUN_STATUSES",
    "TYPES",
    "MetricPoint",
    "decode_metric_value",
    "iter_metrics",
    "iter_pairs",
    "manifest_tags",
]

FORMAT_VERSION = 1
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
TYPES = frozenset({
    "run_start", "run_attach", "param", "params", "tag", "tags", "metric", "metrics",
    "manifest", "artifact_ref", "artifact", "console", "run_end", "segment_end",
    "tag_delete", "inputs",
})

# Tag keys the tracking system writes itself.
TAG_RUN_ID = "ff.run_id"  # the producer run id: how a journal finds its MLflow run again
TAG_SUBSTRATE_RUN_ID = "substrate_run_id"
TAG_SUBSTRATE_RUN_DIR = "substrate_run_dir"
MANIFEST_TAG_KEYS = ("git_sha", "design_doc_sha256", "environment_fingerprint", "determinism_mode")

_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class MetricPoint(NamedTuple):
    """One metric point as MLflow stores it (a NamedTuple: replay makes millions of them)."""

    key: str
    value: float
    timestamp: int
    step: int


def decode_metric_value(value: float | str) -> float:
    """Inverse of :func:`formula_foundry.tracking.validation.encode_metric_value`."""
    if isinstance(value, str):
        try:
            return _SPECIAL[value]
        except KeyError:
            raise ValueError(f"not a metric value: {value!r}") from None
    return float(value)


def iter_metrics(record: dict) -> Iterator[MetricPoint]:
    """The metric points of a ``metric`` or ``metrics`` record."""
    ts = record.get("mts", record["ts"])
    step = record.get("step", 0)
    if record["type"] == "metric":
        yield MetricPoint(record["key"], decode_metric_value(record["value"]), ts, step)
    else:
        for key, value in record["values"].items():
            yield MetricPoint(key, decode_metric_value(value), ts, step)


def iter_pairs(record: dict) -> Iterator[tuple[str, str]]:
    """The (key, value) pairs of a ``param``/``params``/``tag``/``tags`` record."""
    if "values" in record:
        yield from record["values"].items()
    else:
        yield record["key"], record["value"]


def manifest_tags(manifest: dict) -> dict[str, str]:
    """Seed 001's manifest tags: git_sha, design_doc_sha256, environment_fingerprint,
    determinism_mode, and ``seed_<prng>`` for each seed."""
    tags = {key: str(manifest.get(key, "unknown")) for key in MANIFEST_TAG_KEYS}
    for name, seed in (manifest.get("seeds") or {}).items():
        tags[f"seed_{name}"] = str(seed)
    return tags
