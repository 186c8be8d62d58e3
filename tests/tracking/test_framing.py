"""Line framing of journal records: frame() / unframe() (pure, bytes in, bytes out)."""

from __future__ import annotations

import re
import zlib

import orjson
import pytest

from formula_foundry.tracking import framing
from formula_foundry.tracking.framing import FrameError, frame, unframe, unframe_all

RECORD = {"v": 1, "seq": 7, "ts": 1763913600123, "type": "metric", "key": "loss", "value": 0.25, "step": 3}


def test_round_trip():
    """A framed record unframes to an equal dict; the line is one line ended by exactly one \\n."""
    line = frame(RECORD)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert unframe(line[:-1]) == RECORD


def test_round_trip_awkward_strings():
    """Newlines, quotes, NUL, non-ASCII and a fake checksum suffix inside values stay inside the value."""
    value = 'a\nb\r\n"q"\\\x00 é 日本 🚀 ,"crc":"00000000"}'
    record = {"v": 1, "seq": 0, "ts": 0, "type": "tag", "key": "k", "value": value}
    line = frame(record)
    assert line.count(b"\n") == 1
    assert unframe(line[:-1]) == record


def test_checksum_is_crc32_of_the_unsuffixed_object():
    """The documented algorithm: crc32 (8 lowercase hex) of the compact JSON object without ``crc``."""
    line = frame(RECORD)
    match = re.fullmatch(rb'(.*),"crc":"([0-9a-f]{8})"\}\n', line, re.DOTALL)
    assert match is not None
    body = match.group(1) + b"}"
    assert body == orjson.dumps(RECORD)
    assert int(match.group(2), 16) == zlib.crc32(body)


def test_docstring_example_verifies():
    """The example line in the module docstring is a valid frame (the docs do not lie)."""
    example = next(ln.strip() for ln in framing.__doc__.splitlines() if ln.strip().startswith('{"v":1'))
    assert unframe(example.encode()) == RECORD


def test_frame_is_deterministic():
    """The same record always frames to the same bytes (replays and tests can compare lines)."""
    assert frame(RECORD) == frame(dict(RECORD))
    assert frame(RECORD) == b'{"v":1,"seq":7,"ts":1763913600123,"type":"metric","key":"loss",' \
                           b'"value":0.25,"step":3,"crc":"5a6f1fc8"}\n'


def test_every_single_byte_change_is_detected():
    """Any one byte of a line changed never yields different data: refused, or (hex case only) the same record."""
    line = frame(RECORD)[:-1]
    accepted = []
    for i in range(len(line)):
        for flip in (0x01, 0x20, 0x80):
            tampered = line[:i] + bytes([line[i] ^ flip]) + line[i + 1:]
            try:
                record = unframe(tampered)
            except FrameError:
                continue
            assert record == RECORD
            accepted.append(tampered[i:i + 1])
    # Only the case of a hex letter in the checksum itself is tolerated.
    assert all(ch in b"ABCDEF" for ch in accepted)


def test_checksum_mismatch_names_the_reason():
    """A changed value with the old checksum is a checksum mismatch."""
    line = frame(RECORD)[:-1].replace(b"0.25", b"0.35")
    with pytest.raises(FrameError, match="checksum mismatch"):
        unframe(line)


def test_missing_suffix_is_refused():
    """A plain JSON line (no checksum) is not a frame, even though it parses."""
    with pytest.raises(FrameError, match="no checksum suffix"):
        unframe(orjson.dumps(RECORD))


def test_torn_line_is_refused():
    """Every strict prefix of a line (a torn append) is refused."""
    line = frame(RECORD)[:-1]
    for end in range(len(line)):
        with pytest.raises(FrameError):
            unframe(line[:end])


def test_non_hex_checksum_is_refused():
    """A suffix whose checksum is not hexadecimal is refused."""
    line = frame(RECORD)[:-1]
    with pytest.raises(FrameError, match="not hexadecimal"):
        unframe(line[:-10] + b'zzzzzzzz"}')


def test_matching_checksum_but_not_json_is_refused():
    """A line whose checksum matches but whose body is not JSON is refused, not half-parsed."""
    body = b"[1,2"  # the suffix turns it into "[1,2}", which is not JSON
    line = b'%s,"crc":"%08x"}' % (body, zlib.crc32(body + b"}"))
    with pytest.raises(FrameError, match="invalid JSON"):
        unframe(line)



def _with_crc(body: bytes) -> bytes:
    """A line whose checksum matches ``body + b"}"``, whatever the body is."""
    return b'%s,"crc":"%08x"}' % (body, zlib.crc32(body + b"}"))


def test_unframe_all_decodes_what_unframe_decodes():
    lines = [frame({"v": 1, "seq": i, "type": "metric", "key": "k", "value": i / 3, "s": "\u00e9\n\"}"})[:-1]
             for i in range(50)]
    assert unframe_all(lines) == [unframe(line) for line in lines]


@pytest.mark.parametrize("bad", [
    b"",  # blank
    b'{"v":1}',  # no suffix
    _with_crc(b'{"a":1,,'),  # checksum fine, JSON not
    _with_crc(b'{"a":1},{"b":2'),  # two objects in one line
    _with_crc(b'{"a":"x'),  # a string that would swallow the next line's start
    b'{"a":1,"crc":"zzzzzzzz"}',  # not hexadecimal
    b'{"a":1,"crc":"00000000"}',  # mismatch
    frame({"a": 1})[:-2] + b"]",  # the closing brace replaced
])
def test_unframe_all_refuses_a_batch_holding_any_line_unframe_refuses(bad: bytes):
    good = [frame({"v": 1, "seq": i})[:-1] for i in range(5)]
    with pytest.raises(FrameError):
        unframe(bad)
    assert unframe_all(good[:2] + [bad] + good[2:]) is None
    assert unframe_all(good) is not None
