"""Issue 19 at ingest: ``console`` records become ``logs/console.txt``; system metrics land under MLflow's names.

A real child program (console capture and system metrics on) is ingested with
the real ``ff-ingest`` into a SQLite store, through each sink.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from formula_foundry.tracking.framing import frame
from formula_foundry.tracking.ingest.console_text import CONSOLE_ARTIFACT, ConsoleText, console_text
from formula_foundry.tracking.ingest.plan import BatchBuilder
from formula_foundry.tracking.ingest.schema import RecordSchemaError, check_record
from formula_foundry.tracking.journal import START, JournalReader
from tests.conftest import run_ff_ingest, subprocess_env
from tests.ingest import dump_store

pytest.importorskip("mlflow")

CHILD = r"""
import os, subprocess, sys, time
from formula_foundry.tracking import get_tracker

with get_tracker().start_run(run_name="telemetry", log_system_metrics=True, capture_console=True) as run:
    print("solver: start", flush=True)
    for i in range(3):
        run.log_metric("loss", 1.0 / (i + 1), step=i)
        os.write(2, b"warning %d\n" % i)
        time.sleep(0.2)
    subprocess.run(["sh", "-c", "echo from-child; printf 'nul:\\000:end\\n'"], check=True)
    print("solver: done", flush=True)
