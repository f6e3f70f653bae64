"""The blocking modes' accept loop, behind a proxy: PROXY headers on their way.

A trusted sender's connection is not a client until its PROXY header says
who the client is, and a header may arrive in pieces.  The accept loop must
not block on one, so each connection still sending its header waits here, on
the loop's poller, until the header is whole (then the real client is
admitted), malformed or missing (the connection is closed, counted), or late
(closed at the loop's next tick).  The parsing and the limits are
:class:`~tcpkit.serving.guards.proxied.PendingHeaders`'; this is only the
bookkeeping of which fd belongs to which listener.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Sequence

from tcpkit.serving.config import Listener
from tcpkit.serving.guards.gate import Gate
from tcpkit.serving.guards.proxied import Arrival, PendingHeaders

Admit = Callable[[Listener, socket.socket, object], None]  # serve a real client, or refuse


class HeaderWaits:
    """The connections of every proxied service whose PROXY header is not whole yet."""

    def __init__(self, listeners: Sequence[Listener], gate: Gate, admit: Admit) -> None:
        self._gate, self._admit = gate, admit
        # Per service that trusts senders (its listeners read a header; the
        # others are served plain).
        self._headers: dict[str, PendingHeaders] = {}
        for listener in listeners:
            policy = gate.proxy_for(listener.service.name)
            if policy is not None and listener.service.name not in self._headers:
                self._headers[listener.service.name] = PendingHeaders(policy)
        self._listeners: dict[int, Listener] = {}  # fd -> listener, header pending
        self.poller: select.poll | None = None  # the accept loop's, once it runs

    def wants_header(self, listener: Listener) -> bool:
        return listener.service.name in self._headers

    def __contains__(self, fd: int) -> bool:
        return fd in self._listeners

    def accepted(self, listener: Listener, sock: socket.socket, peer: object) -> None:
        """A connection from ``listener``'s proxied service: read its header."""
        arrival = self._headers[listener.service.name].arrived(sock, peer, time.monotonic())
        if arrival is not None:
            self._done(listener, arrival)
        elif self.poller is not None:
            self._listeners[sock.fileno()] = listener
            self.poller.register(sock.fileno(), select.POLLIN)

    def readable(self, fd: int) -> None:
        listener = self._listeners[fd]
        arrival = self._headers[listener.service.name].readable(fd)
        if arrival is not None:
            self._done(self._stop_waiting(fd), arrival)

    def expire(self, now: float) -> None:
        for headers in self._headers.values():
            for arrival in headers.expired(now):
                self._done(self._stop_waiting(arrival.sock.fileno()), arrival)

    def close_all(self) -> None:
        for headers in self._headers.values():
            for fd in headers.close_all():
                self._stop_waiting(fd)

    def _stop_waiting(self, fd: int) -> Listener:
        if self.poller is not None:
            self.poller.unregister(fd)
        return self._listeners.pop(fd)

    def _done(self, listener: Listener, arrival: Arrival) -> None:
        """Admit the real client, or close a connection with no (trusted) header."""
        if arrival.refused is None and arrival.client is not None:
            self._admit(listener, arrival.sock, arrival.client)
            return
        if arrival.refused is not None:
            self._gate.drop(listener.service.name, *arrival.peer, arrival.refused)
        arrival.sock.close()


__all__ = ["HeaderWaits"]
