"""A session's hooks take turns: one runs at a time, in arrival order.

A hook that returns a :class:`~tcpkit.service.Blocking` call or an awaitable
has not finished when it returns: its work runs later, in a thread or on an
event loop.  If the next pipelined line's work started at once, two pieces of
one session's code would run at the same time — interleaved on the event loop,
or truly in parallel in two threads — and a session author would need a lock
for state as simple as ``self.count += 1`` or an SMTP dialog's current step.
Twisted's ``lineReceived`` and a Trio connection handler never overlap for one
connection; neither do tcpkit's hooks, in every mode: the engine hands a hook's
job to the driver only when the previous hook's job has finished.

:class:`~tcpkit.service.Offload` work is not a hook's: it is a pure function
run in a worker process on copies of its arguments, so it may overlap (a
factor client's pipelined numbers are factored in parallel).

Sans-IO like the engine that uses it: it only decides which job is next.
"""

from __future__ import annotations

from collections import deque

from tcpkit.connection import Job


class HookTurns:
    """Which of one session's hook jobs runs now, and which wait."""

    __slots__ = ("running", "waiting")

    def __init__(self) -> None:
        self.running: Job | None = None
        self.waiting: deque[Job] = deque()

    def admit(self, job: Job) -> bool:
        """A hook made ``job``: True if it may start now, False if it waits its turn."""
        if self.running is None:
            self.running = job
            return True
        self.waiting.append(job)
        return False

    def finished(self, job: Job) -> Job | None:
        """``job`` is done (or failed): the job whose turn it now is, if any.

        A job that is not the running one (a late result after its time limit
        already answered it) changes nothing.
        """
        if job is not self.running:
            return None
        self.running = self.waiting.popleft() if self.waiting else None
        return self.running


__all__ = ["HookTurns"]
