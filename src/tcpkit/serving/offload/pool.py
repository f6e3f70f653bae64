"""The local pool's scheduler: which job gets a worker process, and when.

``concurrent.futures.ProcessPoolExecutor`` cannot stop a job once it runs, and
killing one of its workers breaks the whole pool.  A factor server needs both
behaviours the other way round: a request that passes ``--time-limit``, or whose
client has gone, must stop burning CPU *now*, and the other requests must not
notice.  So each job here has a worker of its own; a job that must stop gets
its worker stopped and replaced, and the pool stays full.

Fairness.  Jobs carry an *owner* (the serving layer passes its connection).
Free workers go to waiting owners in turn (round robin), not to jobs in
arrival order, so a client that pipelines a thousand mid-size numbers gets one
worker in turn with everybody else instead of the whole pool.  And since a
running job cannot be preempted, an owner that has nothing running while every
worker is busy gets a *burst* worker (up to ``burst`` extra, ``size`` by
default): a client whose neighbours each run a 67-digit factorization is
served at once, the kernel sharing the CPUs between them, instead of waiting
up to the time limit.  Burst workers retire as soon as their job ends, unless
another owner with nothing running is waiting for one.

This module is only the scheduler: what a worker is and how it is started are
behind two small seams, ``start_worker`` (a coroutine function returning a
:class:`Worker`) and the :class:`Worker` itself.  The server uses real, hardened
processes (:mod:`tcpkit.serving.offload.worker`); the scheduler's tests use
fakes that they finish, fail and kill by hand.  Workers start lazily, on the
first job: a reverse-only server never starts one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Protocol

from tcpkit.service import Offload
from tcpkit.serving.offload.jobs import TimeLimitExceeded, count_down, reply_from
from tcpkit.serving.offload.worker import ProcessStarter

log = logging.getLogger("tcpkit")
CLOSE_WAIT = 10.0  # seconds close() waits for workers still starting or stopping
START_RETRIES = 3  # times a failed worker start is tried again...
START_RETRY_PAUSE = 0.1  # ...after this many seconds, then twice, three times as many


class Worker(Protocol):
    """One worker as the scheduler sees it."""

    async def call(self, work: Offload, time_limit: float) -> tuple[str, Any]:
        """Run ``work``; its ``(kind, value)`` outcome (see :mod:`.jobs`).

        Raises TimeoutError past ``time_limit``, WorkerCrashed if the worker
        died.  After either, or a cancel, the scheduler stops the worker.
        """
        ...

    async def stop(self) -> None:
        """Stop the worker for good (it may be busy); never raises."""
        ...


StartWorker = Callable[[], Awaitable[Worker]]


def default_size() -> int:
    """One worker per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class WorkerPool:
    """Run :class:`Offload` jobs in worker processes, each bounded by ``time_limit``.

    ``await pool.run(work, owner=conn)``; cancelling the call kills the job's
    worker.  Jobs without an owner are served in arrival order among themselves.
    """

    def __init__(self, size: int | None = None, time_limit: float = 30.0, *,
                 burst: int | None = None, preload: Sequence[str] = (),
                 start_worker: StartWorker | None = None) -> None:
        """``preload``: modules the worker processes import before their first job;
        ``start_worker``: how a worker is started (default: a hardened process)."""
        self.size = size or default_size()
        self.time_limit = time_limit
        self.burst = self.size if burst is None else burst
        self._start_worker = start_worker or ProcessStarter(preload)
        self._idle: list[Worker] = []
        self._all: set[Worker] = set()
        self._starting = 0  # workers being started
        self._background: set[asyncio.Future[Any]] = set()  # starts and stops in flight
        self._waiting: dict[Hashable, deque[asyncio.Future[Worker]]] = {}  # round-robin order
        self._running: dict[Hashable, int] = {}  # workers held, per owner
        self._started = False
        self._closed = False
        self._anonymous = 0

    @property
    def workers(self) -> int:
        """Worker processes alive or starting (tests and metrics)."""
        return len(self._all) + self._starting

    async def run(self, work: Offload, owner: Hashable | None = None) -> bytes:
        """Run ``work`` in a worker; raise RequestError, TimeLimitExceeded or WorkerCrashed."""
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        key: Hashable = owner if owner is not None else self._anonymous_key()
        worker = await self._acquire(key, bursting=owner is not None)
        keep = False
        try:
            result = await worker.call(work, self.time_limit)
            keep = True
        except TimeoutError:
            raise TimeLimitExceeded.after(self.time_limit) from None
        finally:
            self._let_go(key)
            if keep:
                self._release(worker)
            else:  # timed out, cancelled or crashed: never reuse a busy worker
                self._replace(worker)
        return reply_from(*result, time_limit=self.time_limit)

    async def close(self) -> None:
        """Stop every worker; jobs still waiting for one are cancelled."""
        self._closed = True
        for queue in self._waiting.values():
            for waiter in queue:
                waiter.cancel()
        self._waiting.clear()
        workers, self._all, self._idle = list(self._all), set(), []
        await asyncio.gather(*(worker.stop() for worker in workers))
        # Workers still starting are stopped as they come up (_adopt): wait for them.
        while self._background:
            done, _ = await asyncio.wait(set(self._background), timeout=CLOSE_WAIT)
            if not done:
                log.warning("%d factor workers did not start or stop in time",
                            len(self._background))
                break

    # -- handing out workers -----------------------------------------------

    def _anonymous_key(self) -> Hashable:
        self._anonymous += 1  # ownerless jobs: one queue each, so round robin = FIFO
        return ("anonymous", self._anonymous)

    async def _acquire(self, owner: Hashable, bursting: bool) -> Worker:
        if not self._started:
            self._started = True
            for _ in range(self.size):
                self._spawn()
        waiter: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(owner, deque()).append(waiter)
        self._dispatch()
        if not waiter.done() and bursting and self._starving(owner):
            self._burst(owner, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # granted, but too late
                self._let_go(owner)
                self._release(waiter.result())
            else:
                self._forget(owner, waiter)
            raise

    def _dispatch(self) -> None:
        """Give idle workers to waiting owners, one owner after another."""
        while self._idle and self._waiting:
            owner = next(iter(self._waiting))
            queue = self._waiting.pop(owner)
            waiter = queue.popleft()
            if queue:
                self._waiting[owner] = queue  # to the back of the line
            if waiter.done():
                continue
            self._running[owner] = self._running.get(owner, 0) + 1
            waiter.set_result(self._idle.pop())

    def _starving(self, owner: Hashable) -> bool:
        """Every regular worker busy, nothing running for ``owner``, this its only job waiting."""
        return (len(self._all) >= self.size and not self._running.get(owner)
                and len(self._waiting.get(owner, ())) == 1)

    def _burst(self, owner: Hashable, waiter: asyncio.Future[Worker]) -> None:
        """Start an extra worker for ``waiter``, whose owner has nothing running."""
        if self.workers < self.size + self.burst:
            self._spawn(owner, waiter)

    def _let_go(self, owner: Hashable) -> None:
        count_down(self._running, owner)

    def _forget(self, owner: Hashable, waiter: asyncio.Future[Worker]) -> None:
        queue = self._waiting.get(owner)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(waiter)
            if not queue:
                del self._waiting[owner]

    def _release(self, worker: Worker) -> None:
        """A worker finished its job: reuse it, or retire it if it is one too many.

        A burst worker stays only to serve another owner that has nothing running.
        """
        while len(self._all) > self.size and not self._closed:
            starving = next((o for o in self._waiting if not self._running.get(o)), None)
            if starving is None:
                break
            waiter = self._waiting[starving][0]
            if waiter.done():  # cancelled, not yet forgotten by its task
                self._forget(starving, waiter)
                continue
            self._grant(starving, waiter, worker)
            return
        if self._closed or len(self._all) > self.size:
            self._all.discard(worker)
            self._stop_later(worker, respawn=False)
            return
        self._idle.append(worker)
        self._dispatch()

    def _grant(self, owner: Hashable, waiter: asyncio.Future[Worker], worker: Worker) -> None:
        self._forget(owner, waiter)
        self._running[owner] = self._running.get(owner, 0) + 1
        waiter.set_result(worker)

    # -- starting and stopping workers -----------------------------------------

    def _spawn(self, owner: Hashable = None, waiter: asyncio.Future[Worker] | None = None,
               after: asyncio.Future[Any] | None = None, attempt: int = 0) -> None:
        """Start a worker (after ``after``, if given); for ``waiter`` if given."""
        self._starting += 1

        def start(_: object = None) -> None:
            if self._closed:  # a replacement due after a stop, but the pool is closing
                self._starting -= 1
                return
            started = self._in_background(self._start_worker())
            started.add_done_callback(lambda done: self._adopt(done, owner, waiter, attempt))

        if after is None:
            start()
        else:
            after.add_done_callback(start)

    def _replace(self, worker: Worker) -> None:
        """Stop ``worker`` and, if the pool is short, start a fresh one.

        Not awaited: the caller may be a cancelled task, and the pool must be
        refilled all the same.  Starting and stopping run as tasks of their
        own; the pool's state is touched only from the loop's callbacks.
        """
        self._all.discard(worker)
        self._stop_later(worker, respawn=self.workers < self.size)

    def _stop_later(self, worker: Worker, respawn: bool) -> None:
        stopped = self._in_background(worker.stop())
        if respawn:
            self._spawn(after=stopped)

    def _in_background(self, step: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run ``step`` as a task the pool holds on to (the loop only keeps weak ones)."""
        task = asyncio.ensure_future(step)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _start_failed(self, future: asyncio.Future[Worker], owner: Hashable,
                      waiter: asyncio.Future[Worker] | None, attempt: int) -> None:
        """Try a failed start again, a few times, after a pause: the pool must not
        stay short.

        The usual cause is a forkserver that died (a ^C to the process group
        while it was still importing its preload, before it ignores SIGINT; an
        OOM kill).  multiprocessing starts a new one on a later try, once the
        dead one has been noticed: not always on an immediate retry.
        """
        log.error("could not start a factor worker: %s",
                  "cancelled" if future.cancelled() else future.exception())
        if not self._closed and attempt < START_RETRIES:
            pause = self._in_background(asyncio.sleep(START_RETRY_PAUSE * (attempt + 1)))
            self._spawn(owner, waiter, after=pause, attempt=attempt + 1)

    def _adopt(self, future: asyncio.Future[Worker], owner: Hashable,
               waiter: asyncio.Future[Worker] | None, attempt: int) -> None:
        self._starting -= 1
        if future.cancelled() or future.exception() is not None:
            self._start_failed(future, owner, waiter, attempt)
            return
        fresh = future.result()
        if self._closed:
            self._in_background(fresh.stop())
            return
        self._all.add(fresh)
        if waiter is not None and not waiter.done():  # a burst worker, for its job
            self._grant(owner, waiter, fresh)
            return
        self._release(fresh)
