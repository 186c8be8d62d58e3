"""One checkpoint table, one merge rule: the API sink's file, a file of the old format, the readers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from formula_foundry.tracking.ingest.sink import Checkpoint
from formula_foundry.tracking.ingest.stores.checkpoints import (
    CHECKPOINT_FILE,
    MemoryCheckpoints,
    further,
    open_checkpoint_file,
    read_checkpoint_file,
)
from formula_foundry.tracking.journal import ReadPosition

OLD_SCHEMA = """
CREATE TABLE journals (journal_id TEXT PRIMARY KEY, path TEXT NOT NULL, run_id TEXT NOT NULL,
    mlflow_run_id TEXT, offset INTEGER NOT NULL DEFAULT 0, line INTEGER NOT NULL DEFAULT 1,
    seq INTEGER NOT NULL DEFAULT 0, records INTEGER NOT NULL DEFAULT 0, ended INTEGER NOT NULL DEFAULT 0,
    last_error TEXT, updated_ms INTEGER NOT NULL DEFAULT 0)
"""


def cp(jid: str, offset: int, *, ended: bool = False, line: int = 2) -> Checkpoint:
    return Checkpoint(journal_id=jid, path=f"/runs/{jid}.jsonl", run_id="r" * 32, mlflow_run_id="m" * 32,
                      position=ReadPosition(offset, line, line - 1), records=line - 1, ended=ended,
                      updated_ms=1)


def test_the_merge_rule_keeps_the_checkpoint_that_got_further():
    a, b = cp("j", 100), cp("j", 200)
    assert further(a, b) is b and further(b, a) is b
    assert further(None, a) is a and further(a, None) is a
    ended = cp("j", 200, ended=True)
    assert further(b, ended) is ended  # same offset: the one that saw the end wins
    assert MemoryCheckpoints([a, b, cp("k", 5)]).get("j") == b


def test_the_api_sinks_file_round_trips_and_survives_reopening(tmp_path: Path):
    store = open_checkpoint_file(tmp_path)
    store.put(cp("a", 10))
    store.put(cp("a", 20, ended=True))
    store.record_error("b", "/runs/b.jsonl", "r" * 32, "boom")
    store.close()
    rows = {c.journal_id: c for c in read_checkpoint_file(tmp_path)}
    assert rows["a"].position.offset == 20 and rows["a"].ended
    assert rows["b"].last_error == "boom" and rows["b"].position.offset == 0
    reopened = open_checkpoint_file(tmp_path)
    assert reopened.get("a") == rows["a"]
    reopened.close()


def test_a_file_of_the_old_format_is_read_and_migrated(tmp_path: Path):
    """Files written before the one schema (table ``journals``, column ``offset``) lose nothing."""
    db = sqlite3.connect(tmp_path / CHECKPOINT_FILE)
    db.execute(OLD_SCHEMA)
    db.execute("INSERT INTO journals VALUES ('a', '/runs/a.jsonl', ?, ?, 777, 9, 8, 8, 1, NULL, 5)",
               ("r" * 32, "m" * 32))
    db.commit()
    db.close()
    (old,) = read_checkpoint_file(tmp_path)  # readers see it without changing the file
    assert (old.journal_id, old.position, old.records, old.ended) == ("a", ReadPosition(777, 9, 8), 8, True)
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    assert read_checkpoint_file(tmp_path) == [old] and (tmp_path / CHECKPOINT_FILE).read_bytes() == before
    store = open_checkpoint_file(tmp_path)  # a writer migrates it
    assert store.get("a") == old
    store.close()
    tables = {r[0] for r in sqlite3.connect(tmp_path / CHECKPOINT_FILE).execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"ff_ingest_checkpoints"}
    assert read_checkpoint_file(tmp_path) == [old]


def test_readers_create_nothing(tmp_path: Path):
    assert read_checkpoint_file(tmp_path / "never") == []
    assert not (tmp_path / "never").exists()
