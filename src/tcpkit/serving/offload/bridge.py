"""Offloaded work for the blocking modes: the async WorkerPool, used from threads.

The iterative, thread and fork modes drive their clients with blocking code,
but offloaded requests (factoring a big number) need what
:class:`~tcpkit.serving.offload.pool.WorkerPool` already does well: a time limit, and a
worker that is killed the moment its job is no longer wanted.  Rather than a
second pool, :class:`OffloadBridge` runs the one pool on an event loop of its
own, in a background thread, and hands out ``concurrent.futures.Future``
objects.  Cancelling such a future cancels the pool's task on the loop, and the
pool kills the worker — so a blocking driver that sees its client leave gets
the same CPU-goes-idle guarantee as the async mode.

The bridge starts lazily: a reverse-only server never starts the thread, the
loop or a worker.  In fork mode each child makes its own bridge after the fork
(no thread or loop crosses a ``fork``; the pool's workers come from a
``forkserver``, which is fork-safe).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

from tcpkit.service import Offload
from tcpkit.serving.offload.pool import WorkerPool

CLOSE_TIMEOUT = 10.0


class OffloadBridge:
    """Run Offload jobs on a WorkerPool owned by a background event loop."""

    def __init__(self, size: int | None = None, time_limit: float = 30.0) -> None:
        self.size = size
        self.time_limit = time_limit
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: WorkerPool | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, work: Offload) -> concurrent.futures.Future[bytes]:
        """Start ``work``; the future's result is its reply (or the pool's exception).

        ``future.cancel()`` stops the job and kills its worker.
        """
        loop, pool = self._started()
        return asyncio.run_coroutine_threadsafe(pool.run(work), loop)

    def run(self, work: Offload, timeout: float | None = None) -> bytes:
        """Run ``work`` and wait for its reply (cancelled if the wait is interrupted)."""
        future = self.submit(work)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def close(self) -> None:
        """Stop the pool's workers and the loop thread (idempotent)."""
        with self._lock:
            self._closed = True
            loop, pool, thread = self._loop, self._pool, self._thread
            self._loop = self._pool = self._thread = None
        if loop is None or pool is None or thread is None:
            return
        stopped = asyncio.run_coroutine_threadsafe(pool.close(), loop)
        try:
            stopped.result(CLOSE_TIMEOUT)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(CLOSE_TIMEOUT)

    def _started(self) -> tuple[asyncio.AbstractEventLoop, WorkerPool]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the offload bridge is closed")
            if self._loop is None or self._pool is None:
                # A plain asyncio loop: uvloop's policy may be installed for the
                # serving loop, but this one only waits on a few worker pipes.
                loop = asyncio.SelectorEventLoop()
                ready = threading.Event()
                thread = threading.Thread(target=_run_loop, args=(loop, ready),
                                          name="tcpkit-offload", daemon=True)
                thread.start()
                ready.wait()
                self._pool = _make_pool(loop, self.size, self.time_limit)
                self._loop, self._thread = loop, thread
            return self._loop, self._pool


def _run_loop(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    try:
        loop.run_forever()
    finally:
        loop.close()


def _make_pool(loop: asyncio.AbstractEventLoop, size: int | None,
               time_limit: float) -> WorkerPool:
    """Create the pool on its loop's thread (it may bind loop objects when made)."""

    async def make() -> WorkerPool:
        return WorkerPool(size, time_limit)

    return asyncio.run_coroutine_threadsafe(make(), loop).result()
