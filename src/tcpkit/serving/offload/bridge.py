"""Offloaded work for the blocking modes: the async executors, used from threads.

The iterative, thread and fork modes drive their clients with blocking code,
but offloaded requests (factoring a big number) need what the executors
(:mod:`tcpkit.serving.offload.executors`: the local pool, or a Dask cluster)
already do well: a time limit, and work that stops the moment it is no longer
wanted.  Rather than a second implementation of either, :class:`OffloadBridge`
runs whatever :func:`~tcpkit.serving.offload.executors.make_executor` returns
— the same executor the async mode would use — on an event loop of its own,
in a background thread, and hands out ``concurrent.futures.Future`` objects.
Cancelling such a future cancels the executor's task on the loop, which kills
the worker (or cancels the cluster's task) — so a blocking driver that sees
its client leave gets the same CPU-goes-idle guarantee as the async mode.

The bridge starts lazily: a reverse-only server never starts the thread, the
loop, a worker or a cluster client.  In fork mode each child makes its own
bridge after the fork (no thread, loop or connection crosses a ``fork``; the
pool's workers come from a ``forkserver``, which is fork-safe; a Dask client is
made in the child).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterable

from tcpkit.loop_thread import start_loop_thread
from tcpkit.service import Offload
from tcpkit.serving.config import Limits
from tcpkit.serving.offload.executors import Executor, make_executor

CLOSE_TIMEOUT = 10.0


class OffloadBridge:
    """Run Offload jobs on the executor ``limits`` name, owned by a background event loop."""

    def __init__(self, limits: Limits, preload: Iterable[str] = ()) -> None:
        self.limits = limits
        self.preload = tuple(preload)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: Executor | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, work: Offload) -> concurrent.futures.Future[bytes]:
        """Start ``work``; the future's result is its reply (or the pool's exception).

        ``future.cancel()`` stops the job (kills its worker, or cancels its cluster task).
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
        """Stop the executor (its workers, or its cluster client) and the loop thread
        (idempotent)."""
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

    def _started(self) -> tuple[asyncio.AbstractEventLoop, Executor]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the offload bridge is closed")
            if self._loop is None or self._pool is None:
                # A plain asyncio loop: uvloop's policy may be installed for the
                # serving loop, but this one only waits on a few pipes or sockets.
                loop = asyncio.SelectorEventLoop()
                thread = start_loop_thread(loop, "tcpkit-offload")
                self._pool = _make_executor(loop, self.limits, self.preload)
                self._loop, self._thread = loop, thread
            return self._loop, self._pool


def _make_executor(loop: asyncio.AbstractEventLoop, limits: Limits,
                   preload: tuple[str, ...]) -> Executor:
    """Create the executor on its loop's thread (it may bind loop objects when made)."""

    async def make() -> Executor:
        return make_executor(limits, preload)

    return asyncio.run_coroutine_threadsafe(make(), loop).result()
