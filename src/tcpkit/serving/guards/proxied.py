"""Reading a connection's PROXY header off its socket, for every serving mode.

The header comes before anything else — before a TLS handshake, before the
service's first byte — and must be taken off the socket without taking a byte
more: the bytes that follow belong to whoever reads next (the TLS layer, the
service).  :class:`PendingHeader` therefore peeks (``MSG_PEEK``) and takes
only what :meth:`~tcpkit.serving.guards.proxy.HeaderReader.peek` says is
header.  It never blocks: a mode calls :meth:`PendingHeader.read` when the
socket is readable (the event loop's reader, the accept loop's ``poll``) and
drops the connection when :meth:`PendingHeader.expired` says it took too long.
:class:`PendingHeaders` is that bookkeeping for the listeners of one service
(each service has its own trusted senders), the same for the event loop and
the blocking accept loop: each mode only watches
the descriptors it names and acts on the :class:`Arrival` it gets back.

:class:`ProxyPolicy` is who may send a header (``--proxy-protocol CIDR,...``, or a
``[services.NAME]`` table's ``proxy-protocol``):
the spec forbids guessing, so from a trusted sender a header is required and
from anyone else none is believed — such a connection is refused outright.
"""

from __future__ import annotations

import socket
from typing import NamedTuple

from tcpkit.endpoints import peer_text
from tcpkit.serving.guards.access import IPNetwork, Networks, client_address
from tcpkit.serving.guards.proxy import (
    DEFAULT_MAX_SIZE,
    HeaderReader,
    ProxyHeader,
    ProxyHeaderError,
)

# Seconds a trusted sender has to deliver its header.  The spec asks for "at
# least 3 seconds to cover a TCP retransmit"; HAProxy sends it with the
# connection, so only a broken or hostile sender ever waits this long.
HEADER_TIMEOUT = 5.0
# Connections whose header is being read at once, at most: each holds a
# descriptor before any limit has counted it.
MAX_PENDING = 1024


class Refused(NamedTuple):
    """Why a connection was dropped before it was served: a metrics kind, a log reason."""

    kind: str  # proxy_untrusted, proxy_header
    reason: str


class ProxyPolicy:
    """The trusted senders of PROXY headers, and the limits on reading one."""

    def __init__(self, trusted: Networks | tuple[IPNetwork, ...],
                 timeout: float = HEADER_TIMEOUT, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.trusted = trusted if isinstance(trusted, Networks) else Networks(trusted)
        self.timeout = timeout
        self.max_size = max_size

    def untrusted(self, host: str) -> Refused | None:
        """None if ``host`` may send a header; a unix socket's peer may (its file
        permissions decide who connects), an IP address must be in the list."""
        address = client_address(host)
        if address is None or self.trusted.matches(address):
            return None
        return Refused("proxy_untrusted", f"not a trusted PROXY sender ({self.trusted})")

    def pending(self, sock: socket.socket, now: float) -> PendingHeader:
        return PendingHeader(sock, HeaderReader(self.max_size), now + self.timeout)


class PendingHeader:
    """One accepted, non-blocking socket whose PROXY header is on its way."""

    __slots__ = ("deadline", "reader", "sock")

    def __init__(self, sock: socket.socket, reader: HeaderReader, deadline: float) -> None:
        self.sock = sock
        self.reader = reader
        self.deadline = deadline

    def read(self) -> ProxyHeader | None:
        """Take what has arrived; the header once complete, else None.

        Raises ProxyHeaderError for a bad header or a connection that ended
        before one; OSError as the socket does (e.g. a reset).
        """
        try:
            data = self.sock.recv(self.reader.max_size, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return None
        if not data:
            raise ProxyHeaderError("connection closed before its PROXY header")
        header, take = self.reader.peek(data)
        while take > 0:  # already queued: these reads return at once
            taken = len(self.sock.recv(take))
            if not taken:
                raise ProxyHeaderError("connection closed before its PROXY header")
            take -= taken
        return header

    def expired(self, now: float) -> bool:
        return now >= self.deadline


def header_refused(exc: ProxyHeaderError) -> Refused:
    return Refused("proxy_header", str(exc))


def timed_out(policy: ProxyPolicy) -> Refused:
    return Refused("proxy_header", f"no PROXY header within {policy.timeout:g} s")


Peer = tuple[str, int]
TOO_MANY = Refused("proxy_header", f"more than {MAX_PENDING} PROXY headers pending")


class Arrival(NamedTuple):
    """A connection done with its PROXY header: the real ``client``, or why it is dropped."""

    sock: socket.socket
    peer: Peer  # the socket's peer: the proxy
    client: Peer | None  # the real client (None when refused)
    refused: Refused | None


class PendingHeaders:
    """The trusted connections of one service (one listener, in the async mode)
    whose header is on its way.

    A mode hands over each accepted socket (:meth:`arrived`), watches the
    descriptors of those still waiting (:attr:`waiting`) for input and calls
    :meth:`readable`, and calls :meth:`expired` about once a second.  Each
    call returns the connections that are done: the mode stops watching them,
    then closes the refused ones (after :meth:`Gate.drop`) and admits the rest
    as their real client.  At most ``limit`` wait at once.
    """

    def __init__(self, policy: ProxyPolicy, limit: int = MAX_PENDING) -> None:
        self.policy = policy
        self.limit = limit
        self.waiting: dict[int, tuple[PendingHeader, Peer]] = {}

    def arrived(self, sock: socket.socket, peer: object, now: float) -> Arrival | None:
        """A new connection: done at once (refused, or its header already in) or None."""
        socket_peer = peer_text(peer)
        refused = self.policy.untrusted(socket_peer[0])
        if refused is None and len(self.waiting) >= self.limit:
            refused = TOO_MANY
        if refused is not None:
            return Arrival(sock, socket_peer, None, refused)
        sock.setblocking(False)
        pending = self.policy.pending(sock, now)
        arrival = _read(pending, socket_peer)
        if arrival is None:
            self.waiting[sock.fileno()] = (pending, socket_peer)
        return arrival

    def readable(self, fd: int) -> Arrival | None:
        """Input on a waiting descriptor: the connection if that finished it."""
        pending, socket_peer = self.waiting[fd]
        arrival = _read(pending, socket_peer)
        if arrival is not None:
            del self.waiting[fd]
        return arrival

    def expired(self, now: float) -> list[Arrival]:
        """The connections whose header is late: refused, no longer waiting."""
        late = [fd for fd, (pending, _) in self.waiting.items() if pending.expired(now)]
        refused = timed_out(self.policy)
        arrivals = []
        for fd in late:
            pending, socket_peer = self.waiting.pop(fd)
            arrivals.append(Arrival(pending.sock, socket_peer, None, refused))
        return arrivals

    def close_all(self) -> list[int]:
        """Close every waiting connection (the server stops); their descriptors."""
        fds = list(self.waiting)
        for pending, _ in self.waiting.values():
            pending.sock.close()
        self.waiting.clear()
        return fds


def _read(pending: PendingHeader, socket_peer: Peer) -> Arrival | None:
    try:
        header = pending.read()
    except ProxyHeaderError as exc:
        return Arrival(pending.sock, socket_peer, None, header_refused(exc))
    except OSError as exc:
        failed = Refused("proxy_header", f"connection failed before its PROXY header: "
                                         f"{exc.strerror or exc}")
        return Arrival(pending.sock, socket_peer, None, failed)
    if header is None:
        return None
    return Arrival(pending.sock, socket_peer, peer_text(header.client(socket_peer)), None)
