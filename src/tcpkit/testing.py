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

``running(SERVICE, mode="thread")`` serves it in any mode — ``async``,
``thread``, ``iterative`` or ``fork`` — with the mode's own code, not a
stand-in.  Where each runs, and why:

* ``async``, ``thread``, ``iterative``: in a background thread of the test's
  own process, on a socket opened (and so already accepting) before the
  thread starts.  A service defined inside a test module works (nothing has to
  be importable by another process), an ``observer`` sees every event, and
  the server is stopped by calling its ``stop()``, which these modes accept
  from another thread (they install signal handlers only on the main thread).
* ``fork``: in a forked child process of its own.  The fork mode reaps its
  children with ``waitpid(-1)`` on SIGCHLD — process-wide, so inside the test's
  process it would also reap the test's own subprocesses — and needs the main
  thread's signal handlers.  A forked child has both to itself, still inherits
  the service object without pickling it, and is stopped by SIGTERM to its PID
  (the operator's way: it drains), or SIGKILL past the drain timeout.  Its
  observer events happen in that child, not in the test.

Offloaded work still runs in worker processes, which need the offloaded
function to be importable.

The module imports without pytest (a script or another test runner can use
``running``); the fixture is defined only where pytest is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from tcpkit.endpoints import Endpoint, format_address
from tcpkit.service import Service
from tcpkit.serving.config import MODES, Limits, Listener
from tcpkit.serving.listeners import open_listener
from tcpkit.serving.modes.accepting import BlockingServer
from tcpkit.serving.modes.aio import AsyncServer
from tcpkit.serving.observe.events import Observer
from tcpkit.serving.run import make_server, serve_once

START_TIMEOUT = 10.0
STOP_MARGIN = 5.0  # seconds past the drain timeout a server may take to finish stopping


@dataclass
class RunningServer:
    """A service being served on loopback; ``endpoint`` is ``"127.0.0.1:PORT"``.

    ``server`` is the mode's server object (``None`` in fork mode, where it
    lives in the child); ``pid`` is the process serving (the child's in fork
    mode).
    """

    host: str
    port: int
    server: AsyncServer | BlockingServer | None
    mode: str = "async"
    pid: int = field(default_factory=os.getpid)

    @property
    def endpoint(self) -> str:
        return format_address(self.host, self.port)


@contextmanager
def running(service: Service, limits: Limits | None = None, host: str = "127.0.0.1",
            observer: Observer | None = None, mode: str = "async") -> Iterator[RunningServer]:
    """Serve ``service`` on ``host``:0 in ``mode`` until the block ends (see above)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
    limits = limits or Limits()
    sock = open_listener(Endpoint(host=host, port=0))
    port = int(sock.getsockname()[1])
    listeners = [Listener(service, sock)]
    try:
        if mode == "fork":
            with _in_child(listeners, limits, observer) as pid:
                yield RunningServer(host, port, None, mode, pid)
        else:
            server = make_server(listeners, mode, limits, observer)
            with _in_thread(server, service.name, limits):
                yield RunningServer(host, port, server, mode)
    finally:
        sock.close()


@contextmanager
def _in_thread(server: AsyncServer | BlockingServer, name: str,
               limits: Limits) -> Iterator[None]:
    """Run ``server`` on a thread until the block ends; then stop it and wait."""
    if isinstance(server, AsyncServer):
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            try:
                loop.run_until_complete(server.serve())
            finally:
                loop.close()

        def stop() -> None:
            loop.call_soon_threadsafe(server.stop)
    else:
        started = threading.Event()
        started.set()  # the socket already listens: clients queue until accepted
        serve, stop = server.serve, server.stop
    thread = threading.Thread(target=serve, name=f"tcpkit-{name}", daemon=True)
    thread.start()
    if not started.wait(START_TIMEOUT):
        raise RuntimeError(f"the {name} server did not start")
    try:
        yield
    finally:
        stop()
        thread.join(limits.drain_timeout + STOP_MARGIN)


@contextmanager
def _in_child(listeners: list[Listener], limits: Limits,
              observer: Observer | None) -> Iterator[int]:
    """Run the fork mode in a forked child until the block ends; SIGTERM, then wait."""
    context = multiprocessing.get_context("fork")  # inherit the service: no pickling
    child = context.Process(target=_serve_forked, args=(listeners, limits, observer),
                            name="tcpkit-fork-server", daemon=True)
    child.start()
    for listener in listeners:
        listener.sock.close()  # the child accepts; a copy here would keep the port open
    assert child.pid is not None
    try:
        yield child.pid
    finally:
        if child.is_alive():
            os.kill(child.pid, signal.SIGTERM)
        child.join(limits.drain_timeout + STOP_MARGIN)  # waits on the child's sentinel
        if child.is_alive():
            child.kill()
            child.join(STOP_MARGIN)


def _serve_forked(listeners: list[Listener], limits: Limits, observer: Observer | None) -> None:
    """The forked child: let go of the test's other sockets, then serve in fork mode."""
    _release_inherited_sockets({0, 1, 2, *(listener.sock.fileno() for listener in listeners)})
    serve_once(listeners, "fork", limits, observer)


def _release_inherited_sockets(keep: set[int]) -> None:
    """Point every inherited socket descriptor but ``keep`` at /dev/null.

    The fork copied every socket of the test process: a client the test
    closes would stay connected through this copy (its server never sees
    EOF), and another server's listening port would stay open after it
    stopped.  ``dup2`` drops the copy but keeps the descriptor's number
    taken, so a Python object that still owns it closes /dev/null later,
    never a socket this child opened since.
    """
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd in keep or fd == null:
                continue
            with contextlib.suppress(OSError):  # the listing's own descriptor is gone
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    os.dup2(null, fd)
    finally:
        os.close(null)


try:
    import pytest
except ModuleNotFoundError as missing:  # pytest is not installed: running() is enough
    if missing.name != "pytest":
        raise
else:

    @pytest.fixture
    def tcpkit_server() -> Iterator[Callable[..., RunningServer]]:
        """Start services on ephemeral loopback ports; each is stopped after the test.

        ``tcpkit_server(SERVICE, limits=None, mode="async")``.
        """
        with ExitStack() as stack:

            def start(service: Service, limits: Limits | None = None,
                      mode: str = "async") -> RunningServer:
                return stack.enter_context(running(service, limits, mode=mode))

            yield start
