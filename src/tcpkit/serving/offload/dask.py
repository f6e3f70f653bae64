"""Offloaded work on a Dask distributed cluster: ``--executor dask://HOST:PORT``.

The front end (any tcpkit server) submits each offloaded request to the
cluster's scheduler and awaits the result; connection.py keeps replies in
request order as with the local pool.  What a Dask task cannot do by itself is
stop: a task running in a worker thread cannot be killed.  So the task runs
the work in a child *process* of the Dask worker (:class:`Child`, kept and
reused between tasks) and watches it:

* past the time limit it kills the child and reports ``time limit exceeded``;
* when the front end gives up on the request (its client disconnected), it
  cancels the Dask future *and* sets a ``distributed.Event`` named after the
  request; the task polls that event every :data:`POLL` seconds and kills the
  child, so the CPU goes idle within a second, as with the local pool.

Fair share: each request is submitted with a Dask priority that falls with the
number of requests its connection already has outstanding, so one client
pipelining many numbers does not keep others' requests waiting behind its
queue.  Needs the ``dask`` extra (``pip install 'tcpkit[dask]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Hashable
from multiprocessing.connection import Connection
from typing import Any

from tcpkit.service import Offload, RequestError
from tcpkit.serving.offload.jobs import TimeLimitExceeded, count_down, reply_from, run_job
from tcpkit.serving.offload.worker import MEMORY_LIMIT

log = logging.getLogger("tcpkit")
POLL = 0.2  # seconds between a task's checks for cancellation
SLACK = 30.0  # the front end's own bound beyond the time limit (a lost worker, a stuck queue)
CONNECT_TIMEOUT = 5.0
START_TIMEOUT = 60.0  # seconds a fresh child may take to start and preload
READY = ("ready", None)  # a fresh child's first message


class DaskUnavailable(RequestError):
    """The dask extra is not installed (the request gets an error reply)."""


def scheduler_address(url: str) -> str:
    """``dask://HOST:PORT`` → ``tcp://HOST:PORT`` (``tcp://``/``tls://`` pass through)."""
    if url.startswith("dask://"):
        return "tcp://" + url[len("dask://"):]
    return url


# -- in the Dask worker ----------------------------------------------------------------


class Child:
    """A factoring child process of a Dask worker, spoken to over pipes with pickles.

    A plain subprocess, not ``multiprocessing.Process``: Dask workers are
    daemonic processes, which multiprocessing forbids to have children.  It
    imports the ``preload`` modules the front end's services declare before
    its first job, as the local pool's workers do, and says "ready" when done:
    a job's time limit counts from then, so the seconds a fresh child spends
    starting Python and importing are not charged to the request.
    """

    def __init__(self, preload: tuple[str, ...] = ()) -> None:
        self.preload = preload
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tcpkit.serving.offload.dask", "--child", *preload],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.requests = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self.replies = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()
        self.ready = False

    def wait_ready(self, cancelled: Any) -> str | None:
        """Wait for a fresh child's "ready"; None, or why it will not come."""
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ready:
            if self.replies.poll(POLL):
                self.ready = self.replies.recv() == READY
                if not self.ready:
                    return "died"
            elif cancelled.is_set():
                return "cancelled"
            elif time.monotonic() > deadline:
                return "died"
        return None

    def stop(self) -> None:
        self.requests.close()
        self.replies.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=5)


# Idle children, by what they preloaded: front ends serving other services may
# share the cluster, and a child is reused only for the preload it was made with.
_idle_children: dict[tuple[str, ...], list[Child]] = {}
_children_lock = threading.Lock()


def _take_child(preload: tuple[str, ...]) -> Child:
    with _children_lock:
        idle = _idle_children.get(preload)
        if idle:
            return idle.pop()
    return Child(preload)


def _give_back(child: Child) -> None:
    with _children_lock:
        _idle_children.setdefault(child.preload, []).append(child)


def run_in_child(work: Offload, time_limit: float, token: str,
                 preload: tuple[str, ...] = ()) -> tuple[str, Any]:
    """The Dask task: run ``work`` in a child process, killable on timeout or cancel."""
    from distributed import Event

    child = _take_child(preload)
    try:
        result = _watch(child, work, time_limit, Event(token))
    except BaseException:
        child.stop()
        raise
    if result[0] in ("time-limit", "cancelled", "died"):
        child.stop()  # still busy, or gone: never reuse it
    else:
        _give_back(child)
    return result


