"""Run as a plain user after binding as root (``--user``/``--group``).

Ports below 1024, a key file only root may read, a pid file in ``/run``: a
server needs root for a moment at start and never again.  Like inetd,
Net::Server (``user``/``group``) and twistd (``--uid``/``--gid``), tcpkit
opens all of that as root, then gives root up for good before it serves a
single client, so a bug in serving cannot become a root compromise.

:func:`resolve` checks the names early (a usage error, before anything is
opened); :func:`drop` switches, in the one order that works (supplementary
groups, group, user: once the user is not root it may change nothing), and
then proves that root cannot be taken back.  Every process forked later —
workers, a fork-mode child, the factor pool — inherits the plain user.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from dataclasses import dataclass

from tcpkit.errors import Error

log = logging.getLogger("tcpkit")


class PrivilegeError(Error):
    """``--user``/``--group`` cannot be obeyed; the message is for the user."""


@dataclass(frozen=True)
class Credentials:
    """Whom to become: a user (with its primary group) and/or a group."""

    uid: int | None
    gid: int
    user: str | None
    group: str

    def __str__(self) -> str:
        return f"user {self.user}, group {self.group}" if self.user else f"group {self.group}"


def resolve(user: str | None, group: str | None) -> Credentials | None:
    """Look the names up (PrivilegeError if unknown, or if we are not root)."""
    if user is None and group is None:
        return None
    options = " ".join(f"--{o} {v}" for o, v in (("user", user), ("group", group)) if v)
    if os.geteuid() != 0:
        raise PrivilegeError(f"{options} needs root to switch to (tcpkit runs as uid "
                             f"{os.geteuid()}); start it as root, or leave the option out")
    uid = None
    gid = os.getegid()
    if user is not None:
        entry = _user(user)
        uid, gid, user = entry.pw_uid, entry.pw_gid, entry.pw_name
    if group is not None:
        gid = _group(group).gr_gid
    try:
        group_name = grp.getgrgid(gid).gr_name
    except KeyError:
        group_name = str(gid)
    return Credentials(uid, gid, user, group_name)


def drop(credentials: Credentials | None) -> None:
    """Become ``credentials`` for good (clear supplementary groups, then gid, then uid)."""
    if credentials is None:
        return
    os.setgroups([])
    os.setgid(credentials.gid)
    if credentials.uid is not None:
        os.setuid(credentials.uid)
    _check_dropped(credentials)
    log.info("running as %s", credentials, extra={"event": "privileges"})


def _check_dropped(credentials: Credentials) -> None:
    if os.getgid() != credentials.gid or os.getegid() != credentials.gid or os.getgroups():
        raise PrivilegeError(f"could not switch to {credentials}")
    if credentials.uid is None or credentials.uid == 0:
        return
    if os.getuid() != credentials.uid or os.geteuid() != credentials.uid:
        raise PrivilegeError(f"could not switch to {credentials}")
    try:
        os.setuid(0)
    except PermissionError:
        return  # as it must be
    raise PrivilegeError(f"could take root back after switching to {credentials}")


def _user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, ValueError):
        raise PrivilegeError(f"--user {name}: no such user") from None


def _group(name: str) -> grp.struct_group:
    try:
        return grp.getgrgid(int(name)) if name.isdigit() else grp.getgrnam(name)
    except (KeyError, ValueError):
        raise PrivilegeError(f"--group {name}: no such group") from None
