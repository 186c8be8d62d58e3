"""Validation at the call: each rule raises ValidationError(key, rule) and writes nothing."""

from __future__ import annotations

import decimal
import fractions
import math
from pathlib import Path

import numpy as np
import pytest

from formula_foundry.errors import TrackingError, ValidationError
from formula_foundry.tracking import get_tracker
from formula_foundry.tracking import validation as v
from formula_foundry.tracking.journal import JournalReader


@pytest.fixture
def run(in_project: Path):
    with get_tracker().start_run(run_name="validation") as active:
        yield active


def _rejects(run, call, *, rule: str, key: str | None) -> ValidationError:
    """Call must raise ValidationError with this rule and key, and leave the journal byte-identical."""
    before = run.journal_path.read_bytes()
    with pytest.raises(ValidationError) as info:
        call()
    assert info.value.rule == rule
    if key is not None:
        assert info.value.key == key
        assert repr(key[:40])[:-1] in str(info.value)
    assert run.journal_path.read_bytes() == before, "a rejected call wrote to the journal"
    return info.value


def test_error_class():
    """ValidationError is a TrackingError and a ValueError (callers may catch either)."""
    assert issubclass(ValidationError, TrackingError) and issubclass(ValidationError, ValueError)


# --------------------------------------------------------------------------- keys

@pytest.mark.parametrize("key", ["a*b", "a\nb", "tab\there", "semi;colon", "a,b", "dollar$", "é!", ""])
def test_key_chars(run, key):
    """key-chars: only alphanumerics, _ - . : / and spaces (for metrics, params and tags alike)."""
    _rejects(run, lambda: run.log_metric(key, 1.0), rule="key-chars", key=key)
    _rejects(run, lambda: run.log_param(key, 1), rule="key-chars", key=key)
    _rejects(run, lambda: run.set_tag(key, "x"), rule="key-chars", key=key)


@pytest.mark.parametrize("key", [5, None, b"bytes", ("t",), ["unhashable"]])
def test_key_must_be_a_string(run, key):
    """key-chars: a key that is not a str (even an unhashable one) is a ValidationError, not a TypeError."""
    _rejects(run, lambda: run.log_metric(key, 1.0), rule="key-chars", key=None)
    _rejects(run, lambda: run.log_metrics({key: 1.0}) if not isinstance(key, list) else run.log_metric(key, 1),
             rule="key-chars", key=None)
    _rejects(run, lambda: run.set_tag(key, "x"), rule="key-chars", key=None)


@pytest.mark.parametrize("key", ["a//b", "./a", "../a", "/a", "a/", ".", "..", "a/./b", "a/../b", "..a"])
def test_key_path(run, key):
    """key-path: a key that would resolve to another name as a path."""
    _rejects(run, lambda: run.log_metric(key, 1.0), rule="key-path", key=key)
    _rejects(run, lambda: run.log_params({key: 1}), rule="key-path", key=key)


def test_key_length(run):
    """key-length: 250 characters pass, 251 fail."""
    run.log_metric("k" * 250, 1.0)
    _rejects(run, lambda: run.log_metric("k" * 251, 1.0), rule="key-length", key="k" * 251)
    _rejects(run, lambda: run.set_tags({"k" * 251: "x"}), rule="key-length", key="k" * 251)


def test_accepted_keys(run):
    """Unicode word characters, spaces, colons, dots, dashes and inner slashes are fine."""
    for key in ("loss", "train/loss", "a b", "a:b", "a-b_c.d", "ünïcödé", "日本", "x.y/z:w 1", ".a", "a.."):
        run.log_metric(key, 1.0)
    assert sum(1 for r in JournalReader(run.journal_path).records() if r["type"] == "metric") == 10


# --------------------------------------------------------------------------- values

def test_param_length(run):
    """param-length: 6000 characters pass, 6001 fail (MLflow would truncate silently)."""
    run.log_param("ok", "p" * 6000)
    _rejects(run, lambda: run.log_param("long", "p" * 6001), rule="param-length", key="long")


