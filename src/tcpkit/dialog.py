"""Talk to a session without a socket: the server's part of a dialog, sans-IO.

A session is a pure object, so its tests need no server, no port and no
clock::

    from tcpkit.dialog import Dialog
    from mail import SERVICE

    def test_mail_dialog():
        with Dialog(SERVICE) as mail:
            assert mail.start() == b"220 tcpkit ready\\r\\n"
            assert mail.say(b"HELO me\\r\\n") == b"250 hello me\\r\\n"
            assert mail.say(b"QUIT\\r\\n") == b"221 bye\\r\\n"
            assert mail.closed

:class:`Dialog` drives one :class:`~tcpkit.session_connection.SessionConnection`
the way every serving mode does, minus the socket: :meth:`Dialog.say` feeds
bytes as a client would send them (whole, byte by byte, in any chunks) and
returns every byte the server would send back.  The jobs a hook makes run in
place before ``say`` returns (an ``async def`` hook is awaited on the dialog's
own event loop, a ``Blocking`` call or an ``Offload`` is called directly, so
``--time-limit`` does not apply), and lines other sessions sent it through the
hub are included.  Several dialogs given one hub (``LocalHub()``) are members
of one room.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from tcpkit.connection import Job
from tcpkit.hub import Hub, LocalHub
from tcpkit.service import Blocking, Offload, Options, Service
from tcpkit.session import Peer
from tcpkit.session_connection import MAX_UNSENT, SessionConnection

TEST_PEER = Peer("127.0.0.1", 50000)


class Dialog:
    """One client's connection to ``service``, without a socket; see the module docstring."""

    def __init__(self, service: Service, hub: Hub | None = None, peer: Peer = TEST_PEER,
                 max_line: int = 1 << 20, max_unsent: int = MAX_UNSENT,
                 options: Options | None = None) -> None:
        self.hub = hub if hub is not None else LocalHub()
        self.conn = SessionConnection(service.configured(options or Options()), max_line,
                                      peer, self.hub, max_unsent)
        # One loop for all of this connection's hooks, as a server gives it one
        # (asyncio objects a session keeps, such as a Lock, are bound to it).
        self.loop = asyncio.new_event_loop()
        self.started = self.lost = False

    def start(self) -> bytes:
        """The client connected: what ``connected()`` sends.  Call it first."""
        if self.started:
            raise RuntimeError("the dialog has already started")
        self.started = True
        return self._settle(self.conn.start())

    def say(self, data: bytes) -> bytes:
        """The client sent ``data``: everything the server sends back now."""
        return self._settle(self.conn.receive_data(data))

    def hear(self) -> bytes:
        """Lines other sessions (or threads) sent this one since the last call."""
        return self._settle(b"")

    def eof(self) -> bytes:
        """The client half-closed: the reply to an unterminated last line, if any."""
        return self._settle(self.conn.receive_eof())

    @property
    def closed(self) -> bool:
        """The server is done with this connection (it would close the socket now)."""
        return self.conn.finished or self.conn.dropped is not None

    def hang_up(self, reason: str | None = None) -> None:
        """The connection is gone: run ``disconnected(reason)`` (awaited if async), once."""
        if self.lost:
            return
        self.lost = True
        pending = self.conn.connection_lost(reason)
        if pending is not None:
            self.loop.run_until_complete(pending)
        self.loop.close()

    def __enter__(self) -> Dialog:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.hang_up()

    def _settle(self, out: bytes) -> bytes:
        """Run every job the hooks made, then collect the unsolicited lines."""
        if not self.started:
            raise RuntimeError("start() the dialog first: it runs connected()")
        parts = [out]
        while jobs := self.conn.take_jobs():
            parts.extend(self._run(job) for job in jobs)
        parts.append(self.conn.data_to_send())
        return b"".join(parts)

    def _run(self, job: Job) -> bytes:
        # The same reply (or error reply) a server would give: one helper for all.
        from tcpkit.serving.offload.jobs import finish_job

        outcome: Any
        try:
            outcome = self._work(job.work)
        except Exception as exc:
            outcome = exc
        return finish_job(self.conn, job, outcome, None, "", 0.0)

    def _work(self, work: Any) -> Any:
        if isinstance(work, Offload):
            return work.func(*work.args)
        if isinstance(work, Blocking):
            return work()
        return self.loop.run_until_complete(work)


__all__ = ["TEST_PEER", "Dialog"]
