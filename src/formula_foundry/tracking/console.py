"""Console capture: file descriptors 1 and 2 teed to the terminal, unchanged, and into the run's journal.

``start_run(capture_console=True)`` (or ``tracking.capture_console``) replaces
fds 1 and 2 with pipes (``os.pipe`` + ``os.dup2``), so everything the process
prints is seen: Python's ``print``, ``os.write(1, ...)``, C extensions, and
child processes (a solver started with ``subprocess``), which inherit the fds.
One reader thread per fd copies every byte, unchanged, to the original fd (the
terminal, a log file, the parent's pipe) and hands it to the capture; one
writer thread appends it to the run's journal as ``console`` records::

    {"v":1,"seq":9,"ts":1763913600200,"type":"console","stream":"stdout","text":"step 3 ok\\n","crc":"..."}

Records (:class:`ConsoleBuffer`, pure: the batching rules)
    * ``text`` is the bytes decoded as UTF-8 with ``errors="replace"``, one
      incremental decoder per stream (a character split across two reads is
      kept whole);
    * a record is written when 8 KiB are collected, 200 ms after its first
      byte arrived, when the other stream prints, and at run end. So stdout and
      stderr interleave in the order their readers received them: exact within
      a stream, and across the two as close as two pipes allow (a line on
      stderr printed right after one on stdout may come first). A
      SIGKILLed program therefore keeps everything it printed up to at most
      200 ms before the kill: the records are in the journal, written with
      the journal's own ``os.write`` (``journal.fsync`` applies as to any record);
    * at most ``max_bytes`` bytes (``tracking.console_max_bytes``) of output
      are kept; the record that reaches the limit is followed by one whose text
      is ``"\\n[ff: console capture truncated after N bytes]\\n"``, and no
      further ``console`` record is written (the terminal still gets every byte).

Start and stop (:class:`ConsoleCapture`)
    Python's ``sys.stdout``/``sys.stderr`` are flushed before fds 1 and 2 are
    swapped and again before they are restored; stopping puts the original fds
    back with ``os.dup2`` (the same open files, exactly), then drains what was
    printed before that moment, then writes the last records, all before the
    run's ``run_end``. Nothing printed after the run ended is captured. A child
    process that outlives the run keeps the pipe's write end: its later output
    still reaches the terminal (the reader keeps forwarding until end of file)
    and is not captured.

One capture per process (:func:`start_capture`): the outermost capturing run
owns it; a nested run asking for it gets None and its output lands in the
owner's journal. A forked child forgets the capture (its prints still go to
the parent's pipe, so the owning run captures them).

Known limit: programs that check ``isatty(1)`` (C's stdio, many solvers) see a
pipe while captured and buffer their output in blocks, as under ``| tee``.
"""

from __future__ import annotations

import codecs
import os
import select
import struct
import sys
import threading
import time
import warnings
from collections.abc import Callable

__all__ = [
    "FLUSH_BYTES",
    "FLUSH_SECONDS",
    "ConsoleBuffer",
    "ConsoleCapture",
    "start_capture",
    "truncation_marker",
]

FLUSH_BYTES = 8 << 10  # a record when this much is collected ...
FLUSH_SECONDS = 0.2  # ... or this long after its first byte arrived (the SIGKILL window)
_READ_SIZE = 64 << 10
_COALESCE_BELOW = 16 << 10  # after a read smaller than this ...
_COALESCE_SECONDS = 0.001  # ... the reader waits this long before the next one
STREAMS = {1: "stdout", 2: "stderr"}


def truncation_marker(max_bytes: int) -> str:
    return f"\n[ff: console capture truncated after {max_bytes} bytes]\n"


class ConsoleBuffer:
    """The batching rules, pure: bytes in (with the time they arrived), ``(stream, text)`` records out."""

    def __init__(self, *, max_bytes: int, flush_bytes: int = FLUSH_BYTES,
                 flush_seconds: float = FLUSH_SECONDS) -> None:
        self.max_bytes = max_bytes
        self.flush_bytes = flush_bytes
        self.flush_seconds = flush_seconds
        self.captured = 0  # bytes taken (at most max_bytes)
        self.truncated = False
        self._stream: str | None = None
        self._pending = bytearray()
        self._since: float | None = None  # arrival time of the first pending byte
        self._decoders = {name: codecs.getincrementaldecoder("utf-8")(errors="replace")
                          for name in STREAMS.values()}

    @property
    def deadline(self) -> float | None:
        """When the pending bytes must be written (None: nothing pending)."""
        return None if self._since is None else self._since + self.flush_seconds

    def add(self, stream: str, data: bytes, now: float) -> list[tuple[str, str]]:
        """Take ``data`` printed on ``stream``; returns the records now complete."""
        if self.truncated or not data:
            return []
        out: list[tuple[str, str]] = []
        if self._pending and stream != self._stream:
            out += self._take()
        room = self.max_bytes - self.captured
        if len(data) > room:  # the cut: what fits, the marker, then nothing more
            self._put(stream, data[:room], now)
            out += self._take() + self._finish()
            out.append((stream, truncation_marker(self.max_bytes)))
            self.truncated = True
            return out
        self._put(stream, data, now)
        if len(self._pending) >= self.flush_bytes:
            out += self._take()
        return out

    def due(self, now: float) -> list[tuple[str, str]]:
        """The pending record if its time has come."""
        deadline = self.deadline
        return self._take() if deadline is not None and now >= deadline else []

    def close(self) -> list[tuple[str, str]]:
        """Everything still pending, and any half character at a stream's end (as U+FFFD)."""
        if self.truncated:
            return []
        return self._take() + self._finish()

    def _put(self, stream: str, data: bytes, now: float) -> None:
        if not data:
            return
        if not self._pending:
            self._since = now
        self._stream = stream
        self._pending += data
        self.captured += len(data)

    def _take(self) -> list[tuple[str, str]]:
        if not self._pending:
            return []
        stream, data = self._stream, bytes(self._pending)
        self._pending.clear()
        self._since = None
        text = self._decoders[stream].decode(data)
        return [(stream, text)] if text else []  # only half a character: it comes with the next bytes

    def _finish(self) -> list[tuple[str, str]]:
        out = []
        for name, decoder in self._decoders.items():
            text = decoder.decode(b"", final=True)
            if text:
                out.append((name, text))
        return out


