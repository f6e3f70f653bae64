"""The async serving mode: one event loop (uvloop where installed) for all clients.

This module only moves bytes.  Each client is an ``asyncio.Protocol`` around a
sans-IO :class:`~tcpkit.connection.ServiceConnection`; what it adds is what
needs a loop: writing, flow control, offloaded jobs, idle timeouts and the
graceful drain on SIGINT/SIGTERM.

Flow control works in both directions.  A client that sends without reading
fills our write buffer; above ``write_high`` bytes the transport calls
``pause_writing`` and we stop *reading* from that client until the buffer
drains below ``write_low`` (asyncio's own high/low water marks).  A client that
pipelines many slow requests is paused likewise once ``max_waiting`` replies
wait behind unfinished jobs.  Either way its memory stays bounded.

Idle timeouts use a coarse clock: one timer per server ticks once a second and
closes clients idle for too long, instead of one timer per client (cheap with
10,000 idle connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from tcpkit.connection import Job, ServiceConnection
from tcpkit.endpoints import peer_text
from tcpkit.service import RequestError, Service
from tcpkit.serving.config import Limits
from tcpkit.serving.events import Observer
from tcpkit.serving.listeners import BACKLOG, describe
from tcpkit.serving.pool import TimeLimitExceeded, WorkerCrashed, WorkerPool
from tcpkit.serving.stats import Stats

log = logging.getLogger("tcpkit")
BUSY = b"error: server busy\n"
TICK = 1.0  # seconds between idle sweeps
LINGER = 2.0  # seconds to discard a finished client's input before closing (see _Client)


@dataclass(frozen=True)
class Listener:
    """A service bound to an already listening socket."""

    service: Service
    sock: socket.socket


class _Client(asyncio.Protocol):
    """One connection: feeds bytes to its ServiceConnection, writes the replies."""

    __slots__ = (
        "conn", "host", "last_seen", "lingering", "paused_by_jobs", "paused_by_writes",
        "peer_done", "port", "server", "service", "started", "transport",
    )

    def __init__(self, server: AsyncServer, service: Service) -> None:
        self.server = server
        self.service = service
        self.conn = ServiceConnection(service, server.limits.max_line)
        self.transport: asyncio.Transport | None = None
        self.paused_by_writes = False
        self.paused_by_jobs = False
        self.peer_done = False  # the client sent EOF
        self.lingering = False  # replies are out, FIN sent; discarding input until EOF
        self.last_seen = server.tick
        self.started = 0.0
        self.host, self.port = "", 0

    # -- asyncio callbacks ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        server = self.server
        self.host, self.port = peer_text(transport.get_extra_info("peername"))
        if server.stats.open >= server.limits.max_connections or server.draining:
            server.refuse(self, "server busy")
            transport.write(BUSY)
            transport.close()
            self.transport = None
            return
        transport.set_write_buffer_limits(server.limits.write_high, server.limits.write_low)
        self.started = server.loop.time()
        server.clients.add(self)
        server.stats.open += 1
        server.stats.connections += 1
        server.observer.accepted(self.service.name, self.host, self.port)

    def data_received(self, data: bytes) -> None:
        # Progress is a request begun or finished: bytes that only lengthen an
        # unfinished line (slowloris) do not keep the connection alive, so a
        # line must be complete within the idle timeout of its first byte.
        lines, partial = self.conn.lines, self.conn.buffered
        self._send(self.conn.receive_data(data))
        if not partial or self.conn.lines != lines:
            self.last_seen = self.server.tick

    def eof_received(self) -> bool:
        self.peer_done = True
        self._send(self.conn.receive_eof())
        return True  # keep the write side open: the replies still have to go out

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return
        self.transport = None
        for job in self.conn.pending_jobs():
            if isinstance(job.handle, asyncio.Task):
                job.handle.cancel()  # the pool kills the worker: its CPU goes idle
        server = self.server
        server.clients.discard(self)
        server.stats.open -= 1
        server.stats.lines += self.conn.lines
        server.stats.errors += self.conn.errors
        seconds = server.loop.time() - self.started
        server.observer.closed(self.service.name, self.host, self.port, self.conn.lines, seconds)
        server.maybe_finish_drain()

    def pause_writing(self) -> None:
        self.paused_by_writes = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.paused_by_writes = False
        self._update_reading()

    # -- helpers ----------------------------------------------------------

    def _send(self, out: bytes) -> None:
        """Write replies, start new jobs, and close or pause as the state says."""
        transport = self.transport
        if transport is None:
            return
        if out:
            transport.write(out)
        for job in self.conn.take_jobs():
            job.handle = self.server.loop.create_task(self._run(job))
        if self.conn.finished:
            self._close_gracefully(transport)
        elif self.paused_by_jobs != (self.conn.waiting > self.server.limits.max_waiting):
            self.paused_by_jobs = not self.paused_by_jobs
            self._update_reading()

    def _close_gracefully(self, transport: asyncio.Transport) -> None:
        """Close without losing replies to a client that is still sending.

        Closing a socket with unread input makes the kernel answer with RST,
        which destroys every reply not yet delivered — a drain or a protocol
        error would lose replies the client was owed.  So, like Apache's and
        nginx's lingering close: send FIN after the replies, read and discard
        until the client's EOF, and close then, or after LINGER seconds.
        """
        if self.peer_done or not transport.can_write_eof():
            transport.close()
        elif not self.lingering:
            self.lingering = True
            transport.write_eof()
            self.server.loop.call_later(LINGER, transport.close)
            self._update_reading()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.lingering:
            if not transport.is_reading():
                transport.resume_reading()
        elif self.paused_by_writes or self.paused_by_jobs or self.server.draining:
            if transport.is_reading():
                transport.pause_reading()
        elif not transport.is_reading():
            transport.resume_reading()

    async def _run(self, job: Job) -> None:
        try:
            out = self.conn.job_done(job, await self.server.pool.run(job.work))
        except RequestError as exc:
            out = self.conn.job_failed(job, str(exc))
        except (TimeLimitExceeded, WorkerCrashed) as exc:
            out = self.conn.job_failed(job, str(exc))
        self._send(out)

    def idle_for(self, now: int) -> int:
        """Ticks since the client last sent anything, 0 while work is pending."""
        if self.conn.waiting:
            return 0
        return now - self.last_seen

    def begin_drain(self) -> None:
        """Stop taking requests; close once the ones already read are answered."""
        self.conn.stop_input()
        self._update_reading()
        self._send(b"")

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class AsyncServer:
    """Serves a set of listeners on one event loop until asked to stop."""

    mode = "async"

    def __init__(
        self,
        listeners: Sequence[Listener],
        limits: Limits | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.listeners = list(listeners)
        self.limits = limits or Limits()
        self.observer = observer or Observer()
        self.stats = Stats()
        self.clients: set[_Client] = set()
        self.pool = WorkerPool(self.limits.pool_size, self.limits.time_limit)
        self.tick = 0
        self.draining = False
        self._refused_unlogged = 0
        self._servers: list[asyncio.Server] = []
        self._stop: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop  # set by serve()

    async def serve(self) -> None:
        """Serve until SIGINT/SIGTERM (or :meth:`stop`), then drain and return."""
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._drained = asyncio.Event()
        for listener in self.listeners:
            server = await self.loop.create_server(
                lambda svc=listener.service: _Client(self, svc),  # type: ignore[misc]
                sock=listener.sock,
                backlog=BACKLOG,
            )
            self._servers.append(server)
            self.observer.listening(listener.service.name, describe(listener.sock), self.mode)
        self._install_signals()
        self.loop.set_exception_handler(_log_loop_error)
        ticker = self.loop.create_task(self._tick())
        try:
            await self._stop.wait()
            await self._drain()
        finally:
            ticker.cancel()
            await self.pool.close()

    def stop(self) -> None:
        """Begin a graceful stop (safe to call from a signal handler)."""
        if self._stop is not None:
            if self._stop.is_set():  # a second signal: stop waiting for clients
                for client in list(self.clients):
                    client.abort()
            self._stop.set()

    def refuse(self, client: _Client, reason: str) -> None:
        self.stats.busy += 1
        if self._refused_unlogged == 0:
            self.observer.refused(client.service.name, client.host, client.port, reason)
        self._refused_unlogged += 1

    def maybe_finish_drain(self) -> None:
        if self.draining and not self.clients and self._drained is not None:
            self._drained.set()

    async def _drain(self) -> None:
        self.draining = True
        for server in self._servers:
            server.close()
        log.info("draining %d connections (up to %g s)", len(self.clients),
                 self.limits.drain_timeout)
        for client in list(self.clients):
            client.begin_drain()
        self.maybe_finish_drain()
        assert self._drained is not None
        try:
            await asyncio.wait_for(self._drained.wait(), self.limits.drain_timeout)
        except TimeoutError:
            log.warning("drain timeout: closing %d connections", len(self.clients))
            for client in list(self.clients):
                client.abort()
            await asyncio.sleep(0)

    def _install_signals(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Outside the main thread (tcpkit.testing) the caller drives stop().
            with contextlib.suppress(RuntimeError, ValueError):
                self.loop.add_signal_handler(sig, self.stop)

    async def _tick(self) -> None:
        idle_ticks = self.limits.idle_timeout / TICK
        while True:
            await asyncio.sleep(TICK)
            self.tick += 1
            if self._refused_unlogged > 1:
                log.warning("refused %d more connections: server busy (max %d)",
                            self._refused_unlogged - 1, self.limits.max_connections)
            self._refused_unlogged = 0
            for client in [c for c in self.clients if c.idle_for(self.tick) >= idle_ticks]:
                self.stats.idle_closed += 1
                if client.transport is not None:
                    client.transport.close()


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Unexpected errors in callbacks: one log line (traceback only at debug level)."""
    exc = context.get("exception")
    log.error("%s: %r", context.get("message", "unexpected error"), exc)
    if exc is not None:
        log.debug("details", exc_info=exc)


def install_uvloop() -> bool:
    """Use uvloop for new event loops when it is installed."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
