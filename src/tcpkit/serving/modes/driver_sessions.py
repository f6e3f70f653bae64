"""Sessions in the blocking modes (iterative, thread, fork): the driver's session side.

:class:`SessionDriver` is the blocking modes' connection driver around a
:class:`~tcpkit.session_connection.SessionConnection`; ``serve_connection``
picks it once per connection, so stateless clients run the driver unchanged.
What it adds:

* the session starts first thing: its peer and the server's hub are handed
  over, and ``connected()``'s lines are the first bytes sent;
* ``send()``/``close()`` from any thread write a byte to the driver's wake
  pipe (the one finished offload jobs use), so its ``poll`` returns and the
  queued lines go out on the connection's own thread;
* a ``Blocking`` call runs on a helper thread (the connection keeps serving
  unsolicited lines meanwhile); past ``--time-limit`` its request gets the
  time-limit error and the thread's late result is ignored (a thread cannot be
  stopped);
* every job's figures (one request, its reply, its latency, a failure's kind)
  go to the metrics through ``finish_job``, as in the async mode;
* an awaitable runs to completion here, on a private event loop of this
  connection, bounded by ``--time-limit``: the thread (or child) is this
  client's alone, so nothing else waits for it;
* ``disconnected(reason)`` exactly once, after the socket is closed (the
  replies already answered have reached the client by then).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from typing import Any, cast

from tcpkit.connection import Job, ServiceConnection
from tcpkit.endpoints import format_address
from tcpkit.hub import Hub
from tcpkit.service import Blocking, Service
from tcpkit.serving.config import Limits
from tcpkit.serving.modes.driver import _Driver
from tcpkit.serving.observe.events import Observer
from tcpkit.serving.offload.bridge import OffloadBridge
from tcpkit.serving.offload.jobs import TimeLimitExceeded, finish_job
from tcpkit.session import Peer
from tcpkit.session_connection import SessionConnection, ending_reason

log = logging.getLogger("tcpkit")


class SessionDriver(_Driver):
    """One session's connection, driven on its own thread (or child process)."""

    def __init__(self, sock: socket.socket, service: Service, limits: Limits,
                 stop_fds: Sequence[int], offload: Callable[[], OffloadBridge],
                 metered: Observer | None, peer: tuple[str, int],
                 hub: Callable[[], Hub] | None) -> None:
        super().__init__(sock, service, limits, stop_fds, offload, metered)
        self.peer = Peer(*peer)
        self.job_deadlines: dict[Job, float] = {}  # Blocking jobs still within their limit
        self.loop: asyncio.AbstractEventLoop | None = None  # for awaitables, made on first use
        self.awaitables: deque[tuple[Job, Awaitable[Any]]] = deque()  # their turn has come
        self.awaiting = False  # an awaitable is running (see _await)
        conn = self.session
        conn.peer = self.peer
        conn.hub = hub() if hub is not None else None
        conn.wakeup = self.wake_up
        conn.backlog = self.out.__len__
        self._open_wake()  # before start(): connected() may already send

    def run(self) -> None:
        self._send(self.session.start())
        super().run()

    @staticmethod
    def make_connection(service: Service, limits: Limits) -> ServiceConnection:
        return SessionConnection(service, limits.max_line, max_unsent=limits.max_unsent)

    @property
    def session(self) -> SessionConnection:
        return cast(SessionConnection, self.conn)

    # -- unsolicited output ---------------------------------------------------

    def _collect_jobs(self) -> None:
        for job in list(self.finished_jobs):  # filled by other threads: a snapshot
            self.job_deadlines.pop(job, None)
        super()._collect_jobs()  # also empties the wake pipe
        conn = self.session
        out = conn.data_to_send()
        if conn.dropped is not None:
            log.warning("dropped %s (%s): %s", format_address(*self.peer), self.service,
                        conn.dropped, extra={"event": "dropped", "service": self.service,
                                             "reason": conn.dropped})
            self._lost()
            return
        self._send(out)

    # -- jobs -----------------------------------------------------------------

    def _start(self, job: Job) -> None:
        if job.kind == "offload":
            super()._start(job)
        elif isinstance(job.work, Blocking):
            self._start_blocking(job, job.work)
        else:
            self._await(job, cast(Awaitable[Any], job.work))

    def _start_blocking(self, job: Job, work: Blocking) -> None:
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()

        def run() -> None:
            try:
                future.set_result(work())
            except BaseException as exc:  # handed to the driver's thread, as a reply
                future.set_exception(exc)

        self.job_deadlines[job] = time.monotonic() + self.limits.time_limit
        self._track(job, future)
        threading.Thread(target=run, name=f"tcpkit-blocking-{self.service}",
                         daemon=True).start()

    def _await(self, job: Job, work: Awaitable[Any]) -> None:
        """Run an awaitable to completion here, then send what it released.

        Its reply may hand out the session's next hook job (tcpkit.hook_turns),
        which comes back here: it is queued and run by the loop below, not by a
        nested call, so a burst of pipelined lines cannot grow the stack.
        """
        self.awaitables.append((job, work))
        if self.awaiting:
            return
        self.awaiting = True
        try:
            while self.awaitables and not self.gone:
                job, work = self.awaitables.popleft()
                started = time.perf_counter() if self.metered is not None else 0.0
                outcome = self._outcome(work)
                self._send(finish_job(self.conn, job, outcome, self.metered, self.service,
                                      started))
        finally:
            self.awaiting = False

    def _outcome(self, work: Awaitable[Any]) -> Any:
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        limit = self.limits.time_limit
        try:
            return self.loop.run_until_complete(_bounded(work, limit))
        except TimeoutError:
            return TimeLimitExceeded.after(limit)
        except Exception as exc:
            return exc

    def _timeout(self) -> float | None:
        timeout = super()._timeout()
        if not self.job_deadlines:
            return timeout
        left = max(0.0, min(self.job_deadlines.values()) - time.monotonic())
        return left if timeout is None else min(timeout, left)

    def _timed_out(self) -> None:
        now = time.monotonic()
        for job, deadline in list(self.job_deadlines.items()):
            if now >= deadline:
                del self.job_deadlines[job]
                job.handle = None  # its late result is dropped (_collect_jobs skips it)
                self._send(finish_job(self.conn, job,
                                      TimeLimitExceeded.after(self.limits.time_limit),
                                      self.metered, self.service,
                                      self.job_started.pop(job, 0.0)))
        super()._timed_out()

    # -- ending ---------------------------------------------------------------

    def close(self) -> None:
        reset = self.gone and not self.idle_closed and self.deadline is None
        super().close()
        conn = self.session
        pending = conn.connection_lost(ending_reason(
            conn, "idle" if self.idle_closed else None, self.deadline is not None, reset))
        if pending is not None:
            if self.loop is None:
                self.loop = asyncio.new_event_loop()
            try:
                self.loop.run_until_complete(_bounded(pending, self.limits.time_limit))
            except Exception:
                log.exception("%s: disconnected() failed", self.service)
        if self.loop is not None:
            self.loop.close()
            self.loop = None


async def _bounded(work: Awaitable[Any], limit: float) -> Any:
    async with asyncio.timeout(limit):  # in run_until_complete's Task: no second Task
        return await work
