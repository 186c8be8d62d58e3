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
- ``run-name`` / ``experiment-name``: not a string, a NUL or lone surrogate in it, longer than
  the SQL column (``runs.name`` VARCHAR(250), ``experiments.name`` VARCHAR(256): MLflow's own
  check allows 500, but PostgreSQL refuses more than 256), or an empty experiment name. A
  ``mlflow.runName`` tag is the run's name, so its value follows the run name's limit.
- ``artifact-path``: a ``logical_path`` whose artifact path (``artifact_refs/<path>.json``)
  MLflow or the ingester's record check would refuse (:func:`artifact_logical_path`).
- ``artifact-digest`` / ``artifact-size``: not a sha256 digest / not an integer in ``[0, 2**63)``.
- ``artifact-text``: ``store_uri`` / ``media_type`` not a string (or None), empty, too long,
  or holding a control character or a lone surrogate.
"""

from __future__ import annotations

import math
import numbers
import posixpath
import re
import urllib.parse

from formula_foundry.errors import ValidationError

__all__ = [
    "MAX_BATCH_PARAMS_TAGS",
    "MAX_EXPERIMENT_NAME_LENGTH",
    "MAX_KEY_LENGTH",
    "MAX_LOGICAL_PATH_BYTES",
    "MAX_MEDIA_TYPE_LENGTH",
    "MAX_PARAM_VALUE_LENGTH",
    "MAX_PATH_SEGMENT_BYTES",
    "artifact_path_problem",
    "MAX_RUN_NAME_LENGTH",
    "MAX_STORE_URI_LENGTH",
    "MAX_TAG_VALUE_LENGTH",
    "artifact_digest",
    "artifact_logical_path",
    "artifact_size",
    "artifact_text",
    "check_key",
    "experiment_name",
    "encode_metric_value",
    "metric_value",
    "param_value",
    "run_name",
    "tag_value",
]

# MLflow 3.17: mlflow/utils/validation.py
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
# MLflow's log_batch limit for params + tags; the journal's line limit is reasoned from it
# (tracking/journal.py, docs/journal-format.md "Line limit").
MAX_BATCH_PARAMS_TAGS = 100
# The SQL columns (mlflow/store/tracking/dbmodels/models.py): runs.name VARCHAR(250),
# experiments.name VARCHAR(256). PostgreSQL and MySQL refuse longer text.
MAX_RUN_NAME_LENGTH = 250
MAX_EXPERIMENT_NAME_LENGTH = 256
RUN_NAME_TAG = "mlflow.runName"  # MLflow's set_tag of this key renames the run (runs.name)
# Artifact references (``artifact_refs/<logical_path>.json``): a segment of at most 240 bytes
# keeps the file name (with ".json") under 255 bytes; the whole path is bounded too, well below
# PATH_MAX with the artifact root in front of it.
MAX_PATH_SEGMENT_BYTES = 240
MAX_LOGICAL_PATH_BYTES = 1024
MAX_STORE_URI_LENGTH = MAX_TAG_VALUE_LENGTH
MAX_MEDIA_TYPE_LENGTH = 255  # RFC 6838: type and subtype names of at most 127 characters each
MAX_SIZE_BYTES = 2**63 - 1  # BIGINT, and what the journal's JSON integers carry

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
    if key == RUN_NAME_TAG and len(text) > MAX_RUN_NAME_LENGTH:
        raise ValidationError(f"tag {key!r} is the run's name: value is {len(text)} characters; the "
                              f"limit is {MAX_RUN_NAME_LENGTH} (runs.name)", key=key, rule="run-name")
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


# --------------------------------------------------------------------------- names

def _is_text(text: str) -> bool:
    """True if ``text`` encodes to UTF-8 (no lone surrogates), as the journal and MLflow need."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _name(value: object, arg: str, limit: int, *, empty: bool) -> str:
    rule = arg.replace("_", "-")
    if not isinstance(value, str):
        raise ValidationError(f"{arg} must be a string, got {type(value).__name__} {value!r:.80}",
                              key=arg, rule=rule)
    if len(value) > limit:
        raise ValidationError(f"{arg} {value[:40]!r}... is {len(value)} characters; the limit is {limit}",
                              key=arg, rule=rule)
    if "\x00" in value:
        raise ValidationError(f"{arg} {value!r:.80} contains a NUL character, which SQL stores (PostgreSQL) "
                              "cannot hold", key=arg, rule=rule)
    if not _is_text(value):
        raise ValidationError(f"{arg} {value!r:.80} is not valid Unicode text (lone surrogate)",
                              key=arg, rule=rule)
    if not empty and not value.strip():
        raise ValidationError(f"{arg} must not be empty, got {value!r}", key=arg, rule=rule)
    return value


