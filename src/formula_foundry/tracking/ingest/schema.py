"""The schema of every journal record type, checked before anything reaches a store. Pure: no I/O, no MLflow.

A line that passes its checksum is a well-framed JSON object, nothing more: a
hand-made (or buggy) producer can still write a metric without ``key``, a list
where a number belongs, ``"nan"`` as a string, an integer too large for the
store's BIGINT. :class:`RecordChecker` refuses every such record with a
:class:`RecordSchemaError` that names the member (and the key) at fault; the
ingester reports it as the journal's error at that line, like a corrupt line.

Rules (format version 1; :mod:`formula_foundry.tracking.events` lists the members):

* Envelope: ``seq`` and ``ts`` are integers (``bool`` is not one), ``ts`` in
  ``[0, 2**63)``: MLflow stores times as BIGINT milliseconds.
* Keys of params, tags and metrics follow MLflow's key rule
  (:func:`formula_foundry.tracking.validation.check_key`: characters, no path
  tricks, at most 250 characters; so no NUL either).
* Strings that reach the store (param and tag values, run and experiment
  names, the run error, ids) hold no NUL (PostgreSQL text cannot); param
  values are at most 6000 characters, tag values 8000, run names 250,
  experiment names 500.
* Metric values are ``int`` or ``float`` (not ``bool``), or exactly one of the
  strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; ``step`` is an integer
  in int64 (absent: 0); ``mts`` an integer in ``[0, 2**63)`` (absent: ``ts``).
* ``params``/``tags``/``metrics`` ``values`` and ``run_start`` ``tags`` are
  objects; ``manifest`` is an object.
* ``run_id``/``parent_run_id`` are 32 lowercase hex digits; a run is not its
  own parent. ``journal_id`` is a non-empty string of at most 64 characters.
* ``artifact_ref``: ``logical_path`` a normalised relative ``/`` path (no
  ``..``, ``.``, empty or ``~`` segment, no backslash, ``#``, control
  character or drive letter), ``digest`` 64 lowercase hex digits,
  ``size_bytes`` an integer in ``[0, 2**63)``, ``store_uri``/``media_type``
  a string or null.
* ``artifact``: ``path`` by the rules of ``logical_path`` above, ``digest``,
  ``size_bytes``, ``store_uri`` and ``media_type`` as in ``artifact_ref``.
* ``console``: ``stream`` ``stdout`` or ``stderr``; ``text`` a string, which
  may hold NUL (it only ever lands in an artifact file, never in SQL).
* ``tag_delete``: ``key`` by MLflow's key rule. ``inputs``: ``datasets`` a list of
  objects with ``name``, ``digest``, ``source_type``, ``source`` (non-empty strings)
  and ``schema``, ``profile`` (string or null) within MLflow's dataset limits, and
  ``tags`` (string -> string, keys at most 255 characters, values 500).
* ``run_end``: ``status`` one of ``FINISHED``, ``FAILED``, ``KILLED``;
  ``error`` a string or null.
* Order (:class:`RecordChecker` with ``header=``): ``run_start``/``run_attach``
  only as the first record (``seq`` 0); ``run_end`` only in the journal that
  starts with ``run_start``, ``segment_end`` only in a segment; nothing after
  either.

Members a record does not need are optional, and unknown members are ignored
(forward compatibility); a member that is present must have its type.

:meth:`RecordChecker.metric_points` is the bulk path: a slice of ``metric``
records checked (and turned into MLflow points) in a few list passes, with the
keys already seen cached; a slice with anything doubtful in it returns None
and the caller checks it record by record (:meth:`RecordChecker.first_bad`),
which decides and words every refusal.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import compress
from operator import itemgetter

from formula_foundry.errors import ValidationError
from formula_foundry.tracking.events import RUN_STATUSES, decode_metric_value
from formula_foundry.tracking.validation import (
    MAX_PARAM_VALUE_LENGTH,
    MAX_TAG_VALUE_LENGTH,
    artifact_path_problem,
    check_key,
)

__all__ = ["HEADER_TYPES", "INT64_MAX", "INT64_MIN", "RecordChecker", "RecordSchemaError", "check_record"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
HEADER_TYPES = frozenset({"run_start", "run_attach"})
END_TYPES = frozenset({"run_end", "segment_end"})
_ORDERED_TYPES = HEADER_TYPES | END_TYPES  # the types with a place of their own in a journal
MAX_RUN_NAME_LENGTH = 250  # MLflow: runs.name is VARCHAR(250)
MAX_EXPERIMENT_NAME_LENGTH = 256  # MLflow checks 500, but its experiments.name column is VARCHAR(256)
MAX_JOURNAL_ID_LENGTH = 64

MLFLOW_RESERVED_PREFIX = ".artifact.uploading."  # MLflow's local repository: its files in flight

_RUN_ID = re.compile(r"[0-9a-f]{32}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_SPECIAL_VALUES = frozenset({"NaN", "Infinity", "-Infinity"})
_FLOAT_ONLY = {float}
_INT_ONLY = {int}
_MISSING = object()
_FLOAT_MAX_INT = int(1.7976931348623157e308)  # the largest int that float() takes


class RecordSchemaError(ValueError):
    """A record that does not match the schema of its type. ``field``: the member; ``key``: the
    param/tag/metric key concerned (when there is one)."""

    def __init__(self, reason: str, *, field: str | None = None, key: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.key = key


# --------------------------------------------------------------------------- member checks

def _fail(kind: str, field: str, problem: str, key: str | None = None) -> RecordSchemaError:
    where = f"{kind} record" if key is None or f"{key!r}" in field else f"{kind} record (key {key!r:.60})"
    return RecordSchemaError(f"{where}: {field} {problem}", field=field, key=key)


def _int(kind: str, record: dict, field: str, low: int, high: int, *, required: bool) -> None:
    value = record.get(field, _MISSING)
    if value is _MISSING:
        if required:
            raise _fail(kind, field, "is missing")
        return
    if type(value) is not int:
        raise _fail(kind, field, f"must be an integer, not {_shown(value)}")
    if not low <= value <= high:
        raise _fail(kind, field, f"{value} is out of range [{low}, {high}] (a 64-bit integer in the store)")


def _present(kind: str, record: dict, field: str, *, required: bool, nullable: bool) -> object:
    """The member's value, or _MISSING when it is absent (and may be) or null (and may be)."""
    value = record.get(field, _MISSING)
    if value is _MISSING:
        if required:
            raise _fail(kind, field, "is missing")
        return _MISSING
    return _MISSING if value is None and nullable else value


