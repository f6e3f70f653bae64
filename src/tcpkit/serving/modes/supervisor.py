"""``--workers N``: N processes serving the same sockets, under a supervisor.

The supervisor opens nothing itself: it forks N workers that inherit the
listening sockets already opened by ``run.py`` (the kernel then spreads new
connections across the processes waiting in ``accept``/``epoll`` on them), and
each worker serves them in the chosen mode, exactly as a single process would.

The supervisor's job is to keep N workers alive and to stop them cleanly:

* a worker that dies (crash, OOM killer, ``kill -9``) is logged — one line —
  and replaced; one that dies within a second of starting is replaced only
  after a second, so a worker that cannot start does not become a fork bomb;
* on SIGINT/SIGTERM the supervisor closes its copies of the listening sockets
  and writes to a stop pipe every worker watches, waits for them to drain
  (``--drain-timeout``, plus a margin), kills any that overstay, reaps them all
  and logs one summary line with the totals every worker reported.

Workers run in a process group of their own, so a terminal's ^C reaches only
the supervisor, which stops them all in order; a worker whose supervisor dies
sees EOF on the stop pipe and drains too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import NoReturn

from tcpkit.serving.config import Limits, Listener
from tcpkit.serving.listeners import describe
from tcpkit.serving.modes.pipes import StatsChannel, Wakeup
from tcpkit.serving.observe import metrics
from tcpkit.serving.observe.events import Observer, ObserverGroup
from tcpkit.serving.observe.stats import Stats

log = logging.getLogger("tcpkit")
QUICK_DEATH = 1.0  # a worker dying this soon after starting is restarted after a pause
STOP_MARGIN = 2.0  # seconds past --drain-timeout before lingering workers are killed


class WorkerObserver(ObserverGroup):
    """A worker's observer: everything but the listeners, which the supervisor announces.

    The rest — access log, traffic figures, refusals — goes to the server's
    observer; its metrics count into the files the supervisor's scrape merges.
    """

    def __init__(self, inner: Observer) -> None:
        super().__init__([inner])

    def listening(self, service: str, address: str, mode: str) -> None:
        pass


# How a worker serves: run.serve_once, passed in so that this module (a mode)
# never imports the module that picks modes.
ServeOnce = Callable[[Sequence[Listener], str, Limits, Observer, int], Stats]


class Supervisor:
    """Keeps ``count`` worker processes serving ``listeners`` in ``mode``."""

    def __init__(self, listeners: Sequence[Listener], mode: str, serve_once: ServeOnce,
                 limits: Limits | None = None, observer: Observer | None = None,
                 count: int = 2) -> None:
        self.listeners = list(listeners)
        self.mode = mode
        self.serve_once = serve_once
        self.limits = limits or Limits()
        self.observer = observer or Observer()
        self.count = count
        self.stats = Stats()
        self.workers: dict[int, float] = {}  # pid -> when it started
        self.stopping = False
        self._restarts: list[float] = []  # when to start replacements

    def serve(self) -> Stats:
        """Run the workers until SIGINT/SIGTERM; return the totals they reported."""
        self._stop, self._exited, self._reports = Wakeup(), Wakeup(), StatsChannel()
        restore = {sig: signal.signal(sig, self._on_signal)
                   for sig in (signal.SIGINT, signal.SIGTERM)}
        restore[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._on_child_exit)
        restore[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)
        for listener in self.listeners:
            self.observer.listening(listener.service.name, describe(listener.sock), self.mode)
        try:
            for _ in range(self.count):
                self._start()
            self._supervise()
        finally:
            self._stop_workers()
            for sig, handler in restore.items():
                signal.signal(sig, handler)
            for pipe in (self._stop, self._exited, self._reports):
                pipe.close()
        return self.stats

    # -- the workers ------------------------------------------------------

    def _start(self) -> None:
        pid = os.fork()
        if pid == 0:
            self._worker()
        self.workers[pid] = time.monotonic()
        log.info("worker %d started (mode=%s)", pid, self.mode)

    def _worker(self) -> NoReturn:
        code = 1
        try:
            os.setpgid(0, 0)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)  # until the server installs its own
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # ...a reload must not kill it
            self._stop.close_writer()
            self._exited.close()
            self._reports.close_reader()
            stats = self.serve_once(self.listeners, self.mode, self.limits,
                               WorkerObserver(self.observer), self._stop.fileno())
            self._reports.send(stats)
            code = 0
        except BaseException:
            log.exception("worker %d failed", os.getpid())
        finally:
            os._exit(code)

    def _supervise(self) -> None:
        while not self.stopping:
            now = time.monotonic()
            timeout = min([1.0, *(at - now for at in self._restarts)])
            select.select(self._fds(), [], [], max(0.0, timeout))
            self._reap(restart=not self.stopping)
            due = [at for at in self._restarts if at <= time.monotonic()]
            for at in due:
                self._restarts.remove(at)
                if not self.stopping:
                    self._start()

    def _reap(self, restart: bool) -> None:
        self._exited.clear()
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            started = self.workers.pop(pid, None)
            metrics.worker_exited(pid)
            if started is None or not restart:
                continue
            quick = time.monotonic() - started < QUICK_DEATH
            log.warning("worker %d %s; starting a new one%s", pid, _exit_text(status),
                        f" in {QUICK_DEATH:g} s" if quick else "")
            self._restarts.append(time.monotonic() + (QUICK_DEATH if quick else 0.0))
        self._reports.collect(self.stats)

    def _stop_workers(self) -> None:
        self.stopping = True
        for listener in self.listeners:
            listener.sock.close()  # the workers' copies close as they drain
        self._stop.set()
        deadline = time.monotonic() + self.limits.drain_timeout + STOP_MARGIN
        while self.workers and time.monotonic() < deadline:
            select.select(self._fds(), [], [],
                          max(0.0, min(1.0, deadline - time.monotonic())))
            self._reap(restart=False)
        if self.workers:
            log.warning("killing %d workers that did not stop in time", len(self.workers))
            for pid in self.workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for pid in list(self.workers):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                metrics.worker_exited(pid)
            self.workers.clear()
        self._reports.collect(self.stats)

    def _fds(self) -> list[int]:
        # The stop pipe stays readable once set; then only child exits and reports wake us.
        fds = [self._exited.fileno(), self._reports.fileno()]
        return fds if self.stopping else [self._stop.fileno(), *fds]

    # -- signals ----------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            # A second signal: the workers are draining; ask them to cut off now.
            for pid in self.workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        self.stopping = True
        self._stop.set()

    def _on_child_exit(self, signum: int, frame: FrameType | None) -> None:
        self._exited.set()

    def _on_hangup(self, signum: int, frame: FrameType | None) -> None:
        """SIGHUP (systemctl reload): each worker reloads its certificate."""
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)


def _exit_text(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
