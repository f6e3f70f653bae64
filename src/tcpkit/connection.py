"""One client connection as a sans-IO state machine: request bytes in, reply bytes out.

:class:`ServiceConnection` joins the framer to a service and keeps replies in
request order.  It owns no socket and no clock; every serving mode drives it
the same way:

    conn = ServiceConnection(service, max_line)
    send(conn.receive_data(data))          # replies that are ready now
    for job in conn.take_jobs(): start(job) # Offload work to run elsewhere
    ...
    send(conn.job_done(job, reply))        # a job finished (or job_failed)
    send(conn.receive_eof())               # the client half-closed
    if conn.finished: close()

While ``conn.settled`` is true (input open, no job started, no reply held) the
serving layer may skip the job and close checks and just send the replies:
that is the hot path of every mode.

``conn.progressed`` is the idle-timeout rule against slowloris clients, kept
here so that every mode applies the same one: progress is a request begun
(the first byte of a new line) or finished.  Bytes that only lengthen an
unfinished line are not progress, so a line must be complete within the idle
timeout of its first byte.  The connection sets the flag; the serving layer
reads it when it checks for idleness and clears it.

Replies are released strictly in request order: while an offloaded job is
pending, later replies wait behind it (only their bytes, a few per line, are
held; the serving layer stops reading when too many wait).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Literal

from tcpkit.framing import LF, LineFramer, split_lines, split_terminator
from tcpkit.service import Blocking, Offload, RequestError, Service

log = logging.getLogger("tcpkit")
ERROR = b"error: "


JobKind = Literal["offload", "blocking", "awaitable"]


@dataclass(eq=False)
class Job:
    """A request whose reply is computed elsewhere, waiting for it.

    ``kind`` says where the serving layer must run ``work``: ``"offload"`` in
    a worker process (an :class:`Offload`), ``"blocking"`` in a thread (a
    :class:`Blocking` call, sessions only), ``"awaitable"`` on an event loop
    (a coroutine, sessions only).  Stateless services only make offload jobs.
    """

    work: Offload | Blocking | Awaitable[Any]
    terminator: bytes
    reply: bytes | None = None
    handle: object = field(default=None, repr=False)  # the serving layer's task or future
    kind: JobKind = "offload"


class ServiceConnection:
    """Per-connection protocol state; see the module docstring."""

    __slots__ = (
        "_answer",
        "_block",
        "_framer",
        "_new_jobs",
        "_pending",
        "closing",
        "draining",
        "eof",
        "errors",
        "jobs_made",
        "lines",
        "progressed",
        "settled",
    )

    def __init__(self, service: Service, max_line: int = 1 << 20) -> None:
        answer = service.answer
        if answer is None:
            raise TypeError(f"{service.name} is served by tcpkit.session.SessionConnection")
        self._answer = answer
        self._block = service.answer_block
        self._framer = LineFramer(max_line)
        # Created on first use: most connections never hold a reply or start a
        # job, and 10,000 idle clients should not cost 10,000 empty deques.
        self._pending: deque[Job | bytes] | None = None  # replies held behind a job
        self._new_jobs: list[Job] | None = None
        self.lines = 0  # requests answered or queued
        self.errors = 0  # error replies sent
        self.jobs_made = 0  # requests answered by a job (started, or waiting its turn)
        self.eof = False  # the client sent EOF
        self.closing = False  # a protocol error: close once replies are out
        self.draining = False  # the server drains: take no request after the next one
        # True while the serving layer has nothing to do but write the replies:
        # input open, no job started, no reply held.  A plain attribute, so the
        # hot path checks one flag instead of four conditions.
        self.settled = True
        # Set when a request begins or finishes (see the module docstring);
        # only the serving layer clears it.  True at first: a new connection
        # gets a full idle timeout for its first byte.
        self.progressed = True

    # -- input ------------------------------------------------------------

    def receive_data(self, data: bytes) -> bytes:
        """Feed received bytes; return the replies that are ready now."""
        if not self.settled and (self.closing or self.eof):
            return b""
        framer = self._framer
        block = framer.feed(data)
        out = b""
        if block:
            self.progressed = True  # a request finished (one store: the hot path)
            block_handler = self._block
            reply = None
            if block_handler is not None and not self._pending:
                reply = block_handler(block)
            if reply is not None:
                self.lines += block.count(LF)
                out = reply
            else:
                out = self._answer_lines(block)
            if not self.settled and self.draining:
                self.stop_input()  # the request on its way when the drain began is answered
        elif data and framer.buffered == len(data):
            self.progressed = True  # nothing was held: these bytes begin a request
        if framer.overflowed:
            out += self._too_long()
        return out

    def receive_eof(self) -> bytes:
        """The client finished sending: answer its unterminated last line, if any."""
        if self.eof:
            return b""
        self.eof = True
        self.settled = False
        line = None if self.closing else self._framer.feed_eof()
        if self._framer.overflowed and not self.closing:
            return self._too_long()
        self.progressed = True  # the stream's end finishes its last request, if any
        if line is None:
            return b""
        out: list[bytes] = []
        self._answer_line(line, LF, out)
        return b"".join(out)

    def stop_input(self) -> None:
        """Take no more requests; answer those already read (then the connection is done)."""
        self.eof = True
        self.settled = False

    def drain(self) -> None:
        """The server is draining: finish at the next reply boundary.

        At once if the connection is between requests (answered, no part of a
        line held) or still has replies to send; otherwise once the request it
        is receiving — a new connection's first one included — is answered.  A
        client whose request was already on the wire when the drain began is
        then answered, not cut off; only one sent after the last reply can
        cross the server's FIN, and at most one per connection.
        """
        if self._pending or self.eof or self.closing or (
                self.lines and not self._framer.buffered):
            self.stop_input()
        else:
            self.draining = True
            self.settled = False

    # -- offloaded work ---------------------------------------------------

    def take_jobs(self) -> list[Job]:
        """Jobs created since the last call; the serving layer must run each."""
        jobs, self._new_jobs = self._new_jobs, None
        return jobs or []

    def job_done(self, job: Job, reply: bytes) -> bytes:
        """A job's work returned ``reply``; return whatever replies are now in order."""
        job.reply = reply + job.terminator
        return self._release()

    def job_failed(self, job: Job, message: str, kind: str = "internal") -> bytes:
        """A job could not finish (time limit, worker crash): reply with an error.

        ``kind`` (the metrics kind: time_limit, worker_crashed, ...) matters to
        sessions, whose services may write errors in their own syntax.
        """
        self.errors += 1
        return self.job_done(job, ERROR + message.encode("utf-8", "replace"))

    def pending_jobs(self) -> list[Job]:
        """Jobs still waiting for their work (to cancel when the client leaves)."""
        return [item for item in self._pending or () if isinstance(item, Job)
                and item.reply is None]

    # -- state ------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Replies held back behind unfinished jobs."""
        return len(self._pending) if self._pending else 0

    @property
    def finished(self) -> bool:
        """Nothing more will be sent: the client is done (EOF or error) and all replies are out."""
        return (self.eof or self.closing) and not self._pending

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished request line."""
        return self._framer.buffered

    @property
    def line_too_long(self) -> bool:
        """The client sent a line over the limit (the connection is closing for it)."""
        return self._framer.overflowed

    # -- internals --------------------------------------------------------

    def _answer_lines(self, block: bytes) -> bytes:
        out: list[bytes] = []
        for line in split_lines(block):
            content, terminator = split_terminator(line)
            self._answer_line(content, terminator, out)
        return b"".join(out)

    def _answer_line(self, content: bytes, terminator: bytes, out: list[bytes]) -> None:
        self.lines += 1
        try:
            reply: bytes | Offload = self._answer(content)
        except RequestError as exc:
            self.errors += 1
            reply = ERROR + str(exc).encode("utf-8", "replace")
        except Exception:
            # A bug in a service must cost one request, not the server.
            log.exception("service failed on a request")
            self.errors += 1
            reply = ERROR + b"internal error"
        if isinstance(reply, Offload):
            job = Job(reply, terminator)
            self.jobs_made += 1
            self._hold(job)
            if self._new_jobs is None:
                self._new_jobs = []
            self._new_jobs.append(job)
        elif self._pending:
            self._pending.append(reply + terminator)
        else:
            out.append(reply)
            out.append(terminator)

    def _hold(self, item: Job | bytes) -> None:
        if self._pending is None:
            self._pending = deque()
        self._pending.append(item)
        self.settled = False

    def _too_long(self) -> bytes:
        return self._fail(f"line too long (max {self._framer.max_line} bytes)")

    def _fail(self, message: str) -> bytes:
        self.closing = True
        self.settled = False
        self.errors += 1
        reply = ERROR + message.encode() + LF
        if self._pending:
            self._pending.append(reply)
            return b""
        return reply

    def _release(self) -> bytes:
        out: list[bytes] = []
        pending = self._pending
        if pending is None:
            return b""
        while pending:
            head = pending[0]
            if isinstance(head, Job):
                if head.reply is None:
                    break
                out.append(head.reply)
            else:
                out.append(head)
            pending.popleft()
        if not pending and not (self.eof or self.closing or self.draining):
            self.settled = True
        return b"".join(out)