def run_name(value: object) -> str:
    """A run name: free text, as in MLflow (``sweep 0..10`` is fine), but storable: at most 250
    characters, no NUL, valid Unicode."""
    return _name(value, "run_name", MAX_RUN_NAME_LENGTH, empty=True)


def experiment_name(value: object) -> str:
    """An experiment name: free text, not blank, at most 256 characters, no NUL, valid Unicode."""
    return _name(value, "experiment_name", MAX_EXPERIMENT_NAME_LENGTH, empty=False)


# --------------------------------------------------------------------------- artifact references

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"[A-Za-z]:")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_UPLOADING_PREFIX = ".artifact.uploading."  # MLflow's local repository: its files in flight


def _mlflow_decode(path: str) -> str:
    """``mlflow.utils.uri._decode``: percent-decode until stable (ValueError after 10 rounds)."""
    for _ in range(10):
        decoded = urllib.parse.unquote(path)
        parsed = urllib.parse.urlunparse(urllib.parse.urlparse(decoded))
        if parsed == path:
            return path
        path = parsed
    raise ValueError("the path does not decode to a fixed point in 10 rounds")


def artifact_path_problem(path: str, *, normalised: bool = True) -> str | None:
    """Why ``path`` cannot be an artifact path in a run, or None: the ONE rule for every artifact path.

    What MLflow 3.17 checks on every artifact repository (``validate_path_is_safe`` on the
    percent-decoded path: no ``#``, no ``..``, not absolute, no ``file:`` URI, no other separator;
    the local repository's reserved ``.artifact.uploading.`` names) and what the ingester needs
    (no control character, valid Unicode). With ``normalised`` (the path as it will be stored):
    also no empty or ``.`` segment, no ``~`` first segment, segments of at most
    :data:`MAX_PATH_SEGMENT_BYTES`. Checked on the path as given, once percent-decoded and decoded
    as MLflow does. Used by the producer (references and real artifacts) and the ingester's record
    check alike, so nothing accepted at the call is refused later.
    """
    if not _is_text(path):
        return "is not valid Unicode text (lone surrogate)"
    if _CONTROL.search(path):
        return "contains a control character (NUL, newline, tab, ...)"
    try:
        decoded = _mlflow_decode(path)
    except ValueError:
        return "does not percent-decode to a stable path (MLflow refuses it)"
    for candidate in dict.fromkeys((path, urllib.parse.unquote(path), decoded)):
        if "#" in candidate:
            return "contains '#', which MLflow refuses in artifact paths"
        if "\\" in candidate:
            return "contains a backslash (once percent-decoded); artifact paths use '/'"
        if candidate.lower().startswith("file:"):
            return "is a file: URI, not a path relative to the run's artifact root"
        parts = candidate.split("/")
        if ".." in parts:
            return "contains '..'; nothing may be written outside the run's artifact root"
        if candidate.startswith("/") or _DRIVE.match(candidate):
            return "is absolute (or starts with a drive letter); it must be relative"
        if parts[-1].startswith(_UPLOADING_PREFIX):
            return f"names a file starting with {_UPLOADING_PREFIX!r}, reserved by MLflow"
        if not normalised:
            continue
        if any(part in ("", ".") for part in parts):
            return (f"is not a normalised path (it would resolve to {posixpath.normpath(candidate)!r}): "
                    "no empty or '.' segment")
        if parts[0].startswith("~"):
            return "starts with '~' (a home folder to some tools)"
        if any(len(part.encode("utf-8")) > MAX_PATH_SEGMENT_BYTES for part in parts):
            return f"has a segment longer than {MAX_PATH_SEGMENT_BYTES} bytes (UTF-8)"
    return None


