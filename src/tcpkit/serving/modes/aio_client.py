"""One client of the async mode: an ``asyncio.Protocol`` around a sans-IO connection.

It feeds received bytes to its :class:`~tcpkit.connection.ServiceConnection`
and writes the replies; what it adds is what needs a loop: writing, flow
control, offloaded jobs, idle ticks and lingering after the last reply.

Flow control works in both directions.  A client that sends without reading
fills our write buffer; above ``write_high`` bytes the transport calls
``pause_writing`` and we stop *reading* from that client until the buffer
drains below ``write_low`` (asyncio's own high/low water marks).  A client that
pipelines many slow requests is paused likewise once ``max_waiting`` replies
wait behind unfinished jobs.  Either way its memory stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from tcpkit.connection import Job, ServiceConnection
from tcpkit.endpoints import peer_text
from tcpkit.service import Offload, Service
from tcpkit.serving.config import Limits
from tcpkit.serving.guards.gate import LINGER, LINGER_BYTES, TICK
from tcpkit.serving.modes.aio_refused import Refused
from tcpkit.serving.observe.events import close_reason, receive_measured
from tcpkit.serving.offload.jobs import finish_job

if TYPE_CHECKING:
    from tcpkit.serving.modes.aio import AsyncServer

log = logging.getLogger("tcpkit")


class Client(asyncio.Protocol):
    """One connection: feeds bytes to its ServiceConnection, writes the replies."""

    # __slots__ throughout (here, ServiceConnection, LineFramer): with 10,000
    # idle clients every per-connection byte counts.
    __slots__ = (
        "conn", "host", "idle_closed", "idle_ticks", "limits", "lingering", "paused_by_jobs",
        "paused_by_writes", "peer_done", "port", "server", "service", "started", "transport",
    )

    def __init__(self, server: AsyncServer, service: Service,
                 client: tuple[str, int] | None = None, limits: Limits | None = None) -> None:
        self.server = server
        self.service = service
        # This service's limits (its [services.NAME] table's, else the
        # server's): given by the listener's factory, which chose them once,
        # else looked up here; nothing per chunk.
        self.limits = server.limits_for(service) if limits is None else limits
        self.conn = self.make_connection(service, self.limits)
        self.transport: asyncio.Transport | None = None
        self.paused_by_writes = False
        self.paused_by_jobs = False
        self.lingering: int | None = None  # bytes discarded since the last reply
        # Idle tracking costs the hot path nothing here: the connection sets
        # ``conn.progressed``; the server's once-a-second tick clears it and
        # counts the ticks that passed without it (see idle_tick).
        self.idle_ticks = 0
        self.idle_closed = False  # closed by the idle sweep (for the close line's reason)
        self.peer_done = False  # the client sent EOF
        self.started = 0.0
        # The client's address: given when a PROXY header named it, else the socket's.
        self.host, self.port = client if client is not None else ("", 0)

    @staticmethod
    def make_connection(service: Service, limits: Limits) -> ServiceConnection:
        return ServiceConnection(service, limits.max_line)

    # -- asyncio callbacks ------------------------------------------------

    # uvloop's transport is an asyncio.Transport in all but name (no subclass):
    # typed as one here rather than cast() (a call) once per connection.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # Once per connection, so kept short (conn C=10 is mostly this and the
        # kernel): one clock read, no helper calls that do not decide anything.
        self.transport = transport
        server = self.server
        if not self.host:  # not proxied (a proxied client's host is never "")
            host, self.port = peer_text(transport.get_extra_info("peername"))
            self.host = sys.intern(host)  # one string per client address, not per connection
        now = server.loop.time()
        refusal = server.gate.admit(self.service.name, self.host, self.port, server.stats.open,
                                    now)
        if refusal is not None:
            if refusal.silent:
                transport.close()
            else:
                transport.write(server.gate.reply(self.service, refusal))
                Refused.close(server.gate, server.loop, transport)
            self.transport = None
            self.conn.stop_input()  # off the fast path: anything that still arrives is dropped
            return
        limits = self.limits
        transport.set_write_buffer_limits(limits.write_high, limits.write_low)
        self.started = now
        server.clients.add(self)
        stats = server.stats
        stats.open += 1
        stats.connections += 1
        server.observer.accepted(self.service.name, self.host, self.port)
        if server.draining:  # accepted just before the listener closed: its request counts
            self.begin_drain()

    def data_received(self, data: bytes) -> None:
        # The hot path: nothing pending, not metered (the common case): a chunk
        # costs one call into the sans-IO connection and one write.  A settled
        # connection is never lingering (that needs an error reply first).
        conn = self.conn
        if not conn.settled or self.server.metered:
            self._received_slowly(data)
            return
        out = conn.receive_data(data)
        if conn.settled:
            transport = self.transport
            if out and transport is not None:
                transport.write(out)
            return
        self._send(out)

    def _received_slowly(self, data: bytes) -> None:
        if self.lingering is not None:
            self._discard(len(data))
            return
        if self.server.metered:
            self._measured(data)
        else:
            self._send(self.conn.receive_data(data))

    def eof_received(self) -> bool:
        self.peer_done = True
        if self.lingering is not None:
            return False  # the client has read the error and gone: close
        if self.server.metered:
            self._measured(None)
        else:
            self._send(self.conn.receive_eof())
        # Keep the write side open: the replies still have to go out.  (TLS
        # cannot half-close: asyncio closes after a close_notify whatever we say.)
        transport = self.transport
        return transport is None or transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return
        self.transport = None
        conn = self.conn
        if conn.waiting:  # replies held: maybe jobs still running
            for job in conn.pending_jobs():
                if isinstance(job.handle, asyncio.Task):
                    job.handle.cancel()  # the pool kills the worker: its CPU goes idle
        server = self.server
        server.clients.discard(self)
        service = self.service.name
        server.gate.release(service, self.host)
        stats = server.stats
        stats.open -= 1
        stats.lines += conn.lines
        stats.errors += conn.errors
        seconds = server.loop.time() - self.started
        # The reason's rule is close_reason's; only a connection that closed for
        # an error (a line too long sets ``closing``) or idleness has one, so
        # the common close skips the two calls.
        reason = (close_reason(self.idle_closed, conn.line_too_long)
                  if self.idle_closed or conn.closing else "")
        server.observer.ended(service, self.host, self.port, conn.lines, seconds, reason)
        if server.draining or server.one_shot:
            server.maybe_finish_drain()

    def pause_writing(self) -> None:
        self.paused_by_writes = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.paused_by_writes = False
        self._update_reading()

    # -- helpers ----------------------------------------------------------

    def _send(self, out: bytes) -> int:
        """Write replies, start new jobs, and close or pause as the state says.

        Returns the number of jobs started.
        """
        transport = self.transport
        if transport is None:
            return 0
        if out:
            transport.write(out)
        jobs = self.conn.take_jobs()
        for job in jobs:
            job.handle = self.server.loop.create_task(self._run(job))
        if self.conn.finished:
            self._close(transport)
        elif self.paused_by_jobs != (self.conn.waiting > self.limits.max_waiting):
            self.paused_by_jobs = not self.paused_by_jobs
            self._update_reading()
        return len(jobs)

    def _measured(self, data: bytes | None) -> None:
        """Receive ``data`` (None: EOF) and report the figures to the observer (--metrics)."""
        receive_measured(self.conn, data, self.server.observer, self.service.name, self._send)

    def _close(self, transport: asyncio.Transport) -> None:
        """Close; unless the client has sent EOF, half-close and discard input first.

        The client may still be sending after an error reply, and during a
        drain.  Closing with unread bytes makes the kernel send a reset, and a
        reset can destroy replies before the client reads them (a drain under
        pipelined load lost 1-4% of them this way).
        """
        if self.lingering is not None:
            return  # already half-closed
        if self.peer_done or not transport.can_write_eof():
            transport.close()
            return
        self.lingering = 0
        transport.write_eof()
        self.server.loop.call_later(LINGER, transport.close)
        self._update_reading()  # a drain paused reading: resume, to discard

    def _discard(self, size: int) -> None:
        """Drop input after the last reply.  A client that broke the protocol gets
        LINGER_BYTES of grace; a drained one all of LINGER, since capping bytes
        would reset it while its owed replies are still on their way."""
        assert self.lingering is not None
        self.lingering += size
        if self.conn.closing and self.lingering >= LINGER_BYTES and self.transport:
            self.transport.close()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.lingering is not None:
            if not transport.is_reading():
                transport.resume_reading()
        elif self.paused_by_writes or self.paused_by_jobs or (
                self.server.draining and self.conn.eof):
            if transport.is_reading():
                transport.pause_reading()
        elif not transport.is_reading():
            transport.resume_reading()

    async def _run(self, job: Job) -> None:
        server = self.server
        start = time.perf_counter()
        assert isinstance(job.work, Offload)
        outcome: bytes | Exception
        try:
            outcome = await server.pool.run(job.work, owner=self)  # fair share per client
        except Exception as exc:
            outcome = exc
        self.job_finished(job, outcome, start)

    def job_finished(self, job: Job, outcome: Any, start: float) -> None:
        """Send what a finished job released, and report its figures (when metered)."""
        server = self.server
        metered = server.observer if server.metered and self.transport is not None else None
        self._send(finish_job(self.conn, job, outcome, metered, self.service.name, start))

    def idle_tick(self) -> bool:
        """Count one tick; return whether the client has now made no progress
        for its service's idle timeout (never while its work is pending)."""
        conn = self.conn
        if conn.progressed or conn.waiting:
            conn.progressed = False
            self.idle_ticks = 0
            return False
        self.idle_ticks += 1
        return self.idle_ticks >= self.limits.idle_timeout / TICK

    def begin_drain(self) -> None:
        """Close at the next reply boundary (see ServiceConnection.drain)."""
        self.conn.drain()
        self._update_reading()
        self._send(b"")

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close_idle(self) -> None:
        self.idle_closed = True  # its close line says why
        if self.transport is not None:
            self.transport.close()
