"""Reverse DNS for logs (``--resolve-names``): off the event loop, cached, bounded.

``getnameinfo`` blocks, and a slow DNS server can take seconds, so lookups run
on a small thread pool (:class:`NameResolver`) and the log lines that need a
name are written by one printer thread, in the order the events happened
(a client's ``close`` line always follows its ``accept`` line).  Each lookup
is cached (successes and failures alike) and waited for at most ``timeout``
seconds; a lookup that fails or takes longer shows the IP address instead.
The article's ``reverseS``/``factorS`` transcripts use the same resolver.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache

from tcpkit.serving.observe.events import Observer

LOOKUP_TIMEOUT = 2.0


@lru_cache(maxsize=4096)
def host_name(ip: str) -> str:
    """The reverse-DNS name of ``ip``, or ``ip`` itself when the lookup fails."""
    try:
        return socket.getnameinfo((ip, 0), socket.NI_NAMEREQD)[0]
    except (OSError, UnicodeError):
        return ip


class NameResolver:
    """Reverse lookups on a thread pool, and an ordered printer thread to use them.

    Each address is looked up once (its future is shared and remembered), and
    a name is waited for at most ``timeout`` seconds after *its lookup
    started*: behind a dead DNS server the log falls back to addresses at
    once instead of waiting ``timeout`` again for every line.
    """

    def __init__(self, timeout: float = LOOKUP_TIMEOUT, threads: int = 4,
                 remembered: int = 4096) -> None:
        self.timeout = timeout
        self.remembered = remembered
        self.threads = threads
        self._started: OrderedDict[str, tuple[Future[str], float]] = OrderedDict()
        self._lock = threading.Lock()  # lookup() runs on the loop, name() on the printer
        self._start_threads()

    def _start_threads(self) -> None:
        self._pid = os.getpid()
        self._lookups = ThreadPoolExecutor(self.threads, thread_name_prefix="resolve")
        self._printer = ThreadPoolExecutor(1, thread_name_prefix="print")

    def _after_fork(self) -> None:
        """In a forked child (fork mode, --workers) the parent's threads do not exist:
        an executor would queue work that never runs.  Start afresh."""
        if os.getpid() != self._pid:
            self._lock = threading.Lock()
            self._started.clear()
            self._start_threads()

    def lookup(self, ip: str) -> Future[str]:
        """Start looking ``ip`` up (once); the future holds its name (or ``ip``)."""
        self._after_fork()
        with self._lock:
            found = self._started.get(ip)
            if found is not None:
                self._started.move_to_end(ip)
                return found[0]
            if ip == "unix":  # unix-socket peers have no address to look up
                future: Future[str] = Future()
                future.set_result(ip)
            else:
                future = self._lookups.submit(host_name, ip)
            self._started[ip] = (future, time.monotonic())
            if len(self._started) > self.remembered:
                self._started.popitem(last=False)
            return future

    def name(self, future: Future[str], fallback: str) -> str:
        """The looked-up name, or ``fallback`` after a failure or the timeout."""
        with self._lock:
            started = self._started.get(fallback, (future, time.monotonic()))[1]
        try:
            return future.result(timeout=max(0.0, started + self.timeout - time.monotonic()))
        except Exception:
            return fallback

    def later(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the printer thread, after every action submitted before."""
        self._after_fork()
        self._printer.submit(action)

    def flush(self) -> None:
        """Wait until every action submitted so far has run (bounded by the lookup timeout)."""
        if os.getpid() == self._pid:
            self._printer.submit(lambda: None).result(timeout=self.timeout + 5.0)


class ResolvingObserver(Observer):
    """The access log with reverse-DNS names instead of IP addresses."""

    def __init__(self, resolver: NameResolver | None = None) -> None:
        self.resolver = resolver or NameResolver()
        self._names: dict[tuple[str, int], Future[str]] = {}

    def accepted(self, service: str, host: str, port: int) -> None:
        lookup = self.resolver.lookup(host)
        self._names[host, port] = lookup
        accepted = super().accepted
        self.resolver.later(
            lambda: accepted(service, self.resolver.name(lookup, host), port))

    def ended(self, service: str, host: str, port: int, lines: int, seconds: float,
              reason: str = "") -> None:
        lookup = self._names.pop((host, port), None) or self.resolver.lookup(host)
        ended = super().ended
        self.resolver.later(
            lambda: ended(service, self.resolver.name(lookup, host), port, lines, seconds,
                          reason))

    def flush(self) -> None:
        self.resolver.flush()

    def refused(self, service: str, host: str, port: int, reason: str) -> None:
        lookup = self.resolver.lookup(host)
        refused = super().refused
        self.resolver.later(
            lambda: refused(service, self.resolver.name(lookup, host), port, reason))
