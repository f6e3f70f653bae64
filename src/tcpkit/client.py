"""Clients for line services: one request at a time, pipelined, or asyncio.

Blocking::

    with FactorClient("localhost:7801") as client:
        client.factor(42)                      # [2, 3, 7]
    with ReverseClient("localhost:7800") as client:
        client.reverse("hello")                # "olleh"

Pipelined (:func:`pipeline`): a thread sends every request while the caller
reads replies as they arrive, so a million lines cost one round trip, not a
million; at the end of the input the socket is half-closed and the remaining
replies are read until the server closes.  A bounded window keeps the
client's own memory flat however long the input is.

asyncio: :class:`AsyncFactorClient` and :class:`AsyncReverseClient`.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Self, TypeVar

from tcpkit.endpoints import Endpoint, parse_endpoint
from tcpkit.framing import LineFramer, split_lines
from tcpkit.sockets import INETSocket
from tcpkit.tlsclient import client_context

T = TypeVar("T")
MAX_REPLY = 1 << 28  # a reply line longer than this is a broken server, not an answer
CHUNK = 65536  # bytes forwarded per read by StreamSender
WINDOW = 10_000  # requests in flight at most, per pipelined connection


class ServerError(Exception):
    """The server answered ``error: ...``; the message is the part after ``error: ``."""


class ConnectionClosed(ConnectionError):
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


class ReplyWatch(threading.Thread):
    """End the connection once a reply has been awaited ``timeout`` seconds.

    A per-read socket timeout would also fire while *stdin* is quiet, cutting
    off a person who pauses with every reply received.  So the sender reports
    each request (:meth:`sent`), the reader each reply (:meth:`answered`), and
    the clock runs only while a request is outstanding: from the later of its
    sending and the last reply.  On expiry the socket is shut down, which ends
    the reader's wait (plain or TLS) without a second thread touching its state.
    """

    def __init__(self, sock: INETSocket, timeout: float) -> None:
        super().__init__(daemon=True)
        self.sock, self.timeout = sock, timeout
        self.expired = False
        self._outstanding = 0
        self._since = time.monotonic()
        self._done = False
        self._changed = threading.Condition()
        self.start()

    def sent(self, requests: int) -> None:
        with self._changed:
            if self._outstanding <= 0 < self._outstanding + requests:
                self._since = time.monotonic()  # the wait begins now, not at the last reply
            self._outstanding += requests
            self._changed.notify()

    def answered(self, replies: int) -> None:
        with self._changed:
            self._outstanding -= replies
            self._since = time.monotonic()
            self._changed.notify()

    def stop(self) -> None:
        with self._changed:
            self._done = True
            self._changed.notify()
        self.join()

    def run(self) -> None:
        with self._changed:
            while not self._done:
                if self._outstanding <= 0:
                    self._changed.wait()
                    continue
                left = self._since + self.timeout - time.monotonic()
                if left <= 0:
                    self.expired = True
                    break
                self._changed.wait(left)
        if self.expired:
            self.sock.abort()


class LineClient:
    """A blocking client that sends one line and reads its reply."""

    default_port = 0

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


class _AsyncLineClient:
    default_port = 0

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, endpoint: str = "localhost", timeout: float | None = 30.0,
                      tls: bool = False, ca: str | None = None) -> Self:
        target = parse_endpoint(endpoint, default_port=cls.default_port)
        context = client_context(ca) if tls or ca else None
        name = (target.host or "localhost") if context else None
        if target.path is not None:
            opening = asyncio.open_unix_connection(target.path, limit=MAX_REPLY, ssl=context,
                                                   server_hostname=name)
        else:
            opening = asyncio.open_connection(target.host or "localhost", target.port,
                                              limit=MAX_REPLY, ssl=context,
                                              server_hostname=name)
        reader, writer = await asyncio.wait_for(opening, timeout)
        return cls(reader, writer)

    async def request(self, line: bytes) -> bytes:
        async with self._lock:  # one request at a time keeps replies paired
            self.writer.write(request_line(line))
            reply = await self.reader.readline()
        if not reply.endswith(b"\n"):
            raise ConnectionClosed("connection closed by the server")
        return strip_terminator(reply)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncReverseClient(_AsyncLineClient):
    default_port = 7800

    async def reverse(self, text: str) -> str:
        reply = await self.request(text.encode("utf-8", "surrogateescape"))
        return reply.decode("utf-8", "surrogateescape")


class AsyncFactorClient(_AsyncLineClient):
    default_port = 7801

    async def factor(self, n: int) -> list[int]:
        return factors_from_reply(await self.request(str(n).encode()))
