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

Running out of file descriptors (SPEC §2.1: pause, log, never stop): libuv
answers EMFILE on accept by resetting every waiting client, silently, and
uvloop closes the listening socket for good on other accept errors.  So the
server refuses clients with ``error: server busy`` before descriptors run out
(the :class:`~tcpkit.serving.guards.gate.Gate`'s budget, the same comparison as
``--max-connections``, so it costs nothing per connection), and gives libuv a
duplicate of each listening socket: if libuv closes it anyway, the tick
notices and serves the original again.

Idle timeouts use a coarse clock: one timer per server ticks once a second and
closes clients idle for too long, instead of one timer per client (cheap with
10,000 idle connections).  What counts as activity is the connection's
``progressed`` flag (the slowloris rule lives in the sans-IO connection), so
the hot path adds nothing for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from tcpkit.connection import Job, ServiceConnection
from tcpkit.endpoints import peer_text
from tcpkit.service import Offload, Service
from tcpkit.serving.config import Limits, Listener
from tcpkit.serving.guards.gate import LINGER, LINGER_BYTES, TICK, Gate
from tcpkit.serving.guards.tls import ServerTLS, reload_certificates
from tcpkit.serving.listeners import BACKLOG, describe
from tcpkit.serving.modes.aio_proxied import ProxiedAcceptor, read_header
from tcpkit.serving.modes.aio_refused import Refused
from tcpkit.serving.modes.loop import log_loop_error
from tcpkit.serving.observe.events import Observer, close_reason, receive_measured
from tcpkit.serving.observe.stats import Stats
from tcpkit.serving.offload.executors import make_executor, preload_for
from tcpkit.serving.offload.jobs import finish_job

if TYPE_CHECKING:
    from tcpkit.hub import Hubs

log = logging.getLogger("tcpkit")


