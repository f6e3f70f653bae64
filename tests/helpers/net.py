"""Talking to a server over real loopback sockets: connect, exchange, read, leave."""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time
from pathlib import Path


def connect(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def recv_until_closed(sock: socket.socket, limit: int = 1 << 30) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    total = 0
    while total < limit:
        data = sock.recv(1 << 16)
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def exchange(port: int, payload: bytes, timeout: float = 20.0) -> bytes:
    """Send ``payload``, half-close, and return every byte the server replies."""
    with connect(port, timeout=timeout) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return recv_until_closed(sock)


def recv_lines(sock: socket.socket, count: int) -> list[bytes]:
    """Read exactly ``count`` lines (with terminators) from a socket."""
    buf = b""
    while buf.count(b"\n") < count:
        data = sock.recv(1 << 16)
        if not data:
            break
        buf += data
    lines = buf.split(b"\n")
    return [line + b"\n" for line in lines[:count]]


class LinePeer:
    """A line client over one real socket: read a line at a time, send several."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        self.sock = connect(port, host, timeout)
        self.buffer = b""

    def line(self) -> bytes:
        """The next line without its LF (a CR stays); fails if the server closed first."""
        while b"\n" not in self.buffer:
            data = self.sock.recv(1 << 16)
            if not data:
                raise AssertionError(f"closed; got {self.buffer!r}")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def send(self, *lines: bytes, end: bytes = b"\n") -> None:
        self.sock.sendall(b"".join(line + end for line in lines))

    def rest(self) -> bytes:
        """Everything until the server closes."""
        rest, self.buffer = self.buffer + recv_until_closed(self.sock), b""
        return rest

    def close(self) -> None:
        self.sock.close()


def abort(sock: socket.socket) -> None:
    """Leave abruptly: close with RST instead of FIN (SO_LINGER on, timeout 0).

    A crashed or killed client's kernel often does this.  A plain close() sends
    FIN, which on the wire is the same as the half-close with which a client
    says "that was my last request, send the replies": the server has to keep
    working for it (SPEC §2.2).
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def readable(sock: socket.socket) -> bool:
    """Whether a read would not block right now (data, EOF or an error is waiting)."""
    return bool(select.select([sock], [], [], 0)[0])


def free_ports(count: int = 1) -> list[int]:
    """Loopback ports free right now, for programs that cannot be given port 0."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def ipv6_loopback() -> bool:
    """Whether ::1 can be used here (containers often have IPv6 switched off)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


LOOPBACKS = ["127.0.0.1", "::1"] if ipv6_loopback() else ["127.0.0.1"]


def listening(port: int) -> bool:
    """Whether a TCP socket listens on ``port``, asked of the kernel (/proc/net/tcp*)
    rather than by connecting: a probe would be a client the server sees."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def most_buffered(fallback: int = 64 << 20) -> int:
    """The most bytes the kernel can hold between a TCP sender and a receiver that
    does not read (the sender's send buffer plus the receiver's receive buffer, at
    their autotuning ceilings); a sender past this many must wait for the reader."""
    try:
        return sum(int(Path(f"/proc/sys/net/ipv4/{table}").read_text().split()[2])
                   for table in ("tcp_wmem", "tcp_rmem"))
    except (OSError, IndexError, ValueError):
        return fallback


def inetd_pair(source: str = "127.0.0.1") -> tuple[socket.socket, socket.socket]:
    """A real TCP connection from ``source``: (the client's end, the end inetd would
    pass on to the server it starts)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.socket()
        client.settimeout(20)
        client.bind((source, 0))
        client.connect(listener.getsockname())
        passed, _ = listener.accept()
    return client, passed


def talk(port: int, payload: bytes, source: str = "127.0.0.1", host: str = "127.0.0.1",
         timeout: float = 20.0) -> bytes:
    """Send ``payload`` from ``source``, half-close, and read until the server closes
    (``b"<reset>"`` if it reset the connection instead)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect((host, port))
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            return recv_until_closed(sock)
        except TimeoutError:
            raise
        except OSError:  # reset, or not connected any more: closed without an answer
            return b"<reset>"


def closed_unanswered(reply: bytes) -> bool:
    """Whether :func:`talk` saw the server close (or reset) without a byte."""
    return reply in (b"", b"<reset>")


def assert_idle_closed_while_busy_served(idle: socket.socket, busy: socket.socket) -> None:
    """The idle-timeout rule seen from two clients: ``busy`` sends a request every
    quarter second and is answered throughout; ``idle`` (silent, or with a line
    begun and never finished) is closed by the server within 20 s."""
    busy.sendall(b"hello\n")
    assert recv_lines(busy, 1) == [b"olleh\n"]
    idle.settimeout(0.25)
    closed = False
    deadline = time.monotonic() + 20
    while not closed and time.monotonic() < deadline:
        busy.sendall(b"ping\n")  # a request every quarter second keeps it open
        assert recv_lines(busy, 1) == [b"gnip\n"]
        with contextlib.suppress(TimeoutError):
            closed = idle.recv(1) == b""
    assert closed, "the idle client was never closed"
    busy.sendall(b"still here\n")
    assert recv_lines(busy, 1) == [b"ereh llits\n"]
