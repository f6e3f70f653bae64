"""Run any service on an ephemeral loopback port, for tests (SPEC §5).

A service author tests their service over a real socket without writing any
server code::

    from tcpkit.testing import running

    def test_shout():
        with running(SERVICE) as server:
            with INETSocket.connect(server.endpoint) as sock:
                sock.print("hi")
                assert sock.readline() == b"HI\\n"

The same helper is a pytest fixture, ``tcpkit_server`` (installed through the
``pytest11`` entry point, so any project that has tcpkit installed gets it)::

    def test_shout(tcpkit_server):
        server = tcpkit_server(SERVICE)
        ...

The server is the real async serving mode on a real socket, run on an event
loop in a background thread, so a service defined inside a test module works
(nothing has to be importable by another process).  Offloaded work still runs
in worker processes, which need the offloaded function to be importable.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import pytest

from tcpkit.endpoints import Endpoint, format_address
from tcpkit.service import Service
from tcpkit.serving.config import Limits, Listener
from tcpkit.serving.listeners import open_listener
from tcpkit.serving.modes.aio import AsyncServer
from tcpkit.serving.observe.events import Observer

START_TIMEOUT = 10.0


@dataclass
class RunningServer:
    """A service being served on loopback; ``endpoint`` is ``"127.0.0.1:PORT"``."""

    host: str
    port: int
    server: AsyncServer

    @property
    def endpoint(self) -> str:
        return format_address(self.host, self.port)


@contextmanager
def running(service: Service, limits: Limits | None = None, host: str = "127.0.0.1",
            observer: Observer | None = None) -> Iterator[RunningServer]:
    """Serve ``service`` on ``host``:0 in a background thread until the block ends."""
    sock = open_listener(Endpoint(host=host, port=0))
    port = int(sock.getsockname()[1])
    server = AsyncServer([Listener(service, sock)], limits, observer)
    started = threading.Event()
    loop = asyncio.new_event_loop()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        try:
            loop.run_until_complete(server.serve())
        finally:
            loop.close()

    thread = threading.Thread(target=serve, name=f"tcpkit-{service.name}", daemon=True)
    thread.start()
    if not started.wait(START_TIMEOUT):
        raise RuntimeError(f"the {service.name} server did not start")
    try:
        yield RunningServer(host, port, server)
    finally:
        loop.call_soon_threadsafe(server.stop)
        thread.join(server.limits.drain_timeout + 5)
        sock.close()


@pytest.fixture
def tcpkit_server() -> Iterator[Callable[..., RunningServer]]:
    """Start services on ephemeral loopback ports; each is stopped after the test."""
    with ExitStack() as stack:

        def start(service: Service, limits: Limits | None = None) -> RunningServer:
            return stack.enter_context(running(service, limits))

        yield start
