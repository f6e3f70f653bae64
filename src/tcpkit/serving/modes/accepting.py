"""The accept loop shared by the blocking modes (iterative, thread, fork).

:class:`BlockingServer` owns what is the same in all three: logging the
listeners, waiting in ``poll()`` on the listening sockets and the stop pipe,
turning refused clients away, surviving accept errors, the
signal handlers, and the drain.  A subclass only says how a client is served
(:meth:`BlockingServer.dispatch`), how many are being served
(:meth:`BlockingServer.active`), how to wait for them when draining, and how to
cut them off when the drain times out.

Who is served is decided as in the async mode, by the same
:class:`~tcpkit.serving.guards.gate.Gate` (``--max-connections``, the descriptor
budget, per-address limits; checked before a client is handed on); what is
left here is the sockets: sending the refusal, lingering, closing.  Behind
a service's ``--proxy-protocol`` a client is admitted only once its PROXY header is in,
as the real client the header names: the accept loop's ``poll`` watches the
connections still sending one (:class:`~tcpkit.serving.guards.proxied.PendingHeaders`,
shared with the async mode), and its tick drops those that take too long —
before any thread, process or TLS handshake is spent on them.

Operator features work here as in the async mode too: TLS (the handshake runs
where the client is served — its thread, its child, or inline in iterative
mode — bounded by the handshake timeout and by a stop), SIGHUP reloading the
certificate, and traffic figures for ``--metrics`` (the driver reports them
when the observer measures traffic).

Accept errors that mean "out of file descriptors or memory" (EMFILE, ENFILE,
ENOBUFS, ENOMEM) must not stop the server, nor make it spin on a listening
socket that stays readable: accepting pauses for :data:`ACCEPT_PAUSE` seconds,
is logged once per episode, and resumes by itself.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import select
import signal
import socket
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from tcpkit.endpoints import peer_text
from tcpkit.service import Service
from tcpkit.serving.config import Limits, Listener
from tcpkit.serving.guards.admission import BUSY, Refusal
from tcpkit.serving.guards.gate import LINGER, LINGER_BLOCKING, TICK, Gate
from tcpkit.serving.guards.tls import reload_certificates, server_handshake
from tcpkit.serving.listeners import describe, send_at_once
from tcpkit.serving.modes.accepting_headers import HeaderWaits
from tcpkit.serving.modes.driver import Outcome, serve_connection
from tcpkit.serving.modes.pipes import Wakeup
from tcpkit.serving.observe.events import Observer, close_reason
from tcpkit.serving.observe.stats import Stats
from tcpkit.serving.offload.executors import preload_for

if TYPE_CHECKING:
    from tcpkit.hub import Hub, Hubs
    from tcpkit.serving.offload.bridge import OffloadBridge

log = logging.getLogger("tcpkit")
ACCEPT_PAUSE = 0.1  # seconds to stop accepting when out of descriptors or memory
ACCEPT_BATCH = 64  # clients accepted per wake-up, so signals are seen promptly
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
CLIENT_GONE = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})


class BlockingServer:
    """Accepts clients on its listeners until stopped; subclasses serve them."""

    mode = "blocking"

    def __init__(self, listeners: Sequence[Listener], limits: Limits | None = None,
                 observer: Observer | None = None) -> None:
        self.listeners = list(listeners)
        self.limits = limits or Limits()
        self.observer = observer or Observer()
        self.stats = Stats()
        self.gate = Gate(self.limits, self.observer, self.stats, self.listeners)
        self.stop_signal = Wakeup()
        self.watch_fds: list[int] = []  # more fds meaning "stop" (a supervisor's pipe)
        self.stopping = False
        self.handles_signals = False  # whether serve() set this server's signal handlers
        self._bridge: OffloadBridge | None = None
        self.preload = preload_for(listener.service for listener in self.listeners)
        self._bridge_lock = threading.Lock()
        self._hubs: Hubs | None = None  # sessions' hubs, made on first use
        self._poller: select.poll | None = None  # the accept loop's
        self._lingering: dict[int, tuple[socket.socket, float]] = {}  # fd -> (sock, until)
        self._headers = HeaderWaits(self.listeners, self.gate, self._admit)  # --proxy-protocol
        self._accept_pauses = 0  # consecutive out-of-resources pauses
        self._paused_until = 0.0
        self._next_tick = 0.0

    # Whether each client holds a descriptor in this process for its whole
    # life (thread, iterative) — not so in fork mode, where the child holds it.
    clients_hold_descriptors = True
    client_stop: Wakeup | None = None  # the stop pipe, if clients may read its flag (thread)

    # -- what a mode provides ---------------------------------------------

    def dispatch(self, listener: Listener, sock: socket.socket, peer: object) -> None:
        """Serve a newly accepted, admitted client (inline, on a thread, in a child...).

        Whoever serves it calls :meth:`release` with its service and peer when it is done.
        """
        raise NotImplementedError

    def active(self) -> int:
        """Clients being served now."""
        return self.stats.open

    def wait_for_clients(self, deadline: float) -> None:
        """During the drain: return when every client is done, or at ``deadline``."""

    def abort_clients(self) -> None:
        """Cut off every client now (second signal, or the drain timed out)."""

    def tick(self) -> None:
        """Housekeeping, about once a second and on every wake-up."""

    def extra_fds(self) -> list[int]:
        """More fds for the accept loop to wake on (e.g. a SIGCHLD pipe)."""
        return []

    def serving_socket(self, sock: socket.socket) -> None:
        """The client's socket is now ``sock`` (its TLS wrapper), for abort_clients."""

    # -- serving ----------------------------------------------------------

    def serve(self) -> None:
        """Serve until SIGINT/SIGTERM (or :meth:`stop`), then drain and return."""
        restore = self._install_signals()  # before "Listening on": clients may act on it
        if self.clients_hold_descriptors:
            self.gate.budget()
        for listener in self.listeners:
            self.observer.listening(listener.service.name, describe(listener.sock), self.mode)
        try:
            self._accept_loop()
            self._drain()
        finally:
            self._close_listeners()
            self.close_bridge()
            self.close_hub()
            for sig, handler in restore.items():
                signal.signal(sig, handler)

    def stop(self) -> None:
        """Begin a graceful stop; a second call cuts clients off (signal-safe)."""
        if self.stopping:
            self.abort_clients()
        self.stopping = True
        self.stop_signal.set()

    def serve_client(self, listener: Listener, sock: socket.socket, peer: object) -> Outcome:
        """Drive one client to its end with the shared driver, logging accept and close.

        Over TLS the handshake comes first; a client that fails it or does not
        finish it within the handshake timeout is closed unlogged (as in async).
        """
        service = listener.service
        host, port = peer_text(peer)
        send_at_once(sock)  # here, not in the accept loop: a fork child pays for it
        if listener.tls is not None:
            wrapped = server_handshake(sock, listener.tls, self.stop_fds())
            if wrapped is None:
                return Outcome(0, 0, False)
            sock = wrapped
            self.serving_socket(sock)
        started = time.monotonic()
        observer = self.observer
        observer.accepted(service.name, host, port)
        try:
            outcome = serve_connection(sock, service, listener.limits or self.limits,
                                       self.stop_fds(), self.bridge,
                                       observer if observer.measures_traffic else None,
                                       peer=(host, port),
                                       hub=functools.partial(self.session_hub, service.name),
                                       blocking_stop=self.client_stop)
        except Exception:
            log.exception("a connection failed")
            sock.close()
            outcome = Outcome(0, 1, False)
        if outcome.idle_closed:
            observer.failed(service.name, "idle_timeout")
        observer.ended(service.name, host, port, outcome.lines, time.monotonic() - started,
                        close_reason(outcome.idle_closed, outcome.line_too_long))
        return outcome

    def release(self, service: Service, peer: object) -> None:
        """An admitted client of ``service`` has gone (from any thread)."""
        self.gate.release(service.name, peer_text(peer)[0])

    def stop_fds(self) -> list[int]:
        return [self.stop_signal.fileno(), *self.watch_fds]

    def bridge(self) -> OffloadBridge:
        """The offload bridge, started on first use (thread-safe).

        It runs the executor ``--executor`` names, as the async mode does, with
        workers preloading what this server's services declare.  Imported here,
        not at the top: the bridge brings asyncio, which a server that never
        offloads does without (a forking server imports it before it forks).
        """
        with self._bridge_lock:
            if self._bridge is None:
                from tcpkit.serving.offload.bridge import OffloadBridge

                self._bridge = OffloadBridge(self.limits, self.preload)
            return self._bridge

    def session_hub(self, service: str) -> Hub:
        """The hub every session of ``service`` in this process shares, made on first use
        (thread-safe)."""
        with self._bridge_lock:
            if self._hubs is None:
                from tcpkit.hub import Hubs

                self._hubs = Hubs(self.limits.pubsub)
            hubs = self._hubs
        return hubs.get(service)

    def close_hub(self) -> None:
        with self._bridge_lock:
            hubs, self._hubs = self._hubs, None
        if hubs is not None:
            hubs.close()

    def close_bridge(self) -> None:
        with self._bridge_lock:
            bridge, self._bridge = self._bridge, None
        if bridge is not None:
            bridge.close()

    def count(self, outcome: Outcome) -> None:
        self.stats.lines += outcome.lines
        self.stats.errors += outcome.errors
        self.stats.idle_closed += outcome.idle_closed

    # -- the accept loop --------------------------------------------------

    def _accept_loop(self) -> None:
        poller = self._poller = self._headers.poller = select.poll()
        by_fd = {listener.sock.fileno(): listener for listener in self.listeners}
        for fd in (*self.stop_fds(), *self.extra_fds()):
            poller.register(fd, select.POLLIN)
        watching = False
        while not self.stopping:
            now = time.monotonic()
            if watching != (now >= self._paused_until):
                watching = not watching
                for fd in by_fd:
                    if watching:
                        poller.register(fd, select.POLLIN)
                    else:
                        poller.unregister(fd)
            wait = min(self._next_tick, self._paused_until if not watching else now + TICK)
            events = poller.poll(max(0, int((wait - now) * 1000) + 1))
            for fd, _ in events:
                if fd in by_fd:
                    self._accept_from(by_fd[fd])
                elif fd in self._lingering:
                    self._drop_input(fd)
                elif fd in self._headers:
                    self._headers.readable(fd)
                elif fd in self.stop_fds():
                    self.stopping = True
            if time.monotonic() >= self._next_tick or events:
                self._housekeeping()

    def _accept_from(self, listener: Listener) -> None:
        for _ in range(ACCEPT_BATCH):
            if self.stopping:
                return
            try:
                sock, peer = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in CLIENT_GONE:
                    continue
                self._accept_failed(exc)
                return
            if self._accept_pauses:
                log.info("accepting again (after %d pauses)", self._accept_pauses)
                self._accept_pauses = 0
            if self._headers.wants_header(listener):
                self._headers.accepted(listener, sock, peer)
            else:
                self._admit(listener, sock, peer)

    def _admit(self, listener: Listener, sock: socket.socket, peer: object) -> None:
        """Serve the client at ``peer`` (the real one behind a proxy), or turn it away."""
        host, port = peer_text(peer)
        refusal = self.gate.admit(listener.service.name, host, port, self.active(),
                                  time.monotonic())
        if refusal is not None:
            self.turn_away(sock, listener.service, refusal)
        else:
            self.dispatch(listener, sock, peer)

    def _accept_failed(self, exc: OSError) -> None:
        if exc.errno not in OUT_OF_RESOURCES:
            log.error("accept failed: %s", exc.strerror or exc)
        elif self._accept_pauses == 0:
            log.warning("accept failed: %s; pausing accepts for %g s until resources free up",
                        exc.strerror or exc, ACCEPT_PAUSE)
        self._accept_pauses += 1
        self._paused_until = time.monotonic() + ACCEPT_PAUSE

    def refuse(self, service: Service, sock: socket.socket, peer: object,
               refusal: Refusal = BUSY) -> None:
        """Count and log an admitted client that cannot be served after all
        (no thread or process for it), and turn it away."""
        host, port = peer_text(peer)
        self.gate.refuse(service.name, host, port, refusal)
        self.turn_away(sock, service, refusal)

    def turn_away(self, sock: socket.socket, service: Service, refusal: Refusal) -> None:
        """Send a refused client its ``error:`` line (in ``service``'s syntax), then
        linger or close (a silent refusal, --quiet-deny, is a bare close)."""
        if refusal.silent:
            sock.close()
            return
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            # Unread bytes at close() make the kernel send a reset, which can
            # destroy the reply: take what the client already sent first.
            with contextlib.suppress(BlockingIOError):
                sock.recv(1 << 16)
            sock.send(self.gate.reply(service, refusal))
            sock.shutdown(socket.SHUT_WR)
            if self._poller is not None and self.gate.linger():
                self._poller.register(sock.fileno(), select.POLLIN)
                self._lingering[sock.fileno()] = (sock, time.monotonic() + LINGER)
                return
        sock.close()

    def _drop_input(self, fd: int) -> None:
        """Read and drop what a refused client sends; close at its EOF."""
        sock = self._lingering[fd][0]
        try:
            if sock.recv(1 << 16):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._stop_lingering(fd)

    def _stop_lingering(self, fd: int) -> None:
        sock, _ = self._lingering.pop(fd)
        self.gate.unlinger()
        if self._poller is not None:
            self._poller.unregister(fd)
        sock.close()

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_tick:
            self._next_tick = now + TICK
            self.gate.tick(self.active())
            for fd, (_, until) in list(self._lingering.items()):
                if now >= until:
                    self._stop_lingering(fd)
            self._headers.expire(now)
        self.tick()

    # -- stopping ---------------------------------------------------------

    def _drain(self) -> None:
        self.stop_signal.set()  # also when a watched fd (not a signal) said stop
        self._close_listeners()
        if self.active():
            log.info("draining %d connections (up to %g s)", self.active(),
                     self.limits.drain_timeout)
        # Each connection enforces drain_timeout itself, then lingers up to
        # LINGER_BLOCKING: the margin covers that and the time to notice.
        self.wait_for_clients(time.monotonic() + self.limits.drain_timeout + LINGER_BLOCKING)
        if self.active():
            log.warning("drain timeout: cutting off %d connections", self.active())
            self.abort_clients()
            self.wait_for_clients(time.monotonic() + 5.0)

    def _close_listeners(self) -> None:
        for listener in self.listeners:
            listener.sock.close()
        for fd in list(self._lingering):
            self._stop_lingering(fd)
        self._headers.close_all()

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}  # embedded in a thread: the caller drives stop()
        restore: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            restore[sig] = signal.signal(sig, self._on_signal)
        # SIGHUP (systemctl reload) re-reads certificates; it never stops the server.
        restore[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)
        self.handles_signals = True
        return restore

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop()

    def _on_hangup(self, signum: int, frame: FrameType | None) -> None:
        # Python runs this on the main thread between bytecodes (also while
        # iterative mode serves a client): reading the files here is safe.
        reload_certificates(listener.tls for listener in self.listeners)
