"""Run a coroutine's first step at once; make a Task only if it suspends.

An ``async def`` hook of a session usually finishes without ever waiting: a
chat line awaits an uncontended lock and an in-process hub, and returns.  A
Task for it (plus ``wait_for``'s own inner Task and timer) costs more than
the hook's work, and its first step waits for the next loop iteration.  So the
async mode steps such a coroutine right away, on the loop's thread, and only
a coroutine that really suspends gets a Task for the rest.

Python 3.12 has this built in (``asyncio.Task(..., eager_start=True)``), with
the Task already current during the first step; it is used there.  Python
3.11 has not: :func:`first_step` drives the coroutine by hand, and
:class:`Rest` hands the awaitable it stopped at to a Task, which then drives
the rest exactly as if it had run the coroutine from the start (results,
exceptions and cancellation pass through).  One difference remains on 3.11:
no Task is current until the first suspension, so ``asyncio.current_task()``
is None there, and ``asyncio.timeout()`` or a ``TaskGroup`` entered before the
hook first waits raise RuntimeError (the server's ``--time-limit`` bounds a
hook anyway).  The blocking modes' drivers step by hand on every version
(:func:`first_step_on`): their private loop is not running between jobs, and
a Task can start eagerly only on a running loop.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine, Generator
from typing import Any

EAGER_TASKS = sys.version_info >= (3, 12)  # asyncio.Task(eager_start=True)


class Rest:
    """The rest of a coroutine that suspended in :func:`first_step`, as an awaitable.

    Awaited by a Task, it first hands the Task what the coroutine yielded (a
    Future the Task then waits for, or None for a bare yield), then forwards
    every value and exception the Task sends into the coroutine.
    """

    __slots__ = ("coro", "yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self.coro = coro
        self.yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self.coro, self.yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # CancelledError from the Task, included
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as stop:
                    return stop.value

    async def finish(self) -> Any:
        """The rest as a coroutine, for ``create_task`` or ``wait_for``."""
        return await self

    def abandon(self) -> None:
        """Call when the Task running :meth:`finish` is done, however it ended: a Task
        cancelled before its first step never reached the coroutine, which would
        otherwise stay suspended (its ``finally`` run by the garbage collector)."""
        self.coro.close()  # a no-op if it finished


class Running:
    """A coroutine that suspended in an eager Task (Python 3.12+): the same interface."""

    __slots__ = ("task",)

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task

    async def finish(self) -> Any:
        return await self.task

    def abandon(self) -> None:
        self.task.cancel()  # a no-op if it finished


Suspended = Rest | Running


def first_step(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Run ``coro`` until it first suspends (Python 3.11's way).

    Returns ``(True, result)`` if it finished, ``(False, rest)`` with a
    :class:`Rest` to await if it suspended; an exception it raised propagates.
    """
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, Rest(coro, yielded)


def first_step_on(loop: asyncio.AbstractEventLoop,
                  coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """:func:`first_step` with ``loop`` as the running loop while it runs: for a
    driver of the blocking modes, whose private loop runs only while it awaits a job
    (futures made in the first step belong to it, and the rest runs on it)."""
    asyncio._set_running_loop(loop)  # what run_until_complete does, for one step
    try:
        return first_step(coro)
    finally:
        asyncio._set_running_loop(None)


def start(loop: asyncio.AbstractEventLoop,
          coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Begin ``coro`` eagerly: ``(True, result)`` if it finished at once (an exception
    it raised propagates), else ``(False, suspended)``: a :data:`Suspended` whose
    ``finish()`` the caller runs in a Task, calling ``abandon()`` once that is done."""
    if EAGER_TASKS:
        task = asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg]
        if task.done():
            return True, task.result()
        return False, Running(task)
    return first_step(coro)


__all__ = ["EAGER_TASKS", "Rest", "Running", "Suspended", "first_step", "first_step_on", "start"]
