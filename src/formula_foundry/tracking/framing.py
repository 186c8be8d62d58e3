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

__all__ = ["FrameError", "frame", "unframe"]

_SUFFIX_HEAD = b',"crc":"'
_SUFFIX_LEN = len(_SUFFIX_HEAD) + 8 + 2  # ,"crc":" + 8 hex + "}
_crc32 = zlib.crc32
_dumps = orjson.dumps


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
