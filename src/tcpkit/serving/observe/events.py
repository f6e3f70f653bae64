"""What a server tells the world about its connections.

The serving modes report every listener, accept and close to an
:class:`Observer`.  The default one writes the access log lines of SPEC §2.1
(``accept HOST:PORT``, ``close HOST:PORT (N lines, T s)``); the article's
programs plug in one that prints their transcripts instead, and
:mod:`tcpkit.serving.observe.metrics` one that counts for Prometheus.  Observers must
not block: serving modes call them on the hot path.

Log records carry their figures as ``extra`` fields (``event``, ``peer``,
``service``, ``lines``, ``duration``...), so ``--log-format json`` writes them
as separate keys instead of making log shippers parse the message.

A connection the server ended itself says why on its ``close`` line
(:meth:`Observer.ended`, :func:`close_reason`): ``idle_timeout`` or
``line_too_long``, the same kinds the metrics count, so one client's fate is
in the log and not only in the summary's totals.

Per-read figures (:meth:`Observer.traffic`) cost a clock read per read, so a
serving mode only measures them when :attr:`Observer.measures_traffic` is true.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tcpkit.endpoints import format_address

if TYPE_CHECKING:
    from tcpkit.connection import ServiceConnection

log = logging.getLogger("tcpkit")


def _peer(host: str, port: int) -> str:
    """``HOST:PORT`` for TCP clients; ``unix`` for unix-socket ones (they have no address)."""
    return host if port == 0 and host == "unix" else format_address(host, port)


IDLE_TIMEOUT, LINE_TOO_LONG = "idle_timeout", "line_too_long"  # why the server closed


def close_reason(idle_closed: bool, line_too_long: bool) -> str:
    """Why the server ended a connection ("" when the client ended it): every mode's rule."""
    if line_too_long:
        return LINE_TOO_LONG
    return IDLE_TIMEOUT if idle_closed else ""


class Observer:
    """Receives connection events; the default writes the access log."""

    measures_traffic = False  # True: the mode calls traffic() for every read and reply

    def listening(self, service: str, address: str, mode: str) -> None:
        log.info("Listening on %s (%s, mode=%s)", address, service, mode,
                 extra={"event": "listening", "service": service, "address": address,
                        "mode": mode})

    def accepted(self, service: str, host: str, port: int) -> None:
        if log.isEnabledFor(logging.INFO):
            peer = _peer(host, port)
            log.info("accept %s (%s)", peer, service,
                     extra={"event": "accept", "peer": peer, "service": service})

    def closed(self, service: str, host: str, port: int, lines: int, seconds: float) -> None:
        """A connection closed: the access log's ``close`` line."""
        self._log_close(service, host, port, lines, seconds, "")

    def ended(self, service: str, host: str, port: int, lines: int, seconds: float,
              reason: str = "") -> None:
        """What the modes report: :meth:`closed`, plus why when the server ended it.

        An observer that overrides only ``closed`` (written before reasons
        existed) still gets ``closed``; the access log puts the reason on the
        ``close`` line.
        """
        if type(self).closed is Observer.closed:
            if log.isEnabledFor(logging.INFO):  # here too: no call at all when quiet
                self._log_close(service, host, port, lines, seconds, reason)
        else:
            self.closed(service, host, port, lines, seconds)

    def _log_close(self, service: str, host: str, port: int, lines: int, seconds: float,
                   reason: str) -> None:
        if log.isEnabledFor(logging.INFO):
            peer = _peer(host, port)
            extra: dict[str, object] = {"event": "close", "peer": peer, "service": service,
                                        "lines": lines, "duration": round(seconds, 6)}
            if reason:
                extra["reason"] = reason
                log.info("close %s (%d lines, %.3f s, %s)", peer, lines, seconds,
                         reason.replace("_", " "), extra=extra)
            else:
                log.info("close %s (%d lines, %.3f s)", peer, lines, seconds, extra=extra)

    def refused(self, service: str, host: str, port: int, reason: str) -> None:
        peer = _peer(host, port)
        log.warning("refused %s (%s): %s", peer, service, reason,
                     extra={"event": "refused", "peer": peer, "service": service,
                            "reason": reason})

    def traffic(self, service: str, received: int, sent: int, lines: int, replies: int,
                answered: int, seconds: float) -> None:
        """Bytes ``received``/``sent``, request ``lines`` read, reply lines written,
        and ``answered`` requests that each took ``seconds`` (only when measured)."""

    def failed(self, service: str, kind: str, count: int = 1) -> None:
        """``count`` errors of one ``kind`` (request, line_too_long, time_limit, ...)."""

    def limit_refused(self, service: str, kind: str) -> None:
        """A connection refused: ``busy``, ``per_ip``, ``rate``, ``denied`` (access lists),
        ``proxy_header`` or ``proxy_untrusted`` (PROXY protocol)."""

    def flush(self) -> None:
        """Finish writing every event reported so far (a forked child, before it exits)."""


class ObserverGroup(Observer):
    """Several observers as one (e.g. the access log and the metrics)."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = list(observers)
        self.measures_traffic = any(o.measures_traffic for o in observers)

    def listening(self, service: str, address: str, mode: str) -> None:
        for observer in self.observers:
            observer.listening(service, address, mode)

    def accepted(self, service: str, host: str, port: int) -> None:
        for observer in self.observers:
            observer.accepted(service, host, port)

    def closed(self, service: str, host: str, port: int, lines: int, seconds: float) -> None:
        for observer in self.observers:
            observer.closed(service, host, port, lines, seconds)

    def ended(self, service: str, host: str, port: int, lines: int, seconds: float,
              reason: str = "") -> None:
        for observer in self.observers:
            observer.ended(service, host, port, lines, seconds, reason)

    def refused(self, service: str, host: str, port: int, reason: str) -> None:
        for observer in self.observers:
            observer.refused(service, host, port, reason)

    def traffic(self, service: str, received: int, sent: int, lines: int, replies: int,
                answered: int, seconds: float) -> None:
        for observer in self.observers:
            observer.traffic(service, received, sent, lines, replies, answered, seconds)

    def failed(self, service: str, kind: str, count: int = 1) -> None:
        for observer in self.observers:
            observer.failed(service, kind, count)

    def limit_refused(self, service: str, kind: str) -> None:
        for observer in self.observers:
            observer.limit_refused(service, kind)

    def flush(self) -> None:
        for observer in self.observers:
            observer.flush()


def receive_measured(conn: ServiceConnection, data: bytes | None, observer: Observer,
                     service: str, send: Callable[[bytes], int]) -> None:
    """Feed ``data`` (None: EOF) to ``conn``, ``send`` the replies, report the figures.

    ``send`` queues the replies and starts the new jobs.  The requests answered by
    a job (started now, or waiting for a session's hook to finish) are counted,
    and timed, when their job ends (``finish_job``); here only the others.
    """
    lines, errors, closing, jobs = conn.lines, conn.errors, conn.closing, conn.jobs_made
    start = time.perf_counter()
    out = conn.receive_eof() if data is None else conn.receive_data(data)
    seconds = time.perf_counter() - start
    lines = conn.lines - lines
    # What this receive did, read before send(): a job that send() runs to its end
    # (an awaitable in a blocking mode) reports its own figures (finish_job).
    errors, overflowed = conn.errors - errors, conn.closing and not closing
    answered = lines - (conn.jobs_made - jobs)
    send(out)
    observer.traffic(service, len(data or b""), len(out), lines, out.count(b"\n"),
                     answered, seconds)
    if overflowed:
        observer.failed(service, "line_too_long")
        errors -= 1
    if errors > 0:
        observer.failed(service, "request", errors)
