"""Open listeners, then serve them in the chosen mode (the command line's entry point)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from tcpkit.endpoints import Endpoint
from tcpkit.service import Service
from tcpkit.serving.aio import AsyncServer, Listener, install_uvloop
from tcpkit.serving.config import Limits
from tcpkit.serving.events import Observer
from tcpkit.serving.listeners import ListenError, open_listener

log = logging.getLogger("tcpkit")
MODES = ("async",)

__all__ = ["MODES", "AsyncServer", "Limits", "ListenError", "Listener", "Observer",
           "open_listeners", "run", "serve_listeners"]


def open_listeners(plan: Sequence[tuple[Service, Endpoint]]) -> list[Listener]:
    """Open a socket per (service, endpoint); close them all if one fails."""
    listeners: list[Listener] = []
    try:
        for service, endpoint in plan:
            listeners.append(Listener(service, open_listener(endpoint)))
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
    asyncio.run(server.serve())
    log.info("%s", server.stats.summary())


def run(plan: Sequence[tuple[Service, Endpoint]], mode: str = "async",
        limits: Limits | None = None, observer: Observer | None = None) -> None:
    """Open the listeners of ``plan`` and serve them (raises ListenError)."""
    serve_listeners(open_listeners(plan), mode, limits, observer)
