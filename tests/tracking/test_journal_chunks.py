"""The reader's buffer-at-a-time path (``chunks``) against a plain line-by-line reference.

``JournalReader.entries`` and replay both read through ``chunks``: a read buffer
whose lines all verify is decoded in one go, any other buffer line by line. These
tests build journals with every kind of damage at random places and check that
what comes out (records, positions, errors, skipped lines) is exactly what a
naive reader that takes one line at a time would give.
"""

from __future__ import annotations

import json
import random
import zlib
from itertools import accumulate
from pathlib import Path

import pytest

import formula_foundry.tracking.journal as journal_module
from formula_foundry.errors import CorruptRecordError, UnsupportedVersionError
from formula_foundry.tracking.framing import FrameError, frame, unframe, unframe_all
from formula_foundry.tracking.journal import START, JournalReader, ReadPosition


def reference(data: bytes, start: ReadPosition = START, *, skip_corrupt: bool = False):
    """(entries as (record, offset, line, end), errors as (line, offset), pending bytes): one line at a time."""
    out, errors = [], []
    offset, line_no, seq = start.offset, start.line, start.seq
    body = data[offset:]
    *lines, tail = body.split(b"\n")
    for raw in lines:
        line_offset = offset
        offset += len(raw) + 1
        try:
            record = unframe(raw)
            version = record.get("v")
            if type(version) is not int:
                raise FrameError("no version")
            if version > 1:
                raise UnsupportedVersionError("newer")
            if record.get("type") not in journal_module.TYPES or type(record.get("seq")) is not int:
                raise FrameError("bad record")
            gap = seq is not None and record["seq"] != seq
        except FrameError:
            errors.append((line_no, line_offset))
            if not skip_corrupt:
                return out, errors, None
            line_no += 1
            seq = None
            continue
        if gap:
            errors.append((line_no, line_offset))
            if not skip_corrupt:
                return out, errors, None
        seq = record["seq"] + 1
        out.append((record, line_offset, line_no, ReadPosition(offset, line_no + 1, seq)))
        line_no += 1
    return out, errors, len(tail)


def read(path: Path, start: ReadPosition = START, *, skip_corrupt: bool = False):
    reader = JournalReader(path)
    errors: list[CorruptRecordError] = []
    out = []
    try:
        for entry in reader.entries(start, skip_corrupt=skip_corrupt, on_skip=errors.append):
            out.append(tuple(entry))
    except CorruptRecordError as exc:
        errors.append(exc)
        return out, [(e.line, e.offset) for e in errors], None
    return out, [(e.line, e.offset) for e in errors], reader.pending_bytes


def journal_bytes(rng: random.Random, n: int) -> bytes:
    lines = []
    for seq in range(n):
        kind = rng.choice(["metric"] * 8 + ["tag", "param", "metrics"])
        record = {"v": 1, "seq": seq, "ts": 1_763_913_600_000 + seq, "type": kind}
        if kind == "metric":
            record.update(key=f"m{seq % 7}", value=rng.choice([seq * 0.5, "NaN", "Infinity", 1.0]), step=seq)
            if rng.random() < 0.1:
                record["mts"] = 5
        elif kind == "metrics":
            record.update(values={"a": 1.0, "b": 2.0}, step=seq)
        else:
            record.update(key=f"k{seq % 5}", value="x" * rng.choice([1, 10, 5000]))
        lines.append(frame(record))
    return b"".join(lines)


def damage(rng: random.Random, data: bytes) -> bytes:
    """One of: a flipped byte (anywhere, or in the frame's last bytes), a cut line, a missing, repeated or
    swapped line, a foreign line, a newer version, a blank line, nothing."""
    lines = data.split(b"\n")[:-1]
    i = rng.randrange(len(lines) - 1)
    how = rng.choice(["flip", "flip-end", "cut", "gap", "repeat", "swap", "foreign", "version", "blank", "none"])
    if how in ("flip", "flip-end"):
        pos = rng.randrange(len(lines[i])) if how == "flip" else len(lines[i]) - rng.randrange(1, 19)
        lines[i] = lines[i][:pos] + bytes([lines[i][pos] ^ rng.choice([0x01, 0x20])]) + lines[i][pos + 1:]
    elif how == "cut":
        lines[i] = lines[i][: rng.randrange(len(lines[i]))]
    elif how == "gap":
        del lines[i]
    elif how == "repeat":
        lines.insert(i, lines[i])
    elif how == "swap":
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
    elif how == "foreign":
        lines[i] = b'{"hello": "world"}'
    elif how == "version":
        record = unframe(lines[i])
        record["v"] = 2
        lines[i] = frame(record)[:-1]
    elif how == "blank":
        lines[i] = b""
    return b"\n".join(lines) + b"\n"


