"""Journal files: the writer (one process, OS-locked) and the streaming reader.

Record grammar: see :mod:`formula_foundry.tracking.events` (members) and
:mod:`formula_foundry.tracking.framing` (one checksummed JSON line each).

Writer guarantees
    * Every append is one ``os.write`` of a whole line on an ``O_APPEND`` file
      descriptor, made before the logging call returns: a process that dies
      right after a call has lost nothing of it (the OS holds the bytes).
    * ``fsync`` per policy: ``always`` (every append), ``interval`` (when at least
      ``fsync_interval`` seconds passed since the last one), ``never``; ``close``
      always fsyncs the file and its directory.
    * One writer per file: the file is created exclusively and held under a
      non-blocking ``flock``; a second opener gets :class:`JournalLockedError`.
    * No line longer than :data:`MAX_LINE_BYTES` is written: such a record is
      refused with :class:`ValidationError` before anything reaches the file.
    * A failed append (ENOSPC, EROFS, EIO, ...) truncates the file back to the
      last whole line, so the next append is never glued onto a fragment. If
      even that fails, the next append starts with ``\\n`` so the fragment
      reads as one corrupt line, never as part of a good one.
    * An asynchronous exception during an append (``KeyboardInterrupt`` from
      Ctrl-C) leaves the line either whole and counted, or removed: the next
      record still gets the next sequence number.
    * Thread-safe: a lock orders sequence numbers and writes.

Reader guarantees
    * Opens regular files only, without blocking: a FIFO, socket, device or
      folder named like a journal is refused with :class:`JournalError` naming it
      (opening a FIFO for reading would wait for a writer forever).
    * Reads an archived journal (``*.jsonl.gz``, one gzip stream of the same bytes)
      transparently; offsets and line numbers are those of the uncompressed content.
    * Streams in 64 KiB reads from any byte offset: memory stays flat. No line may
      be longer than :data:`MAX_LINE_BYTES`; a longer one (complete or not) is a
      :class:`CorruptRecordError`, found after reading at most that many bytes of it.
    * Stops before an incomplete last line (no ``\\n`` yet) and reports where it
      stopped, so the caller takes that line once it is complete.
    * A line that fails its checksum, or a sequence gap, raises
      :class:`CorruptRecordError` naming the journal, line number and byte offset,
      after every good record before it was yielded.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import os
import stat
import threading
import time
import warnings
from collections.abc import Iterator
from itertools import accumulate
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple

from formula_foundry.errors import (
    CorruptRecordError,
    JournalError,
    JournalLockedError,
    JournalWriteError,
    RunStateError,
    UnsupportedVersionError,
    ValidationError,
)
from formula_foundry.tracking.events import FORMAT_VERSION, TYPES
from formula_foundry.tracking.framing import FrameError, frame, unframe, unframe_all

__all__ = ["COMPRESSED_SUFFIX", "JOURNAL_SUFFIX", "MAX_LINE_BYTES", "Chunk", "Entry", "JournalReader",
           "JournalWriter", "ReadPosition", "open_journal", "open_journal_stream"]

JOURNAL_SUFFIX = ".jsonl"
COMPRESSED_SUFFIX = ".gz"  # an archived journal (``prune --archive``): ``<run_id>.<journal_id>.jsonl.gz``
_CHUNK = 64 << 10  # read size: chunks of a few hundred lines stay in the CPU's caches

# The longest line (without its "\n") a journal may hold. The largest record whose size the producer's
# validation bounds is a "tags" batch: 100 x (250-character key + 8000-character value), each character
# at most 6 bytes of JSON ("\u0000"): under 5 MB. run_start tags and manifests are not bounded by count;
# the writer refuses a line over this limit, so a reader can refuse one too without reading it whole.
MAX_LINE_BYTES = 16 << 20
_MAX_FRAMED = MAX_LINE_BYTES + 1  # with its "\n"

# Writers open in this process; a forked child must not write to its parent's journals.
_open_writers: set[JournalWriter] = set()


def _after_fork_in_child() -> None:
    for writer in list(_open_writers):
        writer._forked = True
    _open_writers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class JournalWriter:
    """Appends framed records to one journal file that this process owns."""

    def __init__(self, path: Path | str, *, fsync: str = "interval", fsync_interval: float = 1.0,
                 on_error: str = "raise") -> None:
        if fsync not in ("always", "interval", "never"):
            raise ValueError(f"fsync policy must be always, interval or never, not {fsync!r}")
        if on_error not in ("raise", "warn"):
            raise ValueError(f"on_error must be raise or warn, not {on_error!r}")
        self.path = Path(path)
        self._fsync_always = fsync == "always"
        self._fsync_interval = fsync_interval if fsync == "interval" else None
        self._warn = on_error == "warn"
        self._warned = False
        self._lock = threading.Lock()
        self._seq = 0
        self._size = 0
        self._needs_newline = False
        self._forked = False
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                               0o644)
        except FileExistsError:
            raise JournalLockedError(f"{self.path}: journal already exists; each process writes its own "
                                     "journal (attach to a run to add a segment)") from None
        except OSError as exc:
            raise JournalWriteError(exc.errno, f"{self.path}: cannot create journal: {exc.strerror}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise JournalLockedError(f"{self.path}: journal is locked by another process") from None
        self._last_fsync = time.monotonic()
        _fsync_dir(self.path.parent)
        _open_writers.add(self)

    @property
    def next_seq(self) -> int:
        return self._seq

    @property
    def closed(self) -> bool:
        return self._closed

    def append(self, type_: str, fields: dict) -> int:
        """Write one record; returns its sequence number (-1 if dropped under ``on_error="warn"``)."""
        return self.append_record({"v": FORMAT_VERSION, "seq": 0, "ts": 0, "type": type_, **fields})

    def append_record(self, record: dict) -> int:
        """:meth:`append` for a record built whole by the caller, its first members ``v``, ``seq``,
        ``ts``, ``type`` (the writer sets ``seq`` and ``ts``): the producer's hot path, one dict per call."""
        with self._lock:
            if self._closed or self._forked:
                raise RunStateError(
                    f"{self.path}: journal is closed" if self._closed else
                    f"{self.path}: this journal belongs to the parent process; a forked child must "
                    "attach to the run (Tracker.attach_run) to log into its own segment")
            seq = record["seq"] = self._seq
            record["ts"] = int(time.time() * 1000)
            line = frame(record)
            if len(line) > _MAX_FRAMED:
                raise ValidationError(
                    f"{self.path}: a {record['type']} record of {len(line) - 1} bytes is longer than the journal "
                    f"line limit of {MAX_LINE_BYTES} bytes", key=record["type"], rule="line-length")
            if self._needs_newline:
                line = b"\n" + line
            size = self._size + len(line)
            try:
                written = os.write(self._fd, line)  # the whole line in one call, nearly always
                if written != len(line):
                    self._write_rest(line, written)
            except OSError as exc:
                self._recover(exc)
                return -1
            except BaseException:
                # KeyboardInterrupt from a signal handler can be raised right after os.write
                # returned: settle from the file size so the next record gets the right seq.
                self._settle(seq, size)
                raise
            self._needs_newline = False
            self._size = size
            self._seq = seq + 1
            if self._fsync_always:
                os.fsync(self._fd)
            elif self._fsync_interval is not None:
                now = time.monotonic()
                if now - self._last_fsync >= self._fsync_interval:
                    os.fsync(self._fd)
                    self._last_fsync = now
            return seq

    def _write_rest(self, data: bytes, written: int) -> None:
        """Finish a short write: the kernel took only ``written`` bytes of ``data`` (0: it cannot go on)."""
        view = memoryview(data)[written:]
        while True:
            if written == 0:
                raise OSError(errno.EIO, "write returned 0 bytes")
            if not view:
                return
            written = os.write(self._fd, view)
            view = view[written:]

    def _settle(self, seq: int, size: int) -> None:
        """After an asynchronous exception during a write: keep a whole line, drop a fragment."""
        try:
            actual = os.fstat(self._fd).st_size
        except OSError:
            self._needs_newline = True
            return
        if actual == size:  # the whole line landed: it is record ``seq``
            self._needs_newline = False
            self._size = size
            self._seq = seq + 1
        elif actual != self._size:  # a fragment: cut it off, or fence it off with a newline
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                self._needs_newline = True

    def _recover(self, exc: OSError) -> None:
        """Put the file back at the last whole line, then raise or warn per policy."""
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            self._needs_newline = True
        message = f"{self.path}: append failed: {exc.strerror or exc}"
        if not self._warn:
            raise JournalWriteError(exc.errno, message) from None
        if not self._warned:
            self._warned = True
            warnings.warn(message + " (on_write_error=warn: later failures are not reported)",
                          RuntimeWarning, stacklevel=4)

    def sync(self) -> None:
        with self._lock:
            if not self._closed:
                os.fsync(self._fd)
                self._last_fsync = time.monotonic()

    def close(self) -> None:
        """Fsync and release the file; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            _open_writers.discard(self)
            if self._forked:
                return  # the fd is the parent's; leave it alone
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            finally:
                os.close(self._fd)
        _fsync_dir(self.path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- reading

# NamedTuples, not frozen dataclasses: the reader makes two per record, and on a backfill of
# millions of records a frozen dataclass's construction cost shows (about 1 µs each).
class ReadPosition(NamedTuple):
    """Where reading resumes: byte offset of the next line, its 1-based number, the next seq."""

    offset: int = 0
    line: int = 1
    seq: int = 0


START = ReadPosition()  # the beginning of a journal


class Entry(NamedTuple):
    """One verified record with its place in the journal."""

    record: dict
    offset: int  # byte offset where the line starts
    line: int  # 1-based line number
    end: ReadPosition  # the position just after this record


class Chunk:
    """Consecutive verified records read in one go (up to one read buffer of lines).

    ``records`` is a plain list; where each record's line starts and ends is
    computed only when asked for (:meth:`end`): a backfill needs one position
    every thousand records, not one per record.
    """

    __slots__ = ("_first_line", "_line_nos", "_lines", "_starts", "kinds", "metric_timestamps", "records")

    def __init__(self, records: list[dict], lines: list[bytes], *, start: int, first_line: int) -> None:
        """Records of consecutive ``lines`` (raw, without ``\\n``), the first at ``start`` on ``first_line``."""
        self.records = records
        self._lines = lines
        self._first_line = first_line
        self._starts: list[int] | int = start  # the first line's byte offset; then every line's
        self._line_nos: list[int] | None = None  # set when the lines are not consecutive
        self.kinds: tuple[str, ...] | list[str] = ()  # each record's "type" (set by the reader)
        self.metric_timestamps = True  # False: no record has an "mts" member (a metric's own timestamp)

    @classmethod
    def of_lines(cls, records: list[dict], lines: list[bytes], starts: list[int], line_nos: list[int]) -> Chunk:
        """Records of lines that need not be consecutive (corrupt lines skipped between them)."""
        chunk = cls(records, lines, start=0, first_line=0)
        chunk._starts, chunk._line_nos = starts, line_nos
        chunk.kinds = [record["type"] for record in records]
        return chunk

    def __len__(self) -> int:
        return len(self.records)

    def offset(self, i: int) -> int:
        """The byte offset where record ``i``'s line starts."""
        starts = self._starts
        if type(starts) is int:
            starts = self._starts = list(accumulate([len(raw) + 1 for raw in self._lines], initial=starts))
        return starts[i]

    def line(self, i: int) -> int:
        """The 1-based line number of record ``i``."""
        return self._first_line + i if self._line_nos is None else self._line_nos[i]

    def end(self, i: int) -> ReadPosition:
        """The position just after record ``i`` (``-1``: the last one)."""
        i %= len(self.records)
        return ReadPosition(self.offset(i) + len(self._lines[i]) + 1, self.line(i) + 1, self.records[i]["seq"] + 1)

    def entries(self) -> Iterator[Entry]:
        for i, record in enumerate(self.records):
            yield Entry(record, self.offset(i), self.line(i), self.end(i))


