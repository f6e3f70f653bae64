"""The thread mode: a thread per client, capped by ``--max-connections``.

Each client gets a thread running the shared blocking driver.  The accept loop
stays on the main thread (which is where Python delivers signals), counts the
live threads and refuses clients past the cap.  Offloaded work from every
thread goes to one shared bridge, so the worker pool is sized for the machine,
not per client.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from tcpkit.serving.config import Listener
from tcpkit.serving.guards.gate import TICK
from tcpkit.serving.modes.accepting import BlockingServer

THREAD_STACK = 1 << 20  # the driver's frames are shallow: 8 MB stacks only waste memory


class ThreadedServer(BlockingServer):
    """Serves each client on a thread of its own."""

    mode = "thread"

    def serve(self) -> None:
        self.client_stop = self.stop_signal  # one process: its threads read the pipe's flag
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._clients: dict[threading.Thread, socket.socket] = {}
        previous = threading.stack_size(THREAD_STACK)
        try:
            super().serve()
        finally:
            threading.stack_size(previous)

    def dispatch(self, listener: Listener, sock: socket.socket, peer: object) -> None:
        thread = threading.Thread(target=self._client, args=(listener, sock, peer),
                                  name="tcpkit-client", daemon=True)
        with self._lock:
            self.stats.open += 1
            self.stats.connections += 1
            self._clients[thread] = sock
        try:
            thread.start()
        except RuntimeError:  # can't start new thread: out of memory or a ulimit
            with self._lock:
                self.stats.open -= 1
                self.stats.connections -= 1
                del self._clients[thread]
            self.release(listener.service, peer)
            self.refuse(listener.service, sock, peer)

    def _client(self, listener: Listener, sock: socket.socket, peer: object) -> None:
        outcome = self.serve_client(listener, sock, peer)
        self.release(listener.service, peer)
        with self._lock:
            self.count(outcome)
            self.stats.open -= 1
            del self._clients[threading.current_thread()]
            if self.stopping:  # only the drain waits (after stopping is set, under the lock)
                self._done.notify_all()

    def serving_socket(self, sock: socket.socket) -> None:
        with self._lock:
            self._clients[threading.current_thread()] = sock

    def wait_for_clients(self, deadline: float) -> None:
        deadline += TICK  # a client blocked in recv (the driver's fast path) notices within TICK
        with self._lock:
            while self._clients:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._done.wait(left)

    def abort_clients(self) -> None:
        # shutdown() wakes a thread blocked in poll() on the socket; close()
        # would not, and could hand the fd number to a new socket meanwhile.
        # No lock: this may run in a signal handler that interrupted a holder.
        for sock in list(self._clients.values()):
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # an SSLSocket's would unwrap
