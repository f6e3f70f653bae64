"""Prometheus metrics (``--metrics [HOST:]PORT``), as an :class:`Observer`.

:class:`Metrics` counts what every serving mode reports through the observer
hooks — connections open/total/refused, request lines, reply lines, errors by
kind, request latency, bytes in and out — labelled by ``service`` and
``mode``.  :func:`serve_metrics` exposes them over HTTP at ``/metrics`` from a
daemon thread (prometheus-client's own server), so it works under any mode.

Several worker processes (``--workers N``) are merged with prometheus-client's
multiprocess mode: the parent calls :func:`use_multiprocess_dir` *before*
anything imports ``prometheus_client`` (the value store is chosen at import
time), every process then writes its figures to memory-mapped files in that
directory, and the scrape sums them (``livesum`` for the open-connections
gauge, so a dead worker's connections drop out).  Call
:func:`worker_exited` when a worker process ends: besides dropping its live
gauges, it folds the dead process's counters and histograms into an archive
file of the caller's, so the directory (and the time a scrape takes) does not
grow with every process that ever served — fork mode starts one per client.
The fold runs in whichever process reaped the child (a fork-mode worker) while
the scrape runs in another (the supervisor), so the two exclude each other
with a lock *file* in the directory (:func:`_directory_lock`), not a thread
lock: a scrape must never list a dead child's file that a fold then unlinks
(prometheus-client raises on it: HTTP 500), nor count a value both in the
archive and in the file it came from.  A process creates its file empty and
sizes it a moment later, and one killed in between leaves it empty for good;
prometheus-client cannot read an empty file (client_python#1199, open in
0.26.0), so scrapes and folds pass over empty files (:func:`_holds_values`).

Latency is observed per request: lines answered together in one read share
that read's answer time, and are added to the histogram in one step
(:func:`observe_many`) rather than one call per line — the cost per read stays
constant however many lines it holds.
"""

from __future__ import annotations

import atexit
import fcntl
import glob
import logging
import os
import shutil
import socket
import struct
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, NamedTuple

from tcpkit.endpoints import Endpoint, format_address
from tcpkit.serving.observe.events import Observer

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("tcpkit")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Reverse answers in microseconds, big factorizations in seconds.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, float("inf"))


class _PerService(NamedTuple):
    connections: Any
    open: Any
    lines: Any
    replies: Any
    received: Any
    sent: Any
    latency: Any


class Metrics(Observer):
    """Counts connection events for Prometheus; see the module docstring."""

    measures_traffic = True

    def __init__(self, mode: str, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            disable_created_metrics,
        )

        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
        self.mode = mode
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ("service", "mode")
        reg = self.registry
        self._connections = Counter("tcpkit_connections", "Connections accepted and served.",
                                    labels, registry=reg)
        self._open = Gauge("tcpkit_connections_open", "Connections open now.", labels,
                           registry=reg, multiprocess_mode="livesum")
        self._refused = Counter("tcpkit_connections_refused",
                                "Connections refused (busy, per_ip, rate, denied, proxy_header, "
                                "proxy_untrusted).",
                                (*labels, "reason"), registry=reg)
        self._lines = Counter("tcpkit_lines", "Request lines received.", labels, registry=reg)
        self._replies = Counter("tcpkit_replies", "Reply lines sent.", labels, registry=reg)
        self._errors = Counter("tcpkit_errors", "Errors by kind.", (*labels, "kind"),
                               registry=reg)
        self._received = Counter("tcpkit_received_bytes", "Bytes received from clients.",
                                 labels, registry=reg)
        self._sent = Counter("tcpkit_sent_bytes", "Bytes sent to clients.", labels,
                             registry=reg)
        self._latency = Histogram("tcpkit_request_duration_seconds",
                                  "Time from reading a request to its reply being ready.",
                                  labels, registry=reg, buckets=LATENCY_BUCKETS)
        self._services: dict[str, _PerService] = {}

    def _of(self, service: str) -> _PerService:
        found = self._services.get(service)
        if found is None:
            found = self._services[service] = _PerService(*(
                metric.labels(service, self.mode) for metric in (
                    self._connections, self._open, self._lines, self._replies,
                    self._received, self._sent, self._latency)))
        return found

    # -- Observer hooks -------------------------------------------------------

    def listening(self, service: str, address: str, mode: str) -> None:
        self._of(service)  # the service's series exist (at 0) from the start

    def accepted(self, service: str, host: str, port: int) -> None:
        figures = self._of(service)
        figures.connections.inc()
        figures.open.inc()

    def closed(self, service: str, host: str, port: int, lines: int, seconds: float) -> None:
        self._of(service).open.dec()

    def refused(self, service: str, host: str, port: int, reason: str) -> None:
        pass  # counted by limit_refused (refused() is rate-limited for the log)

    def limit_refused(self, service: str, kind: str) -> None:
        self._refused.labels(service, self.mode, kind).inc()

    def traffic(self, service: str, received: int, sent: int, lines: int, replies: int,
                answered: int, seconds: float) -> None:
        figures = self._of(service)
        if received:
            figures.received.inc(received)
        if sent:
            figures.sent.inc(sent)
        if lines:
            figures.lines.inc(lines)
        if replies:
            figures.replies.inc(replies)
        if answered:
            observe_many(figures.latency, seconds, answered)

    def failed(self, service: str, kind: str, count: int = 1) -> None:
        self._errors.labels(service, self.mode, kind).inc(count)


