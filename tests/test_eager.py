"""The async mode's eager first step (tcpkit.serving.modes.eager), on a real event loop.

Scope: the helper alone — a coroutine that finishes at once gets no Task; one that
suspends continues in a Task exactly as if the Task had run it from the start
(values, exceptions, cancellation).  Sessions' async hooks through it, over sockets,
are tested in test_sessions_e2e.py and the chat example's tests.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tcpkit.serving.modes import eager


def run_on_loop(scenario: Any) -> Any:
    return asyncio.run(scenario())


def test_a_coroutine_that_never_waits_finishes_without_a_task() -> None:
    async def hook() -> str:
        lock = asyncio.Lock()
        async with lock:  # uncontended: no suspension
            return "done"

    async def scenario() -> tuple[bool, Any, int]:
        before = len(asyncio.all_tasks())
        finished, value = eager.start(asyncio.get_running_loop(), hook())
        return finished, value, len(asyncio.all_tasks()) - before

    assert run_on_loop(scenario) == (True, "done", 0)


def test_an_exception_of_the_first_step_propagates() -> None:
    async def hook() -> None:
        raise ValueError("bad")

    async def scenario() -> None:
        with pytest.raises(ValueError, match="bad"):
            eager.start(asyncio.get_running_loop(), hook())

    run_on_loop(scenario)


def test_a_suspended_coroutine_continues_in_a_task_with_values_and_exceptions() -> None:
    seen: list[object] = []

    async def hook(first: asyncio.Future[int], second: asyncio.Future[int]) -> int:
        seen.append("first step")
        value = await first  # suspends: the future is not done yet
        try:
            await second
        except KeyError as exc:  # thrown in through the Task
            seen.append(exc.args[0])
        await asyncio.sleep(0)  # a bare yield
        return value * 2

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        finished, rest = eager.start(loop, hook(first, second))
        assert not finished and seen == ["first step"]
        task = loop.create_task(rest.finish())
        task.add_done_callback(lambda _: rest.abandon())
        loop.call_soon(first.set_result, 21)
        loop.call_soon(lambda: loop.call_soon(second.set_exception, KeyError("thrown")))
        result: int = await asyncio.wait_for(task, 5)
        return result

    assert run_on_loop(scenario) == 42
    assert seen == ["first step", "thrown"]


def test_cancelling_the_task_cancels_the_coroutine() -> None:
    events: list[str] = []

    async def hook(never: asyncio.Future[None]) -> None:
        try:
            await never
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        finally:
            events.append("finally")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        finished, rest = eager.start(loop, hook(loop.create_future()))
        assert not finished
        task = loop.create_task(rest.finish())
        await asyncio.sleep(0)  # the Task now waits on the future
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_on_loop(scenario)
    assert events == ["cancelled", "finally"]


def test_a_task_cancelled_before_its_first_step_is_abandoned_cleanly() -> None:
    events: list[str] = []

    async def hook(never: asyncio.Future[None]) -> None:
        try:
            await never
        finally:
            events.append("finally")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        finished, rest = eager.start(loop, hook(loop.create_future()))
        assert not finished
        task = loop.create_task(rest.finish())
        done = asyncio.Event()
        task.add_done_callback(lambda _: (rest.abandon(), done.set()))
        task.cancel()  # before the Task ever ran
        await asyncio.wait_for(done.wait(), 5)

    run_on_loop(scenario)
    assert events == ["finally"]


def test_a_time_limit_around_the_rest_stops_it() -> None:
    async def hook() -> None:
        await asyncio.sleep(30)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        finished, rest = eager.start(loop, hook())
        assert not finished
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(rest.finish(), 0.05)

    run_on_loop(scenario)
