"""Listening sockets, opened before any serving mode starts.

Every mode (and, later, every worker process) serves on sockets opened here, so
binding rules and error messages are the same everywhere.  The default address
is every interface of both families: one ``[::]`` socket with ``IPV6_V6ONLY``
off accepts IPv4 clients too (as ``::ffff:a.b.c.d``); a host without IPv6 gets
``0.0.0.0`` instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

from tcpkit.endpoints import Endpoint, format_address
from tcpkit.errors import Error

BACKLOG = 4096


class ListenError(Error):
    """A socket could not be opened; the message is ready for the user."""


def open_listener(endpoint: Endpoint, backlog: int = BACKLOG) -> socket.socket:
    """A listening socket for ``endpoint``, or ListenError with a clear reason."""
    try:
        if endpoint.path is not None:
            return _listen_unix(endpoint.path, backlog)
        if endpoint.host is None:
            return _listen_any(endpoint.port, backlog)
        return _listen_host(endpoint.host, endpoint.port, backlog)
    except OSError as exc:
        shown = str(endpoint) if endpoint.host or endpoint.path else f":{endpoint.port}"
        reason = exc.strerror or str(exc)
        raise ListenError(f"cannot listen on {shown}: {reason}") from None


def _bound(family: int, address: tuple[object, ...] | str, backlog: int,
           dual_stack: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual_stack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _listen_any(port: int, backlog: int) -> socket.socket:
    if socket.has_ipv6:
        try:
            return _bound(socket.AF_INET6, ("::", port), backlog, dual_stack=True)
        except OSError as exc:
            # EADDRINUSE is a real answer; anything else means no usable IPv6.
            if exc.errno == errno.EADDRINUSE:
                raise
    return _bound(socket.AF_INET, ("0.0.0.0", port), backlog)


def _listen_host(host: str, port: int, backlog: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    return _bound(family, address, backlog)


def _listen_unix(path: str, backlog: int) -> socket.socket:
    # A socket file left by a crashed server is replaced; anything else at
    # the path (a regular file, a live server) is an error, never deleted.
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode) and not _unix_alive(path):
            os.unlink(path)
    return _bound(socket.AF_UNIX, path, backlog)


def _unix_alive(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def send_at_once(sock: socket.socket) -> None:
    """Turn Nagle's algorithm off on an accepted TCP client (a no-op on unix sockets).

    A session writes unsolicited lines while earlier ones are still unacknowledged;
    with Nagle on, each such line waits for the peer's delayed ACK (~40 ms) before
    it leaves.  The async mode's transports set ``TCP_NODELAY`` by themselves; the
    blocking modes call this for every client, so every mode sends alike.
    """
    if sock.family != socket.AF_UNIX:
        with contextlib.suppress(OSError):  # the client may already be gone
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def describe(sock: socket.socket) -> str:
    """The address a socket really listens on, e.g. ``127.0.0.1:43121``."""
    address = sock.getsockname()
    if isinstance(address, str):
        return f"unix:{address}"
    return format_address(address[0], address[1])
