"""Producer-side validation that mirrors MLflow 3.17's rules (``mlflow/utils/validation.py``).

A call that MLflow would reject, or silently truncate, fails here, at the call,
with a :class:`~formula_foundry.errors.ValidationError` that names the key and
the rule, so nothing the ingester would have to refuse ever reaches a journal.

Rules (each is a ``rule`` value on the error):

- ``key-chars``: keys may contain only alphanumerics, ``_ - . : /`` and spaces.
- ``key-path``: keys must not resolve to another name as a path
  (``a//b``, ``./a``, ``../a``, ``/a``, ``a/``, ``.``, empty).
- ``key-length``: keys are at most 250 characters.
- ``param-length`` / ``tag-length``: values at most 6000 / 8000 characters
  (MLflow would truncate them silently).
- ``param-conflict``: a param already logged with a different value in this run.
- ``metric-value``: not a real number (``bool`` is refused, as MLflow does).
- ``metric-step`` / ``metric-timestamp``: not an integer / a negative timestamp.
- ``value-type``: a param or tag value that has no faithful string form.
"""

from __future__ import annotations

import math
import numbers
import posixpath
import re

from formula_foundry.errors import ValidationError

__all__ = [
    "MAX_BATCH_METRICS",
    "MAX_BATCH_PARAMS_TAGS",
    "MAX_KEY_LENGTH",
    "MAX_PARAM_VALUE_LENGTH",
    "MAX_TAG_VALUE_LENGTH",
    "check_key",
    "encode_metric_value",
    "metric_value",
    "param_value",
    "tag_value",
]

# MLflow 3.17: mlflow/utils/validation.py
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_BATCH_METRICS = 1000
MAX_BATCH_PARAMS_TAGS = 100
MAX_BATCH_ENTITIES = 1000

_KEY_CHARS = re.compile(r"[/\w.\- :]+")


def check_key(key: object, kind: str) -> str:
    """Validate a metric, param or tag key; returns it unchanged."""
    if not isinstance(key, str):
        raise ValidationError(f"{kind} key must be a string, got {type(key).__name__} {key!r}",
                              key=repr(key), rule="key-chars")
    if not _KEY_CHARS.fullmatch(key):
        raise ValidationError(
            f"invalid {kind} key {key!r}: keys may contain only alphanumerics, underscores (_), "
            "dashes (-), periods (.), colons (:), spaces ( ) and slashes (/)",
            key=key, rule="key-chars")
    norm = posixpath.normpath(key)
    if norm != key or norm == "." or norm.startswith(("..", "/")):
        raise ValidationError(
            f"invalid {kind} key {key!r}: it would resolve to {norm!r} when treated as a path",
            key=key, rule="key-path")
    if len(key) > MAX_KEY_LENGTH:
        raise ValidationError(f"{kind} key {key[:40]!r}... is {len(key)} characters; the limit is "
                              f"{MAX_KEY_LENGTH}", key=key, rule="key-length")
    return key


def _stringify(key: str, value: object, kind: str) -> str:
    if isinstance(value, str):
        if "\x00" in value:  # PostgreSQL text columns refuse NUL: the store would reject it
            raise ValidationError(f"{kind} {key!r}: value contains a NUL character, which SQL stores "
                                  "(PostgreSQL) cannot hold", key=key, rule="value-type")
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: not representable in the journal or in MLflow
            raise ValidationError(f"{kind} {key!r}: value is not valid Unicode text (lone surrogate)",
                                  key=key, rule="value-type") from None
        return value
    if value is None or isinstance(value, (bool, numbers.Number)):
        return str(value)
    if isinstance(value, (list, tuple, dict)):
        try:
            import orjson

            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        except TypeError:
            pass
    raise ValidationError(
        f"{kind} {key!r}: value of type {type(value).__name__} has no faithful string form; "
        "pass a str, number, bool, None, or a JSON-serialisable list/dict",
        key=key, rule="value-type")


def param_value(key: str, value: object) -> str:
    """The string MLflow will store for a param; refuses what it would truncate."""
    text = _stringify(key, value, "param")
    if len(text) > MAX_PARAM_VALUE_LENGTH:
        raise ValidationError(f"param {key!r}: value is {len(text)} characters; the limit is "
                              f"{MAX_PARAM_VALUE_LENGTH}", key=key, rule="param-length")
    return text


def tag_value(key: str, value: object) -> str:
    """The string MLflow will store for a tag; refuses what it would truncate."""
    text = _stringify(key, value, "tag")
    if len(text) > MAX_TAG_VALUE_LENGTH:
        raise ValidationError(f"tag {key!r}: value is {len(text)} characters; the limit is "
                              f"{MAX_TAG_VALUE_LENGTH}", key=key, rule="tag-length")
    return text


def encode_metric_value(value: float) -> float | str:
    """JSON cannot carry NaN/inf: encode them as the strings ``NaN``, ``Infinity``, ``-Infinity``."""
    if value != value:  # noqa: PLR0124 - the NaN test without a function call
        return "NaN"
    if value == math.inf:
        return "Infinity"
    if value == -math.inf:
        return "-Infinity"
    return value


def metric_value(key: str, value: object) -> float | str:
    """Validate a metric value and return its journal encoding (a float, or a special string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValidationError(
            f"metric {key!r}: value {value!r} of type {type(value).__name__} is not a real number",
            key=key, rule="metric-value")
    try:
        number = float(value)
    except (OverflowError, ValueError):
        raise ValidationError(f"metric {key!r}: value {value!r} does not fit a 64-bit float",
                              key=key, rule="metric-value") from None
    return encode_metric_value(number)


def check_step(key: str, step: object) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise ValidationError(f"metric {key!r}: step {step!r} must be an integer",
                              key=key, rule="metric-step")
    step = int(step)
    if not -(2**63) <= step < 2**63:
        raise ValidationError(f"metric {key!r}: step {step} does not fit a 64-bit integer",
                              key=key, rule="metric-step")
    return step


def check_timestamp(key: str, timestamp: object) -> int:
    if isinstance(timestamp, bool) or not isinstance(timestamp, numbers.Integral) or timestamp < 0 \
            or timestamp >= 2**63:
        raise ValidationError(
            f"metric {key!r}: timestamp {timestamp!r} must be a non-negative integer of milliseconds",
            key=key, rule="metric-timestamp")
    return int(timestamp)
