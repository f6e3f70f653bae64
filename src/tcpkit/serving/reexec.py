"""Handing listening sockets to a freshly executed process (SIGUSR2 upgrades).

An upgrade must pick up new code on disk, so the new server is a new program
image (``execve``), not a fork of the old one.  It is handed the listening
sockets the way systemd hands them over with socket activation (``LISTEN_FDS``
from descriptor 3 on, ``LISTEN_FDNAMES`` naming each one's service), so the new
process takes them with :func:`tcpkit.serving.guards.activation.inherited_sockets`
and never binds: the sockets never close, and a client connecting meanwhile
waits in their backlog instead of being refused.

Two users: the supervisor (``--workers N``) starts each replacement worker
with :func:`exec_with_sockets` in a forked child, adding the descriptors a
worker needs (the stop pipe, the stats pipe, a pipe on which it says it is
serving); a single process re-executes itself, same PID, once it has drained.
What else was handed over travels in one variable, read by :func:`take_handoff`.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

from tcpkit.serving.config import Listener
from tcpkit.serving.guards.activation import LISTEN_FDS_START

HANDOFF_ENV = "TCPKIT_HANDOFF"
_ROLES = ("stop", "report", "ready")


@dataclass(frozen=True)
class Handoff:
    """The descriptors a re-executed process was handed besides its sockets.

    A worker gets all three; a single process re-executing itself gets none
    (it is a whole server again, with only its sockets inherited).
    """

    stop: int | None = None  # read end of the supervisor's stop pipe
    report: int | None = None  # write end of the supervisor's stats pipe
    ready: int | None = None  # write a byte here once every listener is served

    @property
    def is_worker(self) -> bool:
        return self.stop is not None


def take_handoff(environ: MutableMapping[str, str] | None = None) -> Handoff | None:
    """What this process was handed by the one before it (None: started normally).

    The variable is removed so that processes started later (fork-mode
    children, the factor pool) do not take it for theirs.
    """
    env = os.environ if environ is None else environ
    text = env.pop(HANDOFF_ENV, None)
    if text is None:
        return None
    fds: dict[str, int] = {}
    for part in filter(None, text.split(",")):
        role, _, number = part.partition("=")
        if role in _ROLES and number.isdigit():
            fds[role] = int(number)
    for fd in fds.values():
        os.set_inheritable(fd, False)
    return Handoff(fds.get("stop"), fds.get("report"), fds.get("ready"))


def exec_with_sockets(argv: Sequence[str], listeners: Sequence[Listener],
                      handoff: Handoff | None = None) -> NoReturn:
    """Become ``argv``, handing it ``listeners`` (as systemd does) and ``handoff``.

    Called in the process that is to become the new program: a forked child of
    the supervisor, or the drained single process itself.  Raises OSError when
    the program cannot be executed (the caller logs it and carries on).
    """
    wanted = [listener.sock.fileno() for listener in listeners]
    extras = {role: getattr(handoff, role) for role in _ROLES
              if handoff is not None and getattr(handoff, role) is not None}
    # First copy every descriptor above the range the sockets go to, so that
    # placing socket i at 3 + i cannot overwrite one still to be placed.
    floor = LISTEN_FDS_START + len(wanted)
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, floor) for fd in wanted]
    kept = {role: fcntl.fcntl(fd, fcntl.F_DUPFD, floor) for role, fd in extras.items()}
    for index, fd in enumerate(moved):
        os.dup2(fd, LISTEN_FDS_START + index, inheritable=True)
        os.close(fd)
    env = dict(os.environ)
    env.update(LISTEN_FDS=str(len(wanted)), LISTEN_PID=str(os.getpid()),
               LISTEN_FDNAMES=":".join(listener.service.name for listener in listeners))
    env[HANDOFF_ENV] = ",".join(f"{role}={fd}" for role, fd in kept.items())
    os.execve(argv[0], list(argv), env)