class _SequenceGap(FrameError):
    """A verified record whose sequence number does not follow its predecessor's."""

    def __init__(self, message: str, record: dict) -> None:
        super().__init__(message)
        self.record = record


_HEAD_FIELDS = itemgetter("v", "seq", "type")


def _verified(lines: list[bytes], seq: int | None, start: int, first_line: int) -> Chunk | None:
    """All of ``lines`` (from byte ``start``, line ``first_line``) verified and decoded at once as
    one :class:`Chunk`, or None if any line needs a closer look.

    The common case of a backfill, in as few interpreter steps per line as
    possible: :func:`~.framing.unframe_all`, then version, type and sequence of
    every record in a few list passes. None sends the caller to the line-by-line
    path, which decides (and words) every refusal; this function refuses nothing.
    """
    records = unframe_all(lines)
    if records is None:
        return None
    n = len(records)
    try:
        versions, seqs, types = zip(*map(_HEAD_FIELDS, records))
        first = seqs[0] if seq is None else seq
        if (versions.count(FORMAT_VERSION) != n or list(map(type, versions)).count(int) != n
                or list(map(type, seqs)).count(int) != n or seqs != tuple(range(first, first + n))
                or not TYPES.issuperset(types)):
            return None
    except (TypeError, KeyError):  # a missing member, an unhashable type, a seq that is no number
        return None
    chunk = Chunk(records, lines, start=start, first_line=first_line)
    chunk.kinds = types
    chunk.metric_timestamps = b'"mts"' in b"\n".join(lines)  # a hint: also when a string holds it
    return chunk