def test_tag_length(run):
    """tag-length: 8000 characters pass, 8001 fail (MLflow would truncate silently)."""
    run.set_tag("ok", "t" * 8000)
    _rejects(run, lambda: run.set_tag("long", "t" * 8001), rule="tag-length", key="long")


def test_param_conflict(run):
    """param-conflict: one value per param per run; the same value again is a silent no-op."""
    run.log_param("lr", 0.1)
    run.log_param("lr", "0.1")  # the same string form: no error, no second record
    _rejects(run, lambda: run.log_param("lr", 0.2), rule="param-conflict", key="lr")
    _rejects(run, lambda: run.log_params({"fresh": 1, "lr": 0.3}), rule="param-conflict", key="lr")
    run.log_param("fresh", 2)  # the refused batch did not record "fresh"
    params = [(r["key"], r["value"]) for r in JournalReader(run.journal_path).records() if r["type"] == "param"]
    assert params == [("lr", "0.1"), ("fresh", "2")]


@pytest.mark.parametrize("value", [True, False, None, "1.0", b"1", 1 + 2j, decimal.Decimal("1.5"), object(),
                                   np.bool_(True), 10**400])
def test_metric_value(run, value):
    """metric-value: bool, str, None, bytes, complex, Decimal, objects and ints too big for a float."""
    _rejects(run, lambda: run.log_metric("m", value), rule="metric-value", key="m")
    _rejects(run, lambda: run.log_metrics({"ok": 1.0, "m": value}), rule="metric-value", key="m")


def test_metric_value_accepts_real_numbers(run):
    """Ints, floats, Fractions and numpy scalars are real numbers and are logged as floats."""
    values = [3, -2.5, fractions.Fraction(1, 4), np.float32(0.5), np.int64(7), np.float64(math.inf)]
    for step, value in enumerate(values):
        run.log_metric("m", value, step=step)
    got = [r["value"] for r in JournalReader(run.journal_path).records() if r["type"] == "metric"]
    assert got == [3.0, -2.5, 0.25, 0.5, 7.0, "Infinity"]


@pytest.mark.parametrize("step", [1.5, "1", True, None.__class__, 2**63, -(2**63) - 1])
def test_metric_step(run, step):
    """metric-step: not an integer, or outside a signed 64-bit integer."""
    _rejects(run, lambda: run.log_metric("m", 1.0, step=step), rule="metric-step", key="m")
    _rejects(run, lambda: run.log_metrics({"m": 1.0}, step=step), rule="metric-step", key=None)


def test_metric_step_boundaries(run):
    """Steps -2**63 .. 2**63-1 (negative included, as in MLflow) and numpy integers are accepted."""
    for step in (-(2**63), -1, 0, 2**63 - 1, np.int64(5)):
        run.log_metric("m", 1.0, step=step)
    steps = [r["step"] for r in JournalReader(run.journal_path).records() if r["type"] == "metric"]
    assert steps == [-(2**63), -1, 0, 2**63 - 1, 5]


@pytest.mark.parametrize("timestamp", [-1, 1.5, "0", True, 2**63])
def test_metric_timestamp(run, timestamp):
    """metric-timestamp: not a non-negative integer of milliseconds."""
    _rejects(run, lambda: run.log_metric("m", 1.0, timestamp=timestamp), rule="metric-timestamp", key="m")
    _rejects(run, lambda: run.log_metrics({"m": 1.0}, timestamp=timestamp), rule="metric-timestamp", key=None)


def test_metric_timestamp_is_kept(run):
    """An explicit timestamp is recorded as ``mts``; without one the record's ``ts`` stands."""
    run.log_metric("m", 1.0, timestamp=0)
    run.log_metric("m", 2.0)
    first, second = [r for r in JournalReader(run.journal_path).records() if r["type"] == "metric"]
    assert first["mts"] == 0 and "mts" not in second


@pytest.mark.parametrize("value", [object(), {1, 2}, b"bytes", {"k": object()}, [1, object()], "lone \ud800"])
def test_value_type(run, value):
    """value-type: a param or tag value with no faithful (UTF-8, JSON) string form."""
    _rejects(run, lambda: run.log_param("p", value), rule="value-type", key="p")
    _rejects(run, lambda: run.set_tag("t", value), rule="value-type", key="t")
    _rejects(run, lambda: run.set_tags({"ok": "x", "t": value}), rule="value-type", key="t")