@pytest.fixture(params=[64, 4096, 64 << 10], ids=["read-64B", "read-4KiB", "read-64KiB"])
def read_size(request, monkeypatch):
    """Small reads put lines across read boundaries and make some buffers clean, some not."""
    monkeypatch.setattr(journal_module, "_CHUNK", request.param)
    return request.param


@pytest.mark.parametrize("seed", range(24))
@pytest.mark.parametrize("skip_corrupt", [False, True])
def test_chunks_read_what_a_line_by_line_reader_reads(tmp_path: Path, read_size: int, seed: int,
                                                       skip_corrupt: bool):
    rng = random.Random(seed)
    data = journal_bytes(rng, 400)
    for _ in range(rng.randrange(4)):
        data = damage(rng, data)
    if rng.random() < 0.5:
        data += frame({"v": 1, "seq": 10**6, "ts": 0, "type": "tag", "key": "k", "value": "v"})[:-7]  # torn tail
    path = tmp_path / "j.jsonl"
    path.write_bytes(data)
    try:
        expected = reference(data, skip_corrupt=skip_corrupt)
    except UnsupportedVersionError:
        with pytest.raises(UnsupportedVersionError):
            read(path, skip_corrupt=skip_corrupt)
        return
    assert read(path, skip_corrupt=skip_corrupt) == expected


def test_reading_resumes_from_any_record_boundary(tmp_path: Path, read_size: int):
    data = journal_bytes(random.Random(7), 300)
    path = tmp_path / "j.jsonl"
    path.write_bytes(data)
    entries, _, _ = reference(data)
    for _record, _offset, _line, end in entries[::37]:
        assert read(path, end) == reference(data, end)


def test_chunk_positions_are_the_entries_positions(tmp_path: Path):
    """``Chunk.end(i)``, ``offset(i)`` and ``line(i)`` agree with the entries, on the fast and the slow path."""
    rng = random.Random(3)
    clean = journal_bytes(rng, 2000)
    lines = clean.split(b"\n")
    lines[1000] = lines[1000].replace(b'"seq"', b'"sEq"')  # one bad line in the middle: that buffer goes slowly
    for data in (clean, b"\n".join(lines)):
        path = tmp_path / "j.jsonl"
        path.write_bytes(data)
        entries = read(path, skip_corrupt=True)[0]
        flat = []
        for chunk in JournalReader(path).chunks(skip_corrupt=True):
            flat += [(chunk.records[i], chunk.offset(i), chunk.line(i), chunk.end(i)) for i in range(len(chunk))]
        assert flat == entries
        assert chunk.end(-1) == entries[-1][3]