def open_journal(path: Path | str):
    """``open(path, "rb")`` for a journal: regular files only, and never a wait.

    Opening a FIFO for reading waits for a writer (forever, and through SIGTERM); a
    device, socket or folder is no journal either. The file is opened with
    ``O_NONBLOCK`` (so even a FIFO swapped in after the ``stat`` opens at once) and
    kept only if ``fstat`` says it is a regular file; anything else raises
    :class:`JournalError` naming the path and what it is. Symlinks are followed:
    deciding which are welcome is discovery's job.
    """
    path = os.fspath(path)
    try:
        kind = os.stat(path).st_mode
    except OSError:
        kind = None  # let open() raise it, with its own errno
    if kind is not None and not stat.S_ISREG(kind):
        raise JournalError(f"{path}: not a regular file ({_file_kind(kind)}): journals are regular files")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        kind = os.fstat(fd).st_mode
        if not stat.S_ISREG(kind):
            raise JournalError(f"{path}: not a regular file ({_file_kind(kind)}): journals are regular files")
        os.set_blocking(fd, True)  # a regular file ignores the flag; clear it all the same
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _GzipJournal(gzip.GzipFile):
    """A gzip stream that owns (and closes) the journal file under it."""

    def __init__(self, raw) -> None:
        super().__init__(fileobj=raw, mode="rb")
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def open_journal_stream(path: Path | str):
    """The journal's bytes as a binary stream: :func:`open_journal`, decompressed when the name ends in ``.gz``.

    Byte offsets and line numbers of a compressed journal are those of its
    uncompressed content, so checkpoints carry over from the plain file.
    """
    raw = open_journal(path)
    if not os.fspath(path).endswith(COMPRESSED_SUFFIX):
        return raw
    try:
        return _GzipJournal(raw)
    except BaseException:
        raw.close()
        raise