def _watch(child: Child, work: Offload, time_limit: float, cancelled: Any) -> tuple[str, Any]:
    try:
        failed = child.wait_ready(cancelled)
        if failed is not None:
            return (failed, "worker process died" if failed == "died" else "")
        child.requests.send(work)
        deadline = time.monotonic() + time_limit
        while not child.replies.poll(POLL):
            if time.monotonic() > deadline:
                return ("time-limit", "")
            if cancelled.is_set():
                return ("cancelled", "")
        reply: tuple[str, Any] = child.replies.recv()
    except (EOFError, OSError):
        return ("died", "worker process died")
    return reply


def child_main(preload: list[str]) -> None:
    """``python -m tcpkit.serving.offload.dask --child [MODULE...]``: import the
    modules, then run jobs from stdin."""
    from tcpkit.serving.offload.worker import die_with_parent, limit_memory

    die_with_parent()
    limit_memory(MEMORY_LIMIT)
    requests = Connection(os.dup(0), writable=False)
    replies = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # anything a library prints must not corrupt the reply pipe
    for module in preload:
        importlib.import_module(module)
    with contextlib.suppress(EOFError, OSError, KeyboardInterrupt):
        replies.send(READY)
        while True:
            replies.send(run_job(requests.recv()))


# -- in the front end ------------------------------------------------------------------


class DaskExecutor:
    """Runs :class:`Offload` jobs on a Dask cluster; same interface as WorkerPool."""

    def __init__(self, url: str, time_limit: float = 30.0,
                 preload: tuple[str, ...] = ()) -> None:
        self.address = scheduler_address(url)
        self.time_limit = time_limit
        self.preload = preload
        self._client: Any = None
        self._connecting: asyncio.Lock | None = None
        self._outstanding: dict[Hashable, int] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def run(self, work: Offload, owner: Hashable | None = None) -> bytes:
        """Run ``work`` on the cluster; raise RequestError, TimeLimitExceeded or WorkerCrashed."""
        client = await self._connected()
        token = f"tcpkit-{uuid.uuid4().hex}"
        key = owner if owner is not None else token
        queued = self._outstanding.get(key, 0)
        self._outstanding[key] = queued + 1
        future = client.submit(run_in_child, work, self.time_limit, token, self.preload,
                               key=token, pure=False, priority=-queued)
        done = False
        try:
            kind, value = await asyncio.wait_for(future, self.time_limit + SLACK)
            done = True
        except TimeoutError:
            raise TimeLimitExceeded.after(self.time_limit) from None
        except Exception as exc:  # a lost worker or scheduler: fail this request, not the server
            log.error("dask task for a request failed: %r", exc)
            raise RequestError("factor cluster error") from None
        finally:
            count_down(self._outstanding, key)
            if not done:
                self._cancel_later(client, future, token)
        return reply_from(kind, value, self.time_limit)

    async def close(self) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await client.close()

    async def _connected(self) -> Any:
        if self._client is not None:
            return self._client
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._client is None:
                self._client = await self._connect()
        return self._client

    async def _connect(self) -> Any:
        try:
            from distributed import Client
        except ImportError:
            raise DaskUnavailable("--executor dask:// needs the dask extra: "
                                  "pip install 'tcpkit[dask]'") from None
        try:
            client = await Client(self.address, asynchronous=True, timeout=CONNECT_TIMEOUT,
                                  set_as_default=False)
        except (OSError, TimeoutError) as exc:
            log.error("cannot reach the dask scheduler at %s: %s", self.address, exc)
            raise RequestError("factor cluster unavailable") from None
        log.info("offloading to the dask scheduler at %s", self.address)
        return client

    def _cancel_later(self, client: Any, future: Any, token: str) -> None:
        """Stop a request nobody waits for any more: tell its task, cancel its future.

        Runs as its own task: the caller is usually being cancelled itself.
        """

        async def cancel() -> None:
            from distributed import Event

            with contextlib.suppress(Exception):
                await Event(token, client=client).set()
            with contextlib.suppress(Exception):
                await client.cancel([future], force=True)

        task = asyncio.get_running_loop().create_task(cancel())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    # The child must not unpickle work as ``__main__`` objects: re-enter by module name.
    from tcpkit.serving.offload import dask

    dask.child_main(sys.argv[2:])
