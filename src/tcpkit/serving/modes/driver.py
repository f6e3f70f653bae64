"""The connection driver shared by the blocking modes (iterative, thread, fork).

:func:`serve_connection` moves bytes between one client socket and a sans-IO
:class:`~tcpkit.connection.ServiceConnection`, sleeping in ``poll()`` on the
socket, the server's stop pipe(s) and — when the client has offloaded work in
flight — a pipe the offload thread writes to when a job finishes.  It is
"blocking" in that it owns its thread (or process) and blocks it; the socket
itself is non-blocking so that one ``poll`` can wait for all of these at once.

What every mode gets from it, the same way as the async mode:

* **Backpressure.**  Replies go out as the client reads them; while more than
  ``write_high`` bytes wait to be sent, or more than ``max_waiting`` replies
  wait behind unfinished jobs, the driver stops reading from the client.  The
  client's further requests then stay in the kernel's buffers, and server
  memory per connection stays bounded whatever the client does.
* **Idle timeout.**  A client that has made no progress for ``idle_timeout``
  seconds (and has no work in flight) is closed: progress is the connection's
  ``progressed`` flag, the one slowloris rule of every mode.
* **Half-close.**  At the client's EOF the remaining replies are sent, then the
  connection closes.
* **Cancellation.**  A client that goes away (reset, or a failed write) has its
  offloaded jobs cancelled, which kills their worker processes.
* **Metrics.**  Given an observer that measures traffic (``--metrics``), the
  driver reports bytes, lines, replies, latency and errors by kind exactly as
  the async mode does; without one it reads no clock.
* **TLS.**  The socket may be an already handshaken ``ssl.SSLSocket``: reads
  and writes that must wait for the other direction simply wait for ``poll``.
* **Drain.**  When a stop pipe becomes readable the driver takes no more
  requests, finishes those already read, and closes — or gives up at
  ``drain_timeout``.

A mode whose clients are served in the process that raises the stop pipe's
flag (thread mode) passes the pipe as ``blocking_stop``; a plain,
unmetered, stateless connection then starts on the fast path of
:mod:`~tcpkit.serving.modes.driver_fastpath` — blocking ``recv``, no ``poll``
— and this loop takes over, from the state the fast path leaves, the moment
anything needs it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from tcpkit.connection import Job, ServiceConnection
from tcpkit.service import Offload, Service
from tcpkit.serving.config import Limits
from tcpkit.serving.guards.gate import LINGER_BLOCKING, LINGER_BYTES
from tcpkit.serving.modes.driver_fastpath import serve_settled
from tcpkit.serving.observe.events import Observer, receive_measured
from tcpkit.serving.offload.bridge import OffloadBridge
from tcpkit.serving.offload.jobs import finish_job

if TYPE_CHECKING:
    from tcpkit.hub import Hub
    from tcpkit.serving.modes.pipes import Wakeup

log = logging.getLogger("tcpkit")
READ_SIZE = 1 << 16
_IN = select.POLLIN
_OUT = select.POLLOUT
_GONE = select.POLLERR | select.POLLHUP | select.POLLNVAL
# "Not now": retry when poll says so.  (TLS wants are OSErrors: catch them first.)
_AGAIN = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


_last_drain_warning = 0.0


def _warn_drain_timeout() -> None:
    """One line per second at most, however many connections hit the deadline."""
    global _last_drain_warning
    now = time.monotonic()
    if now - _last_drain_warning >= 1.0:
        _last_drain_warning = now
        log.warning("drain timeout: closing connections with replies unsent")


@dataclass(frozen=True)
class Outcome:
    """How a connection ended, for the server's counters and access log."""

    lines: int
    errors: int
    idle_closed: bool
    line_too_long: bool = False


def serve_connection(sock: socket.socket, service: Service, limits: Limits,
                     stop_fds: Sequence[int],
                     offload: Callable[[], OffloadBridge],
                     metered: Observer | None = None,
                     peer: tuple[str, int] = ("", 0),
                     hub: Callable[[], Hub] | None = None,
                     blocking_stop: Wakeup | None = None) -> Outcome:
    """Serve one client until it is done, idle, gone or drained; then close it.

    ``stop_fds`` are file descriptors that become readable when the server
    drains; ``offload`` returns the bridge that runs Offload jobs (called only
    when the client sends such work); ``metered`` gets the traffic figures.
    A session service's client also gets its ``peer`` (host, port) and the
    server's ``hub`` (a function making it on first use).  ``blocking_stop``,
    the server's stop pipe when this thread may read its flag, allows the
    fast path (see the module docstring).
    """
    sessions = service.uses_sessions
    if metered is not None or sessions or isinstance(sock, ssl.SSLSocket):
        blocking_stop = None  # these need the poll loop from the start
    if blocking_stop is None:
        sock.setblocking(False)  # one poll waits for the socket and the pipes
    if sessions:
        from tcpkit.serving.modes.driver_sessions import SessionDriver

        driver: _Driver = SessionDriver(sock, service, limits, stop_fds, offload, metered,
                                        peer, hub)
    else:
        driver = _Driver(sock, service, limits, stop_fds, offload, metered)
    try:
        if blocking_stop is not None:
            driver.take_over(drain=serve_settled(driver, blocking_stop))
        driver.run()
    finally:
        driver.close()
    return Outcome(driver.conn.lines, driver.conn.errors, driver.idle_closed,
                   driver.conn.line_too_long)