def _text(kind: str, record: dict, field: str, *, required: bool, nullable: bool = False,
          max_length: int | None = None, empty: bool = True) -> None:
    value = _present(kind, record, field, required=required, nullable=nullable)
    if value is _MISSING:
        return
    if type(value) is not str:
        raise _fail(kind, field, f"must be a string{' or null' if nullable else ''}, not {_shown(value)}")
    _string_value(kind, field, value, max_length, empty=empty)


def _string_value(kind: str, field: str, value: str, max_length: int | None, *, key: str | None = None,
                  empty: bool = True) -> None:
    if "\x00" in value:
        raise _fail(kind, field, "contains a NUL character, which SQL stores (PostgreSQL) cannot hold", key)
    if max_length is not None and len(value) > max_length:
        raise _fail(kind, field, f"is {len(value)} characters; the limit is {max_length}", key)
    if not empty and not value.strip():
        raise _fail(kind, field, "is empty", key)


def _key(kind: str, field: str, key: object, what: str, keys: set[str]) -> None:
    """MLflow's key rule; a key that passes joins ``keys`` (the cache of keys already checked)."""
    try:
        check_key(key, what)
    except ValidationError as exc:
        raise RecordSchemaError(f"{kind} record: {field}: {exc}", field=field,
                                key=key if type(key) is str else repr(key)) from None
    keys.add(key)


def _choice(kind: str, record: dict, field: str, choices) -> None:
    value = _present(kind, record, field, required=True, nullable=False)
    if type(value) is not str or value not in choices:
        raise _fail(kind, field, f"must be one of {', '.join(choices)}, not {_shown(value)}")


def _object(kind: str, record: dict, field: str, *, required: bool, nullable: bool = False) -> dict | None:
    value = _present(kind, record, field, required=required, nullable=nullable)
    if value is _MISSING:
        return None
    if type(value) is not dict:
        raise _fail(kind, field, f"must be an object, not {_shown(value)}")
    return value


def _run_id(kind: str, record: dict, field: str, *, required: bool, nullable: bool = False) -> None:
    value = _present(kind, record, field, required=required, nullable=nullable)
    if value is _MISSING:
        return
    if type(value) is not str or not _RUN_ID.fullmatch(value):
        raise _fail(kind, field, f"must be a run id (32 lowercase hex digits), not {_shown(value)}")


