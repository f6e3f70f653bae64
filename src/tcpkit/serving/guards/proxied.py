"""Reading a connection's PROXY header off its socket, for every serving mode.

The header comes before anything else — before a TLS handshake, before the
service's first byte — and must be taken off the socket without taking a byte
more: the bytes that follow belong to whoever reads next (the TLS layer, the
service).  :class:`PendingHeader` therefore peeks (``MSG_PEEK``) and takes
only what :meth:`~tcpkit.serving.guards.proxy.HeaderReader.peek` says is
header.  It never blocks: a mode calls :meth:`PendingHeader.read` when the
socket is readable (the event loop's reader, the accept loop's ``poll``) and
drops the connection when :meth:`PendingHeader.expired` says it took too long.

:class:`ProxyPolicy` is who may send a header (``--proxy-protocol CIDR,...``):
the spec forbids guessing, so from a trusted sender a header is required and
from anyone else none is believed — such a connection is refused outright.
"""

from __future__ import annotations

import socket
from typing import NamedTuple

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
