"""Console capture (issue 19): fds 1 and 2 teed to the terminal unchanged and into ``console`` records.

Each test runs a real child program and looks at two things: what its parent
(the "terminal") received, byte for byte, and the ``console`` records of the
run's journal. The batching rules are tested on :class:`ConsoleBuffer` alone.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from formula_foundry.errors import ConfigError
from formula_foundry.tracking import load_config
from formula_foundry.tracking.console import ConsoleBuffer, truncation_marker
from formula_foundry.tracking.ingest.schema import check_record
from formula_foundry.tracking.journal import JournalReader
from tests.conftest import REPO, subprocess_env
from tests.tracking import configure


def journals(project: Path) -> dict[str, Path]:
    """Run name -> journal."""
    return {next(JournalReader(j).records())["run_name"]: j
            for j in (project / "data" / "runs").glob("*/tracking/*.jsonl")}


def console(journal: Path, *, torn_ok: bool = False) -> list[dict]:
    """The journal's ``console`` records (every record read back and schema-checked)."""
    reader = JournalReader(journal)
    records = list(reader.records())
    for record in records:
        check_record(record)
    if not torn_ok:
        assert reader.pending_bytes == 0
    return [r for r in records if r["type"] == "console"]


def text(records: list[dict], stream: str | None = None) -> str:
    return "".join(r["text"] for r in records if stream is None or r["stream"] == stream)


