"""The async mode's listeners behind ``--proxy-protocol``: the PROXY header first.

A connection from a proxy must not reach the service, the gate or the TLS
layer before its PROXY header is read: until then its peer is the proxy, not
the client, and the header's bytes are not the client's.  So such a listener
is not handed to ``loop.create_server``; :class:`ProxiedAcceptor` accepts on
it itself, reads each header off the socket with the same
:class:`~tcpkit.serving.guards.proxied.PendingHeaders` as the blocking modes
(event-loop readers instead of ``poll``; the server's once-a-second tick
drops late ones), and hands the socket, header taken and nothing more, to
``loop.connect_accepted_socket`` — which runs the TLS handshake, if any, and
then the ordinary protocol class, told the real client's address.

Listeners without ``--proxy-protocol`` never come here: their hot path is the
one ``create_server`` gives, unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

from tcpkit.serving.config import Listener
from tcpkit.serving.guards.proxied import Arrival, PendingHeaders, ProxyPolicy
from tcpkit.serving.modes.accepting import ACCEPT_BATCH, ACCEPT_PAUSE, CLIENT_GONE

if TYPE_CHECKING:
    from tcpkit.serving.modes.aio import AsyncServer

log = logging.getLogger("tcpkit")


class ProxiedAcceptor:
    """Accepts one listener's connections and reads their PROXY headers."""

    def __init__(self, server: AsyncServer, listener: Listener, policy: ProxyPolicy) -> None:
        self.server = server
        self.listener = listener
        self.loop = server.loop
        self.headers = PendingHeaders(policy)
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()  # connections being handed over
        listener.sock.setblocking(False)
        self.loop.add_reader(listener.sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = self.listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in CLIENT_GONE:
                    continue
                self._pause(exc)
                return
            arrival = self.headers.arrived(sock, peer, self.loop.time())
            if arrival is None:
                fd = sock.fileno()
                self.loop.add_reader(fd, self._readable, fd)
            else:
                self._done(arrival)

    def _pause(self, exc: OSError) -> None:
        """Out of descriptors (or another accept error): stop accepting a moment,
        rather than spin on a listening socket that stays readable."""
        log.warning("accept failed: %s; pausing accepts for %g s", exc.strerror or exc,
                    ACCEPT_PAUSE)
        self.loop.remove_reader(self.listener.sock.fileno())
        self.loop.call_later(ACCEPT_PAUSE, self._resume)

    def _resume(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.listener.sock.fileno(), self._accept)

    def _readable(self, fd: int) -> None:
        arrival = self.headers.readable(fd)
        if arrival is not None:
            self.loop.remove_reader(fd)
            self._done(arrival)

    def expire(self, now: float) -> None:
        """The tick: drop the connections whose header is late."""
        for arrival in self.headers.expired(now):
            self.loop.remove_reader(arrival.sock.fileno())
            self._done(arrival)

    def _done(self, arrival: Arrival) -> None:
        if arrival.refused is not None or arrival.client is None or self.closed:
            if arrival.refused is not None:
                self.server.gate.drop(self.listener.service.name, *arrival.peer,
                                      arrival.refused)
            arrival.sock.close()
            return
        task = self.loop.create_task(self._connect(arrival.sock, arrival.client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, sock: socket.socket, client: tuple[str, int]) -> None:
        """Serve ``sock`` as ``client``: the gate admits it in connection_made."""
        tls = self.listener.tls
        try:
            await self.loop.connect_accepted_socket(
                lambda: self.server.client_for(self.listener.service, client), sock,
                ssl=tls.context if tls else None,
                ssl_handshake_timeout=tls.handshake_timeout if tls else None)
        except (OSError, TimeoutError, asyncio.CancelledError) as exc:
            # A failed or late TLS handshake: closed unlogged, as create_server does.
            log.debug("connection from %s:%d ended before it was served: %r",
                      client[0], client[1], exc)
            sock.close()

    def close(self) -> None:
        """Stop accepting (the drain); drop the connections still sending a header."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.listener.sock.fileno())
        for fd in list(self.headers.waiting):
            self.loop.remove_reader(fd)
        self.headers.close_all()


async def read_header(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                      policy: ProxyPolicy) -> Arrival:
    """The one connection of ``--inetd``: wait (at most the policy's timeout) for its header."""
    headers = PendingHeaders(policy)
    try:
        peer: object = sock.getpeername()
    except OSError:
        peer = None
    arrival = headers.arrived(sock, peer, loop.time())
    if arrival is not None:
        return arrival
    done: asyncio.Future[Arrival] = loop.create_future()
    fd = sock.fileno()

    def readable() -> None:
        finished = headers.readable(fd)
        if finished is not None and not done.done():
            done.set_result(finished)

    loop.add_reader(fd, readable)
    try:
        return await asyncio.wait_for(done, policy.timeout)
    except TimeoutError:
        return headers.expired(float("inf"))[0]
    finally:
        loop.remove_reader(fd)
