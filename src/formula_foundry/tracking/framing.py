"""Line framing of journal records (format version 1). Pure: bytes in, bytes out.

A journal is a sequence of lines; each line is one UTF-8 JSON object ended by
``\\n``. The object's last member is a CRC-32 of everything before it::

    {"v":1,"seq":7,"ts":1763913600123,"type":"metric","key":"loss","value":0.25,"step":3,"crc":"5a6f1fc8"}

``crc`` is ``zlib.crc32`` (8 lowercase hex digits) of the line's bytes up to,
not including, ``,"crc":"`` — with the closing ``}`` appended, i.e. of the
object as it was serialised before the checksum was spliced in. A line is
accepted only if it is complete (ends with ``\\n``), carries the checksum
suffix, the checksum matches, and the JSON parses to an object. Anything else
is a torn or corrupted line and is never taken as data.

Writing costs one ``orjson.dumps`` and one ``crc32`` of a ~100-byte buffer.
"""

from __future__ import annotations

import zlib

import orjson

__all__ = ["FrameError", "frame", "unframe", "unframe_all"]

_SUFFIX_HEAD = b',"crc":"'
_SUFFIX_LEN = len(_SUFFIX_HEAD) + 8 + 2  # ,"crc":" + 8 hex + "}
_crc32 = zlib.crc32
_dumps = orjson.dumps
_loads = orjson.loads


class FrameError(ValueError):
    """A line that is not a valid frame; the message says why (no location: the reader adds it)."""


def frame(record: dict) -> bytes:
    """Serialise ``record`` into one checksummed line, ``\\n`` included."""
    body = _dumps(record)
    return b'%s,"crc":"%08x"}\n' % (body[:-1], _crc32(body))


def unframe(line: bytes) -> dict:
    """Verify and decode one line (without its ``\\n``); raises :class:`FrameError`."""
    if len(line) < _SUFFIX_LEN + 2 or line[-_SUFFIX_LEN:-10] != _SUFFIX_HEAD or line[-2:] != b'"}':
        raise FrameError("no checksum suffix (torn or foreign line)")
    body = line[:-_SUFFIX_LEN] + b"}"
    try:
        expected = int(line[-10:-2], 16)
    except ValueError:
        raise FrameError("checksum is not hexadecimal") from None
    if _crc32(body) != expected:
        raise FrameError("checksum mismatch (corrupted line)")
    try:
        record = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"invalid JSON despite a matching checksum: {exc}") from None
    if not isinstance(record, dict):
        raise FrameError("record is not a JSON object")
    return record


def unframe_all(lines: list[bytes]) -> list[dict] | None:
    """:func:`unframe` of every line at once, or None if any line might fail it.

    The fast path of a reader: the suffixes and checksums of all lines in a few
    list passes, then one ``orjson.loads`` per checked body, exactly the bytes
    :func:`unframe` would parse. The bodies are never joined into one JSON text:
    a join would let a line that opens an array, an object or a string be closed
    by the next line, and let one line carry two records; no count of the
    decoded elements can tell such a merge paired with such a split from honest
    lines. None promises nothing about which line is wrong: the caller unframes
    line by line to learn which and why.

    Exact: the records are those :func:`unframe` returns for every line, or None,
    which it is whenever :func:`unframe` refuses a line (and also when a record is
    the empty object, which no writer writes: the caller's slow path decides it).
    """
    n = len(lines)
    try:
        if ([line[-_SUFFIX_LEN:-10] for line in lines].count(_SUFFIX_HEAD) != n
                or [line[-2:] for line in lines].count(b'"}') != n):
            return None
        bodies = [line[:-_SUFFIX_LEN] + b"}" for line in lines]
        if list(map(_crc32, bodies)) != [int(line[-10:-2], 16) for line in lines]:
            return None
        records = list(map(_loads, bodies))
    except ValueError:  # a checksum that is not hexadecimal; a body that is not JSON
        return None
    # Each body ends with "}" and parsed whole, so each record is a JSON object: a dict. Refuse empty
    # ones: a 19-byte line gives one, and unframe() refuses that line as too short.
    if not all(records):
        return None
    return records