def _shown(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _pairs(kind: str, field: str, values: dict, what: str, max_length: int, keys: set[str]) -> None:
    """Keys and string values of a param/tag object."""
    for key, value in values.items():
        if key not in keys:
            _key(kind, field, key, what, keys)
        if type(value) is not str:
            raise _fail(kind, f"{field}[{key!r}]", f"must be a string, not {_shown(value)}", key)
        _string_value(kind, f"{field}[{key!r}]", value, max_length, key=key)


def _metric_value(kind: str, field: str, value: object, key: str | None) -> None:
    if type(value) is float:
        return
    if type(value) is int:
        if -_FLOAT_MAX_INT <= value <= _FLOAT_MAX_INT:
            return
        raise _fail(kind, field, f"integer of {len(str(abs(value)))} digits does not fit a 64-bit float", key)
    if type(value) is str and value in _SPECIAL_VALUES:
        return
    raise _fail(kind, field, f"must be a number or one of 'NaN', 'Infinity', '-Infinity', not {_shown(value)}",
                key)


def _metric_step_and_time(kind: str, record: dict) -> None:
    step = record.get("step", 0)
    mts = record.get("mts", 0)
    if type(step) is int and type(mts) is int and INT64_MIN <= step <= INT64_MAX and 0 <= mts <= INT64_MAX:
        return  # the common case in one line
    _int(kind, record, "step", INT64_MIN, INT64_MAX, required=False)
    _int(kind, record, "mts", 0, INT64_MAX, required=False)


def _logical_path(kind: str, record: dict, field: str = "logical_path") -> None:
    path = record.get(field, _MISSING)
    if path is _MISSING:
        raise _fail(kind, field, "is missing")
    if type(path) is not str:
        raise _fail(kind, field, f"must be a string, not {_shown(path)}")
    problem = artifact_path_problem(path)  # the producer's own rule: nothing it accepts is refused here
    if problem:
        raise _fail(kind, field, f"{path!r:.80} {problem}")


# --------------------------------------------------------------------------- one check per type

def _run_start(record: dict, keys: set[str]) -> None:
    kind = "run_start"
    _run_id(kind, record, "run_id", required=True)
    _text(kind, record, "journal_id", required=True, max_length=MAX_JOURNAL_ID_LENGTH, empty=False)
    _text(kind, record, "experiment", required=False, nullable=True, max_length=MAX_EXPERIMENT_NAME_LENGTH,
          empty=False)
    _text(kind, record, "run_name", required=False, nullable=True, max_length=MAX_RUN_NAME_LENGTH)
    _run_id(kind, record, "parent_run_id", required=False, nullable=True)
    if record.get("parent_run_id") == record["run_id"]:
        raise _fail(kind, "parent_run_id", f"{record['run_id']} is the run itself: a run cannot be its own parent")
    tags = _object(kind, record, "tags", required=False, nullable=True)
    if tags:
        _pairs(kind, "tags", tags, "tag", MAX_TAG_VALUE_LENGTH, keys)
    _text(kind, record, "host", required=False, nullable=True)
    _int(kind, record, "pid", INT64_MIN, INT64_MAX, required=False)


def _run_attach(record: dict, keys: set[str]) -> None:
    kind = "run_attach"
    _run_id(kind, record, "run_id", required=True)
    _text(kind, record, "journal_id", required=True, max_length=MAX_JOURNAL_ID_LENGTH, empty=False)
    _text(kind, record, "host", required=False, nullable=True)
    _int(kind, record, "pid", INT64_MIN, INT64_MAX, required=False)


def _one_pair(what: str, max_length: int) -> Callable[[dict, set[str]], None]:
    def check(record: dict, keys: set[str]) -> None:
        key = record.get("key", _MISSING)
        if key is _MISSING:
            raise _fail(what, "key", "is missing")
        if type(key) is not str or key not in keys:
            _key(what, "key", key, what, keys)
        value = record.get("value", _MISSING)
        if value is _MISSING:
            raise _fail(what, "value", "is missing", key)
        if type(value) is not str:
            raise _fail(what, "value", f"must be a string, not {_shown(value)}", key)
        _string_value(what, "value", value, max_length, key=key)

    return check


def _many_pairs(what: str, max_length: int) -> Callable[[dict, set[str]], None]:
    kind = what + "s"

    def check(record: dict, keys: set[str]) -> None:
        values = _object(kind, record, "values", required=True)
        _pairs(kind, "values", values, what, max_length, keys)

    return check


def _metric(record: dict, keys: set[str]) -> None:
    kind = "metric"
    key = record.get("key", _MISSING)
    if key is _MISSING:
        raise _fail(kind, "key", "is missing")
    if type(key) is not str or key not in keys:
        _key(kind, "key", key, "metric", keys)
    value = record.get("value", _MISSING)
    if type(value) is not float:
        if value is _MISSING:
            raise _fail(kind, "value", "is missing", key)
        _metric_value(kind, "value", value, key)
    _metric_step_and_time(kind, record)


def _metrics(record: dict, keys: set[str]) -> None:
    kind = "metrics"
    values = record.get("values")
    if type(values) is not dict:
        _object(kind, record, "values", required=True)
    if not (keys.issuperset(values) and _FLOAT_ONLY.issuperset(map(type, values.values()))):
        for key, value in values.items():
            if key not in keys:
                _key(kind, "values", key, "metric", keys)
            _metric_value(kind, f"values[{key!r}]", value, key)
    step = record.get("step", 0)
    mts = record.get("mts", 0)
    if not (type(step) is int and type(mts) is int and INT64_MIN <= step <= INT64_MAX and 0 <= mts <= INT64_MAX):
        _metric_step_and_time(kind, record)


def _manifest(record: dict, keys: set[str]) -> None:
    _object("manifest", record, "manifest", required=True)


def _artifact_ref(record: dict, keys: set[str]) -> None:
    _blob_reference("artifact_ref", record, "logical_path")


def _artifact(record: dict, keys: set[str]) -> None:
    _blob_reference("artifact", record, "path")
    if record["path"].rpartition("/")[2].startswith(MLFLOW_RESERVED_PREFIX):
        raise _fail("artifact", "path", f"{record['path']!r:.80}: file names starting with "
                    f"{MLFLOW_RESERVED_PREFIX!r} are reserved by MLflow (its files being uploaded)")


def _blob_reference(kind: str, record: dict, path_field: str) -> None:
    """The members ``artifact_ref`` and ``artifact`` share: a path, the blob's digest and size, where it is."""
    _logical_path(kind, record, path_field)
    digest = record.get("digest", _MISSING)
    if digest is _MISSING:
        raise _fail(kind, "digest", "is missing")
    if type(digest) is not str or not _DIGEST.fullmatch(digest):
        raise _fail(kind, "digest", f"must be a sha256 digest (64 lowercase hex digits), not {_shown(digest)}")
    _int(kind, record, "size_bytes", 0, INT64_MAX, required=True)
    _text(kind, record, "store_uri", required=False, nullable=True)
    _text(kind, record, "media_type", required=False, nullable=True)


CONSOLE_STREAMS = ("stdout", "stderr")


def _console(record: dict, keys: set[str]) -> None:
    _choice("console", record, "stream", CONSOLE_STREAMS)
    text = record.get("text", _MISSING)
    if text is _MISSING:
        raise _fail("console", "text", "is missing")
    if type(text) is not str:  # NUL is fine: the text only lands in logs/console.txt
        raise _fail("console", "text", f"must be a string, not {_shown(text)}")


def _tag_delete(record: dict, keys: set[str]) -> None:
    key = record.get("key", _MISSING)
    if key is _MISSING:
        raise _fail("tag_delete", "key", "is missing")
    if type(key) is not str or key not in keys:
        _key("tag_delete", "key", key, "tag", keys)


# MLflow 3.17's dataset limits (mlflow/utils/validation.py: MAX_DATASET_*, MAX_INPUT_TAG_*).
_DATASET_TEXT = (("name", 500, False), ("digest", 36, False), ("source_type", 36, False),
                 ("source", 65535, False), ("schema", 1048575, True), ("profile", 16777215, True))


def _inputs(record: dict, keys: set[str]) -> None:
    kind = "inputs"
    datasets = record.get("datasets", _MISSING)
    if datasets is _MISSING:
        raise _fail(kind, "datasets", "is missing")
    if type(datasets) is not list:
        raise _fail(kind, "datasets", f"must be a list, not {_shown(datasets)}")
    for i, dataset in enumerate(datasets):
        field = f"datasets[{i}]"
        if type(dataset) is not dict:
            raise _fail(kind, field, f"must be an object, not {_shown(dataset)}")
        for member, limit, nullable in _DATASET_TEXT:
            _text(kind, dataset, member, required=not nullable, nullable=nullable, max_length=limit,
                  empty=nullable)
        tags = _object(kind, dataset, "tags", required=False, nullable=True) or {}
        for key, value in tags.items():
            if type(key) is not str or not key or len(key) > 255 or "\x00" in key:
                raise _fail(kind, f"{field}.tags", f"key {key!r:.60} must be a string of 1 to 255 characters")
            if type(value) is not str:
                raise _fail(kind, f"{field}.tags[{key!r}]", f"must be a string, not {_shown(value)}", key)
            _string_value(kind, f"{field}.tags[{key!r}]", value, 500, key=key)


def _run_end(record: dict, keys: set[str]) -> None:
    _choice("run_end", record, "status", RUN_STATUSES)
    _text("run_end", record, "error", required=False, nullable=True)


def _segment_end(record: dict, keys: set[str]) -> None:
    return None


_CHECKS: dict[str, Callable[[dict, set[str]], None]] = {
    "run_start": _run_start,
    "run_attach": _run_attach,
    "param": _one_pair("param", MAX_PARAM_VALUE_LENGTH),
    "params": _many_pairs("param", MAX_PARAM_VALUE_LENGTH),
    "tag": _one_pair("tag", MAX_TAG_VALUE_LENGTH),
    "tags": _many_pairs("tag", MAX_TAG_VALUE_LENGTH),
    "metric": _metric,
    "metrics": _metrics,
    "manifest": _manifest,
    "artifact_ref": _artifact_ref,
    "artifact": _artifact,
    "console": _console,
    "run_end": _run_end,
    "segment_end": _segment_end,
    "tag_delete": _tag_delete,
    "inputs": _inputs,
}

# The members that ``metric_points`` reads from a record without ``mts`` (a KeyError: doubtful).
_POINT = itemgetter("key", "value", "ts", "step")
_SEQ = itemgetter("seq")


def _envelope(record: dict) -> str:
    """The record's type, once ``seq`` and ``ts`` are checked."""
    kind = record.get("type")
    if kind not in _CHECKS:
        raise RecordSchemaError(f"unknown record type {kind!r:.60}", field="type")
    seq = record.get("seq")
    ts = record.get("ts")
    if type(seq) is int and type(ts) is int and 0 <= seq <= INT64_MAX and 0 <= ts <= INT64_MAX:
        return kind
    if type(seq) is not int or not 0 <= seq <= INT64_MAX:
        raise _fail(kind, "seq", f"must be a non-negative integer, not {_shown(seq)}")
    _int(kind, record, "ts", 0, INT64_MAX, required=True)
    return kind


# --------------------------------------------------------------------------- the checker

class RecordChecker:
    """Checks records one journal's records against their types' schemas (and, given ``header``, the
    order rules). Remembers the keys it has already validated, so a backfill of a million points of
    ten metrics checks ten keys.

    ``header``: the type of the journal's first record (``run_start`` or ``run_attach``); None checks
    each record alone. ``ended``: the journal's end record was already taken (in an earlier pass).
    """

    def __init__(self, *, header: str | None = None, ended: bool = False) -> None:
        if header is not None and header not in HEADER_TYPES:
            raise ValueError(f"header must be run_start or run_attach, not {header!r}")
        self.header = header
        self.ended = ended
        self.keys: set[str] = set()  # keys that passed check_key (any kind: the rule is the same)

    def check(self, record: dict) -> None:
        """Raise :class:`RecordSchemaError` unless ``record`` matches its type (and comes in order).

        Raises nothing else, whatever ``record`` holds. Notes what a later record depends on (keys
        seen, an end record) only when the record passes.
        """
        if type(record) is not dict:
            raise RecordSchemaError(f"a record is a JSON object, not {_shown(record)}", field="type")
        kind = record.get("type")
        seq = record.get("seq")
        ts = record.get("ts")
        if not (type(seq) is int and type(ts) is int and 0 <= seq <= INT64_MAX and 0 <= ts <= INT64_MAX
                and kind in _CHECKS):
            kind = _envelope(record)
        if self.header is not None and (self.ended or record["seq"] == 0 or kind in _ORDERED_TYPES):
            self._order(kind, record)
        _CHECKS[kind](record, self.keys)
        if kind in END_TYPES:
            self.ended = True

    def _order(self, kind: str, record: dict) -> None:
        if self.ended:
            raise RecordSchemaError(f"{kind} record after the journal's end record: nothing may follow "
                                    "run_end/segment_end", field="type")
        if (kind in HEADER_TYPES) != (record["seq"] == 0):
            if kind in HEADER_TYPES:
                raise RecordSchemaError(f"a second header: {kind} at seq {record['seq']}; a journal has one "
                                        "run_start/run_attach, its first record", field="type")
            raise RecordSchemaError(f"{kind} record at seq 0: a journal starts with run_start/run_attach",
                                    field="type")
        if kind in HEADER_TYPES and kind != self.header:
            raise RecordSchemaError(f"{kind} record in a journal that starts with {self.header}", field="type")
        if kind == "run_end" and self.header != "run_start":
            raise RecordSchemaError("run_end record in a segment (run_attach): a segment ends with "
                                    "segment_end", field="type")
        if kind == "segment_end" and self.header != "run_attach":
            raise RecordSchemaError("segment_end record in a run's own journal (run_start): it ends with "
                                    "run_end", field="type")

    def first_bad(self, records: list[dict]) -> tuple[int, RecordSchemaError] | None:
        """The index of the first record of ``records`` that :meth:`check` refuses, with its error."""
        for i, record in enumerate(records):
            try:
                self.check(record)
            except RecordSchemaError as exc:
                return i, exc
        return None

    def metric_points(self, records: list[dict], *, with_mts: bool = True,
                      contiguous: bool = False) -> list[tuple] | None:
        """The MLflow points ``(key, value, timestamp, step)`` of a slice of ``metric`` records, every
        one of them checked, in a few list passes; None if any record might fail :meth:`check`.

        ``records`` are decoded by orjson (its integers lie in ``[-2**63, 2**64)``).
        ``with_mts=False`` promises that no record has an ``mts`` member; ``contiguous=True`` that
        the reader checked every ``seq`` to follow its predecessor's from the journal's header on
        (its guarantee without ``skip_corrupt``), so that ``seq`` needs no check here. None promises
        nothing about which record is wrong (:meth:`first_bad` finds it). Never accepts a record
        that :meth:`check` refuses.
        """
        if not records or self.ended:
            return None
        n = len(records)
        try:
            if with_mts:
                rows = [(r["key"], r["value"], r["ts"], r.get("step", 0), r.get("mts", _MISSING))
                        for r in records]
                keys, values, tss, steps, mtss = zip(*rows)
                if mtss.count(_MISSING) != n:
                    present = [m for m in mtss if m is not _MISSING]
                    if set(map(type, present)) != _INT_ONLY or min(present) < 0 or max(present) > INT64_MAX:
                        return None
                    points = [(k, v, t if m is _MISSING else m, s) for k, v, t, s, m in rows]
                else:
                    points = list(zip(keys, values, tss, steps))
            else:
                points = list(map(_POINT, records))
                keys, values, tss, steps = zip(*points)
            if not self.keys.issuperset(keys):
                # New keys (a few per journal): each one through MLflow's rule, and only then cached.
                for key in set(keys) - self.keys:
                    if type(key) is not str:
                        return None
                    check_key(key, "metric")
                    self.keys.add(key)
            # Integers that orjson decodes lie in [-2**63, 2**64): an int step is never below int64.
            if (set(map(type, tss)) != _INT_ONLY or set(map(type, steps)) != _INT_ONLY
                    or min(tss) < 0 or max(tss) > INT64_MAX or max(steps) > INT64_MAX):
                return None
            if not contiguous:
                seqs = list(map(_SEQ, records))
                if (set(map(type, seqs)) != _INT_ONLY or min(seqs) < (0 if self.header is None else 1)
                        or max(seqs) > INT64_MAX):
                    return None
            value_types = set(map(type, values))
            if value_types != _FLOAT_ONLY:
                if not value_types <= {float, int, str}:
                    return None
                if str in value_types and not _SPECIAL_VALUES.issuperset(
                        compress(values, [type(v) is str for v in values])):
                    return None
                points = [p if type(p[1]) is float else (p[0], decode_metric_value(p[1]), p[2], p[3])
                          for p in points]
        except (KeyError, TypeError, ValueError, OverflowError, ValidationError):  # a missing member, an unhashable key, ...
            return None
        return points


def check_record(record: dict) -> None:
    """Raise :class:`RecordSchemaError` unless ``record`` matches the schema of its type (no order rules)."""
    RecordChecker().check(record)
