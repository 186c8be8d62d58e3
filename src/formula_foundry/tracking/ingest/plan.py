"""Batching decisions: journal records -> :class:`~.sink.Batch` values within MLflow's limits. Pure.

MLflow's ``log_batch`` takes at most 1000 metrics, 100 params, 100 tags and
1000 entities in all per call, and a REST request of at most 1 MB. The
builder fills a batch until the next item would break one of those limits,
then starts a new one. A record too large for one batch (``log_metrics`` with
5000 keys) is split; every batch carries the journal position of the last
record it completes, so a checkpoint always falls on a record boundary and
replaying a half-applied record is harmless (see :mod:`.sink`).

``artifact`` records become :class:`~.sink.Upload` values: at most
:attr:`Limits.uploads` files and :attr:`Limits.upload_bytes` bytes per batch
(a larger file goes alone), so that a checkpoint follows every bounded chunk
of uploads and a crash repeats at most one such chunk.

``console`` records ride in whatever batch is open (their texts in
:attr:`~.sink.Batch.console`); a sink that commits such a batch rewrites the
artifact ``logs/console.txt`` with the journal's console text up to the
batch's end (:mod:`.console_text`).

``tag_delete`` records become :attr:`~.sink.Batch.deleted_tags` (within a batch
the later of a key's set and deletion wins, so a key is in ``tags`` or in
``deleted_tags``, never both); ``inputs`` records extend :attr:`~.sink.Batch.inputs`.

Metrics are de-duplicated inside a batch on MLflow's primary key (key,
timestamp, step, value, is_nan): MLflow's own recovery path for duplicate
keys re-inserts row by row, which is slow on large batches.

Every record is checked against the schema of its type
(:mod:`.schema`) before it becomes part of a batch: :meth:`BatchBuilder.add`
raises :class:`~.schema.RecordSchemaError`; :meth:`BatchBuilder.add_chunk`
stops at the bad record (or passes over it, given ``on_skip``) and keeps
the batches of every record before it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import compress
from operator import itemgetter

import orjson

from formula_foundry.errors import CorruptRecordError
from formula_foundry.tracking.events import decode_metric_value, iter_metrics, iter_pairs
from formula_foundry.tracking.ingest.schema import RecordChecker, RecordSchemaError
from formula_foundry.tracking.ingest.sink import Batch, Upload
from formula_foundry.tracking.journal import Chunk, ReadPosition

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
    uploads: int = 100  # artifact files per batch (ours: a checkpoint after each bounded chunk of uploads)
    upload_bytes: int = 256 << 20  # ... and their bytes (a larger file goes alone)


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


def _metric_key(point: tuple) -> tuple:
    key, value, timestamp, step = point
    nan = math.isnan(value)
    return (key, timestamp, step, 0.0 if nan else value, nan)


_POINT = itemgetter("key", "value", "ts", "step")  # a metric record without "mts" -> its point
_first = itemgetter(0)
_second = itemgetter(1)


def _points(records: list[dict], metric_timestamps: bool) -> list[tuple]:
    """The (key, value, timestamp, step) points of ``metric`` records, as :func:`iter_metrics` gives them."""
    points = None
    if not metric_timestamps:  # no record has "mts": one C-level pass, if every record has its "step"
        try:
            points = list(map(_POINT, records))
        except KeyError:
            pass
    if points is None:
        points = [(r["key"], r["value"], r.get("mts", r["ts"]), r.get("step", 0)) for r in records]
    if list(map(type, map(_second, points))).count(float) != len(points):  # "NaN", "Infinity", an int
        points = [p if type(p[1]) is float else (p[0], decode_metric_value(p[1]), p[2], p[3]) for p in points]
    return points


def _metric_run_end(kinds, first: int) -> int:
    """The index of the first record from ``first`` on that is not a ``metric`` (or the end)."""
    n = len(kinds)
    if first == 0 and kinds.count("metric") == n:  # the common case: a chunk of metrics only
        return n
    for i in range(first, n):
        if kinds[i] != "metric":
            return i
    return n


class BatchBuilder:
    """Accumulates one journal's records into batches. ``add`` returns the batches that filled up.

    ``dedupe=False`` keeps repeated metric points (for a sink whose insert absorbs
    them, such as the bulk sink's ``ON CONFLICT DO NOTHING``): the batches then
    differ only in those repeats.

    Records are checked by a :class:`~.schema.RecordChecker`: ``header`` (the type
    of the journal's first record) turns on its order rules, ``ended`` says the
    journal's end record was taken before. In :meth:`add_chunk`, a record that
    fails becomes a :class:`~formula_foundry.errors.CorruptRecordError` naming
    ``path``, its line and byte offset: passed to ``on_skip`` and passed over,
    or, without ``on_skip``, kept in :attr:`error` while the builder stops
    before it (it takes nothing more).
    """

    def __init__(self, limits: Limits = MLFLOW_LIMITS, *, start: ReadPosition | None = None,
                 dedupe: bool = True, header: str | None = None, ended: bool = False,
                 path: object = None, on_skip: Callable[[CorruptRecordError], None] | None = None) -> None:
        self.limits = limits
        self.dedupe = dedupe
        self.checker = RecordChecker(header=header, ended=ended)
        self.path = path
        self.on_skip = on_skip
        self.error: CorruptRecordError | None = None  # the bad record the builder stopped before
        self._batch = Batch()
        self._seen: set[tuple] = set()
        self._bytes = 0
        self._upload_bytes = 0
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
        self._upload_bytes = 0

    def add(self, record: dict, end: ReadPosition) -> list[Batch]:
        """Add one verified record that ends at ``end``; returns batches that are ready to commit.

        Raises :class:`~.schema.RecordSchemaError` (and changes nothing) if the record does not
        match the schema of its type.
        """
        self.checker.check(record)
        out: list[Batch] = []
        kind = record["type"]
        if kind in ("metric", "metrics"):
            for point in iter_metrics(record):
                key = _metric_key(point) if self.dedupe else None
                if key is not None and key in self._seen:
                    continue
                size = len(point.key) + 48
                if not self._room("metric", size):
                    self._cut(out)
                if key is not None:
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
                if target == "tag" and self._batch.deleted_tags and key in self._batch.deleted_tags:
                    self._batch.deleted_tags.remove(key)  # set after its deletion: the set wins
                store[key] = value
                self._bytes += size
        elif kind == "tag_delete":
            key = record["key"]
            if key not in self._batch.tags and len(self._batch.deleted_tags) >= self.limits.tags:
                self._cut(out)
            self._batch.tags.pop(key, None)  # deleted after being set: the deletion wins
            if key not in self._batch.deleted_tags:
                self._batch.deleted_tags.append(key)
        elif kind == "inputs":
            datasets = record["datasets"]
            if self._batch.inputs and len(self._batch.inputs) + len(datasets) > self.limits.entities:
                self._cut(out)
            self._batch.inputs.extend(datasets)
        elif kind == "manifest":
            self._batch.artifacts[MANIFEST_ARTIFACT] = orjson.dumps(
                record["manifest"], option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        elif kind == "artifact_ref":
            path, content = artifact_ref_document(record)
            self._batch.artifacts[path] = content
        elif kind == "artifact":
            size = record["size_bytes"]
            uploads = self._batch.uploads
            if uploads and (len(uploads) >= self.limits.uploads
                            or self._upload_bytes + size > self.limits.upload_bytes):
                self._cut(out)
            self._batch.uploads.append(Upload(record["path"], record["digest"], size, record.get("store_uri"),
                                              end.line - 1))
            self._upload_bytes += size
        elif kind == "console":
            self._batch.console.append(record["text"])  # the sink rewrites logs/console.txt (console_text.py)
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

    def add_chunk(self, chunk: Chunk) -> list[Batch]:
        """Add every record of ``chunk``: the same batches as :meth:`add` record by record, faster.

        Without dedupe (the bulk sink), runs of ``metric`` records, most of a
        backfill, are checked and become point tuples in a few list passes
        (:meth:`~.schema.RecordChecker.metric_points`; a doubtful run is checked
        record by record) and are cut into batches by slicing; a record's end
        position is computed only where a batch is cut. With dedupe (the API
        sink, where MLflow's ~100 µs per metric dwarfs this), records go through
        :meth:`add` one by one. A record that fails its schema check: see the class.
        """
        out: list[Batch] = []
        if self.error is not None:
            return out
        records = chunk.records
        i, n = 0, len(records)
        if self.dedupe:
            while i < n:
                try:
                    out += self.add(records[i], chunk.end(i))
                except RecordSchemaError as exc:
                    if not self._refuse(chunk, i, exc):
                        return out
                i += 1
            return out
        # Every metric record of the chunk checked (and made a point) at once; each run of them
        # then takes its slice. None: something is doubtful, each run is checked on its own.
        kinds = chunk.kinds
        metrics = kinds.count("metric")
        # Without on_skip the reader passes no line over: seq follows seq from the journal's header.
        contiguous = self.on_skip is None and self.checker.header is not None
        checked = None
        if metrics:
            checked = self.checker.metric_points(
                records if metrics == n else list(compress(records, [k == "metric" for k in kinds])),
                with_mts=chunk.metric_timestamps, contiguous=contiguous)
        taken = 0  # points of ``checked`` already added
        while i < n:
            if kinds[i] == "metric":
                end = _metric_run_end(kinds, i)
                bad = None
                if checked is not None:
                    points = checked[taken:taken + end - i] if metrics != n else checked
                    taken += end - i
                else:
                    part = records[i:end]
                    points = self.checker.metric_points(part, with_mts=chunk.metric_timestamps,
                                                        contiguous=contiguous)
                    if points is None:  # something in this run is doubtful: record by record
                        bad = self.checker.first_bad(part)
                        if bad is not None:
                            part = part[:bad[0]]
                            end = i + bad[0]
                        points = _points(part, True)
                self._add_points(points, chunk, i, out)
                i = end
                if bad is not None:
                    if not self._refuse(chunk, i, bad[1]):
                        return out
                    i += 1
            else:
                if i:
                    self.position = chunk.end(i - 1)  # where a cut before this record falls
                try:
                    out += self.add(records[i], chunk.end(i))
                except RecordSchemaError as exc:
                    if not self._refuse(chunk, i, exc):
                        return out
                if self.checker.ended:
                    checked = None  # nothing may follow an end record: the runs after it are checked alone
                i += 1
        self.position = chunk.end(-1)
        return out

    def _refuse(self, chunk: Chunk, i: int, exc: RecordSchemaError) -> bool:
        """Record ``i`` of ``chunk`` failed its check: pass over it (True) or stop before it (False)."""
        error = CorruptRecordError(f"record does not match its schema: {exc}", path=self.path,
                                   line=chunk.line(i), offset=chunk.offset(i))
        if self.on_skip is None:
            if i:
                self.position = chunk.end(i - 1)
            self.error = error
            return False
        self.on_skip(error)
        self.position = chunk.end(i)  # a cut from here on covers the record passed over
        return True

    def _add_points(self, points: list[tuple], chunk: Chunk, first: int, out: list[Batch]) -> None:
        """Add the points of the metric records ``chunk.records[first:first + len(points)]``, a slice at a time.

        The same batches as :meth:`add` without dedupe: a batch is cut just before
        the point that would break a limit, never after its last point.
        """
        payload = self.limits.payload_bytes
        done, n = 0, len(points)
        while done < n:
            room = self._metric_room()
            part = points[done:done + room] if room > 0 else []
            size = sum(map(len, map(_first, part))) + 48 * len(part)
            if self._bytes + size > payload:  # the payload limit falls inside the part: keep what fits
                size, fits = 0, 0
                for key, _value, _timestamp, _step in part:
                    if self._bytes + size and self._bytes + size + len(key) + 48 > payload:
                        break  # (an item alone in a batch goes even if it is too large)
                    size, fits = size + len(key) + 48, fits + 1
                part = part[:fits]
            if not part:
                if done:
                    self.position = chunk.end(first + done - 1)
                self._cut(out)
                continue
            self._batch.metrics += part
            self._batch.records += len(part)
            self._bytes += size
            done += len(part)

    def _metric_room(self) -> int:
        """How many more metric points the open batch takes before its count limits."""
        lim = self.limits
        return min(lim.metrics - len(self._batch.metrics), lim.entities - self._entities())

    def flush(self) -> Batch | None:
        """The partial batch, if it holds anything."""
        out: list[Batch] = []
        self._cut(out)
        return out[0] if out else None