print("after", flush=True)
"""


def _produce(project: Path) -> subprocess.CompletedProcess:
    path = project / "config" / "mlflow.yaml"
    data = yaml.safe_load(path.read_text())
    data["tracking"]["system_metrics"] = {"interval_seconds": 0.2}
    path.write_text(yaml.safe_dump(data))
    script = project / "child.py"
    script.write_text(CHILD)
    done = subprocess.run([sys.executable, str(script)], cwd=project, env=subprocess_env(), capture_output=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done


@pytest.mark.parametrize("sink", ["api", "bulk"])
def test_console_txt_and_system_metrics_in_the_store(store_project: Path, sink: str):
    done = _produce(store_project)
    assert run_ff_ingest(store_project, "--sink", sink, "-q") == 0
    (run,) = dump_store(store_project).values()
    console = run["artifacts"][CONSOLE_ARTIFACT].decode()
    assert "from-child\nnul:\x00:end\nsolver: done\n" in console
    assert "after" not in console
    # Each stream's text is exactly what the terminal got before the run's end; console.txt is the
    # records in journal order (across the two streams that order is the order their readers received
    # the bytes: close, not exact, and a line of one stream may be split by the other's).
    (journal,) = (store_project / "data" / "runs").rglob("*.jsonl")
    records = [r for r in JournalReader(journal).records() if r["type"] == "console"]
    by_stream = {name: "".join(r["text"] for r in records if r["stream"] == name) for name in ("stdout", "stderr")}
    assert by_stream["stdout"] == done.stdout.decode().removesuffix("after\n")
    assert by_stream["stderr"] == done.stderr.decode()
    assert console == "".join(r["text"] for r in records)
    keys = {key for key, _step, _ts, _value in run["history"]}
    for name in ("cpu_utilization_percentage", "system_memory_usage_megabytes", "system_memory_usage_percentage",
                 "disk_usage_megabytes", "disk_usage_percentage", "disk_available_megabytes",
                 "network_receive_megabytes", "network_transmit_megabytes"):
        assert f"system/{name}" in keys
    steps = sorted({step for key, step, _ts, _v in run["history"] if key == "system/cpu_utilization_percentage"})
    assert steps == list(range(len(steps))) and len(steps) >= 2
    # A second ingest changes nothing (the file is rewritten whole, with the same bytes).
    assert run_ff_ingest(store_project, "--sink", sink, "-q") == 0
    assert dump_store(store_project)[next(iter(dump_store(store_project)))]["artifacts"] == run["artifacts"]


def test_console_txt_grows_with_the_journal(store_project: Path, tmp_path: Path):
    """Ingesting a journal in two parts gives the same console.txt as ingesting it whole."""
    _produce(store_project)
    (journal,) = (store_project / "data" / "runs").glob("*/tracking/*.jsonl")
    data = journal.read_bytes()
    lines = data.splitlines(keepends=True)
    consoles = [i for i, line in enumerate(lines) if b'"type":"console"' in line]
    cut = sum(len(line) for line in lines[:consoles[1] + 1])  # after the second console record
    journal.write_bytes(data[:cut])
    assert run_ff_ingest(store_project, "--sink", "api", "-q") == 0
    (first,) = dump_store(store_project).values()
    assert first["artifacts"][CONSOLE_ARTIFACT].decode() == console_text(journal, cut)
    with journal.open("ab") as f:
        f.write(data[cut:])
    assert run_ff_ingest(store_project, "--sink", "api", "-q") == 0
    (whole,) = dump_store(store_project).values()
    assert whole["artifacts"][CONSOLE_ARTIFACT].decode() == console_text(journal, len(data))
    assert whole["artifacts"][CONSOLE_ARTIFACT].decode().endswith("solver: done\n")


# --------------------------------------------------------------------------- pure parts

def _line(seq: int, type_: str, **fields) -> bytes:
    return frame({"v": 1, "seq": seq, "ts": 1763913600000 + seq, "type": type_, **fields})


def test_console_text_reads_only_console_lines_up_to_the_end(tmp_path: Path):
    lines = [
        _line(0, "run_start", run_id="a" * 32, journal_id="j", experiment="e", run_name=None, parent_run_id=None,
              tags={}, host="h", pid=1),
        _line(1, "console", stream="stdout", text="one\n"),
        _line(2, "tag", key="note", value='looks like "type":"console" but is a tag'),
        _line(3, "console", stream="stderr", text='two "type":"console"\n'),
        _line(4, "console", stream="stdout", text="three\n"),
    ]
    path = tmp_path / "j.jsonl"
    path.write_bytes(b"".join(lines))
    ends = [sum(map(len, lines[:i + 1])) for i in range(len(lines))]
    assert console_text(path, ends[3]) == 'one\ntwo "type":"console"\n'
    assert console_text(path, ends[4]) == 'one\ntwo "type":"console"\nthree\n'
    cache = ConsoleText()
    assert cache.text("j", path, ends[1]) == b"one\n"
    assert cache.text("j", path, ends[4]) == 'one\ntwo "type":"console"\nthree\n'.encode()
    assert cache.text("j", path, ends[1]) == b"one\n"  # back to an earlier position (a replay)
    assert cache.text("j", path, ends[2]) == b"one\n"


def test_builder_puts_console_texts_in_the_open_batch(tmp_path: Path):
    lines = [
        _line(0, "run_start", run_id="a" * 32, journal_id="j", experiment="e", run_name=None, parent_run_id=None,
              tags={}, host="h", pid=1),
        _line(1, "console", stream="stdout", text="one\n"),
        _line(2, "metric", key="loss", value=0.5, step=0),
        _line(3, "console", stream="stderr", text="two\n"),
    ]
    path = tmp_path / "j.jsonl"
    path.write_bytes(b"".join(lines))
    builder = BatchBuilder(header="run_start", dedupe=False)
    batches = []
    for chunk in JournalReader(path).chunks(START):
        batches += builder.add_chunk(chunk)
    tail = builder.flush()
    assert tail is not None and not batches
    assert tail.console == ["one\n", "two\n"] and len(tail.metrics) == 1


@pytest.mark.parametrize(("record", "words"), [
    ({"stream": "stdin", "text": "x"}, "stream must be one of stdout, stderr"),
    ({"text": "x"}, "stream is missing"),
    ({"stream": "stdout"}, "text is missing"),
    ({"stream": "stdout", "text": 5}, "text must be a string"),
])
def test_console_schema(record: dict, words: str):
    with pytest.raises(RecordSchemaError, match=words):
        check_record({"v": 1, "seq": 3, "ts": 1, "type": "console", **record})
    check_record({"v": 1, "seq": 3, "ts": 1, "type": "console", "stream": "stderr", "text": "NUL \x00 is fine"})
