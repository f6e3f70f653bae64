"""The session engine: one :class:`tcpkit.session.Session` driven sans-IO.

The server makes one Session per connection and never shows it a socket.
:class:`SessionConnection` is the engine between the two: bytes in,
bytes out, no socket and no clock (like h11), with the same driver-facing
interface as the stateless :class:`~tcpkit.connection.ServiceConnection`
(it *is* one, sharing its reply ordering), plus:

* ``start()``: what ``connected()`` says, sent before anything else;
* ``data_to_send()``: lines queued by ``send()``, which may be called from any
  thread (or another session) at any time.  The engine only queues them, under
  a lock, and calls ``wakeup`` (set by the driver) when the queue stops being
  empty, so the driver moves them on its own thread;
* ``connection_lost(reason)``: runs ``disconnected()`` exactly once.

**Replies.**  A hook returns ``None`` (nothing), ``bytes``/``str`` (one
message), a list or tuple of those (several, in order), an
:class:`~tcpkit.service.Offload` (a worker process computes the one reply),
a :class:`~tcpkit.service.Blocking` call (run in a thread) or an awaitable (an
``async def`` hook; the driver awaits it).  The last three become *jobs* that
the driver runs; replies still go out in request order, and one session's
hooks take turns (:mod:`tcpkit.hook_turns`): the next Blocking call or
awaitable is handed to the driver only when the previous one has finished,
and those still waiting when the session calls ``close()`` never run.  ``RequestError`` is
one error reply; anything else raised or returned is one ``internal error``
reply, logged with its traceback — a bug costs a request, never the
connection.  Error replies are written by the service's ``errors=`` function.

**Bounded output.**  Unsolicited lines not yet sent (queued here plus what
the driver's transport still holds, ``backlog()``) are capped at
``max_unsent`` bytes (:data:`MAX_UNSENT`).  Past it the connection is
*dropped* (``dropped = "send buffer full"``): a member that never reads cannot
make the server hold an unbounded backlog, and the senders are not slowed.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from tcpkit.connection import Job, ServiceConnection
from tcpkit.framers import Lines
from tcpkit.hook_turns import HookTurns
from tcpkit.replies import as_bytes, encoded, job_kind
from tcpkit.service import RequestError, Service
from tcpkit.session import NO_PEER, Peer, Reply, Session, _Answering

if TYPE_CHECKING:
    from tcpkit.framers import Framer

log = logging.getLogger("tcpkit")
MAX_UNSENT = 1 << 20  # bytes of unsolicited output a connection may hold unsent
SEND_BUFFER_FULL = "send buffer full"
_LINES = Lines()  # the default framer's template
# The metrics kinds of failed jobs (offload.jobs.job_failure) as the errors= kinds.
_FAILURE_KINDS = {"time_limit": "time limit", "worker_crashed": "worker crashed"}


def _nothing() -> None:
    pass


def _no_backlog() -> int:
    return 0


class SessionConnection(ServiceConnection):
    """Drives one :class:`Session`; see the module docstring."""

    __slots__ = ("_close_asked", "_gone", "_lock", "_messages", "_newline",
                 "_unsent", "_unsent_size", "backlog", "dropped", "hub", "max_unsent", "peer",
                 "service", "session", "turns", "wakeup")

    def __init__(self, service: Service, max_line: int = 1 << 20, peer: Peer = NO_PEER,
                 hub: Any = None, max_unsent: int = MAX_UNSENT) -> None:
        # Not ServiceConnection.__init__, which sets up the stateless answer:
        # only its reply-ordering state (and the methods using it) is shared.
        self._pending = None
        self._new_jobs = None
        self.lines = self.errors = self.jobs_made = 0
        self.eof = self.closing = self.draining = False
        self.settled = True
        self.progressed = True  # the idle rule of every connection (tcpkit.connection)
        framer: Framer = (service.framer or _LINES).new(max_line)
        self._messages = framer
        self._newline = framer.newline if isinstance(framer, Lines) else b""
        self._lock = threading.Lock()
        self._unsent: list[bytes] = []
        self._unsent_size = 0
        self._close_asked = False
        self._gone = False
        self.turns = HookTurns()
        self.dropped: str | None = None  # why the connection must be dropped at once
        self.max_unsent = max_unsent
        # Set by the driver: wake me (any thread); bytes my transport still holds.
        self.wakeup: Callable[[], None] = _nothing
        self.backlog: Callable[[], int] = _no_backlog
        # The driver may set these until start(), which creates the session.
        self.service = service
        self.peer = peer
        self.hub = hub
        self.session: Session | None = None

    def _make_session(self) -> Session | None:
        service = self.service
        factory = service.session or _Answering
        try:
            session = factory.__new__(factory)
            session.peer, session.options, session.service, session.hub = (
                self.peer, service.options, service, self.hub)
            session._link = self
            session.__init__()  # type: ignore[misc]
        except Exception:
            log.exception("%s: cannot create the session", service.name)
            return None
        return session

    # -- the session's side (any thread) ------------------------------------

    def send(self, lines: Iterable[bytes | str]) -> None:
        """Queue unsolicited lines; drop the connection past ``max_unsent``."""
        encode = self._messages.encode
        pieces = []
        for line in lines:
            data = as_bytes(line)
            if data is None:
                raise TypeError(f"send() takes bytes or str, not {type(line).__name__}")
            pieces.append(encode(data, None))
        if not pieces:
            return
        with self._lock:
            if self._gone or self.dropped is not None:
                return
            wake = not self._unsent
            for piece in pieces:
                self._unsent.append(piece)
                self._unsent_size += len(piece)
            if self._unsent_size + self.backlog() > self.max_unsent:
                self._drop_unsent()
                wake = True
        if wake:
            self.wakeup()

    def send_line(self, line: bytes) -> None:
        """:meth:`send` of one ``bytes`` line: what a hub calls for every member of a
        room, once per message, so it is kept to one lock and a few operations."""
        newline = self._newline  # Lines' encode(line, None), without the call
        piece = line + newline if newline else self._messages.encode(line, None)
        with self._lock:
            if self._gone or self.dropped is not None:
                return
            unsent = self._unsent
            unsent.append(piece)
            self._unsent_size += len(piece)
            if self._unsent_size + self.backlog() > self.max_unsent:
                self._drop_unsent()
            elif len(unsent) > 1:
                return  # not the first line queued: its wake-up is on its way
        self.wakeup()

    def _drop_unsent(self) -> None:
        """Past the cap (the lock held): the connection is dropped, its queue let go."""
        self.dropped = SEND_BUFFER_FULL
        self._unsent.clear()
        self._unsent_size = 0

    def request_close(self) -> None:
        """``Session.close()``: close once the replies so far are out."""
        with self._lock:
            if self._close_asked or self._gone:
                return
            self._close_asked = True
        self.wakeup()

    # -- the driver's side ---------------------------------------------------

    def start(self) -> bytes:
        """The connection is up: run ``connected()``; return what is ready to send."""
        out: list[bytes] = []
        self.session = self._make_session()
        if self.session is None:
            self._error("internal", "internal error", self._newline, out)
            self.closing, self.settled = True, False
        else:
            self._call(self.session.connected, (), self._newline, out)
        return b"".join(out)

    def receive_data(self, data: bytes) -> bytes:
        """Feed received bytes; return the replies that are ready now."""
        if self.closing or self.eof or self.dropped is not None:
            return b""
        out: list[bytes] = []
        framer = self._messages
        held = framer.buffered
        messages = framer.feed_framed(data)
        # Progress (see tcpkit.connection): a message finished, or begun by
        # these bytes; bytes that only lengthen an unfinished one are not.
        if messages or (data and not held and not framer.failed):
            self.progressed = True
        for message, terminator in messages:
            if self.closing:
                break  # close() was asked: the rest is ignored
            self._received(message, terminator, out)
        if self._messages.failed and not self.closing:
            self._framing_failed(out)
        return b"".join(out)

    def drain(self) -> None:
        """The server is draining: a session has no reply boundary to wait for
        (it may talk unasked, or sit silent for hours), so its input stops now."""
        self.stop_input()

    def receive_eof(self) -> bytes:
        """The client finished sending: answer its unterminated last line, if any."""
        if self.eof:
            return b""
        self.eof = True
        self.settled = False
        if self.closing or self.dropped is not None:
            return b""
        out: list[bytes] = []
        message = self._messages.feed_eof()
        if self._messages.failed:
            self._framing_failed(out)
            return b"".join(out)
        self.progressed = True  # the stream's end finishes its last message, if any
        if message is not None:
            self._received(message, self._newline, out)
        return b"".join(out)

    def data_to_send(self) -> bytes:
        """Unsolicited lines queued since the last call (and apply a pending close())."""
        with self._lock:
            data = b"".join(self._unsent) if self._unsent else b""
            self._unsent.clear()
            self._unsent_size = 0
        self._apply_close()
        return data

    def job_done(self, job: Job, reply: object) -> bytes:
        """A job's work returned ``reply`` (any Reply but another job)."""
        if job.reply is not None:
            return b""  # already answered (it failed its time limit)
        data = encoded(reply, job.terminator, self._messages.encode)
        if data is None:
            data = self._bad_reply(reply, job.terminator)
        job.reply = data
        self._apply_close()
        self._next_turn(job)
        return self._release()

    def job_failed(self, job: Job, message: str, kind: str = "internal") -> bytes:
        """A job could not finish (time limit, worker crash, an exception)."""
        if job.reply is not None:
            return b""
        self.errors += 1
        job.reply = self._messages.encode(
            self._error_text(_FAILURE_KINDS.get(kind, kind), message), job.terminator)
        self._apply_close()
        self._next_turn(job)
        return self._release()

    def connection_lost(self, reason: str | None = None) -> Awaitable[Any] | None:
        """The connection is gone: run ``disconnected()`` once.  ``reason`` None: the
        engine's own (:attr:`end_reason`).  An ``async def`` hook's awaitable is
        returned for the driver to run."""
        with self._lock:
            if self._gone:
                return None
            self._gone = True
            self._unsent.clear()
        for job in self.pending_jobs():
            if job.handle is None and inspect.iscoroutine(job.work):
                job.work.close()  # never started: no "never awaited" warning
        session, self.session = self.session, None
        if session is None:
            return None
        session._link = None
        try:
            result = session.disconnected(reason or self.end_reason)
        except Exception:
            log.exception("%s: disconnected() failed", self.service.name)
            return None
        return result if inspect.isawaitable(result) else None

    # -- state ------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Nothing more will be sent: input is over and every reply and queued line is out."""
        return (self.eof or self.closing) and not self._pending and not self._unsent

    @property
    def buffered(self) -> int:
        return self._messages.buffered

    @property
    def line_too_long(self) -> bool:
        """The client sent a message over the limit (the connection is closing for it)."""
        return self._messages.overflowed

    @property
    def gone(self) -> bool:
        return self._gone

    @property
    def end_reason(self) -> str:
        """Why the connection ends, as far as the engine knows."""
        if self.dropped is not None:
            return self.dropped
        if self._messages.overflowed:
            return "line too long"
        if self._messages.malformed:
            return "malformed"
        if self._close_asked:
            return "closed"
        return "eof" if self.eof else "closed"

    # -- internals --------------------------------------------------------

    def _received(self, message: bytes, terminator: bytes, out: list[bytes]) -> None:
        self.lines += 1
        session = self.session
        if session is None:
            return
        self._call(session.received, (message,), terminator, out)

    def _call(self, hook: Callable[..., Reply], args: tuple[Any, ...], terminator: bytes,
              out: list[bytes]) -> None:
        try:
            reply = hook(*args)
        except RequestError as exc:
            self._error("request", str(exc), terminator, out)
        except Exception:
            log.exception("%s: %s() failed", self._service_name(), hook.__name__)
            self._error("internal", "internal error", terminator, out)
        else:
            self._deliver(reply, terminator, out)
        self._apply_close()

    def _deliver(self, reply: Reply, terminator: bytes, out: list[bytes]) -> None:
        kind = job_kind(reply)
        if kind is not None:
            job = Job(reply, terminator, kind=kind)
            self.jobs_made += 1
            self._hold(job)
            if kind == "offload" or self.turns.admit(job):
                self._hand_out(job)
            return
        data = encoded(reply, terminator, self._messages.encode)
        if data is None:
            data = self._bad_reply(reply, terminator)
        self._emit(data, out)

    def _hand_out(self, job: Job) -> None:
        if self._new_jobs is None:
            self._new_jobs = []
        self._new_jobs.append(job)

    def _next_turn(self, finished: Job) -> None:
        """Hand out the next waiting hook job; after close(), the waiting never run."""
        job = self.turns.finished(finished)
        while job is not None and self._close_asked:
            if inspect.iscoroutine(job.work):
                job.work.close()  # never started: no "never awaited" warning
            job.reply = b""
            job = self.turns.finished(job)
        if job is not None:
            self._hand_out(job)

    def _bad_reply(self, reply: object, terminator: bytes) -> bytes:
        log.error("%s: a hook returned %s, which is not a reply (None, bytes, str, a list "
                  "of them, Offload, Blocking or an awaitable)", self._service_name(),
                  type(reply).__name__)
        self.errors += 1
        return self._messages.encode(self._error_text("internal", "internal error"), terminator)

    def _emit(self, data: bytes, out: list[bytes]) -> None:
        if not data:
            return
        if self._pending:
            self._pending.append(data)
        else:
            out.append(data)

    def _error(self, kind: str, message: str, terminator: bytes, out: list[bytes]) -> None:
        self.errors += 1
        self._emit(self._messages.encode(self._error_text(kind, message), terminator), out)

    def _error_text(self, kind: str, message: str) -> bytes:
        return self.service.error_text(kind, message)

    def _framing_failed(self, out: list[bytes]) -> None:
        framer = self._messages
        if framer.overflowed:
            self._error("line too long", framer.too_long_message(), self._newline, out)
        else:
            self._error("malformed", framer.malformed_message(), self._newline, out)
        self.closing = True
        self.settled = False

    def _apply_close(self) -> None:
        if self._close_asked and not self.closing:
            self.closing = True
            self.settled = False

    def _service_name(self) -> str:
        return self.service.name


def ending_reason(conn: SessionConnection, known: str | None, draining: bool, reset: bool) -> str:
    """Why a session's connection ended: what the engine decided (close(), a framing
    error, the cap) first, then what the server saw (idle), a drain, a reset, EOF."""
    if conn.closing or conn.dropped is not None:
        return conn.end_reason
    if known is not None:
        return known
    if draining:
        return "drain"
    return "reset" if reset else conn.end_reason


__all__ = ["MAX_UNSENT", "SEND_BUFFER_FULL", "SessionConnection", "ending_reason"]
