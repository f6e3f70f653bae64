"""The blocking driver's fast path: a settled connection served in blocking ``recv``.

The poll loop of :mod:`~tcpkit.serving.modes.driver` pays a ``poll`` per
request on top of ``recv`` and ``send``, because one ``poll`` must watch the
socket, the stop pipe and the jobs' pipe at once.  While nothing but the
socket can need the connection — a plain socket (no TLS), no session, no
metering, no job started, nothing unsent, input open — its thread blocks in
``recv`` itself instead, and keeps the poll loop's promises this way:

* **Idle timeout.**  ``SO_RCVTIMEO`` ends a ``recv`` that waits longer than
  the gate's ``TICK`` (or than the idle deadline, if that is nearer); the
  deadline is the poll loop's, from the connection's ``progressed`` flag, so
  a slowloris client is closed by the same rule in every mode.
* **Drain.**  The stop pipe's flag (:attr:`Wakeup.raised`) is read after
  every chunk and whenever ``recv`` times out, so a busy client notices the
  drain after the chunk it is answering and an idle one within ``TICK``
  (thread mode's drain waits that much longer for its clients).  The
  client's bytes stay in the kernel's buffer until then, untouched: the drain
  answers every line the server read and lingers as the poll loop does.
  Waking the ``recv`` with ``shutdown(SHUT_RD)`` instead (the first attempt)
  lost replies: once the linger's ``SHUT_WR`` follows, Linux aborts the
  connection when more of the client's bytes arrive (a reset, counted as
  TcpExt TCPAbortOnData), and replies still queued for the client are lost.
* **Backpressure.**  Replies go out with ``MSG_DONTWAIT``; what the kernel
  does not take now goes to the driver's output buffer and the poll loop
  takes over, which stops reading until the client catches up.

Anything else — EOF, a job, an error reply, a short send, the drain, a reset
— returns to the poll loop for the rest of the connection
(:meth:`_Driver.take_over`), from the state left here.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from typing import TYPE_CHECKING

from tcpkit.serving.guards.gate import TICK

if TYPE_CHECKING:
    from tcpkit.serving.modes.driver import _Driver
    from tcpkit.serving.modes.pipes import Wakeup

_DONTWAIT = socket.MSG_DONTWAIT  # a plain socket's send that never blocks


def serve_settled(driver: _Driver, stop: Wakeup) -> bool:
    """Serve ``driver``'s client in blocking ``recv``/``send`` while it is settled.

    True if the drain began (the poll loop must begin it for this client);
    False when anything else needs the poll loop, or the client is done
    (``driver.gone``, ``driver.idle_closed``, ``driver.peer_done`` say how).
    """
    sock, conn, idle = driver.sock, driver.conn, driver.limits.idle_timeout
    if sock.gettimeout() is not None:
        sock.setblocking(True)  # SO_RCVTIMEO, not Python's timeout, bounds the wait
    wait = _wait_at_most(sock, min(TICK, idle), 0.0)
    recv, send, monotonic, read_size = sock.recv, sock.send, time.monotonic, driver.read_size
    while True:
        try:
            data = recv(read_size)
        except BlockingIOError:  # SO_RCVTIMEO: nothing came for `wait` seconds
            if stop.raised:
                return True
            left = driver.last_seen + idle - monotonic()
            if left <= 0:
                driver.idle_closed = driver.gone = True
                return False
            wait = _wait_at_most(sock, min(TICK, left), wait)
            continue
        except OSError:
            driver._lost()
            return False
        if not data:
            driver.peer_done = True
            driver.out += conn.receive_eof()
            return False
        replies = conn.receive_data(data)
        progressed = conn.progressed
        if progressed:
            conn.progressed = False
            driver.last_seen = monotonic()
        if not conn.settled:  # a job, an error reply, the line limit: the poll loop's work
            driver.out += replies
            return False
        if not progressed:  # bytes that only lengthen a line: its deadline stands
            left = driver.last_seen + idle - monotonic()
            if left <= 0:
                driver.idle_closed = driver.gone = True
                return False
            wait = _wait_at_most(sock, min(TICK, left), wait)
        if replies:
            try:
                sent = send(replies, _DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError:
                driver._lost()
                return False
            if sent < len(replies):
                driver.out += memoryview(replies)[sent:]
                return False
        if stop.raised:
            return True


def _wait_at_most(sock: socket.socket, seconds: float, current: float) -> float:
    """Set ``SO_RCVTIMEO`` to ``seconds`` unless it is ``current`` already; return it."""
    if seconds != current:
        whole = int(seconds)
        micro = max(1, int((seconds - whole) * 1_000_000))  # 0 would mean "wait forever"
        with contextlib.suppress(OSError):  # a socket already reset: recv will say so
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                            struct.pack("ll", whole, micro))
    return seconds
