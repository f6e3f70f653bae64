"""Open listeners, then serve them in the chosen mode (the command line's entry point)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Sequence

from tcpkit.endpoints import Endpoint
from tcpkit.service import Service
from tcpkit.serving import activation
from tcpkit.serving.aio import AsyncServer, Listener, install_uvloop
from tcpkit.serving.config import Limits
from tcpkit.serving.events import Observer
from tcpkit.serving.listeners import ListenError, open_listener
from tcpkit.serving.tls import ServerTLS

log = logging.getLogger("tcpkit")
MODES = ("async",)

__all__ = ["MODES", "AsyncServer", "Limits", "ListenError", "Listener", "Observer",
           "open_listeners", "run", "serve_listeners"]


def open_listeners(plan: Sequence[tuple[Service, Endpoint]],
                   tls: ServerTLS | None = None) -> list[Listener]:
    """Open a socket per (service, endpoint); close them all if one fails."""
    listeners: list[Listener] = []
    try:
        for service, endpoint in plan:
            listeners.append(Listener(service, open_listener(endpoint), tls))
    except ListenError:
        for listener in listeners:
            listener.sock.close()
        raise
    return listeners


def serve_listeners(listeners: Sequence[Listener], mode: str = "async",
                    limits: Limits | None = None, observer: Observer | None = None) -> None:
    """Serve already opened listeners until SIGINT/SIGTERM, then drain."""
    if mode != "async":
        raise ValueError(f"unknown mode {mode!r}")
    install_uvloop()
    server = AsyncServer(listeners, limits, observer)
    activation.notify("READY=1")  # the sockets listen: clients queue from now on
    asyncio.run(server.serve())
    activation.notify("STOPPING=1")
    log.info("%s", server.stats.summary(), extra={"event": "stopped"})


def run(plan: Sequence[tuple[Service, Endpoint]], mode: str = "async",
        limits: Limits | None = None, observer: Observer | None = None,
        tls: ServerTLS | None = None) -> None:
    """Open the listeners of ``plan`` and serve them (raises ListenError).

    Unix socket files opened here are removed when serving ends.
    """
    listeners = open_listeners(plan, tls)
    socket_files = [_socket_file(listener.sock) for listener in listeners]
    try:
        serve_listeners(listeners, mode, limits, observer)
    finally:
        for found in socket_files:
            if found is not None:
                _remove_socket_file(*found)


def _socket_file(sock: socket.socket) -> tuple[str, int] | None:
    """(path, inode) of a unix listener's socket file, to remove it at exit."""
    if sock.family != socket.AF_UNIX:
        return None
    path = sock.getsockname()
    if not isinstance(path, str) or not path or path.startswith("\0"):
        return None
    return path, os.stat(path).st_ino


def _remove_socket_file(path: str, inode: int) -> None:
    # Only the file we created: a newer server may have replaced it meanwhile.
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)