class _Client(asyncio.Protocol):
    """One connection: feeds bytes to its ServiceConnection, writes the replies."""

    # __slots__ throughout (here, ServiceConnection, LineFramer): with 10,000
    # idle clients every per-connection byte counts.
    __slots__ = (
        "conn", "host", "idle_closed", "idle_ticks", "limits", "lingering", "paused_by_jobs",
        "paused_by_writes", "peer_done", "port", "server", "service", "started", "transport",
    )

    def __init__(self, server: AsyncServer, service: Service,
                 client: tuple[str, int] | None = None) -> None:
        self.server = server
        self.service = service
        # This service's limits (its [services.NAME] table's, else the
        # server's), looked up once here: nothing per chunk.
        self.limits = server.limits_for(service)
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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        server = self.server
        if not self.host:  # not proxied (a proxied client's host is never "")
            host, self.port = peer_text(transport.get_extra_info("peername"))
            self.host = sys.intern(host)  # one string per client address, not per connection
        refusal = server.gate.admit(self.service.name, self.host, self.port, server.stats.open,
                                    server.loop.time())
        if refusal is not None:
            if refusal.silent:
                transport.close()
            else:
                transport.write(refusal.line)
                Refused.close(server.gate, server.loop, transport)
            self.transport = None
            self.conn.stop_input()  # off the fast path: anything that still arrives is dropped
            return
        transport.set_write_buffer_limits(self.limits.write_high, self.limits.write_low)
        self.started = server.loop.time()
        server.clients.add(self)
        server.stats.open += 1
        server.stats.connections += 1
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
        for job in self.conn.pending_jobs():
            if isinstance(job.handle, asyncio.Task):
                job.handle.cancel()  # the pool kills the worker: its CPU goes idle
        server = self.server
        server.clients.discard(self)
        server.gate.release(self.service.name, self.host)
        server.stats.open -= 1
        server.stats.lines += self.conn.lines
        server.stats.errors += self.conn.errors
        seconds = server.loop.time() - self.started
        server.observer.ended(self.service.name, self.host, self.port, self.conn.lines, seconds,
                               close_reason(self.idle_closed, self.conn.line_too_long))
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
        self.metered = self.observer.measures_traffic
        self.one_shot = False  # serving a single connection (inetd): stop when it closes
        self.stats = Stats()
        self.gate = Gate(self.limits, self.observer, self.stats, self.listeners)
        # Each service's own limits (a [services.NAME] table), where it has them.
        self.service_limits = {listener.service.name: listener.limits
                               for listener in self.listeners if listener.limits is not None}
        self.clients: set[_Client] = set()
        self.pool = make_executor(self.limits, preload_for(lst.service for lst in self.listeners))
        self.tick = 0
        self.draining = False
        self._servers: list[asyncio.Server | ProxiedAcceptor] = []
        self._serving_socks: list[socket.socket] = []  # the duplicates libuv listens on
        self._stop: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop  # set by serve()
        self.hub: Hubs | None = None  # sessions' hubs, made when the first session needs one
        self.farewells: set[asyncio.Task[None]] = set()  # disconnected() hooks running

    async def serve(self) -> None:
        """Serve until SIGINT/SIGTERM (or :meth:`stop`), then drain and return."""
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._drained = asyncio.Event()
        self._install_signals()  # before "Listening on": a signal from then on is handled
        for listener in self.listeners:
            server, sock = await self._listen(listener)
            self._servers.append(server)
            self._serving_socks.append(sock)
            self.observer.listening(listener.service.name, describe(listener.sock), self.mode)
        self.gate.budget()
        self.loop.set_exception_handler(log_loop_error)
        ticker = self.loop.create_task(self._tick())
        try:
            await self._stop.wait()
            await self._drain()
        finally:
            ticker.cancel()
            await self.pool.close()
            await self._close_hub()

    async def _listen(self, listener: Listener
                      ) -> tuple[asyncio.Server | ProxiedAcceptor, socket.socket]:
        """Serve ``listener`` (again): libuv gets a duplicate of its socket to close.

        Behind --proxy-protocol we accept ourselves (see aio_proxied), on the
        original socket: nothing else closes it before the drain.
        """
        if self.gate.proxy is not None:
            return ProxiedAcceptor(self, listener, self.gate.proxy), listener.sock
        tls = listener.tls
        sock = listener.sock.dup()
        service, client = listener.service, _client_class(listener.service)
        try:
            server = await self.loop.create_server(
                lambda: client(self, service),
                sock=sock,
                backlog=BACKLOG,
                ssl=tls.context if tls else None,
                ssl_handshake_timeout=tls.handshake_timeout if tls else None,
            )
        except BaseException:
            sock.close()
            raise
        return server, sock

    async def _relisten(self) -> None:
        """Serve again any listener whose socket libuv closed after an accept error."""
        for index, sock in enumerate(self._serving_socks):
            if sock.fileno() != -1 or self.draining:
                continue
            listener = self.listeners[index]
            log.error("the event loop closed the listening socket %s after an accept "
                      "error; listening on it again", describe(listener.sock),
                      extra={"event": "relisten"})
            self._servers[index].close()
            try:
                self._servers[index], self._serving_socks[index] = await self._listen(listener)
            except OSError as exc:  # e.g. no descriptor for the duplicate: next tick
                log.error("cannot listen again yet: %s", exc.strerror or exc)

    def limits_for(self, service: Service) -> Limits:
        """The limits ``service``'s clients are served with: its own, else the server's."""
        return self.service_limits.get(service.name, self.limits)

    def client_for(self, service: Service, client: tuple[str, int] | None = None) -> _Client:
        """A protocol instance for a new connection to ``service`` (as ``client``)."""
        return _client_class(service)(self, service, client)

    def stop(self) -> None:
        """Begin a graceful stop (safe to call from a signal handler)."""
        if self._stop is not None:
            if self._stop.is_set():  # a second signal: stop waiting for clients
                for client in list(self.clients):
                    client.abort()
            self._stop.set()

    async def serve_connection(self, sock: socket.socket, service: Service,
                               tls: ServerTLS | None = None) -> None:
        """Serve one already connected socket (``--inetd``), until it closes or a signal."""
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._drained = asyncio.Event()
        self.one_shot = True
        self._install_signals()
        self.loop.set_exception_handler(log_loop_error)
        ticker = self.loop.create_task(self._tick())
        waiters = [self.loop.create_task(event.wait()) for event in (self._stop, self._drained)]
        try:
            client = None
            if self.gate.proxy is not None:
                client = await self._inetd_header(sock, service)
                if client is None:
                    return  # dropped: no (trusted) PROXY header
            await self.loop.connect_accepted_socket(
                lambda: self.client_for(service, client), sock,
                ssl=tls.context if tls else None,
                ssl_handshake_timeout=tls.handshake_timeout if tls else None)
            self.maybe_finish_drain()
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if not self._drained.is_set():
                await self._drain()
        finally:
            ticker.cancel()
            for waiter in waiters:
                waiter.cancel()
            await self.pool.close()
            await self._close_hub()

    async def _inetd_header(self, sock: socket.socket,
                            service: Service) -> tuple[str, int] | None:
        """Behind --proxy-protocol: the real client, or None (dropped and closed)."""
        assert self.gate.proxy is not None
        arrival = await read_header(self.loop, sock, self.gate.proxy)
        if arrival.client is not None:
            return arrival.client
        if arrival.refused is not None:
            self.gate.drop(service.name, *arrival.peer, arrival.refused)
        sock.close()
        return None

    async def _close_hub(self) -> None:
        """Close the sessions' hubs once their disconnected() hooks, which may still be
        using them (leaving a room, saying goodbye), are done."""
        if self.farewells:
            await asyncio.wait(self.farewells, timeout=self.limits.drain_timeout)
        if self.hub is not None:
            self.hub.close()

    def maybe_finish_drain(self) -> None:
        if (self.draining or self.one_shot) and not self.clients and self._drained is not None:
            self._drained.set()

    async def _drain(self) -> None:
        self.draining = True
        for server in self._servers:
            server.close()
        for listener in self.listeners:
            listener.sock.close()  # the original: new clients are refused from now on
        await asyncio.sleep(0)  # clients accepted before the close are made (and drain)
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
        # SIGHUP (systemctl reload) re-reads certificates; it never stops the server.
        with contextlib.suppress(RuntimeError, ValueError):
            self.loop.add_signal_handler(signal.SIGHUP, self._reload)

    def _reload(self) -> None:
        reload_certificates(listener.tls for listener in self.listeners)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.tick += 1
            self.gate.tick(self.stats.open)
            for server in self._servers:
                if isinstance(server, ProxiedAcceptor):
                    server.expire(self.loop.time())
            await self._relisten()
            for client in [c for c in self.clients if c.idle_tick()]:
                self.stats.idle_closed += 1
                self.observer.failed(client.service.name, "idle_timeout")
                client.close_idle()


def _client_class(service: Service) -> type[_Client]:
    """The protocol class for ``service``, chosen once per listener: sessions have their
    own, so the stateless clients' hot path does not change."""
    if not service.uses_sessions:
        return _Client
    from tcpkit.serving.modes.aio_sessions import SessionClient

    return SessionClient
