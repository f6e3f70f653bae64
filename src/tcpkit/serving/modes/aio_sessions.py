"""Sessions in the async mode: the protocol class of a session service's clients.

:class:`SessionClient` is the async mode's ``Client`` around a
:class:`~tcpkit.session.SessionConnection` instead of a stateless one.  The
async mode picks it once per listener (``aio._client_class``), so stateless
clients' hot path is untouched.  What it adds:

* the session starts when the client is admitted: its peer and the server's
  hub are handed over, and ``connected()``'s lines go out first;
* jobs of every kind: an ``Offload`` goes to the worker pool as before, a
  ``Blocking`` call to the loop's default thread pool (bounded: at most
  min(32, CPUs + 4) threads; further calls queue), an awaitable is awaited on
  the loop — the last two bounded by ``--time-limit``;
* ``send()`` from anywhere: the engine calls :meth:`SessionClient.wake`, which
  schedules one flush on the loop (``call_soon_threadsafe`` from another
  thread).  The flush writes the queued lines, closes after ``close()``, and
  aborts a client past the unsent-output cap ("send buffer full");
* ``disconnected(reason)`` once, whatever ended the connection; an ``async
  def`` one runs as a task (bounded by ``--time-limit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any, cast

from tcpkit.connection import Job, ServiceConnection
from tcpkit.endpoints import format_address
from tcpkit.hub import Hub, Hubs
from tcpkit.service import Blocking, Service
from tcpkit.serving.config import Limits
from tcpkit.serving.modes.aio import AsyncServer
from tcpkit.serving.modes.aio_client import Client
from tcpkit.serving.offload.jobs import TimeLimitExceeded
from tcpkit.session import Peer
from tcpkit.session_connection import SessionConnection, ending_reason

log = logging.getLogger("tcpkit")


class SessionClient(Client):
    """One session's connection on the event loop."""

    __slots__ = ("end_reason", "session_started")

    def __init__(self, server: AsyncServer, service: Service,
                 client: tuple[str, int] | None = None, limits: Limits | None = None) -> None:
        super().__init__(server, service, client, limits)
        self.end_reason: str | None = None  # what the server knows ended it (idle, ...)
        self.session_started = False

    @staticmethod
    def make_connection(service: Service, limits: Limits) -> ServiceConnection:
        return SessionConnection(service, limits.max_line, max_unsent=limits.max_unsent)

    @property
    def session(self) -> SessionConnection:
        return cast(SessionConnection, self.conn)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        live = self.transport
        if live is None:
            return  # refused: the session never starts
        conn = self.session
        conn.peer = Peer(self.host, self.port)
        conn.hub = _service_hub(self.server, self.service)
        conn.wakeup = self.wake
        conn.backlog = live.get_write_buffer_size
        self.session_started = True
        self._send(conn.start())

    def connection_lost(self, exc: Exception | None) -> None:
        started = self.session_started and self.transport is not None
        super().connection_lost(exc)
        if not started:
            return
        pending = self.session.connection_lost(
            ending_reason(self.session, self.end_reason, self.server.draining, exc is not None))
        if pending is not None:
            farewell = self.server.loop.create_task(self._disconnected(pending))
            self.server.farewells.add(farewell)  # the server waits for it before closing hubs
            farewell.add_done_callback(self.server.farewells.discard)

    def close_idle(self) -> None:
        self.end_reason = "idle"
        super().close_idle()

    # -- unsolicited output -------------------------------------------------

    def wake(self) -> None:
        """Called by the engine (any thread) when send() or close() queued something."""
        loop = self.server.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.call_soon(self._flush)
        else:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to send to
                loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        conn = self.session
        out = conn.data_to_send()
        if conn.dropped is not None:
            log.warning("dropped %s (%s): %s", format_address(self.host, self.port),
                        self.service.name, conn.dropped,
                        extra={"event": "dropped", "service": self.service.name,
                               "reason": conn.dropped})
            self.end_reason = conn.dropped
            transport.abort()
            return
        self._send(out)

    # -- jobs ---------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        if job.kind == "offload":
            await super()._run(job)
            return
        start = time.perf_counter()
        limit = self.server.limits.time_limit
        if isinstance(job.work, Blocking):
            work: Awaitable[Any] = self.server.loop.run_in_executor(None, job.work)
        else:
            work = cast(Awaitable[Any], job.work)
        outcome: Any
        try:
            # asyncio.timeout, not wait_for: the hook runs in this job's own Task
            # (wait_for would wrap it in a second Task per request, ~3x the cost).
            async with asyncio.timeout(limit):
                outcome = await work
        except TimeoutError:
            outcome = TimeLimitExceeded.after(limit)
        except Exception as exc:
            outcome = exc
        self.job_finished(job, outcome, start)

    async def _disconnected(self, pending: Awaitable[Any]) -> None:
        try:
            await asyncio.wait_for(pending, self.server.limits.time_limit)
        except Exception:
            log.exception("%s: disconnected() failed", self.service.name)


def _service_hub(server: AsyncServer, service: Service) -> Hub:
    """The service's hub in this server, made on first use (a stateless server never makes
    one)."""
    if server.hub is None:
        server.hub = Hubs(server.limits.pubsub)
    return server.hub.get(service.name)