def test_a_line_longer_than_many_reads(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(journal_module, "_CHUNK", 1024)
    big = {"v": 1, "seq": 1, "ts": 0, "type": "tag", "key": "k", "value": "y" * 300_000}
    data = (frame({"v": 1, "seq": 0, "ts": 0, "type": "tag", "key": "a", "value": "b"}) + frame(big)
            + frame({"v": 1, "seq": 2, "ts": 0, "type": "tag", "key": "c", "value": "d"}))
    path = tmp_path / "j.jsonl"
    path.write_bytes(data)
    assert read(path) == reference(data)
    assert [r[0]["value"] for r in read(path)[0]] == ["b", "y" * 300_000, "d"]


@pytest.mark.parametrize("pos", range(1, 21))
def test_every_byte_of_the_checksum_frame_is_checked(tmp_path: Path, pos: int):
    """A flipped byte among a line's last 20 (its checksum suffix) is caught, in a buffer that is otherwise clean."""
    data = journal_bytes(random.Random(5), 50)
    lines = data.split(b"\n")
    line = lines[25]
    lines[25] = line[:-pos] + bytes([line[-pos] ^ 0x01]) + line[len(line) - pos + 1:]
    damaged = b"\n".join(lines)
    path = tmp_path / "j.jsonl"
    path.write_bytes(damaged)
    expected = reference(damaged)
    assert expected[1] == [(26, sum(len(x) + 1 for x in lines[:25]))]  # the reference itself sees it
    assert read(path) == expected


# --------------------------------------------------------------------------- structural tricks (issue 14, item 3)
#
# Hand-made lines with valid checksums whose bodies are not JSON objects on their own, but whose
# concatenation is: a line that opens an array, an object or a string that the next line closes,
# and a line that carries two records. Joined into one array they would parse, with as many
# elements as lines when a merge and a split pair up; line by line each is refused.

def framed(body: bytes) -> bytes:
    """A line (without ``\\n``) of ``body``, the object's text without its closing ``}``, with a valid checksum."""
    return body + b',"crc":"%08x"}' % zlib.crc32(body + b"}")


TRICKY_VALUES = [
    "plain", "a},{b", "},", '"},{"', "x\\},", "}},{{", "[", "{",
    [{"x": 1}, {"y": [{"z": 2}, {}]}], {"o": {"p": 1}, "q": {"r": [{}, {"s": "},"}]}},
    [[{"a": {"b": [{}]}}], {"c": 1}], {"": {}}, [],
]


def tricky_lines(rng: random.Random, first_seq: int, k: int) -> list[bytes]:
    """``k`` records (seq from ``first_seq``) whose serialisation is cut into lines at ``},`` places chosen
    at random: mostly between records, sometimes inside a nested value or a string, and now and then
    one cut more or fewer than records."""
    texts = []
    for j in range(k):
        record = {"v": 1, "seq": first_seq + j, "ts": 5, "type": rng.choice(["tag", "manifest", "metric"]),
                  "key": f"k{j}", "value": rng.choice(TRICKY_VALUES)}
        if rng.random() < 0.3:
            record["nested"] = rng.choice(TRICKY_VALUES)
        spaced = rng.random() < 0.2  # whitespace between tokens is JSON too
        text = json.dumps(record, separators=(", ", ": ") if spaced else (",", ":")).encode()
        if spaced and rng.random() < 0.5:
            text = b" " + text[:-1] + b" }"
        texts.append(text)
    interior = b",".join(texts)  # == line bodies joined by "}," with a final "}"
    between = list(accumulate(len(t) + 1 for t in texts[:-1]))  # where a record's "}," ends
    between = [end - 2 for end in between]
    inside = [i for i in range(len(interior) - 1) if interior[i:i + 2] == b"}," and i not in between]
    cuts = set(between)
    for _ in range(rng.randrange(1, 4)):  # swap record boundaries for places inside values
        if inside and cuts and rng.random() < 0.85:
            cuts.discard(rng.choice(sorted(cuts)))
            cuts.add(rng.choice(inside))
    if rng.random() < 0.2 and inside:
        cuts.add(rng.choice(inside))  # one line more than records
    if rng.random() < 0.2 and cuts:
        cuts.discard(rng.choice(sorted(cuts)))  # one line fewer
    bodies, at = [], 0
    for cut in sorted(cuts):
        bodies.append(interior[at:cut])
        at = cut + 2
    bodies.append(interior[at:-1])
    return [framed(body) for body in bodies]


def tricky_journal(rng: random.Random) -> bytes:
    lines = journal_bytes(rng, rng.randrange(0, 30)).split(b"\n")[:-1]
    for _ in range(rng.randrange(1, 3)):
        k = rng.randrange(2, 6)
        lines += tricky_lines(rng, len(lines), k)
        # go on after the trick with the seq the records would have, and then with the seq of the lines
        follow = journal_bytes(rng, len(lines) + rng.randrange(0, 20)).split(b"\n")[len(lines):-1]
        lines += follow
    return b"".join(line + b"\n" for line in lines)


@pytest.mark.parametrize("seed", range(60))
@pytest.mark.parametrize("skip_corrupt", [False, True])
def test_chunks_refuse_lines_that_only_parse_when_joined(tmp_path: Path, read_size: int, seed: int,
                                                          skip_corrupt: bool):
    """The fast path against the line-by-line reference on journals with structural tricks."""
    data = tricky_journal(random.Random(seed))
    path = tmp_path / "j.jsonl"
    path.write_bytes(data)
    assert read(path, skip_corrupt=skip_corrupt) == reference(data, skip_corrupt=skip_corrupt)


def test_unframe_all_is_unframe_of_every_line():
    """``unframe_all`` gives the records exactly when ``unframe`` takes every line, and then the same records
    (or None for an empty record, ``{}``, which no writer writes: the line-by-line path decides those)."""
    rng = random.Random(11)
    tricked = 0
    for _ in range(1500):
        lines = tricky_lines(rng, rng.randrange(3), rng.randrange(1, 6))
        if rng.random() < 0.2:
            lines.insert(rng.randrange(len(lines) + 1), framed(rng.choice([b"", b"{", b" {", b'{"a":1}'])))
        try:
            expected = [unframe(line) for line in lines]
        except FrameError:
            expected = None
        tricked += expected is None
        got = unframe_all(lines)
        assert got == expected or (got is None and {} in expected), lines
    assert 300 < tricked < 1400  # both kinds were generated


def test_two_records_in_one_line_and_a_line_that_closes_it_are_refused(tmp_path: Path):
    """The case from the issue: a line holding one record and the start of another, closed by the next line."""
    head = b'{"v":1,"seq":0,"ts":0,"type":"tag","key":"a","value":"b"},{"v":1,"seq":1,"ts":0,"type":"tag",' \
           b'"key":"c","value":[{"x":1'
    data = framed(head) + b"\n" + framed(b'{"y":2}]') + b"\n"
    path = tmp_path / "j.jsonl"
    path.write_bytes(data)
    with pytest.raises(CorruptRecordError) as caught:
        list(JournalReader(path).entries())
    assert (caught.value.line, caught.value.offset) == (1, 0)
    assert "invalid JSON" in caught.value.reason
