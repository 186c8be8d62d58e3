"""The record types the MLflow drop-in added, ``tag_delete`` and ``inputs``: schema and batching. Pure."""

from __future__ import annotations

import pytest

from formula_foundry.tracking.events import TYPES
from formula_foundry.tracking.ingest.plan import BatchBuilder
from formula_foundry.tracking.ingest.schema import RecordSchemaError, check_record
from formula_foundry.tracking.journal import ReadPosition

TS = 1_763_913_600_000
DATASET = {"name": "grid", "digest": "3b257b23", "source_type": "code", "source": '{"tags": {}}',
           "schema": '{"mlflow_tensorspec": {}}', "profile": None, "tags": {"mlflow.data.context": "training"}}


def record(seq: int, type_: str, **fields) -> dict:
    return {"v": 1, "seq": seq, "ts": TS + seq, "type": type_, **fields}


def batches(*records: dict) -> list:
    builder = BatchBuilder()
    out = []
    for i, r in enumerate(records):
        out += builder.add(r, ReadPosition(offset=(i + 1) * 100, line=i + 2, seq=i + 1))
    tail = builder.flush()
    return out + ([tail] if tail is not None else [])


def test_new_types_are_journal_types():
    """A reader of format version 1 knows both types (an unknown type reads as a corrupt line)."""
    assert {"tag_delete", "inputs"} <= TYPES


def test_valid_records_pass():
    """A tag_delete with a key and an inputs record with a whole dataset pass their schema."""
    check_record(record(1, "tag_delete", key="tmp"))
    check_record(record(1, "inputs", datasets=[DATASET, {**DATASET, "schema": None, "tags": {}}]))


@pytest.mark.parametrize("fields, field", [
    ({}, "key"),
    ({"key": "../x"}, "key"),
    ({"key": 3}, "key"),
])
def test_bad_tag_delete_refused(fields, field):
    """A tag_delete without a key, or with one MLflow refuses, is refused naming the member."""
    with pytest.raises(RecordSchemaError) as info:
        check_record(record(1, "tag_delete", **fields))
    assert info.value.field == field


@pytest.mark.parametrize("datasets", [
    None,
    [1],
    [{**DATASET, "name": ""}],
    [{**DATASET, "digest": "x" * 37}],
    [{k: v for k, v in DATASET.items() if k != "source"}],
    [{**DATASET, "tags": {"k": 1}}],
    [{**DATASET, "tags": {"k": "v" * 501}}],
])
def test_bad_inputs_refused(datasets):
    """inputs: a list of objects within MLflow's dataset limits, or the record is refused."""
    with pytest.raises(RecordSchemaError):
        check_record(record(1, "inputs", datasets=datasets))


def test_delete_after_set_in_one_batch_wins():
    """set, then delete, in one batch: the key is only deleted (never both set and deleted)."""
    (batch,) = batches(record(1, "tag", key="a", value="1"), record(2, "tag", key="b", value="2"),
                       record(3, "tag_delete", key="a"))
    assert batch.tags == {"b": "2"}
    assert batch.deleted_tags == ["a"]
    assert batch.records == 3


def test_set_after_delete_in_one_batch_wins():
    """delete, then set again, in one batch: the key is only set."""
    (batch,) = batches(record(1, "tag_delete", key="a"), record(2, "tag", key="a", value="again"))
    assert batch.tags == {"a": "again"}
    assert batch.deleted_tags == []


def test_inputs_keep_journal_order():
    """Datasets of several inputs records reach the batch in journal order."""
    second = {**DATASET, "name": "second"}
    (batch,) = batches(record(1, "inputs", datasets=[DATASET]), record(2, "inputs", datasets=[second]))
    assert [d["name"] for d in batch.inputs] == ["grid", "second"]
    assert batch


def test_the_producer_never_imports_the_plugin():
    """Layering: formula_foundry.tracking (producer and ingester) never imports formula_foundry.mlflow_plugin."""
    import importlib
    from pathlib import Path

    from tests.conftest import imported_names

    root = Path(importlib.import_module("formula_foundry.tracking").__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        module = type("M", (), {"__file__": str(path)})
        if any(name.startswith("formula_foundry.mlflow_plugin") for name in imported_names(module)):
            offenders.append(str(path.relative_to(root)))
    assert offenders == []