def run_script(project: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    script = project / "child.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script), *args], cwd=project, env=subprocess_env(),
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done


PRINTS = r"""
import os, subprocess, sys
from formula_foundry.tracking import get_tracker

capture = sys.argv[1] == "on"
with get_tracker().start_run(run_name="printer", capture_console=capture):
    print("python print", flush=True)
    print("python stderr", file=sys.stderr, flush=True)
    os.write(1, b"os.write on fd 1\n")
    os.write(2, b"os.write on fd 2\n")
    subprocess.run(["sh", "-c", "echo from-child; echo err >&2"], check=True)
    os.write(1, "split: \u00e9\u20ac".encode()[:9])   # a character cut in two writes ...
    os.write(1, "split: \u00e9\u20ac".encode()[9:] + b"\n")  # ... is kept whole
    os.write(1, b"not utf-8: \xff\xfe and NUL: \x00 end\n")
    print("no newline at the end", end="", flush=True)
print("after the run", flush=True)
os.write(2, b"after the run, fd 2\n")
"""


def test_python_os_write_and_child_processes_captured_and_the_terminal_unchanged(project: Path):
    """print, os.write and a child process on both fds: the terminal gets the same bytes as without
    capture, and the journal gets them as text, nothing printed after the run's end."""
    plain = run_script(project, PRINTS, "off")
    assert journals(project)  # the run exists, without console records
    assert console(journals(project)["printer"]) == []
    for journal in journals(project).values():
        journal.unlink()
    captured = run_script(project, PRINTS, "on")
    assert captured.stdout == plain.stdout
    assert captured.stderr == plain.stderr
    records = console(journals(project)["printer"])
    out, err = text(records, "stdout"), text(records, "stderr")
    terminal_out = plain.stdout.decode("utf-8", errors="replace")
    terminal_err = plain.stderr.decode("utf-8", errors="replace")
    assert out == terminal_out[:terminal_out.index("after the run")]
    assert err == terminal_err[:terminal_err.index("after the run")]
    assert "from-child\n" in out and "err\n" in err
    assert "split: \u00e9\u20ac\n" in out
    assert "not utf-8: \ufffd\ufffd and NUL: \x00 end\n" in out
    assert out.endswith("no newline at the end")
    assert "after the run" not in text(records)


FD_CHECK = r"""
import fcntl, os, sys
from formula_foundry.tracking import get_tracker

def state():
    return [(os.fstat(fd).st_dev, os.fstat(fd).st_ino, fcntl.fcntl(fd, fcntl.F_GETFL),
             fcntl.fcntl(fd, fcntl.F_GETFD)) for fd in (1, 2)]

before = state()
tracker = get_tracker()
with tracker.start_run(run_name="a", capture_console=True):
    during = state()
    print("inside", flush=True)
after = state()
with tracker.start_run(run_name="b", capture_console=True):  # a second capture in the same process
    print("inside b", flush=True)
assert before == after, (before, after)
assert during != before
assert state() == before
print("ok", flush=True)
"""


def test_fds_restored_exactly_and_a_second_run_captures_again(project: Path):
    done = run_script(project, FD_CHECK)
    assert done.stdout == b"inside\ninside b\nok\n"
    found = journals(project)
    assert text(console(found["a"])) == "inside\n"
    assert text(console(found["b"])) == "inside b\n"


NESTED = r"""
from formula_foundry.tracking import get_tracker

tracker = get_tracker()
with tracker.start_run(run_name="outer", capture_console=True):
    print("outer 1", flush=True)
    with tracker.start_run(run_name="inner", nested=True, capture_console=True):
        print("inner", flush=True)
    print("outer 2", flush=True)
"""


def test_nested_runs_the_outermost_owns_the_capture(project: Path):
    run_script(project, NESTED)
    found = journals(project)
    assert text(console(found["outer"])) == "outer 1\ninner\nouter 2\n"
    assert console(found["inner"]) == []


def test_config_turns_it_on_and_the_argument_off(project: Path):
    configure(project, capture_console=True)
    run_script(project, "from formula_foundry.tracking import get_tracker\nt = get_tracker()\n"
                        "with t.start_run(run_name='on'):\n    print('x', flush=True)\n"
                        "with t.start_run(run_name='off', capture_console=False):\n    print('y', flush=True)\n")
    found = journals(project)
    assert text(console(found["on"])) == "x\n"
    assert console(found["off"]) == []


TRUNCATE = r"""
import os
from formula_foundry.tracking import get_tracker

with get_tracker().start_run(run_name="long", capture_console=True):
    for i in range(100):
        os.write(1, b"%04d" % i + b"." * 45 + b"\n")  # 50 bytes a line, 5000 in all
"""


def test_size_cap_ends_with_a_marker_and_nothing_after(project: Path):
    configure(project, console_max_bytes=1024)
    done = run_script(project, TRUNCATE)
    assert len(done.stdout) == 5000  # the terminal gets everything
    records = console(journals(project)["long"])
    assert records[-1]["text"] == truncation_marker(1024)
    assert text(records[:-1]) == done.stdout[:1024].decode()


SIGKILL_TARGET = r"""
import os, sys, time
from formula_foundry.tracking import get_tracker

with get_tracker().start_run(run_name="victim", capture_console=True):
    i = 0
    while True:
        print(f"line {i}", flush=True)
        i += 1
        time.sleep(0.005)
"""


def test_sigkill_keeps_what_was_printed_up_to_200_ms_before(project: Path):
    """Records are flushed at most 200 ms after their first byte: a SIGKILLed program keeps the rest."""
    script = project / "victim.py"
    script.write_text(SIGKILL_TARGET)
    proc = subprocess.Popen([sys.executable, str(script)], cwd=project, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: list[tuple[float, str]] = []
    try:
        while len(seen) < 150:
            line = proc.stdout.readline()
            assert line, proc.stderr.read().decode()
            seen.append((time.monotonic(), line.decode()))
    finally:
        killed_at = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
    records = console(journals(project)["victim"], torn_ok=True)
    journal_text = text(records)
    # Lines the terminal had 200 ms (+ scheduling slack on a shared machine) before the kill are in.
    old = [line for t, line in seen if t < killed_at - 0.2 - 0.3]
    assert old, "the test printed for too short a time"
    assert journal_text.startswith("".join(old)), (len(journal_text), len(old))
    assert journal_text == "".join(line for _, line in seen)[:len(journal_text)]  # in order, unchanged


def test_config_errors_name_the_key(project: Path):
    for value, key, words in ((100, "tracking.console_max_bytes", "(bytes)"),
                              (1.5e6, "tracking.console_max_bytes", "expected int"),
                              ("yes", "tracking.capture_console", "expected bool")):
        name = key.rsplit(".", 1)[1]
        path = configure(project, **{name: value})
        with pytest.raises(ConfigError) as err:
            load_config(path, env={})
        assert f"'{key}'" in str(err.value) and words in str(err.value), str(err.value)
        configure(project, **{name: {"capture_console": False, "console_max_bytes": 10 << 20}[name]})


def test_docs_list_the_keys():
    import re

    doc = (REPO / "docs" / "configuration.md").read_text()
    for key, default in (("capture_console", False), ("console_max_bytes", 10 << 20)):
        row = re.search(rf"^\| `{re.escape(key)}` \| `([^`]*)` \|", doc, re.M)
        assert row and yaml.safe_load(row.group(1)) == default, key


def test_a_bad_argument_is_refused(in_project: Path):
    from formula_foundry.errors import ValidationError
    from tests.ingest import tracker

    with pytest.raises(ValidationError, match="capture_console"):
        tracker(in_project).start_run(capture_console="yes")


# --------------------------------------------------------------------------- the batching rules

def test_buffer_flushes_at_8_kib_and_after_200_ms():
    buf = ConsoleBuffer(max_bytes=1 << 20)
    assert buf.add("stdout", b"a" * 100, now=0.0) == []
    assert buf.deadline == pytest.approx(0.2)
    assert buf.due(0.19) == []
    assert buf.due(0.2) == [("stdout", "a" * 100)]
    assert buf.deadline is None
    assert buf.add("stdout", b"b" * 5000, now=1.0) == []
    assert buf.add("stdout", b"c" * 4000, now=1.1) == [("stdout", "b" * 5000 + "c" * 4000)]


def test_buffer_keeps_the_order_of_the_two_streams():
    buf = ConsoleBuffer(max_bytes=1 << 20)
    out = buf.add("stdout", b"1", 0.0) + buf.add("stderr", b"2", 0.01) + buf.add("stdout", b"3", 0.02)
    out += buf.close()
    assert out == [("stdout", "1"), ("stderr", "2"), ("stdout", "3")]


def test_buffer_decodes_a_character_split_across_records():
    buf = ConsoleBuffer(max_bytes=1 << 20)
    euro = "\u20ac".encode()
    out = buf.add("stdout", b"x" + euro[:1], 0.0) + buf.due(1.0) + buf.add("stdout", euro[1:], 2.0) + buf.close()
    assert "".join(t for _, t in out) == "x\u20ac"
    half = ConsoleBuffer(max_bytes=1 << 20)
    assert "".join(t for _, t in half.add("stderr", euro[:2], 0.0) + half.close()) == "\ufffd"


def test_buffer_cap_marker_then_nothing():
    buf = ConsoleBuffer(max_bytes=10)
    out = buf.add("stdout", b"12345", 0.0) + buf.add("stdout", b"67890ABC", 0.0)
    assert out == [("stdout", "1234567890"), ("stdout", truncation_marker(10))]
    assert buf.add("stderr", b"more", 0.0) == [] and buf.close() == []
    exact = ConsoleBuffer(max_bytes=4)
    assert exact.add("stdout", b"1234", 0.0) + exact.close() == [("stdout", "1234")]  # exactly full: no cut
