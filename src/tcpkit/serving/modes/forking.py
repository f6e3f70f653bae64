"""The fork mode: a child process per client, the article's answer to multi-tasking.

The parent only accepts: it forks a child for each client (refusing past
``--max-connections`` children), closes its copy of the client socket, and
reaps children as they exit — on SIGCHLD, through a self-pipe, so that no
child is ever left a zombie.  The child closes the listening sockets, serves
its one client with the shared blocking driver and reports its counters to the
parent over a pipe before it exits.

Stopping travels by pipe and by signal: each child keeps the read end of the
parent's stop pipe, which the driver's poll loop watches (a parent that dies
without a word shows up as EOF on it), and a draining parent also sends each
child SIGTERM, which raises the child's own stop flag: a child on the driver's
fast path waits in ``recv``, not ``poll``, and reads that flag (which also
turns true once the parent is gone).  A child that itself gets SIGINT/SIGTERM
drains just its client.
Per-address limits are counted in the parent (a child's address is released
when it is reaped); with ``--metrics`` each child counts into prometheus-client's
multiprocess files, which the parent's scrape merges, and a reaped child's
live gauges are dropped.  Offloaded work in a child runs on a bridge of its
own, started lazily after the fork, with one local worker (the cap on children
is then also the cap on workers) or its own Dask client (``--executor``).

What a child costs is mostly pages: the kernel copies the parent's page tables
at the fork, and then every page the child (or the parent, while the child
lives) writes to — CPython writes to an object's page whenever it touches its
reference count, so running a function copies the pages of its code and of
the objects it uses.  Hence: the parent imports no event loop, offload bridge
or hub unless a service needs them (``tcpkit`` and the serving layer import
them on first use); ``gc.freeze()`` keeps the collector from touching every
old object in each child; a child keeps the parent's signal handlers (they
check :attr:`ForkingServer._own_stop`) instead of installing its own, and
ends with ``os._exit`` (no atexit work, no teardown of the heap).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import select
import signal
import socket
import threading
import time
from dataclasses import replace
from types import FrameType
from typing import NoReturn

from tcpkit.service import Service
from tcpkit.serving.config import Listener
from tcpkit.serving.modes.accepting import BlockingServer
from tcpkit.serving.modes.pipes import StatsChannel, Wakeup
from tcpkit.serving.observe import metrics
from tcpkit.serving.observe.stats import Stats
from tcpkit.serving.offload.executors import import_before_fork

log = logging.getLogger("tcpkit")


class _ChildStop(Wakeup):
    """A child's own stop pipe, whose :attr:`raised` also turns true when the parent
    is gone, so that a child blocked in ``recv`` on the driver's fast path (no
    ``poll``, so no EOF seen on the parent's stop pipe) drains an orphaned client
    as the poll loop does: after the chunk it is answering, or within a tick."""

    def __init__(self, parent: int) -> None:
        self._parent = parent
        super().__init__()

    @property
    def raised(self) -> bool:
        return self._raised or os.getppid() != self._parent

    @raised.setter
    def raised(self, value: bool) -> None:
        self._raised = value


class ForkingServer(BlockingServer):
    """Serves each client in a child process of its own."""

    clients_hold_descriptors = False  # each child holds its client's socket

    mode = "fork"
    _own_stop: Wakeup | None = None  # in a child: its own stop pipe

    def serve(self) -> None:
        self._children: dict[int, tuple[Service, object]] = {}  # pid -> its client
        self._exited = Wakeup()
        self._reports = StatsChannel()
        self._fork_failed = False
        self._told_to_drain = False  # the children were sent SIGTERM
        self._pid = os.getpid()  # each child's parent
        # One worker per child: the cap on children is then also the cap on workers.
        self._child_limits = replace(self.limits, pool_size=1)
        # Objects that exist now are never collected in a child: without this,
        # the child's first GC pass writes to every object's header and copies
        # most of the parent's heap page by page (copy-on-write).
        self._import_for_children()
        gc.freeze()
        previous = signal.signal(signal.SIGCHLD, self._on_child_exit)
        try:
            super().serve()
        finally:
            signal.signal(signal.SIGCHLD, previous)
            for pid in list(self._children):  # only after abort_clients: they are dying
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                metrics.worker_exited(pid)
            self._children.clear()
            self._reports.collect(self.stats)
            self.stats.open = 0
            self._exited.close()
            self._reports.close()

    def _import_for_children(self) -> None:
        """Import, once, what children would otherwise each import after their fork.

        The offload bridge (asyncio) and the hub are imported on first use so
        that a server needing neither stays small; here they are imported
        before forking when a service may need them in every child: offloading
        services declare modules to preload, session services use the hub.
        """
        import_before_fork(self.limits)
        services = [listener.service for listener in self.listeners]
        if self.preload:
            importlib.import_module("tcpkit.serving.offload.bridge")
        if any(service.uses_sessions for service in services):
            importlib.import_module("tcpkit.hub")

    def active(self) -> int:
        return len(self._children)

    def extra_fds(self) -> list[int]:
        return [self._exited.fileno(), self._reports.fileno()]

    def dispatch(self, listener: Listener, sock: socket.socket, peer: object) -> None:
        try:
            pid = os.fork()
        except OSError as exc:  # EAGAIN/ENOMEM: too many processes, or no memory
            if not self._fork_failed:
                log.warning("cannot fork for a client: %s", exc.strerror or exc)
                self._fork_failed = True
            self.release(listener.service, peer)
            self.refuse(listener.service, sock, peer)
            return
        if pid == 0:
            self._child(listener, sock, peer)
        self._fork_failed = False
        self._children[pid] = (listener.service, peer)
        self.stats.connections += 1
        self.stats.open = len(self._children)
        sock.close()

    def _child(self, listener: Listener, sock: socket.socket, peer: object) -> NoReturn:
        code = 1
        try:
            self._become_child()
            assert self._own_stop is not None
            self.watch_fds = [*self.watch_fds, self._own_stop.fileno()]
            outcome = self.serve_client(listener, sock, peer)
            self._reports.send(Stats(0.0, lines=outcome.lines, errors=outcome.errors,
                                     idle_closed=int(outcome.idle_closed)))
            self.close_bridge()
            self.observer.flush()  # log lines written by helper threads, before _exit
            code = 0
        except BaseException:
            log.exception("a fork-mode child failed")
        finally:
            os._exit(code)

    def _become_child(self) -> None:
        """Drop the parent's duties in a freshly forked child; give it its own stop pipe.

        Every page a child writes is a page the kernel copies for it, and so is
        every object whose reference count it touches: the child keeps the
        parent's signal handlers (they check :attr:`_own_stop`) rather than
        installing its own, and gets its limits ready-made (:attr:`_child_limits`).
        """
        self._own_stop = own_stop = _ChildStop(self._pid)
        # The parent's drain reaches a child blocked in recv as SIGTERM (below), which
        # raises this pipe's flag: so children too may take the driver's fast path.
        self.client_stop = own_stop
        if not self.handles_signals:  # embedded in a thread: the parent set no handlers
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda signum, frame: own_stop.set())
        for listener in self.listeners:
            listener.sock.close()
        for refused, _ in self._lingering.values():
            refused.close()
        self._lingering.clear()
        self._poller = self._headers.poller = None
        self.stop_signal.close_writer()
        self._exited.close()
        self._reports.close_reader()
        self._children.clear()
        self._bridge = None
        self._bridge_lock = threading.Lock()
        self.limits = self._child_limits

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._own_stop is not None:  # a child: SIGINT/SIGTERM drains just its client
            self._own_stop.set()
        else:
            self.stop()

    def _on_hangup(self, signum: int, frame: FrameType | None) -> None:
        if self._own_stop is None:  # a reload is the parent's business
            super()._on_hangup(signum, frame)

    def _on_child_exit(self, signum: int, frame: FrameType | None) -> None:
        if self._own_stop is None:  # a child's own children are none of ours
            self._exited.set()

    def tick(self) -> None:
        self._exited.clear()
        while self._children:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._children.clear()
                break
            if pid == 0:
                break
            client = self._children.pop(pid, None)
            if client is not None:
                self.release(*client)
                metrics.worker_exited(pid)
        self.stats.open = len(self._children)
        self._reports.collect(self.stats)

    def wait_for_clients(self, deadline: float) -> None:
        if not self._told_to_drain:
            # A child on the driver's fast path waits in recv, not poll: the stop
            # pipe does not wake it, its own SIGTERM handler does.
            self._told_to_drain = True
            for pid in list(self._children):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        while self._children:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            select.select(self.extra_fds(), [], [], min(left, 1.0))
            self.tick()

    def abort_clients(self) -> None:
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
