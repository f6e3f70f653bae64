"""A pool of worker processes whose jobs can be stopped, shared fairly between clients.

``concurrent.futures.ProcessPoolExecutor`` cannot stop a job once it runs, and
killing one of its workers breaks the whole pool.  A factor server needs both
behaviours the other way round: a request that passes ``--time-limit``, or whose
client has gone, must stop burning CPU *now*, and the other requests must not
notice.  So each worker here is a plain process with a pipe; a job that must
stop gets its worker killed and replaced, and the pool stays full.

Fairness.  Jobs carry an *owner* (the serving layer passes its connection).
Free workers go to waiting owners in turn (round robin), not to jobs in
arrival order, so a client that pipelines a thousand mid-size numbers gets one
worker in turn with everybody else instead of the whole pool.  And since a
running job cannot be preempted, an owner that has nothing running while every
worker is busy gets a *burst* worker (up to ``size`` extra): a client whose
neighbours each run a 67-digit factorization is served at once, the kernel
sharing the CPUs between them, instead of waiting up to the time limit.  Burst
workers retire as soon as their job ends.

Workers start lazily (a reverse-only server never starts one) from a
``forkserver`` that has already imported the factor engine and PARI, so a
replacement is ready in milliseconds and never inherits the event loop's
state.  Each worker's address space is capped (``memory_limit``): one request
cannot take the machine's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import resource
import signal
import traceback
from collections import deque
from collections.abc import Hashable
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from typing import Any

from tcpkit.errors import Error
from tcpkit.service import Offload, RequestError
from tcpkit.serving.offload.worker import limit_cpu

log = logging.getLogger("tcpkit")
PRELOAD = ["tcpkit.services.factor", "tcpkit.factoring.preload"]
MEMORY_LIMIT = 2 << 30  # bytes of address space per worker process
PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


class TimeLimitExceeded(Error):
    """A job ran past the pool's time limit and was stopped."""

    @classmethod
    def after(cls, time_limit: float) -> TimeLimitExceeded:
        """The one wording of a time-limit error (factor, sessions' jobs, every mode)."""
        return cls(f"time limit exceeded ({time_limit:g} s)")


class WorkerCrashed(Error):
    """A worker process died while running a job."""


def job_failure(exc: Exception) -> tuple[str, str]:
    """The ``error:`` message and the metrics kind for offloaded work that raised ``exc``.

    An unexpected exception (a bug in an executor) costs one request, never a
    hung connection: it is logged and answered ``error: internal error``.
    """
    if isinstance(exc, RequestError):
        return str(exc), "request"
    if isinstance(exc, TimeLimitExceeded):
        return str(exc), "time_limit"
    if isinstance(exc, WorkerCrashed):
        return str(exc), "worker_crashed"
    log.error("offloaded work failed", exc_info=exc)
    return "internal error", "internal"


def default_size() -> int:
    """One worker per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def run_job(work: Offload) -> tuple[str, Any]:
    """Run one job, turning its outcome into a picklable ``(kind, value)`` pair."""
    try:
        return ("ok", work.func(*work.args))
    except RequestError as exc:
        return ("request-error", str(exc))
    except MemoryError:
        return ("request-error", "out of memory")
    except Exception:
        return ("crash", traceback.format_exc(limit=5))


def reply_from(kind: str, value: Any, time_limit: float) -> bytes:
    """The reply for a job's ``(kind, value)`` outcome, or the exception it stands for."""
    if kind == "ok":
        return bytes(value)
    if kind == "request-error":
        raise RequestError(value)
    if kind == "time-limit":
        raise TimeLimitExceeded.after(time_limit)
    if kind == "died":
        raise WorkerCrashed(value)
    log.error("a worker failed on a request:\n%s", value)
    raise RequestError("internal error")


def count_down(counts: dict[Hashable, int], key: Hashable) -> None:
    """Decrement ``counts[key]``, dropping the key at zero (the dict stays small)."""
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def limit_memory(limit: int | None) -> None:
    """Cap this process's address space (never raising an existing lower cap)."""
    if limit is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft == resource.RLIM_INFINITY or soft > limit:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (a server killed by SIGKILL
    must not leave a worker computing for minutes)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _worker_main(conn: Connection, memory_limit: int | None) -> None:
    """Run jobs from ``conn`` until the parent closes it."""
    _tie_to_server()
    limit_memory(memory_limit)
    while True:
        try:
            work: Offload = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        try:
            conn.send(run_job(work))
        except OSError:  # the server stopped waiting (cancelled, or gone)
            return


