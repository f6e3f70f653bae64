"""Open listeners, then serve them in the chosen mode (the command line's entry point).

The API for anything that starts a server (the CLI, the article programs, a
benchmark)::

    listeners = open_listeners([(service, Endpoint(host="127.0.0.1", port=0))])
    serve_listeners(listeners, mode="thread", limits=Limits(...), workers=2)

``serve_listeners`` blocks until SIGINT/SIGTERM, drains, and logs the summary
line.  ``make_server`` gives the server object of one mode, for callers that
drive it themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from tcpkit.endpoints import Endpoint
from tcpkit.service import Service
from tcpkit.serving.config import MODES, Limits, Listener
from tcpkit.serving.guards import activation, fdlimit, privileges
from tcpkit.serving.guards.pidfile import PidFile
from tcpkit.serving.guards.privileges import Credentials
from tcpkit.serving.guards.tls import ServerTLS
from tcpkit.serving.listeners import ListenError, open_listener
from tcpkit.serving.modes.accepting import BlockingServer
from tcpkit.serving.modes.forking import ForkingServer
from tcpkit.serving.modes.iterative import IterativeServer
from tcpkit.serving.modes.pipes import Wakeup
from tcpkit.serving.modes.threaded import ThreadedServer
from tcpkit.serving.observe.events import Observer
from tcpkit.serving.observe.stats import Stats

if TYPE_CHECKING:
    from tcpkit.serving.modes.aio import AsyncServer

log = logging.getLogger("tcpkit")
BLOCKING_MODES: dict[str, type[BlockingServer]] = {
    "iterative": IterativeServer,
    "thread": ThreadedServer,
    "fork": ForkingServer,
}

__all__ = ["MODES", "AsyncServer", "Limits", "ListenError", "Listener", "Observer",
           "make_server", "open_listeners", "opened", "run", "serve_listeners", "serve_once",
           "shared_state_refusal"]


def __getattr__(name: str) -> Any:
    # The async mode (asyncio, uvloop: ~5 MB) is imported only by a server that
    # uses it; the blocking modes, fork mode above all, stay smaller without it.
    if name == "AsyncServer":
        from tcpkit.serving.modes.aio import AsyncServer

        return AsyncServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def shared_state_refusal(services: Iterable[Service], mode: str, workers: int,
                         pubsub: str | None) -> str | None:
    """Why these services cannot be served so (a usage error), or None.

    A ``shared_state`` service keeps state that all its connections share (a
    key-value store's dict, a chat room).  Split across processes (``--mode
    fork``, ``--workers`` above 1) each process would have its own, silently:
    so in-process state (``True``) is never split, and hub state (``"hub"``)
    only with a shared hub (``--pubsub redis://``).
    """
    if mode != "fork" and workers <= 1:
        return None
    how = "--mode fork" if mode == "fork" else f"--workers {workers}"
    shared_hub = pubsub not in (None, "", "local")
    for service in services:
        if service.shared_state is True:
            return (f"{service.name} keeps state shared by its connections in one process: "
                    f"it cannot run with {how} (--pubsub redis:// shares rooms, not it)")
        if service.shared_state == "hub" and not shared_hub:
            return (f"{service.name} shares state between its connections: it cannot run "
                    f"with {how} unless --pubsub redis://HOST:PORT shares it")
    return None


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


def make_server(listeners: Sequence[Listener], mode: str = "async",
                limits: Limits | None = None,
                observer: Observer | None = None) -> AsyncServer | BlockingServer:
    """The server object for ``mode`` (not yet serving)."""
    if mode == "async":
        from tcpkit.serving.modes.aio import AsyncServer

        return AsyncServer(listeners, limits, observer)
    if mode not in BLOCKING_MODES:
        raise ValueError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
    return BLOCKING_MODES[mode](listeners, limits, observer)


def serve_once(listeners: Sequence[Listener], mode: str = "async",
               limits: Limits | None = None, observer: Observer | None = None,
               stop_fd: int | None = None) -> Stats:
    """Serve in this process until a signal (or ``stop_fd`` turns readable); drain.

    ``stop_fd`` is how a supervisor stops its workers: the read end of a pipe
    that it writes to — or that reaches EOF when the supervisor dies.
    """
    server = make_server(listeners, mode, limits, observer)
    if not isinstance(server, BlockingServer):
        import asyncio

        from tcpkit.serving.modes.loop import install_uvloop

        install_uvloop()
        asyncio.run(_serve_async(server, stop_fd))
    else:
        if stop_fd is not None:
            server.watch_fds.append(stop_fd)
        server.serve()
    return server.stats


async def _serve_async(server: AsyncServer, stop_fd: int | None) -> None:
    import asyncio

    if stop_fd is not None:
        loop = asyncio.get_running_loop()

        def stop() -> None:
            loop.remove_reader(stop_fd)  # the pipe stays readable: act once
            server.stop()

        loop.add_reader(stop_fd, stop)
    await server.serve()


def serve_listeners(listeners: Sequence[Listener], mode: str = "async",
                    limits: Limits | None = None, observer: Observer | None = None,
                    workers: int = 1, pid_file: str | None = None,
                    credentials: Credentials | None = None,
                    reexec: Sequence[str] | None = None) -> None:
    """Serve already opened listeners until SIGINT/SIGTERM, then drain.

    With ``workers`` above 1, that many processes serve the same sockets under
    a supervisor that restarts any that dies (see :mod:`tcpkit.serving.modes.supervisor`).
    Everything a server opens as root is open by now (the listeners, the
    metrics port, the TLS files), so the pid file is written here, then the
    process becomes ``credentials`` before any client is served, and every
    process forked later (workers, fork-mode children, the factor pool) with it.
    Raises PidFileError (the pid file is another server's) before serving.
    ``reexec`` is the command line that started this server: given it, SIGUSR2
    replaces the workers with freshly executed ones, or, for a single process,
    drains and re-executes it with its sockets (:func:`upgrade_in_place`).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
    fdlimit.raise_nofile()  # a connection per descriptor: allow all the system allows
    taken = PidFile.take(pid_file) if pid_file is not None else None
    try:
        privileges.drop(credentials)
        if taken is not None and credentials is not None:
            taken.warn_if_unremovable()
        _serve_ready(listeners, mode, limits, observer, workers, reexec)
    finally:
        if taken is not None:
            taken.release()


def _serve_ready(listeners: Sequence[Listener], mode: str, limits: Limits | None,
                 observer: Observer | None, workers: int,
                 reexec: Sequence[str] | None) -> None:
    activation.notify("READY=1")  # the sockets listen: clients queue from now on
    if workers > 1:
        from tcpkit.serving.modes.supervisor import Supervisor

        stats = Supervisor(listeners, mode, serve_once, limits, observer, workers,
                           reexec).serve()
    elif reexec:
        stats = upgrade_in_place(listeners, mode, limits, observer, reexec)
    else:
        stats = serve_once(listeners, mode, limits, observer)
    activation.notify("STOPPING=1")
    log.info("%s", stats.summary(), extra={"event": "stopped"})


def upgrade_in_place(listeners: Sequence[Listener], mode: str, limits: Limits | None,
                     observer: Observer | None, reexec: Sequence[str]) -> Stats:
    """Serve; on SIGUSR2 drain, then become ``reexec`` (same PID) with the sockets.

    The listening sockets stay open throughout, so a client connecting while
    the old code drains and the new one starts waits in the backlog and is
    served by the new code: slower for a moment, never refused.  Returns the
    totals when stopped by SIGINT/SIGTERM (or when the exec fails, logged).
    """
    upgrade = Wakeup()
    asked: list[int] = []

    def on_usr2(signum: int, frame: object) -> None:
        asked.append(signum)
        upgrade.set()

    # The modes close their listening sockets when they drain; these copies
    # keep them listening (clients queue) until the new program takes them.
    held = [dataclasses.replace(listener, sock=listener.sock.dup()) for listener in listeners]
    previous = signal.signal(signal.SIGUSR2, on_usr2)
    try:
        stats = serve_once(listeners, mode, limits, observer, upgrade.fileno())
    finally:
        signal.signal(signal.SIGUSR2, previous)
        upgrade.close()
    if not asked:
        for listener in held:
            listener.sock.close()
        return stats
    from tcpkit.serving.reexec import exec_with_sockets

    log.info("%s", stats.summary(), extra={"event": "stopped"})
    log.info("re-executing %s with %d inherited sockets (SIGUSR2)", reexec[0],
             len(listeners), extra={"event": "reexec"})
    activation.notify("RELOADING=1")
    try:
        exec_with_sockets(reexec, held)
    except OSError as exc:
        log.error("cannot re-execute %s: %s", reexec[0], exc.strerror or exc)
    return stats


def run(plan: Sequence[tuple[Service, Endpoint]], mode: str = "async",
        limits: Limits | None = None, observer: Observer | None = None,
        tls: ServerTLS | None = None, workers: int = 1, pid_file: str | None = None,
        credentials: Credentials | None = None,
        reexec: Sequence[str] | None = None) -> None:
    """Open the listeners of ``plan`` and serve them (raises ListenError, PidFileError).

    Unix socket files opened here are removed when serving ends.
    """
    with opened(plan, tls) as listeners:
        serve_listeners(listeners, mode, limits, observer, workers, pid_file, credentials,
                        reexec)


@contextlib.contextmanager
def opened(plan: Sequence[tuple[Service, Endpoint]],
           tls: ServerTLS | None = None) -> Iterator[list[Listener]]:
    """The listeners of ``plan`` (raises ListenError); closed, and their unix
    socket files removed, when the block ends."""
    listeners = open_listeners(plan, tls)
    socket_files = [_socket_file(listener.sock) for listener in listeners]
    try:
        yield listeners
    finally:
        for listener in listeners:
            listener.sock.close()
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
