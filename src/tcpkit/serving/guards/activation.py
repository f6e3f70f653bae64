"""systemd socket activation (``LISTEN_FDS``) and readiness (``sd_notify``).

With a ``.socket`` unit, systemd opens the listening sockets itself and starts
the service when the first client arrives, passing the sockets as file
descriptors 3, 4, ... with ``LISTEN_FDS`` (how many), ``LISTEN_PID`` (which
process they are for) and optionally ``LISTEN_FDNAMES`` (colon-separated names,
``FileDescriptorName=`` in the unit).  :func:`inherited_sockets` picks them up
the way ``sd_listen_fds(3)`` does, without linking libsystemd, and clears the
variables so child processes do not take them for theirs.

:func:`notify` is ``sd_notify(3)``: one datagram to ``$NOTIFY_SOCKET``
(``Type=notify`` units wait for ``READY=1``); it does nothing when the
variable is not set.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

from tcpkit.errors import Error

LISTEN_FDS_START = 3
_VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


class ActivationError(Error):
    """The inherited sockets cannot be used; the message is ready for the user."""


@dataclass(frozen=True)
class InheritedSocket:
    sock: socket.socket
    name: str | None  # from LISTEN_FDNAMES ("unknown" and "" mean none)


def inherited_sockets(
        environ: MutableMapping[str, str] | None = None) -> list[InheritedSocket] | None:
    """The listening sockets systemd passed to this process, or None if it passed none."""
    env = os.environ if environ is None else environ
    count_text, pid_text = env.get("LISTEN_FDS"), env.get("LISTEN_PID")
    if not count_text:
        return None
    if pid_text and pid_text.strip() != str(os.getpid()):
        return None  # meant for another process (our parent)
    names = env.get("LISTEN_FDNAMES", "").split(":")
    for variable in _VARIABLES:
        env.pop(variable, None)
    try:
        count = int(count_text)
    except ValueError:
        raise ActivationError(f"LISTEN_FDS is not a number: {count_text!r}") from None
    found = []
    for index, fd in enumerate(range(LISTEN_FDS_START, LISTEN_FDS_START + count)):
        name = names[index] if index < len(names) else ""
        found.append(InheritedSocket(_listening_socket(fd), name if name not in
                                     ("", "unknown") else None))
    return found


def _listening_socket(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ActivationError(f"inherited fd {fd} is not a socket: "
                              f"{exc.strerror or exc}") from None
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET,
                                                             socket.SO_ACCEPTCONN):
        sock.detach()
        raise ActivationError(f"inherited fd {fd} is not a listening stream socket "
                              f"(use ListenStream= in the .socket unit)")
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


def notify(state: str, environ: MutableMapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to systemd; False when not run by it."""
    env = os.environ if environ is None else environ
    path = env.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):  # an abstract socket
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True
