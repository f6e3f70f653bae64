"""The local pool's worker processes, hardened so that no request can outlive its welcome.

A worker runs a job a client may abandon, that may take hours, that may ask
for all the memory there is, on a server that may be killed with SIGKILL.  So
each worker process is set up to be stopped from outside at any moment, and to
stop by itself when nobody is left to stop it:

* it starts from a ``forkserver`` that has imported what the served services
  declare (:attr:`tcpkit.service.Service.preload`): a fresh worker is ready in
  milliseconds and never inherits the server's threads or event loop;
* its address space is capped (:func:`limit_memory`);
* it ignores the signals meant for the server (which drains, then stops its
  workers itself) and dies with its parent (:func:`_tie_to_server`);
* before each job it gets a CPU-time limit a little beyond the time limit
  (:func:`limit_cpu`): if the server is SIGKILLed or OOM-killed mid-job, the
  kernel ends the job that nobody is left to stop.  A live server always stops
  the job first, because a single-threaded worker's CPU time never runs ahead
  of wall-clock time.

:class:`WorkerProcess` is the server's handle on one such process;
:class:`ProcessStarter` starts them, and is what the scheduler
(:class:`~tcpkit.serving.offload.pool.WorkerPool`) calls unless a test gives it
a fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import multiprocessing
import os
import resource
import signal
from collections.abc import Sequence
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tcpkit.service import Offload
from tcpkit.serving.offload.jobs import WorkerCrashed, run_job

MEMORY_LIMIT = 2 << 30  # bytes of address space per worker process
GRACE = 2.0  # seconds of CPU past the time limit before the kernel steps in
PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


# -- the kernel's backstops ---------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def limit_cpu(pid: int, seconds: float) -> None:
    """Let ``pid`` use about ``seconds`` more CPU; past that the kernel kills it (SIGXCPU)."""
    try:
        budget = math.ceil(cpu_seconds(pid) + seconds + GRACE)
        _, hard = resource.prlimit(pid, resource.RLIMIT_CPU)
        resource.prlimit(pid, resource.RLIMIT_CORE, (0, 0))  # SIGXCPU would dump core
        resource.prlimit(pid, resource.RLIMIT_CPU, (budget, hard))
    except (OSError, ValueError, AttributeError):
        pass  # no /proc or prlimit (not Linux): the pool's own time limit still applies


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


# -- in the worker process ----------------------------------------------------


def worker_main(conn: Connection, memory_limit: int | None) -> None:
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


# -- in the server --------------------------------------------------------------


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class WorkerProcess:
    """The server's end of one worker process: a pipe, and the right to kill it."""

    def __init__(self, ctx: Any, memory_limit: int | None) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, memory_limit),
                                   daemon=True)
        self.process.start()
        child.close()

    async def call(self, work: Offload, time_limit: float) -> tuple[str, Any]:
        """Send ``work``, wait for its ``(kind, value)``; TimeoutError past ``time_limit``.

        A reader callback and a timer on one future, not ``asyncio.wait_for``
        (which costs a task per job: a tenth of a millisecond on a 2 ms job).
        The worker is useless after a TimeoutError or a cancel (it is still
        computing): the caller must stop it.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        fd = self.conn.fileno()
        loop.add_reader(fd, _set_once, done)
        timer = loop.call_later(time_limit, _expire, done)
        try:
            limit_cpu(self.process.pid, time_limit)  # if we die, the kernel stops it
            self.conn.send(work)
            await done
        finally:
            timer.cancel()
            loop.remove_reader(fd)
        try:
            result: tuple[str, Any] = self.conn.recv()
        except (EOFError, OSError):
            raise WorkerCrashed("worker process died") from None
        return result

    async def stop(self) -> None:
        """Kill and reap the process, in a thread (reaping may block a moment)."""
        await asyncio.get_running_loop().run_in_executor(None, self.kill)

    def kill(self) -> None:
        """Kill the process and reap it (no zombies)."""
        self.conn.close()
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        if self.process.exitcode is not None:
            self.process.close()  # its pipes now, not whenever it is garbage collected


class ProcessStarter:
    """Starts :class:`WorkerProcess` es from a forkserver that preloads ``preload``.

    The forkserver is one per process (multiprocessing's), started with the
    first worker: so the preload list set here is the one a server's workers
    get, and a server that never offloads (reverse only) starts no process.
    """

    def __init__(self, preload: Sequence[str] = (), memory_limit: int | None = MEMORY_LIMIT,
                 ) -> None:
        self.preload = list(preload)
        self.memory_limit = memory_limit
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(self.preload)

    async def __call__(self) -> WorkerProcess:
        """Start one worker; forking blocks a moment, so it happens in a thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, WorkerProcess, self._ctx, self.memory_limit)
