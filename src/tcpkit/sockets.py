"""An IO::Socket::INET for Python: sockets made in one call, with line I/O.

The article builds everything on Perl's IO::Socket::INET, which hides the four
or five socket calls behind one constructor and gives a handle you can read
lines from.  :class:`INETSocket` does the same (this runs, as a doctest):

>>> server = INETSocket.listen_on("127.0.0.1:0")       # socket + bind + listen
>>> sock = INETSocket.connect("127.0.0.1", server.sockport, timeout=10)  # + connect
>>> client = server.accept()
>>> client.peerhost, client.peerport == sock.sockport
('127.0.0.1', True)
>>> sock.print("hello")                                # a line, LF added
>>> client.readline()
b'hello\\n'
>>> for handle in (client, sock, server):
...     handle.close()

Against the reverse service, ``INETSocket.connect("localhost:7800")`` and
``sock.print("hello"); sock.readline()`` give ``b"olleh\\n"``.

The individual calls (:meth:`INETSocket.socket`, :meth:`bind`, :meth:`listen`,
:meth:`connect_to`) are there too, for programs that show each step as the
article's do.  Perl's own option names, and its methods (``sockaddr``,
``connected``, ``shutdown(HOW)``, ``timeout``, ``send``/``recv`` for UDP), work
through :meth:`INETSocket.new`; :mod:`tcpkit.inet_options` checks each option
(docs/inetsocket.md has the table).
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import socket
import ssl
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Self

from tcpkit import inet_options
from tcpkit.endpoints import Endpoint, format_address, parse_endpoint, peer_text, resolve_port
from tcpkit.errors import Error
from tcpkit.serving.listeners import ListenError, open_listener
from tcpkit.tlsclient import TLSChannel, client_context, handshake_failure

DEFAULT_BACKLOG = 128


class ConnectError(Error, OSError):
    """A connection could not be made; the message is ready for the user."""


def _endpoint(peer: str | Endpoint, port: int | str | None) -> Endpoint:
    if isinstance(peer, Endpoint):
        return peer
    if port is not None:
        return Endpoint(host=peer, port=port if isinstance(port, int) else resolve_port(port))
    return parse_endpoint(peer)


def _reason(exc: OSError) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return handshake_failure(exc)
    if exc.errno and exc.errno > 0 and not isinstance(exc, socket.gaierror):
        return os.strerror(exc.errno)  # asyncio's strerror is "Connect call failed (...)"
    return exc.strerror or str(exc)


def connect_error(endpoint: Endpoint, exc: OSError) -> ConnectError:
    """The one-line ``cannot connect to HOST:PORT: reason`` of a failed connect.

    Used by every client (blocking and asyncio), so they all say it the same way.
    """
    shown = str(endpoint) if endpoint.host or endpoint.path else f"localhost:{endpoint.port}"
    return ConnectError(f"cannot connect to {shown}: {_reason(exc)}")


class INETSocket:
    """A TCP (or unix) socket with file-like line I/O, in the style of IO::Socket::INET."""

    def __init__(self, sock: socket.socket | None = None, family: int = socket.AF_INET6,
                 tls: TLSChannel | None = None, timeout: float | None = None) -> None:
        self.sock = sock if sock is not None else socket.socket(family, socket.SOCK_STREAM)
        self._tls = tls  # TLS over self.sock (the plain socket stays the one for addresses)
        self._buffered: io.BufferedReader | None = None  # the line reader, made on first use
        self._timeout = timeout  # Perl's Timeout: for connect and accept
        self._sender: Any = None  # a UDP socket's last sender (Perl's peername after recv)

    @property
    def _reader(self) -> io.BufferedReader:
        if self._buffered is None:
            self._buffered = self._tls.reader() if self._tls else self.sock.makefile("rb")
        return self._buffered

    # -- making sockets in one call ---------------------------------------

    @classmethod
    def connect(cls, peer: str | Endpoint, port: int | str | None = None,
                timeout: float | None = None, tls: bool = False,
                ca: str | None = None) -> Self:
        """A connected client socket: ``connect("host:7800")`` or ``connect("host", "reverse")``.

        ``tls=True`` (or a ``ca`` file to trust instead of the system's
        certificates) speaks TLS and checks the server's certificate for the host name.
        """
        endpoint = _endpoint(peer, port)
        context = client_context(ca) if tls or ca else None  # TLSSetupError before connecting
        try:
            if endpoint.path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(endpoint.path)
            else:
                address = (endpoint.host or "localhost", endpoint.port)
                sock = socket.create_connection(address, timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            raise connect_error(endpoint, exc) from None
        if context is None:
            return cls(sock)
        channel = TLSChannel(sock, context, endpoint.host or "localhost", timeout)
        try:
            channel.handshake()
        except OSError as exc:  # ssl.SSLError is an OSError too
            sock.close()
            raise connect_error(endpoint, exc) from None
        return cls(sock, tls=channel)

    @property
    def is_tls(self) -> bool:
        return self._tls is not None

    @classmethod
    def listen_on(cls, local: str | int | Endpoint = 0,
                  backlog: int = DEFAULT_BACKLOG) -> Self:
        """A listening socket: ``listen_on(7800)``, ``listen_on("127.0.0.1:0")``."""
        if isinstance(local, int):
            endpoint = Endpoint(port=local)
        elif isinstance(local, str):
            endpoint = parse_endpoint(local)
        else:
            endpoint = local
        sock = open_listener(endpoint, backlog)
        sock.setblocking(True)
        return cls(sock)

    @classmethod
    def new(cls, *peer: str, **options: Any) -> Self:
        """IO::Socket::INET->new with Perl's option names (see :mod:`tcpkit.inet_options`).

        ``new("host:port")`` is ``new(PeerAddr="host:port")``, as in Perl.  A bad
        or unknown option is a ValueError naming it; a failed connect a
        ConnectError, a failed bind or listen a ListenError.
        """
        if len(peer) > 1:
            raise TypeError("new() takes one positional argument, PeerAddr, as in Perl")
        if peer:
            if "PeerAddr" in options or "PeerHost" in options:
                raise ValueError("PeerAddr given twice: positionally and by name")
            options["PeerAddr"] = peer[0]
        plan = inet_options.plan(options)
        try:
            sock = inet_options.open_socket(plan)
        except OSError as exc:
            raise (ConnectError(str(exc)) if plan.peer else ListenError(str(exc))) from None
        return cls(sock, timeout=plan.timeout)

    # -- the individual calls, for programs that show each step ---------

    @classmethod
    def socket(cls, family: int = socket.AF_INET6) -> Self:
        """``socket()``: a fresh, unbound TCP socket."""
        return cls(socket.socket(family, socket.SOCK_STREAM))

    def bind(self, host: str | None = None, port: int = 0) -> None:
        """``bind()``: every interface (dual-stack for IPv6) unless ``host`` is given."""
        if self.sock.family == socket.AF_INET6 and host is None:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        default = "::" if self.sock.family == socket.AF_INET6 else "0.0.0.0"
        try:
            self.sock.bind((host or default, port))
        except OSError as exc:
            raise ListenError(f"cannot listen on {host or ''}:{port}: {_reason(exc)}") from None

    def connect_to(self, host: str, port: int, timeout: float | None = None) -> None:
        """``connect()`` this socket to ``host``:``port`` (raises ConnectError)."""
        self.sock.settimeout(timeout)
        try:
            self.sock.connect((host, port))
        except OSError as exc:
            shown = format_address(host, port)
            raise ConnectError(f"cannot connect to {shown}: {_reason(exc)}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def listen(self, backlog: int = DEFAULT_BACKLOG) -> None:
        """``listen()``: start accepting connections."""
        self.sock.listen(backlog)

    def accept(self) -> INETSocket:
        """Wait for a client; return its connected socket (same kind of object).

        With a :meth:`timeout` (Perl's ``Timeout``) the wait is bounded:
        TimeoutError when no client came.  The new socket has the same timeout.
        """
        if self._timeout is not None and self.sock.getblocking():
            ready, _, _ = select.select([self.sock], [], [], self._timeout)
            if not ready:
                raise TimeoutError(f"no client within {self._timeout:g} s (accept timed out)")
        sock, _ = self.sock.accept()
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return INETSocket(sock, timeout=self._timeout)

    def timeout(self, *value: float | None) -> float | None:
        """Perl's ``timeout([VAL])``: the timeout for connect and accept; with a
        value, set it and return the previous one."""
        previous = self._timeout
        if value:
            self._timeout = inet_options.check_timeout(value[0])
        return previous

    # -- addresses ---------------------------------------------------------

    def _peer(self) -> tuple[str, int]:
        """The connected peer, or an unconnected UDP socket's last sender (as Perl)."""
        try:
            return peer_text(self.sock.getpeername())
        except OSError:
            if self._sender is None:
                raise
            return peer_text(self._sender)

    @property
    def peerhost(self) -> str:
        """The peer's IP address as text (IPv4-mapped addresses shown as IPv4)."""
        return self._peer()[0]

    @property
    def peerport(self) -> int:
        return self._peer()[1]

    @property
    def connected(self) -> tuple[str, int] | None:
        """Perl's ``connected``: the peer's (host, port) when connected, else None."""
        try:
            return peer_text(self.sock.getpeername())
        except OSError:
            return None

    @property
    def peeraddr(self) -> bytes:
        """The peer's address in packed binary form, as Perl's ``peeraddr``."""
        host = self.peerhost
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.inet_pton(family, host)

    @property
    def sockhost(self) -> str:
        return peer_text(self.sock.getsockname())[0]

    @property
    def sockport(self) -> int:
        return peer_text(self.sock.getsockname())[1]

    @property
    def sockaddr(self) -> bytes:
        """The local address in packed binary form, as Perl's ``sockaddr``."""
        host = self.sockhost
        return socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)

    @property
    def socktype(self) -> int:
        """``socket.SOCK_STREAM`` (TCP) or ``socket.SOCK_DGRAM`` (UDP), as Perl's ``socktype``."""
        return int(self.sock.type)

    # -- line I/O ----------------------------------------------------------

    def readline(self) -> bytes:
        """The next line with its terminator; ``b""`` at end of stream."""
        return self._reader.readline()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def recv(self, size: int = 65536) -> bytes:
        """Whatever bytes are available (reads through the line buffer).

        On a UDP socket: one datagram; :attr:`peerhost`/:attr:`peerport` then
        name its sender, and :meth:`send` without ``to`` answers it (as Perl).
        """
        if self.sock.type == socket.SOCK_DGRAM:
            data, self._sender = self.sock.recvfrom(size)
            return data
        return self._reader.read1(size)

    def send(self, data: bytes | str, to: str | tuple[str, int] | None = None) -> int:
        """Send ``data`` (one datagram on UDP); the number of bytes sent.

        ``to`` (``"host:port"`` or a tuple) addresses an unconnected UDP
        socket; without it the datagram goes to the connected peer, or to the
        last sender.
        """
        raw = data.encode() if isinstance(data, str) else data
        if self.sock.type != socket.SOCK_DGRAM:
            self.write(raw)
            return len(raw)
        target = self._sender if to is None and self.connected is None else None
        if to is not None:
            target = self._address_of(to)
        return self.sock.sendto(raw, target) if target is not None else self.sock.send(raw)

    def _address_of(self, to: str | tuple[str, int]) -> Any:
        host, port = to if isinstance(to, tuple) else inet_options.split_host(to)
        if port is None:
            raise ValueError(f"send to {to!r}: needs a port ('host:port')")
        number = inet_options.port_number("send to", port, "udp")
        mapped = socket.AI_V4MAPPED if self.sock.family == socket.AF_INET6 else 0
        return socket.getaddrinfo(host, number, self.sock.family, socket.SOCK_DGRAM, 0,
                                  mapped)[0][4]

    def write(self, data: bytes | str) -> None:
        """Send all of ``data``."""
        raw = data.encode() if isinstance(data, str) else data
        if self._tls is not None:
            self._tls.sendall(raw)
        else:
            self.sock.sendall(raw)

    def print(self, *lines: bytes | str) -> None:
        """Send each argument as a line (LF added), like Perl's ``print $sock``."""
        self.write(b"".join((x.encode() if isinstance(x, str) else x) + b"\n" for x in lines))

    def settimeout(self, timeout: float | None) -> None:
        if self._tls is not None:
            self._tls.timeout = timeout
        else:
            self.sock.settimeout(timeout)

    def shutdown(self, how: int) -> None:
        """Perl's ``shutdown(HOW)``: 0 stops reading, 1 writing (half-close), 2 both."""
        if how not in (socket.SHUT_RD, socket.SHUT_WR, socket.SHUT_RDWR):
            raise ValueError(f"shutdown({how!r}): HOW is 0 (read), 1 (write) or 2 (both)")
        if how == socket.SHUT_WR:
            self.shutdown_write()
        else:
            self.sock.shutdown(how)

    def shutdown_write(self) -> None:
        """Half-close: tell the peer we are done sending, keep reading its replies.

        Over TLS this sends close_notify (see :mod:`tcpkit.tlsclient`).
        """
        if self._tls is not None:
            self._tls.close_write()
        else:
            self.sock.shutdown(socket.SHUT_WR)

    def abort(self) -> None:
        """Shut the connection both ways at once; a read blocked in another
        thread then sees the end of the stream (a timeout uses this)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        if self._buffered is not None:
            self._buffered.close()
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __str__(self) -> str:
        return f"INETSocket(fd={self.sock.fileno()})"

    def __repr__(self) -> str:
        try:
            where = f" peer={format_address(self.peerhost, self.peerport)}"
        except OSError:
            where = ""
        return f"<INETSocket fd={self.sock.fileno()}{where}>"
