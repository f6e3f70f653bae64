"""The iterative mode: one client at a time, the article's first server.

The accept loop serves each client to its end before it accepts the next;
other clients wait in the listening socket's backlog meanwhile.  Simple and
fair only for short visits — which is the article's point.
"""

from __future__ import annotations

import contextlib
import select
import socket

from tcpkit.serving.config import Listener
from tcpkit.serving.modes.accepting import BlockingServer


class IterativeServer(BlockingServer):
    """Serves clients one after another on the calling thread."""

    mode = "iterative"
    _current: socket.socket | None = None  # the client being served

    def dispatch(self, listener: Listener, sock: socket.socket, peer: object) -> None:
        self.stats.connections += 1
        self.stats.open = 1
        self._current = sock
        try:
            self.count(self.serve_client(listener, sock, peer))
        finally:
            self._current = None
            self.stats.open = 0
            self.release(listener.service, peer)
        # A stop that arrived while this client was served (by signal or by a
        # supervisor's pipe) must end the accept batch before another client.
        if select.select(self.stop_fds(), [], [], 0)[0]:
            self.stopping = True

    def serving_socket(self, sock: socket.socket) -> None:
        self._current = sock

    def abort_clients(self) -> None:
        # Called from a signal handler while serve_client blocks in poll():
        # shutting the socket down makes that poll report the client gone.
        if self._current is not None:
            with contextlib.suppress(OSError):
                # The plain socket's shutdown: an SSLSocket's would unwrap it.
                socket.socket.shutdown(self._current, socket.SHUT_RDWR)
