"""The local pool's scheduler, driven by hand: fake workers, no processes, no clock.

WorkerPool takes how it starts a worker as a constructor argument (the seam
Trio's ``serve_listeners`` tests use a MemoryListener for).  Here that is a
:class:`FakeStarter` whose workers never compute: each job they are given
waits in :attr:`FakeStarter.calls` until the test finishes, fails or abandons
it, so every scheduling decision (who gets a worker, when a burst worker
starts, retires or is replaced) is observed exactly, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest

from tcpkit.service import Offload, RequestError
from tcpkit.serving.offload import pool as pool_module
from tcpkit.serving.offload.jobs import TimeLimitExceeded, WorkerCrashed
from tcpkit.serving.offload.pool import WorkerPool

WAIT = 5.0  # seconds: a bound for waits that, with fakes, end in a few loop steps


def named(name: str) -> bytes:
    """The work a fake job stands for (never run: the fake worker runs nothing)."""
    return name.encode()


@dataclass(eq=False)
class Call:
    """A job a fake worker was given, waiting for the test to end it."""

    worker: FakeWorker
    name: str
    outcome: asyncio.Future[tuple[str, Any]]

    def finish(self) -> None:
        self.outcome.set_result(("ok", self.name.encode()))


@dataclass(eq=False)
class FakeWorker:
    number: int
    calls: asyncio.Queue[Call]
    stopped: bool = False
    jobs: list[str] = field(default_factory=list)

    async def call(self, work: Offload, time_limit: float) -> tuple[str, Any]:
        assert not self.stopped, "a stopped worker was given a job"
        name = work.args[0]
        self.jobs.append(name)
        outcome: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()
        self.calls.put_nowait(Call(self, name, outcome))
        return await outcome

    async def stop(self) -> None:
        self.stopped = True


class FakeStarter:
    """Starts FakeWorkers, numbered from 1, at once."""

    def __init__(self) -> None:
        self.started: list[FakeWorker] = []
        self.calls: asyncio.Queue[Call] = asyncio.Queue()
        self.failures = 0  # starts to fail before the next one succeeds
        self.failed = 0

    async def __call__(self) -> FakeWorker:
        if self.failures:
            self.failures -= 1
            self.failed += 1
            raise EOFError("unexpected EOF")  # as from a forkserver that died
        worker = FakeWorker(len(self.started) + 1, self.calls)
        self.started.append(worker)
        return worker

    async def next_call(self) -> Call:
        return await asyncio.wait_for(self.calls.get(), WAIT)


async def settle() -> None:
    """Let every callback and task that is ready run (no clock involved)."""
    for _ in range(50):
        await asyncio.sleep(0)


def drive(test: Callable[[FakeStarter], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(test(FakeStarter()), WAIT * 4)

    asyncio.run(main())


def submit(pool: WorkerPool, owner: str, name: str) -> asyncio.Task[bytes]:
    return asyncio.get_running_loop().create_task(pool.run(Offload(named, (name,)), owner))


async def expect_no_call(starter: FakeStarter) -> None:
    await settle()
    assert starter.calls.empty(), f"unexpected job {starter.calls.get_nowait().name}"


def test_owners_take_turns_not_arrival_order() -> None:
    async def test(starter: FakeStarter) -> None:
        pool = WorkerPool(1, burst=0, start_worker=starter)
        tasks = [submit(pool, owner, owner + str(i))
                 for owner in ("a", "b") for i in (1, 2, 3)]  # a's three arrive first
        order = []
        for _ in tasks:
            call = await starter.next_call()
            order.append(call.name)
            call.finish()
        assert order == ["a1", "b1", "a2", "b2", "a3", "b3"]
        assert [await task for task in tasks] == [b"a1", b"a2", b"a3", b"b1", b"b2", b"b3"]
        assert len(starter.started) == 1
        await pool.close()

    drive(test)


def test_a_starving_owner_gets_a_burst_worker_at_once() -> None:
    async def test(starter: FakeStarter) -> None:
        pool = WorkerPool(1, burst=1, start_worker=starter)
        a1, a2 = submit(pool, "a", "a1"), submit(pool, "a", "a2")
        first = await starter.next_call()
        assert (first.name, first.worker.number) == ("a1", 1)
        await expect_no_call(starter)  # a2 waits: its owner already has a job running
        b1 = submit(pool, "b", "b1")  # b has nothing running, every worker is busy
        burst = await starter.next_call()
        assert (burst.name, burst.worker.number) == ("b1", 2)
        assert pool.workers == 2
        c1 = submit(pool, "c", "c1")  # starving too, but the burst allowance is used up
        await expect_no_call(starter)
        assert pool.workers == 2
        for call in (first, burst):
            call.finish()
        names = set()
        for _ in range(2):
            call = await starter.next_call()
            names.add(call.name)
            call.finish()
        assert names == {"a2", "c1"}
        assert [await t for t in (a1, a2, b1, c1)] == [b"a1", b"a2", b"b1", b"c1"]
        await pool.close()

    drive(test)


def test_a_burst_worker_serves_the_next_starving_owner_then_retires() -> None:
    async def test(starter: FakeStarter) -> None:
        pool = WorkerPool(1, burst=1, start_worker=starter)
        a1, a2 = submit(pool, "a", "a1"), submit(pool, "a", "a2")
        first = await starter.next_call()
        b1 = submit(pool, "b", "b1")
        burst = await starter.next_call()
        c1 = submit(pool, "c", "c1")
        await expect_no_call(starter)
        burst.finish()  # b is done: c, with nothing running, is next on the burst worker
        handed_on = await starter.next_call()
        assert (handed_on.name, handed_on.worker) == ("c1", burst.worker)
        handed_on.finish()  # nobody else starving (a has a1 running): the burst worker goes
        await settle()
        assert burst.worker.stopped and pool.workers == 1
        await expect_no_call(starter)  # a2 still waits for a's own turn on worker 1
        first.finish()
        last = await starter.next_call()
        assert (last.name, last.worker) == ("a2", first.worker)
        last.finish()
        assert [await t for t in (a1, a2, b1, c1)] == [b"a1", b"a2", b"b1", b"c1"]
        assert len(starter.started) == 2 and not first.worker.stopped
        await pool.close()
        assert first.worker.stopped

    drive(test)


def end_by_cancel(call: Call, task: asyncio.Task[bytes]) -> None:
    task.cancel()  # the client left


def end_by_time_limit(call: Call, task: asyncio.Task[bytes]) -> None:
    call.outcome.set_exception(TimeoutError())


def end_by_crash(call: Call, task: asyncio.Task[bytes]) -> None:
    call.outcome.set_exception(WorkerCrashed("worker process died"))


@pytest.mark.parametrize(("end", "raised"), [
    (end_by_cancel, asyncio.CancelledError),
    (end_by_time_limit, TimeLimitExceeded),
    (end_by_crash, WorkerCrashed),
])
def test_a_killed_worker_is_replaced(
        end: Callable[[Call, asyncio.Task[bytes]], None], raised: type[BaseException]) -> None:
    async def test(starter: FakeStarter) -> None:
        pool = WorkerPool(1, time_limit=7, burst=0, start_worker=starter)
        doomed = submit(pool, "a", "doomed")
        call = await starter.next_call()
        end(call, doomed)
        with pytest.raises(raised):
            await doomed
        after = submit(pool, "a", "after")
        fresh = await starter.next_call()
        assert call.worker.stopped  # busy, or dead: never reused
        assert (fresh.name, fresh.worker.number) == ("after", 2)
        assert pool.workers == 1
        fresh.finish()
        assert await after == b"after"
        await pool.close()

    drive(test)


def test_a_request_error_keeps_the_worker() -> None:
    async def test(starter: FakeStarter) -> None:
        pool = WorkerPool(1, burst=0, start_worker=starter)
        bad = submit(pool, "a", "bad")
        call = await starter.next_call()
        call.outcome.set_result(("request-error", "not an integer"))
        with pytest.raises(RequestError, match="not an integer"):
            await bad
        good = submit(pool, "a", "good")
        again = await starter.next_call()
        assert again.worker is call.worker and not call.worker.stopped
        again.finish()
        assert await good == b"good"
        await pool.close()

    drive(test)


def test_no_job_no_worker_and_close_stops_everything() -> None:
    async def test(starter: FakeStarter) -> None:
        idle = WorkerPool(2, start_worker=starter)
        await idle.close()
        assert starter.started == []  # a server that never offloads starts nothing

        pool = WorkerPool(1, burst=0, start_worker=starter)
        running = submit(pool, "a", "running")
        waiting = submit(pool, "b", "waiting")
        await starter.next_call()
        await pool.close()
        assert all(worker.stopped for worker in starter.started)
        await settle()
        assert waiting.cancelled()  # a job still waiting for a worker is cancelled
        running.cancel()  # a running one: its caller (the serving mode) cancels it
        with pytest.raises(asyncio.CancelledError):
            await running
        with pytest.raises(RuntimeError, match="closed"):
            await pool.run(Offload(named, ("late",)))

    drive(test)



def test_a_failed_start_is_tried_again_a_few_times(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "START_RETRY_PAUSE", 0)

    async def test(starter: FakeStarter) -> None:
        starter.failures = 2  # e.g. the forkserver died of a ^C while preloading
        pool = WorkerPool(1, burst=0, start_worker=starter)
        job = submit(pool, "a", "a1")
        call = await starter.next_call()
        assert starter.failed == 2 and call.worker.number == 1
        call.finish()
        assert await job == b"a1"
        await pool.close()

        starter.failures = 100  # a start that can never succeed is not tried forever
        doomed = WorkerPool(1, burst=0, start_worker=starter)
        waiting = submit(doomed, "a", "never")
        await expect_no_call(starter)
        assert starter.failed == 2 + 4  # the first try and three more
        await doomed.close()
        await settle()
        assert waiting.cancelled()

    drive(test)