def _write_all(fd: int, data: bytes) -> bool:
    """Write every byte to ``fd`` (waiting out a non-blocking fd); False once it cannot take them."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        except InterruptedError:
            continue
        except OSError:
            return False  # the terminal is gone (EPIPE, EBADF): the capture still goes on
        view = view[n:]
    return True


def _pending_bytes(fd: int) -> int:
    """Bytes waiting in the pipe ``fd`` (``FIONREAD``); where that is not known, what one read takes."""
    try:
        import fcntl  # noqa: PLC0415 - POSIX only, like the capture
        import termios  # noqa: PLC0415

        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except (ImportError, OSError, AttributeError):
        return _READ_SIZE if select.select([fd], [], [], 0)[0] else 0


class _Tee:
    """One captured fd: the saved original, the pipe, and the thread that forwards and captures."""

    def __init__(self, fd: int, capture: ConsoleCapture) -> None:
        self.fd = fd
        self.stream = STREAMS[fd]
        self.capture = capture
        self.saved = os.dup(fd)  # the original (non-inheritable: children get the pipe, not this)
        try:
            read_end, write_end = os.pipe()
        except OSError:
            os.close(self.saved)
            raise
        self.read_end = read_end
        os.dup2(write_end, fd)  # fd now writes into the pipe (inheritable, as fds 1 and 2 are)
        os.close(write_end)
        self.drained = threading.Event()
        self.forward_ok = True
        self.thread = threading.Thread(target=self._loop, name=f"ff-console-{self.stream}", daemon=True)

    def restore(self) -> None:
        os.dup2(self.saved, self.fd)

    def _forward(self, data: bytes, capture: bool) -> None:
        if self.forward_ok:
            self.forward_ok = _write_all(self.saved, data)
        if capture:
            self.capture.take(self.stream, data)

    def _loop(self) -> None:
        eof = False
        try:
            poller = select.poll()
            poller.register(self.read_end, select.POLLIN)
            poller.register(self.capture.wake_fd, select.POLLIN)
            while not eof:
                events = dict(poller.poll())
                if events.get(self.read_end):
                    data = os.read(self.read_end, _READ_SIZE)
                    if not data:
                        eof = True
                        break
                    self._forward(data, True)
                    if len(data) < _COALESCE_BELOW:
                        # A program printing fast otherwise hands us each write alone, and every
                        # read costs a GIL hand-off with it: let a little more collect (this delays
                        # the next read, never the bytes just forwarded).
                        time.sleep(_COALESCE_SECONDS)
                if events.get(self.capture.wake_fd):
                    break
            # Stopping: fd is restored, so the pipe holds what was printed before that; take exactly
            # that much (a child still holding the write end may go on printing: not captured).
            left = _pending_bytes(self.read_end)
            while not eof and left > 0:
                data = os.read(self.read_end, min(left, _READ_SIZE))
                if not data:
                    eof = True
                else:
                    left -= len(data)
                    self._forward(data, True)
        except Exception as exc:  # noqa: BLE001 - the program must never see it
            self.capture.fail(f"reading {self.stream} failed ({type(exc).__name__}: {exc})")
        finally:
            self.drained.set()
        try:
            # Not captured any more: a child that outlives the run still reaches the terminal.
            while not eof:
                data = os.read(self.read_end, _READ_SIZE)
                if not data:
                    break
                if self.forward_ok:
                    self.forward_ok = _write_all(self.saved, data)
        except OSError:
            pass
        finally:
            os.close(self.read_end)
            os.close(self.saved)


class ConsoleCapture:
    """Tees fds 1 and 2 into ``write(stream, text)`` (the run's journal) between :meth:`start` and :meth:`stop`."""

    def __init__(self, write: Callable[[str, str], None], *, max_bytes: int, fds: tuple[int, ...] = (1, 2),
                 flush_bytes: int = FLUSH_BYTES, flush_seconds: float = FLUSH_SECONDS) -> None:
        self._write = write
        self._fds = fds
        self.buffer = ConsoleBuffer(max_bytes=max_bytes, flush_bytes=flush_bytes, flush_seconds=flush_seconds)
        self._cond = threading.Condition()
        self._outbox: list[tuple[str, str]] = []
        self._stopping = False
        self._broken = False
        self._tees: list[_Tee] = []
        self._writer: threading.Thread | None = None
        self.wake_fd, self._wake_write = -1, -1  # readable once stop() began
        self.pid = os.getpid()
        self.records = 0  # console records written

    # -- the program's side ----------------------------------------------------------------

    def start(self) -> None:
        """Swap fds 1 and 2 for pipes and start the threads; on OSError (no fds left) nothing is changed."""
        _flush_python()
        self.wake_fd, self._wake_write = os.pipe()
        try:
            for fd in self._fds:
                try:
                    os.fstat(fd)
                except OSError:  # fd not open (a daemon without stdout): nothing to tee there
                    continue
                self._tees.append(_Tee(fd, self))
        except OSError:
            for tee in self._tees:
                tee.restore()
                os.close(tee.read_end)
                os.close(tee.saved)
            self._tees = []
            os.close(self.wake_fd)
            os.close(self._wake_write)
            raise
        self._writer = threading.Thread(target=self._write_loop, name="ff-console-journal", daemon=True)
        self._writer.start()
        for tee in self._tees:
            tee.thread.start()

    def stop(self, *, timeout: float = 10.0) -> None:
        """Restore fds 1 and 2, then write everything printed before that; returns when it is written."""
        if os.getpid() != self.pid:  # a forked child: the threads and the pipes' reading ends are not here
            return
        _flush_python()
        for tee in self._tees:
            tee.restore()
        os.write(self._wake_write, b"x")
        deadline = time.monotonic() + timeout
        for tee in self._tees:
            tee.drained.wait(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join(max(0.0, deadline - time.monotonic()))
        os.close(self.wake_fd)
        os.close(self._wake_write)

    # -- the threads' side ------------------------------------------------------------------

    def take(self, stream: str, data: bytes) -> None:
        """Bytes a reader read from ``stream`` (called by the reader threads)."""
        with self._cond:
            if self._broken:
                return
            records = self.buffer.add(stream, data, time.monotonic())
            if records:
                self._outbox += records
            self._cond.notify_all()

    def fail(self, message: str) -> None:
        """Stop capturing (the terminal still gets everything); say so once on the original stderr."""
        with self._cond:
            if self._broken:
                return
            self._broken = True
            self._cond.notify_all()
        saved = next((t.saved for t in self._tees if t.fd == 2), None)
        if saved is not None:
            _write_all(saved, f"ff console capture: {message}; capture stopped\n".encode())

    def _write_loop(self) -> None:
        """The one thread that appends ``console`` records, in the order the buffer made them."""
        while True:
            with self._cond:
                while True:
                    if self._broken:
                        return
                    now = time.monotonic()
                    self._outbox += self.buffer.due(now)
                    if self._outbox or self._stopping:
                        break
                    deadline = self.buffer.deadline
                    self._cond.wait(None if deadline is None else max(0.0, deadline - now))
                last = self._stopping
                if last:
                    self._outbox += self.buffer.close()
                records, self._outbox = self._outbox, []
            for stream, text in records:
                try:
                    self._write(stream, text)
                except Exception as exc:  # noqa: BLE001 - a journal that fails stops the capture only
                    self.fail(f"writing to the journal failed ({type(exc).__name__}: {exc})")
                    return
                self.records += 1
            if last:
                return


def _flush_python() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # closed or broken: nothing buffered to lose here
            pass


# --------------------------------------------------------------------------- one per process

_active: ConsoleCapture | None = None
_active_lock = threading.Lock()


def start_capture(write: Callable[[str, str], None], *, max_bytes: int) -> ConsoleCapture | None:
    """Start the process's console capture into ``write``; None if one is running (its owner keeps it)."""
    global _active
    with _active_lock:
        if _active is not None:
            return None
        capture = ConsoleCapture(write, max_bytes=max_bytes)
        try:
            capture.start()
        except OSError as exc:  # no file descriptors left, ...: the run goes on without its console
            warnings.warn(f"ff console capture could not start ({exc}); this run's console is not captured",
                          RuntimeWarning, stacklevel=3)
            return None
        _active = capture
        return capture


def stop_capture(capture: ConsoleCapture) -> None:
    """Stop ``capture`` (the one :func:`start_capture` returned); the next run may start another."""
    global _active
    try:
        capture.stop()
    finally:
        with _active_lock:
            if _active is capture:
                _active = None


def _forget_after_fork() -> None:
    global _active, _active_lock
    _active = None
    _active_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
