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

SIGUSR2 (as nginx's) replaces the workers one at a time, on the same
listening sockets, with freshly executed processes — ``reexec``, the command
line that started the server, so new code on disk is picked up (see
:mod:`tcpkit.serving.reexec`).  A replacement is started, and only once it
says it is serving (every listener announced) is the old worker sent SIGTERM,
to drain as on a stop; the kernel's one accept queue per socket means no
client is refused meanwhile.  A replacement that dies or stays silent for
``READY_TIMEOUT`` stops the restart, the old workers serving on.  One line is
logged per replaced worker.  From the first restart on, a worker that dies is
replaced by a re-executed one too, so no old code comes back.

SIGHUP (``systemctl reload``) reloads the TLS certificates: the supervisor's own
copy, which workers forked later inherit, and every worker's.  A worker holds a
SIGHUP that comes while it starts (a blocked signal, across an exec too) until
its mode's handler is in place, so no reload is lost and none kills it.

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
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn

from tcpkit.serving.config import Limits, Listener
from tcpkit.serving.listeners import describe
from tcpkit.serving.modes.pipes import StatsChannel, Wakeup, send_stats
from tcpkit.serving.observe import metrics
from tcpkit.serving.observe.events import Observer, ObserverGroup
from tcpkit.serving.observe.stats import Stats

log = logging.getLogger("tcpkit")
# How a worker serves: run.serve_once, passed in so that this module (a mode)
# never imports the module that picks modes.
ServeOnce = Callable[[Sequence[Listener], str, Limits, Observer, int], Stats]
QUICK_DEATH = 1.0  # a worker dying this soon after starting is restarted after a pause
STOP_MARGIN = 2.0  # seconds past --drain-timeout before lingering workers are killed
READY_TIMEOUT = 30.0  # seconds a replacement may take to start serving (imports, a pool)


class WorkerObserver(ObserverGroup):
    """A worker's observer: everything but the listeners, which the supervisor announces.

    The rest — access log, traffic figures, refusals — goes to the server's
    observer; its metrics count into the files the supervisor's scrape merges.
    """

    def __init__(self, inner: Observer, listeners: int = 0, ready_fd: int | None = None) -> None:
        super().__init__([inner])
        self._unannounced = listeners
        self._ready_fd = ready_fd

    def listening(self, service: str, address: str, mode: str) -> None:
        # The mode announces each listener as it starts serving it: after the
        # last one, tell the supervisor (a rolling restart waits for this).
        self._unannounced -= 1
        if self._unannounced > 0:
            return
        # The mode's SIGHUP handler is in place by now: let in a reload held
        # since the fork (see Supervisor._start).
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        if self._ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self._ready_fd, b"!")
                os.close(self._ready_fd)
            self._ready_fd = None


def serve_as_worker(listeners: Sequence[Listener], mode: str, serve_once: ServeOnce,
                    limits: Limits, observer: Observer, stop_fd: int, report_fd: int,
                    ready_fd: int | None) -> None:
    """A worker's life, forked or re-executed: serve until the stop pipe, report, return."""
    stats = serve_once(listeners, mode, limits,
                       WorkerObserver(observer, len(listeners), ready_fd), stop_fd)
    send_stats(report_fd, stats)


@dataclass
class _Incoming:
    """A replacement worker that has not yet said it is serving."""

    pid: int
    ready: int  # read end of its ready pipe
    replaces: int  # the old worker's pid
    deadline: float




