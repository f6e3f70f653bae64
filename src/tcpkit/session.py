"""Sessions: one object per connection, which never sees a socket.

A stateless service answers each line with a pure function.  A *session*
service keeps state per connection instead::

    class Counter(Session):
        def connected(self) -> Reply:
            self.count = 0
            return "hello"
        def received(self, message: bytes) -> Reply:
            self.count += 1
            return str(self.count)

    SERVICE = Service("counter", 7900, "counts your lines", session=Counter)

The server makes one :class:`Session` per connection; the sans-IO engine that
drives it, :class:`tcpkit.session_connection.SessionConnection`, says what a
hook may return (a :data:`Reply`) and how errors, jobs, ``send()`` and
``close()`` behave.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from tcpkit.service import Options, Service

if TYPE_CHECKING:
    from tcpkit.session_connection import SessionConnection

# What a hook may return: None, bytes, str, a list or tuple of them, an
# Offload, a Blocking call or an awaitable of a Reply.
Reply = Any


class Peer(NamedTuple):
    """The real client: ``("unix", 0)`` on a unix socket."""

    host: str
    port: int


NO_PEER = Peer("", 0)  # a connection tested without a socket


def _ignore_line(line: bytes) -> None:
    """The line sink of a session whose connection is gone."""


class Session:
    """One object per connection, created by the server; never sees a socket.

    Before ``__init__`` and ``connected()`` run, the kit sets ``peer``
    (:class:`Peer`), ``options`` (the server's :class:`~tcpkit.service.Options`),
    ``service`` and ``hub`` (the server's pub/sub hub).  Hooks run on the
    connection's driver (the event loop in async mode, the connection's
    thread or child otherwise); ``send()`` and ``close()`` are safe anywhere.
    """

    peer: Peer
    options: Options
    service: Service
    hub: Any
    _link: SessionConnection | None = None

    def connected(self) -> Reply:
        """Lines to send first (optional)."""
        return None

    def received(self, message: bytes) -> Reply:
        """Answer one framed message (its terminator removed)."""
        raise NotImplementedError(f"{type(self).__name__} must define received()")

    def disconnected(self, reason: str) -> Any:
        """The connection is gone (called once; may be ``async def``): ``reason`` is
        "eof", "reset", "idle", "drain", "closed", "line too long", "malformed",
        "send buffer full"..."""

    def send(self, *lines: bytes | str) -> None:
        """Send unsolicited lines (from any thread); ignored once the connection is gone."""
        link = self._link
        if link is not None:
            link.send(lines)

    def line_sink(self) -> Callable[[bytes], None]:
        """A function that sends one ``bytes`` line, like ``send(line)`` but cheaper:
        a hub asks each member for it once, when the member joins a room, and calls it
        for every message.  It does nothing once the connection is gone."""
        link = self._link
        return link.send_line if link is not None else _ignore_line

    def close(self) -> None:
        """Close after the replies so far; further input is ignored."""
        link = self._link
        if link is not None:
            link.request_close()


class _Answering(Session):
    """A stateless ``answer=`` served by the engine (async def answer, framer=, errors=)."""

    def received(self, message: bytes) -> Reply:
        answer = self.service.answer
        assert answer is not None
        return answer(message)


__all__ = ["NO_PEER", "Peer", "Reply", "Session"]
