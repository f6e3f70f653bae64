"""Clients for line services: one request at a time, pipelined, or asyncio.

Any line service (one reply line per request line, in order)::

    with LineClient("localhost:7802") as client:
        client.request(b"hello")               # b"HELLO"
        list(client.pipeline([b"a", b"b"]))    # [b"A", b"B"], sent without waiting

    async with AsyncLineClient("localhost:7802") as client:
        await client.request(b"hello")         # b"HELLO"
        await asyncio.gather(*(client.request(line) for line in lines))  # pipelined

The built-in services have their own, which return Python values::

    with FactorClient("localhost:7801") as client:
        client.factor(42)                      # [2, 3, 7]
    with ReverseClient("localhost:7800") as client:
        client.reverse("hello")                # "olleh"
    async with AsyncFactorClient("localhost:7801") as client:
        await client.factor(42)                # [2, 3, 7]

Pipelined (:func:`pipeline`): a thread sends every request while the caller
reads replies as they arrive, so a million lines cost one round trip, not a
million; at the end of the input the socket is half-closed and the remaining
replies are read until the server closes.  A bounded window keeps the
client's own memory flat however long the input is.

asyncio (:class:`AsyncLineClient`): requests may overlap on one connection;
each line is written at once and a single reader task hands the replies back
in order, so ``asyncio.gather`` over many requests is a pipeline too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar

from tcpkit.endpoints import Endpoint, parse_endpoint
from tcpkit.errors import Error
from tcpkit.framing import LineFramer, split_lines
from tcpkit.sockets import INETSocket, connect_error
from tcpkit.tlsclient import client_context

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")
log = logging.getLogger("tcpkit")
MAX_REPLY = 1 << 28  # a reply line longer than this is a broken server, not an answer
CHUNK = 65536  # bytes forwarded per read by StreamSender
WINDOW = 10_000  # requests in flight at most, per pipelined connection


class ServerError(Error):
    """The server answered ``error: ...``; the message is the part after ``error: ``."""


class ConnectionClosed(Error, ConnectionError):
    """The server closed the connection before answering every request."""


def factors_from_reply(reply: bytes) -> list[int]:
    """Parse a factor reply line (terminator removed); raise ServerError for ``error:``."""
    if reply.startswith(b"error: "):
        raise ServerError(reply[7:].decode("utf-8", "replace"))
    return [int(f) for f in reply.split()]


def strip_terminator(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    return line[:-1] if line.endswith(b"\n") else line


def request_line(line: bytes) -> bytes:
    """``line`` with its LF; an LF inside would make it two requests, and every
    later reply would then be paired with the wrong request."""
    if b"\n" in line:
        raise ValueError(f"a request line cannot contain a line feed: {line[:40]!r}")
    return line + b"\n"


def read_blocks(sock: INETSocket) -> Iterator[bytes]:
    """Yield blocks of complete reply lines as they arrive, until the server closes.

    A last reply without LF (a server that closes mid-line) is yielded as is.
    """
    framer = LineFramer(MAX_REPLY)
    while data := sock.recv():
        block = framer.feed(data)
        if framer.overflowed:
            raise ConnectionClosed("reply line too long")
        if block:
            yield block
    tail = framer.feed_eof()
    if tail:
        yield tail


def read_replies(sock: INETSocket) -> Iterator[bytes]:
    """Yield reply lines (with their terminators) until the server closes."""
    for block in read_blocks(sock):
        if not block.endswith(b"\n"):
            yield block
            return
        for line in split_lines(block):
            yield line + b"\n"


def pipeline(sock: INETSocket, requests: Iterable[T], encode: Callable[[T], bytes],
             window: int = WINDOW) -> Iterator[tuple[T, bytes]]:
    """Send every request from a thread; yield (request, reply) pairs in order.

    At the end of ``requests`` the socket is half-closed.  Raises
    ConnectionClosed if the server closes before answering everything.
    """
    in_flight: queue.Queue[tuple[T] | None] = queue.Queue(maxsize=window)
    failure: list[BaseException] = []
    sender = threading.Thread(
        target=_send_all, args=(sock, requests, encode, in_flight, failure), daemon=True
    )
    sender.start()
    replies = read_replies(sock)
    while (item := in_flight.get()) is not None:
        reply = next(replies, None)
        if reply is None:
            raise ConnectionClosed(_closed_reason(failure))
        yield item[0], reply
    sender.join()
    if failure:  # every request sent so far was answered, but not all could be sent
        if isinstance(failure[0], OSError):
            raise ConnectionClosed(_closed_reason(failure))
        raise failure[0]


def _send_all(sock: INETSocket, requests: Iterable[T], encode: Callable[[T], bytes],
              in_flight: queue.Queue[tuple[T] | None], failure: list[BaseException]) -> None:
    batch: list[bytes] = []
    try:
        for request in requests:
            if batch and in_flight.full():  # put() would block: send what is held first
                sock.write(b"".join(batch))
                batch.clear()
            in_flight.put((request,))
            batch.append(encode(request))
            if len(batch) >= 256 or in_flight.qsize() < 2:
                sock.write(b"".join(batch))
                batch.clear()
        sock.write(b"".join(batch))
        if not sock.is_tls:  # a TLS close_notify would end the connection: count instead
            sock.shutdown_write()
    except OSError as exc:  # the server went away; the reader reports it
        failure.append(exc)
    except BaseException as exc:  # a bad request (e.g. encode failed)
        failure.append(exc)
    finally:
        in_flight.put(None)


def _closed_reason(failure: list[BaseException]) -> str:
    if failure:
        reason = failure[0]
        shown = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        return f"connection closed by the server ({shown})"
    return "connection closed by the server before all replies arrived"


class StreamSender(threading.Thread):
    """Forward a file descriptor's bytes to the socket in raw chunks, then half-close.

    No line is ever parsed on the way: the sender only counts LFs (a final
    unterminated line counts too) so the reader can tell whether every request
    got its reply.
    """

    def __init__(self, sock: INETSocket, source: int,
                 on_lines: Callable[[int], None] | None = None) -> None:
        super().__init__(daemon=True)
        self.sock, self.source = sock, source
        self.on_lines = on_lines  # told of each request before it is sent
        self.lines = 0
        self.error: str | None = None
        self.start()

    def run(self) -> None:
        last = b"\n"
        try:
            while chunk := os.read(self.source, CHUNK):
                self._count(chunk.count(b"\n"))
                last = chunk
                self.sock.write(chunk)
            if not last.endswith(b"\n"):
                self._count(1)
            self.sock.shutdown_write()
        except OSError as exc:
            self.error = exc.strerror or str(exc)

    def _count(self, lines: int) -> None:
        self.lines += lines
        if lines and self.on_lines is not None:
            self.on_lines(lines)


class LineClient:
    """A blocking client for any line service: one request and its reply, or pipelined.

    ``endpoint`` is ``HOST:PORT`` (any form of :func:`~tcpkit.endpoints.parse_endpoint`,
    ``unix:/path`` too); a subclass with a ``default_port`` also accepts a bare
    host.  ``timeout`` bounds the connect and each wait for a reply.  Raises
    :class:`~tcpkit.sockets.ConnectError` when the connection cannot be made.
    """

    default_port: int | None = None  # None: the endpoint must name its port

    def __init__(self, endpoint: str | Endpoint = "localhost",
                 timeout: float | None = 30.0, tls: bool = False,
                 ca: str | None = None) -> None:
        if isinstance(endpoint, str):
            endpoint = parse_endpoint(endpoint, default_port=self.default_port)
        self.endpoint = endpoint
        self.sock = INETSocket.connect(endpoint, timeout=timeout, tls=tls, ca=ca)

    def request(self, line: bytes) -> bytes:
        """Send ``line`` (LF added) and return the reply without its terminator."""
        self.sock.write(request_line(line))
        reply = self.sock.readline()
        if not reply.endswith(b"\n"):
            raise ConnectionClosed("connection closed by the server")
        return strip_terminator(reply)

    def pipeline(self, lines: Iterable[bytes]) -> Iterator[bytes]:
        """Send every line without waiting for replies; yield each reply in order.

        A thread sends while this generator reads, with a bounded window of
        requests in flight.  At the end of ``lines`` the sending side is
        half-closed (the server then finishes and closes): this is the
        connection's last use.  Raises ConnectionClosed if the server closes
        before answering every line.
        """
        for _, reply in pipeline(self.sock, lines, request_line):
            yield strip_terminator(reply)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class ReverseClient(LineClient):
    default_port = 7800

    def reverse(self, text: str) -> str:
        """``text`` reversed by the server (by grapheme cluster)."""
        reply = self.request(text.encode("utf-8", "surrogateescape"))
        return reply.decode("utf-8", "surrogateescape")


class FactorClient(LineClient):
    default_port = 7801

    def factor(self, n: int) -> list[int]:
        """Prime factors of ``n`` as computed by the server; ServerError for error replies."""
        return factors_from_reply(self.request(str(n).encode()))

    def factor_many(self, numbers: Iterable[int]) -> Iterator[tuple[int, list[int] | ServerError]]:
        """Pipeline ``numbers``; yield (n, factors or ServerError) in order, then close."""
        for n, reply in pipeline(self.sock, numbers, lambda n: b"%d\n" % n):
            try:
                yield n, factors_from_reply(strip_terminator(reply))
            except ServerError as exc:
                yield n, exc


class AsyncLineClient:
    """The asyncio client for any line service, ``async with`` or ``await connect()``.

    ::

        async with AsyncLineClient("localhost:7802") as client:
            await client.request(b"hi")                  # b"HI"
        client = await AsyncLineClient.connect("localhost:7802")  # same, then close()

    The constructor only parses the endpoint (a bad one raises at once); the
    connection opens in :meth:`open` (``async with`` calls it).  Requests may
    overlap: each is written at once and queued, one reader task takes the
    replies in order and hands each to the request that is first in the queue.
    A request that times out or is cancelled keeps its place in that queue,
    so its late reply is dropped instead of answering the next request.
    ``timeout`` bounds the connect and each wait for a reply.
    """

    default_port: int | None = None  # None: the endpoint must name its port

    def __init__(self, endpoint: str | Endpoint = "localhost", timeout: float | None = 30.0,
                 tls: bool = False, ca: str | None = None) -> None:
        if isinstance(endpoint, str):
            endpoint = parse_endpoint(endpoint, default_port=self.default_port)
        self.endpoint = endpoint
        self.timeout = timeout
        self.context = client_context(ca) if tls or ca else None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._waiting: deque[asyncio.Future[bytes]] = deque()
        self._receiver: asyncio.Task[None] | None = None
        self._gone: str | None = None  # why the connection ended, once it has

    @classmethod
    async def connect(cls, endpoint: str | Endpoint = "localhost",
                      timeout: float | None = 30.0, tls: bool = False,
                      ca: str | None = None) -> Self:
        """A connected client (the older form of ``async with cls(...)``)."""
        client = cls(endpoint, timeout, tls, ca)
        await client.open()
        return client

    async def open(self) -> None:
        """Connect (once: a client from :meth:`connect` is already open).

        Raises :class:`~tcpkit.sockets.ConnectError` as the blocking client does.
        """
        import asyncio  # here: the blocking clients, and the CLI, do without it

        if self.writer is not None:
            return
        target = self.endpoint
        host = target.host or "localhost"
        name = host if self.context else None
        try:
            if target.path is not None:
                opening = asyncio.open_unix_connection(
                    target.path, limit=MAX_REPLY, ssl=self.context, server_hostname=name)
            else:
                opening = asyncio.open_connection(host, target.port, limit=MAX_REPLY,
                                                  ssl=self.context, server_hostname=name)
            reader, self.writer = await asyncio.wait_for(opening, self.timeout)
        except OSError as exc:  # TimeoutError and ssl.SSLError are OSErrors too
            raise connect_error(target, exc) from None
        self.reader = reader
        self._receiver = asyncio.get_running_loop().create_task(self._receive(reader))

    async def request(self, line: bytes) -> bytes:
        """Send ``line`` (LF added) and return its reply without the terminator."""
        import asyncio  # here: the blocking clients, and the CLI, do without it

        data = request_line(line)  # a bad line fails before anything is queued
        if self.writer is None:
            raise ConnectionClosed("not connected (use async with, or await open())")
        if self._gone is not None:
            raise ConnectionClosed(self._gone)
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting.append(reply)  # queued and written with no await between: in order
        self.writer.write(data)
        await self.writer.drain()  # a server that does not read holds the writers here
        return await asyncio.wait_for(reply, self.timeout)

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        """Hand each reply line to the oldest waiting request, until the server closes."""
        reason = "connection closed by the server"
        try:
            while (line := await reader.readline()).endswith(b"\n"):
                if not self._waiting:
                    log.debug("dropped a line no request was waiting for: %.60r", line)
                    continue
                waiter = self._waiting.popleft()
                if not waiter.done():  # else: timed out or cancelled, its reply is dropped
                    waiter.set_result(strip_terminator(line))
        except (OSError, ValueError) as exc:  # ValueError: a reply line over MAX_REPLY
            reason = f"connection closed ({exc})"
        finally:
            self._gone = reason
            while self._waiting:
                waiter = self._waiting.popleft()
                if not waiter.done():
                    waiter.set_exception(ConnectionClosed(reason))

    async def close(self) -> None:
        """Close the connection; requests still waiting get ConnectionClosed."""
        import asyncio  # here: the blocking clients, and the CLI, do without it

        if self._receiver is not None:
            self._receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._receiver
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncReverseClient(AsyncLineClient):
    default_port = 7800

    async def reverse(self, text: str) -> str:
        """``text`` reversed by the server (by grapheme cluster)."""
        reply = await self.request(text.encode("utf-8", "surrogateescape"))
        return reply.decode("utf-8", "surrogateescape")


class AsyncFactorClient(AsyncLineClient):
    default_port = 7801

    async def factor(self, n: int) -> list[int]:
        """Prime factors of ``n``; ServerError for an error reply."""
        return factors_from_reply(await self.request(str(n).encode()))
