"""``--inetd``: serve the one connection inetd/xinetd passed on stdin and stdout.

inetd (``nowait``), xinetd (``wait = no``) and systemd (``Accept=yes``) accept
the connection themselves and start one server process per client with the
connected socket as its standard input and output — often as its standard
error too.  :func:`take_stdin_socket` takes the socket from fd 0 and points
fds 0 and 1 (and 2, when it is the same socket) at ``/dev/null``: then our
one descriptor is the only one, so closing it really closes the connection,
and no log line can ever be written into the client's stream.  Logs go to
syslog in that case, as inetd services' logs traditionally do.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
import socket
import stat

from tcpkit.errors import Error
from tcpkit.service import Service
from tcpkit.serving.config import Limits
from tcpkit.serving.guards.tls import ServerTLS
from tcpkit.serving.modes.aio import AsyncServer
from tcpkit.serving.modes.loop import install_uvloop
from tcpkit.serving.observe.events import Observer
from tcpkit.serving.observe.stats import Stats
from tcpkit.serving.offload.executors import make_executor, preload_for

SYSLOG = "/dev/log"


class InetdError(Error):
    """stdin is not a connected socket; the message is ready for the user."""


def take_stdin_socket() -> socket.socket:
    """The connected socket on fd 0, now the only descriptor of the connection."""
    if not stat.S_ISSOCK(os.fstat(0).st_mode):
        raise InetdError("--inetd needs a connected socket on stdin (run it from inetd, "
                         "xinetd, or a systemd socket unit with Accept=yes)")
    sock = socket.socket(fileno=os.dup(0))
    if sock.type != socket.SOCK_STREAM:
        sock.close()
        raise InetdError("--inetd needs a stream socket on stdin")
    same = _same_file(0, 2)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2) if same else (0, 1):
        os.dup2(devnull, fd)
    os.close(devnull)
    if same:
        _log_to_syslog()
    sock.setblocking(False)
    return sock


def _same_file(a: int, b: int) -> bool:
    try:
        first, second = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def _log_to_syslog() -> None:
    logger = logging.getLogger("tcpkit")
    handler: logging.Handler
    try:
        handler = logging.handlers.SysLogHandler(SYSLOG)
        handler.setFormatter(logging.Formatter("tcpkit[%(process)d]: %(message)s"))
    except OSError:
        handler = logging.NullHandler()
    logger.handlers[:] = [handler]


def serve_inetd(sock: socket.socket, service: Service, limits: Limits | None = None,
                observer: Observer | None = None, tls: ServerTLS | None = None) -> Stats:
    """Serve ``sock`` with the async mode until the client leaves; the figures."""
    install_uvloop()
    server = AsyncServer([], limits, observer)
    # No listener tells the server its service: give it the executor whose
    # workers preload what this one service declares.
    server.pool = make_executor(server.limits, preload_for([service]))
    asyncio.run(server.serve_connection(sock, service, tls))
    return server.stats
