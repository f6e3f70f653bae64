"""The async serving mode: one event loop (uvloop where installed) for all clients.

This module only moves bytes.  Each client is an ``asyncio.Protocol`` around a
sans-IO :class:`~tcpkit.connection.ServiceConnection`; what it adds is what
needs a loop: writing, flow control, offloaded jobs, idle timeouts and the
graceful drain on SIGINT/SIGTERM.

Each client is a :class:`~tcpkit.serving.modes.aio_client.Client` (flow control
and lingering live there); this module is the server around them.

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
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tcpkit.service import Service
from tcpkit.serving.config import Limits, Listener
from tcpkit.serving.guards.gate import TICK, Gate
from tcpkit.serving.guards.proxied import ProxyPolicy
from tcpkit.serving.guards.tls import ServerTLS, reload_certificates
from tcpkit.serving.listeners import BACKLOG, describe
from tcpkit.serving.modes.aio_client import Client
from tcpkit.serving.modes.aio_proxied import ProxiedAcceptor, read_header
from tcpkit.serving.modes.loop import log_loop_error
from tcpkit.serving.observe.events import Observer
from tcpkit.serving.observe.stats import Stats
from tcpkit.serving.offload.executors import make_executor, preload_for

if TYPE_CHECKING:
    from tcpkit.hub import Hubs

log = logging.getLogger("tcpkit")


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
        self.clients: set[Client] = set()
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

        Behind the service's --proxy-protocol we accept ourselves (see
        aio_proxied), on the original socket: nothing else closes it before the drain.
        """
        policy = self.gate.proxy_for(listener.service.name)
        if policy is not None:
            return ProxiedAcceptor(self, listener, policy), listener.sock
        tls = listener.tls
        sock = listener.sock.dup()
        service, client = listener.service, _client_class(listener.service)
        limits = self.limits_for(service)  # chosen once per listener, not per connection
        try:
            server = await self.loop.create_server(
                lambda: client(self, service, None, limits),
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

    def client_for(self, service: Service, client: tuple[str, int] | None = None) -> Client:
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
            policy = self.gate.proxy_for(service.name)
            if policy is not None:
                client = await self._inetd_header(sock, service, policy)
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

    async def _inetd_header(self, sock: socket.socket, service: Service,
                            policy: ProxyPolicy) -> tuple[str, int] | None:
        """Behind --proxy-protocol: the real client, or None (dropped and closed)."""
        arrival = await read_header(self.loop, sock, policy)
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


def _client_class(service: Service) -> type[Client]:
    """The protocol class for ``service``, chosen once per listener: sessions have their
    own, so the stateless clients' hot path does not change."""
    if not service.uses_sessions:
        return Client
    from tcpkit.serving.modes.aio_sessions import SessionClient

    return SessionClient