def test_value_type_accepts_plain_values(run):
    """str, numbers, bool, None and JSON-serialisable lists/dicts have a stable string form."""
    run.log_params({"s": "x", "i": 1, "f": 0.5, "b": True, "n": None, "l": [1, "a"], "d": {"b": 1, "a": 2}})
    (record,) = [r for r in JournalReader(run.journal_path).records() if r["type"] == "params"]
    assert record["values"] == {"s": "x", "i": "1", "f": "0.5", "b": "True", "n": "None", "l": '[1,"a"]',
                                "d": '{"a":2,"b":1}'}


# --------------------------------------------------------------------------- agreement with MLflow

KEYS = ["loss", "train/loss", "a b", "a:b", "a-b_c.d", "ünïcödé", "日本", ".a", "...a", "a..", "x" * 250, "x" * 251,
        "", " ", "a*b", "a\tb", "a#b", "a\\b", "a,b", "a//b", "./a", "../a", "/a", "a/", ".", "..", "a/./b",
        "a/../b", "..a", "a/..", " a", "a ", "a\nb"]
# MLflow's pattern ends in ``$``, which also matches before a final newline, so it lets
# "loss\n" through; we refuse it. The only key on which we are knowingly stricter.
STRICTER = ["loss\n"]


@pytest.mark.parametrize("kind", ["metric", "param", "tag"])
def test_key_rules_agree_with_mlflow(kind):
    """For every key: MLflow's validator raises <=> check_key raises (except STRICTER)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_metric, _validate_param, _validate_tag

    mlflow_check = {"metric": lambda k: _validate_metric(k, 0.0, 0, 0), "param": lambda k: _validate_param(k, "v"),
                    "tag": lambda k: _validate_tag(k, "v")}[kind]

    def raises(check, key) -> bool:
        try:
            check(key)
        except (MlflowException, ValidationError):
            return True
        return False

    for key in KEYS:
        assert raises(mlflow_check, key) == raises(lambda k: v.check_key(k, kind), key), key
    for key in STRICTER:
        assert not raises(mlflow_check, key) and raises(lambda k: v.check_key(k, kind), key)


def test_metric_values_agree_with_mlflow():
    """MLflow refuses a metric value <=> we do, except complex and Decimal, which we refuse up front."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_metric

    values = [0, 1.5, math.nan, math.inf, -math.inf, True, None, "1", b"1", fractions.Fraction(1, 3),
              np.float32(1), np.int64(2), np.bool_(False)]
    for value in values:
        try:
            _validate_metric("m", value, 0, 0)
            mlflow_refuses = False
        except (MlflowException, TypeError):  # bytes: MLflow fails while formatting its message
            mlflow_refuses = True
        try:
            v.metric_value("m", value)
            we_refuse = False
        except ValidationError:
            we_refuse = True
        assert mlflow_refuses == we_refuse, value


def test_limits_match_mlflow():
    """Our length and batch limits are MLflow's."""
    from mlflow.utils import validation as mv

    assert v.MAX_KEY_LENGTH == mv.MAX_ENTITY_KEY_LENGTH
    assert v.MAX_PARAM_VALUE_LENGTH == mv.MAX_PARAM_VAL_LENGTH
    assert v.MAX_TAG_VALUE_LENGTH == mv.MAX_TAG_VAL_LENGTH
    assert v.MAX_BATCH_PARAMS_TAGS == mv.MAX_PARAMS_TAGS_PER_BATCH


def test_nul_in_a_value_is_refused(in_project):
    """A NUL character in a param or tag value: PostgreSQL cannot store it, so the call fails."""
    from formula_foundry.errors import ValidationError
    from formula_foundry.tracking import get_tracker

    with get_tracker().start_run(run_name="nul") as run:
        with pytest.raises(ValidationError) as err:
            run.log_param("p", "a\x00b")
        assert err.value.rule == "value-type" and err.value.key == "p"
        with pytest.raises(ValidationError):
            run.set_tag("t", "\x00")