def _tie_to_server() -> None:
    """Make this worker live exactly as long as the server that uses it.

    Signals: SIGINT (^C reaches the whole process group) and SIGTERM (systemd
    signals the whole cgroup) are for the server, which drains and then stops
    its workers itself; a worker that died of them would fail the requests the
    drain is finishing.  Death: die_with_parent() has the kernel kill the
    worker when its parent, the forkserver, exits -- but the forkserver exits
    only once every child has closed its "alive" pipe, which multiprocessing
    hands each one: so close it here, or a kill -9 of the server leaves both
    running, the worker computing for minutes.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
    server = getattr(forkserver, "_forkserver", None)
    alive_fd = getattr(server, "_forkserver_alive_fd", None)
    if alive_fd is not None:
        with contextlib.suppress(OSError):
            os.close(alive_fd)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]
    if os.getppid() == 1:  # the forkserver was gone before the tie was made
        os._exit(1)


class _Worker:
    def __init__(self, ctx: Any, memory_limit: int | None) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, memory_limit),
                                   daemon=True)
        self.process.start()
        child.close()

    def stop(self) -> None:
        """Kill the process and reap it (no zombies)."""
        self.conn.close()
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        if self.process.exitcode is not None:
            self.process.close()  # its pipes now, not whenever it is garbage collected


def _stop_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.stop()


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class WorkerPool:
    """Run :class:`Offload` jobs in worker processes, each bounded by ``time_limit``.

    ``await pool.run(work, owner=conn)``; cancelling the call kills the job's
    worker.  Jobs without an owner are served in arrival order among themselves.
    """

    def __init__(self, size: int | None = None, time_limit: float = 30.0, *,
                 memory_limit: int | None = MEMORY_LIMIT, burst: int | None = None) -> None:
        self.size = size or default_size()
        self.time_limit = time_limit
        self.memory_limit = memory_limit
        self.burst = self.size if burst is None else burst
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(PRELOAD)
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._starting = 0  # workers being started off the loop
        self._waiting: dict[Hashable, deque[asyncio.Future[_Worker]]] = {}  # round-robin order
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
            result = await self._call(worker, work)
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
        if workers:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, _stop_all, workers)

    async def _call(self, worker: _Worker, work: Offload) -> tuple[str, Any]:
        """Send ``work``, wait for the reply; TimeoutError past the time limit.

        A reader callback and a timer on one future, not ``asyncio.wait_for``
        (which costs a task per job: a tenth of a millisecond on a 2 ms job).
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        fd = worker.conn.fileno()
        loop.add_reader(fd, _set_once, done)
        timer = loop.call_later(self.time_limit, _expire, done)
        try:
            limit_cpu(worker.process.pid, self.time_limit)  # if we die, the kernel stops it
            worker.conn.send(work)
            await done
        finally:
            timer.cancel()
            loop.remove_reader(fd)
        try:
            result: tuple[str, Any] = worker.conn.recv()
        except (EOFError, OSError):
            raise WorkerCrashed("worker process died") from None
        return result

    # -- handing out workers -----------------------------------------------

    def _anonymous_key(self) -> Hashable:
        self._anonymous += 1  # ownerless jobs: one queue each, so round robin = FIFO
        return ("anonymous", self._anonymous)

    async def _acquire(self, owner: Hashable, bursting: bool) -> _Worker:
        if not self._started:
            self._started = True
            for _ in range(self.size):
                self._spawn()
        waiter: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
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

    def _burst(self, owner: Hashable, waiter: asyncio.Future[_Worker]) -> None:
        """Start an extra worker for ``waiter``, whose owner has nothing running."""
        if self.workers < self.size + self.burst:
            self._spawn(owner, waiter)

    def _let_go(self, owner: Hashable) -> None:
        count_down(self._running, owner)

    def _forget(self, owner: Hashable, waiter: asyncio.Future[_Worker]) -> None:
        queue = self._waiting.get(owner)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(waiter)
            if not queue:
                del self._waiting[owner]

    def _release(self, worker: _Worker) -> None:
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

    def _grant(self, owner: Hashable, waiter: asyncio.Future[_Worker], worker: _Worker) -> None:
        self._forget(owner, waiter)
        self._running[owner] = self._running.get(owner, 0) + 1
        waiter.set_result(worker)

    # -- starting and stopping processes (off the event loop) ------------------

    def _spawn(self, owner: Hashable = None, waiter: asyncio.Future[_Worker] | None = None,
               after: asyncio.Future[None] | None = None) -> None:
        """Start a worker in a thread (after ``after``, if given); for ``waiter`` if given."""
        self._starting += 1
        loop = asyncio.get_running_loop()

        def start(_: object = None) -> None:
            future = loop.run_in_executor(None, _Worker, self._ctx, self.memory_limit)
            future.add_done_callback(lambda done: self._adopt(done, owner, waiter))

        if after is None:
            start()
        else:
            after.add_done_callback(start)

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` and, if the pool is short, start a fresh one.

        Not awaited: the caller may be a cancelled task, and the pool must be
        refilled all the same.  The slow parts (kill, reap, start) run in a
        thread; callbacks come back to the loop's thread (the pool's state is
        not thread-safe).
        """
        self._all.discard(worker)
        self._stop_later(worker, respawn=self.workers < self.size)

    def _stop_later(self, worker: _Worker, respawn: bool) -> None:
        stopped = asyncio.get_running_loop().run_in_executor(None, worker.stop)
        if respawn:
            self._spawn(after=stopped)

    def _adopt(self, future: asyncio.Future[_Worker], owner: Hashable,
               waiter: asyncio.Future[_Worker] | None) -> None:
        self._starting -= 1
        if future.cancelled() or future.exception() is not None:
            log.error("could not start a factor worker: %s", future.exception())
            return
        fresh = future.result()
        if self._closed:
            fresh.stop()
            return
        self._all.add(fresh)
        if waiter is not None and not waiter.done():  # a burst worker, for its job
            self._grant(owner, waiter, fresh)
            return
        self._release(fresh)