def _path_error(path: object, why: str) -> ValidationError:
    return ValidationError(f"artifact reference: logical_path {path!r:.120} {why}",
                           key="logical_path", rule="artifact-path")


def artifact_logical_path(path: object) -> str:
    """Validate the ``logical_path`` of an artifact reference; returns it with ``\\`` as ``/``.

    The ingester writes the reference to ``artifact_refs/<path>.json`` in the run's artifacts:
    :func:`artifact_path_problem` decides, on the path with ``\\`` read as ``/``, plus a total
    length of at most :data:`MAX_LOGICAL_PATH_BYTES`.
    """
    if not isinstance(path, str):
        raise ValidationError(f"artifact reference: logical_path must be a string, got "
                              f"{type(path).__name__} {path!r:.80}", key="logical_path", rule="artifact-path")
    if not path.strip():
        raise _path_error(path, "must be a non-empty path")
    if not _is_text(path):
        raise _path_error(path, "is not valid Unicode text (lone surrogate)")
    norm = path.replace("\\", "/")  # a Windows-style path names the same folders
    if len(norm.encode("utf-8")) > MAX_LOGICAL_PATH_BYTES:
        raise _path_error(path, f"is longer than {MAX_LOGICAL_PATH_BYTES} bytes (UTF-8)")
    problem = artifact_path_problem(norm)
    if problem:
        raise _path_error(path, problem)
    return norm


def artifact_digest(digest: object) -> str:
    """A sha256 digest, bare (64 hex digits) or ``sha256:``-prefixed; returned as bare lowercase hex.

    Any other algorithm (``md5:...``) is refused: the store and the ingester only know sha256.
    """
    hex_digest = digest
    if isinstance(digest, str) and ":" in digest:
        algorithm, _, hex_digest = digest.partition(":")
        if algorithm.lower() != "sha256":
            raise ValidationError(f"artifact reference: digest {digest!r:.120} uses algorithm "
                                  f"{algorithm!r:.40}; only sha256 is supported ('sha256:<64 hex>' or 64 hex "
                                  "digits)",
                                  key="digest", rule="artifact-digest")
    if not isinstance(hex_digest, str) or not _SHA256.fullmatch(hex_digest):
        raise ValidationError(f"artifact reference: digest {digest!r:.120} is not a sha256 digest "
                              "('sha256:<64 hex>' or 64 hex digits)", key="digest", rule="artifact-digest")
    return hex_digest.lower()


def artifact_size(size: object) -> int:
    """``size_bytes``: an integer (not ``bool``) in ``[0, 2**63)``."""
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or not 0 <= size <= MAX_SIZE_BYTES:
        raise ValidationError(f"artifact reference: size_bytes {size!r:.80} must be an integer from 0 to "
                              f"2**63 - 1", key="size_bytes", rule="artifact-size")
    return int(size)


def artifact_text(arg: str, value: object, limit: int) -> str | None:
    """``store_uri`` / ``media_type``: None, or a non-empty string of at most ``limit`` characters
    with no control character and no lone surrogate."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"artifact reference: {arg} must be a string or None, got "
                              f"{type(value).__name__} {value!r:.80}", key=arg, rule="artifact-text")
    if len(value) > limit:
        raise ValidationError(f"artifact reference: {arg} {value[:40]!r}... is {len(value)} characters; "
                              f"the limit is {limit}", key=arg, rule="artifact-text")
    if not value.strip():
        raise ValidationError(f"artifact reference: {arg} must not be empty (pass None), got {value!r}",
                              key=arg, rule="artifact-text")
    if _CONTROL.search(value):
        raise ValidationError(f"artifact reference: {arg} {value!r:.120} contains a control character "
                              "(NUL, newline, ...)", key=arg, rule="artifact-text")
    if not _is_text(value):
        raise ValidationError(f"artifact reference: {arg} {value!r:.120} is not valid Unicode text "
                              "(lone surrogate)", key=arg, rule="artifact-text")
    return value