class _Driver:
    """The state of one client between ``poll`` calls."""

    read_size = READ_SIZE  # for the fast path, which cannot import this module

    def __init__(self, sock: socket.socket, service: Service, limits: Limits,
                 stop_fds: Sequence[int], offload: Callable[[], OffloadBridge],
                 metered: Observer | None = None) -> None:
        self.sock = sock
        self.tls = isinstance(sock, ssl.SSLSocket)
        self.service = service.name
        self.metered = metered
        self.job_started: dict[Job, float] = {}
        self.fd = sock.fileno()
        self.limits = limits
        self.conn = self.make_connection(service, limits)
        self.offload = offload
        self.out = bytearray()  # replies the client has not taken yet
        self.poller = select.poll()
        self.mask = 0
        self.poller.register(self.fd, 0)
        self.stop_fds = set(stop_fds)
        for fd in self.stop_fds:
            self.poller.register(fd, _IN)
        self.jobs: set[Job] = set()
        self.finished_jobs: deque[Job] = deque()  # appended by the offload thread
        self.wake: tuple[int, int] | None = None
        self.wake_lock = threading.Lock()
        self.last_seen = time.monotonic()
        self.deadline: float | None = None  # set when draining
        self.idle_closed = False
        self.gone = False
        self.peer_done = False  # the client sent EOF

    @staticmethod
    def make_connection(service: Service, limits: Limits) -> ServiceConnection:
        return ServiceConnection(service, limits.max_line)

    # -- the loop ---------------------------------------------------------

    def take_over(self, drain: bool) -> None:
        """The fast path has returned: go on from what it left (see driver_fastpath)."""
        if self.gone or (not drain and self.conn.finished and not self.out):
            return  # nothing left for the loop (an EOF, say): no need to unblock
        self.sock.setblocking(False)
        if drain:
            self._begin_drain()
        else:
            self._send(b"")  # jobs to start, replies the kernel did not take

    def run(self) -> None:
        while not self.gone and not (self.conn.finished and not self.out):
            self._watch_socket()
            timeout = self._timeout()
            events = self.poller.poll(None if timeout is None else math.ceil(timeout * 1000))
            if not events:
                self._timed_out()
                continue
            stop = False
            # The socket was registered first, so poll lists it first: its
            # requests are read before a stop in the same wake-up is acted on.
            for fd, flags in events:
                if fd == self.fd:
                    self._socket_ready(flags)
                elif self.wake is not None and fd == self.wake[0]:
                    self._collect_jobs()
                else:
                    stop = True
            if stop and not self.gone:
                self._begin_drain()

    def _watch_socket(self) -> None:
        mask = _OUT if self.out else 0
        if self._may_read():
            mask |= _IN
        if mask != self.mask:
            # Even with mask 0, poll reports a reset (POLLERR/POLLHUP).
            self.poller.modify(self.fd, mask)
            self.mask = mask

    def _may_read(self) -> bool:
        conn = self.conn
        return (not conn.eof and not conn.closing and len(self.out) < self.limits.write_high
                and conn.waiting <= self.limits.max_waiting)

    def _timeout(self) -> float | None:
        now = time.monotonic()
        if self.deadline is not None:
            return max(0.0, self.deadline - now)
        if self.conn.waiting:
            return None  # work in flight: the client is waiting for us, not idle
        return max(0.0, self.last_seen + self.limits.idle_timeout - now)

    def _timed_out(self) -> None:
        now = time.monotonic()
        if self.deadline is not None:
            if now >= self.deadline:
                _warn_drain_timeout()
                self.gone = True
        elif not self.conn.waiting and now >= self.last_seen + self.limits.idle_timeout:
            self.idle_closed = True
            self.gone = True

    # -- socket I/O -------------------------------------------------------

    def _socket_ready(self, flags: int) -> None:
        if flags & _OUT:
            self._flush()
        if flags & _IN and self._may_read():
            self._read()
        elif flags & _GONE:
            self._lost()

    def _read(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
            # A TLS record already decrypted is not in the kernel's buffer:
            # poll would not report it, so take it now.
            while self.tls and data and self.sock.pending():  # type: ignore[attr-defined]
                data += self.sock.recv(READ_SIZE)
        except _AGAIN:
            return
        except OSError:
            self._lost()
            return
        conn = self.conn
        if not data:
            self.peer_done = True
        if self.metered is not None:
            receive_measured(conn, data or None, self.metered, self.service, self._send)
        elif not data:
            self._send(conn.receive_eof())
        else:
            replies = conn.receive_data(data)
            if not conn.settled or self.out:
                self._send(replies)
            elif replies:
                # The hot path (nothing held, no job, nothing unsent): send straight
                # from the reply bytes; only what the kernel does not take now is
                # copied into the output buffer.
                sent = self._write(replies)
                if sent is not None and sent < len(replies):
                    self.out += replies[sent:]
        if conn.progressed:
            conn.progressed = False
            self.last_seen = time.monotonic()

    def _send(self, replies: bytes) -> int:
        """Queue replies, start any new jobs, and try to write at once; the jobs started."""
        if replies:
            self.out += replies
        jobs = self.conn.take_jobs()
        for job in jobs:
            self._start(job)
        if self.out and not self.gone:
            self._flush()
        return len(jobs)

    def _flush(self) -> None:
        sent = self._write(self.out)
        if sent:
            del self.out[:sent]

    def _write(self, data: bytes | bytearray) -> int | None:
        """One send(): the bytes taken (0 if it would block), None if the client is gone."""
        try:
            sent: int = self.sock.send(data)
        except _AGAIN:
            return 0
        except OSError:
            self._lost()
            return None
        return sent

    def _lost(self) -> None:
        """The client is gone: nothing more can be sent, pending work is moot."""
        self.gone = True
        self.out.clear()

    # -- offloaded jobs ---------------------------------------------------

    def _open_wake(self) -> None:
        """The pipe other threads wake this driver through (made when first needed)."""
        if self.wake is None:
            self.wake = os.pipe()
            os.set_blocking(self.wake[0], False)
            os.set_blocking(self.wake[1], False)
            self.poller.register(self.wake[0], _IN)

    def _start(self, job: Job) -> None:
        self._open_wake()
        assert isinstance(job.work, Offload)
        try:
            future = self.offload().submit(job.work)
        except RuntimeError as exc:  # the bridge is closed: the server is stopping
            self._send(self.conn.job_failed(job, str(exc)))
            return
        self._track(job, future)

    def _track(self, job: Job, future: Future[Any]) -> None:
        """Collect ``job``'s reply when ``future`` is done (on whatever thread)."""
        job.handle = future
        self.jobs.add(job)
        if self.metered is not None:
            self.job_started[job] = time.perf_counter()
        future.add_done_callback(partial(self._job_finished, job))

    def _job_finished(self, job: Job, future: Future[Any]) -> None:
        """Runs on the offload thread (or wherever cancel() was called)."""
        with self.wake_lock:
            if self.wake is None:
                return
            self.finished_jobs.append(job)
            with contextlib.suppress(BlockingIOError):
                os.write(self.wake[1], b"!")

    def wake_up(self) -> None:
        """Make the driver's poll return (from any thread); a no-op once it is closed."""
        with self.wake_lock:
            if self.wake is not None:
                with contextlib.suppress(BlockingIOError):
                    os.write(self.wake[1], b"!")

    def _collect_jobs(self) -> None:
        assert self.wake is not None
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake[0], 4096):
                pass
        while self.finished_jobs:
            job = self.finished_jobs.popleft()
            self.jobs.discard(job)
            future = job.handle
            started = self.job_started.pop(job, 0.0)
            if not isinstance(future, Future) or future.cancelled():
                continue
            outcome: bytes | Exception
            try:
                outcome = future.result()
            except Exception as exc:
                outcome = exc
            self._send(finish_job(self.conn, job, outcome, self.metered, self.service, started))

    # -- ending -----------------------------------------------------------

    def _begin_drain(self) -> None:
        """Stop taking requests; answer the ones already read, within drain_timeout."""
        for fd in self.stop_fds:
            self.poller.unregister(fd)
        self.stop_fds.clear()
        self.deadline = time.monotonic() + self.limits.drain_timeout
        self.conn.drain()  # at the next reply boundary
        self._send(b"")

    def close(self) -> None:
        """Cancel leftover jobs and close the socket (politely unless the client is gone)."""
        for job in list(self.jobs):
            if isinstance(job.handle, Future):
                job.handle.cancel()  # the pool kills the worker: its CPU goes idle
        with self.wake_lock:
            wake, self.wake = self.wake, None
        if wake is not None:
            for fd in wake:
                os.close(fd)
        if (self.conn.closing or self.deadline is not None) and not self.peer_done \
                and not self.gone:
            self._linger(LINGER_BYTES if self.conn.closing else None)
        self.sock.close()

    def _linger(self, cap: int | None) -> None:
        """After an error reply or a drain: half-close, then discard what the client
        still sends, until its EOF, LINGER_BLOCKING seconds or ``cap`` bytes.

        Closing with unread bytes would make the kernel send a reset, and a
        reset can destroy replies before the client reads them (a drain under
        pipelined load lost some this way: no byte cap then).
        """
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
            end = time.monotonic() + LINGER_BLOCKING
            discarded = 0
            waiter = select.poll()  # not select(): fds above 1024 are usual after raise_nofile
            waiter.register(self.fd, _IN)
            while cap is None or discarded < cap:
                left = end - time.monotonic()
                if left <= 0 or not waiter.poll(math.ceil(left * 1000)):
                    break
                data = self.sock.recv(READ_SIZE)
                if not data:
                    break
                discarded += len(data)