def observe_many(histogram: Any, seconds: float, count: int) -> None:
    """Add ``count`` observations of ``seconds`` to a histogram child in one step."""
    buckets = getattr(histogram, "_buckets", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    total = getattr(histogram, "_sum", None)
    if count == 1 or buckets is None or bounds is None or total is None:
        for _ in range(count):  # prometheus-client changed its internals: the slow way
            histogram.observe(seconds)
        return
    total.inc(seconds * count)
    for index, bound in enumerate(bounds):
        if seconds <= bound:
            buckets[index].inc(count)
            break


# -- exposition -----------------------------------------------------------------


def use_multiprocess_dir() -> str:
    """Make every process of this server share metrics (call before forking workers).

    Must run before ``prometheus_client`` is first imported.  The directory is
    removed when the parent exits.
    """
    existing = os.environ.get(MULTIPROC_ENV)
    if existing:
        return existing
    path = tempfile.mkdtemp(prefix="tcpkit-metrics-")
    os.environ[MULTIPROC_ENV] = path
    parent = os.getpid()

    def cleanup() -> None:
        if os.getpid() == parent:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(cleanup)
    return path


@contextmanager
def _directory_lock(path: str, *, exclusive: bool) -> Iterator[None]:
    """Folds (exclusive) and scrapes (shared) of every process of one server.

    Each use opens the file anew: ``flock`` belongs to the open file, so two
    threads of one process exclude each other too.  The explicit unlock keeps
    a child forked meanwhile, which inherits the open file, from holding it.
    """
    with open(os.path.join(path, "folding.lock"), "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def worker_exited(pid: int) -> None:
    """A process that counted into the shared files has ended (and been reaped).

    Its live gauges leave the merged figures; its counters and histograms are
    added to this process's archive files and its own files removed.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return
    from prometheus_client import multiprocess

    with _directory_lock(path, exclusive=True):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
        for kind in ("counter", "histogram"):
            dead = os.path.join(path, f"{kind}_{pid}.db")
            if _holds_values(dead):
                _fold(dead, os.path.join(path, f"{kind}_archive{os.getpid()}.db"))
            else:  # none, or created empty and never sized: it recorded nothing
                with suppress(FileNotFoundError):
                    os.unlink(dead)


def _holds_values(path: str) -> bool:
    """Whether a metrics file exists and has been sized (so can be read)."""
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:
        return False


def _fold(dead: str, archive_path: str) -> None:
    from prometheus_client.mmap_dict import MmapedDict

    archive = MmapedDict(archive_path)  # type: ignore[no-untyped-call]
    try:
        values: Iterable[tuple[str, float, float, int]] = (
            MmapedDict.read_all_values_from_file(dead))  # type: ignore[no-untyped-call]
        for key, value, timestamp, _ in values:
            total, _ = archive.read_value(key)  # type: ignore[no-untyped-call]
            archive.write_value(key, total + value, timestamp)  # type: ignore[no-untyped-call]
    except (OSError, ValueError, struct.error) as exc:  # torn: keep it, it still counts
        log.warning("cannot fold metrics file %s: %s", dead, exc)
        return
    finally:
        archive.close()  # type: ignore[no-untyped-call]
    os.unlink(dead)


def exposition_registry(metrics: Metrics) -> CollectorRegistry:
    """What a scrape shows: this process's figures, or every worker's merged."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    found = os.environ.get(MULTIPROC_ENV)
    if not found:
        return metrics.registry
    path = found  # a str for the class below

    class Merged(MultiProcessCollector):
        def collect(self) -> Any:
            with _directory_lock(path, exclusive=False):
                files = [name for name in glob.glob(os.path.join(path, "*.db"))
                         if _holds_values(name)]
                return list(self.merge(files, accumulate=True))  # type: ignore[no-untyped-call]

    merged = CollectorRegistry()
    Merged(merged)  # type: ignore[no-untyped-call]
    return merged


def serve_metrics(endpoint: Endpoint, registry: CollectorRegistry) -> str:
    """Serve ``/metrics`` on ``endpoint`` from a daemon thread; the real address.

    Raises OSError when the address cannot be bound.
    """
    from prometheus_client import start_http_server

    host = endpoint.host
    if host is None:
        host = "::" if socket.has_ipv6 else "0.0.0.0"
    try:
        server, _ = start_http_server(endpoint.port, host, registry)
    except OSError:
        if endpoint.host is not None or host == "0.0.0.0":
            raise
        server, _ = start_http_server(endpoint.port, "0.0.0.0", registry)
    bound = server.server_address
    address = format_address(str(bound[0]), int(bound[1]))
    log.info("Metrics at http://%s/metrics", address,
             extra={"event": "metrics", "address": address})
    return address
