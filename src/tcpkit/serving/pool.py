"""A pool of worker processes whose jobs can be stopped.

``concurrent.futures.ProcessPoolExecutor`` cannot stop a job once it runs, and
killing one of its workers breaks the whole pool.  A factor server needs both
behaviours the other way round: a request that passes ``--time-limit``, or whose
client has gone, must stop burning CPU *now*, and the other requests must not
notice.  So each worker here is a plain process with a pipe; a job that must
stop gets its worker killed and replaced, and the pool stays full.

Workers start lazily (a reverse-only server never starts one) from a
``forkserver`` that has already imported the factor engine, so a replacement
is ready in milliseconds and never inherits the event loop's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import traceback
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from typing import Any

from tcpkit.service import Offload, RequestError
from tcpkit.serving.backstop import limit_cpu

log = logging.getLogger("tcpkit")
PRELOAD = ["tcpkit.services.factor"]
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class TimeLimitExceeded(Exception):
    """A job ran past the pool's time limit and was stopped."""


class WorkerCrashed(Exception):
    """A worker process died while running a job."""


def default_size() -> int:
    """One worker per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _worker_main(conn: Connection) -> None:
    """Run jobs from ``conn`` until the parent closes it."""
    _tie_to_server()
    while True:
        try:
            work: Offload = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        try:
            result: tuple[str, Any] = ("ok", work.func(*work.args))
        except RequestError as exc:
            result = ("request-error", str(exc))
        except Exception:
            result = ("crash", traceback.format_exc(limit=5))
        try:
            conn.send(result)
        except OSError:  # the server stopped waiting (cancelled, or gone)
            return


def _tie_to_server() -> None:
    """Make this worker live exactly as long as the server that uses it.

    Signals: SIGINT (^C reaches the whole process group) and SIGTERM (systemd
    signals the whole cgroup) are for the server, which drains and then stops
    its workers itself; a worker that died of them would fail the requests the
    drain is finishing.  Death: a factorization runs in C holding the GIL, so
    nothing in Python can notice that the server was killed (kill -9, OOM) and
    the orphan would burn a CPU until its number was done.  The kernel kills
    it instead when its parent, the forkserver, exits (PR_SET_PDEATHSIG) — and
    the forkserver exits when the server does, once its children stop holding
    its "alive" pipe, which multiprocessing hands every child.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    server = getattr(forkserver, "_forkserver", None)
    alive_fd = getattr(server, "_forkserver_alive_fd", None)
    if alive_fd is not None:
        with contextlib.suppress(OSError):
            os.close(alive_fd)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]
    if os.getppid() == 1:  # the forkserver was gone before the tie was made
        os._exit(1)


class _Worker:
    def __init__(self, ctx: Any) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child,), daemon=True)
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


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _stop_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.stop()


class WorkerPool:
    """Run :class:`Offload` jobs in worker processes, each bounded by ``time_limit``."""

    def __init__(self, size: int | None = None, time_limit: float = 30.0) -> None:
        self.size = size or default_size()
        self.time_limit = time_limit
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(PRELOAD)
        self._idle: asyncio.Queue[_Worker] | None = None
        self._all: set[_Worker] = set()
        self._closed = False

    async def run(self, work: Offload) -> bytes:
        """Run ``work`` in a worker; raise RequestError, TimeLimitExceeded or WorkerCrashed."""
        idle = await self._started()
        worker = await idle.get()
        keep = False
        try:
            result = await asyncio.wait_for(self._call(worker, work), self.time_limit)
            keep = True
        except TimeoutError:
            raise TimeLimitExceeded(f"time limit exceeded ({self.time_limit:g} s)") from None
        finally:
            if keep:
                idle.put_nowait(worker)
            else:  # timed out, cancelled or crashed: never reuse a busy worker
                await self._replace(worker)
        kind, value = result
        if kind == "ok":
            return bytes(value)
        if kind == "request-error":
            raise RequestError(value)
        log.error("a worker failed on a request:\n%s", value)
        raise RequestError("internal error")

    async def close(self) -> None:
        """Stop every worker."""
        self._closed = True
        workers, self._all = list(self._all), set()
        if workers:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, _stop_all, workers)

    async def _started(self) -> asyncio.Queue[_Worker]:
        if self._idle is None:
            self._idle = asyncio.Queue()
            loop = asyncio.get_running_loop()
            for _ in range(self.size):
                worker = await loop.run_in_executor(None, _Worker, self._ctx)
                self._all.add(worker)
                self._idle.put_nowait(worker)
        return self._idle

    async def _call(self, worker: _Worker, work: Offload) -> tuple[str, Any]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        fd = worker.conn.fileno()
        loop.add_reader(fd, _set_once, done)
        try:
            limit_cpu(worker.process.pid, self.time_limit)  # if we die, the kernel stops it
            worker.conn.send(work)
            await done
        finally:
            loop.remove_reader(fd)
        try:
            result: tuple[str, Any] = worker.conn.recv()
        except (EOFError, OSError):
            raise WorkerCrashed("worker process died") from None
        return result

    async def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` and start a fresh one, off the event loop.

        Not awaited to completion: the caller may be a cancelled task, and the
        pool must be refilled all the same, so a done-callback adopts the new
        worker on the loop's thread (asyncio.Queue is not thread-safe).
        """
        self._all.discard(worker)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self._swap, worker)
        future.add_done_callback(self._adopt)

    def _swap(self, worker: _Worker) -> _Worker | None:
        worker.stop()
        return None if self._closed else _Worker(self._ctx)

    def _adopt(self, future: asyncio.Future[_Worker | None]) -> None:
        if future.cancelled() or future.exception() is not None:
            log.error("could not restart a factor worker: %s", future.exception())
            return
        fresh = future.result()
        if fresh is None:
            return
        if self._closed or self._idle is None:
            fresh.stop()
            return
        self._all.add(fresh)
        self._idle.put_nowait(fresh)