class Supervisor:
    """Keeps ``count`` worker processes serving ``listeners`` in ``mode``."""

    def __init__(self, listeners: Sequence[Listener], mode: str, serve_once: ServeOnce,
                 limits: Limits | None = None, observer: Observer | None = None,
                 count: int = 2, reexec: Sequence[str] | None = None) -> None:
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
        self.reexec = list(reexec) if reexec else None  # the command line new workers run
        self._fresh = False  # after a rolling restart, new workers are executed afresh
        self._to_replace: list[int] = []  # old workers a rolling restart has yet to replace
        self._incoming: _Incoming | None = None
        self._retiring: set[int] = set()  # replaced (or failed) workers: never restarted

    def serve(self) -> Stats:
        """Run the workers until SIGINT/SIGTERM; return the totals they reported."""
        self._stop, self._exited, self._reports = Wakeup(), Wakeup(), StatsChannel()
        self._upgrade = Wakeup()
        restore = {sig: signal.signal(sig, self._on_signal)
                   for sig in (signal.SIGINT, signal.SIGTERM)}
        restore[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._on_child_exit)
        restore[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)
        restore[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, lambda *_: self._upgrade.set())
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
            for pipe in (self._stop, self._exited, self._reports, self._upgrade):
                pipe.close()
        return self.stats

    # -- the workers ------------------------------------------------------

    def _start(self, ready: int | None = None) -> int:
        """Fork a worker (re-executed after a rolling restart began); its pid.

        ``ready``: the write end of a pipe the worker writes to once serving.
        """
        fresh = self._fresh and self.reexec is not None
        # SIGHUP is held across the fork.  Here, so that a reload cannot run
        # between the fork and the new pid's entry in self.workers (and miss it);
        # in the worker (the mask survives an exec too) until its mode's handler
        # is installed: ignored or left to the default, a reload sent while the
        # worker starts would be lost or kill it.  WorkerObserver lets it in.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        pid = os.fork()
        if pid == 0:
            self._worker(ready, fresh)
        if ready is not None:
            os.close(ready)
        self.workers[pid] = time.monotonic()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        if not self._fresh:
            log.info("worker %d started (mode=%s)", pid, self.mode)
        return pid

    def _worker(self, ready: int | None, fresh: bool) -> NoReturn:
        code = 1
        try:
            os.setpgid(0, 0)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            # Until the server installs its own (SIGHUP is held meanwhile, see _start).
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            self._stop.close_writer()
            self._exited.close()
            self._upgrade.close()
            self._reports.close_reader()
            if fresh:
                assert self.reexec is not None
                from tcpkit.serving.reexec import Handoff, exec_with_sockets

                exec_with_sockets(self.reexec, self.listeners, Handoff(
                    self._stop.fileno(), self._reports.writer(), ready))
            serve_as_worker(self.listeners, self.mode, self.serve_once, self.limits,
                            self.observer, self._stop.fileno(), self._reports.writer(), ready)
            code = 0
        except BaseException:
            log.exception("worker %d failed", os.getpid())
        finally:
            os._exit(code)

    def _supervise(self) -> None:
        while not self.stopping:
            now = time.monotonic()
            timeout = min([1.0, *(at - now for at in self._restarts)])
            readable, _, _ = select.select(self._fds(), [], [], max(0.0, timeout))
            self._reap(restart=not self.stopping)
            if not self.stopping:
                self._roll(readable)
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
            if pid in self._retiring:
                self._retiring.discard(pid)
                continue
            if self._incoming is not None and self._incoming.replaces == pid:
                continue  # its replacement is already on the way
            if started is None or not restart:
                continue
            quick = time.monotonic() - started < QUICK_DEATH
            log.warning("worker %d %s; starting a new one%s", pid, _exit_text(status),
                        f" in {QUICK_DEATH:g} s" if quick else "")
            self._restarts.append(time.monotonic() + (QUICK_DEATH if quick else 0.0))
        self._reports.collect(self.stats)

    # -- the rolling restart (SIGUSR2) ---------------------------------------

    def _roll(self, readable: list[int]) -> None:
        """One step of a rolling restart: begin, promote a ready replacement, go on."""
        if self._upgrade.fileno() in readable:
            self._upgrade.clear()
            self._begin_restart()
        incoming = self._incoming
        if incoming is not None:
            if incoming.ready in readable:
                self._promote(incoming)
            elif time.monotonic() >= incoming.deadline:
                self._abandon(incoming, f"did not start serving within {READY_TIMEOUT:g} s")
        if self._incoming is None and self._to_replace:
            old = self._to_replace.pop(0)
            if old in self.workers:
                ready_read, ready_write = os.pipe()
                pid = self._start(ready_write)
                self._incoming = _Incoming(pid, ready_read, old,
                                           time.monotonic() + READY_TIMEOUT)

    def _begin_restart(self) -> None:
        if self._incoming is not None or self._to_replace:
            log.warning("SIGUSR2: a rolling restart is already under way")
            return
        self._to_replace = sorted(pid for pid in self.workers if pid not in self._retiring)
        self._fresh = True
        how = "re-executed" if self.reexec else "forked (not re-executed: no command line)"
        log.info("rolling restart: replacing %d workers one at a time, new ones %s",
                 len(self._to_replace), how, extra={"event": "restart"})

    def _promote(self, incoming: _Incoming) -> None:
        """The replacement serves: the old worker drains (SIGTERM) and is not restarted."""
        try:
            said = os.read(incoming.ready, 1)
        except OSError:
            said = b""
        if not said:
            self._abandon(incoming, "exited before serving")
            return
        os.close(incoming.ready)
        self._incoming = None
        old = incoming.replaces
        if old in self.workers:
            self._retiring.add(old)
            with contextlib.suppress(ProcessLookupError):
                os.kill(old, signal.SIGTERM)
        log.info("worker %d replaced by %d (mode=%s); %d drains", old, incoming.pid,
                 self.mode, old, extra={"event": "replaced", "old": old, "new": incoming.pid})
        if not self._to_replace:
            log.info("rolling restart done", extra={"event": "restart-done"})

    def _abandon(self, incoming: _Incoming, why: str) -> None:
        """A replacement failed: stop the restart; the old workers serve on."""
        os.close(incoming.ready)
        self._incoming = None
        self._to_replace.clear()
        self._fresh = False
        if incoming.pid in self.workers:
            self._retiring.add(incoming.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(incoming.pid, signal.SIGKILL)
        log.error("rolling restart stopped: new worker %d %s; worker %d and the others "
                  "keep serving", incoming.pid, why, incoming.replaces,
                  extra={"event": "restart-failed"})

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
        if self.stopping:
            return fds
        incoming = [self._incoming.ready] if self._incoming is not None else []
        return [self._stop.fileno(), self._upgrade.fileno(), *incoming, *fds]

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
        """SIGHUP (systemctl reload): each worker reloads its certificate.

        The supervisor reloads its own copy first: the workers it forks from
        now on (a replacement for one that died) inherit the new certificate.
        """
        from tcpkit.serving.guards.tls import reload_certificates  # ssl: only when asked

        reload_certificates((listener.tls for listener in self.listeners), say_if_none=False)
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)


def _exit_text(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
