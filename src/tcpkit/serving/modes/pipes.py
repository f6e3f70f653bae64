"""Self-pipes: how signals, threads and processes wake a blocking server.

A blocking server sleeps in ``poll()``; anything that must wake it — a signal
handler asking for a drain, a child that exited, a job that finished on the
offload thread — writes a byte to a pipe the ``poll`` watches.  Pipes, unlike
``threading.Event``, are also visible across ``fork``: a forked child that
inherits the read end of its parent's stop pipe starts draining the moment the
parent writes to it, and sees end-of-file (also readable) if the parent dies.

:class:`StatsChannel` carries a finished child's counters to its parent the
same way; each report is one small ``write`` (atomic below ``PIPE_BUF``).
"""

from __future__ import annotations

import contextlib
import os
import struct

from tcpkit.serving.observe.stats import COUNTERS, Stats


class _Pipe:
    """A pipe whose read end never blocks; closing is idempotent."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)

    def fileno(self) -> int:
        return self._read

    def close(self) -> None:
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


class Wakeup(_Pipe):
    """A pipe that becomes readable when :meth:`set` is called (from anywhere).

    :attr:`raised` says the same to a reader in this process that cannot
    ``poll`` the pipe: a thread blocked in ``recv`` (the blocking driver's
    fast path) reads it whenever ``recv`` returns, which costs an attribute
    load where a look at the pipe would cost a system call.
    """

    def __init__(self) -> None:
        super().__init__()
        os.set_blocking(self._write, False)
        self.raised = False

    def set(self) -> None:
        """Wake the reader (safe in signal handlers and other threads)."""
        self.raised = True
        # Full pipe: already readable.  Closed writer: nobody left to wake.
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write, b"!")

    def clear(self) -> None:
        self.raised = False
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._read, 4096):
                pass

    def close_writer(self) -> None:
        """In a forked child: keep only the read end (the parent's EOF then shows)."""
        with contextlib.suppress(OSError):
            os.close(self._write)


_RECORD = struct.Struct(f"={len(COUNTERS)}q")


class StatsChannel(_Pipe):
    """Children send their :class:`Stats` to the parent over one shared pipe."""

    def __init__(self) -> None:
        super().__init__()
        self._partial = b""

    def send(self, stats: Stats) -> None:
        """Report ``stats`` (in the child, just before it exits)."""
        send_stats(self._write, stats)

    def collect(self, total: Stats) -> None:
        """Add every report received so far to ``total`` (in the parent)."""
        data = self._partial
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(self._read, 1 << 16):
                data += chunk
        usable = len(data) - len(data) % _RECORD.size
        for counts in _RECORD.iter_unpack(data[:usable]):
            total.add(Stats.from_counts(counts))  # started is the parent's own
        self._partial = data[usable:]

    def close_reader(self) -> None:
        """In a child: only the write end is of use."""
        with contextlib.suppress(OSError):
            os.close(self._read)

    def writer(self) -> int:
        """The write end, for a child that is handed it across ``exec``."""
        return self._write


def send_stats(fd: int, stats: Stats) -> None:
    """One report on a :class:`StatsChannel`'s write end ``fd`` (a lost parent: dropped)."""
    with contextlib.suppress(OSError):
        os.write(fd, _RECORD.pack(*stats.counts()))