def _file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return f"file type {stat.S_IFMT(mode):o}"


class JournalReader:
    """Streams verified records from a journal file. Holds no lock; never writes."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.pending_bytes = 0  # bytes of an incomplete last line seen by the last read

    def entries(self, start: ReadPosition = START, *, skip_corrupt: bool = False,
                on_skip=None) -> Iterator[Entry]:
        """Yield every complete, verified record from ``start``.

        With ``skip_corrupt``, a corrupt line is passed to ``on_skip(error)`` and
        reading goes on after it (the sequence check resynchronises on the next
        good record); otherwise :class:`CorruptRecordError` is raised.
        """
        for chunk in self.chunks(start, skip_corrupt=skip_corrupt, on_skip=on_skip):
            yield from chunk.entries()

    def chunks(self, start: ReadPosition = START, *, skip_corrupt: bool = False,
               on_skip=None) -> Iterator[Chunk]:
        """:meth:`entries`, a read buffer at a time: the same records, checks and errors.

        A corrupt line ends the chunk before it: every good record before it is
        yielded before the error is raised (or passed to ``on_skip``).
        """
        offset, line_no, seq = start.offset, start.line, start.seq
        self.pending_bytes = 0
        with open_journal_stream(self.path) as fh:
            fh.seek(offset)
            tail: list[bytes] = []  # the incomplete last line so far, in pieces (a long line: many reads)
            tail_size = 0
            data = b""
            while True:
                data = data or fh.read(_CHUNK)  # data: what is left after an over-long line, if anything
                if not data:
                    self.pending_bytes = tail_size
                    return
                end = data.find(b"\n")
                if tail_size + (len(data) if end < 0 else end) > MAX_LINE_BYTES:
                    # The line from ``offset`` is too long to be a record: never hold more of it.
                    rest = self._too_long(fh, data, end, tail_size, offset, line_no, skip_corrupt, on_skip)
                    tail, tail_size, data = [], 0, b""
                    if rest is None:  # no end yet: like a tail, it is not read past
                        self.pending_bytes = self._size_from(fh, offset)
                        return
                    data, length = rest
                    offset += length + 1
                    line_no += 1
                    seq = None  # resynchronise on the next good record
                    continue
                if end < 0:
                    tail.append(data)
                    tail_size += len(data)
                    data = b""
                    continue
                if tail:
                    tail.append(data)
                    data = b"".join(tail)
                    tail.clear()  # a long line is held once, not twice
                lines = data.split(b"\n")
                data = b""
                last = lines.pop()  # no "\n" yet: it waits for the next read
                tail = [last] if last else []
                tail_size = len(last)
                chunk = _verified(lines, seq, offset, line_no)
                if chunk is not None:
                    yield chunk
                    offset += sum(map(len, lines)) + len(lines)
                    line_no += len(lines)
                    seq = chunk.records[-1]["seq"] + 1
                    continue
                offset, line_no, seq = yield from self._line_by_line(lines, offset, line_no, seq,
                                                                     skip_corrupt, on_skip)

    def _too_long(self, fh, data: bytes, end: int, before: int, offset: int, line_no: int,
                  skip_corrupt: bool, on_skip) -> tuple[bytes, int] | None:
        """The line at ``offset`` is longer than :data:`MAX_LINE_BYTES`: ``before`` bytes of it came before
        ``data``, where it ends at ``end`` (-1: not there). Raises :class:`CorruptRecordError`; with
        ``skip_corrupt``, passes it to ``on_skip`` and reads on to the line's end without keeping it:
        returns (what follows its ``\\n`` in the last read, its length), or None if the file ends first."""
        if end < 0:
            what = f"line longer than the limit of {MAX_LINE_BYTES} bytes (no end in its first {before + len(data)})"
        else:
            what = f"line of {before + end} bytes, longer than the limit of {MAX_LINE_BYTES}"
        error = CorruptRecordError(f"{what}: not a record (the writer never writes such a line)",
                                   path=self.path, line=line_no, offset=offset)
        if not skip_corrupt:
            raise error
        if on_skip is not None:
            on_skip(error)
        length = before
        while end < 0:
            length += len(data)
            data = fh.read(_CHUNK)
            if not data:
                return None
            end = data.find(b"\n")
        return data[end + 1:], length + end

    @staticmethod
    def _size_from(fh, offset: int) -> int:
        try:
            return max(0, os.fstat(fh.fileno()).st_size - offset)
        except OSError:
            return 0

    def _line_by_line(self, lines: list[bytes], offset: int, line_no: int, seq: int | None,
                      skip_corrupt: bool, on_skip) -> Iterator[Chunk]:
        """Check ``lines`` one at a time, yielding the good runs between bad lines; returns the new position."""
        records: list[dict] = []
        kept: list[bytes] = []
        starts: list[int] = []
        line_nos: list[int] = []

        def good_so_far() -> Chunk:
            chunk = Chunk.of_lines(records[:], kept[:], starts[:], line_nos[:])
            del records[:], kept[:], starts[:], line_nos[:]
            return chunk

        for raw in lines:
            line_offset = offset
            offset += len(raw) + 1
            try:
                record = self._check(raw, seq)
            except UnsupportedVersionError:
                if records:
                    yield good_so_far()
                raise
            except FrameError as exc:
                if records:
                    yield good_so_far()
                error = CorruptRecordError(str(exc), path=self.path, line=line_no, offset=line_offset)
                if not skip_corrupt:
                    raise error from None
                if on_skip is not None:
                    on_skip(error)
                if not isinstance(exc, _SequenceGap):
                    line_no += 1
                    seq = None  # resynchronise on the next good record
                    continue
                # A gap is not a bad line: this record's checksum is fine, so keep it.
                record = exc.record
            records.append(record)
            kept.append(raw)
            starts.append(line_offset)
            line_nos.append(line_no)
            seq = record["seq"] + 1
            line_no += 1
        if records:
            yield good_so_far()
        return offset, line_no, seq

    def _check(self, raw: bytes, seq: int | None) -> dict:
        record = unframe(raw)  # an empty or blank line fails here too (no checksum suffix)
        version = record.get("v")
        if version == FORMAT_VERSION and type(version) is int and record.get("type") in TYPES:
            got = record.get("seq")
            if type(got) is int and (got == seq or seq is None):
                return record  # the common case, checked in as few steps as possible
        if not isinstance(version, int) or isinstance(version, bool):
            raise FrameError("record has no format version")
        if version > FORMAT_VERSION:
            raise UnsupportedVersionError(
                f"{self.path}: written by journal format version {version}; this reader knows "
                f"up to {FORMAT_VERSION}: upgrade formula-foundry")
        if record.get("type") not in TYPES:
            raise FrameError(f"unknown record type {record.get('type')!r}")
        got = record.get("seq")
        if not isinstance(got, int):
            raise FrameError("record has no sequence number")
        if seq is not None and got != seq:
            raise _SequenceGap(f"sequence gap: expected seq {seq}, found {got}", record)
        return record

    def records(self, start: ReadPosition = START) -> Iterator[dict]:
        for entry in self.entries(start):
            yield entry.record

    def first_record(self) -> dict | None:
        """The journal's first record (its run_start/run_attach header), or None if not yet complete."""
        for entry in self.entries():
            return entry.record
        return None
